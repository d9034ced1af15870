"""
ALPN on TLS listeners: select a protocol the relay speaks, or none.

Twisted 26.10 puts an ALPN selection callback on every server context
(C{twisted.internet._sslverify.setupForALPN}) that answers C{b""} when
nothing the client offers is among the protocols the listening factory
declares (L{IProtocolNegotiationFactory}).  pyOpenSSL hands that empty
choice to OpenSSL as a success, and OpenSSL ends the handshake with an
C{internal_error} alert: every client that offers ALPN (curl, browsers,
httpx, Go) failed on an C{ssl:} listener, whose factory declares nothing.

L{repair} replaces that callback on a TLS server endpoint's context, before
it made any connection (pyOpenSSL refuses to change a context after that),
with one that picks the first protocol the relay declares that the client
offers, and otherwise does not negotiate at all
(C{NO_OVERLAPPING_PROTOCOLS}: valid TLS, what OpenSSL does with no
callback).  The HTTP proxy declares C{http/1.1}; the TCP relay declares
nothing, as HAProxy with no C{alpn} configured: it cannot know that its
backend speaks h2.
"""

from twisted.internet.interfaces import IProtocolNegotiationFactory

try:
    from OpenSSL import SSL
except ImportError:  # no pyOpenSSL (a worker started without TLS): no TLS endpoint to repair
    SSL = None

_REPAIRED = "_splicingALPN"


def repair(endpoint):
    """
    C{endpoint}, a server endpoint, with the ALPN selection of its TLS
    context (if it has one, under wrappers such as C{haproxy:}) repaired.
    Call it before the endpoint listens.
    """
    e = endpoint
    while e is not None:
        contextFactory = getattr(e, "_sslContextFactory", None)
        if contextFactory is not None:
            _repairContext(contextFactory.getContext())
            break
        e = getattr(e, "_wrappedEndpoint", None)
    return endpoint


def _repairContext(context):
    if not getattr(context, _REPAIRED, False):
        context.set_alpn_select_callback(_select)
        setattr(context, _REPAIRED, True)


def declared(factory):
    """The protocols C{factory} (or a factory it wraps) declares, in its order of preference."""
    while factory is not None:
        declares = IProtocolNegotiationFactory(factory, None)
        if declares is not None:
            return list(declares.acceptableProtocols())
        factory = getattr(factory, "wrappedFactory", None)
    return []


def _select(connection, offered):
    """OpenSSL's ALPN selection: ours first that the client offered, else no ALPN at all."""
    tls = connection.get_app_data()
    factory = getattr(tls, "factory", None)
    for protocol in declared(getattr(factory, "wrappedFactory", None)):
        if protocol in offered:
            return protocol
    return SSL.NO_OVERLAPPING_PROTOCOLS
