"""
HTTP/1.1 for the filtering proxy: strict sans-IO parsers for heads
(L{splicing.http.head}) and chunked bodies (L{splicing.http.chunk}), whose
events tell the proxy exactly how many body bytes it may hand to the kernel.
Nothing in here does I/O or imports Twisted.
"""
