"""
Endpoint strings checked when options are parsed, so that a bad one is an
error naming the option before anything starts: the string is parsed as
Twisted will parse it (reading the certificate and key files C{ssl:} and
C{tls:} name), and what Twisted or OpenSSL raise is said in an operator's
words, with an example of what would be right.
"""

import errno
import os
import re

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL, crypto
from twisted.internet import endpoints
from twisted.python.filepath import UnlistableError

from splicing.relay.balance import clientFromString

SERVER_EXAMPLE = "tcp:8080:interface=127.0.0.1, ssl:8443:privateKey=KEY.pem:certKey=CERT.pem or unix:PATH"
CLIENT_EXAMPLE = "tcp:host=HOST:port=PORT, tls:HOST:PORT or unix:path=PATH"

#: The parameters that name files, and what each must hold.
_FILES = {
    "privateKey": "a PEM private key",
    "certKey": "a PEM certificate",
    "certificate": "a PEM certificate",
    "extraCertChain": "PEM certificates",
    "dhParameters": "PEM Diffie-Hellman parameters",
    "caCertsDir": "a directory of PEM CA certificates",
    "trustRoots": "a directory of PEM CA certificates",
}


class EndpointError(ValueError):
    """An endpoint string that will not work: C{str()} says why and what would."""


def _fields(description):
    """(positional values, {name: value}) of an endpoint string, C{\\:} unescaped."""
    parts = [p.replace("\\:", ":") for p in re.split(r"(?<!\\):", description)][1:]
    named = dict(p.split("=", 1) for p in parts if "=" in p)
    return [p for p in parts if "=" not in p], named


def _port(text):
    """A port number's problem, or None."""
    try:
        number = int(text)
    except ValueError:
        return "port %r is not a number" % (text,)
    if not 0 <= number <= 65535:
        return "port %s is out of range (0-65535)" % (number,)
    return None


def _checkPort(description, server):
    kind = description.split(":", 1)[0]
    positional, named = _fields(description)
    if server and kind in ("tcp", "tcp6", "ssl") and positional:
        return _port(positional[0])
    if not server and kind in ("tcp", "ssl", "tls"):
        port = named.get("port", positional[1] if kind == "tls" and len(positional) > 1 else None)
        if port is not None:
            return _port(port)
    return None


def _tlsFiles(description):
    """Which named file does not hold what it must: a message, or None."""
    _, named = _fields(description)
    if description.startswith("ssl:") and "privateKey" in named:
        named.setdefault("certKey", named["privateKey"])  # as Twisted reads them
    loaders = {"privateKey": lambda data: serialization.load_pem_private_key(data, None),
               "certKey": x509.load_pem_x509_certificate, "certificate": x509.load_pem_x509_certificate}
    for name, load in loaders.items():
        if name in named:
            try:
                with open(named[name], "rb") as f:
                    data = f.read()
            except OSError:
                continue  # said as Twisted meets it (L{explain})
            try:
                load(data)
            except TypeError:
                return "%s=%s is encrypted: give an unencrypted PEM private key" % (name, named[name])
            except ValueError:
                return "%s=%s does not hold %s" % (name, named[name], _FILES[name])
    return None


def explain(error, description, server):
    """What C{error}, raised parsing C{description}, means for whoever wrote it."""
    example = SERVER_EXAMPLE if server else CLIENT_EXAMPLE
    if isinstance(error, UnlistableError):
        error = getattr(error, "originalException", error)
    if isinstance(error, OSError) and error.filename is not None:
        _, named = _fields(description)
        names = [n for n, v in named.items() if v == error.filename]
        what = "%s=%s" % (names[0], error.filename) if names else "%s (the default privateKey)" % (error.filename,)
        hold = _FILES.get(names[0] if names else "privateKey", "")
        reason = error.strerror or os.strerror(error.errno or errno.EIO)
        return "cannot read %s: %s (it must hold %s)" % (what, reason, hold)
    if isinstance(error, (crypto.Error, SSL.Error)):
        return _tlsFiles(description) or "the TLS key and certificate do not go together (%s)" % (error,)
    text = str(error)
    if description.startswith("systemd:") and isinstance(error, (IndexError, KeyError)):
        return "systemd passed no socket with that index or name (socket activation: LISTEN_FDS, LISTEN_FDNAMES)"
    if "keys do not match" in text:
        return "the private key and the certificate do not match: give the key the certificate was issued for"
    unknown = re.match(r"Unknown endpoint type: '(.*)'", text)
    if unknown:
        return "unknown endpoint type %r: expected e.g. %s" % (unknown.group(1), example)
    number = re.match(r"invalid literal for int\(\) with base 10: '(.*)'", text)
    if number:
        return "%r is not a number: expected e.g. %s" % (number.group(1), example)
    keyword = re.search(r"unexpected keyword argument '(.*)'", text)
    if keyword:
        return "unknown parameter %r: expected e.g. %s" % (keyword.group(1), example)
    missing = re.search(r"missing \d+ required positional arguments?: (.*)", text)
    if missing:
        return "missing %s: expected e.g. %s" % (missing.group(1).replace("'", ""), example)
    return "%s: expected e.g. %s" % (text or type(error).__name__, example)


def _check(reactor, description, parse, server):
    # the files first: OpenSSL would ask for an encrypted key's pass phrase on the terminal
    problem = _tlsFiles(description)
    if problem is not None:
        raise EndpointError(problem)
    try:
        parse(reactor, description)
    except Exception as e:  # whatever Twisted, the OS or OpenSSL raise for a bad string
        raise EndpointError(explain(e, description, server))
    problem = _checkPort(description, server)
    if problem is not None:
        raise EndpointError(problem)


def checkServer(reactor, description):
    """Raise L{EndpointError} unless C{description} is a server endpoint string that can listen."""
    _check(reactor, description, endpoints.serverFromString, True)


def checkClient(reactor, description):
    """Raise L{EndpointError} unless C{description} is a client endpoint string that can connect."""
    _check(reactor, description, clientFromString, False)


__all__ = ["EndpointError", "checkServer", "checkClient", "explain"]
