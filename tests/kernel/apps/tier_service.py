"""A thread-per-request HTTP/1.1 service for the trace-linking tests.

Usage: tier_service.py --log FILE [--bind ADDR] [--downstream HOST:PORT] [--work-ms MAX]
                       [--body-kb N]

Prints its port on stdout once listening and serves until stdin closes.
Every request is appended to FILE as one JSON line, the ground truth the
tests compare spans with: the ``X-Request-Id`` header (sidetrace never reads
it), the connection's client port, when the request arrived, and for each
downstream call (made on the handler's own thread, forwarding the id) the
local port it used and when it was sent.  ``--work-ms`` adds a random pause so that
concurrent requests overlap; ``--body-kb`` pads every response to that size.
"""

import argparse
import http.client
import http.server
import json
import random
import sys
import threading
import time


class Ledger:
    """Appends JSON lines from many threads."""

    def __init__(self, path):
        self._file = open(path, "a", buffering=1)
        self._lock = threading.Lock()

    def write(self, record):
        line = json.dumps(record, separators=(",", ":"))
        with self._lock:
            self._file.write(line + "\n")


def make_handler(ledger, downstream, work_ms, body_kb):
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt, *args):
            pass

        def _call_downstream(self, request_id):
            host, port = downstream
            conn = http.client.HTTPConnection(host, port, timeout=10)
            try:
                # The downstream path is not the incoming one: linking must
                # not rely on it inside a thread-per-request tier.
                conn.connect()
                local_port = conn.sock.getsockname()[1]
                sent_ns = time.time_ns()
                conn.request("GET", "/stock", headers={"X-Request-Id": request_id})
                response = conn.getresponse()
                response.read()
                return {"local_port": local_port, "sent_ns": sent_ns, "status": response.status}
            finally:
                conn.close()

        def do_GET(self):
            request_id = self.headers.get("X-Request-Id", "")
            received_ns = time.time_ns()
            calls = []
            if downstream is not None:
                calls.append(self._call_downstream(request_id))
            if work_ms:
                time.sleep(random.uniform(0, work_ms) / 1000)
            body = json.dumps({"id": request_id, "path": self.path}).encode()
            body += b" " * max(0, body_kb * 1024 - len(body))
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            ledger.write({
                "id": request_id, "path": self.path, "peer_port": self.client_address[1],
                "received_ns": received_ns, "calls": calls,
            })

    return Handler


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--log", required=True)
    parser.add_argument("--bind", default="127.0.0.1")
    parser.add_argument("--downstream")
    parser.add_argument("--work-ms", type=float, default=0.0)
    parser.add_argument("--body-kb", type=int, default=0)
    args = parser.parse_args()
    downstream = None
    if args.downstream:
        host, port = args.downstream.rsplit(":", 1)
        downstream = (host, int(port))
    server = Server((args.bind, 0), make_handler(Ledger(args.log), downstream, args.work_ms,
                                                          args.body_kb))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print(server.server_address[1], flush=True)
    sys.stdin.read()  # serve until the test closes our stdin
    server.shutdown()


if __name__ == "__main__":
    main()
