"""Start unbound on 127.0.0.1 with a static test zone (no upstream needed).

Usage: dns_unbound.py DIR
Writes DIR/unbound.conf, prints the port it chose, then becomes unbound
(exec: the pid the caller has is unbound's).  Zone "test.": a.test A,
b.test AAAA, mx.test MX, txt.test TXT; any other name under test. is NXDOMAIN.
"""

from __future__ import annotations

import os
import shutil
import socket
import sys

ZONE = [
    "a.test. A 10.1.2.3",
    "a.test. A 10.1.2.4",
    "b.test. AAAA 2001:db8::1",
    "mx.test. MX 10 a.test.",
    'txt.test. TXT "hello dns"',
]


def free_port() -> int:
    # A port free for both UDP and TCP right now; unbound binds it a moment later.
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", 0))
            port = udp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port


def main() -> None:
    directory = os.path.abspath(sys.argv[1])
    binary = shutil.which("unbound") or "/usr/sbin/unbound"
    port = free_port()
    lines = [
        "server:",
        "  interface: 127.0.0.1",
        f"  port: {port}",
        "  do-daemonize: no",
        '  chroot: ""',
        '  username: ""',
        f'  directory: "{directory}"',
        f'  pidfile: "{directory}/unbound.pid"',
        "  use-syslog: no",
        '  logfile: ""',
        "  verbosity: 0",
        "  num-threads: 1",
        "  do-ip6: no",
        '  module-config: "iterator"',
        '  local-zone: "test." static',
        *[f"  local-data: '{record}'" for record in ZONE],
        "remote-control:",
        "  control-enable: no",
    ]
    conf = os.path.join(directory, "unbound.conf")
    with open(conf, "w") as f:
        f.write("\n".join(lines) + "\n")
    print(port, flush=True)
    os.execv(binary, [binary, "-c", conf])


if __name__ == "__main__":
    main()
