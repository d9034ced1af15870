"""
What a relay's factory does with a new client before its session starts, the same for the
TCP relay and the HTTP proxy: refuse one that C{--allow} does not list, or queue it in the
session table (C{--max-sessions}); and account for one a C{haproxy:} listener dropped.
"""

from splicing.relay.access import formatAddress


class Admission:
    """
    A factory mixin.  The factory provides C{allow} (an
    L{AllowList<splicing.relay.access.AllowList>}), C{table} (a
    L{SessionTable<splicing.relay.sessions.SessionTable>}), C{name}, C{log}
    and C{report} (a L{Reporter<splicing.relay.report.Reporter>}).
    """

    def admit(self, protocol):
        """Start C{protocol}'s session now, or when a slot frees (refuse disallowed clients)."""
        if not self.allows(protocol.transport.getPeer()):
            protocol.ended = True
            protocol.transport.abortConnection()
            return
        self.table.admit(protocol)

    def allows(self, peer):
        """Whether C{--allow} lets C{peer} in; a refusal is logged and counted here."""
        if self.allow.allows(peer):
            return True
        self.log.warn("refused {client}: not in --allow", client=formatAddress(peer), relay=self.name)
        self.report("refused", "allow")
        return False

    def rejected(self, protocol, why):
        """A C{haproxy:} listener dropped C{protocol}'s client: no valid PROXY header."""
        self.log.warn("dropped {client}: {why}", client=formatAddress(protocol.transport.getPeer()), why=why,
                      relay=self.name)
        self.report("refused", "proxy-header")


__all__ = ["Admission"]
