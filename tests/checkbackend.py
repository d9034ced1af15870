"""
A backend in its own process, for the health-check tests: it can be killed
(SIGKILL), frozen (SIGSTOP) and started again on the same port.

    python tests/checkbackend.py MODE PORT [--tls CERT KEY]

MODE: ``echo`` (echo to EOF), ``line`` (answers each line: PONG to PING,
NOPE otherwise), ``http:CODE`` (GET /health gets CODE, any other path 200
and its path).  Prints ``ready PORT`` once listening, and ``request LINE``
for each HTTP request line or ``line LINE`` for each line (flushed).
"""

import socketserver
import ssl
import sys


class Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True
    request_queue_size = 64


def say(*words):
    sys.stdout.write(" ".join(words) + "\n")
    sys.stdout.flush()


def main():
    mode, port = sys.argv[1], int(sys.argv[2])
    context = None
    if sys.argv[3:4] == ["--tls"]:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(sys.argv[4], sys.argv[5])

    class Handler(socketserver.StreamRequestHandler):
        def setup(self):
            if context is not None:
                try:
                    self.request = context.wrap_socket(self.request, server_side=True)
                except (ssl.SSLError, OSError) as e:
                    say("tls-error", str(e).replace(" ", "_"))
                    raise
            socketserver.StreamRequestHandler.setup(self)

        def handle(self):
            if mode == "echo":
                while True:
                    data = self.request.recv(65536)
                    if not data:
                        return
                    self.request.sendall(data)
            elif mode == "line":
                for line in self.rfile:
                    say("line", line.strip().decode("latin-1"))
                    self.wfile.write(b"PONG\n" if line.strip() == b"PING" else b"NOPE\n")
                    self.wfile.flush()
            else:
                code = int(mode.split(":")[1])
                request = self.rfile.readline().decode("latin-1").strip()
                say("request", request)
                while self.rfile.readline().strip():
                    pass
                path = request.split(" ")[1] if request.count(" ") == 2 else "?"
                status, body = (code, b"health\n") if path == "/health" else (200, path.encode() + b"\n")
                self.wfile.write(b"HTTP/1.1 %d X\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
                                 % (status, len(body), body))

    server = Server(("127.0.0.1", port), Handler)
    say("ready", str(server.server_address[1]))
    server.serve_forever(poll_interval=0.1)


if __name__ == "__main__":
    main()
