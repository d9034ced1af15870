"""
Bad input of every kind (an option's value, an endpoint string, a
certificate or key file, a config file, a rules file), in real ``twistd``
and ``twist`` processes: exit status 1 and one short line that names the
option or file and says what is wrong, never the whole usage or a
traceback.  ``--help`` stays the full help.
"""

import concurrent.futures
import datetime
import subprocess

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

import procs


def _key(path, encryption=serialization.NoEncryption()):
    key = ec.generate_private_key(ec.SECP256R1())
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption))
    return key


def _certificate(path, key):
    """A self-signed certificate for C{key}."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA256()))
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


LOCAL = "tcp:0:interface=127.0.0.1"  # should a case be accepted, it listens on no fixed port

#: name: (tool, arguments, strings the one line must hold, strings it must not)
CASES = {
    "number": ("twistd", ["tcp", "--idle", "soon"], ["--idle", "takes a number", "'soon'"], []),
    "whole-number": ("twistd", ["tcp", "--workers", "1.5"], ["--workers", "whole number", "'1.5'"], []),
    "unknown-option": ("twist", ["tcp", "--frobnicate"], ["--frobnicate", "splice tcp --help"], []),
    "port-word": ("twistd", ["tcp", "--listen", "tcp:notaport"],
                  ["--listen tcp:notaport", "'notaport' is not a number", "tcp:8080"], ["invalid literal"]),
    "port-word-twist": ("twist", ["tcp", "--listen", "tcp:notaport"],
                        ["--listen tcp:notaport", "'notaport' is not a number"], ["invalid literal"]),
    "port-range": ("twistd", ["tcp", "--listen", LOCAL, "--connect", "tcp:host=127.0.0.1:port=70000"],
                   ["--connect", "port 70000 is out of range"], []),
    "unknown-parameter": ("twistd", ["http", "--listen", "tcp:0:colour=blue"], ["--listen", "unknown parameter 'colour'"],
                          []),
    "endpoint-type": ("twistd", ["tcp", "--metrics", "nope:1"], ["--metrics nope:1", "unknown endpoint type 'nope'"], []),
    "key-missing": ("twistd", ["tcp", "--listen", "ssl:0:privateKey=/nonexistent/key.pem"],
                    ["--listen", "privateKey=/nonexistent/key.pem", "No such file or directory"], []),
    "key-missing-twist": ("twist", ["tcp", "--listen", "ssl:0:privateKey=/nonexistent/key.pem"],
                          ["--listen", "privateKey=/nonexistent/key.pem", "No such file or directory"], []),
    "key-not-pem": ("twistd", ["tcp", "--listen", "ssl:0:privateKey={tmp}/junk.pem:certKey={tmp}/junk.pem"],
                    ["--listen", "privateKey={tmp}/junk.pem does not hold a PEM private key"], []),
    "key-without-certificate": ("twistd", ["tcp", "--listen", "ssl:0:privateKey={tmp}/key.pem"],
                                ["--listen", "certKey={tmp}/key.pem does not hold a PEM certificate"], []),
    "key-encrypted": ("twistd", ["tcp", "--listen", "ssl:0:privateKey={tmp}/encrypted.pem:certKey={tmp}/cert.pem"],
                      ["--listen", "privateKey={tmp}/encrypted.pem is encrypted"], ["pass phrase"]),
    "key-certificate-mismatch": ("twist", ["tcp", "--listen", "ssl:0:privateKey={tmp}/key.pem:certKey={tmp}/cert.pem"],
                                 ["--listen", "the private key and the certificate do not match"], []),
    "trust-roots-missing": ("twistd", ["tcp", "--listen", LOCAL, "--connect", "tls:localhost:1:trustRoots=/nonexistent/ca"],
                            ["--connect", "trustRoots=/nonexistent/ca"], []),
    "systemd": ("twistd", ["tcp", "--listen", "systemd:domain=INET:index=7"],
                ["--listen systemd:domain=INET:index=7", "systemd passed no socket"], ["list index"]),
    "group": ("twistd", ["http", "--group", "api=tcp:host=h"], ["--group", "missing port"], []),
    "udp": ("twist", ["udp", "--listen", "udp:x", "--connect", "udp:host=127.0.0.1:port=53"], ["--listen udp:x"], []),
    "config-missing": ("twistd", ["--config", "{tmp}/missing.toml"], ["missing.toml", "No such file"], []),
    "config-line": ("twist", ["--config", "{tmp}/bad.toml"], ["bad.toml:3", "relay web", "--idle"], []),
    "config-key-file": ("twistd", ["--config", "{tmp}/tls.toml"], ["tls.toml:2", "privateKey=/nonexistent/key.pem"], []),
    "rules-missing": ("twistd", ["http", "--rules", "{tmp}/missing-rules.txt"], ["--rules", "missing-rules.txt"], []),
    "rules-line": ("twist", ["http", "--rules", "{tmp}/rules.txt"], ["rules.txt:2", "'bogus'"], []),
    "nothing": ("twistd", [], ["choose a relay"], []),
}


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("errors")
    (tmp / "junk.pem").write_text("not a key\n")
    _key(tmp / "key.pem")
    _certificate(tmp / "cert.pem", _key(tmp / "encrypted.pem", serialization.BestAvailableEncryption(b"secret")))
    (tmp / "bad.toml").write_text('[relay.web]\nlisten = "tcp:0"\nidle = "soon"\n')
    (tmp / "tls.toml").write_text('[relay.web]\nlisten = "ssl:0:privateKey=/nonexistent/key.pem"\n')
    (tmp / "rules.txt").write_text('block request path "/a*"\nblock request bogus\n')
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        futures = {}
        for name, (tool, args, expected, unwanted) in CASES.items():
            args = [a.format(tmp=tmp) for a in args]
            futures[name] = (pool.submit(procs.run_twistd, args, timeout=10.0, tool=tool), tmp)
        return {name: (_result(f), str(t)) for name, (f, t) in futures.items()}


def _result(future):
    """(status, output); a process that was still running after 10 s accepted the input."""
    try:
        return future.result()
    except subprocess.TimeoutExpired as e:
        return None, "still running after %ss:\n%s" % (e.timeout, (e.output or b"").decode("utf-8", "replace"))


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_is_one_line_and_status_1(results, name):
    (status, output), tmp = results[name]
    tool, _, expected, unwanted = CASES[name]
    lines = [line for line in output.splitlines() if line.strip()]
    assert status == 1, output
    assert len(lines) <= 2, output
    assert "Traceback" not in output and "Usage:" not in output, output
    for text in expected:
        assert text.format(tmp=tmp) in lines[-1], output
    for text in unwanted:
        assert text not in output, output
    assert lines[-1].startswith(tool + " splice: error: "), output


@pytest.mark.parametrize("tool", ["twistd", "twist"])
def test_help_stays_the_full_help(tool):
    status, output = procs.run_twistd(["tcp", "--help"], tool=tool)
    assert status == 0, output
    assert "--listen" in output and "--connect" in output and "--max-sessions" in output
    assert len(output.splitlines()) > 20
