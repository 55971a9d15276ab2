"""What traced threads did between their socket calls: loop iterations and asyncio tasks.

The tracer's events say which thread made which socket call.  Where one
thread serves many requests at once, the linker needs to know more of that
thread: the runtime-context object (bpfobj/bpf/sidetrace_context.bpf.c)
reports, for traced processes only,

* every return from an event loop's wait (epoll, poll, select): calls made
  between two waits ran in the callbacks of one iteration of the loop;
* CPython asyncio: which task's step runs on a thread, from when to when,
  and which task was running when another task was created;
* Node.js: every ``AsyncWrap::AsyncReset``: a C++ async resource (a socket,
  a connect request, an HTTP parser, a socket reused for another request)
  gets a new async id, and the id of the resource whose callback was running
  (its trigger).  Resources made in JavaScript only (ticks, promises, a
  request waiting for a pooled socket) are not seen.

:class:`RuntimeContexts` keeps these per thread for ``HISTORY_NS`` and
answers the linker's questions (pure: fed records, no kernel);
:class:`ContextProbes` loads the object next to the tracer, reads its rings
and places its uprobes on the runtimes that traced processes map.
Timestamps are the kernel's monotonic clock, as in the tracer's events.
"""

from __future__ import annotations

import logging
import os
import struct
import time
from bisect import bisect_left, bisect_right, insort
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import trio

import bpfobj

from . import _event_layout
from ._tls import executable_mappings
from .intake import OUTPUT_MARGIN_NS, RING_POLL_SECONDS

log = logging.getLogger("sidetrace")

CONTEXT_OBJECT = Path(bpfobj.__file__).parent / "bpf" / "sidetrace_context.bpf.o"

# enum st_ctx_kind
LOOP_WAIT, TASK_RUN, TASK_DONE, TASK_NEW, ASYNC_RESET = 1, 2, 3, 4, 5
# Slots of the object's `ctx_counters` map (enum st_ctx_counter).
COUNTER_NAMES = ("events", "lost", "orphan_returns", "read_failures")
LOST_SLOT = COUNTER_NAMES.index("lost")

# How long what a thread did is kept: longer than the linker holds a span
# (hold_ns, 2 s) plus how long a span may last before it.
HISTORY_NS = 10_000_000_000
# A task's creator is followed this many levels up.
MAX_TASK_DEPTH = 16

_RECORD = struct.Struct(_event_layout.CTX_EVENT_FORMAT)
# A record's stamp alone: the fields before ts_ns, then ts_ns.
_STAMP = struct.Struct(_event_layout.CTX_EVENT_FORMAT[
    :1 + _event_layout.CTX_EVENT_NAMES.index("ts_ns") + 1])
_STAMP_INDEX = _event_layout.CTX_EVENT_NAMES.index("ts_ns")
_U64 = struct.Struct("<Q")
_DOUBLE = struct.Struct("<d")
# Node.js async ids are whole numbers below 2**53 (doubles in node); a value
# that is not one means the probe read the wrong bytes (another node version).
MAX_ASYNC_ID = 1 << 53

TaskKey = tuple[int, int]   # (task object address, when it was created; 0 if unseen)


def _stamp(raw: bytes | memoryview) -> int:
    """The ts_ns of a raw record (0 if it is too short to have one)."""
    if len(raw) < _STAMP.size:
        return 0
    return _STAMP.unpack_from(raw)[_STAMP_INDEX]


class _ThreadContext:
    """One thread's loop waits and task steps, oldest first."""

    __slots__ = ("waits", "task_ts", "task_ids", "reset_ts", "reset_ids", "since")

    def __init__(self, since: int) -> None:
        self.waits: list[int] = []
        self.task_ts: list[int] = []
        self.task_ids: list[int] = []    # task address, or 0 between steps
        self.reset_ts: list[int] = []    # node: when an async id was given here ...
        self.reset_ids: list[int] = []   # ... and which
        self.since = since               # nothing before this is known

    def forget(self, before: int) -> None:
        if self.waits and self.waits[0] < before:
            del self.waits[:bisect_left(self.waits, before)]
        if self.task_ts and self.task_ts[0] < before:
            # Keep the step under way at ``before``: it says what runs then.
            i = max(bisect_left(self.task_ts, before) - 1, 0)
            del self.task_ts[:i]
            del self.task_ids[:i]
        if self.reset_ts and self.reset_ts[0] < before:
            i = bisect_left(self.reset_ts, before)
            del self.reset_ts[:i]
            del self.reset_ids[:i]
        if self.since < before:
            self.since = before


class _ProcessContext:
    __slots__ = ("threads", "created", "triggers")

    def __init__(self) -> None:
        self.threads: dict[int, _ThreadContext] = {}
        # task address -> [(created at, creating task address)], oldest first
        self.created: dict[int, list[tuple[int, int]]] = {}
        # node async id -> (trigger async id, when it was given)
        self.triggers: dict[int, tuple[int, int]] = {}


class RuntimeContexts:
    """Per-thread loop waits and asyncio task steps of traced processes."""

    def __init__(self, history_ns: int = HISTORY_NS) -> None:
        self.history_ns = history_ns
        self._procs: dict[int, _ProcessContext] = {}
        # pid -> since when its Node.js async ids are seen (the probes were placed)
        self._async_since: dict[int, int] = {}
        self.records = 0
        self.bad_async_ids = 0
        self.started = 0    # the first record: nothing is missing after it
        self.latest = 0
        # (start, end) monotonic ns during which records were lost (a ring was
        # full): what happened then is not known, and no question about it is answered.
        self.gaps: list[tuple[int, int]] = []
        self.lost_records = 0
        # Every record stamped before this has been fed (None: every record
        # there will be has been fed).  The rings of several CPUs are read in
        # turns, each behind the kernel: nothing later is answered, since a
        # wait, a step or an async id of that time may still be unread.
        self.read_until: int | None = None
        self._last_stamp: dict[int, int] = {}    # cpu -> stamp of the last record read

    # -- input ----------------------------------------------------------------

    def feed_ring(self, cpu: int, samples: list) -> None:
        """The records one read of ``cpu``'s ring found, in order."""
        feed = self.feed_raw
        for raw in samples:
            feed(raw)
        if samples:
            self._last_stamp[cpu] = _stamp(samples[-1])

    def lost(self, cpu: int, count: int, until: int) -> None:
        """``count`` records of ``cpu`` were dropped since its ring was last read,
        as found at ``until`` (monotonic ns).

        The ring was full: they were stamped after the last record read from
        it and before ``until`` (give or take the time between a stamp and its
        output); nothing is answered about that time.
        """
        self.lost_records += count
        self.gaps.append((self._last_stamp.get(cpu, 0) - OUTPUT_MARGIN_NS,
                          until + OUTPUT_MARGIN_NS))

    def feed_raw(self, raw: bytes | memoryview) -> None:
        """One perf sample of the context object (malformed ones are ignored)."""
        if len(raw) < _RECORD.size:
            return
        self.feed(*_RECORD.unpack_from(raw))

    def feed(self, kind: int, tgid: int, tid: int, aux: int, ts: int, a: int, b: int,
             c: int) -> None:
        self.records += 1
        if ts > self.latest:
            self.latest = ts
        if ts < self.started or not self.started:
            self.started = ts
        proc = self._procs.get(tgid)
        if proc is None:
            proc = self._procs[tgid] = _ProcessContext()
        if kind == TASK_NEW:
            records = proc.created.get(a)
            if records is None:
                proc.created[a] = [(ts, b)]
            else:
                insort(records, (ts, b))
            return
        thread = proc.threads.get(tid)
        if thread is None:
            # What the object reports was reported from its start on, for
            # this thread too (forget() moves this on).
            thread = proc.threads[tid] = _ThreadContext(min(ts, self.started))
        elif ts < thread.since:
            thread.since = ts    # (the rings of several CPUs are read in turns)
        if kind == LOOP_WAIT:
            waits = thread.waits
            if not waits or waits[-1] <= ts:
                waits.append(ts)
            else:
                insort(waits, ts)
        elif kind == ASYNC_RESET:
            async_id = _DOUBLE.unpack(_U64.pack(b))[0]
            trigger = _DOUBLE.unpack(_U64.pack(c))[0]
            if not (0 < async_id < MAX_ASYNC_ID and -2 < trigger < MAX_ASYNC_ID
                    and async_id == int(async_id) and trigger == int(trigger)):
                self.bad_async_ids += 1
                return
            async_id = int(async_id)
            proc.triggers[async_id] = (int(trigger), ts)
            times = thread.reset_ts
            if not times or times[-1] <= ts:
                times.append(ts)
                thread.reset_ids.append(async_id)
            else:
                i = bisect_right(times, ts)
                times.insert(i, ts)
                thread.reset_ids.insert(i, async_id)
        elif kind == TASK_RUN or kind == TASK_DONE:
            task = a if kind == TASK_RUN else 0
            times = thread.task_ts
            if not times or times[-1] <= ts:
                times.append(ts)
                thread.task_ids.append(task)
            else:
                i = bisect_right(times, ts)
                times.insert(i, ts)
                thread.task_ids.insert(i, task)

    def _unread(self, ts: int) -> bool:
        """Whether records stamped at ``ts`` may not have been fed yet."""
        return self.read_until is not None and ts > self.read_until

    def _unknown(self, start: int, end: int) -> bool:
        """Whether records were lost between ``start`` and ``end``."""
        for since, until in self.gaps:
            if since <= end and until >= start:
                return True
        return False

    def async_probes_placed(self, pid: int, ts: int) -> None:
        """The AsyncReset probes see ``pid`` from ``ts`` on (the first call counts)."""
        self._async_since.setdefault(pid, ts)

    def keep_processes(self, pids: set[int]) -> None:
        """Forget the processes not in ``pids`` (gone, or no longer traced)."""
        for pid in [pid for pid in self._async_since if pid not in pids]:
            del self._async_since[pid]

    def forget(self, now: int | None = None) -> None:
        """Drop what is older than ``history_ns`` before ``now`` (the latest record)."""
        before = (self.latest if now is None else now) - self.history_ns
        if self.gaps:
            self.gaps = [gap for gap in self.gaps if gap[1] >= before]
        for tgid, proc in list(self._procs.items()):
            for tid, thread in list(proc.threads.items()):
                thread.forget(before)
                if (not thread.waits and not thread.reset_ts
                        and (not thread.task_ts or thread.task_ts[-1] < before)):
                    del proc.threads[tid]
            for task, records in list(proc.created.items()):
                if records[-1][0] < before:
                    del proc.created[task]
                elif records[0][0] < before:
                    records[:] = [r for r in records if r[0] >= before] or records[-1:]
            stale = [i for i, (_, at) in proc.triggers.items() if at < before]
            for async_id in stale:
                del proc.triggers[async_id]
            if not proc.threads and not proc.created and not proc.triggers:
                del self._procs[tgid]

    # -- questions ------------------------------------------------------------

    def waited_between(self, pid: int, tid: int, start: int, end: int) -> bool | None:
        """Whether ``tid`` returned from an event-loop wait between ``start`` and ``end``.

        None when that is not known: the thread was never seen waiting in a
        loop (a thread that blocks elsewhere, e.g. on a lock, between calls
        has no iterations to tell apart), or ``start`` is older than what is kept.
        """
        proc = self._procs.get(pid)
        thread = proc.threads.get(tid) if proc is not None else None
        if thread is None or not thread.waits or start < thread.since or self._unread(end):
            return None
        if self.gaps and self._unknown(start, end):
            return None
        waits = thread.waits
        i = bisect_right(waits, start)
        return i < len(waits) and waits[i] < end

    def task_at(self, pid: int, tid: int, ts: int) -> TaskKey | None:
        """The asyncio task whose step ran on ``tid`` at ``ts``, or None."""
        proc = self._procs.get(pid)
        thread = proc.threads.get(tid) if proc is not None else None
        if thread is None or not thread.task_ts or ts < thread.since or self._unread(ts):
            return None
        i = bisect_right(thread.task_ts, ts) - 1
        if self.gaps and self._unknown(thread.task_ts[i] if i >= 0 else thread.since, ts):
            return None     # (a step's start or end may be missing)
        if i < 0:
            return None
        task = thread.task_ids[i]
        return self._key(proc, task, ts) if task else None

    def task_chain(self, pid: int, tid: int, ts: int) -> tuple[TaskKey, ...]:
        """The task running on ``tid`` at ``ts`` and the tasks that created it, innermost first."""
        key = self.task_at(pid, tid, ts)
        if key is None:
            return ()
        proc = self._procs[pid]
        chain = [key]
        while len(chain) < MAX_TASK_DEPTH:
            task, created = chain[-1]
            records = proc.created.get(task)
            if not created or records is None:
                break
            i = bisect_left(records, (created, -1))
            if i >= len(records) or records[i][0] != created:
                break
            parent = records[i][1]
            if not parent:
                break
            chain.append(self._key(proc, parent, created))
        return tuple(chain)

    def _async_thread(self, pid: int, tid: int, start: int) -> _ThreadContext | None:
        """``tid``'s context if every async id given on it after ``start`` was seen."""
        since = self._async_since.get(pid)
        proc = self._procs.get(pid)
        thread = proc.threads.get(tid) if proc is not None else None
        if since is None or start < since or thread is None or start < thread.since:
            return None
        return thread

    def async_ids_between(self, pid: int, tid: int, start: int, end: int) -> list[int]:
        """Node.js: the async ids given on ``tid`` after ``start`` and by ``end``."""
        thread = self._async_thread(pid, tid, start)
        if thread is None or self._unread(end) or (self.gaps and self._unknown(start, end)):
            return []
        times = thread.reset_ts
        return thread.reset_ids[bisect_right(times, start):bisect_right(times, end)]

    def async_ids_after(self, pid: int, tid: int, start: int, count: int) -> list[int]:
        """Node.js: the first ``count`` async ids given on ``tid`` after ``start``."""
        thread = self._async_thread(pid, tid, start)
        if thread is None:
            return []
        i = bisect_right(thread.reset_ts, start)
        found = thread.reset_ids[i:i + count]
        if len(found) == count:
            end = thread.reset_ts[i + count - 1]
        elif self.read_until is not None:
            return []     # the next ones may be stamped after what has been read
        else:
            end = self.latest
        if self._unread(end) or (self.gaps and self._unknown(start, end)):
            return []
        return found

    def async_chain(self, pid: int, async_id: int) -> list[int]:
        """``async_id`` and the ids that caused it, in turn (as far as seen)."""
        proc = self._procs.get(pid)
        chain = [async_id]
        if proc is None:
            return chain
        triggers = proc.triggers
        while len(chain) < MAX_TASK_DEPTH:
            found = triggers.get(chain[-1])
            if found is None or found[0] <= 0 or found[0] in chain:
                break
            chain.append(found[0])
        return chain

    def trigger_of(self, pid: int, async_id: int) -> int | None:
        proc = self._procs.get(pid)
        found = proc.triggers.get(async_id) if proc is not None else None
        return found[0] if found is not None else None

    @staticmethod
    def _key(proc: _ProcessContext, task: int, ts: int) -> TaskKey:
        """A task's address and when that task (not an earlier one at the same address) was made."""
        records = proc.created.get(task)
        if records:
            i = bisect_right(records, (ts, 1 << 64)) - 1
            if i >= 0:
                return task, records[i][0]
        return task, 0

    def stats(self) -> dict[str, Any]:
        threads = sum(len(p.threads) for p in self._procs.values())
        return {"records": self.records, "processes": len(self._procs), "threads": threads,
                "bad_async_ids": self.bad_async_ids, "lost_records": self.lost_records}


# What the object's uprobes go on: runtime -> (functions that must all be
# there, [(function, program, return probe)]).
ASYNCIO_PROBES = (("task_step_impl", "st_py_task_step", False),
                  ("task_step_impl", "st_py_task_step_return", True),
                  ("_asyncio_Task___init__", "st_py_task_new", False))
NODE_RESET = "_ZN4node9AsyncWrap10AsyncResetEN2v85LocalINS1_6ObjectEEEdb"
NODE_PROBES = ((NODE_RESET, "st_node_async_reset", False),
               (NODE_RESET, "st_node_async_reset_return", True))


def runtime_of(path: str) -> tuple[str, tuple[tuple[str, str, bool], ...]] | None:
    """Which runtime a mapped file may be, by its name: ("asyncio" | "node", probes)."""
    name = os.path.basename(path)
    if name.startswith("_asyncio.") and name.endswith(".so"):
        return "asyncio", ASYNCIO_PROBES
    if name == "node" or name.startswith("node-") or name.startswith("libnode.so"):
        return "node", NODE_PROBES
    return None


class RuntimeFile:
    """A runtime file that traced processes map, and what was placed on it."""

    __slots__ = ("path", "runtime", "status", "reason", "links", "pids", "placed")

    def __init__(self, path: str, runtime: str) -> None:
        self.placed = time.monotonic_ns()   # every process mapping it is seen from then on
        self.path = path
        self.runtime = runtime
        self.status = "attached"
        self.reason = ""
        self.links: list[Any] = []
        self.pids: set[int] = set()

    def summary(self) -> dict[str, Any]:
        out = {"path": self.path, "runtime": self.runtime, "status": self.status,
               "processes": len(self.pids)}
        if self.reason:
            out["reason"] = self.reason
        return out


class ContextProbes:
    """The runtime-context object, live next to the tracer.

    It shares the tracer's ``pids`` map, so it sees exactly the traced
    processes.  ``drain`` feeds its ring's records to ``contexts``; ``scan``
    places uprobes on the asyncio and Node.js files traced processes map
    (once per file), and reports the files it cannot use (stripped of the
    symbols it needs) in ``stats``.
    """

    def __init__(self, pids_map: bpfobj.Map, *, trace_all: bool, pages: int = 64,
                 proc: str = "/proc") -> None:
        spec = bpfobj.load_object_spec(bpfobj.arch_object(CONTEXT_OBJECT)).with_constants(
            trace_all=1 if trace_all else 0, agent_tgid=os.getpid())
        self.collection = bpfobj.Collection(spec, reuse_maps={"pids": pids_map})
        self.contexts = RuntimeContexts()
        self.proc = proc
        self.files: dict[tuple[str, int], RuntimeFile] = {}
        self._other: set[tuple[str, int]] = set()
        self.rings: bpfobj.PerfEventArray | None = None
        # cpu -> monotonic ns at which its ring's last drain started, and the
        # records the object had dropped there by then
        self._drained: dict[int, int] = {}
        self._dropped_seen: dict[int, int] = {}
        try:
            for name, program in self.collection.programs.items():
                if program.section.startswith("tracepoint/"):
                    try:
                        self.collection.links.append(program.attach())
                    except bpfobj.BpfError as exc:
                        # (arm64 has only the p-variants of these syscalls)
                        log.info("loop waits: %s not attached: %s", name, exc)
            self.rings = bpfobj.PerfEventArray(self.collection.maps["ctx_events"], pages=pages)
            self._drained = {ring.cpu: 0 for ring in self.rings}
            self.contexts.read_until = self.horizon()
        except BaseException:
            self.close()
            raise

    async def read(self, ring: bpfobj.PerfRing) -> None:
        """Feed ``ring``'s records as they come (one trio task per CPU; until cancelled)."""
        fd = ring.fileno()
        while True:
            with trio.move_on_after(RING_POLL_SECONDS):
                await trio.lowlevel.wait_readable(fd)
            try:
                self.drain(ring)
            except bpfobj.RingCorruptError as exc:
                log.warning("cpu %d context ring: %s", ring.cpu, exc)

    def drain(self, ring: bpfobj.PerfRing) -> int:
        started = time.monotonic_ns()
        result = ring.read()
        cpu = ring.cpu
        self.contexts.feed_ring(cpu, result.samples)
        # The kernel says it dropped records only with the next one it
        # writes, maybe long after; the object's own count says it at once.
        dropped = self._dropped(cpu)
        if dropped > self._dropped_seen.get(cpu, 0):
            self.contexts.lost(cpu, dropped - self._dropped_seen.get(cpu, 0), time.monotonic_ns())
            self._dropped_seen[cpu] = dropped
        if started > self._drained.get(cpu, 0):
            self._drained[cpu] = started
        self.contexts.read_until = self.horizon()
        return len(result.samples)

    def _dropped(self, cpu: int) -> int:
        """Records the object could not write into ``cpu``'s ring (its ``lost`` counter there)."""
        per_cpu = self.collection.maps["ctx_counters"].lookup(LOST_SLOT) or []
        return _U64.unpack(per_cpu[cpu])[0] if cpu < len(per_cpu) else 0

    def horizon(self) -> int:
        """Every record stamped before this (monotonic ns) has been read."""
        return min(self._drained.values(), default=0) - OUTPUT_MARGIN_NS

    def scan(self, pids: Iterable[int]) -> None:
        """Place uprobes on runtime files mapped by ``pids`` since the last scan."""
        alive = set()
        for pid in pids:
            try:
                with open(f"{self.proc}/{pid}/maps") as f:
                    text = f.read()
            except OSError:
                continue
            alive.add(pid)
            for key, path in executable_mappings(text).items():
                if key in self._other:
                    continue
                found = self.files.get(key)
                if found is None:
                    kind = runtime_of(path)
                    if kind is None:
                        self._other.add(key)
                        continue
                    found = self.files[key] = self._attach(f"{self.proc}/{pid}/root{path}",
                                                           path, *kind)
                if found.runtime == "node" and found.status == "attached":
                    self.contexts.async_probes_placed(pid, found.placed)
                found.pids.add(pid)
        for found in self.files.values():
            found.pids &= alive
        self.contexts.keep_processes(alive)

    def _attach(self, seen_at: str, path: str, runtime: str,
                probes: tuple[tuple[str, str, bool], ...]) -> RuntimeFile:
        found = RuntimeFile(path, runtime)
        try:
            table = bpfobj.read_functions(seen_at, {function for function, _, _ in probes})
            for function, program, retprobe in probes:
                found.links.append(self.collection.programs[program].attach_uprobe(
                    seen_at, table.offset(function), retprobe=retprobe))
        except (bpfobj.BpfError, OSError) as exc:
            for link in found.links:
                link.close()
            found.links = []
            found.status = "failed"
            found.reason = str(exc)
            log.info("%s: no %s context: %s", path, runtime, exc)
        else:
            log.info("%s: %s context probes placed", path, runtime)
        return found

    def kernel_counters(self) -> dict[str, int]:
        counters = self.collection.maps["ctx_counters"]
        out = {}
        for slot, name in enumerate(COUNTER_NAMES):
            per_cpu = counters.lookup(slot) or []
            out[name] = sum(_U64.unpack(v)[0] for v in per_cpu)
        return out

    def stats(self) -> dict[str, Any]:
        return {"files": [f.summary() for f in self.files.values()],
                "kernel": self.kernel_counters(), **self.contexts.stats()}

    def close(self) -> None:
        for found in self.files.values():
            for link in found.links:
                link.close()
            found.links = []
        if self.rings is not None:
            self.rings.close()
            self.rings = None
        self.collection.close()

    def __enter__(self) -> ContextProbes:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
