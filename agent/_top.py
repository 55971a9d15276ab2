"""``sidetrace top``: a live view of a running agent, refreshed in place.

A subscriber like ``tail``: spans give each endpoint's (protocol, kind,
name) and each process's request rate, error rate and p50/p99 latency over
the last ``--window`` seconds; `metrics` messages give the host's CPU,
memory, disk and network lines and each process's CPU, run-queue wait and
resident memory.  Plain text in at most the terminal's width and height,
redrawn with two ANSI sequences (home, clear to end), so it works over ssh
and in any terminal; without a terminal (or with ``--once``) it prints
screens one after another.  Every string that came from traffic or from
the agent is escaped before it reaches the terminal.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from collections import deque
from collections.abc import Iterable, Mapping
from typing import Any

from wire import BlockingSubscriber, WireError, terminal_text

MAX_ENDPOINTS = 5000
MAX_SAMPLES = 4096          # latencies kept per endpoint or process
RECEIVE_TIMEOUT = 0.25
HOME, CLEAR_DOWN = "\x1b[H", "\x1b[J"


def printable(value: Any, limit: int = 60) -> str:
    """``value`` as terminal-safe text (wire.terminal_text), cut to ``limit`` characters."""
    text = terminal_text(value)
    return text if len(text) <= limit else text[:limit - 1] + "~"


class Window:
    """Completion times, durations and errors of the last ``seconds`` (bounded)."""

    __slots__ = ("samples", "last_seen")

    def __init__(self) -> None:
        self.samples: deque[tuple[float, int, bool]] = deque(maxlen=MAX_SAMPLES)
        self.last_seen = 0.0

    def add(self, at: float, duration_ns: int, error: bool) -> None:
        self.samples.append((at, duration_ns, error))
        self.last_seen = at

    def expire(self, before: float) -> None:
        samples = self.samples
        while samples and samples[0][0] < before:
            samples.popleft()

    def summary(self, seconds: float) -> tuple[float, float, int, int]:
        """(requests/s, error share, p50 ns, p99 ns)."""
        n = len(self.samples)
        if not n:
            return 0.0, 0.0, 0, 0
        durations = sorted(d for _, d, _ in self.samples)
        errors = sum(1 for _, _, e in self.samples if e)
        return (n / seconds, errors / n, durations[min(n - 1, n // 2)],
                durations[min(n - 1, (n * 99) // 100)])


class TopModel:
    """Everything ``top`` shows, fed one message at a time; ``render`` draws it."""

    def __init__(self, window_s: float = 30.0) -> None:
        self.window_s = window_s
        self.hello: Mapping[str, Any] = {}
        self.endpoints: dict[tuple[str, str, str], Window] = {}
        self.processes: dict[int, Window] = {}
        self.comms: dict[int, str] = {}
        self.latest: dict[str, Any] | None = None
        # per (sum metric, attributes): (time, value) last seen, and the rate
        # of change since the value before; a series a message leaves out has
        # not moved (rate 0).
        self._seen: dict[tuple[str, tuple], tuple[int, float]] = {}
        self.rates: dict[tuple[str, tuple], float] = {}
        self.spans = 0
        self.dropped = 0

    def feed(self, msg: Mapping[str, Any], now: float) -> None:
        kind = msg.get("type")
        if kind == "span":
            self._span(msg, now)
        elif kind == "metrics" and isinstance(msg.get("metrics"), list):
            self.latest = dict(msg)
            self._update_rates(self.latest)
        elif kind == "stats" and isinstance(msg.get("dropped"), int):
            self.dropped = msg["dropped"]

    def _span(self, span: Mapping[str, Any], now: float) -> None:
        start, end = span.get("start_time_unix_nano"), span.get("end_time_unix_nano")
        if not isinstance(start, int) or not isinstance(end, int):
            return
        self.spans += 1
        duration, error = max(0, end - start), span.get("status") == "error"
        key = (str(span.get("protocol", "?")), str(span.get("kind", "?")), str(span.get("name", "?")))
        window = self.endpoints.get(key)
        if window is None:
            if len(self.endpoints) >= MAX_ENDPOINTS:
                stalest = min(self.endpoints, key=lambda k: self.endpoints[k].last_seen)
                del self.endpoints[stalest]
            window = self.endpoints[key] = Window()
        window.add(now, duration, error)
        pid = span.get("pid")
        if isinstance(pid, int) and span.get("kind") == "server":
            proc = self.processes.get(pid)
            if proc is None:
                if len(self.processes) >= MAX_ENDPOINTS:
                    stalest = min(self.processes, key=lambda k: self.processes[k].last_seen)
                    del self.processes[stalest]
                    self.comms.pop(stalest, None)
                proc = self.processes[pid] = Window()
            proc.add(now, duration, error)
            self.comms[pid] = str(span.get("comm", "?"))

    def expire(self, now: float) -> None:
        before = now - self.window_s
        for table in (self.endpoints, self.processes):
            for key in [k for k, w in table.items() if (w.expire(before), not w.samples)[1]]:
                del table[key]

    # -- rendering ---------------------------------------------------------------

    def render(self, now_unix: float, width: int = 100, height: int = 40) -> list[str]:
        lines = [self._title(now_unix)]
        lines.extend(self._host_lines())
        lines.append("")
        endpoint_rows = sorted(self.endpoints.items(), key=lambda kv: -len(kv[1].samples))
        process_rows = sorted(self.processes.items(), key=lambda kv: -len(kv[1].samples))
        room = max(2, height - len(lines) - 4)
        endpoint_room = max(1, room - min(len(process_rows), room // 3) - 2)
        lines.append(f"{'ENDPOINT':<{width - 38}} {'REQ/S':>7} {'ERR%':>6} {'P50':>9} {'P99':>9}")
        for (protocol, kind, name), window in endpoint_rows[:endpoint_room]:
            rate, errors, p50, p99 = window.summary(self.window_s)
            label = printable(f"{protocol}/{kind} {name}", width - 38)
            lines.append(f"{label:<{width - 38}} {rate:7.1f} {errors * 100:6.1f} "
                         f"{_duration(p50):>9} {_duration(p99):>9}")
        if len(endpoint_rows) > endpoint_room:
            lines.append(f"  ... {len(endpoint_rows) - endpoint_room} more")
        lines.append("")
        lines.append(f"{'PROCESS':<16} {'PID':>7} {'REQ/S':>7} {'ERR%':>6} {'P50':>9} {'P99':>9}"
                     f" {'CPU%':>6} {'RQWAIT':>7} {'RSS':>8}")
        resources = self._process_resources()
        pids = [pid for pid, _ in process_rows]
        pids += sorted((pid for pid in resources if pid not in self.processes),
                       key=lambda p: -resources[p].get("cpu", 0.0))
        for pid in pids[:max(1, height - len(lines) - 1)]:
            window = self.processes.get(pid)
            rate, errors, p50, p99 = window.summary(self.window_s) if window else (0.0, 0.0, 0, 0)
            res = resources.get(pid, {})
            comm = self.comms.get(pid) or res.get("comm", "?")
            lines.append(f"{printable(comm, 16):<16} {pid:>7} {rate:7.1f} {errors * 100:6.1f} "
                         f"{_duration(p50) if window else '-':>9} {_duration(p99) if window else '-':>9} "
                         f"{_percent(res.get('cpu')):>6} {_percent(res.get('wait')):>7} "
                         f"{_bytes(res.get('rss')):>8}")
        return [line[:width] for line in lines[:height]]

    def _title(self, now_unix: float) -> str:
        hello = self.hello
        clock = time.strftime("%H:%M:%SZ", time.gmtime(now_unix))
        host = printable(hello.get("host_name", "?"), 30)
        version = printable(hello.get("agent_version", "?"), 20)
        extra = f"  dropped {self.dropped}" if self.dropped else ""
        return (f"sidetrace top  {host}  agent {version}  {clock}  "
                f"window {self.window_s:.0f}s  spans {self.spans}{extra}")

    def _points(self, msg: Mapping[str, Any] | None, name: str) -> list[Mapping[str, Any]]:
        if not msg:
            return []
        for metric in msg.get("metrics") or ():
            if isinstance(metric, Mapping) and metric.get("name") == name:
                points = metric.get("points")
                return [p for p in points if isinstance(p, Mapping)] if isinstance(points, list) else []
        return []

    def _update_rates(self, msg: Mapping[str, Any]) -> None:
        now = _int(msg.get("time_unix_nano"))
        rates: dict[tuple[str, tuple], float] = {}
        if len(self._seen) > 50 * MAX_ENDPOINTS:
            self._seen.clear()
        for metric in msg.get("metrics") or ():
            if not isinstance(metric, Mapping) or metric.get("kind") != "sum":
                continue
            name = str(metric.get("name"))
            for point in metric.get("points") or ():
                if not isinstance(point, Mapping):
                    continue
                series = (name, _point_key(point, ""))
                value = _number(point.get("value"))
                last = self._seen.get(series)
                if last is not None and now > last[0]:
                    rates[series] = max(0.0, value - last[1]) / ((now - last[0]) / 1e9)
                self._seen[series] = (now, value)
        self.rates = rates

    def _rates(self, name: str, key: str) -> dict[Any, float]:
        """Per-second change of sum metric ``name`` by attribute ``key``, summed over the rest."""
        out: dict[Any, float] = {}
        for (metric, attrs), rate in self.rates.items():
            if metric == name:
                k = dict(attrs).get(key) if key else attrs
                out[k] = out.get(k, 0.0) + rate
        return out

    def _host_lines(self) -> list[str]:
        if not self.latest:
            return ["host  waiting for the first metrics message (sidetrace run --metrics-interval)"]
        lines = []
        util = {_attr(p, "cpu.mode"): _number(p.get("value"))
                for p in self._points(self.latest, "system.cpu.utilization")}
        if util:
            busy = 1.0 - util.get("idle", 0.0)
            detail = " ".join(f"{mode} {util[mode] * 100:.1f}" for mode in ("user", "system", "iowait", "steal")
                              if mode in util)
            lines.append(f"cpu   {busy * 100:5.1f}% busy  ({detail})")
        memory = {_attr(p, "system.memory.state"): _number(p.get("value"))
                  for p in self._points(self.latest, "system.memory.usage")}
        if memory:
            lines.append(f"mem   {_bytes(memory.get('used'))} used of {_bytes(sum(memory.values()))}"
                         f"  (cached {_bytes(memory.get('cached'))})")
        disk = self._rates("system.disk.io", "system.device")
        ops = self._rates("system.disk.operations", "system.device")
        devices = sorted({d for d in disk} | {d for d in ops}, key=str)
        if devices:
            parts = [f"{printable(d, 12)} {_bytes(disk.get(d))}/s {ops.get(d, 0.0):.0f} op/s" for d in devices[:4]]
            lines.append("disk  " + "  ".join(parts))
        net = self._rates("system.network.io", "network.interface.name")
        if net:
            busiest = sorted(net, key=lambda n: -net[n])[:4]
            parts = [f"{printable(n, 12)} {_bytes(net[n])}/s" for n in busiest]
            retrans = self._rates("sidetrace.tcp.retransmits", "")
            lines.append("net   " + "  ".join(parts) + f"  tcp retrans {sum(retrans.values()):.1f}/s")
        return lines

    def _process_resources(self) -> dict[int, dict[str, Any]]:
        out: dict[int, dict[str, Any]] = {}
        cpu = self._rates("process.cpu.time", "process.pid")
        wait = self._rates("sidetrace.process.cpu.wait_time", "process.pid")
        for pid, value in cpu.items():
            if isinstance(pid, int):
                out.setdefault(pid, {})["cpu"] = value
        for pid, value in wait.items():
            if isinstance(pid, int):
                out.setdefault(pid, {})["wait"] = value
        for point in self._points(self.latest, "process.memory.usage"):
            pid = _attr(point, "process.pid")
            if isinstance(pid, int):
                entry = out.setdefault(pid, {})
                entry["rss"] = _number(point.get("value"))
                entry["comm"] = str(_attr(point, "process.executable.name") or "?")
        return out


def _attr(point: Mapping[str, Any], key: str) -> Any:
    attrs = point.get("attributes")
    return attrs.get(key) if isinstance(attrs, Mapping) else None


def _point_key(point: Mapping[str, Any], key: str) -> Any:
    """Attribute ``key`` of a point, or with no key all its attributes as a sorted tuple."""
    attrs = point.get("attributes")
    if not isinstance(attrs, Mapping):
        return None if key else ()
    if not key:
        return tuple(sorted(((str(k), v) for k, v in attrs.items() if isinstance(v, (str, int, float))),
                            key=lambda kv: kv[0]))
    return attrs.get(key)


def _number(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0.0


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _duration(ns: int) -> str:
    if ns < 1_000_000:
        return f"{ns / 1000:.0f}us"
    if ns < 1_000_000_000:
        return f"{ns / 1e6:.1f}ms"
    return f"{ns / 1e9:.2f}s"


def _percent(share: float | None) -> str:
    return "-" if share is None else f"{share * 100:.1f}"


def _bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024
    return f"{n:.1f}GiB"


def _screen(lines: Iterable[str], in_place: bool) -> str:
    body = "\n".join(lines)
    if in_place:
        return HOME + body.replace("\n", "\x1b[K\n") + "\x1b[K\n" + CLEAR_DOWN
    return body + "\n\n"


def top(args: argparse.Namespace) -> int:
    model = TopModel(args.window)
    in_place = sys.stdout.isatty() and not args.once
    try:
        with BlockingSubscriber(args.socket, timeout=RECEIVE_TIMEOUT) as sub:
            model.hello = sub.hello
            if in_place:
                sys.stdout.write("\x1b[2J")
            next_draw = time.monotonic() + args.refresh
            while True:
                try:
                    msg = sub.receive()
                except TimeoutError:
                    msg = {}
                if msg is None:
                    print("sidetrace: the agent closed the connection", file=sys.stderr)
                    return 1
                now = time.monotonic()
                if msg:
                    model.feed(msg, now)
                if now >= next_draw:
                    model.expire(now)
                    size = shutil.get_terminal_size((100, 40))
                    sys.stdout.write(_screen(model.render(time.time(), size.columns, size.lines - 1), in_place))
                    sys.stdout.flush()
                    if args.once:
                        return 0
                    next_draw = now + args.refresh
    except FileNotFoundError:
        print(f"sidetrace: no agent socket at {args.socket}; is `sidetrace run` running?", file=sys.stderr)
        return 2
    except ConnectionRefusedError:
        print(f"sidetrace: the agent at {args.socket} refused the connection", file=sys.stderr)
        return 2
    except WireError as exc:
        print(f"sidetrace: bad data from the agent: {exc}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, BrokenPipeError):
        pass
    return 0
