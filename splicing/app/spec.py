"""
The description of what to run: plain immutable values that the command
line (L{splicing.app.cli}) and the config file (L{splicing.app.config})
produce, and that services, workers and reloads take.

A L{RelaySpec} is one relay: its kind, name, listeners, backends and
options.  Its options are its subcommand's long options (the one place that
lists them is the relay's C{usage.Options} class in L{splicing.app.cli}):
an option added there reaches every description, config files included,
with nothing else to change.  A L{Config} is a whole run: the relays by
name, the metrics endpoint and the worker count.

Both are compared by value (a reload replaces the relays whose description
changed) and carried as JSON to worker processes.
"""

import dataclasses
from collections.abc import Mapping


class Frozen(Mapping):
    """A read-only, hashable mapping (a description's options, its relays)."""

    __slots__ = ("_items",)

    def __init__(self, items=()):
        self._items = dict(items)

    def __getitem__(self, key):
        return self._items[key]

    def __iter__(self):
        return iter(self._items)

    def __len__(self):
        return len(self._items)

    def __hash__(self):
        return hash(frozenset(self._items.items()))

    def __repr__(self):
        return "Frozen(%r)" % (self._items,)


def freeze(value):
    """C{value} with its lists as tuples and its dicts as L{Frozen} mappings, all the way down."""
    if isinstance(value, (list, tuple)):
        return tuple(freeze(v) for v in value)
    if isinstance(value, Mapping):
        return Frozen((k, freeze(v)) for k, v in value.items())
    return value


def thaw(value):
    """The JSON-able form of a L{freeze}d value."""
    if isinstance(value, tuple):
        return [thaw(v) for v in value]
    if isinstance(value, Mapping):
        return {k: thaw(v) for k, v in value.items()}
    return value


def _strings(value):
    """A repeatable option's values: one string, a list of them, or none."""
    if value is None:
        return ()
    return (value,) if isinstance(value, str) else tuple(value)


#: Options of the whole process, not of one relay.
PROCESS_WIDE = ("workers", "metrics", "config", "help", "version")


@dataclasses.dataclass(frozen=True)
class RelaySpec:
    """
    One relay.

    @ivar kind: "tcp", "udp" or "http".
    @ivar name: its name in logs and metrics.
    @ivar listen: server endpoint strings.
    @ivar connect: backends (client endpoint strings; empty: the demo origin).
    @ivar options: its other options by long name, as parsed (numbers,
        strings, flags as bools, repeatable ones as tuples).
    @ivar files: the text of files its options name (C{--rules}), read once
        when it was described, so that workers and reloads build from the
        same bytes that were checked.
    """

    kind: str
    name: str
    listen: tuple = ()
    connect: tuple = ()
    options: Frozen = Frozen()
    files: Frozen = Frozen()

    def __post_init__(self):
        for field in ("listen", "connect"):
            object.__setattr__(self, field, freeze(_strings(getattr(self, field))))
        for field in ("options", "files"):
            object.__setattr__(self, field, freeze(dict(getattr(self, field))))

    @classmethod
    def fromOptions(cls, kind, name, options, files=()):
        """The description of parsed options (a C{usage.Options} or any mapping)."""
        rest = {k: v for k, v in dict(options).items() if k not in PROCESS_WIDE + ("listen", "connect")}
        return cls(kind, name, options.get("listen"), options.get("connect"), rest, files)

    def toJSON(self):
        return thaw(dataclasses.asdict(self))

    def endpoints(self):
        """Every endpoint string it names: listen, connect and the HTTP groups' (C{NAME=ENDPOINT})."""
        groups = tuple(entry.partition("=")[2] for entry in self.options.get("group", ()))
        return self.listen + self.connect + groups

    @classmethod
    def fromJSON(cls, data):
        return cls(**data)


@dataclasses.dataclass(frozen=True)
class Config:
    """
    A whole run: relays by name (L{RelaySpec}s), the metrics endpoint (or
    None), the number of worker processes, and the config file they came
    from (None: the command line).
    """

    relays: Frozen = Frozen()
    metrics: str = None
    workers: int = 1
    path: str = None

    def __post_init__(self):
        object.__setattr__(self, "relays", Frozen(self.relays))

    def toJSON(self):
        return {"relays": [spec.toJSON() for spec in self.relays.values()], "metrics": self.metrics,
                "workers": self.workers, "path": self.path}

    @classmethod
    def fromJSON(cls, data):
        specs = [RelaySpec.fromJSON(s) for s in data["relays"]]
        return cls({s.name: s for s in specs}, data["metrics"], data["workers"], data["path"])


#: Endpoint types that carry no TLS (the field before the first colon).
PLAIN_ENDPOINTS = frozenset(["tcp", "tcp6", "unix", "udp", "systemd"])


def plainEndpoint(description):
    """
    Whether the endpoint string C{description} surely needs no TLS: its
    type, past any C{haproxy:} wrapper, is one of L{PLAIN_ENDPOINTS}.
    Anything else (C{ssl:}, C{tls:}, a plugin's) may.
    """
    fields = description.split(":")
    while len(fields) > 1 and fields[0].strip().lower() == "haproxy":
        fields = fields[1:]
    return fields[0].strip().lower() in PLAIN_ENDPOINTS


def namesTLS(config):
    """Whether the relays of C{config} (a L{Config}) may need TLS: an endpoint that is not plain."""
    return not all(plainEndpoint(d) for relay in config.relays.values() for d in relay.endpoints())


def difference(old, new):
    """
    What a reload does to relays by name (two C{{name: RelaySpec}}): the
    names to start and the names to stop (a changed relay is both).
    """
    gone = [n for n in old if n not in new or new[n] != old[n]]
    fresh = [n for n in new if n not in old or new[n] != old[n]]
    return fresh, gone


__all__ = ["RelaySpec", "Config", "Frozen", "difference", "namesTLS", "plainEndpoint"]
