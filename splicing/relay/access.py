"""
Client addresses: the allow-list (C{--allow CIDR}, relayd's C{from
ADDR/prefix}) and their spelling in logs and metrics.

Addresses are checked after a PROXY header was read (C{haproxy:} listeners),
so the list applies to the real client.  IPv4 clients of a dual-stack
listener arrive as IPv4-mapped IPv6 addresses; they match IPv4 networks.
Clients without an IP address (UNIX sockets) are governed by file
permissions and are not subject to the list.
"""

import ipaddress

from twisted.internet.address import IPv4Address, IPv6Address


def parseNetwork(text):
    """An ip_network from C{text} ("10.0.0.0/8", "::1", ...); ValueError "not a network"."""
    try:
        return ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        raise ValueError("%s: not a network" % (text,)) from None


class AllowList:
    """
    Client networks that may use a relay; an empty list allows everyone.
    """

    def __init__(self, networks=()):
        self.networks = [n if isinstance(n, (ipaddress.IPv4Network, ipaddress.IPv6Network)) else parseNetwork(n) for n in networks]

    def __bool__(self):
        return bool(self.networks)

    def allows(self, address):
        """Whether the Twisted C{address} (a peer) may connect."""
        if not self.networks or not isinstance(address, (IPv4Address, IPv6Address)):
            return True
        ip = ipaddress.ip_address(address.host.split("%", 1)[0])
        candidates = [ip]
        if ip.version == 6 and ip.ipv4_mapped is not None:
            candidates.append(ip.ipv4_mapped)
        return any(c in n for c in candidates for n in self.networks if c.version == n.version)


def formatAddress(address):
    """host:port, [v6]:port or a UNIX path, for logs and metrics."""
    host = getattr(address, "host", None)
    if host is None:
        name = getattr(address, "name", None)
        name = name.decode("utf-8", "replace") if isinstance(name, bytes) else name
        return "unix:%s" % (name or "anonymous") if hasattr(address, "name") else str(address)
    return ("[%s]:%s" if ":" in host else "%s:%s") % (host, address.port)


__all__ = ["AllowList", "parseNetwork", "formatAddress"]
