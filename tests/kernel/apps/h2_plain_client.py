"""A plain HTTP/2 client (h2 library, prior knowledge) for the HTTP/2 tests.

Usage: h2_plain_client.py PORT [--wait]
Sends every request of REQUESTS at once on one connection (multiplexed),
with padding, a priority block and a header big enough for CONTINUATION
frames among them; prints "<method> <path> <status>" per response, then "done".
"""

from __future__ import annotations

import socket
import sys

import h2.config
import h2.connection
import h2.events

BIG_HEADER = "x" * 20_000   # more than one 16 KiB frame: HEADERS + CONTINUATION
UPLOAD = b"u" * 3000
# (method, path, extra headers, body, HEADERS options)
REQUESTS = [
    ("GET", "/hello?name=h2", [], b"", {}),
    ("GET", "/missing", [], b"", {"priority_weight": 200, "priority_depends_on": 0}),
    ("GET", "/boom", [], b"", {}),
    ("GET", "/big", [], b"", {}),
    ("POST", "/upload", [("content-type", "application/octet-stream")], UPLOAD, {}),
    ("GET", "/hello/large-header", [("x-large", BIG_HEADER)], b"", {}),
]


def main() -> None:
    port = int(sys.argv[1])
    if "--wait" in sys.argv[2:]:
        sys.stdin.readline()
    sock = socket.create_connection(("127.0.0.1", port))
    conn = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    paths: dict[int, tuple[str, str]] = {}
    for method, path, extra, body, options in REQUESTS:
        stream_id = conn.get_next_available_stream_id()
        headers = [(":method", method), (":path", path), (":scheme", "http"),
                   (":authority", f"127.0.0.1:{port}"), ("user-agent", "h2-test-client")] + extra
        conn.send_headers(stream_id, headers, end_stream=not body, **options)
        if body:
            conn.send_data(stream_id, body, end_stream=True, pad_length=17)
        paths[stream_id] = (method, path)
    sock.sendall(conn.data_to_send())
    statuses: dict[int, int] = {}
    done: set[int] = set()
    try:
        while len(done) < len(paths):
            data = sock.recv(65536)
            if not data:
                break
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    headers = {(k.decode() if isinstance(k, bytes) else k):
                               (v.decode() if isinstance(v, bytes) else v) for k, v in event.headers}
                    statuses[event.stream_id] = int(headers[":status"])
                elif isinstance(event, h2.events.DataReceived):
                    conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                elif isinstance(event, h2.events.StreamEnded):
                    done.add(event.stream_id)
            if pending := conn.data_to_send():
                sock.sendall(pending)
        conn.close_connection()
        sock.sendall(conn.data_to_send())
    finally:
        sock.close()
    for stream_id, (method, path) in sorted(paths.items()):
        print(method, path, statuses.get(stream_id, 0), flush=True)
    print("done", flush=True)


if __name__ == "__main__":
    main()
