"""Acceptance of the tracing pipeline: real HTTP server and client, traced by a real agent.

The agent runs as ``sidetrace run --pid SERVER --pid CLIENT``; a subscriber
on its socket must receive exactly one server span and one client span per
request, with the right method, path, status, addresses and ports, and
nothing from an untraced server/client pair or from file I/O.
"""

from __future__ import annotations

import time
import urllib.request

import pytest

from wire import BlockingSubscriber, validate

from ._procs import agent, app, collect_spans, stop, wait_for_socket

pytestmark = pytest.mark.kernel

EXPECTED_STATUS = {
    "/ka/1": 200, "/ka/2": 200, "/ka/3": 200, "/chunked/1": 200, "/post/1": 201,
    "/pipe/1": 200, "/pipe/2": 200, "/pipe/3": 200, "/v6/1": 200, "/missing/1": 404,
    "/big/1": 200,
}


def test_http_requests_become_exactly_one_server_and_one_client_span_each(tmp_path):
    sock = tmp_path / "agent.sock"
    with app("http_server") as server, app("http_server") as untraced_server:
        port4, port6 = map(int, server.stdout.readline().split())
        untraced_port = int(untraced_server.stdout.readline().split()[0])
        with app("http_client", str(port4), str(port6)) as client:
            with agent(sock, "--pid", str(server.pid), "--pid", str(client.pid)) as agent_proc:
                wait_for_socket(sock, agent_proc)
                with BlockingSubscriber(sock, timeout=0.5) as sub:
                    assert sub.hello["schema_version"] >= 1
                    client.stdin.write("go\n")
                    client.stdin.flush()
                    # Untraced traffic at the same time: must produce nothing.
                    for i in range(3):
                        urllib.request.urlopen(f"http://127.0.0.1:{untraced_port}/untraced/{i}").read()
                    results = {}
                    for line in client.stdout:
                        if line.strip() == "done":
                            break
                        path, status, local_port = line.split()
                        results[path] = (int(status), int(local_port))
                    stats = []
                    spans = collect_spans(sub, 2 * len(EXPECTED_STATUS), limit=20, stats=stats)
                assert stop(agent_proc) == 0, agent_proc.stderr.read()
            assert not sock.exists(), "agent left its socket behind"

    assert {p: s for p, (s, _) in results.items()} == EXPECTED_STATUS

    for span in spans:
        validate(span)
    servers = [s for s in spans if s["kind"] == "server"]
    clients = [s for s in spans if s["kind"] == "client"]
    by_path = lambda group: sorted(s["attributes"].get("url.path") for s in group)  # noqa: E731
    assert by_path(servers) == sorted(EXPECTED_STATUS), spans
    assert by_path(clients) == sorted(EXPECTED_STATUS), spans
    assert all(s["pid"] == server.pid for s in servers)
    assert all(s["pid"] == client.pid for s in clients)
    assert not [s for s in spans if "untraced" in s["name"] or "file-io" in s["name"]]

    for kind_spans in (servers, clients):
        for span in kind_spans:
            attrs = span["attributes"]
            path = attrs["url.path"]
            status, client_port = results[path]
            v6 = path.startswith("/v6")
            method = "POST" if path.startswith("/post") else "GET"
            assert span["name"] == f"{method} {path}"
            assert span["protocol"] == "http"
            assert attrs["http.request.method"] == method
            assert attrs["http.response.status_code"] == status
            assert attrs["server.port"] == (port6 if v6 else port4)
            assert attrs["server.address"] == ("::1" if v6 else "127.0.0.1")
            assert attrs["client.port"] == client_port
            assert attrs["network.type"] == ("ipv6" if v6 else "ipv4")
            assert attrs["network.transport"] == "tcp"
            duration = span["end_time_unix_nano"] - span["start_time_unix_nano"]
            assert 0 <= duration < 5_000_000_000
            assert abs(span["start_time_unix_nano"] - time.time_ns()) < 120_000_000_000
            assert len(span["trace_id"]) == 16 and len(span["span_id"]) == 8
            assert span["status"] == ("error" if status >= 500 or (span["kind"] == "client" and status >= 400) else "unset")

    # The client's request bytes are the server's request bytes: same TCP sequence.
    server_seq = {s["attributes"]["url.path"]: s["attributes"].get("sidetrace.tcp.request_seq") for s in servers}
    for span in clients:
        seq = span["attributes"].get("sidetrace.tcp.request_seq")
        assert seq is not None and seq == server_seq[span["attributes"]["url.path"]]

    # Linked exactly: each server span is the child of its request's client span, in its trace.
    client_of = {s["attributes"]["url.path"]: s for s in clients}
    for span in servers:
        client = client_of[span["attributes"]["url.path"]]
        assert (span["trace_id"], span["parent_span_id"]) == (client["trace_id"], client["span_id"]), span

    assert stats, "no stats message arrived"
    last = stats[-1]
    assert sum(last["lost_events"]) == 0
    assert last["events"] > 0
    linker = last["linker"]
    assert linker["links"].get("exact", 0) >= len(EXPECTED_STATUS)  # every client->server hop keyed
