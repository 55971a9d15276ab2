"""Unit tests of the agent's pure plumbing: decoder derivation, CPU merge, bounded tables, targets, clock."""

from __future__ import annotations

import os
import random
import shutil
import struct
import subprocess
import threading
import time

import construct as cs
import pytest

from agent._app import CpuFlushers
from agent._clock import WallClock, sample_offset
from agent._fastdecode import FastDecoder, field_layout
from agent._lru import BoundedTable
from agent.intake import OUTPUT_MARGIN_NS, CpuMerger
from agent._targets import TargetSelection, TargetTracker, comm_key, kernel_comm, matching_tgids, read_comm

SAMPLE = cs.Struct(
    "kind" / cs.Int32ul,
    cs.Padding(4),
    "ts" / cs.Int64ul,
    "delta" / cs.Int32sl,
    "port" / cs.Int16ul,
    "flag" / cs.Int8ul,
    "tag" / cs.Int8sl,
    "addr" / cs.Bytes(16),
    "pair" / cs.Array(2, cs.Int16ul),
)


def test_fast_decoder_matches_construct_on_random_records():
    decoder = FastDecoder(SAMPLE)
    assert decoder.size == SAMPLE.sizeof() == 44
    rng = random.Random(7)
    for _ in range(200):
        raw = bytes(rng.getrandbits(8) for _ in range(SAMPLE.sizeof()))
        slow = SAMPLE.parse(raw)
        fast = dict(zip(decoder.names, decoder.unpack_from(raw)))
        assert fast["kind"] == slow.kind and fast["ts"] == slow.ts
        assert fast["delta"] == slow.delta and fast["tag"] == slow.tag
        assert fast["addr"] == slow.addr
        assert [fast["pair[0]"], fast["pair[1]"]] == list(slow.pair)


def test_field_layout_reports_offsets_after_padding():
    offsets = {f.name: (f.offset, f.size) for f in field_layout(SAMPLE)}
    assert offsets["ts"] == (8, 8)
    assert offsets["addr"] == (24, 16)
    assert offsets["pair"] == (40, 4)


def test_fast_decoder_rejects_big_endian_fields():
    with pytest.raises(TypeError, match="little-endian"):
        FastDecoder(cs.Struct("x" / cs.Int32ub))


def test_merger_orders_across_cpus_and_waits_for_slowest_cpu():
    merger = CpuMerger([0, 1])
    a0, b0, a1 = ("cpu0-a", 5_000_000), ("cpu0-b", 9_000_000), ("cpu1-a", 6_000_000)
    merger.extend([a0, b0])
    merger.push(a1)
    merger.mark_drained(0, 20_000_000)
    # CPU 1 has not reported a drain: nothing may leave yet.
    assert merger.pop_ready() == []
    merger.mark_drained(1, 9_000_000 + OUTPUT_MARGIN_NS)
    assert merger.pop_ready() == [a0, a1]
    merger.mark_drained(1, 30_000_000)
    assert merger.pop_ready() == [b0]
    assert len(merger) == 0


def test_merger_keeps_arrival_order_for_equal_timestamps():
    merger = CpuMerger([0])
    events = [("first", 7), ("second", 7), ("early", 3)]
    merger.extend(events)
    assert merger.pop_all() == [("early", 3), ("first", 7), ("second", 7)]


def test_merger_bounds_memory_when_a_cpu_stalls():
    merger = CpuMerger([0, 1], max_held=3)
    for ts in (4, 1, 3, 2, 5):
        merger.push((None, ts))
    assert [ts for _, ts in merger.pop_ready()] == [1, 2]
    assert [ts for _, ts in merger.pop_all()] == [3, 4, 5]


def test_batched_merger_releases_up_to_each_cpus_latest_flush():
    merger = CpuMerger([0, 1], by_flush=True)
    merger.extend([("a0", 10), ("a1", 20)])
    merger.push(("b0", 15))
    # A drain proves nothing while events wait in kernel batches.
    merger.mark_drained(0, 1 << 60)
    merger.mark_drained(1, 1 << 60)
    assert merger.pop_ready() == []
    merger.mark_flushed(0, 20)
    assert merger.pop_ready() == []  # CPU 1 has sent no flush yet
    merger.mark_flushed(1, 15)       # "everything stamped at or before 15"
    assert merger.pop_ready() == [("a0", 10), ("b0", 15)]
    merger.mark_flushed(1, 12)       # an older flush never moves the horizon back
    assert merger.horizon() == 16
    merger.mark_flushed(1, 40)
    assert merger.pop_ready() == [("a1", 20)]


def test_batched_merger_stops_waiting_for_a_forgotten_cpu():
    merger = CpuMerger([0, 1], by_flush=True)
    merger.extend([("a0", 10), ("a1", 30)])
    merger.mark_flushed(0, 50)
    assert merger.pop_ready() == []
    merger.forget(1)
    assert merger.pop_ready() == [("a0", 10), ("a1", 30)]
    merger.mark_flushed(1, 5)  # a late batch from it does not bring it back
    assert merger.horizon() == 51


def test_unbatched_merger_ignores_flush_marks():
    merger = CpuMerger([0])
    merger.push(("a", 10))
    merger.mark_flushed(0, 1 << 60)
    assert merger.pop_ready() == []
    merger.mark_drained(0, 10 + OUTPUT_MARGIN_NS + 1)
    assert merger.pop_ready() == [("a", 10)]


def test_flushers_pin_one_thread_per_cpu_and_stop_cleanly():
    cpus = sorted(os.sched_getaffinity(0))
    threads_before = threading.active_count()
    with CpuFlushers(cpus, period=0.001) as flushers:
        assert flushers.start() and flushers.running and not flushers.failed
        deadline = time.monotonic() + 10
        while flushers.flushes < 3 * len(cpus) and time.monotonic() < deadline:
            time.sleep(0.005)
        assert flushers.flushes >= 3 * len(cpus)
        pinned = {t.name: os.sched_getaffinity(t.native_id) for t in threading.enumerate()
                  if t.name.startswith("sidetrace-flush-")}
        assert pinned == {f"sidetrace-flush-{cpu}": {cpu} for cpu in cpus}
    assert not flushers.running
    assert threading.active_count() == threads_before


def test_flushers_report_a_cpu_they_cannot_pin_to():
    missing = max(os.sched_getaffinity(0)) + 4096
    with CpuFlushers([missing], period=0.001) as flushers:
        assert not flushers.start()
        assert list(flushers.failed) == [missing] and "cannot pin" in flushers.failed[missing]
        assert not flushers.running


def test_a_flusher_moved_off_its_cpu_stops_and_says_so():
    cpus = sorted(os.sched_getaffinity(0))
    with CpuFlushers(cpus[:1], period=0.001) as flushers:
        assert flushers.start()
        (thread,) = [t for t in threading.enumerate() if t.name == f"sidetrace-flush-{cpus[0]}"]
        # What the kernel does to a thread pinned to a CPU that goes offline.
        os.sched_setaffinity(thread.native_id, set(cpus) | {cpus[0] + 1} if len(cpus) == 1 else set(cpus))
        thread.join(10)
        assert not thread.is_alive()
        assert flushers.stopped == cpus[:1]


def test_bounded_table_evicts_least_recently_used_and_expires_idle():
    table: BoundedTable[int, str] = BoundedTable(2)
    table.put(1, "a", now_ns=10)
    table.put(2, "b", now_ns=20)
    assert table.get(1, now_ns=30) == "a"
    assert table.put(3, "c", now_ns=40) == [(2, "b")]
    assert table.evicted == 1
    assert table.expire(older_than_ns=35) == [(1, "a")]
    assert len(table) == 1 and 3 in table


def test_bounded_table_expire_can_keep_busy_entries():
    table: BoundedTable[int, str] = BoundedTable(10)
    table.put(1, "busy", now_ns=1)
    table.put(2, "idle", now_ns=2)
    assert table.expire(100, keep=lambda v: v == "busy") == [(2, "idle")]
    assert 1 in table


def test_targets_by_comm_find_a_real_process_and_notice_its_exit():
    child = subprocess.Popen(["sleep", "30"])
    try:
        deadline = time.monotonic() + 5
        while read_comm(child.pid) != "sleep" and time.monotonic() < deadline:
            time.sleep(0.01)  # until exec has renamed the forked child
        comm = "sleep"
        added, removed = [], []
        tracker = TargetTracker(TargetSelection(comms=frozenset({comm})), added.append, removed.append)
        tracker.rescan()
        assert child.pid in added
        assert os.getpid() not in added  # the agent never traces itself
    finally:
        child.kill()
        child.wait()
    tracker.rescan()
    assert child.pid in removed


def test_comm_keys_are_cut_and_padded_like_task_comm():
    assert comm_key("nginx") == b"nginx".ljust(16, b"\0")
    assert comm_key("a-very-long-program-name") == b"a-very-long-pro\0"
    assert kernel_comm("a-very-long-program-name") == "a-very-long-pro"
    assert comm_key("\u00e9t\u00e9") == "\u00e9t\u00e9".encode().ljust(16, b"\0")


def test_targets_by_a_long_comm_match_the_cut_name(tmp_path):
    long_name = tmp_path / "a-very-long-program-name"
    shutil.copy(shutil.which("sleep"), long_name)
    child = subprocess.Popen([str(long_name), "30"])
    try:
        deadline = time.monotonic() + 5
        while read_comm(child.pid) != "a-very-long-pro" and time.monotonic() < deadline:
            time.sleep(0.01)
        selected = matching_tgids(TargetSelection(comms=frozenset({long_name.name})))
        assert child.pid in selected
    finally:
        child.kill()
        child.wait()


def test_targets_by_pid_ignore_pids_that_do_not_exist():
    assert matching_tgids(TargetSelection(pids=frozenset({os.getpid(), 2**22 + 12345}))) == {os.getpid()}


def test_wall_clock_conversion_is_close_to_time_time_ns():
    clock = WallClock()
    mono = time.monotonic_ns()
    assert abs(clock.to_unix_ns(mono) - time.time_ns()) < 5_000_000
    assert abs(sample_offset() - clock.offset) < 5_000_000
