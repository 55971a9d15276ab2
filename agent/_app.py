"""``sidetrace run``: load the tracer, read its rings, serve spans.

This module wires the stages together; an event goes ring -> intake
(``agent.intake``: read, split, merge) -> pipeline (``_pipeline``: protocols,
spans) -> linker (``agent.linker``: parents, trace ids) -> span server
(``wire``) without coming back here.  One trio nursery holds: the span
server, the intake's reader task for each online CPU, and a housekeeping
task (target rescans, idle connections, clock drift).  SIGINT and SIGTERM
cancel the nursery; leaving the ``with`` blocks detaches the programs, closes
the rings and removes the socket.

The kernel batches events per CPU (one perf record per batch).  What sends a
CPU's batch when that CPU has no more traced syscalls is the agent itself:
one plain thread per online CPU (``CpuFlushers``, never touching trio),
pinned to its CPU, writes zero bytes to /dev/null every FLUSH_PERIOD; the
tracer sends that CPU's batch, or a heartbeat, on such a write by the agent.
If a thread cannot be pinned, the tracer is loaded with batching off.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import logging
import os
import signal
import struct
import threading
import time
from pathlib import Path
from typing import Any

import trio

import bpfobj
from wire import ServerAlreadyRunning, SpanServer, check_socket_path

from ._budget import CONTROL_PERIOD, BudgetController, LoadShedder
from ._clock import WallClock
from ._contexts import ContextProbes
from ._console import error, log_to_stderr
from ._endpoints import TracedEndpoints
from ._events import COUNTER_NAMES, SHED_COUNTER_NAMES
from ._monitoring import monitoring
from ._options import OptionError, check_run_options
from ._pipeline import Pipeline
from ._privileges import check_privileges
from ._resource import ProcessResources
from ._targets import TargetSelection, TargetTracker, comm_key, live_pids
from ._tls import TlsLibraries
from .intake import BATCH_COUNTER_NAMES, Intake
from .linker import SpanLinker

log = logging.getLogger("sidetrace")

# How far behind the wall clock the linker's clock may fall (see Agent.event_time_unix_ns).
LINKER_MAX_LAG_NS = 5_000_000_000

# One object per architecture (sidetrace.x86.bpf.o, ...): bpfobj.arch_object picks it.
TRACER_OBJECT = Path(bpfobj.__file__).parent / "bpf" / "sidetrace.bpf.o"
HOUSEKEEPING_SECONDS = 1.0
CLOCK_REFRESH_SECONDS = 10.0
SHUTDOWN_GRACE_SECONDS = 0.2
# Values of the `pids` map (enum st_pid_flags) and of the `comms` map.
PID_TRACED = 1
PID_BY_COMM = 1 << 2
COMM_SELECTED = 1
_U32 = struct.Struct("<I")
# Kernel counters (slots of the `counters` map, in order) and those that count work, not errors.
KERNEL_COUNTER_NAMES = COUNTER_NAMES + BATCH_COUNTER_NAMES + SHED_COUNTER_NAMES
_NOT_ERRORS = frozenset({"events", "connections", "truncated", "proto_known", "proto_opaque", "opaque_data",
                         "batches", "heartbeats", *SHED_COUNTER_NAMES})
_SHED_UNITS = ("shed_exchanges", "shed_connections")
_U64 = struct.Struct("<Q")
GC_YOUNG_THRESHOLD = 10_000
# How often each CPU's batch is flushed when nothing else sends it: the
# latency added to quiet CPUs, and the step of the merge horizon.
# The intake reads rings every RING_POLL_SECONDS at the latest anyway, so a few tens
# of milliseconds here add little latency and keep the agent's idle cost low.
FLUSH_PERIOD = 0.050
# The oldest event a busy CPU's batch may hold before the next append sends it.
BATCH_MAX_AGE_NS = 2_000_000
# Time for every flusher thread to pin itself at start.
FLUSHER_START_SECONDS = 5.0


class CpuFlushers:
    """One thread per CPU, pinned there, making the tracer's flush call.

    Each thread writes zero bytes to /dev/null every ``period`` seconds; the
    tracer's sys_exit_write program sees a zero-byte write by the agent's
    tgid and sends that CPU's batch (a heartbeat when it is empty).  A
    thread that finds itself moved off its CPU (the CPU went offline; the
    kernel then widens the thread's affinity) logs it, records the CPU in
    ``stopped`` and ends.  The threads touch nothing but their fd and these
    attributes; ``close`` stops and joins them.
    """

    def __init__(self, cpus: list[int], period: float = FLUSH_PERIOD) -> None:
        self.cpus = list(cpus)
        self.period = period
        self.failed: dict[int, str] = {}   # CPU -> why its thread could not be pinned
        self.stopped: list[int] = []       # CPUs whose thread ended while running
        self.running = False               # every thread started and pinned
        self.flushes = 0
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._fd = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)

    def start(self) -> bool:
        """Start the threads; True when every one is pinned to its CPU."""
        ready = []
        for cpu in self.cpus:
            pinned = threading.Event()
            thread = threading.Thread(target=self._run, args=(cpu, pinned), name=f"sidetrace-flush-{cpu}",
                                      daemon=True)
            thread.start()
            self._threads.append(thread)
            ready.append((cpu, pinned))
        deadline = time.monotonic() + FLUSHER_START_SECONDS
        for cpu, pinned in ready:
            if not pinned.wait(max(0.0, deadline - time.monotonic())):
                self.failed.setdefault(cpu, "its thread did not start in time")
        self.running = not self.failed
        return self.running

    def _run(self, cpu: int, pinned: threading.Event) -> None:
        try:
            os.sched_setaffinity(0, {cpu})  # 0: this thread only
        except OSError as exc:
            self.failed[cpu] = f"cannot pin a thread to it: {exc.strerror or exc}"
            pinned.set()
            return
        pinned.set()
        fd, only = self._fd, {cpu}
        while not self._stop.wait(self.period):
            if os.sched_getaffinity(0) != only:
                log.warning("cpu %d: the batch flusher was moved off its CPU (offline?); "
                            "events of that CPU are no longer waited for", cpu)
                self.stopped.append(cpu)
                return
            try:
                os.write(fd, b"")
            except OSError as exc:
                log.warning("cpu %d: batch flush failed, flusher stopped: %s", cpu, exc)
                self.stopped.append(cpu)
                return
            self.flushes += 1

    def close(self) -> None:
        self.running = False
        self._stop.set()
        for thread in self._threads:
            thread.join()
        self._threads.clear()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> "CpuFlushers":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AgentError(Exception):
    """The agent cannot start; the message says why in plain words."""


class Agent:
    """The running agent's state: everything except the trio tasks."""

    def __init__(self, collection: bpfobj.Collection, rings: bpfobj.PerfEventArray,
                 server: SpanServer, selection: TargetSelection, max_connections: int,
                 flushers: CpuFlushers | None = None, resources: ProcessResources | None = None,
                 keep_query_values: bool = False, max_cpu: float = 0.5,
                 max_memory: int | None = None,
                 probes: ContextProbes | None = None) -> None:
        self.collection = collection
        self.server = server
        self.clock = WallClock()
        # The pipeline records the traced connections' ends; the linker reads them.
        endpoints = TracedEndpoints()
        # What traced threads did between their calls (loop waits, asyncio
        # tasks, node async ids), for the linker; None without the context object.
        self.probes = probes
        self.linker = SpanLinker(server.publish, peer_traced=endpoints.traced,
                                 contexts=probes.contexts if probes is not None else None,
                                 clock=self.event_time_unix_ns, read_until=self.read_until_unix_ns)
        self.resources = resources if resources is not None else ProcessResources()
        self.pipeline = Pipeline(self.resources.attaching(self.linker.add), clock=self.clock,
                                 max_connections=max_connections, endpoints=endpoints,
                                 keep_query_values=keep_query_values, evidence=True)
        # Batching is on exactly when flushers run (see serve).
        self.flushers = flushers
        self.intake = Intake(rings, self.pipeline.handle, by_flush=flushers is not None,
                             behind=self._behind)
        self._forgotten = 0
        pids = collection.maps["pids"]
        self.pids_map = pids
        self.comms_map = collection.maps["comms"]
        self.selection = selection
        self.targets = TargetTracker(selection, add=self._trace_pid, remove=lambda tgid: pids.delete(tgid))
        self.tls = TlsLibraries(collection.programs, collection.maps.get("tls_counters"))
        self.shedder = LoadShedder(collection.maps["budget"], collection.maps["shed_procs"],
                                   BudgetController(max_cpu, max_memory), self._load)

    def _load(self) -> tuple[int, int, float, int, float]:
        """What the shedder decides on: spans built, units the kernel shed, the
        fullest ring, events lost, the least full subscriber queue."""
        counters = self.collection.maps["counters"]
        shed = sum(self._counter_total(counters, name) for name in _SHED_UNITS)
        lost = self._counter_total(counters, "lost_events")
        return self.pipeline.spans, shed, self.intake.fill(), lost, self.server.backlog()

    def _behind(self) -> None:
        try:
            self.shedder.behind()
        except (OSError, bpfobj.BpfError) as exc:
            log.warning("load budget not updated: %s", exc)

    @staticmethod
    def _counter_total(counters: bpfobj.Map, name: str) -> int:
        return sum(_U64.unpack(v)[0] for v in counters.lookup(KERNEL_COUNTER_NAMES.index(name)) or [])

    def read_until_unix_ns(self) -> int:
        """Wall-clock time up to which the kernel's events, and the runtime-context
        records, have all been read: now at most, 0 until every ring has been
        read once (the first drain's events, delivered before that, are not
        all there is about their time)."""
        complete = self.intake.complete_until_ns()
        if self.probes is not None:
            complete = min(complete, self.probes.horizon())
        if complete <= 0:
            return 0
        return min(time.time_ns(), self.clock.to_unix_ns(complete))

    def event_time_unix_ns(self) -> int:
        """``read_until_unix_ns``, but never more than LINKER_MAX_LAG_NS behind the wall clock.

        The linker's waits (for a span's other end, for the spans around a
        client call) run on this clock, not on the wall clock: an agent that
        falls behind on a loaded machine must not give up on a span's other
        end, nor decide a call, before it has read the events (and the loop
        waits, task steps, async ids) that make them.  Keeping up, it is a
        few milliseconds behind now.  The cap keeps a ring that stops being
        read from holding every span; a call that comes due on the capped
        clock before what surrounds it is read is left an ambiguous root (the
        linker is given ``read_until_unix_ns`` too).
        """
        return max(self.read_until_unix_ns(), time.time_ns() - LINKER_MAX_LAG_NS)

    def traced_pids(self) -> list[int]:
        """Every process traced now: the kernel's `pids` map (children and
        exec-by-name included), or every process but the agent."""
        if self.selection.everything:
            me = os.getpid()
            return [pid for pid in live_pids() if pid != me]
        return [_U32.unpack_from(key)[0] for key, _ in self.pids_map.items()]

    def scan_runtimes(self) -> None:
        """Context uprobes on the runtimes traced processes mapped since the last scan."""
        if self.probes is None:
            return
        try:
            self.probes.scan(self.traced_pids())
        except (OSError, bpfobj.BpfError) as exc:
            log.warning("runtime scan failed: %s", exc)
        self.probes.contexts.forget()

    def scan_tls(self) -> None:
        """Place TLS uprobes on libraries traced processes mapped since the last scan."""
        try:
            self.tls.scan(self.traced_pids())
        except (OSError, bpfobj.BpfError) as exc:
            log.warning("TLS library scan failed: %s", exc)

    def _trace_pid(self, tgid: int) -> None:
        """Mark ``tgid`` traced, keeping the flags the kernel may have set (exec, fork)."""
        old = self.pids_map.lookup(tgid)
        flags = PID_TRACED | (_U32.unpack(old)[0] if old is not None else 0)
        self.pids_map.update(tgid, flags)

    def load_comms(self) -> None:
        """Give the kernel the process names to catch at exec (before attaching)."""
        for name in self.selection.comms:
            self.comms_map.update(comm_key(name), COMM_SELECTED)

    def pid_counts(self) -> tuple[int, int]:
        """(entries in `pids`, of which added at exec by name)."""
        total = by_comm = 0
        for _, value in self.pids_map.items():
            total += 1
            if _U32.unpack_from(value)[0] & PID_BY_COMM:
                by_comm += 1
        return total, by_comm

    def forget_stopped_cpus(self) -> None:
        """Stop waiting for CPUs whose flusher ended (from the trio side)."""
        stopped = self.flushers.stopped if self.flushers is not None else []
        while self._forgotten < len(stopped):
            self.intake.forget(stopped[self._forgotten])
            self._forgotten += 1

    def flush(self) -> None:
        """Drain every ring and complete what can be completed (shutdown)."""
        self.intake.flush()
        self.pipeline.close()
        self.linker.flush()

    def kernel_counters_per_cpu(self) -> dict[str, list[int]]:
        """Each kernel counter, one value per possible CPU."""
        counters = self.collection.maps["counters"]
        out = {}
        for slot, name in enumerate(KERNEL_COUNTER_NAMES):
            per_cpu = counters.lookup(slot) or []
            out[name] = [_U64.unpack(v)[0] for v in per_cpu]
        return out

    def kernel_counters(self) -> dict[str, int]:
        return {name: sum(values) for name, values in self.kernel_counters_per_cpu().items()}

    def stats(self) -> dict[str, Any]:
        per_cpu = self.kernel_counters_per_cpu()
        errors = {name: sum(values) for name, values in per_cpu.items()}
        lost = per_cpu.get("lost_events", [])
        lost_batches = self.intake.lost_batches
        pids, pids_by_comm = self.pid_counts()
        return {
            "events": self.pipeline.events,
            # events in batches the kernel could not write (ring full), per CPU ring
            "lost_events": [lost[cpu] if cpu < len(lost) else 0 for cpu in sorted(lost_batches)],
            "lost_batches": [lost_batches[cpu] for cpu in sorted(lost_batches)],
            "batching": {
                "on": self.flushers is not None,
                "batches": errors.get("batches", 0),
                "heartbeats": errors.get("heartbeats", 0),
                "flushes": self.flushers.flushes if self.flushers is not None else 0,
                "cpus_not_flushed": sorted(self.flushers.stopped) if self.flushers is not None else [],
            },
            "map_fill": {
                "pids": pids,
                "pids_by_comm": pids_by_comm,
                "comms": len(self.selection.comms),
                "connections": len(self.pipeline.connections),
                "process_resources": len(self.resources),
            },
            "kernel_errors": {k: v for k, v in errors.items() if k not in _NOT_ERRORS},
            "kernel_events": errors.get("events", 0),
            # in-kernel protocol inference: connections classified / given up
            # on, data syscalls of given-up connections (dropped or header only),
            # and how the agent's detectors took the kernel's guesses
            "protocol_inference": {
                "known": errors.get("proto_known", 0),
                "opaque": errors.get("proto_opaque", 0),
                "opaque_syscalls": errors.get("opaque_data", 0),
                "hints_confirmed": self.pipeline.hints_confirmed,
                "hints_refuted": self.pipeline.hints_refuted,
                "opaque_conflicts": self.pipeline.opaque_conflicts,
            },
            "malformed_batches": self.intake.malformed,
            "corrupt_ring_batches": self.intake.corrupt_batches,
            "parse_errors": self.pipeline.parse_errors,
            # TCP events that found bytes before them no event carried (events
            # lost), and the requests then in flight, dropped without a span
            "stream_gaps": {"gaps": self.pipeline.stream_gaps,
                            "requests_dropped": self.pipeline.gap_dropped},
            "protocol_input": self.pipeline.input_stats(),
            "connections_evicted": self.pipeline.connections.evicted,
            "linker": self.linker.stats(),
            "tls": {**self.tls.stats(), "connections": self.pipeline.tls_connections},
            "runtime_context": self.probes.stats() if self.probes is not None else None,
            "shed": self.shed_stats(errors),
        }

    def shed_stats(self, counters: dict[str, int]) -> dict[str, Any]:
        """Load shedding: the budget, what the kernel left out (in all and per
        process), and what was in flight at a shed boundary (dropped, no span)."""
        pipeline = self.pipeline
        return {
            **self.shedder.stats(),
            "exchanges": counters.get("shed_exchanges", 0),
            "connections": counters.get("shed_connections", 0),
            "syscalls": counters.get("shed_syscalls", 0),
            "admitted": counters.get("admitted", 0),
            "resumed": counters.get("resumed", 0),
            "connections_shed_midstream": pipeline.shed_midstream,
            "in_flight_dropped": pipeline.shed_dropped,
            "per_process": {str(pid): counts for pid, counts in sorted(self.shedder.per_process().items())},
        }


def _settle_heap() -> None:
    """Start-up objects stay for the agent's life: keep the collector off them.

    Spans, connections and linker records live for seconds, so young
    collections at the default threshold (700 allocations) mostly walk live
    objects; a higher first threshold trades a little memory for CPU.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, 20, 20)


async def _housekeeping(agent: Agent) -> None:
    last_clock = time.monotonic()
    while True:
        await trio.sleep(HOUSEKEEPING_SECONDS)
        agent.forget_stopped_cpus()
        try:
            agent.targets.rescan()
        except (OSError, bpfobj.BpfError) as exc:
            log.warning("target rescan failed: %s", exc)
        agent.scan_tls()
        agent.scan_runtimes()
        agent.pipeline.expire_idle(time.monotonic_ns())
        agent.linker.tick(agent.event_time_unix_ns())
        if time.monotonic() - last_clock > CLOCK_REFRESH_SECONDS:
            agent.clock.refresh()
            last_clock = time.monotonic()


async def _shed_control(agent: Agent) -> None:
    """Set the kernel's budget from the agent's load, every CONTROL_PERIOD."""
    while True:
        await trio.sleep(CONTROL_PERIOD)
        try:
            agent.shedder.tick()
        except (OSError, bpfobj.BpfError) as exc:
            log.warning("load budget not updated: %s", exc)


async def _until_signal(agent: "Agent", cancel_scope: trio.CancelScope) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            log.info("received %s, shutting down", signal.Signals(signum).name)
            if agent.flushers is not None:
                # let every CPU's flusher send what its batch holds
                await trio.sleep(3 * agent.flushers.period)
            agent.flush()
            # Let the subscribers' writers send what the flush queued.
            await trio.sleep(SHUTDOWN_GRACE_SECONDS)
            cancel_scope.cancel()
            return


def check_preconditions(args: argparse.Namespace) -> Path:
    """Everything ``run`` needs, checked before anything is loaded into the kernel;
    returns the tracer object for this machine."""
    try:
        check_run_options(args)
    except OptionError as exc:
        raise AgentError(str(exc)) from None
    try:
        tracer = bpfobj.arch_object(TRACER_OBJECT)
    except bpfobj.BpfError as exc:
        raise AgentError(f"no tracer object for this machine: {exc}") from None
    privileges = check_privileges(args.ring_pages)
    if not privileges.ok:
        raise AgentError(f"cannot trace here: {'; '.join(privileges.problems)} (see `sidetrace check`)")
    try:
        check_socket_path(args.socket, args.socket_group)
    except ServerAlreadyRunning:
        raise AgentError(f"an agent is already serving on {args.socket}") from None
    except OSError as exc:
        raise AgentError(f"cannot serve on {args.socket}: {exc.strerror or exc}") from None
    return tracer


async def serve(args: argparse.Namespace, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Run the agent until cancelled (or a signal arrives)."""
    tracer = check_preconditions(args)
    selection = TargetSelection(pids=frozenset(args.pid), comms=frozenset(args.comm))
    with start_flushers(bpfobj.online_cpus()) as flushers:
        spec = bpfobj.load_object_spec(tracer).with_constants(
            trace_all=1 if selection.everything else 0,
            agent_tgid=os.getpid(),
            max_payload=args.payload_bytes,
            **batching_constants(flushers),
        )
        bpfobj.ensure_tracefs()
        await _serve_loaded(args, spec, selection, flushers, task_status)


def start_flushers(cpus: list[int]) -> CpuFlushers:
    """Flushers for ``cpus``, started; closed again (batching off) if any CPU
    cannot be flushed.  Decided before loading: .rodata is frozen at load."""
    flushers = CpuFlushers(cpus)
    if not flushers.start():
        why = "; ".join(f"cpu {cpu}: {reason}" for cpu, reason in sorted(flushers.failed.items()))
        log.warning("per-CPU event batching off (every event sent alone, at a higher kernel cost): %s", why)
        flushers.close()
    return flushers


def batching_constants(flushers: CpuFlushers) -> dict[str, int]:
    """The tracer's .rodata for batching: on exactly when every CPU has a flusher."""
    return {"batching": 1 if flushers.running else 0, "batch_max_age_ns": BATCH_MAX_AGE_NS}


async def _serve_loaded(args: argparse.Namespace, spec, selection: TargetSelection, flushers: CpuFlushers,
                        task_status) -> None:
    with bpfobj.Collection(spec) as collection, contextlib.ExitStack() as monitor_stack:
        with bpfobj.PerfEventArray(collection.maps["events"], pages=args.ring_pages) as rings, \
                _context_probes(collection, selection) as probes:
            server = SpanServer(args.socket, stats_interval=args.stats_interval, socket_group=args.socket_group)
            agent = Agent(collection, rings, server, selection, args.max_connections,
                          flushers if flushers.running else None,
                          ProcessResources(args.service, command_args=args.command_args),
                          keep_query_values=args.keep_query_values,
                          max_cpu=args.max_cpu, max_memory=args.max_memory << 20,
                          probes=probes)
            server.stats_source = agent.stats
            agent.load_comms()
            agent.targets.rescan()
            metrics = monitor_stack.enter_context(monitoring(args, agent, server))
            # Attach last: every map and ring is ready before the first event.
            collection.attach_all()
            agent.scan_tls()
            agent.scan_runtimes()
            collection.release_kernel_btf()
            _settle_heap()
            log.info("tracing %s; %d programs attached, %d CPU rings; serving on %s",
                     "every process" if selection.everything else sorted(agent.targets.tracked),
                     len(collection.links), len(rings.rings), args.socket)
            try:
                async with trio.open_nursery() as nursery:
                    await nursery.start(server.serve)
                    for ring in rings:
                        nursery.start_soon(agent.intake.read, ring)
                    if probes is not None:
                        for ring in probes.rings:
                            nursery.start_soon(probes.read, ring)
                    nursery.start_soon(_housekeeping, agent)
                    nursery.start_soon(_shed_control, agent)
                    if metrics is not None:
                        nursery.start_soon(metrics.run)
                    nursery.start_soon(_until_signal, agent, nursery.cancel_scope)
                    task_status.started(agent)
            finally:
                agent.tls.close()


@contextlib.contextmanager
def _context_probes(tracer: bpfobj.Collection, selection: TargetSelection):
    """The runtime-context object next to the tracer, or None if it cannot load
    (links are then made without loop iterations, tasks and async ids)."""
    try:
        probes = ContextProbes(tracer.maps["pids"], trace_all=selection.everything)
    except (OSError, bpfobj.BpfError) as exc:
        log.warning("runtime context not available (calls inside event loops are linked "
                    "by timing only): %s", exc)
        yield None
        return
    with probes:
        yield probes


def run(args: argparse.Namespace) -> int:
    log_to_stderr(args.verbose)
    try:
        try:
            trio.run(serve, args)
        except* ServerAlreadyRunning:
            # Another agent took the socket while this one was loading.
            raise AgentError(f"an agent is already serving on {args.socket}") from None
    except AgentError as exc:
        error(str(exc))
        return 2
    except bpfobj.BpfError as exc:
        error(f"cannot start tracing: {exc}")
        return 1
    return 0
