"""Acceptance of the exporters on the HTTP acceptance workload, traced by a real agent.

One agent traces the HTTP test server and two HTTP test clients.  Four
exporters subscribe to it: OTLP over gRPC and over HTTP to receivers built
from the official opentelemetry-proto definitions, OTLP over gRPC with a
queue of 5 to a receiver that is not there yet, and Prometheus.  Every span
must reach both OTLP receivers whole (ids, parents, times, status,
resource), the receivers going away and coming back must lose nothing, the
small queue must count exactly what it dropped, and Prometheus must count
each endpoint's requests.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from prometheus_client.parser import text_string_to_metric_families

from wire import BlockingSubscriber

from .._otlp_receiver import GrpcReceiver, HttpReceiver
from ._procs import REPO, agent, app, collect_spans, run_to_done, started, stop, wait_for_socket
from .test_http_pipeline import EXPECTED_STATUS

pytestmark = pytest.mark.kernel

KINDS = {Span.SPAN_KIND_SERVER: "server", Span.SPAN_KIND_CLIENT: "client"}
SMALL_QUEUE = 5


def sidetrace(*args: str):
    return started([sys.executable, "-m", "agent.cli", *args], cwd=REPO, stdout=subprocess.DEVNULL,
                   stderr=subprocess.PIPE, text=True, env={**os.environ, "SIDETRACE_CONFIG": os.devnull})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(port: int) -> dict[tuple, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def request_counts(port: int) -> dict[tuple[str, str], float]:
    """(kind, endpoint) -> requests counted, for the http protocol of service shop."""
    counts: dict[tuple[str, str], float] = {}
    for (name, labels), value in scrape(port).items():
        labels = dict(labels)
        if name == "sidetrace_requests_total" and labels["protocol"] == "http":
            assert labels["service"] == "shop", labels
            key = (labels["kind"], labels["endpoint"])
            counts[key] = counts.get(key, 0) + value
    return counts


def wait_until(condition, what: str, timeout: float = 40, show=None):
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}" + (f": {show()}" if show else ""))
        time.sleep(0.1)
    return result


def stop_exporter(proc) -> str:
    """Stop an exporter by its pid; its stderr, which ends with its counters."""
    os.kill(proc.pid, signal.SIGTERM)
    assert proc.wait(30) == 0
    err = proc.stderr.read()
    stop(proc)
    return err


def wait_for_subscribers(sub, count: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            msg = sub.receive()
        except TimeoutError:
            continue
        if msg is not None and msg["type"] == "stats" and msg["subscribers"] >= count:
            return
    raise AssertionError(f"{count} subscribers did not connect")


def prometheus_up(port: int) -> bool:
    try:
        scrape(port)
    except OSError:
        return False
    return True


def check_same_spans(wire_spans: list[dict], received: list[tuple], pids: dict[str, int]) -> None:
    by_id = {span.span_id: (resource, span) for resource, span in received}
    assert len(by_id) == len(received) == len(wire_spans)
    for msg in wire_spans:
        resource, span = by_id[msg["span_id"]]
        assert span.trace_id == msg["trace_id"]
        assert span.parent_span_id == (msg["parent_span_id"] or b"")
        assert (span.name, KINDS[span.kind]) == (msg["name"], msg["kind"])
        assert (span.start_time_unix_nano, span.end_time_unix_nano) == (
            msg["start_time_unix_nano"], msg["end_time_unix_nano"])
        assert span.status.code == {"unset": 0, "ok": 1, "error": 2}[msg["status"]]
        attrs = {kv.key: kv.value for kv in span.attributes}
        assert attrs["url.path"].string_value == msg["attributes"]["url.path"]
        assert attrs["http.response.status_code"].int_value == msg["attributes"]["http.response.status_code"]
        assert attrs["thread.id"].int_value == msg["tid"]
        assert resource["service.name"].string_value == "shop", (msg.get("resource"), msg["kind"], msg["pid"])
        assert resource["process.pid"].int_value == pids[msg["kind"]] == msg["pid"]
        assert resource["host.name"].string_value == socket.gethostname()
        assert resource["process.executable.name"].string_value.startswith("python")
    # Parent links intact: every server span's parent is its client span, in the same trace.
    servers = [m for m in wire_spans if m["kind"] == "server"]
    clients = {m["span_id"]: m for m in wire_spans if m["kind"] == "client"}
    for msg in servers:
        _, span = by_id[msg["span_id"]]
        parent = clients[span.parent_span_id]
        assert parent["trace_id"] == span.trace_id
        assert parent["attributes"]["url.path"] == msg["attributes"]["url.path"]


def test_exporters_on_the_http_acceptance_workload(tmp_path):
    sock = tmp_path / "agent.sock"
    prom_port = free_port()
    late = GrpcReceiver(free_port())  # started only at the end
    with GrpcReceiver() as grpc_rx, HttpReceiver() as http_rx, app("http_server") as server:
        port4, port6 = map(int, server.stdout.readline().split())
        with app("http_client", str(port4), str(port6)) as client1, \
                app("http_client", str(port4), str(port6)) as client2, \
                agent(sock, "--pid", str(server.pid), "--pid", str(client1.pid), "--pid", str(client2.pid),
                      "--service", "shop=comm:python*") as agent_proc:
            wait_for_socket(sock, agent_proc)
            common = ("--socket", str(sock), "--batch-delay", "0.1", "--backoff-max", "0.5")
            with sidetrace("export", "otlp", *common, "--protocol", "grpc", "--endpoint", grpc_rx.endpoint,
                           "--header", "x-tenant=acceptance") as grpc_exp, \
                    sidetrace("export", "otlp", *common, "--endpoint", http_rx.endpoint) as http_exp, \
                    sidetrace("export", "otlp", *common, "--protocol", "grpc", "--endpoint", late.endpoint,
                              "--max-queue", str(SMALL_QUEUE)) as small_exp, \
                    sidetrace("export", "prometheus", "--socket", str(sock),
                              "--listen", f"127.0.0.1:{prom_port}") as prom_exp, \
                    BlockingSubscriber(sock, timeout=0.5) as sub:
                # Every exporter subscribed before any traffic.
                wait_for_subscribers(sub, 5)
                wait_until(lambda: prometheus_up(prom_port), "prometheus serving")

                run_to_done(client1)
                first = collect_spans(sub, 2 * len(EXPECTED_STATUS), limit=20)
                assert len(first) == 2 * len(EXPECTED_STATUS)
                pids = {"server": server.pid, "client": client1.pid}
                for rx in (grpc_rx, http_rx):
                    check_same_spans(first, rx.wait_for_spans(len(first)), pids)
                assert all(h.get("x-tenant") == "acceptance" for h in grpc_rx.headers)
                counts = wait_until(lambda: (c := request_counts(prom_port)) and sum(c.values()) == len(first)
                                    and c, "prometheus counts")
                for path, status in EXPECTED_STATUS.items():
                    method = "POST" if path.startswith("/post") else "GET"
                    assert counts[("server", f"{method} {path}")] == 1
                    assert counts[("client", f"{method} {path}")] == 1
                # The host's figures from the agent's monitor (a metrics message every 5 s).
                host = wait_until(lambda: {labels: value for (name, labels), value in scrape(prom_port).items()
                                           if name == "system_cpu_time_seconds_total"}, "host metrics")
                assert {dict(labels)["cpu_mode"] for labels in host} >= {"user", "system", "idle"}

                # The receivers go away; spans wait in the queues and arrive when they are back.
                grpc_rx.stop()
                http_rx.stop()
                run_to_done(client2)
                second = collect_spans(sub, 2 * len(EXPECTED_STATUS), limit=20)
                assert len(second) == 2 * len(EXPECTED_STATUS)
                counts = wait_until(lambda: (c := request_counts(prom_port)) and sum(c.values()) == 2 * len(first)
                                    and c, "prometheus counts after the second run",
                                    show=lambda: request_counts(prom_port))
                assert len(counts) == len(first) and set(counts.values()) == {2}
                grpc_back = GrpcReceiver(grpc_rx.port).start()
                http_back = HttpReceiver(http_rx.port).start()
                late.start()
                try:
                    pids = {"server": server.pid, "client": client2.pid}
                    for rx in (grpc_back, http_back):
                        check_same_spans(second, rx.wait_for_spans(len(second)), pids)
                    wait_until(lambda: len(late.spans()) >= SMALL_QUEUE, "the small queue's spans")
                    outputs = {name: stop_exporter(proc) for name, proc in
                               (("grpc", grpc_exp), ("http", http_exp), ("small", small_exp))}
                    assert stop(prom_exp) == 0
                finally:
                    grpc_back.stop()
                    http_back.stop()
                    late.stop()
            assert stop(agent_proc) == 0, agent_proc.stderr.read()

    counters = {name: dict(kv.split("=") for kv in text.strip().splitlines()[-1].split(": ")[-1].split())
                for name, text in outputs.items()}
    total = str(len(first) + len(second))
    for name in ("grpc", "http"):
        assert counters[name]["received"] == counters[name]["exported"] == total, outputs[name]
        assert counters[name]["dropped_queue_full"] == "0"
    small = counters["small"]
    assert small["received"] == total
    assert small["exported"] == str(SMALL_QUEUE)
    assert small["dropped_queue_full"] == str(int(total) - SMALL_QUEUE)
    assert {span.span_id for _, span in late.spans()} == {m["span_id"] for m in first[:SMALL_QUEUE]}
