"""``sidetrace export prometheus``: RED metrics from spans, and the agent's own stats.

A subscriber of the agent's socket that serves, in Prometheus text format on
``--listen``:

* per service, endpoint, kind and protocol: ``sidetrace_requests_total``,
  ``sidetrace_request_errors_total`` and the histogram
  ``sidetrace_request_duration_seconds``.  The endpoint is the span name
  (``GET /path``, a redacted query, a command); label sets are capped at
  ``--max-series``, spans beyond it count under ``endpoint="other"``;
* the agent's latest ``stats``: events, lost events per CPU, spans, this
  subscriber's dropped messages, subscribers, map fill, kernel errors, parse
  errors and whatever else the agent counts at top level;
* the host's figures from the agent's latest ``metrics`` message (when its
  monitor runs): CPU time and utilization, memory, disk and network I/O, TCP
  retransmissions, ..., named as OpenTelemetry names map to Prometheus
  (``system.cpu.time`` in seconds -> ``system_cpu_time_seconds_total``).
  Per-process series are left out: the agent sends a process only when its
  figures moved, so the latest message does not hold them all;
* the exporter's own state: connected, spans seen, series overflow.
"""

from __future__ import annotations

import argparse
import logging
import re
import signal
import sys
from collections.abc import Iterator
from typing import Any

import trio
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from ._follow import AgentFeed

__all__ = ["AgentStatsCollector", "HostMetricsCollector", "SpanMetrics", "parse_listen", "run_prometheus", "serve_prometheus"]

log = logging.getLogger("sidetrace.export")

DEFAULT_MAX_SERIES = 2000
MAX_LABEL_LENGTH = 200
OTHER = "other"
# Request latencies, 0.5 ms to 30 s.
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_LABELS = ("service", "endpoint", "kind", "protocol")
# Top-level stats fields exported under their own names, and how.
_STATS_COUNTERS = {"events": "events read from the kernel", "spans": "spans built",
                   "dropped": "messages the agent dropped for this exporter (its queue was full)",
                   "kernel_events": "events the kernel programs emitted",
                   "parse_errors": "protocol parser errors", "malformed_batches": "malformed event batches",
                   "connections_evicted": "connections evicted from the agent's table",
                   "shed": "events or spans the agent shed under load"}
_STATS_GAUGES = {"subscribers": "subscribers connected to the agent"}


class ListenError(ValueError):
    """A --listen address that cannot be used."""


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT``, ``[V6]:PORT`` or ``:PORT`` (all addresses) -> (host, port)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ListenError(f"--listen wants HOST:PORT, got {text!r}")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    return host or "0.0.0.0", int(port)


def _text(value: Any) -> str:
    text = value if isinstance(value, str) else str(value)
    return text[:MAX_LABEL_LENGTH]


class SpanMetrics:
    """Request rate, errors and duration per (service, endpoint, kind, protocol)."""

    def __init__(self, registry: CollectorRegistry, max_series: int = DEFAULT_MAX_SERIES) -> None:
        self.max_series = max_series
        self._series: set[tuple[str, ...]] = set()
        self.requests = Counter("sidetrace_requests", "Requests seen (one per span)", _LABELS, registry=registry)
        self.errors = Counter("sidetrace_request_errors", "Requests whose span status is error", _LABELS,
                              registry=registry)
        self.duration = Histogram("sidetrace_request_duration_seconds", "Request duration, first request "
                                  "byte to last response byte", _LABELS, buckets=BUCKETS, registry=registry)
        self.spans = Counter("sidetrace_exporter_spans", "Spans this exporter received", registry=registry)
        self.malformed = Counter("sidetrace_exporter_malformed_spans", "Spans left out: fields of the "
                                 "wrong type", registry=registry)
        self.overflow = Counter("sidetrace_exporter_series_overflow", "Spans counted under "
                                "endpoint=\"other\" because --max-series label sets existed", registry=registry)

    def observe(self, span: dict[str, Any]) -> None:
        self.spans.inc()
        resource = span.get("resource")
        service = resource.get("service.name") if isinstance(resource, dict) else None
        start, end = span.get("start_time_unix_nano"), span.get("end_time_unix_nano")
        if not isinstance(start, int) or not isinstance(end, int) or not isinstance(span.get("name"), str):
            self.malformed.inc()
            return
        labels = (_text(service or span.get("comm") or "unknown"), _text(span["name"]),
                  _text(span.get("kind", "")), _text(span.get("protocol", "")))
        if labels not in self._series:
            if len(self._series) >= self.max_series:
                self.overflow.inc()
                labels = (labels[0], OTHER, labels[2], labels[3])
            self._series.add(labels)
        self.requests.labels(*labels).inc()
        if span.get("status") == "error":
            self.errors.labels(*labels).inc()
        self.duration.labels(*labels).observe(max(0, end - start) / 1e9)


class AgentStatsCollector(Collector):
    """The agent's latest ``stats`` message, read at scrape time."""

    def __init__(self, feed: AgentFeed) -> None:
        self.feed = feed

    def collect(self) -> Iterator[Metric]:
        feed = self.feed
        yield GaugeMetricFamily("sidetrace_agent_up", "1 while subscribed to the agent",
                                value=1 if feed.connected else 0)
        stats = feed.last_stats
        if not stats:
            return
        for key, help_text in _STATS_COUNTERS.items():
            value = feed.dropped if key == "dropped" else stats.get(key)
            if _number(value):
                yield CounterMetricFamily(f"sidetrace_agent_{key}", help_text, value=value)
        for key, help_text in _STATS_GAUGES.items():
            if _number(stats.get(key)):
                yield GaugeMetricFamily(f"sidetrace_agent_{key}", help_text, value=stats[key])
        lost = CounterMetricFamily("sidetrace_agent_lost_events", "Events lost in full perf rings",
                                   labels=["cpu"])
        for cpu, value in enumerate(stats.get("lost_events") or ()):
            if _number(value):
                lost.add_metric([str(cpu)], value)
        yield lost
        yield from _labelled(GaugeMetricFamily, "sidetrace_agent_map_fill", "Entries in use per agent table",
                             "map", stats.get("map_fill"))
        yield from _labelled(CounterMetricFamily, "sidetrace_agent_kernel_errors",
                             "Errors counted by the kernel programs", "error", stats.get("kernel_errors"))


# OpenTelemetry units -> Prometheus name suffixes (annotations such as {packet} add none).
_UNIT_SUFFIXES = {"s": "seconds", "By": "bytes", "1": "ratio"}
_NOT_NAME = re.compile(r"[^a-zA-Z0-9_]+")
_MAX_HOST_POINTS = 10_000


def prometheus_name(name: str, unit: str) -> str:
    """``system.cpu.time`` with unit ``s`` -> ``system_cpu_time_seconds`` (a counter adds ``_total``)."""
    base = _NOT_NAME.sub("_", name).strip("_")[:MAX_LABEL_LENGTH]
    if not base or base[0].isdigit():
        base = f"metric_{base}"
    suffix = _UNIT_SUFFIXES.get(unit)
    return f"{base}_{suffix}" if suffix and not base.endswith(f"_{suffix}") else base


class HostMetricsCollector(Collector):
    """The host-wide points (no ``process.pid``) of the agent's latest ``metrics`` message."""

    def __init__(self) -> None:
        self.last: dict[str, Any] | None = None

    def take(self, msg: dict[str, Any]) -> None:
        self.last = msg

    def collect(self) -> Iterator[Metric]:
        msg = self.last
        records = msg.get("metrics") if msg else None
        if not isinstance(records, list):
            return
        points_left = _MAX_HOST_POINTS
        seen: set[str] = set()
        for record in records:
            family = _host_family(record, seen) if isinstance(record, dict) and points_left > 0 else None
            if family is not None:
                points_left -= len(family.samples)
                yield family


def _host_family(record: dict[str, Any], seen: set[str]) -> Metric | None:
    """One metric record's host points as a family, or None (nothing host-wide, or malformed)."""
    name, unit, kind, points = (record.get(k) for k in ("name", "unit", "kind", "points"))
    if not (isinstance(name, str) and isinstance(unit, str) and isinstance(points, list)):
        return None
    host = [p for p in points if isinstance(p, dict) and isinstance(p.get("attributes"), dict)
            and "process.pid" not in p["attributes"]]
    metric = prometheus_name(name, unit)
    if not host or metric in seen:
        return None
    seen.add(metric)
    keys = sorted({key for p in host for key in p["attributes"] if isinstance(key, str)})
    label_names = [prometheus_name(key, "") for key in keys]
    if len(set(label_names)) != len(label_names) or (kind == "histogram" and "le" in label_names):
        return None
    help_text = f"{name} ({unit}) from the agent's monitor"
    if kind == "histogram":
        bounds = record.get("explicit_bounds")
        if not isinstance(bounds, list) or not all(_number(b) for b in bounds):
            return None
        family = HistogramMetricFamily(metric, help_text, labels=label_names)
    elif kind in ("sum", "gauge"):
        family = (CounterMetricFamily if kind == "sum" else GaugeMetricFamily)(metric, help_text, labels=label_names)
    else:
        return None
    for point in host:
        labels = [_text(point["attributes"].get(key, "")) for key in keys]
        if kind != "histogram":
            if _number(point.get("value")):
                family.add_metric(labels, point["value"])
            continue
        counts, total = point.get("bucket_counts"), point.get("sum")
        if not (isinstance(counts, list) and len(counts) == len(bounds) + 1 and all(_number(c) for c in counts)
                and _number(total)):
            continue
        cumulative, buckets = 0, []
        for bound, count in zip([*map(str, bounds), "+Inf"], counts):
            cumulative += count
            buckets.append((bound, cumulative))
        family.add_metric(labels, buckets, total)
    return family


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _labelled(kind: type, name: str, help_text: str, label: str, values: Any) -> Iterator[Metric]:
    family = kind(name, help_text, labels=[label])
    if isinstance(values, dict):
        for key, value in values.items():
            if _number(value):
                family.add_metric([_text(key)], value)
    yield family


class PrometheusExporter:
    def __init__(self, socket_path: str, max_series: int = DEFAULT_MAX_SERIES) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.spans = SpanMetrics(self.registry, max_series)
        self.feed = AgentFeed(socket_path, self.take)
        self.registry.register(AgentStatsCollector(self.feed))
        self.host = HostMetricsCollector()
        self.registry.register(self.host)

    def take(self, msg: dict[str, Any]) -> None:
        if msg.get("type") == "span":
            self.spans.observe(msg)
        elif msg.get("type") == "metrics":
            self.host.take(msg)


async def serve_prometheus(exporter: PrometheusExporter, listen: tuple[str, int], *,
                           task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Serve /metrics until SIGINT/SIGTERM or cancellation."""
    server, thread = start_http_server(listen[1], listen[0], registry=exporter.registry)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(exporter.feed.follow)
            task_status.started(server.server_port)
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for _ in signals:
                    break
            nursery.cancel_scope.cancel()
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def run_prometheus(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="sidetrace: %(message)s", stream=sys.stderr)
    try:
        listen = parse_listen(args.listen)
        if args.max_series < 1:
            raise ListenError("--max-series must be positive")
    except ListenError as exc:
        print(f"sidetrace: {exc}", file=sys.stderr)
        return 2
    exporter = PrometheusExporter(args.socket, args.max_series)
    try:
        trio.run(serve_prometheus, exporter, listen)
    except OSError as exc:
        print(f"sidetrace: cannot listen on {args.listen}: {exc}", file=sys.stderr)
        return 1
    return 0
