"""A TCP server on 127.0.0.1 (port chosen by the kernel) that answers ``ACK\\r\\n`` to every read.

Prints the port on stdout once listening.  It speaks no protocol the agent
knows, whatever its clients send.
"""

import socket
import sys
import threading


def serve(conn: socket.socket) -> None:
    with conn:
        while conn.recv(65536):
            conn.sendall(b"ACK\r\n")


def main() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    print(listener.getsockname()[1], flush=True)
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


if __name__ == "__main__":
    sys.exit(main())
