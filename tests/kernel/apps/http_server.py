"""A threaded HTTP/1.1 test server on 127.0.0.1 and ::1 (ports chosen by the kernel).

Prints ``<port4> <port6>`` on stdout once listening.  Every request also does
file I/O that looks like HTTP, which the tracer must ignore.
"""

import http.server
import os
import socket
import sys
import tempfile
import threading

FILE_IO = tempfile.NamedTemporaryFile(prefix="sidetrace-fileio-", delete=False).name


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        # File I/O that would parse as HTTP if it leaked into the tracer.
        with open(FILE_IO, "wb") as f:
            f.write(b"GET /file-io HTTP/1.1\r\nHost: x\r\n\r\n")
        with open(FILE_IO, "rb") as f:
            f.read()

    def _reply(self, status, body):
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path.startswith("/chunked"):
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for part in (b"first part ", b"second part ", b"x" * 3000):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
        elif self.path.startswith("/missing"):
            self._reply(404, b"no such thing\n")
        elif self.path.startswith("/big"):
            self._reply(200, b"b" * 100_000)
        else:
            self._reply(200, b"hello " + self.path.encode() + b"\n")

    def do_POST(self):
        length = int(self.headers.get("Content-Length", "0"))
        self.rfile.read(length)
        self._reply(201, b"created\n")


class Server4(http.server.ThreadingHTTPServer):
    daemon_threads = True


class Server6(Server4):
    address_family = socket.AF_INET6


def main():
    s4 = Server4(("127.0.0.1", 0), Handler)
    s6 = Server6(("::1", 0), Handler)
    for server in (s4, s6):
        threading.Thread(target=server.serve_forever, daemon=True).start()
    print(s4.server_address[1], s6.server_address[1], flush=True)
    sys.stdin.read()  # run until the test closes our stdin
    os.unlink(FILE_IO)


if __name__ == "__main__":
    main()
