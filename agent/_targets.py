"""Which processes to trace: by pid, by process name, or everything but us.

The kernel side follows forks of traced processes by itself, and adds a
process whose name is in its ``comms`` map at exec (``comm_key`` builds those
keys), so a program that starts and exits within milliseconds is traced from
its first syscall.  This module finds the processes that already match when
the agent starts and, on each ``rescan``, any process whose name changed to a
match without an exec (``prctl(PR_SET_NAME)``, a thread renaming its process).
"""

from __future__ import annotations

import dataclasses
import os


@dataclasses.dataclass(frozen=True)
class TargetSelection:
    pids: frozenset[int] = frozenset()
    comms: frozenset[str] = frozenset()

    @property
    def everything(self) -> bool:
        """No --pid and no --comm: trace every process except the agent."""
        return not self.pids and not self.comms


# task->comm: TASK_COMM_LEN (16) bytes, at most 15 of them the name.
COMM_LEN = 16


def comm_key(name: str) -> bytes:
    """The kernel's task->comm for a process named ``name``: cut to 15 bytes, NUL padded.

    The kernel cuts names at exec the same way, so a longer --comm still
    matches the processes whose name it starts with up to the 15th byte.
    """
    raw = name.encode("utf-8", "surrogateescape")[:COMM_LEN - 1]
    return raw.ljust(COMM_LEN, b"\0")


def kernel_comm(name: str) -> str:
    """``name`` as /proc/<pid>/comm shows it (see ``comm_key``)."""
    return comm_key(name).rstrip(b"\0").decode("utf-8", "replace")


def read_comm(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/comm", "rb") as f:
            return f.read().rstrip(b"\n").decode("utf-8", "replace")
    except OSError:
        return None


def live_pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def matching_tgids(selection: TargetSelection, exclude: int | None = None) -> set[int]:
    """Thread-group ids selected now: listed pids that exist, plus name matches.

    /proc lists thread-group leaders only, so every match is a tgid.
    """
    found = {pid for pid in selection.pids if os.path.exists(f"/proc/{pid}")}
    if selection.comms:
        names = {kernel_comm(name) for name in selection.comms}
        for pid in live_pids():
            if read_comm(pid) in names:
                found.add(pid)
    found.discard(exclude if exclude is not None else -1)
    return found


class TargetTracker:
    """Keeps the kernel's pid set in step with the selection.

    ``add`` and ``remove`` are callables writing the kernel map, so this logic
    is testable without BPF.
    """

    def __init__(self, selection: TargetSelection, add, remove, agent_pid: int | None = None) -> None:
        self.selection = selection
        self._add = add
        self._remove = remove
        self._agent_pid = os.getpid() if agent_pid is None else agent_pid
        self.tracked: set[int] = set()

    def rescan(self) -> tuple[set[int], set[int]]:
        """Add newly matching processes, drop ones that exited. Returns (added, removed)."""
        if self.selection.everything:
            return set(), set()
        now = matching_tgids(self.selection, exclude=self._agent_pid)
        added = now - self.tracked
        gone = {pid for pid in self.tracked - now if not os.path.exists(f"/proc/{pid}")}
        for pid in added:
            self._add(pid)
        for pid in gone:
            self._remove(pid)
        self.tracked = (self.tracked | added) - gone
        return added, gone
