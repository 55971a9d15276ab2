"""What the verifier costs per program of the tracer object.

Loads the tracer object as the agent does (its .rodata: batching on, the
agent's pid, the default payload size), each program with the verifier's
statistics (log level BPF_LOG_STATS) and timed with the loading thread's CPU
clock (the verifier runs in the loading thread).  Per program: instructions
loaded, instructions the verifier processed, its states (total and peak),
the kernel's own verification time and the CPU of BPF_PROG_LOAD; medians
over the runs.

``--against REV`` (repeatable) loads the object committed at a git revision
too, interleaved run by run with this tree's, so both see the same load.

Usage: python bench/bench_verifier.py [--runs N] [--against REV] [--object PATH]
(default object: bpfobj/bpf/sidetrace.bpf.o, that is the one built for this machine)
"""

from __future__ import annotations

import argparse
import ctypes
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
from bpfobj import _sys  # noqa: E402

OBJECT = "bpfobj/bpf/sidetrace.bpf.o"
LOG_STATS = 4  # BPF_LOG_STATS
STATS = re.compile(r"processed (\d+) insns .*?total_states (\d+) peak_states (\d+)")
VTIME = re.compile(r"verification time (\d+) usec")


class Loads:
    """Stands in for bpfobj's BPF_PROG_LOAD wrapper, recording per program."""

    def __init__(self) -> None:
        self.rows: list[dict[str, float]] = []  # in load order

    def prog_load(self, prog_type: int, insns: bytes, license: str, *, name: str = "",
                  expected_attach_type: int = 0, attach_btf_id: int = 0, attach_btf_obj_fd: int = 0,
                  kern_version: int = 0, prog_flags: int = 0, btf_fd: int = 0,
                  func_info: bytes = b"", func_info_rec_size: int = 8, line_info: bytes = b"",
                  line_info_rec_size: int = 16, **_ignored) -> int:
        insn_buf = _sys._cbuf(insns)
        lic = ctypes.create_string_buffer(license.encode())
        log = ctypes.create_string_buffer(1 << 16)
        fi = _sys._cbuf(func_info) if func_info else None
        li = _sys._cbuf(line_info) if line_info else None
        attr = _sys.ProgLoadAttr(
            prog_type=prog_type, insn_cnt=len(insns) // 8, insns=_sys._addr(insn_buf),
            license=_sys._addr(lic), log_level=LOG_STATS, log_size=len(log), log_buf=_sys._addr(log),
            kern_version=kern_version, prog_flags=prog_flags, prog_name=_sys._name_field(name),
            expected_attach_type=expected_attach_type, prog_btf_fd=btf_fd,
            attach_btf_id=attach_btf_id, attach_btf_obj_fd=attach_btf_obj_fd)
        if fi is not None:
            attr.func_info_rec_size, attr.func_info = func_info_rec_size, _sys._addr(fi)
            attr.func_info_cnt = len(func_info) // func_info_rec_size
        if li is not None:
            attr.line_info_rec_size, attr.line_info = line_info_rec_size, _sys._addr(li)
            attr.line_info_cnt = len(line_info) // line_info_rec_size
        t = time.thread_time()
        fd = _sys._syscall(_sys.NR_BPF, ctypes.c_long(int(_sys.Cmd.PROG_LOAD)), ctypes.byref(attr),
                           ctypes.c_long(ctypes.sizeof(attr)))
        cpu = time.thread_time() - t
        text = log.value.decode("utf-8", "replace")
        if fd < 0:
            raise SystemExit(f"{name}: BPF_PROG_LOAD failed (errno {ctypes.get_errno()}): {text[-2000:]}")
        stats, vtime = STATS.search(text), VTIME.search(text)
        self.rows.append({"insns": len(insns) // 8, "processed": int(stats[1]) if stats else 0,
                           "states": int(stats[2]) if stats else 0, "peak": int(stats[3]) if stats else 0,
                           "vtime": int(vtime[1]) / 1e6 if vtime else 0.0, "cpu": cpu})
        return fd


def load_once(path: str) -> dict[str, dict[str, float]]:
    loads = Loads()
    real = _sys.prog_load
    _sys.prog_load = loads.prog_load
    try:
        spec = bpfobj.load_object_spec(path).with_constants(
            trace_all=0, agent_tgid=os.getpid(), max_payload=4096, batching=1, batch_max_age_ns=2000000)
        with bpfobj.Collection(spec) as coll:
            # programs load in the spec's order; the kernel's names are cut to 15 characters
            names = [name for name in spec.programs if name in coll.programs]
    finally:
        _sys.prog_load = real
    return dict(zip(names, loads.rows, strict=True))


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
