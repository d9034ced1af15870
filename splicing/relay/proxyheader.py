"""
PROXY protocol headers (HAProxy's doc/proxy-protocol.txt, versions 1 and 2).

Twisted can receive them (C{haproxy:} endpoints) but not send them: L{encode}
is the sending half, so a backend learns the real client address.
L{whenHeaderRead} lets a relay wait for a received header before it pauses
the client, and tells it why when Twisted's wrapper drops a client whose
header is missing or invalid (the wrapper itself closes without a word).
"""

import ipaddress
import struct

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.interfaces import IHalfCloseableProtocol
from zope.interface import alsoProvides

try:
    from twisted.protocols.haproxy._wrapper import HAProxyProtocolWrapper
except ImportError:  # pragma: no cover
    HAProxyProtocolWrapper = None

VERSIONS = ("v1", "v2")

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
_V2_PROXY = 0x21  # version 2, command PROXY
_V2_UNSPEC, _V2_TCP4, _V2_TCP6, _V2_UNIX = 0x00, 0x11, 0x21, 0x31


def _ip(address):
    """The ip_address of an IPv4/IPv6 Twisted address (mapped IPv4 unmapped), or None."""
    if not isinstance(address, (IPv4Address, IPv6Address)):
        return None
    ip = ipaddress.ip_address(address.host.split("%", 1)[0])
    if ip.version == 6 and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _pair(source, destination):
    """Source and destination ips of one family, or None when there is no such pair."""
    src, dst = _ip(source), _ip(destination)
    if src is None or dst is None:
        return None
    if src.version != dst.version:  # a dual-stack listener: say both in IPv6
        src, dst = (ipaddress.IPv6Address("::ffff:%s" % ip) if ip.version == 4 else ip for ip in (src, dst))
    return src, dst


def v1(source, destination):
    """The human-readable header: C{PROXY TCP4 src dst sport dport\\r\\n}."""
    pair = _pair(source, destination)
    if pair is None:
        return b"PROXY UNKNOWN\r\n"
    src, dst = pair
    return ("PROXY TCP%d %s %s %d %d\r\n" % (src.version, src, dst, source.port, destination.port)).encode("ascii")


def v2(source, destination):
    """The binary header: signature, PROXY command, family and addresses."""
    pair = _pair(source, destination)
    if pair is not None:
        src, dst = pair
        family = _V2_TCP4 if src.version == 4 else _V2_TCP6
        body = src.packed + dst.packed + struct.pack("!HH", source.port, destination.port)
    elif isinstance(source, UNIXAddress) and isinstance(destination, UNIXAddress):
        family = _V2_UNIX
        body = b"".join(_unixPath(a).ljust(108, b"\0") for a in (source, destination))
    else:
        family, body = _V2_UNSPEC, b""
    return V2_SIGNATURE + struct.pack("!BBH", _V2_PROXY, family, len(body)) + body


def _unixPath(address):
    name = address.name or b""
    if isinstance(name, str):
        name = name.encode("utf-8", "surrogateescape")
    return name[:108]


def encode(version, source, destination):
    """The header of C{version} ("v1" or "v2") for a client at C{source} reaching C{destination}."""
    if version == "v1":
        return v1(source, destination)
    if version == "v2":
        return v2(source, destination)
    raise ValueError("PROXY protocol version must be v1 or v2, not %r" % (version,))


def _isProxyWrapper(transport):
    return HAProxyProtocolWrapper is not None and isinstance(transport, HAProxyProtocolWrapper)


def whenHeaderRead(transport, proceed, halfClose, rejected=None):
    """
    C{haproxy:} listeners connect the protocol before the PROXY header is
    read, and pausing then would never read it.  Call C{proceed} once the
    header is parsed (at once when there is none to wait for), or
    C{rejected(why)} when the wrapper drops the client for want of a valid
    header.  Also let the wrapper relay half-close to C{halfClose} (it has
    no such methods).
    """
    if not _isProxyWrapper(transport):
        proceed()
        return
    alsoProvides(transport, IHalfCloseableProtocol)
    transport.readConnectionLost = halfClose.readConnectionLost
    transport.writeConnectionLost = halfClose.writeConnectionLost
    _watch(transport, proceed, rejected)


def whenHeaderRejected(transport, rejected):
    """Call C{rejected(why)} if a C{haproxy:} listener's wrapper drops this client's header."""
    if _isProxyWrapper(transport):
        _watch(transport, lambda: None, rejected)


def _watch(transport, proceed, rejected):
    if transport._proxyInfo is not None:
        proceed()
        return
    original = transport.dataReceived
    first = []  # the client's first bytes, to say what came instead of a header

    def dataReceived(data):
        if not first:
            first.append(data[:24])
        original(data)
        if transport.dataReceived is not dataReceived:
            return
        if transport._proxyInfo is not None:
            transport.dataReceived = original
            proceed()
        elif transport.disconnecting:  # the wrapper gave up on this client
            transport.dataReceived = original
            if rejected is not None:
                rejected(headerProblem(first[0]))

    transport.dataReceived = dataReceived


def headerProblem(first):
    """
    Why a connection starting with C{first} carries no usable PROXY header,
    in words: missing (what came instead) or invalid.
    """
    for name, signature in (("v1", b"PROXY "), ("v2", V2_SIGNATURE)):
        n = min(len(first), len(signature))
        if n and first[:n] == signature[:n]:
            return "invalid PROXY %s header (first bytes %r)" % (name, first)
    return "PROXY header missing (first bytes %r)" % (first,)


__all__ = ["whenHeaderRead", "whenHeaderRejected", "headerProblem", "encode", "v1", "v2", "VERSIONS", "V2_SIGNATURE"]
