"""Helpers for the monitor's kernel tests: a loaded monitor, traced children, polling."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager
from typing import TypeVar

from agent._monitor import Monitor

from ._procs import SLOWDOWN, started

T = TypeVar("T")


@contextmanager
def monitor(*groups: str):
    with Monitor(groups) as mon:
        mon.attach()
        missing = {name: why for name, why in mon.problems.items()}
        assert set(groups) <= mon.running, f"monitor groups not running: {missing}"
        yield mon


def trace(mon: Monitor, *pids: int) -> None:
    """Put ``pids`` in the monitor's `pids` map and make the programs notice."""
    for pid in pids:
        mon.map("pids").update(pid, 1)
    mon.targets_changed()


def python(code: str, *, cpu: int | None = None, **kwargs):
    """A Python child running ``code`` (pinned to ``cpu`` first), pipes on stdin and stdout."""
    prelude = f"import os; os.sched_setaffinity(0, {{{cpu}}})\n" if cpu is not None else ""
    return started([sys.executable, "-c", prelude + code], stdin=subprocess.PIPE,
                   stdout=subprocess.PIPE, text=True, **kwargs)


def wait_for(what: str, check: Callable[[], T | None], timeout: float = 20.0, every: float = 0.05) -> T:
    """Poll ``check`` until it returns something truthy; fail naming ``what``."""
    deadline = time.monotonic() + timeout * SLOWDOWN
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(every)


def proc_stat(pid: int) -> list[str]:
    """/proc/PID/stat fields after the comm (index 0 is the state)."""
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()


def cpu_seconds(pid: int) -> float:
    """utime + stime from /proc/PID/stat, in seconds."""
    fields = proc_stat(pid)
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
