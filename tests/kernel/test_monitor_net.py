"""Network: TCP retransmissions over a lossy link against the kernel's TcpRetransSegs.

Two network namespaces this test creates, joined by a veth pair whose two
ends drop packets.  The kernels these tests run on have no netem qdisc
(CONFIG_NET_SCH_NETEM is off), so the loss comes from a token bucket (tbf,
set up with pyroute2) with a queue far shorter than TCP's window: it drops
what overflows, as a congested link does.  The server runs in one
namespace, the client in the other; one agent traces both.  The
retransmissions sidetrace counts for the two processes must match the
TcpRetransSegs the two namespaces' kernels count, and spans crossing the
link carry them.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from wire import BlockingSubscriber, validate

from ._netns import joined_namespaces
from ._procs import APPS, agent, started, wait_for_socket

pytestmark = pytest.mark.kernel

CLIENT_ADDR, SERVER_ADDR = "10.201.0.1", "10.201.0.2"
# 40 Mbit/s with 20 ms of queue (100 KB): TCP's window outgrows it now and then
LINK = dict(rate="40mbit", burst=16384, latency="20ms")
REQUESTS, SIZE = 40, 200_000


def lossy_link():
    """Namespaces (client, server) joined by a veth pair that drops what overflows its short queues."""
    return joined_namespaces("stnet", (CLIENT_ADDR, SERVER_ADDR), qdisc={"kind": "tbf", **LINK})


def retrans_segs(namespace: str) -> int:
    """TcpRetransSegs of ``namespace``'s kernel (/proc/net/snmp read from inside it)."""
    text = subprocess.run(["ip", "netns", "exec", namespace, "cat", "/proc/net/snmp"], check=True,
                          capture_output=True, text=True).stdout
    header, values = [line.split() for line in text.splitlines() if line.startswith("Tcp:")]
    return int(values[header.index("RetransSegs")])


def in_namespace(namespace: str, app: str, *args: str):
    return started(["ip", "netns", "exec", namespace, sys.executable, str(APPS / app), *args],
                   stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def process_retransmits(msg: dict, pids: set[int]) -> int | None:
    """The processes' retransmissions; a process that never retransmitted has no point."""
    for metric in msg["metrics"]:
        if metric["name"] == "sidetrace.process.tcp.retransmits":
            return sum(p["value"] for p in metric["points"] if p["attributes"]["process.pid"] in pids)
    return None


def test_retransmissions_on_a_lossy_link_match_tcp_retranssegs(tmp_path: Path):
    sock = tmp_path / "st.sock"
    with lossy_link() as (client_ns, server_ns), \
            in_namespace(server_ns, "monitor_server.py", SERVER_ADDR) as server:
        port = int(server.stdout.readline())
        with in_namespace(client_ns, "monitor_client.py", SERVER_ADDR, str(port), str(REQUESTS),
                          str(SIZE)) as client:
            assert client.stdout.readline() == "ready\n"
            pids = {server.pid, client.pid}
            with agent(sock, "--pid", str(server.pid), "--pid", str(client.pid), "--metrics", "net",
                       "--metrics-interval", "0.5") as proc:
                wait_for_socket(sock, proc)
                with BlockingSubscriber(sock, timeout=0.5) as sub:
                    truth_before = sum(retrans_segs(ns) for ns in (client_ns, server_ns))
                    client.stdin.write("go\n")
                    client.stdin.flush()
                    assert client.stdout.readline() == "done\n"
                    truth = sum(retrans_segs(ns) for ns in (client_ns, server_ns)) - truth_before
                    spans, counted, deadline = [], None, time.monotonic() + 60
                    # until every span arrived and two metrics messages agree
                    while time.monotonic() < deadline:
                        try:
                            msg = sub.receive()
                        except TimeoutError:
                            continue
                        if msg["type"] == "span" and msg["kind"] == "client":
                            spans.append(msg)
                        elif msg["type"] == "metrics":
                            validate(msg)
                            now = process_retransmits(msg, pids)
                            if now is not None and now == counted and len(spans) >= REQUESTS:
                                break
                            counted = now
    assert truth > 20, f"the link should have lost packets (TcpRetransSegs grew by {truth})"
    assert counted == pytest.approx(truth, rel=0.10)
    assert len(spans) >= REQUESTS
    carried = [s["attributes"].get("sidetrace.tcp.retransmits") for s in spans]
    assert all(isinstance(c, int) for c in carried)
    assert sum(carried) > 0, "spans crossing the lossy link carry its retransmissions"
    assert sum(carried) <= counted
    assert all(s["attributes"]["sidetrace.tcp.rtt_us"] > 0 for s in spans)
