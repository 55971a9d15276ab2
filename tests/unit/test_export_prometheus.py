"""``sidetrace export prometheus``: spans and stats from a real SpanServer, scraped over HTTP."""

from __future__ import annotations

import urllib.request

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

import wire
from agent.export._prometheus import ListenError, PrometheusExporter, parse_listen, serve_prometheus

TIMEOUT = 30


def span(i: int, name: str, *, status="unset", service="web", kind="server", ms=3) -> dict:
    start = 1_700_000_000_000_000_000 + i
    return wire.make_span(trace_id=i.to_bytes(16, "big"), span_id=i.to_bytes(8, "big"), parent_span_id=None,
                          name=name, kind=kind, start_time_unix_nano=start,
                          end_time_unix_nano=start + ms * 1_000_000, pid=10, tid=10, comm="web",
                          protocol="http", status=status, resource={"service.name": service})


def samples(text: str) -> dict[tuple, float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


async def _wait(condition) -> None:
    with trio.fail_after(TIMEOUT):
        while not condition():
            await trio.sleep(0.02)


async def _scrape(port: int) -> dict[tuple, float]:
    def get() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
            return resp.read().decode()
    return samples(await trio.to_thread.run_sync(get))


def _labels(endpoint, service="web", kind="server", **more):
    return tuple(sorted({"service": service, "endpoint": endpoint, "kind": kind, "protocol": "http",
                         **more}.items()))


async def test_red_metrics_per_service_and_endpoint_and_agent_stats(tmp_path):
    sock = str(tmp_path / "agent.sock")
    exporter = PrometheusExporter(sock, max_series=4)
    async with trio.open_nursery() as nursery:
        server = wire.SpanServer(sock, agent_version="1")
        await nursery.start(server.serve)
        port = await nursery.start(serve_prometheus, exporter, ("127.0.0.1", 0))
        await _wait(lambda: server.subscriber_count == 1)
        spans = ([span(i, "GET /a") for i in range(5)] + [span(10, "GET /a", status="error", ms=300)]
                 + [span(20 + i, "GET /b", service="api", kind="client") for i in range(2)]
                 + [span(30, 'GET /evil"\n{x="1"}')]
                 + [span(40 + i, f"GET /many/{i}") for i in range(3)])  # two beyond the cap of 4
        for s in spans:
            server.publish(s)
        server.publish_stats(wire.make_stats(time_unix_nano=1, events=123, lost_events=[0, 4], spans=12,
                                             map_fill={"pids": 3}, kernel_errors={"no_socket": 2}),
                             parse_errors=1)
        await _wait(lambda: exporter.feed.last_stats is not None and exporter.spans.spans._value.get() == 12)
        got = await _scrape(port)
        nursery.cancel_scope.cancel()

    assert got[("sidetrace_requests_total", _labels("GET /a"))] == 6
    assert got[("sidetrace_request_errors_total", _labels("GET /a"))] == 1
    assert got[("sidetrace_request_duration_seconds_count", _labels("GET /a"))] == 6
    assert got[("sidetrace_request_duration_seconds_bucket", _labels("GET /a", le="0.005"))] == 5
    assert got[("sidetrace_request_duration_seconds_sum", _labels("GET /a"))] == pytest.approx(0.315)
    assert got[("sidetrace_requests_total", _labels("GET /b", "api", "client"))] == 2
    # Observed text is label data, escaped on the way out and read back exactly.
    assert got[("sidetrace_requests_total", _labels('GET /evil"\n{x="1"}'))] == 1
    assert got[("sidetrace_requests_total", _labels("GET /many/0"))] == 1
    assert got[("sidetrace_requests_total", _labels("other"))] == 2
    assert got[("sidetrace_exporter_series_overflow_total", ())] == 2
    assert got[("sidetrace_agent_events_total", ())] == 123
    assert got[("sidetrace_agent_lost_events_total", (("cpu", "1"),))] == 4
    assert got[("sidetrace_agent_map_fill", (("map", "pids"),))] == 3
    assert got[("sidetrace_agent_kernel_errors_total", (("error", "no_socket"),))] == 2
    assert got[("sidetrace_agent_parse_errors_total", ())] == 1
    assert got[("sidetrace_agent_subscribers", ())] == 1
    assert got[("sidetrace_agent_up", ())] == 1


async def test_host_metrics_from_the_agents_metrics_message(tmp_path):
    sock = str(tmp_path / "agent.sock")
    exporter = PrometheusExporter(sock)
    bounds = [0.001, 0.01]
    metrics = [
        {"name": "system.cpu.time", "unit": "s", "kind": "sum",
         "points": [{"attributes": {"cpu.mode": "user"}, "value": 12.5},
                    {"attributes": {"cpu.mode": "idle"}, "value": 80.0}]},
        {"name": "system.memory.usage", "unit": "By", "kind": "gauge",
         "points": [{"attributes": {"system.memory.state": "used"}, "value": 1 << 30}]},
        {"name": "system.cpu.utilization", "unit": "1", "kind": "gauge",
         "points": [{"attributes": {"cpu.mode": "user"}, "value": 0.25}]},
        {"name": "sidetrace.tcp.retransmits", "unit": "{segment}", "kind": "sum",
         "points": [{"attributes": {}, "value": 7}]},
        {"name": "sidetrace.disk.operation.duration", "unit": "s", "kind": "histogram", "explicit_bounds": bounds,
         "points": [{"attributes": {"system.device": "vda", "disk.io.direction": "read"}, "count": 6,
                     "sum": 0.04, "bucket_counts": [1, 3, 2]}]},
        # per process: left out (the agent sends a process only when it moved)
        {"name": "process.cpu.time", "unit": "s", "kind": "sum",
         "points": [{"attributes": {"process.pid": 42}, "value": 1.0}]},
        # malformed: no effect on the rest
        {"name": "bad.kind", "unit": "1", "kind": "summary", "points": [{"attributes": {}, "value": 1}]},
        {"name": "bad.histogram", "unit": "s", "kind": "histogram", "explicit_bounds": bounds,
         "points": [{"attributes": {}, "count": 1, "sum": 1.0, "bucket_counts": [1]}]},
        {"name": "bad.value", "unit": "1", "kind": "gauge", "points": [{"attributes": {}, "value": "x"}, 5]},
        "not a record",
    ]
    async with trio.open_nursery() as nursery:
        server = wire.SpanServer(sock, agent_version="1")
        await nursery.start(server.serve)
        port = await nursery.start(serve_prometheus, exporter, ("127.0.0.1", 0))
        await _wait(lambda: server.subscriber_count == 1)
        server.publish(wire.make_metrics(time_unix_nano=2, start_time_unix_nano=1, groups=["cpu"],
                                         metrics=metrics))
        await _wait(lambda: exporter.host.last is not None)
        got = await _scrape(port)
        nursery.cancel_scope.cancel()

    assert got[("system_cpu_time_seconds_total", (("cpu_mode", "user"),))] == 12.5
    assert got[("system_cpu_time_seconds_total", (("cpu_mode", "idle"),))] == 80.0
    assert got[("system_memory_usage_bytes", (("system_memory_state", "used"),))] == 1 << 30
    assert got[("system_cpu_utilization_ratio", (("cpu_mode", "user"),))] == 0.25
    assert got[("sidetrace_tcp_retransmits_total", ())] == 7
    disk = (("disk_io_direction", "read"), ("system_device", "vda"))
    assert [got[("sidetrace_disk_operation_duration_seconds_bucket", tuple(sorted((*disk, ("le", le)))))]
            for le in ("0.001", "0.01", "+Inf")] == [1, 4, 6]
    assert got[("sidetrace_disk_operation_duration_seconds_count", disk)] == 6
    assert got[("sidetrace_disk_operation_duration_seconds_sum", disk)] == pytest.approx(0.04)
    assert not [key for key in got if key[0].startswith(("process_", "bad_"))]


def test_listen_addresses():
    assert parse_listen(":9464") == ("0.0.0.0", 9464)
    assert parse_listen("127.0.0.1:1") == ("127.0.0.1", 1)
    assert parse_listen("[::1]:9464") == ("::1", 9464)
    for bad in ("9464", "host:", "host:x", "h:70000"):
        with pytest.raises(ListenError):
            parse_listen(bad)
