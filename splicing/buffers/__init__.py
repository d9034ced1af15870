"""
User-land buffers without payload copies: mbuf clusters and chains (L{mbuf}) and batched
datagram I/O with C{recvmmsg}/C{sendmmsg} (L{mmsg}). Used by the mbuf path; knows no Twisted.
"""
