"""Resource attributes of traced processes: who a span belongs to.

Every span carries a ``resource`` map (OpenTelemetry resource semantic
conventions): ``service.name``, ``process.pid``, ``process.executable.name``,
``process.executable.path``, ``host.name``, ``container.id`` when the
process's cgroup names a container, and ``process.command_args`` only when
asked for (command lines often carry credentials).

``service.name`` comes from the first ``--service NAME=MATCH`` rule that
matches the process, else its executable's name.  MATCH is ``comm:GLOB``,
``exe:GLOB`` (the full path when GLOB holds a ``/``, else the file name) or
``cgroup:GLOB``; a bare GLOB means ``comm:GLOB``.

The cache is filled once per process from /proc and shared by all of that
process's spans (one dict, never modified after it is built).  An entry is
rebuilt when a span shows another ``comm`` for the pid (an exec), after
``MAX_AGE_NS`` (a reused pid), and after ``PARTIAL_AGE_NS`` when the
executable could not be read; the table is bounded.
"""

from __future__ import annotations

import fnmatch
import os
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from wire import local_host_name

__all__ = ["ProcessResources", "ServiceRule", "container_id", "parse_service_rule"]

# A rebuilt entry costs a handful of /proc reads; once a minute per process is noise.
MAX_AGE_NS = 60 * 1_000_000_000
# An entry built without the executable (gone, or not readable then) is tried again sooner.
PARTIAL_AGE_NS = 1_000_000_000
MAX_ENTRIES = 8192
# process.command_args is cut to this many arguments and bytes in all.
MAX_ARGS = 64
MAX_ARGS_BYTES = 4096
MATCH_FIELDS = ("comm", "exe", "cgroup")
_CONTAINER_ID = re.compile(r"[0-9a-f]{64}")


class ServiceRuleError(ValueError):
    """A --service option that cannot be understood."""


@dataclass(frozen=True)
class ServiceRule:
    """``service.name`` = ``name`` for processes whose ``field`` matches ``pattern``."""

    name: str
    field: str
    pattern: str

    def matches(self, comm: str, exe: str | None, cgroup: str | None) -> bool:
        if self.field == "comm":
            return fnmatch.fnmatchcase(comm, self.pattern)
        if self.field == "exe":
            if exe is None:
                return False
            target = exe if "/" in self.pattern else os.path.basename(exe)
            return fnmatch.fnmatchcase(target, self.pattern)
        return cgroup is not None and fnmatch.fnmatchcase(cgroup, self.pattern)


def parse_service_rule(text: str) -> ServiceRule:
    """``NAME=MATCH`` (see the module doc) -> a rule; ServiceRuleError says what is wrong."""
    name, sep, match = text.partition("=")
    name = name.strip()
    if not sep or not name or not match:
        raise ServiceRuleError(f"--service wants NAME=MATCH, got {text!r}")
    field, colon, pattern = match.partition(":")
    if colon and field in MATCH_FIELDS:
        if not pattern:
            raise ServiceRuleError(f"--service {text!r}: empty {field} pattern")
        return ServiceRule(name, field, pattern)
    return ServiceRule(name, "comm", match)


def container_id(cgroup_text: str) -> str | None:
    """The container id in a /proc/<pid>/cgroup text, if any.

    Container runtimes name a container's cgroup after its 64-hex-digit id
    (``docker-<id>.scope``, ``/docker/<id>``, ``cri-containerd-<id>.scope``,
    ``crio-<id>``, ``libpod-<id>``); the innermost such id is the container's.
    """
    found = None
    for line in cgroup_text.splitlines():
        path = line.split(":", 2)[-1]
        ids = _CONTAINER_ID.findall(path)
        if ids:
            found = ids[-1]
    return found


def _cgroup_path(cgroup_text: str) -> str | None:
    """The unified (v2) hierarchy's path, else the first controller's."""
    first = None
    for line in cgroup_text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        if parts[0] == "0" and parts[1] == "":
            return parts[2]
        first = first or parts[2]
    return first


def _read_text(path: str, limit: int = 65536) -> str | None:
    try:
        with open(path, "rb") as f:
            return f.read(limit).decode("utf-8", "replace")
    except OSError:
        return None


def _command_args(raw: str | None) -> list[str] | None:
    if not raw:
        return None
    args = raw.rstrip("\0").split("\0")[:MAX_ARGS]
    out, size = [], 0
    for arg in args:
        size += len(arg)
        if size > MAX_ARGS_BYTES:
            break
        out.append(arg)
    return out


@dataclass
class _Entry:
    comm: str
    expires_ns: int
    resource: dict[str, Any]


class ProcessResources:
    """pid -> resource attributes, read from ``proc`` once per process."""

    def __init__(self, rules: Iterable[ServiceRule] = (), *, command_args: bool = False,
                 host_name: str | None = None, proc: str = "/proc",
                 clock: Callable[[], int] = time.monotonic_ns, max_entries: int = MAX_ENTRIES) -> None:
        self.rules = tuple(rules)
        self.command_args = command_args
        self.host_name = local_host_name() if host_name is None else host_name
        self.proc = proc
        self.clock = clock
        self.max_entries = max_entries
        self._entries: dict[int, _Entry] = {}
        self.builds = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, pid: int, comm: str) -> dict[str, Any]:
        """The resource of process ``pid``, seen now with name ``comm``."""
        entry = self._entries.get(pid)
        if entry is not None and entry.comm == comm and self.clock() < entry.expires_ns:
            return entry.resource
        return self._build(pid, comm)

    def attach(self, span: dict[str, Any]) -> dict[str, Any]:
        span["resource"] = self.get(span["pid"], span["comm"])
        return span

    def attaching(self, publish: Callable[[dict[str, Any]], None]) -> Callable[[dict[str, Any]], None]:
        """``publish`` that first gives each span its resource."""
        get = self.get

        def publish_with_resource(span: dict[str, Any]) -> None:
            span["resource"] = get(span["pid"], span["comm"])
            publish(span)

        return publish_with_resource

    def _build(self, pid: int, comm: str) -> dict[str, Any]:
        base = f"{self.proc}/{pid}"
        try:
            exe: str | None = os.readlink(f"{base}/exe")
        except OSError:
            exe = None  # exited already, a kernel thread, or not ours to read
        if exe is not None and exe.endswith(" (deleted)"):
            exe = exe[:-len(" (deleted)")]
        cgroup_text = _read_text(f"{base}/cgroup") or ""
        cgroup = _cgroup_path(cgroup_text)
        exe_name = os.path.basename(exe) if exe else comm
        service = next((rule.name for rule in self.rules if rule.matches(comm, exe, cgroup)), exe_name)
        resource: dict[str, Any] = {
            "service.name": service,
            "host.name": self.host_name,
            "process.pid": pid,
            "process.executable.name": exe_name,
        }
        if exe:
            resource["process.executable.path"] = exe
        cid = container_id(cgroup_text)
        if cid is not None:
            resource["container.id"] = cid
        if self.command_args:
            args = _command_args(_read_text(f"{base}/cmdline", MAX_ARGS_BYTES + MAX_ARGS))
            if args:
                resource["process.command_args"] = args
        if pid not in self._entries and len(self._entries) >= self.max_entries:
            del self._entries[next(iter(self._entries))]  # the oldest built
        self._entries.pop(pid, None)
        self._entries[pid] = _Entry(comm, self.clock() + (MAX_AGE_NS if exe else PARTIAL_AGE_NS), resource)
        self.builds += 1
        return resource
