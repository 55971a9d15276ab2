"""What the verifier costs per program of the tracer object.

Loads the tracer object as the agent does (its .rodata: batching on, the
agent's pid, the default payload size), each program with the verifier's
statistics (log level BPF_LOG_STATS, through the collection's verifier_log)
and timed with the loading thread's CPU clock (the verifier runs in the
loading thread).  Per program: instructions loaded, instructions the verifier
processed, its states (total and peak), the kernel's own verification time
and the loading thread's CPU from the previous program's load to this one's
(BPF_PROG_LOAD and a few map-fd patches); medians over the runs.

``--against REV`` (repeatable) loads the object committed at a git revision
too, interleaved run by run with this tree's, so both see the same load.

Usage: python bench/bench_verifier.py [--runs N] [--against REV] [--object PATH]
(default object: bpfobj/bpf/sidetrace.bpf.o, that is the one built for this machine)
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import bpfobj  # noqa: E402

OBJECT = "bpfobj/bpf/sidetrace.bpf.o"
LOG_STATS = 4  # BPF_LOG_STATS
STATS = re.compile(r"processed (\d+) insns .*?total_states (\d+) peak_states (\d+)")
VTIME = re.compile(r"verification time (\d+) usec")


def load_once(path: str) -> dict[str, dict[str, float]]:
    """Per program of the object at ``path``: instructions, the verifier's statistics, and
    the CPU of the loading thread from the previous program's load to this one's."""
    rows: dict[str, dict[str, float]] = {}
    spec = bpfobj.load_object_spec(path).with_constants(
        trace_all=0, agent_tgid=os.getpid(), max_payload=4096, batching=1, batch_max_age_ns=2000000)
    mark = [time.thread_time()]

    def record(name: str, text: str) -> None:
        now = time.thread_time()
        stats, vtime = STATS.search(text), VTIME.search(text)
        rows[name] = {"insns": len(spec.programs[name].instructions) // 8,
                      "processed": int(stats[1]) if stats else 0,
                      "states": int(stats[2]) if stats else 0, "peak": int(stats[3]) if stats else 0,
                      "vtime": int(vtime[1]) / 1e6 if vtime else 0.0, "cpu": now - mark[0]}
        mark[0] = now

    with bpfobj.Collection(spec, log_level=LOG_STATS, verifier_log=record):
        pass
    return rows


def object_at(rev: str, path: str, tmp: str) -> str:
    """The object committed at ``rev`` (the one-for-all object before per-architecture builds)."""
    this_arch = os.path.relpath(bpfobj.arch_object(os.path.join(ROOT, OBJECT)), ROOT)
    for rel in (os.path.relpath(path, ROOT), this_arch, OBJECT):
        got = subprocess.run(["git", "-C", ROOT, "show", f"{rev}:{rel}"], capture_output=True)
        if got.returncode == 0:
            break
    else:
        raise SystemExit(f"no tracer object at {rev}: {got.stderr.decode().strip()}")
    data = got.stdout
    out = os.path.join(tmp, f"{rev.replace('/', '_')}.{os.path.basename(path)}")
    with open(out, "wb") as f:
        f.write(data)
    return out


def median_rows(runs: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    return {prog: {k: statistics.median(r[prog][k] for r in runs) for k in runs[0][prog]}
            for prog in runs[0]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--against", action="append", default=[], metavar="REV")
    ap.add_argument("--object", default=OBJECT)
    args = ap.parse_args(argv)
    path = str(bpfobj.arch_object(os.path.join(ROOT, args.object)))
    with tempfile.TemporaryDirectory() as tmp:
        objects = {rev: object_at(rev, path, tmp) for rev in args.against}
        objects["this tree"] = path
        runs: dict[str, list] = {name: [] for name in objects}
        for _ in range(args.runs):
            for name, obj in objects.items():
                runs[name].append(load_once(obj))
    table = {name: median_rows(r) for name, r in runs.items()}
    print(f"{os.path.relpath(path, ROOT)}: medians of {args.runs} loads each, interleaved; "
          f"load average {os.getloadavg()[0]:.1f}")
    head = f"{'program':<28}" + "".join(f" | {name[:30]:>30}" for name in table)
    print(head)
    print(f"{'':<28}" + " | insns  processed states    CPU ms" * len(table))
    progs = list(table["this tree"])  # an older object may lack some of them
    totals = {name: dict.fromkeys(("insns", "processed", "states", "cpu"), 0.0) for name in table}
    for prog in progs:
        line = f"{prog:<28}"
        for name, rows in table.items():
            r = rows.get(prog)
            if r is None:
                line += f" | {'-':>30}"
                continue
            for k in totals[name]:
                totals[name][k] += r[k]
            line += f" | {r['insns']:5.0f} {r['processed']:10.0f} {r['states']:6.0f} {r['cpu'] * 1000:9.1f}"
        print(line)
    line = f"{'total':<28}"
    for name in table:
        t = totals[name]
        line += f" | {t['insns']:5.0f} {t['processed']:10.0f} {t['states']:6.0f} {t['cpu'] * 1000:9.1f}"
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
