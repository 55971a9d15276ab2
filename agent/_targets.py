"""Which processes to trace: by pid, by process name, or everything but us.

The kernel side follows forks of traced processes by itself; this module
finds the processes that match the user's selection when the agent starts
and, on each ``rescan``, any new process whose name matches (a service
restarted by its supervisor is not a child of a traced process).
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
        for pid in live_pids():
            if read_comm(pid) in selection.comms:
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
