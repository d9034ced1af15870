"""
The one exception the HTTP parsers raise.

Every malformed input ends as an L{HTTPError} carrying the status the proxy
answers with (L{errorResponse}), so the proxy needs exactly one C{except}
clause, and anything else escaping a parser is a bug (the property tests
check that).
"""

from http import HTTPStatus


class HTTPError(Exception):
    """
    A message was refused.

    @ivar status: the status to answer with (400, 408, 413, 431, 501, 502,
        505, ...).
    @ivar reason: short text saying what was wrong; safe to show the peer.
    @ivar close: the framing can no longer be trusted, so the connection must
        be closed after the answer (true for nearly every parse error:
        after a bad head nobody knows where the next message starts).
    """

    def __init__(self, status, reason, close=True):
        super().__init__(status, reason, close)
        self.status = status
        self.reason = reason
        self.close = close

    def __str__(self):
        return "%d: %s" % (self.status, self.reason)


def errorResponse(status, reason, close=True):
    """
    A complete, small HTTP/1.1 text/plain response saying what was wrong
    (C{Connection: close} when C{close}).  The reason is reduced to
    printable ASCII so it can never break the framing it reports on.
    """
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    reason = "".join(c if " " <= c <= "~" else "?" for c in str(reason))
    body = ("%d %s: %s\n" % (status, phrase, reason)).encode("ascii")
    head = ["HTTP/1.1 %d %s" % (status, phrase), "Content-Type: text/plain; charset=utf-8",
            "Content-Length: %d" % len(body)] + (["Connection: close"] if close else [])
    return ("\r\n".join(head) + "\r\n\r\n").encode("ascii") + body
