"""
Relays built on the splice layer: the TCP relay (L{tcp}), the UDP relay (L{udp},
L{udpsession}), and what they share: balancing, access lists, the session table, the PROXY
header, batched accepting and the fallbacks where the core cannot splice.
"""
