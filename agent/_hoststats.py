"""Host and process figures that need no BPF: /proc, /sys and netlink.

Host CPU time per mode (/proc/stat), memory (/proc/meminfo), a process's
resident and virtual memory (/proc/PID/statm), block device names
(/sys/dev/block), and per-interface counters read over netlink with pyroute2
(RTM_GETLINK, IFLA_STATS64).  Every reader returns None or an empty result
when the file is gone (processes exit between listing and reading).
"""

from __future__ import annotations

import os
from typing import Any

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
CPU_MODES = ("user", "nice", "system", "idle", "iowait", "interrupt", "softirq", "steal")


def cpu_times(path: str = "/proc/stat") -> dict[str, float]:
    """Seconds spent in each mode by all CPUs together since boot."""
    try:
        with open(path, "rb") as f:
            fields = f.readline().split()
    except OSError:
        return {}
    if not fields or fields[0] != b"cpu":
        return {}
    return {mode: int(value) / CLOCK_TICKS for mode, value in zip(CPU_MODES, fields[1:])}


def memory(path: str = "/proc/meminfo") -> dict[str, int]:
    """Host memory in bytes by state: used, free, buffers, cached (they sum to the total)."""
    values: dict[str, int] = {}
    try:
        with open(path, "rb") as f:
            for line in f:
                name, _, rest = line.partition(b":")
                parts = rest.split()
                if parts:
                    values[name.decode("ascii", "replace")] = int(parts[0]) * 1024
    except (OSError, ValueError):
        return {}
    total = values.get("MemTotal")
    if total is None:
        return {}
    free, buffers = values.get("MemFree", 0), values.get("Buffers", 0)
    cached = values.get("Cached", 0) + values.get("SReclaimable", 0)
    return {"used": max(0, total - free - buffers - cached), "free": free,
            "buffers": buffers, "cached": cached}


def process_memory(pid: int) -> tuple[int, int] | None:
    """(resident, virtual) bytes of process ``pid``, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            fields = f.read().split()
        return int(fields[1]) * PAGE_SIZE, int(fields[0]) * PAGE_SIZE
    except (OSError, ValueError, IndexError):
        return None


def process_alive(pid: int) -> bool:
    return os.path.exists(f"/proc/{pid}")


class DeviceNames:
    """dev_t (major << 20 | minor, as the kernel packs it) -> block device name."""

    def __init__(self, root: str = "/sys/dev/block") -> None:
        self.root = root
        self._names: dict[int, str] = {}

    def __call__(self, dev: int) -> str:
        name = self._names.get(dev)
        if name is None:
            major, minor = dev >> 20, dev & 0xFFFFF
            name = f"{major}:{minor}"
            try:
                with open(os.path.join(self.root, name, "uevent"), "rb") as f:
                    for line in f:
                        if line.startswith(b"DEVNAME="):
                            name = line[8:].strip().decode("utf-8", "replace")
                            break
            except OSError:
                return name  # not cached: the device may appear later
            self._names[dev] = name
        return name


# IFLA_STATS64 members reported, and the metric each feeds (direction, name).
INTERFACE_COUNTERS = {
    "rx_bytes": ("receive", "system.network.io"),
    "tx_bytes": ("transmit", "system.network.io"),
    "rx_packets": ("receive", "system.network.packets"),
    "tx_packets": ("transmit", "system.network.packets"),
    "rx_errors": ("receive", "system.network.errors"),
    "tx_errors": ("transmit", "system.network.errors"),
    "rx_dropped": ("receive", "system.network.dropped"),
    "tx_dropped": ("transmit", "system.network.dropped"),
}


class Interfaces:
    """Per-interface counters of this network namespace, over netlink.

    pyroute2 is imported on first use: it is large, and agents running
    without network metrics never need it.
    """

    def __init__(self) -> None:
        self._ipr: Any = None
        self.failures = 0

    def counters(self) -> dict[str, dict[str, int]]:
        """Interface name -> {IFLA_STATS64 member: value}; empty if netlink fails."""
        try:
            if self._ipr is None:
                from pyroute2 import IPRoute

                self._ipr = IPRoute()
            links = self._ipr.get_links()
        except Exception:  # noqa: BLE001 - netlink trouble costs the interface lines only
            self.failures += 1
            self.close()
            return {}
        out = {}
        for link in links:
            name = link.get_attr("IFLA_IFNAME")
            stats = link.get_attr("IFLA_STATS64") or link.get_attr("IFLA_STATS")
            if isinstance(name, str) and isinstance(stats, dict):
                out[name] = {k: int(stats[k]) for k in INTERFACE_COUNTERS if isinstance(stats.get(k), int)}
        return out

    def close(self) -> None:
        if self._ipr is not None:
            try:
                self._ipr.close()
            except Exception:  # noqa: BLE001
                pass
            self._ipr = None
