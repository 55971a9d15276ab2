"""HTTPS requests with http.client: half over one kept-alive connection, half on a
connection each.  argv: port, count.  Waits for a line on stdin, prints
``<path> <status> <local port>`` per request, then ``done``."""

import http.client
import ssl
import sys

port, count = int(sys.argv[1]), int(sys.argv[2])
context = ssl.create_default_context()
context.check_hostname = False
context.verify_mode = ssl.CERT_NONE
sys.stdin.readline()
kept = http.client.HTTPSConnection("127.0.0.1", port, context=context)
for i in range(count):
    path = f"/{'missing' if i % 7 == 3 else 'item'}/{i}"
    if i < count // 2:
        conn = kept
    else:
        conn = http.client.HTTPSConnection("127.0.0.1", port, context=context)
    conn.request("GET", path)
    response = conn.getresponse()
    response.read()
    print(path, response.status, conn.sock.getsockname()[1], flush=True)
    if conn is not kept:
        conn.close()
kept.close()
print("done", flush=True)
