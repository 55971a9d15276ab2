"""DNS queries with dnspython over UDP and TCP, for the DNS tests.

Usage: dns_client.py PORT [--wait]
With --wait it reads a line from stdin first (so a tracer can start).
Waits until the server answers, then asks QUERIES over UDP (one socket each)
and over TCP (one connection for all), printing "<transport> <name> <type>
<rcode name> <answer count>" per query, then "done".
"""

from __future__ import annotations

import socket
import sys
import time

import dns.exception
import dns.message
import dns.query
import dns.rcode

QUERIES = [("a.test", "A"), ("b.test", "AAAA"), ("nope.test", "A"), ("txt.test", "TXT")]


def wait_ready(port: int) -> None:
    deadline = time.monotonic() + 20
    while True:
        try:
            dns.query.udp(dns.message.make_query("ready.test", "A"), "127.0.0.1", port=port,
                          timeout=0.5)
            return
        except (OSError, dns.exception.Timeout):
            if time.monotonic() > deadline:
                raise


def main() -> None:
    port = int(sys.argv[1])
    if "--wait" in sys.argv[2:]:
        sys.stdin.readline()
    else:
        wait_ready(port)
    results = []
    for name, rdtype in QUERIES:
        answer = dns.query.udp(dns.message.make_query(name, rdtype), "127.0.0.1", port=port,
                               timeout=5)
        results.append(("udp", name, rdtype, answer))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        for name, rdtype in QUERIES:
            answer = dns.query.tcp(dns.message.make_query(name, rdtype), "127.0.0.1", port=port,
                                   timeout=5, sock=sock)
            results.append(("tcp", name, rdtype, answer))
    for transport, name, rdtype, answer in results:
        count = sum(len(rrset) for rrset in answer.answer)
        print(transport, name, rdtype, dns.rcode.to_text(answer.rcode()), count, flush=True)
    print("done", flush=True)


if __name__ == "__main__":
    main()
