"""The two pseudo file systems bpfobj needs: tracefs and bpffs.

tracefs (``/sys/kernel/tracing``) gives tracepoint ids; bpffs (``/sys/fs/bpf``)
holds pinned maps.  Neither is always mounted.  ``ensure_*`` mounts what is
missing and says whether it did, so callers can report it.
"""

from __future__ import annotations

import ctypes
import dataclasses
import os

from ._errors import BpfError, PermissionDeniedError, SyscallError

__all__ = ["MountStatus", "ensure_tracefs", "ensure_bpffs", "tracefs_path", "is_mounted",
           "TRACEFS", "BPFFS"]

TRACEFS = "/sys/kernel/tracing"
TRACEFS_LEGACY = "/sys/kernel/debug/tracing"
BPFFS = "/sys/fs/bpf"

_libc = ctypes.CDLL(None, use_errno=True)


@dataclasses.dataclass(frozen=True)
class MountStatus:
    """Where a file system is, and whether this call mounted it."""

    fstype: str
    path: str
    mounted_now: bool

    def describe(self) -> str:
        return f"{self.fstype} at {self.path}" + (" (mounted now)" if self.mounted_now else "")


def _mounts() -> list[tuple[str, str]]:
    """(mount point, fs type) pairs from /proc/self/mounts."""
    out = []
    with open("/proc/self/mounts") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 3:
                out.append((parts[1].replace("\\040", " "), parts[2]))
    return out


def is_mounted(path: str, fstype: str) -> bool:
    return any(mp == path and t == fstype for mp, t in _mounts())


def _mount(fstype: str, path: str) -> None:
    os.makedirs(path, exist_ok=True)
    ret = _libc.mount(fstype.encode(), path.encode(), fstype.encode(), ctypes.c_ulong(0), None)
    if ret != 0:
        err = ctypes.get_errno()
        if err in (1, 13):
            raise PermissionDeniedError("mount", err, f"mounting {fstype} at {path} needs CAP_SYS_ADMIN")
        raise SyscallError("mount", err, f"{fstype} at {path}")


def tracefs_path() -> str | None:
    """The mounted tracefs directory holding ``events/``, or None."""
    for mp, t in _mounts():
        if t == "tracefs" and mp in (TRACEFS, TRACEFS_LEGACY):
            return mp
    for candidate in (TRACEFS, TRACEFS_LEGACY):
        if os.path.isdir(os.path.join(candidate, "events")):
            return candidate
    return None


def ensure_tracefs() -> MountStatus:
    """tracefs is mounted (mounting it at /sys/kernel/tracing if needed)."""
    path = tracefs_path()
    if path is not None:
        return MountStatus("tracefs", path, False)
    _mount("tracefs", TRACEFS)
    return MountStatus("tracefs", TRACEFS, True)


def ensure_bpffs(path: str = BPFFS) -> MountStatus:
    """A bpffs is mounted at ``path`` (mounting it if needed)."""
    if is_mounted(path, "bpf"):
        return MountStatus("bpf", path, False)
    _mount("bpf", path)
    if not is_mounted(path, "bpf"):
        raise BpfError(f"mounted bpf at {path} but it does not show in /proc/self/mounts")
    return MountStatus("bpf", path, True)
