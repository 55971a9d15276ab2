"""Added cost per traced socket write and read: nothing / empty hooks / full tracer.

A small C program (bench/syscall_loop.c, compiled here with gcc) runs a tight
loop on a connected TCP loopback pair: BATCH write(64 B) calls on the client,
then BATCH read(64 B) calls on the server, timing each phase; it reports the
median ns per call over ROUNDS rounds.  The same loop runs under:

  none        nothing attached
  empty       empty programs on every hook sidetrace.bpf.o uses (the floor:
              what the hooks themselves cost; data syscalls are hooked at
              sys_exit only)
  empty2      empty programs on sys_enter AND sys_exit of the data syscalls
              (the floor of an enter+exit design, for comparison)
  full-miss   sidetrace.bpf.o, loop process not traced (pid filter miss)
  full        sidetrace.bpf.o, loop process traced, batching off: one event
              per call with 64 B of payload, each sent at once in its own batch
              record, drained by a reader thread (as the agent does); every
              message starts with "GET " so the connection is classified HTTP/1
              by its first event and stays on the full path
  full-batched  the same with batching on, loaded as the agent loads it: this
              process is the agent (agent_tgid) and runs the agent's flushers
              (one thread pinned per CPU, a zero-byte write every 10 ms); events
              collect in per-CPU batches, one perf record per batch
  opaque      traced, but the messages are 'x' bytes: after ST_PROTO_TRIES
              events the connection is OPAQUE and its calls are dropped in the
              kernel (drop_opaque = 1, the default): no copy, no record
  opaque-hdr  the same with drop_opaque = 0: a 136-byte header-only record per
              call (no payload copy, no TCP sequence read)

Conditions are interleaved over REPS repetitions and the median is kept, as
the machine is noisy.  A second pass with kernel.bpf_stats_enabled=1 reports
the programs' own run time (ns per run), which excludes the syscall path.

Usage: python bench/bench_syscall_cost.py [--reps N] [--rounds N] [--batch N] [--size N]
Needs root, gcc, and a kernel with syscall tracepoints.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from agent._app import CpuFlushers, batching_constants  # noqa: E402
from agent.intake import BATCH_LAYOUT  # noqa: E402
from bpfobj import Collection, PerfEventArray, arch_object, load_object_spec, online_cpus  # noqa: E402
from _cloops import build, run_held  # noqa: E402

FULL_OBJ = arch_object(REPO / "bpfobj" / "bpf" / "sidetrace.bpf.o")
EMPTY_OBJ = REPO / "tests" / "bpf" / "empty_hooks.bpf.o"
DATA_SYSCALLS = ("read", "readv", "recvfrom", "recvmsg", "recvmmsg",
                 "write", "writev", "sendto", "sendmsg", "sendmmsg")


TRACING_TYPES = {"tracepoint", "raw_tracepoint", "tracing", "kprobe", "perf_event"}
_own_ids: set[int] = set()
disturbed_runs = 0


def foreign_tracers() -> list[str]:
    """Tracing programs loaded by someone else: they would add their cost to every condition."""
    out = subprocess.run(["bpftool", "-j", "prog", "show"], capture_output=True, text=True)
    if out.returncode != 0:
        return []
    return [f"{p.get('id')}:{p.get('name', '?')}" for p in json.loads(out.stdout)
            if p.get("type") in TRACING_TYPES and p.get("id") not in _own_ids]


# Start of every message in `full`: a protocol the tracer recognises (HTTP/1).
CLASSIFIED_PREFIX = "GET "
TRACED = ("full", "full-batched", "opaque", "opaque-hdr")


def run_loop(exe: Path, args: argparse.Namespace, register=None, prefix: str | None = None) -> tuple[float, float]:
    global disturbed_runs
    others = foreign_tracers()
    if others:
        disturbed_runs += 1
    argv = [str(exe), "4", str(args.rounds), str(args.batch), str(args.size), "wait"]
    if prefix:
        argv.append(prefix)
    out = run_held(argv, None if register is None else (lambda line: register(int(line.split("=")[1]))))
    vals = dict(kv.split("=") for kv in out.split())
    return float(vals["write_ns"]), float(vals["read_ns"])


def empty_program_names(both_sides: bool) -> list[str]:
    names = [p for p in load_object_spec(EMPTY_OBJ).programs]
    if both_sides:
        return [n for n in names if any(n in (f"empty_exit_{s}", f"empty_enter_{s}") for s in DATA_SYSCALLS)]
    # the hooks the tracer uses: every program except the sys_enter side of data syscalls
    return [n for n in names if not any(n == f"empty_enter_{s}" for s in DATA_SYSCALLS)]


_unpack_batch_header = BATCH_LAYOUT.unpack_from
_COUNT = BATCH_LAYOUT.names.index("count")


class Drainer:
    """Reads the tracer's rings in a thread, as the agent would."""

    def __init__(self, coll: Collection) -> None:
        self.rings = PerfEventArray(coll.maps["events"], pages=4096)
        self.samples = 0  # perf records (batches, heartbeats included)
        self.events = 0
        self.lost = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._take(self.rings.read_all())
            time.sleep(0.001)

    def _take(self, r) -> None:
        # Only the batch headers' counts: decoding every event here would
        # take CPU from the loop, and more of it the more events per record.
        self.samples += len(r.samples)
        self.events += sum(_unpack_batch_header(s)[_COUNT] for s in r.samples)
        self.lost += r.lost

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._take(self.rings.read_all())
        self.rings.close()


def _own(coll: Collection) -> None:
    _own_ids.clear()
    _own_ids.update(prog.info().id for prog in coll.programs.values())


def condition(name: str, exe: Path, args: argparse.Namespace, stats: dict | None = None) -> tuple[float, float]:
    """Run the loop once under `name`; with `stats`, collect per-program run time."""
    if name == "none":
        _own_ids.clear()
        return run_loop(exe, args)
    if name in ("empty", "empty2"):
        with Collection.load_file(EMPTY_OBJ) as coll:
            _own(coll)
            for prog in empty_program_names(name == "empty2"):
                coll.attach(prog)
            result = run_loop(exe, args)
            if stats is not None:
                stats.update(prog_stats(coll, ("read", "write")))
            return result
    flushers = CpuFlushers(online_cpus() if name == "full-batched" else [])
    try:
        if name == "full-batched" and not flushers.start():
            raise SystemExit(f"bench_syscall_cost: cannot pin flushers: {flushers.failed}")
        return traced_condition(name, exe, args, stats, flushers)
    finally:
        flushers.close()


def traced_condition(name: str, exe: Path, args: argparse.Namespace, stats: dict | None,
                     flushers: CpuFlushers) -> tuple[float, float]:
    constants = dict(drop_opaque=0 if name == "opaque-hdr" else 1)
    if name == "full-batched":
        constants.update(agent_tgid=os.getpid(), **batching_constants(flushers))
    spec = load_object_spec(FULL_OBJ).with_constants(**constants)
    with Collection(spec) as coll:
        _own(coll)
        coll.attach_all()
        traced = name in TRACED
        drainer = Drainer(coll) if traced else None
        pids = coll.maps["pids"]

        def register(pid: int) -> None:
            pids[struct.pack("<I", pid)] = struct.pack("<I", 1)

        try:
            result = run_loop(exe, args, register if traced else None,
                              CLASSIFIED_PREFIX if name.startswith("full") else None)
            if drainer is not None:
                time.sleep(3 * flushers.period)  # let the flushers send the last batches
        finally:
            if drainer is not None:
                drainer.close()
        if drainer is not None and name != "opaque":  # opaque: nothing is sent after the verdict
            expected = 2 * args.batch * args.rounds
            if drainer.lost or drainer.events < expected:
                print(f"  warning: {name}{' (stats pass)' if stats is not None else ''}: {drainer.events} events "
                      f"for >= {expected} calls, {drainer.lost} records lost", file=sys.stderr)
        if stats is not None:
            stats.update(prog_stats(coll, ("read", "write")))
        return result


def prog_stats(coll: Collection, syscalls: tuple[str, ...]) -> dict[str, float]:
    """ns per run of the sys_exit programs of `syscalls` (needs bpf_stats_enabled)."""
    wanted = {}
    for name, prog in coll.programs.items():
        for sc in syscalls:
            if name.endswith(f"exit_{sc}"):
                wanted[prog.info().id] = sc
    out = json.loads(subprocess.run(["bpftool", "-j", "prog", "show"], capture_output=True,
                                    text=True, check=True).stdout)
    result = {}
    for p in out:
        sc = wanted.get(p.get("id"))
        if sc and p.get("run_cnt"):
            result[sc] = p["run_time_ns"] / p["run_cnt"]
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--rounds", type=int, default=3000)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--no-stats", action="store_true", help="skip the bpf_stats pass")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench_syscall_cost: needs root; skipped")
        return 0
    names = ["none", "empty", "empty2", "full-miss", "full", "full-batched", "opaque", "opaque-hdr"]
    results: dict[str, list[tuple[float, float]]] = {n: [] for n in names}
    with tempfile.TemporaryDirectory() as tmp:
        exe = build("syscall_loop.c", Path(tmp))
        run_loop(exe, args)  # warm up
        for rep in range(args.reps):
            for n in names:
                results[n].append(condition(n, exe, args))
        run_stats: dict[str, dict[str, float]] = {}
        if not args.no_stats:
            ctl = Path("/proc/sys/kernel/bpf_stats_enabled")
            old = ctl.read_text().strip()
            ctl.write_text("1")
            try:
                for n in ("empty", "full-miss", "full", "full-batched", "opaque", "opaque-hdr"):
                    run_stats[n] = {}
                    condition(n, exe, args, stats=run_stats[n])
            finally:
                ctl.write_text(old)

    if disturbed_runs:
        print(f"warning: other tracing BPF programs were loaded during {disturbed_runs} runs; "
              "their cost is in those numbers (run on a quiet machine)", file=sys.stderr)
    med = {n: (statistics.median(w for w, _ in v), statistics.median(r for _, r in v)) for n, v in results.items()}
    base_w, base_r = med["none"]
    floor_w, floor_r = med["empty"][0] - base_w, med["empty"][1] - base_r
    print(f"# syscall cost, {args.size} B TCP loopback write()/read(), {platform.node()} "
          f"{platform.release()}, {os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d')}, "
          f"median of {args.reps} interleaved runs x {args.rounds} rounds x {args.batch} calls")
    print()
    print("| condition | write ns/call | added | x floor | read ns/call | added | x floor |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for n in names:
        w, r = med[n]
        aw, ar = w - base_w, r - base_r
        xw = f"{aw / floor_w:.2f}" if n != "none" and floor_w > 0 else "-"
        xr = f"{ar / floor_r:.2f}" if n != "none" and floor_r > 0 else "-"
        print(f"| {n} | {w:.0f} | {aw:+.0f} | {xw} | {r:.0f} | {ar:+.0f} | {xr} |")
    (fw, fr), (bw, br), (ew, er) = med["full"], med["full-batched"], med["empty"]
    print()
    print("over the empty programs of the same run (robust to a disturbed `none`): "
          f"full {fw - ew:+.0f} / {fr - er:+.0f} ns, full-batched {bw - ew:+.0f} / {br - er:+.0f} ns "
          f"(write / read); batched added cost / batching-off added cost: "
          f"{(bw - base_w) / (fw - base_w):.2f} (write), {(br - base_r) / (fr - base_r):.2f} (read)")
    if run_stats:
        print()
        print("program run time (kernel.bpf_stats_enabled; includes ~the empty program's stats overhead)")
        print()
        print("| condition | sys_exit_write ns/run | sys_exit_read ns/run |")
        print("|---|---:|---:|")
        for n, st in run_stats.items():
            print(f"| {n} | {st.get('write', float('nan')):.0f} | {st.get('read', float('nan')):.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
