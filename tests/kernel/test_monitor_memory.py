"""Memory: page faults per process against what the process did, OOM kills in a memory cgroup."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from ._monitor_rig import monitor, proc_stat, python, trace, wait_for
from ._procs import started

pytestmark = pytest.mark.kernel

PAGES = 20_000
TOUCH = f"""
import mmap, sys
sys.stdout.write("ready\\n"); sys.stdout.flush()
sys.stdin.readline()
m = mmap.mmap(-1, {PAGES} * mmap.PAGESIZE)
for i in range({PAGES}):
    m[i * mmap.PAGESIZE] = 1
sys.stdout.write("done\\n"); sys.stdout.flush()
sys.stdin.readline()
"""


def faults(mon, pid):
    p = mon.read().procs.get(pid, {})
    return p.get("minor_faults", 0), p.get("major_faults", 0)


def test_a_process_touching_n_pages_shows_about_n_minor_faults():
    with monitor("memory") as mon, python(TOUCH) as child:
        assert child.stdout.readline() == "ready\n"
        trace(mon, child.pid)
        before = faults(mon, child.pid)
        proc_before = int(proc_stat(child.pid)[7])
        child.stdin.write("go\n")
        child.stdin.flush()
        assert child.stdout.readline() == "done\n"
        after = faults(mon, child.pid)
        proc_after = int(proc_stat(child.pid)[7])
    minor = after[0] - before[0]
    assert PAGES <= minor <= PAGES * 1.02 + 64, minor
    assert abs(minor - (proc_after - proc_before)) <= 16  # the kernel's own count, read around it


READ_COLD = """
import mmap, os, sys
path = sys.argv[1]
sys.stdout.write("ready\\n"); sys.stdout.flush()
sys.stdin.readline()
with open(path, "rb") as f:
    m = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
    m.madvise(mmap.MADV_RANDOM)  # no readahead: every page is read from the disk
    total = sum(m[i] for i in range(0, len(m), mmap.PAGESIZE))
sys.stdout.write(f"done {total}\\n"); sys.stdout.flush()
sys.stdin.readline()
"""


def test_pages_read_from_disk_are_major_faults(tmp_path: Path):
    path = tmp_path / "cold"
    with open(path, "wb") as f:
        f.write(os.urandom(4 << 20))
        f.flush()
        os.fsync(f.fileno())
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
    with monitor("memory") as mon, started([sys.executable, "-c", READ_COLD, str(path)], stdin=subprocess.PIPE,
                                           stdout=subprocess.PIPE, text=True) as child:
        assert child.stdout.readline() == "ready\n"
        trace(mon, child.pid)
        before = faults(mon, child.pid)
        proc_before = int(proc_stat(child.pid)[9])
        child.stdin.write("go\n")
        child.stdin.flush()
        assert child.stdout.readline().startswith("done")
        after = faults(mon, child.pid)
        proc_after = int(proc_stat(child.pid)[9])
    major = after[1] - before[1]
    assert major > 0
    assert major == proc_after - proc_before


MEMORY_CGROUP = Path("/sys/fs/cgroup/memory")
ALLOCATE = """
import sys
sys.stdout.write("ready\\n"); sys.stdout.flush()
sys.stdin.readline()
hog = bytearray(512 << 20)
for i in range(0, len(hog), 4096):
    hog[i] = 1
"""


def _join(procs_file: Path):
    def move_self() -> None:
        procs_file.write_text(str(os.getpid()))
    return move_self


@pytest.mark.skipif(not MEMORY_CGROUP.is_dir() and not Path("/sys/fs/cgroup/cgroup.controllers").exists(),
                    reason="no memory cgroup controller")
def test_an_oom_kill_in_a_memory_cgroup_is_counted_for_its_process():
    v1 = MEMORY_CGROUP.is_dir()
    group = (MEMORY_CGROUP if v1 else Path("/sys/fs/cgroup")) / f"sidetrace-oom-{os.getpid()}"
    group.mkdir()
    try:
        (group / ("memory.limit_in_bytes" if v1 else "memory.max")).write_text(str(64 << 20))
        if not v1 and (group / "memory.swap.max").exists():
            (group / "memory.swap.max").write_text("0")
        with monitor("memory") as mon:
            host_before = mon.read().host["oom_kills"]
            with started([sys.executable, "-c", ALLOCATE], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         text=True, preexec_fn=_join(group / "cgroup.procs")) as child:
                assert child.stdout.readline() == "ready\n"
                trace(mon, child.pid)
                child.stdin.write("go\n")
                child.stdin.flush()
                assert child.wait(60) == -signal.SIGKILL
            snap = wait_for("the OOM kill counted", lambda: (s := mon.read()).host["oom_kills"] > host_before and s)
        assert snap.procs[child.pid]["oom_kills"] == 1
    finally:
        group.rmdir()
