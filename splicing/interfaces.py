"""
The contracts of the splice layer, in one place.

A splice moves bytes one way, from a *source* to a *drain*, until something
dissolves it (EOF, a maximum, an idle timeout, an error, or the caller).
Everything above this module (relays, the HTTP proxy, the command line) talks
to L{ISplice}; everything below it (the kernel, mbuf and transport paths)
implements L{ISplicePath} and L{IMover}.  The shape follows OpenBSD's
C{sosplice()} / C{somove()} / C{sounsplice()}: the core checks a request and
keeps the books, a path only moves bytes.
"""

from zope.interface import Attribute, Interface


class ISpliceResult(Interface):
    """
    How a splice ended: what C{ISplice.done} fires with.
    """

    length = Attribute("int: bytes moved from source to drain by this splice.")
    reason = Attribute("A L{splicing.Reason} member: EOF, MAX, IDLE, ERROR, UNSPLICED or SHORT.")
    error = Attribute(
        "int: the errno of the cause: EFBIG for MAX, ETIMEDOUT for IDLE, "
        "EPIPE/ECONNRESET/... for ERROR, 0 otherwise."
    )


class ISplice(Interface):
    """
    One direction of data, source to drain, handed to the splice layer.
    """

    length = Attribute("int: bytes moved so far (the SO_SPLICE getsockopt count).")
    backend = Attribute('str: the path actually used, "kernel", "mbuf" or "transport".')
    done = Attribute("A Deferred firing once with an L{ISpliceResult}.")
    framer = Attribute(
        "A callable that extends the splice past its maximum for a framed stream "
        "(see L{splicing.core.splice.splice}), or None (also once it answered C{Last})."
    )

    def unsplice():
        """
        Dissolve now (reason UNSPLICED).  Data not yet moved stays with the
        source and reaches its protocol again.  Raises C{SpliceError(EPROTO)}
        once the splice has ended.
        """


class ISpliceSource(Interface):
    """
    The readable end of a splice, as a socket path sees a borrowed transport.

    Borrowing stops the transport's own reading; the splice asks for read
    events itself and the transport gets them back, with any bytes the
    splice read but did not move, when the splice ends.
    """

    transport = Attribute("The Twisted transport being borrowed.")
    socket = Attribute("The socket object under the transport.")

    def fileno():
        """The socket's descriptor."""

    def wantRead(flag):
        """Ask for (True) or stop (False) read readiness events."""

    def giveBack(data):
        """
        Return bytes that were read but not moved: they reach the source's
        protocol before anything else still in the socket.
        """


class ISpliceDrain(Interface):
    """
    The writable end of a splice.  The drain's transport may still hold bytes
    the application wrote before (or during) the splice: those are written
    before spliced bytes that were not already in flight, so nothing is
    reordered relative to a C{write()} made before C{splice()}.
    """

    transport = Attribute("The Twisted transport being borrowed.")
    socket = Attribute("The socket object under the transport.")

    def fileno():
        """The socket's descriptor."""

    def wantWrite(flag):
        """Ask for (True) or stop (False) write readiness events."""

    def hasPendingWrites():
        """True while the transport's own write buffer holds data."""


class IMover(Interface):
    """
    Moves bytes for one splice on a socket path: C{fill} takes bytes from the
    source into an in-flight buffer (a pipe, or an mbuf chain), C{flush}
    writes them to the drain.  The core's C{somove} loop decides when, and
    keeps max, idle and the byte count; a mover never knows about them.
    """

    name = Attribute('str: "kernel" or "mbuf".')
    pending = Attribute("int: bytes in flight (read from the source, not yet written).")
    holding = Attribute("bool: anything in flight, zero-length datagrams included.")
    eof = Attribute("bool: set by C{fill} once the source reached end of file.")
    crossed = Attribute(
        "bool: set by C{fill} when the next datagram would cross the limit "
        "(it stays in the source; datagram movers only)."
    )
    space = Attribute("int: how many more bytes may be taken in flight now (0 = full).")

    def fill(limit):
        """
        Read at most C{limit} bytes from the source.  Returns the count (0 at
        EOF, with C{eof} set; a zero-length datagram also counts 0), or
        C{None} when nothing could be read because the in-flight buffer is
        full or unavailable (then C{whenAvailable} tells when to retry).  Raises C{BlockingIOError} when the
        source has nothing to read, and C{OSError} on a source error.
        """

    def flush():
        """
        Write in-flight bytes to the drain.  Returns the count written.
        Raises C{BlockingIOError} when the drain cannot take any, and
        C{OSError} on a drain error.
        """

    def whenAvailable(callback):
        """Call C{callback()} once buffers (pipes, clusters) were returned."""

    def release():
        """
        Give up the in-flight buffer and return the bytes it still held
        (possibly empty), so that the core can give them back to the source.
        """


class ISplicePath(Interface):
    """
    A backend: one way of moving bytes, with the conditions under which it
    can serve a pair of transports.
    """

    name = Attribute('str: "kernel", "mbuf" or "transport".')

    def available():
        """
        Whether this path can run in this process at all (platform support,
        process-wide switches).
        """

    def supports(source, drain):
        """
        Whether this path can serve the two described endpoints (see
        L{splicing.core.endpoint.describe}); returns True or False.
        """


class IRelayMetrics(Interface):
    """
    What relays report to (L{splicing.relay.report.Reporter} carries each
    event with the relay's name first); L{splicing.app.metrics.RelayMetrics}
    implements it.  Given to a relay, never imported by it.
    """

    def watch(relay, table):
        """Read C{table}'s C{active} and C{waiting} sessions when asked for them."""

    def sessionEnded(relay, stats):
        """A TCP relay's session ended, with the fields of its log event."""

    def ended(relay, how, traffic):
        """A session ended C{how}; C{traffic}: (direction, path, bytes) triples."""

    def connectFailed(relay, target):
        """A backend connect failed."""

    def refused(relay, reason):
        """A client was refused (C{reason}: "allow", "full", ...)."""

    def httpRequest(relay):
        """An HTTP request went to a backend."""

    def httpResponse(relay, status):
        """An HTTP response head went to a client."""
