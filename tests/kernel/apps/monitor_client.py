"""HTTP/1.1 client for the monitor tests: REQUESTS requests of /bytes?n=SIZE on one keep-alive connection.

Usage: monitor_client.py HOST PORT REQUESTS SIZE.  Waits for a line on stdin
before starting (so the caller can trace it), prints ``done`` at the end and
waits for another line before exiting.
"""

import http.client
import sys


def main() -> None:
    host, port, requests, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    sys.stdin.readline()
    conn = http.client.HTTPConnection(host, port, timeout=60)
    for _ in range(requests):
        conn.request("GET", f"/bytes?n={size}")
        body = conn.getresponse().read()
        assert len(body) == size
    conn.close()
    sys.stdout.write("done\n")
    sys.stdout.flush()
    sys.stdin.readline()


if __name__ == "__main__":
    main()
