"""Put events from per-CPU rings back into one timestamp order.

Each CPU's ring is in order, but a connection's syscalls can run on several
CPUs.  Events wait in a heap until every CPU's ring has been drained past
their timestamp, then leave in timestamp order.  A reader reports, after each
drain, the monotonic time at which the drain *started*: every event stamped
before that (less a margin for the few microseconds between a program's
timestamp and its perf output) is already in the batch.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from typing import Any

# bpf_ktime_get_ns is taken at program start; the record reaches the ring a
# few microseconds later.  1 ms covers a preempted program comfortably.
OUTPUT_MARGIN_NS = 1_000_000


class CpuMerger:
    __slots__ = ("_heap", "_seq", "_drained", "max_held")

    def __init__(self, cpus: Iterable[int], max_held: int = 200_000) -> None:
        self._heap: list[tuple[int, int, Any]] = []
        self._seq = 0
        self._drained = {cpu: 0 for cpu in cpus}
        # Bound memory if one reader stalls: past this, release oldest events.
        self.max_held = max_held

    def __len__(self) -> int:
        return len(self._heap)

    def push(self, ts_ns: int, event: Any) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (ts_ns, self._seq, event))

    def mark_drained(self, cpu: int, drain_started_ns: int) -> None:
        if drain_started_ns > self._drained.get(cpu, 0):
            self._drained[cpu] = drain_started_ns

    def horizon(self) -> int:
        """Events stamped before this are safe to release."""
        return min(self._drained.values(), default=0) - OUTPUT_MARGIN_NS

    def pop_ready(self) -> list[Any]:
        heap, out = self._heap, []
        limit = self.horizon()
        while heap and (heap[0][0] < limit or len(heap) > self.max_held):
            out.append(heapq.heappop(heap)[2])
        return out

    def pop_all(self) -> list[Any]:
        out = [item[2] for item in sorted(self._heap)]
        self._heap.clear()
        return out
