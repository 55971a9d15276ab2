"""Command-line options: each value checked once, with an error naming its option.

Every option of every subcommand takes its ``type`` from here.  A type is an
``OptionType``: it parses the text and checks the value, and argparse turns
its ``ArgumentTypeError`` into the usual two lines (usage, then
``sidetrace run: error: argument --pid: ...``) and exit status 2.  The same
checks run on values that did not come from argparse (``check_run_options``),
so ``sidetrace run`` refuses a bad value before loading anything whichever
way it got it.  ``OptionParser`` escapes every error it prints: the text
echoed back is the user's, and may hold terminal controls.

Choices made here:
  --pid        1 .. the kernel's pid_max.  ``run`` also wants the process to
               exist at start: a pid nobody has is a typo, and tracing it
               anyway would trace whichever process is given that pid later.
               ``tail --pid`` filters, so a future pid is fine there.
  --comm       1 .. 15 bytes: the kernel keeps 15 bytes of a process name.
  --socket-group  a group this system knows (name or gid), kept as its gid.
  --socket     at most 107 bytes (a Unix socket address), not an existing
               file other than a socket, inside a directory (or one that can
               be created under an existing directory), not on a pseudo
               file system such as /proc or /sys.
"""

from __future__ import annotations

import argparse
import dataclasses
import grp
import math
import os
import stat
import sys
from collections.abc import Callable
from typing import Any, NoReturn

from wire import terminal_text

from ._metric_groups import MetricsOptionError, parse_groups
from ._targets import COMM_LEN

# sun_path is 108 bytes, the last one the terminating NUL.
SOCKET_PATH_MAX_BYTES = 107
COMM_MAX_BYTES = COMM_LEN - 1
PAYLOAD_MAX_BYTES = 4096          # ST_MAX_PAYLOAD in sidetrace_events.h
DEFAULT_RING_PAGES = 1024         # 4 MiB per CPU
RING_PAGES_MAX = 16384            # 64 MiB per CPU
MAX_CONNECTIONS_LIMIT = 1 << 20
MAX_CPU_DEFAULT = 0.5             # of one core
MAX_CPU_MIN = 0.01
MAX_CPU_MAX = 64.0
MAX_MEMORY_DEFAULT = 128          # MiB
MAX_MEMORY_MIN = 48               # the agent's start-up peak is about this
MAX_MEMORY_MAX = 1 << 20
STATS_INTERVAL_MIN = 0.1
STATS_INTERVAL_MAX = 86400.0
HOLD_MIN = 0.01
HOLD_MAX = 3600.0
SCREEN_MIN = 0.1                  # top --refresh and --window
SCREEN_MAX = 86400.0
PID_MAX_DEFAULT = 1 << 22         # PID_MAX_LIMIT on 64-bit kernels
_PID_MAX_PATH = "/proc/sys/kernel/pid_max"
# File systems where a socket cannot (or must not) live.
_PSEUDO_FILESYSTEMS = frozenset({
    "proc", "sysfs", "tracefs", "debugfs", "securityfs", "cgroup", "cgroup2", "bpf", "configfs",
    "pstore", "efivarfs", "devpts", "mqueue", "fusectl", "binfmt_misc", "hugetlbfs", "autofs",
})


class OptionParser(argparse.ArgumentParser):
    """argparse with terminal-safe errors: the message may echo what the user typed."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {terminal_text(message)}\n")


@dataclasses.dataclass(frozen=True)
class OptionType:
    """An argparse ``type``: ``parse`` text into a value, then ``check`` it.

    Both raise ``ValueError`` with a message that makes sense after
    ``argument --name:``.  ``kind`` is the type(s) of a parsed value.
    """

    name: str
    parse: Callable[[str], Any]
    check: Callable[[Any], Any]
    kind: type | tuple[type, ...]

    @property
    def __name__(self) -> str:  # argparse names the type in some messages
        return self.name

    def __call__(self, text: str) -> Any:
        try:
            return self.check(self.parse(text))
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None


# -- parsing -------------------------------------------------------------------------------


def _integer(text: str) -> int:
    try:
        return int(text, 10)
    except ValueError:
        raise ValueError(f"'{text}' is not a whole number") from None


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"'{text}' is not a number of seconds") from None
    if not math.isfinite(value):
        raise ValueError(f"'{text}' is not a finite number of seconds")
    return value


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"'{text}' is not a number") from None
    if not math.isfinite(value):
        raise ValueError(f"'{text}' is not a finite number")
    return value


def _text(text: str) -> str:
    return text


# -- checks --------------------------------------------------------------------------------


def pid_max() -> int:
    """The largest pid this kernel hands out."""
    try:
        with open(_PID_MAX_PATH, encoding="ascii") as f:
            return int(f.read())
    except (OSError, ValueError):
        return PID_MAX_DEFAULT


def check_pid(value: int) -> int:
    limit = pid_max()
    if not 1 <= value <= limit:
        raise ValueError(f"{value} is not a pid (pids run from 1 to {limit} here)")
    return value


def check_running_pid(value: int) -> int:
    check_pid(value)
    if not os.path.exists(f"/proc/{value}"):
        raise ValueError(f"no process has pid {value}")
    return value


def _nonempty_bytes(value: str, what: str) -> bytes:
    """``value`` as the bytes the kernel will see (argv may hold bytes that are not UTF-8)."""
    raw = os.fsencode(value)
    if not raw:
        raise ValueError(f"{what} cannot be empty")
    return raw


def check_comm(value: str) -> str:
    raw = _nonempty_bytes(value, "a process name")
    size = len(raw)
    if size > COMM_MAX_BYTES:
        cut = raw[:COMM_MAX_BYTES].decode("utf-8", "replace")
        raise ValueError(f"'{value}' is {size} bytes; the kernel keeps {COMM_MAX_BYTES} bytes of a "
                         f"process name, so give the name as the kernel shows it ('{cut}')")
    return value


def check_protocol(value: str) -> str:
    if not value or len(value) > 64:
        raise ValueError("a protocol name is 1 to 64 characters (e.g. http, redis)")
    return value


def int_range(low: int, high: int, unit: str = "") -> Callable[[int], int]:
    def check(value: int) -> int:
        if not low <= value <= high:
            raise ValueError(f"{value} is out of range: {low} to {high}{unit}")
        return value
    return check


def power_of_two(low: int, high: int) -> Callable[[int], int]:
    in_range = int_range(low, high)

    def check(value: int) -> int:
        in_range(value)
        if value & (value - 1):
            raise ValueError(f"{value} is not a power of two")
        return value
    return check


def seconds_range(low: float, high: float) -> Callable[[float], float]:
    def check(value: float) -> float:
        if not (math.isfinite(value) and low <= value <= high):
            raise ValueError(f"{value:g} s is out of range: {low:g} s to {high:g} s")
        return value
    return check


def fraction_range(low: float, high: float, unit: str) -> Callable[[float], float]:
    def check(value: float) -> float:
        if not (math.isfinite(value) and low <= value <= high):
            raise ValueError(f"{value:g} is out of range: {low:g} to {high:g} {unit}")
        return value
    return check


def _fs_type(path: str) -> str | None:
    """The type of the file system holding ``path`` (which exists)."""
    real = os.path.realpath(path)
    best, kind = "", None
    try:
        with open("/proc/self/mounts", encoding="utf-8", errors="surrogateescape") as f:
            for line in f:
                parts = line.split()
                if len(parts) < 3:
                    continue
                point = parts[1].replace("\\040", " ")
                inside = real == point or real.startswith(point.rstrip("/") + "/")
                if inside and len(point) >= len(best):
                    best, kind = point, parts[2]
    except OSError:
        return None
    return kind


def _check_socket_text(value: str) -> str:
    size = len(_nonempty_bytes(value, "a socket path"))
    if size > SOCKET_PATH_MAX_BYTES:
        raise ValueError(f"'{value}' is {size} bytes; a Unix socket path holds at most "
                         f"{SOCKET_PATH_MAX_BYTES}")
    return value


def check_serve_socket(value: str) -> str:
    """A path ``sidetrace run`` (or ``assemble``) can create its socket at."""
    _check_socket_text(value)
    path = os.path.abspath(value)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise ValueError(f"'{value}': {exc.strerror}") from None
    else:
        if not stat.S_ISSOCK(st.st_mode):
            raise ValueError(f"'{value}' exists and is not a socket")
    parent = os.path.dirname(path)
    ancestor = parent
    while not os.path.lexists(ancestor):
        ancestor = os.path.dirname(ancestor)
    if not os.path.isdir(ancestor):
        what = "its directory" if ancestor == parent else f"'{ancestor}'"
        raise ValueError(f"'{value}': {what} is not a directory")
    kind = _fs_type(ancestor)
    if kind in _PSEUDO_FILESYSTEMS:
        raise ValueError(f"'{value}' is on a {kind} file system, which cannot hold a socket")
    return value


def check_connect_socket(value: str) -> str:
    """A path a subscriber can connect to (whether an agent is there is found out by trying)."""
    return _check_socket_text(value)


def check_metric_groups(value: str) -> str:
    try:
        parse_groups(value)
    except MetricsOptionError as exc:
        raise ValueError(str(exc)) from None
    return value


def check_group(value: str) -> int:
    """A group name (or number) known to this system, as its gid."""
    try:
        return grp.getgrnam(value).gr_gid
    except KeyError:
        pass
    if value.isdigit():
        gid = int(value)
        try:
            grp.getgrgid(gid)
        except KeyError:
            raise ValueError(f"no group has gid {gid}") from None
        return gid
    raise ValueError(f"no group named '{value}'")


# -- the types argparse uses ------------------------------------------------------------------

PID = OptionType("pid", _integer, check_pid, int)
RUNNING_PID = OptionType("pid", _integer, check_running_pid, int)
COMM = OptionType("process name", _text, check_comm, str)
PROTOCOL = OptionType("protocol", _text, check_protocol, str)
PAYLOAD_BYTES = OptionType("byte count", _integer, int_range(1, PAYLOAD_MAX_BYTES, " bytes"), int)
RING_PAGES = OptionType("page count", _integer, power_of_two(1, RING_PAGES_MAX), int)
MAX_CONNECTIONS = OptionType("count", _integer, int_range(1, MAX_CONNECTIONS_LIMIT), int)
MAX_CPU = OptionType("fraction of a core", _fraction, fraction_range(MAX_CPU_MIN, MAX_CPU_MAX, "cores"),
                     (int, float))
MAX_MEMORY = OptionType("MiB", _integer, int_range(MAX_MEMORY_MIN, MAX_MEMORY_MAX, " MiB"), int)
STATS_INTERVAL = OptionType("seconds", _seconds, seconds_range(STATS_INTERVAL_MIN, STATS_INTERVAL_MAX),
                            (int, float))
HOLD = OptionType("seconds", _seconds, seconds_range(HOLD_MIN, HOLD_MAX), (int, float))
METRIC_GROUPS = OptionType("metrics groups", _text, check_metric_groups, str)
METRICS_INTERVAL = OptionType("seconds", _seconds, seconds_range(STATS_INTERVAL_MIN, STATS_INTERVAL_MAX),
                              (int, float))
REFRESH = OptionType("seconds", _seconds, seconds_range(SCREEN_MIN, SCREEN_MAX), (int, float))
WINDOW = OptionType("seconds", _seconds, seconds_range(SCREEN_MIN, SCREEN_MAX), (int, float))
COUNT = OptionType("count", _integer, int_range(0, 1 << 31), int)
SERVE_SOCKET = OptionType("socket path", _text, check_serve_socket, str)
CONNECT_SOCKET = OptionType("socket path", _text, check_connect_socket, str)
GROUP = OptionType("group", _text, check_group, str)

# `sidetrace run`'s options and their checks, for values that did not come through argparse.
_RUN_CHECKS: dict[str, OptionType] = {
    "socket": SERVE_SOCKET,
    "payload_bytes": PAYLOAD_BYTES,
    "ring_pages": RING_PAGES,
    "stats_interval": STATS_INTERVAL,
    "max_connections": MAX_CONNECTIONS,
    "max_cpu": MAX_CPU,
    "max_memory": MAX_MEMORY,
    "metrics": METRIC_GROUPS,
    "metrics_interval": METRICS_INTERVAL,
}
# Options whose value may also be None (not given).
_RUN_OPTIONAL: dict[str, OptionType] = {
    "socket_group": OptionType("group id", _integer, int_range(0, 2**32 - 2), int),
}


class OptionError(ValueError):
    """An option value is not acceptable; the message names the option."""


def check_run_options(args: argparse.Namespace) -> None:
    """Check every ``sidetrace run`` option value again; ``OptionError`` names the first bad one."""
    values = [(dest, option, getattr(args, dest)) for dest, option in _RUN_CHECKS.items()]
    values += [(dest, option, getattr(args, dest)) for dest, option in _RUN_OPTIONAL.items()
               if getattr(args, dest, None) is not None]
    values += [("pid", RUNNING_PID, pid) for pid in args.pid]
    values += [("comm", COMM, name) for name in args.comm]
    for dest, option, value in values:
        try:
            # bool is an int to Python but no option's value.
            if isinstance(value, bool) or not isinstance(value, option.kind):
                raise ValueError(f"{value!r} is not a {option.name}")
            option.check(value)
        except ValueError as exc:
            raise OptionError(f"--{dest.replace('_', '-')}: {exc}") from None
