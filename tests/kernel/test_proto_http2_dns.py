"""gRPC over HTTP/2 and DNS through the real agent: real servers, real clients, real kernel.

The agent traces a grpcio server and its client, and unbound and a dnspython
client.  A subscriber must receive exactly one server span and one client
span per call and per query, with the rpc.* and dns.* attributes, gRPC
status codes and DNS response codes the clients themselves saw.
"""

from __future__ import annotations

from collections import Counter

import pytest

from wire import BlockingSubscriber, validate

from .._servers import wait_for_dns
from ._procs import agent, app, collect_spans, run_to_done, stop, wait_for_socket

pytestmark = pytest.mark.kernel

GRPC_CALLS = 11   # h2_grpc_client.py makes this many calls
DNS_QUERIES = 8   # dns_client.py: 4 over UDP, 4 over TCP


def _require(module: str) -> None:
    try:
        __import__(module)
    except ImportError:
        from tests.conftest import IN_CI
        if IN_CI:
            pytest.fail(f"{module} is required in CI (tests/requirements.txt)")
        pytest.skip(f"{module} is not installed")


def test_grpc_calls_and_dns_queries_become_server_and_client_spans(tmp_path):
    for module in ("grpc", "dns"):
        _require(module)
    sock = tmp_path / "agent.sock"
    unbound_dir = tmp_path / "unbound"
    unbound_dir.mkdir()
    with app("h2_grpc_server") as grpc_server, app("dns_unbound", str(unbound_dir)) as unbound:
        grpc_port = int(grpc_server.stdout.readline())
        dns_port = int(unbound.stdout.readline())
        wait_for_dns(dns_port)  # before the agent starts: this query is not traced
        with app("h2_grpc_client", str(grpc_port), "--wait") as grpc_client, \
                app("dns_client", str(dns_port), "--wait") as dns_client:
            pids = [grpc_server.pid, grpc_client.pid, unbound.pid, dns_client.pid]
            args = [arg for pid in pids for arg in ("--pid", str(pid))]
            with agent(sock, *args) as agent_proc:
                wait_for_socket(sock, agent_proc)
                with BlockingSubscriber(sock, timeout=0.5) as sub:
                    for client in (grpc_client, dns_client):
                        client.stdin.write("go\n")
                        client.stdin.flush()
                    calls = [line.split() for line in run_to_done(grpc_client, go=False)]
                    queries = [line.split() for line in run_to_done(dns_client, go=False)]
                    spans = collect_spans(sub, 2 * (GRPC_CALLS + DNS_QUERIES))
                assert stop(agent_proc) == 0, agent_proc.stderr.read()

    assert len(calls) == GRPC_CALLS and len(queries) == DNS_QUERIES
    for span in spans:
        validate(span)
    grpc_spans = [s for s in spans if s["protocol"] == "http2"]
    dns_spans = [s for s in spans if s["protocol"] == "dns"]
    assert len(grpc_spans) + len(dns_spans) == len(spans), Counter(s["protocol"] for s in spans)
    _check_grpc(grpc_spans, calls, grpc_port, grpc_server.pid, grpc_client.pid)
    _check_dns(dns_spans, queries, dns_port, unbound.pid, dns_client.pid)


def _check_grpc(spans, calls, port, server_pid, client_pid):
    """One server and one client span per call, by stream id; every value right.

    The tracer gathers a vectored write's bytes from its first 8 iovecs only,
    and gRPC writes a header block in up to ~20 pieces: a block cut there
    makes that direction's later HPACK references unknown.  So the side whose
    header blocks arrive by single-buffer reads must always be complete (the
    server knows each request, the client each status up to the 100 KB call,
    whose trailers may share a read past the 4 KiB capture); the other side's
    values are checked whenever present.
    """
    servers = [s for s in spans if s["kind"] == "server"]
    clients = [s for s in spans if s["kind"] == "client"]
    assert len(servers) == len(clients) == len(calls), [s["name"] for s in spans]
    assert {s["pid"] for s in servers} == {server_pid}
    assert {s["pid"] for s in clients} == {client_pid}
    big_index = next(i for i, c in enumerate(calls) if c[0] == "big")
    for group, kind in ((servers, "server"), (clients, "client")):
        by_stream = {s["attributes"]["sidetrace.http2.stream_id"]: s for s in group}
        # The client prints its calls in the order it started them: stream ids 1, 3, 5, ...
        assert sorted(by_stream) == list(range(1, 2 * len(calls), 2))
        for index, (label, path, code) in enumerate(calls):
            span = by_stream[2 * index + 1]
            attrs = span["attributes"]
            service, method = path[1:].split("/")
            assert attrs["rpc.system"] == "grpc"
            assert attrs["server.port"] == port and attrs["server.address"] == "127.0.0.1"
            assert attrs["network.transport"] == "tcp"
            assert attrs["network.protocol.version"] == "2"
            if kind == "server" or "rpc.method" in attrs:
                assert span["name"] == f"{service}/{method}", (kind, label, attrs)
                assert attrs["rpc.service"] == service and attrs["rpc.method"] == method
                assert attrs["url.path"] == path and attrs["http.request.method"] == "POST"
            status = attrs.get("rpc.grpc.status_code")
            if kind == "client" and index < big_index:
                assert status == int(code), (label, attrs)
            else:
                assert status in (None, int(code)), (kind, label, attrs)
            if status is not None:
                assert span["status"] == ("error" if status else "unset")
            if label == "fail" and status is not None:
                assert span["status_message"] == "no such thing: ünïcode 100% here"
            duration = span["end_time_unix_nano"] - span["start_time_unix_nano"]
            assert 0 <= duration < 10_000_000_000
            if label.startswith("concurrent"):
                assert duration >= 150_000_000  # the Slow method sleeps 0.2 s
    # Both ends saw the same bytes: the request's first frame has one TCP sequence number.
    server_seq = {s["attributes"]["sidetrace.http2.stream_id"]: s["attributes"].get(
        "sidetrace.tcp.request_seq") for s in servers}
    for span in clients:
        seq = span["attributes"].get("sidetrace.tcp.request_seq")
        assert seq is not None and seq == server_seq[span["attributes"]["sidetrace.http2.stream_id"]]


def _check_dns(spans, queries, port, server_pid, client_pid):
    servers = [s for s in spans if s["kind"] == "server"]
    clients = [s for s in spans if s["kind"] == "client"]
    assert len(servers) == len(clients) == len(queries), [s["name"] for s in spans]
    assert {s["pid"] for s in servers} == {server_pid}
    assert {s["pid"] for s in clients} == {client_pid}

    def key(span):
        attrs = span["attributes"]
        return (attrs["network.transport"], attrs["dns.question.name"], attrs["dns.question.type"],
                attrs["dns.response_code"], str(attrs["dns.answer_count"]))

    expected = sorted(tuple(q) for q in queries)
    assert sorted(key(s) for s in servers) == expected
    assert sorted(key(s) for s in clients) == expected
    for span in spans:
        attrs = span["attributes"]
        assert span["name"] == f"DNS {attrs['dns.question.type']} {attrs['dns.question.name']}"
        assert attrs["server.port"] == port and attrs["server.address"] == "127.0.0.1"
        if attrs["dns.response_code"] == "NOERROR":
            assert span["status"] == "unset"
        else:
            assert span["status"] == "error" and attrs["error.type"] == "NXDOMAIN"
        if attrs["dns.question.name"] == "a.test":
            assert sorted(attrs["sidetrace.dns.answers"].split(",")) == ["10.1.2.3", "10.1.2.4"]
        duration = span["end_time_unix_nano"] - span["start_time_unix_nano"]
        assert 0 <= duration < 5_000_000_000
