"""A plain (non-gRPC) HTTP/2 server over cleartext (prior knowledge), built on the h2 library.

Prints its port, then serves until SIGTERM, one thread per connection.
Routes: GET /hello (200), GET /missing (404), GET /boom (500), GET /big
(200, BIG_BODY bytes in several DATA frames), POST /upload (201, echoes the
body length).  Anything else is 404.
"""

from __future__ import annotations

import signal
import socket
import sys
import threading

import h2.config
import h2.connection
import h2.events

BIG_BODY = 50_000


def _respond(conn: h2.connection.H2Connection, sock: socket.socket, stream_id: int,
             status: int, body: bytes) -> None:
    conn.send_headers(stream_id, [(":status", str(status)), ("content-length", str(len(body))),
                                  ("content-type", "text/plain"), ("server", "h2-test")])
    # Whole frames within the flow-control window; the test bodies fit the default window.
    while body:
        size = min(len(body), conn.local_flow_control_window(stream_id), conn.max_outbound_frame_size)
        if size <= 0:
            break
        conn.send_data(stream_id, body[:size])
        body = body[size:]
        sock.sendall(conn.data_to_send())
    conn.end_stream(stream_id)
    sock.sendall(conn.data_to_send())


def _route(method: str, path: str, body: bytes) -> tuple[int, bytes]:
    if method == "POST" and path == "/upload":
        return 201, b"got %d bytes" % len(body)
    if method == "GET":
        if path.startswith("/hello"):
            return 200, b"hello over h2"
        if path == "/boom":
            return 500, b"it broke"
        if path == "/big":
            return 200, b"b" * BIG_BODY
    return 404, b"not here"


def serve(sock: socket.socket) -> None:
    conn = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=False))
    conn.initiate_connection()
    sock.sendall(conn.data_to_send())
    requests: dict[int, tuple[str, str, bytearray]] = {}
    try:
        while data := sock.recv(65536):
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.RequestReceived):
                    headers = dict((k.decode() if isinstance(k, bytes) else k,
                                    v.decode() if isinstance(v, bytes) else v)
                                   for k, v in event.headers)
                    requests[event.stream_id] = (headers[":method"], headers[":path"], bytearray())
                elif isinstance(event, h2.events.DataReceived):
                    requests[event.stream_id][2].extend(event.data)
                    conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                elif isinstance(event, h2.events.StreamEnded):
                    method, path, body = requests.pop(event.stream_id)
                    status, reply = _route(method, path, bytes(body))
                    _respond(conn, sock, event.stream_id, status, reply)
                elif isinstance(event, h2.events.ConnectionTerminated):
                    return
            if pending := conn.data_to_send():
                sock.sendall(pending)
    except OSError:
        pass
    finally:
        sock.close()


def main() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    print(listener.getsockname()[1], flush=True)
    while not stopping.is_set():
        try:
            sock, _ = listener.accept()
        except (TimeoutError, InterruptedError):
            continue
        sock.settimeout(None)
        threading.Thread(target=serve, args=(sock,), daemon=True).start()
    listener.close()
    sys.exit(0)


if __name__ == "__main__":
    main()
