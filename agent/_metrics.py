"""The `metrics` wire message, from a monitor snapshot and host figures.

OpenTelemetry metric names and units where they exist (``process.cpu.time``,
``process.paging.faults``, ``system.disk.io``, ``system.network.io``, ...),
``sidetrace.*`` for the rest; counters are cumulative since the agent
started (``start_time_unix_nano``); histograms are bucket arrays with the
bucket bounds given once per metric.  See wire/schema.cddl.

A process is reported when one of its counters moved since the previous
message (or it was never reported): in trace-everything mode a host has
hundreds of processes, most of them idle.  Its last values are reported once
more after it exits; the monitor then forgets it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from wire import make_metrics

from . import _hoststats as hoststats
from ._monitor import Snapshot
from ._targets import read_comm

HIST_BUCKETS = 24
# Upper bounds of buckets 0..22 in seconds (bucket 23 has none): 2^(i+1) us.
HIST_BOUNDS_S = [(1 << (i + 1)) / 1e6 for i in range(HIST_BUCKETS - 1)]
TCP_STATE_NAMES = {
    0: "none", 1: "established", 2: "syn_sent", 3: "syn_recv", 4: "fin_wait1", 5: "fin_wait2",
    6: "time_wait", 7: "close", 8: "close_wait", 9: "last_ack", 10: "listen", 11: "closing",
    12: "new_syn_recv", 13: "bound_inactive",
}
NS = 1e-9


class _Metrics:
    """Metric records in the order they are first named."""

    def __init__(self) -> None:
        self.by_name: dict[str, dict[str, Any]] = {}

    def metric(self, name: str, unit: str, kind: str, **extra: Any) -> list[dict[str, Any]]:
        m = self.by_name.get(name)
        if m is None:
            m = self.by_name[name] = {"name": name, "unit": unit, "kind": kind, **extra, "points": []}
        return m["points"]

    def point(self, name: str, unit: str, kind: str, value: int | float, **attributes: Any) -> None:
        self.metric(name, unit, kind).append({"attributes": attributes, "value": value})

    def histogram(self, name: str, unit: str, counts: list[int], total: float, **attributes: Any) -> None:
        self.metric(name, unit, "histogram", explicit_bounds=HIST_BOUNDS_S).append(
            {"attributes": attributes, "count": sum(counts), "sum": total, "bucket_counts": list(counts)})

    def records(self) -> list[dict[str, Any]]:
        return [m for m in self.by_name.values() if m["points"]]


class MetricsBuilder:
    """Builds one `metrics` message per call; remembers what it needs for rates."""

    def __init__(self, *, start_time_unix_nano: int, cpu_count: int,
                 device_name: Callable[[int], str] | None = None,
                 process_memory: Callable[[int], tuple[int, int] | None] = hoststats.process_memory,
                 process_alive: Callable[[int], bool] = hoststats.process_alive,
                 comm: Callable[[int], str | None] | None = None) -> None:
        self.start_time_unix_nano = start_time_unix_nano
        self.cpu_count = max(1, cpu_count)
        self.device_name = device_name or hoststats.DeviceNames()
        self.process_memory = process_memory
        self.process_alive = process_alive
        self.comm = comm or read_comm
        self._last_procs: dict[int, dict[str, Any]] = {}
        self._last_cpu: tuple[int, dict[str, float]] | None = None
        self._last_time_ns: int | None = None

    def build(self, snapshot: Snapshot, *, time_unix_nano: int, groups: frozenset[str],
              cpu_times: Mapping[str, float] | None = None, memory: Mapping[str, int] | None = None,
              interfaces: Mapping[str, Mapping[str, int]] | None = None,
              always: frozenset[int] = frozenset()) -> tuple[dict[str, Any], list[int]]:
        """The message, and the tgids that are gone (reported for the last time)."""
        out = _Metrics()
        if cpu_times:
            self._host_cpu(out, cpu_times, snapshot.time_ns)
        if memory:
            for state, value in memory.items():
                out.point("system.memory.usage", "By", "gauge", value, **{"system.memory.state": state})
        gone = self._processes(out, snapshot, groups, always)
        if "disk" in groups:
            self._disks(out, snapshot)
        if "net" in groups:
            self._network(out, snapshot, interfaces or {})
        if "memory" in groups:
            out.point("sidetrace.system.oom_kills", "{kill}", "sum", snapshot.host.get("oom_kills", 0))
        self._last_time_ns = snapshot.time_ns
        msg = make_metrics(time_unix_nano=time_unix_nano, start_time_unix_nano=self.start_time_unix_nano,
                           groups=sorted(groups), metrics=out.records())
        return msg, gone

    def _host_cpu(self, out: _Metrics, times: Mapping[str, float], now_ns: int) -> None:
        for mode, seconds in times.items():
            out.point("system.cpu.time", "s", "sum", seconds, **{"cpu.mode": mode})
        last = self._last_cpu
        self._last_cpu = (now_ns, dict(times))
        if last is None:
            return
        deltas = {mode: max(0.0, times[mode] - last[1].get(mode, 0.0)) for mode in times}
        total = sum(deltas.values())
        if total > 0:
            for mode, delta in deltas.items():
                out.point("system.cpu.utilization", "1", "gauge", round(delta / total, 4), **{"cpu.mode": mode})

    def _processes(self, out: _Metrics, snapshot: Snapshot, groups: frozenset[str],
                   always: frozenset[int]) -> list[int]:
        gone = []
        elapsed_ns = snapshot.time_ns - self._last_time_ns if self._last_time_ns else 0
        reported: dict[int, dict[str, Any]] = {}
        for tgid, counters in sorted(snapshot.procs.items()):
            previous = self._last_procs.get(tgid)
            alive = self.process_alive(tgid)
            if not alive:
                gone.append(tgid)
            elif previous == counters and tgid not in always:
                reported[tgid] = counters
                continue
            reported[tgid] = counters
            attrs = {"process.pid": tgid}
            comm = self.comm(tgid) if alive else None
            if comm is not None:
                attrs["process.executable.name"] = comm
            self._process(out, counters, previous, attrs, groups, elapsed_ns, alive)
        self._last_procs = {tgid: c for tgid, c in reported.items() if tgid not in gone}
        return gone

    def _process(self, out: _Metrics, c: dict[str, Any], previous: dict[str, Any] | None,
                 attrs: dict[str, Any], groups: frozenset[str], elapsed_ns: int, alive: bool) -> None:
        if "cpu" in groups:
            out.point("process.cpu.time", "s", "sum", c["oncpu_ns"] * NS, **attrs)
            if previous is not None and elapsed_ns > 0:
                share = (c["oncpu_ns"] - previous["oncpu_ns"]) / elapsed_ns / self.cpu_count
                out.point("process.cpu.utilization", "1", "gauge", round(max(0.0, share), 4), **attrs)
            out.point("sidetrace.process.cpu.wait_time", "s", "sum", c["wait_ns"] * NS, **attrs)
            out.histogram("sidetrace.process.cpu.wait", "s", c["wait_hist"], c["wait_ns"] * NS, **attrs)
            out.point("sidetrace.process.io_wait_time", "s", "sum", c["iowait_ns"] * NS, **attrs)
            for kind in ("voluntary", "involuntary"):
                out.point("process.context_switches", "{switch}", "sum", c[kind],
                          **attrs, **{"process.context_switch_type": kind})
        if "memory" in groups:
            for kind in ("minor", "major"):
                out.point("process.paging.faults", "{fault}", "sum", c[f"{kind}_faults"],
                          **attrs, **{"process.paging.fault_type": kind})
            if c["oom_kills"]:
                out.point("sidetrace.process.oom_kills", "{kill}", "sum", c["oom_kills"], **attrs)
            usage = self.process_memory(attrs["process.pid"]) if alive else None
            if usage is not None:
                out.point("process.memory.usage", "By", "gauge", usage[0], **attrs)
                out.point("process.memory.virtual", "By", "gauge", usage[1], **attrs)
        if "disk" in groups:
            for direction in ("read", "write"):
                out.point("process.disk.io", "By", "sum", c[f"disk_{direction}_bytes"],
                          **attrs, **{"disk.io.direction": direction})
        if "net" in groups:
            out.point("sidetrace.process.tcp.retransmits", "{segment}", "sum", c["tcp_retransmits"], **attrs)

    def _disks(self, out: _Metrics, snapshot: Snapshot) -> None:
        for (dev, op), d in sorted(snapshot.disks.items()):
            attrs = {"system.device": self.device_name(dev), "disk.io.direction": op}
            if op in ("read", "write"):
                out.point("system.disk.io", "By", "sum", d["bytes"], **attrs)
            out.point("system.disk.operations", "{operation}", "sum", d["ops"], **attrs)
            out.point("system.disk.operation_time", "s", "sum", d["time_ns"] * NS, **attrs)
            out.histogram("sidetrace.disk.operation.duration", "s", d["hist"], d["time_ns"] * NS, **attrs)

    def _network(self, out: _Metrics, snapshot: Snapshot, interfaces: Mapping[str, Mapping[str, int]]) -> None:
        for name, counters in sorted(interfaces.items()):
            for member, value in counters.items():
                direction, metric = hoststats.INTERFACE_COUNTERS[member]
                unit = "By" if metric == "system.network.io" else "{packet}"
                out.point(metric, unit, "sum", value,
                          **{"network.interface.name": name, "network.io.direction": direction})
        host = snapshot.host
        out.point("sidetrace.tcp.retransmits", "{segment}", "sum", host.get("tcp_retransmits", 0))
        out.point("sidetrace.tcp.retransmit_failures", "{segment}", "sum", host.get("tcp_retransmit_fails", 0))
        transitions = host.get("tcp_transitions") or []
        for index, value in enumerate(transitions):
            if value:
                old, new = divmod(index, 16)
                out.point("sidetrace.tcp.state_changes", "{change}", "sum", value,
                          **{"sidetrace.tcp.state.from": TCP_STATE_NAMES.get(old, str(old)),
                             "sidetrace.tcp.state.to": TCP_STATE_NAMES.get(new, str(new))})

