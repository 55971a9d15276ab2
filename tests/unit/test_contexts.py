"""Runtime contexts on hand-made records: loop iterations, asyncio tasks, what is kept."""

from __future__ import annotations

import struct

import pytest

from agent import _event_layout
from agent._contexts import (ASYNC_RESET, LOOP_WAIT, TASK_DONE, TASK_NEW, TASK_RUN,
                             RuntimeContexts, runtime_of)
from agent._tls import executable_mappings
from agent.intake import OUTPUT_MARGIN_NS

PID, TID = 10, 11
RECORD = struct.Struct(_event_layout.CTX_EVENT_FORMAT)


def test_loop_waits_tell_iterations_apart_and_unknown_threads_say_nothing():
    c = RuntimeContexts()
    for ts in (300, 100, 200):            # rings of several CPUs arrive in turns
        c.feed(LOOP_WAIT, PID, TID, 0, ts, 0, 0, 0)
    assert c.waited_between(PID, TID, 110, 190) is False
    assert c.waited_between(PID, TID, 110, 210) is True
    assert c.waited_between(PID, TID, 50, 90) is None       # before anything known
    assert c.waited_between(PID, TID + 1, 110, 190) is None  # never seen waiting
    c.feed(TASK_RUN, PID, TID + 2, 0, 150, 0x10, 0, 0)
    assert c.waited_between(PID, TID + 2, 160, 170) is None  # seen, but not in a loop


def test_a_task_chain_follows_creators_up_to_a_task_made_outside_any():
    c = RuntimeContexts()
    c.feed(TASK_NEW, PID, TID, 0, 10, 0xA, 0, 0)
    c.feed(TASK_NEW, PID, TID, 0, 20, 0xB, 0xA, 0)
    c.feed(TASK_NEW, PID, TID, 0, 30, 0xC, 0xB, 0)
    c.feed(TASK_RUN, PID, TID, 0, 40, 0xC, 0, 0)
    c.feed(TASK_DONE, PID, TID, 0, 50, 0xC, 0, 0)
    assert c.task_chain(PID, TID, 45) == ((0xC, 30), (0xB, 20), (0xA, 10))
    assert c.task_chain(PID, TID, 55) == ()
    assert c.task_at(PID, TID, 45) == (0xC, 30)


def record(kind: int, ts: int, a: int = 0) -> memoryview:
    return memoryview(RECORD.pack(kind, PID, TID, 0, ts, a, 0, 0))


def test_nothing_is_answered_about_a_time_when_records_were_lost():
    ms = 1_000_000
    c = RuntimeContexts(history_ns=1_000 * ms)
    # One read of a CPU's ring: a wait and a step's start; then the ring
    # filled up and the object dropped records, found at the next read.
    c.feed_ring(0, [record(LOOP_WAIT, 100 * ms), record(TASK_RUN, 110 * ms, 0xC)])
    c.feed_ring(0, [])
    c.lost(0, 5, 450 * ms)
    c.feed_ring(0, [record(LOOP_WAIT, 460 * ms)])
    # from the last record read before the loss to when it was found
    assert c.gaps == [(110 * ms - OUTPUT_MARGIN_NS, 450 * ms + OUTPUT_MARGIN_NS)]
    assert c.waited_between(PID, TID, 250 * ms, 350 * ms) is None
    assert c.waited_between(PID, TID, 101 * ms, 105 * ms) is False     # before the loss: known
    assert c.task_at(PID, TID, 105 * ms) is None                       # between steps, known
    assert c.task_at(PID, TID, 350 * ms) is None       # its step may have ended in the gap
    assert c.waited_between(PID, TID, 455 * ms, 458 * ms) is False     # after it: known again
    assert c.stats()["lost_records"] == 5
    c.feed(LOOP_WAIT, PID, TID, 0, 1_500 * ms, 0, 0, 0)
    c.forget()                           # the gap is older than the history
    assert c.gaps == []


def test_nothing_is_answered_about_a_time_not_read_yet():
    """The rings of several CPUs are read in turns, each behind the kernel: a
    step's end, a wait or an async id stamped after what has been read may
    still come.  The step read last is not what runs then."""
    c = RuntimeContexts()
    c.async_probes_placed(PID, 0)
    c.feed(LOOP_WAIT, PID, TID, 0, 100, 0, 0, 0)
    c.feed(TASK_RUN, PID, TID, 0, 110, 0xA, 0, 0)
    reset(c, 120, 10, 1)
    c.read_until = 130        # 0xA's step ended at 140, 0xB ran at 150: not read yet
    assert c.task_at(PID, TID, 125) == (0xA, 0)
    assert c.task_at(PID, TID, 155) is None
    assert c.task_chain(PID, TID, 155) == ()
    assert c.waited_between(PID, TID, 105, 125) is False
    assert c.waited_between(PID, TID, 105, 135) is None
    assert c.async_ids_between(PID, TID, 105, 125) == [10]
    assert c.async_ids_between(PID, TID, 105, 135) == []
    assert c.async_ids_after(PID, TID, 105, 2) == []     # the second may be unread
    c.feed(TASK_DONE, PID, TID, 0, 140, 0xA, 0, 0)
    c.feed(TASK_RUN, PID, TID, 0, 150, 0xB, 0, 0)
    reset(c, 152, 11, 10)
    c.read_until = 160
    assert c.task_at(PID, TID, 155) == (0xB, 0)
    assert c.async_ids_after(PID, TID, 105, 2) == [10, 11]


def test_what_is_older_than_the_history_is_forgotten():
    c = RuntimeContexts(history_ns=100)
    c.feed(LOOP_WAIT, PID, TID, 0, 10, 0, 0, 0)
    c.feed(TASK_NEW, PID, TID, 0, 15, 0xA, 0, 0)
    c.feed(TASK_RUN, PID, TID, 0, 20, 0xA, 0, 0)
    c.feed(LOOP_WAIT, PID, TID, 0, 500, 0, 0, 0)
    c.forget()
    assert c.waited_between(PID, TID, 5, 30) is None
    assert c.task_at(PID, TID, 450) == (0xA, 0)   # still running: its step is kept
    c.feed(TASK_DONE, PID, TID, 0, 600, 0xA, 0, 0)
    c.feed(LOOP_WAIT, PID, TID, 0, 1000, 0, 0, 0)
    c.forget()
    assert c.stats()["threads"] == 1 and c.task_at(PID, TID, 950) is None


def test_raw_records_decode_and_short_ones_are_ignored():
    c = RuntimeContexts()
    c.feed_raw(RECORD.pack(LOOP_WAIT, PID, TID, 232, 100, 0, 0, 0) + b"\0" * 4)
    c.feed_raw(b"\1\0\0")
    c.feed_raw(RECORD.pack(ASYNC_RESET, PID, TID, 36, 120, 0xDEAD, 1, 2))
    assert c.records == 2
    assert c.waited_between(PID, TID, 100, 130) is False


def test_the_runtimes_among_a_processes_executable_files():
    maps = (
        "55d0-55e0 r-xp 00000000 08:01 1234 /usr/bin/node\n"
        "7f00-7f10 r--p 00000000 08:01 99 /usr/lib/libc.so.6\n"
        "7f10-7f20 r-xp 00001000 08:01 99 /usr/lib/libc.so.6\n"
        "7f20-7f30 r-xp 00001000 08:01 77 /opt/py/lib-dynload/_asyncio.cpython-311-x86_64-linux-gnu.so\n"
        "7f30-7f40 r-xp 00000000 00:00 0 [vdso]\n"
        "7f40-7f50 r-xp 00000000 08:01 55 /tmp/gone.so (deleted)\n"
    )
    files = executable_mappings(maps)
    assert files == {("08:01", 1234): "/usr/bin/node", ("08:01", 99): "/usr/lib/libc.so.6",
                     ("08:01", 77): "/opt/py/lib-dynload/_asyncio.cpython-311-x86_64-linux-gnu.so"}
    assert [runtime_of(path) and runtime_of(path)[0] for path in files.values()] == \
        ["node", None, "asyncio"]


@pytest.mark.parametrize("name", ["nodejs-helper", "libasyncio.so", "_asyncio.py"])
def test_other_files_are_no_runtime(name):
    assert runtime_of(f"/x/{name}") is None


def reset(c: RuntimeContexts, ts: int, async_id: float, trigger: float, tid: int = TID) -> None:
    bits = lambda x: struct.unpack("<Q", struct.pack("<d", x))[0]  # noqa: E731
    c.feed(ASYNC_RESET, PID, tid, 36, ts, 0xBEEF, bits(async_id), bits(trigger))


def test_node_async_ids_and_their_triggers():
    c = RuntimeContexts()
    c.async_probes_placed(PID, 50)
    c.feed(LOOP_WAIT, PID, TID, 0, 60, 0, 0, 0)   # seen from 60 on
    reset(c, 100, 10, 1)        # a socket accepted by the server (id 1) ...
    reset(c, 110, 11, 10)       # ... its HTTP parser
    reset(c, 200, 30, 11)       # a socket made in the parser's callback
    reset(c, 210, 31, 30)       # its connect request
    reset(c, 220, 32, 999)      # caused by something not seen (a tick)
    assert c.async_ids_after(PID, TID, 90, 2) == [10, 11]
    assert c.async_ids_between(PID, TID, 150, 215) == [30, 31]
    assert c.async_chain(PID, 31) == [31, 30, 11, 10, 1]
    assert c.async_chain(PID, 32) == [32, 999]
    assert c.trigger_of(PID, 11) == 10 and c.trigger_of(PID, 5) is None
    assert c.async_ids_after(PID, TID, 40, 2) == []     # before the probes were placed


def test_without_placed_probes_no_async_ids_are_claimed():
    c = RuntimeContexts()
    reset(c, 100, 10, 1)
    assert c.async_ids_after(PID, TID, 90, 2) == []


def test_values_that_are_not_async_ids_are_counted_and_dropped():
    c = RuntimeContexts()
    reset(c, 100, 10.5, 1)
    reset(c, 101, float("nan"), 1)
    reset(c, 102, 2.0 ** 60, 1)
    assert c.bad_async_ids == 3 and c.async_ids_after(PID, TID, 0, 5) == []
