"""Two hosts, two agents, one trace: ``sidetrace assemble`` joins what each agent saw.

The hosts are two network namespaces joined by a veth pair (10.200.0.1/24 and
10.200.0.2/24, only inside the namespaces this test creates).  Host A runs the
load generator and the stock service; host B runs the service in between:

    A: tier_load --> B: service (threads) --> A: stock

Agent A traces A's processes, agent B traces B's.  Each links its own
processes but sees only one end of every hop, so agent A leaves the stock
server span a root.  The assembler subscribes to both; its output must give
every request one trace with every parent right, as the programs' own
request-id ledgers say.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import pytest

from wire import BlockingSubscriber, validate

from ._netns import joined_namespaces
from ._procs import APPS, REPO, agent, started, wait_for_socket, wait_for_stats
from .apps.tier_rig import ground_truth, identify, subscribe

pytestmark = pytest.mark.kernel

HOST_A, HOST_B = "10.200.0.1", "10.200.0.2"
CLIENTS, REQUESTS = 4, 5
ROLES = ("load.client", "service.server", "service.client", "stock.server")
# child role -> (parent role, whether the hop crosses hosts)
EDGES = {"service.server": ("load.client", True), "service.client": ("service.server", False),
         "stock.server": ("service.client", True)}


def two_hosts():
    """Two network namespaces joined by a veth pair; removed (with the pair) on exit."""
    return joined_namespaces("sidetrace", (HOST_A, HOST_B))


def in_host(host: str, app: str, *args: str):
    return started(["ip", "netns", "exec", host, sys.executable, str(APPS / app), *args],
                   stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def collect(sub: BlockingSubscriber, want: int, settle: float = 2.0, limit: float = 40) -> list[dict]:
    spans: list[dict] = []
    deadline = time.monotonic() + limit
    quiet_since = None
    while time.monotonic() < deadline:
        if len(spans) >= want:
            quiet_since = quiet_since or time.monotonic()
            if time.monotonic() - quiet_since > settle:
                break
        try:
            msg = sub.receive()
        except TimeoutError:
            continue
        if msg is None:
            break
        if msg["type"] == "span":
            spans.append(msg)
    return spans


def wait_until_assembling(sub: BlockingSubscriber, agents: int, limit: float = 60) -> None:
    """Until the assembler's stats say it is subscribed to every agent."""
    def assembling(msg: dict) -> bool:
        upstreams = msg.get("upstreams", [])
        return len(upstreams) == agents and all(u["connected"] for u in upstreams)

    wait_for_stats(sub, assembling, "the assembler subscribed to every agent", limit)


def test_assemble_joins_the_spans_of_two_hosts_into_one_trace_per_request():
    workdir = Path(tempfile.mkdtemp(prefix="st-mh-", dir="/tmp"))  # short Unix socket paths
    try:
        with two_hosts() as (host_a, host_b), ExitStack() as stack:
            stock = stack.enter_context(in_host(
                host_a, "tier_service.py", "--bind", HOST_A, "--log", str(workdir / "stock.jsonl"),
                "--work-ms", "2"))
            stock_port = int(stock.stdout.readline())
            service = stack.enter_context(in_host(
                host_b, "tier_service.py", "--bind", HOST_B, "--log", str(workdir / "service.jsonl"),
                "--downstream", f"{HOST_A}:{stock_port}"))
            service_port = int(service.stdout.readline())
            load = stack.enter_context(in_host(
                host_a, "tier_load.py", "--host", HOST_B, "--port", str(service_port),
                "--log", str(workdir / "load.jsonl"), "--clients", str(CLIENTS),
                "--requests", str(REQUESTS)))
            pids = {"load": [load.pid], "service": [service.pid], "stock": [stock.pid]}

            sock_a, sock_b, sock_out = (workdir / n for n in ("a.sock", "b.sock", "all.sock"))
            agent_a = stack.enter_context(agent(sock_a, "--pid", str(load.pid), "--pid", str(stock.pid)))
            agent_b = stack.enter_context(agent(sock_b, "--pid", str(service.pid)))
            wait_for_socket(sock_a, agent_a)
            wait_for_socket(sock_b, agent_b)
            assembler = stack.enter_context(started(
                [sys.executable, "-m", "agent.cli", "assemble", "--connect", str(sock_a),
                 "--connect", str(sock_b), "--socket", str(sock_out), "--stats-interval", "0.5"],
                cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                text=True))
            wait_for_socket(sock_out, assembler)

            want = CLIENTS * REQUESTS * len(ROLES)
            with subscribe(sock_out) as joined, subscribe(sock_a) as only_a:
                assert joined.hello["schema_version"] >= 1
                wait_until_assembling(joined, agents=2)
                load.stdin.write("go\n")
                load.stdin.flush()
                assert load.stdout.readline().strip() == "done"
                spans_a = collect(only_a, CLIENTS * REQUESTS * 2, limit=20)
                spans = collect(joined, want)
            ports = {"service": service_port, "stock": stock_port}
            truth = ground_truth(workdir, pids, ports, front="service")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    assert len(truth.requests) == CLIENTS * REQUESTS
    for span in spans:
        validate(span)
    known = identify(spans, truth)
    by_request: dict[str, dict[str, dict]] = {}
    for span in spans:
        if span["span_id"] in known:
            request_id, role = known[span["span_id"]]
            by_request.setdefault(request_id, {})[role] = span
    assert sorted(by_request) == sorted(truth.requests)
    for request_id, hops in by_request.items():
        assert sorted(hops) == sorted(ROLES), request_id
        assert hops["load.client"]["parent_span_id"] is None
        assert len({s["trace_id"] for s in hops.values()}) == 1, hops
        for child, (parent, crosses) in EDGES.items():
            assert hops[child]["parent_span_id"] == hops[parent]["span_id"], (child, hops)
            expected = "exact" if crosses else "thread"
            assert hops[child]["attributes"]["sidetrace.link.confidence"] == expected

    # Alone, agent A cannot know the stock server span's parent: it is on host B.
    stock_a = [s for s in spans_a if s["pid"] == pids["stock"][0] and s["kind"] == "server"]
    assert len(stock_a) == CLIENTS * REQUESTS
    assert all(s["parent_span_id"] is None for s in stock_a)
    assert {s["attributes"]["sidetrace.link.reason"] for s in stock_a} == {"no-client-span"}
