"""``sidetrace export otlp`` against real OTLP receivers (gRPC and HTTP) on loopback.

Spans come from a real SpanServer over a Unix socket; the receivers are
built from the official opentelemetry-proto service definitions (see
tests/_otlp_receiver.py).  No root needed.
"""

from __future__ import annotations

import gc
import os
import random
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
import trio

import wire
from agent.export import missing_package_message
from agent.export._otlp import OtlpExporter, serve_otlp
from agent.export._otlp_map import MalformedSpan, build_request, to_span
from agent.export._queue import Backoff
from agent.export._transport import EndpointError, make_transport, parse_endpoint, parse_header
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from .._otlp_receiver import GrpcReceiver, HttpReceiver

REPO = Path(__file__).resolve().parents[2]
TIMEOUT = 30


@pytest.fixture(autouse=True)
def _collect_grpc_channels():
    # A closed grpc channel's epoll fds go with the channel object, which
    # sits in a reference cycle: collect it so the session's fd check
    # sees what is really still open.
    yield
    gc.collect()


def wire_span(i: int = 0, **over) -> dict:
    rng = random.Random(i)
    span = wire.make_span(
        trace_id=rng.randbytes(15) + b"\x01", span_id=rng.randbytes(7) + b"\x01",
        parent_span_id=rng.randbytes(7) + b"\x02", name=f"GET /item/{i}", kind="server",
        start_time_unix_nano=1_700_000_000_000_000_000 + i, end_time_unix_nano=1_700_000_000_500_000_000 + i,
        pid=4242, tid=4243, comm="web", protocol="http", status="error", status_message="500",
        attributes={"url.path": f"/item/{i}", "http.response.status_code": 500, "server.port": 8080,
                    "sidetrace.link.confidence": 0.5, "flag": True, "raw": b"\x00\x01",
                    "big": 1 << 63},
        conn_id=77,
        links=[{"trace_id": b"\x11" * 16, "span_id": b"\x22" * 8, "attributes": {"why": "exact"}}],
        resource={"service.name": "web", "host.name": "h1", "process.pid": 4242,
                  "process.executable.name": "web", "process.command_args": ["web", "--port", "8080"]},
    )
    span.update(over)
    return span


# --- mapping ---------------------------------------------------------------------

def _attrs(key_values) -> dict:
    out = {}
    for kv in key_values:
        which = kv.value.WhichOneof("value")
        value = getattr(kv.value, which)
        if which == "array_value":
            value = [getattr(v, v.WhichOneof("value")) for v in value.values]
        out[kv.key] = value
    return out


def test_every_wire_field_maps_to_its_otlp_place():
    msg = wire_span(1)
    wire.validate(msg)
    span = to_span(msg)
    assert span.trace_id == msg["trace_id"] and span.span_id == msg["span_id"]
    assert span.parent_span_id == msg["parent_span_id"]
    assert span.name == "GET /item/1"
    assert span.kind == Span.SPAN_KIND_SERVER
    assert span.start_time_unix_nano == msg["start_time_unix_nano"]
    assert span.end_time_unix_nano == msg["end_time_unix_nano"]
    assert span.status.code == Status.STATUS_CODE_ERROR and span.status.message == "500"
    attrs = _attrs(span.attributes)
    assert attrs == {"url.path": "/item/1", "http.response.status_code": 500, "server.port": 8080,
                     "sidetrace.link.confidence": 0.5, "flag": True, "raw": b"\x00\x01",
                     "big": str(1 << 63),  # beyond int64: kept as text, not wrapped
                     "thread.id": 4243, "sidetrace.protocol": "http", "sidetrace.conn_id": 77}
    [link] = span.links
    assert (link.trace_id, link.span_id, _attrs(link.attributes)) == (b"\x11" * 16, b"\x22" * 8, {"why": "exact"})

    root = to_span(wire_span(2, parent_span_id=None, kind="client", status="unset"))
    assert root.parent_span_id == b"" and root.kind == Span.SPAN_KIND_CLIENT
    assert root.status.code == Status.STATUS_CODE_UNSET


def test_spans_are_grouped_by_resource_and_a_span_without_one_gets_its_process():
    spans = [wire_span(1), wire_span(2), wire_span(3, pid=7, comm="db", resource={"service.name": "db"}),
             {k: v for k, v in wire_span(4, pid=9, comm="old").items() if k != "resource"}]
    request, malformed = build_request(spans, host_name="agent-host", scope_version="1.2")
    assert malformed == []
    groups = [(_attrs(rs.resource.attributes), [s.name for ss in rs.scope_spans for s in ss.spans])
              for rs in request.resource_spans]
    assert groups == [
        ({"service.name": "web", "host.name": "h1", "process.pid": 4242, "process.executable.name": "web",
          "process.command_args": ["web", "--port", "8080"]}, ["GET /item/1", "GET /item/2"]),
        ({"service.name": "db"}, ["GET /item/3"]),
        ({"service.name": "old", "process.executable.name": "old", "process.pid": 9, "host.name": "agent-host"},
         ["GET /item/4"]),
    ]
    scope = request.resource_spans[0].scope_spans[0].scope
    assert (scope.name, scope.version) == ("sidetrace", "1.2")


@pytest.mark.parametrize("change", [
    {"trace_id": b"\x01" * 15}, {"span_id": "not bytes"}, {"trace_id": b"\x00" * 16},
    {"parent_span_id": b"\x01"}, {"kind": "internal?"}, {"status": 3}, {"name": None},
    {"start_time_unix_nano": -1}, {"end_time_unix_nano": 1 << 64}, {"attributes": []},
    {"attributes": {"x": {"nested": "map"}}}, {"attributes": {1: "x"}}, {"links": ["x"]},
    {"links": [{"trace_id": b"\x01" * 16, "span_id": b"\x01" * 3}]},
])
def test_malformed_spans_are_left_out_and_named(change):
    bad = wire_span(1, **change)
    with pytest.raises(MalformedSpan):
        to_span(bad)
    request, malformed = build_request([wire_span(0), bad, wire_span(2, resource={"x": {"y": 1}})])
    assert malformed == [1, 2]
    assert [s.name for rs in request.resource_spans for ss in rs.scope_spans for s in ss.spans] == ["GET /item/0"]


def test_endpoints_and_headers():
    assert parse_endpoint("http://collector", "grpc").target == "collector:4317"
    http_ep = parse_endpoint("https://[::1]", "http/protobuf")
    assert (http_ep.secure, http_ep.target, http_ep.path) == (True, "[::1]:4318", "/v1/traces")
    assert parse_endpoint("http://c:9/custom/traces", "http/protobuf").path == "/custom/traces"
    for url, protocol in (("collector:4317", "grpc"), ("ftp://c", "grpc"), ("http://c:99999", "grpc"),
                          ("http://c", "thrift")):
        with pytest.raises(EndpointError):
            parse_endpoint(url, protocol)
    assert parse_header("Authorization=Bearer a=b") == ("Authorization", "Bearer a=b")
    for bad in ("novalue", "=x", "a\r\nb=1", "k=v\nInjected: 1"):
        with pytest.raises(EndpointError):
            parse_header(bad)


# --- against receivers ---------------------------------------------------------------

async def _wait(condition, what: str) -> None:
    with trio.fail_after(TIMEOUT):
        while not condition():
            await trio.sleep(0.02)


class Rig:
    """A SpanServer, an exporter subscribed to it, and a receiver."""

    def __init__(self, nursery, tmp_path, receiver, protocol, shutdown_timeout=5.0, **exporter_args) -> None:
        self.nursery = nursery
        self.shutdown_timeout = shutdown_timeout
        self.sock = str(tmp_path / "agent.sock")
        self.receiver = receiver
        self.transport = make_transport(receiver.endpoint, protocol, {"x-tenant": "t1"}, timeout=5)
        exporter_args.setdefault("batch_delay", 0.05)
        self.exporter = OtlpExporter(self.transport, self.sock,
                                     backoff=Backoff(initial=0.05, maximum=0.2), **exporter_args)
        self.stopping = trio.Event()

    async def start(self):
        self.server = wire.SpanServer(self.sock, agent_version="7.7", host_name="h1")
        await self.nursery.start(self.server.serve)
        self.done = trio.Event()

        async def run():
            await serve_otlp(self.exporter, shutdown_timeout=self.shutdown_timeout, stopping=self.stopping)
            self.done.set()

        self.nursery.start_soon(run)
        await _wait(lambda: self.server.subscriber_count == 1, "exporter subscribed")
        return self

    def publish(self, first: int, count: int) -> list[dict]:
        spans = [wire_span(i) for i in range(first, first + count)]
        for span in spans:
            self.server.publish(span)
        return spans

    async def stop(self):
        self.stopping.set()
        await self.done.wait()
        self.server.close()

    def counters(self):
        return self.exporter.counters()


def _received_names(receiver) -> list[str]:
    return sorted(span.name for _, span in receiver.spans())


@pytest.mark.parametrize("kind", ["grpc", "http/protobuf"])
async def test_spans_arrive_whole_with_headers_and_counters_add_up(tmp_path, kind):
    receiver_type = GrpcReceiver if kind == "grpc" else HttpReceiver
    with receiver_type() as receiver:
        async with trio.open_nursery() as nursery:
            rig = await Rig(nursery, tmp_path, receiver, kind, batch_size=16).start()
            sent = rig.publish(0, 50)
            await _wait(lambda: len(receiver.spans()) >= 50, "50 spans received")
            await rig.stop()
        received = receiver.spans()
        assert sorted(to_span(s).SerializeToString() for s in sent) == \
            sorted(span.SerializeToString() for _, span in received)
        assert all(resource["service.name"].string_value == "web" for resource, _ in received)
        assert all(len(r.resource_spans[0].scope_spans[0].spans) <= 16 for r in receiver.requests)
        assert all(h.get("x-tenant") == "t1" for h in receiver.headers)
        counters = rig.counters()
        assert counters["received"] == counters["exported"] == 50
        assert counters["dropped_queue_full"] == counters["rejected"] == counters["dropped_shutdown"] == 0


@pytest.mark.parametrize("kind", ["grpc", "http/protobuf"])
async def test_receiver_away_and_back_loses_nothing_within_the_bound_and_counts_the_rest(tmp_path, kind):
    receiver_type = GrpcReceiver if kind == "grpc" else HttpReceiver
    receiver = receiver_type().start()
    port = receiver.port
    try:
        async with trio.open_nursery() as nursery:
            rig = await Rig(nursery, tmp_path, receiver, kind, batch_size=8, max_queue=40).start()
            rig.publish(0, 5)
            await _wait(lambda: len(receiver.spans()) == 5, "first spans")
            receiver.stop()
            # Within the bound: every span waits and arrives once the receiver is back.
            rig.publish(100, 40)
            await _wait(lambda: rig.counters()["retries"] >= 2, "retries while away")
            assert rig.counters()["dropped_queue_full"] == 0
            # Beyond it: the next 25 are dropped and counted.
            rig.publish(200, 25)
            await _wait(lambda: rig.counters()["received"] == 70, "all offered")
            assert rig.counters()["dropped_queue_full"] == 25
            receiver = receiver_type(port).start()
            await _wait(lambda: len(receiver.spans()) == 40, "queued spans delivered")
            await rig.stop()
        assert _received_names(receiver) == sorted(f"GET /item/{i}" for i in range(100, 140))
        counters = rig.counters()
        assert counters["exported"] == 45 and counters["dropped_queue_full"] == 25
        assert counters["received"] == counters["exported"] + counters["dropped_queue_full"]
    finally:
        receiver.stop()


@pytest.mark.parametrize("code, retry_delay, retried", [
    (grpc.StatusCode.UNAVAILABLE, None, True),
    (grpc.StatusCode.DEADLINE_EXCEEDED, None, True),
    (grpc.StatusCode.ABORTED, None, True),
    (grpc.StatusCode.DATA_LOSS, None, True),
    (grpc.StatusCode.RESOURCE_EXHAUSTED, 0.1, True),   # with RetryInfo
    (grpc.StatusCode.RESOURCE_EXHAUSTED, None, False),  # without: not retryable
    (grpc.StatusCode.INVALID_ARGUMENT, None, False),
    (grpc.StatusCode.UNAUTHENTICATED, None, False),
])
async def test_grpc_codes_the_spec_calls_retryable_are_retried_others_dropped(tmp_path, code, retry_delay, retried):
    with GrpcReceiver() as receiver:
        receiver.fail_next(2, code, retry_delay)
        async with trio.open_nursery() as nursery:
            rig = await Rig(nursery, tmp_path, receiver, "grpc", batch_size=10).start()
            rig.publish(0, 10)
            await _wait(lambda: receiver.attempts >= 1, "a failed attempt")
            rig.publish(10, 10)
            await _wait(lambda: rig.counters()["exported"] + rig.counters()["rejected"] == 20, "all settled")
            await rig.stop()
    counters = rig.counters()
    if retried:
        assert (counters["exported"], counters["rejected"], counters["retries"]) == (20, 0, 2)
        assert len(receiver.spans()) == 20
    else:
        assert counters["retries"] == 0 and counters["rejected"] >= 10
        assert counters["exported"] + counters["rejected"] == 20 == counters["received"]


@pytest.mark.parametrize("status, retry_after, retried", [
    (503, "0", True), (429, None, True), (502, None, True), (504, None, True),
    (400, None, False), (401, None, False), (500, None, False),
])
async def test_http_statuses_the_spec_calls_retryable_are_retried_others_dropped(tmp_path, status, retry_after,
                                                                                 retried):
    with HttpReceiver() as receiver:
        receiver.fail_next(1, status, retry_after)
        async with trio.open_nursery() as nursery:
            rig = await Rig(nursery, tmp_path, receiver, "http/protobuf", batch_size=10).start()
            rig.publish(0, 10)
            await _wait(lambda: rig.counters()["exported"] + rig.counters()["rejected"] == 10, "all settled")
            await rig.stop()
    counters = rig.counters()
    assert (counters["exported"], counters["retries"]) == ((10, 1) if retried else (0, 0))
    assert len(receiver.spans()) == counters["exported"]


async def test_spans_queued_at_shutdown_are_sent_or_counted(tmp_path):
    receiver = HttpReceiver().start()
    receiver.stop()  # nobody there: shutdown cannot send
    async with trio.open_nursery() as nursery:
        rig = Rig(nursery, tmp_path, receiver, "http/protobuf", shutdown_timeout=0.5, batch_size=4)
        await rig.start()
        rig.publish(0, 9)
        await _wait(lambda: rig.counters()["retries"] >= 1, "a failed attempt")
        rig.stopping.set()
        await rig.done.wait()
        rig.server.close()
    counters = rig.counters()
    assert counters["dropped_shutdown"] == 9 and counters["exported"] == 0 and counters["queued"] == 0


def test_export_without_its_packages_says_which_to_install():
    code = ("import sys; sys.modules['opentelemetry'] = None; from agent.cli import main; "
            "sys.exit(main(['export', 'otlp', '--endpoint', 'http://127.0.0.1:1']))")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                            timeout=60, env={**os.environ, "SIDETRACE_CONFIG": os.devnull})
    assert result.returncode == 2
    [line] = result.stderr.splitlines()
    assert "opentelemetry-proto" in line and "sidetrace[otlp]" in line


def test_missing_package_names():
    for module, package in (("grpc", "grpcio"), ("google.protobuf.message", "protobuf"),
                            ("google.rpc", "googleapis-common-protos"), ("prometheus_client", "prometheus-client")):
        assert package in missing_package_message("otlp", ModuleNotFoundError(name=module))


def test_the_agent_never_imports_exporter_packages():
    code = ("import sys, agent.cli, agent._app, agent._assemble, agent._tail, wire; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('grpc', 'opentelemetry', 'prometheus_client')"
            " or m.startswith('google.protobuf')]; print(bad); sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
