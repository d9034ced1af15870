"""
The config file (C{twistd splice --config relays.toml}): several relays in
one process, reloaded on SIGHUP.

    metrics = "tcp:9100:interface=127.0.0.1"   # optional

    [relay.web]                                # one table per relay, by name
    type = "tcp"                               # tcp (the default) or udp
    listen = ["tcp:8080", "tcp6:8080"]         # a string or a list
    connect = "tcp:host=www.internal:port=80"
    idle = 600
    allow = ["10.0.0.0/8"]
    no-splice = true

A relay's keys are its subcommand's long options without the dashes, and
mean the same; they are checked by the same code, so an error names the
file, the line and the option.  The result is the same description the
command line gives (L{splicing.app.spec.Config}).
"""

import re

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

from twisted.python import usage

from splicing.app.spec import Config, RelaySpec


class ConfigError(Exception):
    """A bad config file: C{str()} is "file:line: message" (or "file: message")."""

    def __init__(self, path, line, message):
        where = path if line is None else "%s:%s" % (path, line)
        Exception.__init__(self, "%s: %s" % (where, message))


class _Lines:
    """Finds the line of a key in a table, for error messages."""

    def __init__(self, text):
        self.lines = text.splitlines()

    def header(self, name):
        pattern = re.compile(r"^\s*\[\s*relay\s*\.\s*(\"%s\"|'%s'|%s)\s*\]" % ((re.escape(name),) * 3))
        for number, line in enumerate(self.lines, 1):
            if pattern.match(line):
                return number
        return 1

    def key(self, key, name=None):
        start = self.header(name) if name is not None else 0
        pattern = re.compile(r"^\s*(\"%s\"|%s)\s*=" % (re.escape(key), re.escape(key)))
        for number, line in enumerate(self.lines[start:], start + 1):
            if re.match(r"^\s*\[", line):
                break
            if pattern.match(line):
                return number
        return start or 1


def _argv(options, settings):
    """The command line that says what C{settings} (a TOML table) says."""
    flags = {o for o in options.longOpt if not o.endswith("=")}
    argv = []
    for key, value in settings.items():
        if key == "type":
            continue
        values = value if isinstance(value, list) else [value]
        for v in values:
            if isinstance(v, bool):
                if key not in flags:
                    raise usage.UsageError("--%s takes a value, not %r" % (key, v))
                if v:
                    argv.append("--" + key)
            elif key in flags:
                raise usage.UsageError("--%s is a flag: true or false" % (key,))
            elif isinstance(v, (str, int, float)):
                argv.append("--%s=%s" % (key, v))
            else:
                raise usage.UsageError("--%s: %r is not a string or number" % (key, v))
    return argv


def _parseRelay(path, lines, name, settings, kinds):
    if not isinstance(settings, dict):
        raise ConfigError(path, lines.header(name), "relay %s must be a table" % (name,))
    kind = settings.get("type", "tcp")
    if kind not in kinds:
        raise ConfigError(path, lines.key("type", name), "relay %s: type must be one of %s, not %r"
                          % (name, ", ".join(sorted(kinds)), kind))
    options = kinds[kind]()
    known = {o.rstrip("=") for o in options.longOpt}
    for key in settings:
        if key != "type" and (key not in known or key in ("metrics", "help", "version")):
            where = "belongs at the top of the file" if key == "metrics" else "is not an option of a %s relay" % kind
            raise ConfigError(path, lines.key(key, name), "relay %s: %s %s" % (name, key, where))
    try:
        options.parseOptions(_argv(options, settings))
    except usage.UsageError as e:
        message = str(e)
        option = re.match(r"--([\w-]+)", message)
        line = lines.key(option.group(1), name) if option else lines.header(name)
        raise ConfigError(path, line, "relay %s: %s" % (name, message))
    return RelaySpec.fromOptions(kind, name, options, getattr(options, "files", {}))


def load(path, kinds):
    """
    The L{Config} (relay descriptions) of the file at C{path}; C{kinds}
    maps relay types to the C{usage.Options} classes that check their
    options.  Raises L{ConfigError}.
    """
    try:
        with open(path, "rb") as f:
            raw = f.read()
        text = raw.decode("utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(path, None, getattr(e, "strerror", None) or str(e))
    lines = _Lines(text)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        found = re.search(r"\(at line (\d+), column \d+\)", str(e))
        line = found.group(1) if found else getattr(e, "lineno", 1)
        raise ConfigError(path, line, re.sub(r"\s*\(at line.*\)$", "", str(e)))
    for key in data:
        if key not in ("relay", "metrics"):
            raise ConfigError(path, lines.key(key), "unknown setting %r (expected metrics or [relay.NAME] tables)" % (key,))
    metrics = data.get("metrics")
    if metrics is not None and not isinstance(metrics, str):
        raise ConfigError(path, lines.key("metrics"), "metrics must be a server endpoint string")
    relays = data.get("relay", {})
    if not isinstance(relays, dict) or not relays:
        raise ConfigError(path, 1, "no relays: add a [relay.NAME] table")
    return Config({name: _parseRelay(path, lines, name, s, kinds) for name, s in relays.items()}, metrics, path=path)


__all__ = ["load", "ConfigError"]
