"""Concurrent HTTP load with a fresh ``X-Request-Id`` on every request.

Usage: tier_load.py --host HOST --port PORT --log FILE [--clients N]
                    [--requests N] [--paths P1,P2,...] [--keep-alive]

Waits for a line on stdin, then N client threads each send their requests
(paths drawn in turn from the list, so many concurrent requests share a
path), one connection per request unless --keep-alive.  Each request is
appended to FILE as a JSON line: id, path, local port, when it was
sent, status.  Prints ``done`` when every thread has finished.
"""

import argparse
import http.client
import json
import sys
import threading
import time
import uuid


def run_client(number, args, paths, records, lock):
    conn = None
    for i in range(args.requests):
        path = paths[(number + i) % len(paths)]
        if conn is None:
            conn = http.client.HTTPConnection(args.host, args.port, timeout=10)
        request_id = str(uuid.uuid4())
        try:
            if conn.sock is None:
                conn.connect()
            local_port = conn.sock.getsockname()[1]
            sent_ns = time.time_ns()
            conn.request("GET", path, headers={"X-Request-Id": request_id})
            response = conn.getresponse()
            response.read()
            status = response.status
        except (OSError, http.client.HTTPException) as exc:
            status, local_port, sent_ns = f"error: {exc}", None, None
            conn.close()
            conn = None
        with lock:
            records.append({"id": request_id, "path": path, "local_port": local_port,
                            "status": status, "sent_ns": sent_ns})
        if not args.keep_alive and conn is not None:
            conn.close()
            conn = None
    if conn is not None:
        conn.close()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--log", required=True)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--paths", default="/api/orders")
    parser.add_argument("--keep-alive", action="store_true")
    args = parser.parse_args()
    paths = args.paths.split(",")
    sys.stdin.readline()
    records, lock = [], threading.Lock()
    threads = [threading.Thread(target=run_client, args=(n, args, paths, records, lock))
               for n in range(args.clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    with open(args.log, "w") as f:
        for record in records:
            f.write(json.dumps(record, separators=(",", ":")) + "\n")
    print("done", flush=True)
    sys.stdin.read()  # stay alive (and traced) until the test lets go


if __name__ == "__main__":
    main()
