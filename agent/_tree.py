"""``sidetrace tail --format tree``: each completed trace as an indented waterfall.

Spans arrive one by one, the spans of a trace close together (the linker
releases a trace when its root is settled) but not necessarily at once.  A
``TraceBuffer`` groups them by trace id and hands a trace over once no span
of it has arrived for a quiet period, or once it has waited too long; it
holds a bounded number of traces, the oldest handed over first.  ``render``
draws one trace: the call tree on the left, then kind, process, duration,
and a bar showing when each span ran within the trace, then the status and
how sure the linker was of the span's parent when it was not exact.  Every
cell that shows text from a span is escaped with ``terminal_text``.
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Iterable, Mapping
from typing import Any

from wire import BlockingSubscriber, terminal_text

from ._console import error

QUIET_NS = 1_500_000_000
MAX_WAIT_NS = 30_000_000_000
MAX_TRACES = 10_000
BAR_WIDTH = 32
MAX_LABEL = 56
# Links worth pointing out: everything but a sequence-number match and a
# thread-per-request containment is inferred.
_SURE = {"exact", "thread", None}
_UNSURE_ROOTS = {"ambiguous", "memory-bound"}


class TraceBuffer:
    """Spans grouped by trace id until the trace looks complete."""

    def __init__(self, quiet_ns: int = QUIET_NS, max_wait_ns: int = MAX_WAIT_NS,
                 max_traces: int = MAX_TRACES) -> None:
        self.quiet_ns = quiet_ns
        self.max_wait_ns = max_wait_ns
        self.max_traces = max_traces
        # trace id -> [first seen, last seen, spans]; insertion order = age
        self._traces: dict[bytes, list[Any]] = {}

    def __len__(self) -> int:
        return len(self._traces)

    def add(self, span: Mapping[str, Any], now_ns: int) -> list[list[Mapping[str, Any]]]:
        """Buffer ``span``; returns the traces pushed out to stay within ``max_traces``."""
        trace_id = span.get("trace_id")
        entry = self._traces.get(trace_id)
        if entry is None:
            entry = self._traces[trace_id] = [now_ns, now_ns, []]
        entry[1] = now_ns
        entry[2].append(span)
        pushed = []
        while len(self._traces) > self.max_traces:
            oldest = next(iter(self._traces))
            pushed.append(self._traces.pop(oldest)[2])
        return pushed

    def due(self, now_ns: int) -> list[list[Mapping[str, Any]]]:
        """Traces quiet for ``quiet_ns``, or waiting for ``max_wait_ns``, oldest first."""
        ready = [tid for tid, (first, last, _) in self._traces.items()
                 if now_ns - last >= self.quiet_ns or now_ns - first >= self.max_wait_ns]
        return [self._traces.pop(tid)[2] for tid in ready]

    def drain(self) -> list[list[Mapping[str, Any]]]:
        out = [entry[2] for entry in self._traces.values()]
        self._traces.clear()
        return out


# -- rendering ---------------------------------------------------------------------


def _duration(ns: int) -> str:
    if ns < 1_000_000:
        return f"{ns / 1000:.0f}us"
    if ns < 1_000_000_000:
        return f"{ns / 1_000_000:.2f}ms"
    return f"{ns / 1_000_000_000:.3f}s"


def _clock(ns: int) -> str:
    moment = datetime.datetime.fromtimestamp(ns // 1_000_000_000, datetime.timezone.utc)
    return f"{moment:%Y-%m-%d %H:%M:%S}.{ns % 1_000_000_000 // 1000:06d}Z"


def _times(span: Mapping[str, Any]) -> tuple[int, int]:
    start = span.get("start_time_unix_nano")
    end = span.get("end_time_unix_nano")
    start = start if isinstance(start, int) else 0
    end = end if isinstance(end, int) and end >= start else start
    return start, end


def _bar(start: int, end: int, t0: int, total: int, width: int) -> str:
    if total <= 0:
        return "█" * width
    left = min(width - 1, (start - t0) * width // total)
    cells = max(1, round((end - start) * width / total))
    cells = min(cells, width - left)
    return " " * left + "█" * cells + " " * (width - left - cells)


def _attributes(span: Mapping[str, Any]) -> Mapping[str, Any]:
    attrs = span.get("attributes")
    return attrs if isinstance(attrs, Mapping) else {}


def _status(span: Mapping[str, Any]) -> str:
    parts = []
    code = _attributes(span).get("http.response.status_code")
    if code is not None:
        parts.append(str(code))
    if span.get("status") == "error":
        parts.append("ERROR")
    return " ".join(parts)


def _note(span: Mapping[str, Any], orphan: bool) -> str:
    attrs = _attributes(span)
    if orphan:
        return "(parent not seen)"
    if span.get("parent_span_id") is None:
        # A root because no caller was traced is the normal case; a root
        # because the linker could not choose, or ran out of room, is news.
        reason = attrs.get("sidetrace.link.reason")
        if reason not in _UNSURE_ROOTS:
            return ""
        candidates = attrs.get("sidetrace.link.candidates")
        return f"~root ({reason}" + (f", {candidates} candidates)" if candidates else ")")
    confidence = attrs.get("sidetrace.link.confidence")
    if confidence in _SURE:
        return ""
    reason = attrs.get("sidetrace.link.reason")
    return f"~{confidence}" + (f" ({reason})" if reason else "")


def _ordered(spans: list[Mapping[str, Any]]) -> list[tuple[Mapping[str, Any], str, bool]]:
    """Depth-first rows: (span, tree prefix, parent missing from the trace)."""
    ids = {s.get("span_id") for s in spans}
    children: dict[Any, list[Mapping[str, Any]]] = {}
    tops = []
    for span in spans:
        parent = span.get("parent_span_id")
        if parent is not None and parent in ids and parent != span.get("span_id"):
            children.setdefault(parent, []).append(span)
        else:
            tops.append(span)
    for group in children.values():
        group.sort(key=_times)
    tops.sort(key=_times)
    rows: list[tuple[Mapping[str, Any], str, bool]] = []
    seen: set[int] = set()
    # Spans caught in a parent cycle (malformed input) are never reached from
    # a top: they are drawn as tops of their own after the rest.
    for group in (tops, sorted(spans, key=_times)):
        # (span, prefix for its own row, prefix for its children's rows)
        stack = [(top, "", "") for top in reversed(group)]
        while stack:
            span, prefix, child_prefix = stack.pop()
            if id(span) in seen:
                continue
            seen.add(id(span))
            parent = span.get("parent_span_id")
            rows.append((span, prefix, parent is not None and (parent not in ids or not prefix)))
            kids = children.get(span.get("span_id"), [])
            for i in range(len(kids) - 1, -1, -1):
                last = i == len(kids) - 1
                stack.append((kids[i], child_prefix + ("└─ " if last else "├─ "),
                              child_prefix + ("   " if last else "│  ")))
    return rows


def render(spans: Iterable[Mapping[str, Any]], bar_width: int = BAR_WIDTH) -> str:
    """One trace as text: a header line, then one line per span, parents before children."""
    spans = list(spans)
    if not spans:
        return ""
    rows = _ordered(spans)
    t0 = min(_times(s)[0] for s in spans)
    t1 = max(_times(s)[1] for s in spans)
    total = t1 - t0
    trace_id = spans[0].get("trace_id")
    trace_hex = trace_id.hex() if isinstance(trace_id, (bytes, bytearray)) else "?"
    roots = sum(1 for _, prefix, _ in rows if not prefix)
    header = f"trace {trace_hex}  {len(spans)} span{'s' if len(spans) != 1 else ''}  {_duration(total)}  {_clock(t0)}"
    if roots > 1:
        header += f"  ({roots} roots)"
    table = []
    for span, prefix, orphan in rows:
        start, end = _times(span)
        # Every cell holding text from the span is escaped before the columns are measured.
        label = prefix + terminal_text(span.get("name", "?"))
        if len(label) > MAX_LABEL:
            label = label[:MAX_LABEL - 1] + "…"
        table.append((
            label,
            terminal_text(span.get("kind", "?")),
            terminal_text(f"{span.get('comm', '?')}[{span.get('pid', '?')}]"),
            _duration(end - start),
            _bar(start, end, t0, total, bar_width),
            terminal_text(" ".join(p for p in (_status(span), _note(span, orphan)) if p)),
        ))
    widths = [max(len(row[i]) for row in table) for i in range(4)]
    lines = [header]
    for label, kind, process, duration, bar, tail in table:
        line = (f"  {label:<{widths[0]}}  {kind:<{widths[1]}}  {process:<{widths[2]}}  "
                f"{duration:>{widths[3]}}  |{bar}|")
        lines.append(f"{line}  {tail}" if tail else line)
    return "\n".join(lines)


# -- the command ------------------------------------------------------------------------


def show_trees(sub: BlockingSubscriber, count: int = 0) -> int:
    """Print each trace from ``sub`` once it looks complete; stop after ``count`` traces (0: never).

    ``sub`` must read with a timeout, so that quiet traces are shown while no
    span arrives.  Returns the exit status.
    """
    buffer = TraceBuffer()
    shown = 0

    def show(traces: list[list[Mapping[str, Any]]]) -> bool:
        nonlocal shown
        for trace in traces:
            print(render(trace) + "\n", flush=True)
            shown += 1
            if count and shown >= count:
                return True
        return False

    while True:
        try:
            msg = sub.receive()
        except TimeoutError:
            msg = False
        if msg is None:  # the agent went away: show what it sent
            show(buffer.drain())
            return 0
        if msg and msg.get("type") == "error":
            show(buffer.drain())
            error(f"the agent ended the subscription: {msg.get('message', '?')}")
            return 1
        now = time.monotonic_ns()
        if msg and msg.get("type") == "span" and show(buffer.add(msg, now)):
            return 0
        if show(buffer.due(now)):
            return 0
