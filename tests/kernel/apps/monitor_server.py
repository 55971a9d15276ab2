"""An HTTP/1.1 server for the monitor tests, on 127.0.0.1 or a given address.

Prints its port once listening.  ``GET /burn?ms=N`` spins on the CPU until
the handling thread has run N ms, then answers with the thread's own
/proc/self/task/<tid>/schedstat deltas over the handling (on-CPU ns and
run-queue wait ns, the kernel's ground truth) as ``<oncpu> <wait>``.
``GET /bytes?n=N`` answers N bytes.  One thread per connection.
"""

import http.server
import sys
import threading
import time
import urllib.parse


def schedstat() -> tuple[int, int]:
    with open(f"/proc/self/task/{threading.get_native_id()}/schedstat") as f:
        oncpu, wait, _ = f.read().split()
    return int(oncpu), int(wait)


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        pass

    def _reply(self, body: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        url = urllib.parse.urlsplit(self.path)
        query = urllib.parse.parse_qs(url.query)
        if url.path == "/burn":
            before = schedstat()
            until = time.thread_time() + int(query.get("ms", ["10"])[0]) / 1000
            while time.thread_time() < until:
                pass
            after = schedstat()
            self._reply(f"{after[0] - before[0]} {after[1] - before[1]}".encode())
        elif url.path == "/bytes":
            self._reply(b"x" * int(query.get("n", ["1"])[0]))
        else:
            self._reply(b"hello\n")


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True


def main() -> None:
    host = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1"
    server = Server((host, 0), Handler)
    print(server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
