"""Loads OpenSSL only when told to: imports nothing that maps libssl until a
``load`` line arrives on stdin, then prints ``loaded``; on ``go`` makes HTTPS
requests to 127.0.0.1:<port> (argv: port, count), printing
``<path> <status>`` each, then ``done``."""

import sys

port, count = int(sys.argv[1]), int(sys.argv[2])
assert sys.stdin.readline().strip() == "load"
import http.client  # noqa: E402  (the point: OpenSSL is mapped only now)
import ssl  # noqa: E402

context = ssl.create_default_context()
context.check_hostname = False
context.verify_mode = ssl.CERT_NONE
print("loaded", flush=True)
assert sys.stdin.readline().strip() == "go"
conn = http.client.HTTPSConnection("127.0.0.1", port, context=context)
for i in range(count):
    path = f"/late/{i}"
    conn.request("GET", path)
    response = conn.getresponse()
    response.read()
    print(path, response.status, flush=True)
conn.close()
print("done", flush=True)
