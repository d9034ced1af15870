"""
The splice layer itself, OpenBSD's C{sosplice}/C{somove}/C{sounsplice}: the checks and path
choice (L{splice}), the single ending (L{base}), the move loop (L{somove}), borrowing a Twisted
transport (L{takeover}), describing one (L{endpoint}), and the result and error types.
Nothing here knows about relays, HTTP or command lines.
"""
