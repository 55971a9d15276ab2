"""Startup time: from a fresh ``python -c`` process to every program attached.

Measured from the parent: the clock starts just before the child is spawned
and stops when the child reports that all programs of the object are
attached.  Included: interpreter start, imports, parsing the object, parsing
kernel BTF, CO-RE, map creation, program loads, attaching.  Not included:
detaching (reported separately).  Goal: <= 1.0 s.

Baselines measured in the same run: the interpreter alone (``python -c
pass``) and ``import bpfobj``.

The agent itself, measured the same way: a fresh ``sidetrace run`` (``python
-m agent.cli run --pid <this bench> -v``, tracer and monitor) until it logs
that its programs are attached.  Its floors in the same run: the interpreter
with only the outside modules the agent imports (every module in
``sys.modules`` after importing the agent that is not ``agent``, ``bpfobj``
or ``wire``), and the verifier (the time spent inside BPF_PROG_LOAD for the
programs it loads).  Where the agent's time goes comes from a second,
instrumented start per run (timers wrapped around the loader's phases, so a
little slower than the plain start).  Goal for the agent: <= 250 ms.

``--against TREE`` (repeatable) starts the agent of another checkout too
(``git worktree add /tmp/base <commit>``), interleaved run by run.

Usage: python bench/bench_startup.py [OBJECT] [--runs N] [--against TREE]
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
import tempfile
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


# The agent's outside modules: what importing it loads that is not its own code.
AGENT_MODULES = r"""
import sys, json
before = set(sys.modules)
import agent.cli, agent._app
own = ("agent", "bpfobj", "wire", "__editable__")
print(json.dumps(sorted(m for m in set(sys.modules) - before
                        if m.split(".")[0] not in own and not m.startswith("__editable__"))))
"""

# The agent started with timers around its phases; each phase's seconds are
# printed on stderr as one JSON line when the programs are attached.
AGENT_PHASES = r"""
import sys, time, json, logging
t0 = time.monotonic()
import agent.cli, agent._app
import bpfobj, bpfobj._sys, bpfobj._loader, bpfobj._perf, agent._monitor
phases = {"imports": time.monotonic() - t0}

def timed(owner, name, label):
    inner = getattr(owner, name)
    def wrapper(*a, **k):
        t = time.monotonic()
        try:
            return inner(*a, **k)
        finally:
            phases[label] = phases.get(label, 0.0) + time.monotonic() - t
    setattr(owner, name, wrapper)

timed(bpfobj, "load_object_spec", "object parse")
timed(bpfobj._loader, "kernel_btf", "kernel BTF parse")
timed(bpfobj._loader.Collection, "_apply_core_all", "CO-RE (incl. kernel BTF look-ups)")
timed(bpfobj._loader.Collection, "__init__", "object load (maps, CO-RE, programs), wall")
timed(bpfobj._sys, "prog_load", "BPF_PROG_LOAD, per call, summed")
verify = bpfobj._sys.prog_load
def prog_load_cpu(*a, **k):
    t = time.thread_time()
    try:
        return verify(*a, **k)
    finally:
        phases["BPF_PROG_LOAD CPU, all threads"] = (phases.get("BPF_PROG_LOAD CPU, all threads", 0.0)
                                                    + time.thread_time() - t)
bpfobj._sys.prog_load = prog_load_cpu
timed(bpfobj._sys, "map_create", "map creation")
timed(bpfobj._sys, "btf_load", "BTF load")
timed(bpfobj._loader.Collection, "attach_all", "attach (tracer)")
timed(agent._monitor.Monitor, "attach", "attach (monitor)")
timed(bpfobj._perf.PerfEventArray, "__init__", "perf rings")

class Ready(logging.Handler):
    def emit(self, record):
        if "programs attached" in record.getMessage():
            phases["total"] = time.monotonic() - t0
            print(json.dumps(phases), file=sys.stderr, flush=True)
logging.getLogger("sidetrace").addHandler(Ready())
sys.exit(agent.cli.main(sys.argv[1:]))
"""
AGENT_READY = "programs attached"


def cpu_seconds(pid: int) -> float:
    """User + system CPU of process ``pid`` (all its threads) so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def agent_start(python: str, tree: str, code: str | None = None) -> tuple[float, dict]:
    """Seconds from spawning ``sidetrace run`` (of ``tree``) to its log line
    saying the programs are attached; with ``code``, the phases it reports."""
    with tempfile.TemporaryDirectory() as tmp:
        args = ["run", "--socket", os.path.join(tmp, "agent.sock"), "--pid", str(os.getpid()), "-v"]
        head = [python, "-c", code] if code else [python, "-m", "agent.cli"]
        t0 = time.perf_counter()
        proc = subprocess.Popen([*head, *args], cwd=tree, stderr=subprocess.PIPE, text=True,
                                stdout=subprocess.DEVNULL)
        elapsed, phases = None, {}
        try:
            for line in proc.stderr:
                if elapsed is None and AGENT_READY in line:
                    elapsed = time.perf_counter() - t0
                    phases["cpu"] = cpu_seconds(proc.pid)
                if line.startswith("{"):
                    phases.update(json.loads(line))
                if elapsed is not None and (len(phases) > 1 or not code):
                    break
            if elapsed is None:
                raise SystemExit(f"agent in {tree} did not start (exit {proc.wait()})")
        finally:
            proc.terminate()
            proc.wait(timeout=60)
            proc.stderr.close()
    return elapsed, phases


def compile_tree(python: str, tree: str) -> None:
    """Byte-compile the project's packages, as an install does: a start that
    compiles its modules (PYTHONDONTWRITEBYTECODE, a read-only tree) measures
    the compiler, not the start."""
    subprocess.run([python, "-m", "compileall", "-q", "agent", "bpfobj", "wire"], cwd=tree, check=True,
                   stdout=subprocess.DEVNULL)


def agent_rows(args: argparse.Namespace) -> None:
    python = sys.executable
    mods = json.loads(subprocess.run([python, "-c", AGENT_MODULES], cwd=ROOT, check=True,
                                     capture_output=True, text=True).stdout)
    outside = [spawn([python, "-c", "import " + ", ".join(mods)]) for _ in range(args.runs)]
    interp = [spawn([python, "-c", "pass"]) for _ in range(args.runs)]
    trees = [ROOT, *(os.path.abspath(t) for t in args.against)]
    for tree in trees:
        compile_tree(python, tree)
    load = os.getloadavg()[0]
    plain: dict[str, list[float]] = {t: [] for t in trees}
    cpu: dict[str, list[float]] = {t: [] for t in trees}
    phases: dict[str, list[dict]] = {t: [] for t in trees}
    for _ in range(args.runs):
        for tree in trees:
            elapsed, seen = agent_start(python, tree)
            plain[tree].append(elapsed)
            cpu[tree].append(seen["cpu"])
            phases[tree].append(agent_start(python, tree, AGENT_PHASES)[1])
    floor = statistics.median(interp)
    print()
    print(f"sidetrace run (tracer + monitor), median of {args.runs} fresh processes; "
          f"load average {load:.1f} before, {os.getloadavg()[0]:.1f} after")
    print(f"{'python -c pass (floor)':<44} {floor * 1000:7.1f} ms   1.00x")
    label = f"python importing its {len(mods)} outside modules"
    print(f"{label:<44} {statistics.median(outside) * 1000:7.1f} ms   "
          f"{statistics.median(outside) / floor:.2f}x")
    for tree in trees:
        total = statistics.median(plain[tree])
        name = "this tree" if tree == ROOT else tree
        print(f"{'start -> attached, ' + name:<44} {total * 1000:7.1f} ms   {total / floor:.2f}x"
              f"   CPU {statistics.median(cpu[tree]) * 1000:6.0f} ms"
              f"   goal <= 250 ms: {'met' if total <= 0.25 else 'NOT met'}")
    labels = [k for k in phases[ROOT][0] if k not in ("total", "cpu")]
    print("  inside the agent, instrumented start (medians, ms; rows overlap: CO-RE includes the BTF parse):")
    print(f"    {'':<40}" + "".join(f"{('this tree' if t == ROOT else os.path.basename(t)):>12}" for t in trees))
    for k in [*labels, "total"]:
        print(f"    {k:<40}" + "".join(
            f"{statistics.median(p.get(k, 0.0) for p in phases[t]) * 1000:12.1f}" for t in trees))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = os.path.join(ROOT, "bpfobj/bpf/sidetrace.bpf.o")  # this machine's: arch_object
    ap.add_argument("object", nargs="?", default=default)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--against", action="append", default=[], metavar="TREE",
                    help="also start the agent of this checkout (repeatable)")
    ap.add_argument("--agent-only", action="store_true", help="only the agent's rows")
    args = ap.parse_args(argv)
    obj = os.path.abspath(args.object)

    print(f"machine: {platform.node()} {platform.machine()} {os.cpu_count()} CPUs, "
          f"Python {platform.python_version()}, Linux {platform.release()}")
    ok = True
    compile_tree(sys.executable, ROOT)
    if not args.agent_only:
        ok = object_rows(obj, args.runs)
    agent_rows(args)
    return 0 if ok else 1


def object_rows(obj: str, n: int) -> bool:
    interp = [spawn([sys.executable, "-c", "pass"]) for _ in range(n)]
    imp = [spawn([sys.executable, "-c", "import bpfobj"]) for _ in range(n)]
    runs = [startup_once(obj) for _ in range(n)]
    total = statistics.median(t for t, _ in runs)
    med = {k: statistics.median(p[k] for _, p in runs)
           for k in ("import", "parse", "kernel_btf", "load", "attach", "close")}
    first = runs[0][1]

    print(f"object: {os.path.relpath(obj, ROOT)} ({first['programs']} programs, "
          f"{first['maps']} maps); median of {n} fresh processes")
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
    return ok


if __name__ == "__main__":
    sys.exit(main())
