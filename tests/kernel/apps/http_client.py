"""A test HTTP client: waits for a line on stdin, then makes a fixed set of requests.

Usage: http_client.py PORT4 PORT6.  Prints one line per request,
``<path> <status> <local_port>``, then ``done``.
"""

import http.client
import socket
import sys


def keep_alive(port, paths):
    conn = http.client.HTTPConnection("127.0.0.1", port)
    for path in paths:
        conn.request("GET", path)
        resp = conn.getresponse()
        resp.read()
        print(path, resp.status, conn.sock.getsockname()[1], flush=True)
    conn.close()


def one(host, port, method, path, body=None):
    conn = http.client.HTTPConnection(host, port)
    conn.request(method, path, body=body)
    resp = conn.getresponse()
    resp.read()
    print(path, resp.status, conn.sock.getsockname()[1], flush=True)
    conn.close()


def pipelined(port, paths):
    sock = socket.create_connection(("127.0.0.1", port))
    last = len(paths) - 1
    wire = b"".join(
        b"GET %s HTTP/1.1\r\nHost: t\r\n%s\r\n" % (p.encode(), b"Connection: close\r\n" if i == last else b"")
        for i, p in enumerate(paths)
    )
    sock.sendall(wire)  # every request in one write
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    for path in paths:
        print(path, 200 if data.count(b"HTTP/1.1 200") == len(paths) else 0, sock.getsockname()[1], flush=True)
    sock.close()


def main():
    port4, port6 = int(sys.argv[1]), int(sys.argv[2])
    sys.stdin.readline()
    keep_alive(port4, ["/ka/1", "/ka/2", "/ka/3"])
    one("127.0.0.1", port4, "GET", "/chunked/1")
    one("127.0.0.1", port4, "POST", "/post/1", body=b"name=value&other=1")
    pipelined(port4, ["/pipe/1", "/pipe/2", "/pipe/3"])
    one("::1", port6, "GET", "/v6/1")
    one("127.0.0.1", port4, "GET", "/missing/1")
    one("127.0.0.1", port4, "GET", "/big/1")
    print("done", flush=True)


if __name__ == "__main__":
    main()
