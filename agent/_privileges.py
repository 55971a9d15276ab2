"""May this process run the agent?  Decided by capabilities and by trying, never by uid.

``sidetrace check`` and ``sidetrace run`` both ask ``check_privileges``.
What the agent needs was measured on Linux 6.18 by starting it under
``setpriv`` with each set of capabilities, as root and as nobody with
ambient capabilities:

* BTF and program loads need CAP_BPF; tracepoint programs, their reads of
  kernel memory and the perf rings need CAP_PERFMON.  CAP_SYS_ADMIN stands
  in for either (the kernel's ``bpf_capable()`` and ``perfmon_capable()``).
* Attaching a tracepoint reads its id from tracefs, which is mode 0700 and
  owned by root: root reads it as the owner, anyone else needs
  CAP_DAC_READ_SEARCH (or CAP_DAC_OVERRIDE).  Since that depends on how
  tracefs is mounted, it is found out by opening an id file.
* Mounting tracefs, when nothing has, needs CAP_SYS_ADMIN.
* The perf rings are locked memory.  Without CAP_IPC_LOCK (and with
  kernel.perf_event_paranoid above -1) the kernel lets a user lock
  perf_event_mlock_kb per CPU, shared by all of that user's processes, and
  charges the rest to RLIMIT_MEMLOCK; root's share is usually taken by other
  tracers already.  So the check asks for all the rings to fit in
  RLIMIT_MEMLOCK: the default rings (1024 pages on each of 2 CPUs) are 2
  pages over the 8 MiB default limit, and root with CAP_BPF and CAP_PERFMON
  but not CAP_IPC_LOCK failed exactly there.

Nothing else: BPF memory is charged to the cgroup (no RLIMIT_MEMLOCK for
maps and programs), and the flusher threads only pin themselves.  The socket directory is checked
separately, by binding a socket there (``wire.check_socket_path``).
"""

from __future__ import annotations

import dataclasses
import mmap
import os
import resource

from bpfobj import online_cpus
from bpfobj._fs import TRACEFS, tracefs_path

from ._options import DEFAULT_RING_PAGES

CAP_DAC_OVERRIDE = 1
CAP_DAC_READ_SEARCH = 2
CAP_IPC_LOCK = 14
CAP_SYS_ADMIN = 21
CAP_PERFMON = 38
CAP_BPF = 39
CAPABILITY_NAMES = {
    CAP_DAC_OVERRIDE: "CAP_DAC_OVERRIDE",
    CAP_DAC_READ_SEARCH: "CAP_DAC_READ_SEARCH",
    CAP_IPC_LOCK: "CAP_IPC_LOCK",
    CAP_SYS_ADMIN: "CAP_SYS_ADMIN",
    CAP_PERFMON: "CAP_PERFMON",
    CAP_BPF: "CAP_BPF",
}
# A tracepoint the tracer attaches; if its id is readable, so are the others'.
PROBE_TRACEPOINT = ("syscalls", "sys_exit_read")
_PERF_PARANOID_PATH = "/proc/sys/kernel/perf_event_paranoid"


def effective_capabilities(status_path: str = "/proc/self/status") -> int:
    """This process's effective capability set (``CapEff``), as a bit mask."""
    with open(status_path, encoding="ascii") as f:
        for line in f:
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    return 0


@dataclasses.dataclass(frozen=True)
class Privileges:
    """What this process holds, and what stops it from running the agent."""

    effective: int
    problems: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.problems

    def has(self, cap: int) -> bool:
        return bool(self.effective >> cap & 1)

    @property
    def held(self) -> list[str]:
        """The names of the capabilities the agent cares about that are held."""
        return [name for cap, name in CAPABILITY_NAMES.items() if self.has(cap)]

    def summary(self) -> str:
        return (f"capabilities: {', '.join(self.held) or 'none of the ones the agent uses'} "
                f"(CapEff {self.effective:#x})")


def _tracefs_problem(effective: int) -> str | None:
    root = tracefs_path()
    if root is None:
        if effective >> CAP_SYS_ADMIN & 1:
            return None  # mounted at start
        return (f"tracefs is not mounted, and mounting it needs CAP_SYS_ADMIN "
                f"(or mount it first: mount -t tracefs tracefs {TRACEFS})")
    category, name = PROBE_TRACEPOINT
    id_file = os.path.join(root, "events", category, name, "id")
    try:
        with open(id_file, "rb"):
            return None
    except PermissionError:
        return (f"tracepoint ids in {root} are not readable by this process: "
                "run as root (their owner) or grant CAP_DAC_READ_SEARCH")
    except OSError as exc:
        return f"cannot read tracepoint ids in {root}: {exc.strerror or exc}"


def _perf_paranoid() -> int:
    try:
        with open(_PERF_PARANOID_PATH, encoding="ascii") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 2


def _ring_memory_problem(effective: int, ring_pages: int, cpus: int) -> str | None:
    if effective >> CAP_IPC_LOCK & 1 or _perf_paranoid() < 0:
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    if soft == resource.RLIM_INFINITY:
        return None
    limit = soft // mmap.PAGESIZE
    need = cpus * (ring_pages + 1)  # each ring has one header page
    if need <= limit:
        return None
    fits = 1
    while cpus * (2 * fits + 1) <= limit:
        fits *= 2
    smaller = f" or use --ring-pages {fits} or fewer" if cpus * (fits + 1) <= limit else ""
    return (f"perf rings of {ring_pages} pages on {cpus} CPUs lock {need * mmap.PAGESIZE // 1024} KiB, "
            f"more than RLIMIT_MEMLOCK ({soft // 1024} KiB) allows without CAP_IPC_LOCK: "
            f"grant CAP_IPC_LOCK, raise the limit (ulimit -l){smaller}")


def check_privileges(ring_pages: int = DEFAULT_RING_PAGES) -> Privileges:
    """Everything the agent needs of this process's privileges, checked now,
    for perf rings of ``ring_pages`` pages on every online CPU."""
    caps = effective_capabilities()

    def has(cap: int) -> bool:
        return bool(caps >> cap & 1)

    problems = []
    if not (has(CAP_BPF) or has(CAP_SYS_ADMIN)):
        problems.append("loading BPF programs needs CAP_BPF (or CAP_SYS_ADMIN)")
    if not (has(CAP_PERFMON) or has(CAP_SYS_ADMIN)):
        problems.append("tracepoint programs and perf rings need CAP_PERFMON (or CAP_SYS_ADMIN)")
    for problem in (_tracefs_problem(caps), _ring_memory_problem(caps, ring_pages, len(online_cpus()))):
        if problem is not None:
            problems.append(problem)
    return Privileges(caps, tuple(problems))
