"""Startup time: from a fresh ``python -c`` process to every program attached.

Measured from the parent: the clock starts just before the child is spawned
and stops when the child reports that all programs of the object are
attached.  Included: interpreter start, imports, parsing the object, parsing
kernel BTF, CO-RE, map creation, program loads, attaching.  Not included:
detaching (reported separately).  Goal: <= 1.0 s.

Baselines measured in the same run: the interpreter alone (``python -c
pass``) and ``import bpfobj``.

Usage: python bench/bench_startup.py [OBJECT] [--runs N]
(default object: bpfobj/bpf/sidetrace.bpf.o, that is the one built for this machine)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CHILD = r"""
import sys, time, json
t0 = time.perf_counter()
import bpfobj
from bpfobj._kernel_btf import kernel_btf
t1 = time.perf_counter()
spec = bpfobj.load_object_spec(bpfobj.arch_object(sys.argv[1]))
t2 = time.perf_counter()
kernel_btf()
t3 = time.perf_counter()
coll = bpfobj.Collection(spec)
t4 = time.perf_counter()
coll.attach_all()
t5 = time.perf_counter()
print(json.dumps({"import": t1 - t0, "parse": t2 - t1, "kernel_btf": t3 - t2,
                  "load": t4 - t3, "attach": t5 - t4, "programs": len(coll.programs),
                  "maps": len(coll.maps)}), flush=True)
sys.stdin.readline()
t6 = time.perf_counter()
coll.close()
print(json.dumps({"close": time.perf_counter() - t6}), flush=True)
"""


def spawn(args: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(args, cwd=ROOT, check=True)
    return time.perf_counter() - t0


def startup_once(obj: str) -> tuple[float, dict]:
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", CHILD, obj], cwd=ROOT, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        line = proc.stdout.readline()
        elapsed = time.perf_counter() - t0
        if not line:
            raise SystemExit(f"child failed before attaching (exit {proc.wait()})")
        parts = json.loads(line)
        proc.stdin.write("\n")
        proc.stdin.flush()
        parts.update(json.loads(proc.stdout.readline()))
    finally:
        proc.stdin.close()
        proc.stdout.close()
        proc.wait(timeout=60)
    return elapsed, parts


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = os.path.join(ROOT, "bpfobj/bpf/sidetrace.bpf.o")  # this machine's: arch_object
    ap.add_argument("object", nargs="?", default=default)
    ap.add_argument("--runs", type=int, default=7)
    args = ap.parse_args(argv)
    obj = os.path.abspath(args.object)

    interp = [spawn([sys.executable, "-c", "pass"]) for _ in range(args.runs)]
    imp = [spawn([sys.executable, "-c", "import bpfobj"]) for _ in range(args.runs)]
    runs = [startup_once(obj) for _ in range(args.runs)]
    total = statistics.median(t for t, _ in runs)
    med = {k: statistics.median(p[k] for _, p in runs)
           for k in ("import", "parse", "kernel_btf", "load", "attach", "close")}
    first = runs[0][1]

    print(f"machine: {platform.node()} {platform.machine()} {os.cpu_count()} CPUs, "
          f"Python {platform.python_version()}, Linux {platform.release()}")
    print(f"object: {os.path.relpath(obj, ROOT)} ({first['programs']} programs, "
          f"{first['maps']} maps); median of {args.runs} fresh processes")
    floor = statistics.median(interp)
    print(f"{'python -c pass (floor)':<40} {floor * 1000:7.1f} ms   1.00x")
    label = 'python -c "import bpfobj"'
    print(f"{label:<40} {statistics.median(imp) * 1000:7.1f} ms   "
          f"{statistics.median(imp) / floor:.2f}x")
    print(f"{'start -> all programs attached':<40} {total * 1000:7.1f} ms   {total / floor:.2f}x")
    print("  inside the child (medians):")
    for k in ("import", "parse", "kernel_btf", "load", "attach"):
        label = {"kernel_btf": "kernel BTF parse", "load": "maps + CO-RE + prog loads",
                 "parse": "object parse"}.get(k, k)
        print(f"    {label:<36} {med[k] * 1000:7.1f} ms")
    print(f"  detach + close afterwards (not in the total): {med['close'] * 1000:.1f} ms")
    ok = total <= 1.0
    print(f"goal <= 1.0 s: {'met' if ok else 'NOT met'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
