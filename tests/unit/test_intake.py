"""The intake (agent/intake): ring records in, events out in timestamp order across CPUs,
and the traced-endpoints table the pipeline fills and the linker reads.

Rings are stand-ins returning committed-shape batch records; the real rings
are read in tests/kernel (test_batch_kernel, the agent tests).
"""

from __future__ import annotations

import os

import pytest
import trio

from agent._endpoints import TracedEndpoints
from agent.intake import FlushReason, Intake
from bpfobj import RingCorruptError, WalkResult

from .test_batches import batch, event


class FakeRing:
    """A ring whose reads return the prepared results, one per read, then nothing."""

    data_size = 1 << 20

    def __init__(self, cpu: int, *results: WalkResult | BaseException) -> None:
        self.cpu = cpu
        self.results = list(results)
        self.reads = 0
        self._r, self._w = os.pipe()

    def fileno(self) -> int:
        return self._r

    def pending(self) -> int:
        """Each prepared result stands for one read's worth of bytes."""
        return len(self.results) * 4096

    def read(self, max_bytes: int | None = None) -> WalkResult:
        self.reads += 1
        if not self.results:
            return WalkResult([], 0, 0, 0)
        result = self.results.pop(0)
        if isinstance(result, BaseException):
            raise result
        return result

    def close(self) -> None:
        os.close(self._r)
        os.close(self._w)


def records(*samples: bytes, lost: int = 0) -> WalkResult:
    return WalkResult([memoryview(s) for s in samples], lost, 1 if lost else 0, 0)


@pytest.fixture
def rings():
    made: list[FakeRing] = []
    yield made
    for ring in made:
        ring.close()


def test_batched_events_leave_in_timestamp_order_once_every_cpu_is_past_them(rings) -> None:
    cpu0 = FakeRing(0, records(batch(100, event(10), event(30)), batch(200, event(150))))
    cpu1 = FakeRing(1, records(batch(120, event(20), event(110))), records(batch(300, event(250))))
    rings += [cpu0, cpu1]
    out: list = []
    intake = Intake(rings, out.append, by_flush=True)
    intake.drain(cpu0)
    assert out == []                      # cpu 1 has not reported yet
    intake.drain(cpu1)
    assert [e.ts_ns for e in out] == [10, 20, 30, 110]   # up to cpu 1's flush at 120
    intake.drain(cpu1)
    assert [e.ts_ns for e in out] == [10, 20, 30, 110, 150]   # cpu 0 is complete to 200
    intake.flush()
    assert [e.ts_ns for e in out] == [10, 20, 30, 110, 150, 250]
    assert intake.samples == 4


def test_unbatched_drains_release_what_is_older_than_every_drain(rings) -> None:
    # Stamped long before any drain starts (the monotonic clock is far past it).
    cpu0 = FakeRing(0, records(batch(0, event(5), reason=FlushReason.EACH)))
    cpu1 = FakeRing(1)
    rings += [cpu0, cpu1]
    out: list = []
    intake = Intake(rings, out.append, by_flush=False)
    intake.drain(cpu0)
    assert out == []
    intake.drain(cpu1)
    assert [e.ts_ns for e in out] == [5]


def test_a_forgotten_cpu_is_no_longer_waited_for(rings) -> None:
    cpu0 = FakeRing(0, records(batch(100, event(10))))
    rings += [cpu0, FakeRing(1)]
    out: list = []
    intake = Intake(rings, out.append, by_flush=True)
    intake.drain(cpu0)
    assert out == []
    intake.forget(1)
    intake.drain(cpu0)
    assert [e.ts_ns for e in out] == [10]


def test_malformed_records_and_lost_batches_are_counted_and_skipped(rings) -> None:
    bad = batch(100, event(10), event(20))
    bad[12] = 3                              # claims three events
    cpu0 = FakeRing(0, records(bad, batch(100, event(30)), lost=2))
    rings.append(cpu0)
    out: list = []
    intake = Intake(rings, out.append, by_flush=True)
    intake.drain(cpu0)
    assert [e.ts_ns for e in out] == [30]
    assert (intake.malformed, intake.lost_batches, intake.samples) == (1, {0: 2}, 2)


async def test_the_reader_task_counts_a_corrupt_ring_and_carries_on(rings) -> None:
    cpu0 = FakeRing(0, RingCorruptError("data_head behind data_tail"), records(batch(100, event(10))))
    rings.append(cpu0)
    out: list = []
    intake = Intake(rings, out.append, by_flush=True)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(intake.read, cpu0)
            while not out:
                await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
    assert intake.corrupt_batches == 1 and [e.ts_ns for e in out] == [10]


def test_traced_endpoints_are_removed_only_by_their_connection() -> None:
    ends = TracedEndpoints()
    ends.add("127.0.0.1", 50000, conn_id=1)
    ends.add("127.0.0.1", 50000, conn_id=2)     # the port reused by a newer connection
    ends.discard("127.0.0.1", 50000, conn_id=1)
    assert ends.traced("127.0.0.1", 50000) and len(ends) == 1
    ends.discard("127.0.0.1", 50000, conn_id=2)
    assert not ends.traced("127.0.0.1", 50000) and len(ends) == 0


async def test_a_full_ring_is_read_in_parts_with_other_tasks_running_between(rings) -> None:
    # Three reads' worth pending at one wake-up: the reader takes them one by
    # one and lets the other tasks run in between (the span server's writers).
    cpu0 = FakeRing(0, records(batch(100, event(10))), records(batch(200, event(150))),
                    records(batch(300, event(250))))
    rings.append(cpu0)
    seen: list = []
    intake = Intake(rings, lambda ev: seen.append(ev.ts_ns), by_flush=True)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            async def other_task() -> None:
                while True:
                    seen.append("other")
                    await trio.lowlevel.checkpoint()

            nursery.start_soon(other_task)
            nursery.start_soon(intake.read, cpu0)
            while 250 not in seen:
                await trio.sleep(0.001)
            nursery.cancel_scope.cancel()
    events = [x for x in seen if x != "other"]
    assert events == [10, 150, 250]
    between = seen[seen.index(10):seen.index(250)]
    assert between.count("other") >= 1    # (trio may run either first within a round)
    assert cpu0.reads >= 3


def test_completeness_moves_once_a_drain_s_events_are_delivered(rings) -> None:
    cpu0 = FakeRing(0, records(batch(100, event(10))), records(batch(200, event(150))))
    cpu1 = FakeRing(1, records(batch(120, event(20))), records(batch(300)))
    rings += [cpu0, cpu1]
    seen: list = []
    intake = Intake(rings, lambda ev: seen.append((ev.ts_ns, intake.complete_until_ns())), by_flush=True)
    intake.drain(cpu0)
    assert intake.complete_until_ns() == 0                 # cpu 1 has not reported yet
    intake.drain(cpu1)
    assert intake.complete_until_ns() == 101 and seen == [(10, 0), (20, 0)]   # judged from before
    intake.drain(cpu0)
    intake.drain(cpu1)
    assert seen[-1] == (150, 121) and intake.complete_until_ns() == 201
