"""TLS libraries of traced processes: found in their memory maps, uprobes placed once per file.

The tracer's TLS programs (bpfobj/bpf/include/sidetrace_tls.bpf.h) carry no
target: this module finds the files that traced processes have mapped
executable (``/proc/PID/maps``), once per file (device and inode: a uprobe
belongs to a file, so one attachment serves every process that maps it,
and the programs filter by the traced set), and places them on the
OpenSSL-compatible functions the file defines: shared libraries such as
``libssl.so.3`` and programs that carry OpenSSL inside (node).  A file that
is a TLS library by name but cannot be probed (stripped of its symbols,
unreadable, or a library whose plaintext is not read: GnuTLS, NSS, ...)
is reported with the reason; every other file is looked at once and
forgotten.

Processes that start later or load a library late (Python imports ``ssl``
long after exec) are found by ``scan`` at each housekeeping tick.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import struct
from collections.abc import Iterable
from typing import Any

import bpfobj

log = logging.getLogger("sidetrace")

# Function -> the tracer program run at its entry; the read/write calls also
# get the return program.
ENTRY_PROGRAMS = {
    "SSL_read": "st_tls_read",
    "SSL_read_ex": "st_tls_read_ex",
    "SSL_write": "st_tls_write",
    "SSL_write_ex": "st_tls_write_ex",
    "SSL_do_handshake": "st_tls_handshake",
    "SSL_free": "st_tls_free",
}
RETURN_PROGRAM = "st_tls_return"
WITH_RETURN = ("SSL_read", "SSL_read_ex", "SSL_write", "SSL_write_ex", "SSL_do_handshake")
REQUIRED = ("SSL_read", "SSL_write")

# File names of TLS libraries.  OpenSSL's are probed by their symbols; the
# others are reported as not supported.
OPENSSL_NAME = re.compile(r"^lib(ssl|boringssl)[.-]")
UNSUPPORTED_NAMES = (
    (re.compile(r"^libgnutls[.-]"), "GnuTLS"),
    (re.compile(r"^libssl3\.so$|^libnss3[.-]"), "NSS"),
    (re.compile(r"^libwolfssl[.-]"), "wolfSSL"),
    (re.compile(r"^libmbedtls[.-]"), "Mbed TLS"),
)

# Slots of the tracer's `tls_counters` map (enum st_tls_counter), as reported in stats.
TLS_COUNTER_NAMES = (
    "calls", "events", "no_connection", "with_record_seq", "without_record_seq", "orphan_returns",
    "deferred_writes", "deferred_lost", "record_resyncs", "starttls",
)

_U64 = struct.Struct("<Q")

ATTACHED = "attached"
FOUND = "found"            # would be attached (``attach=False``: sidetrace check)
FAILED = "failed"
UNSUPPORTED = "unsupported"


@dataclasses.dataclass
class TlsLibrary:
    """One file that is, or is named like, a TLS library."""

    path: str
    status: str                        # ATTACHED, FOUND, FAILED or UNSUPPORTED
    reason: str = ""                   # why not attached
    functions: tuple[str, ...] = ()    # functions probed
    pids: set[int] = dataclasses.field(default_factory=set)
    links: list[Any] = dataclasses.field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"path": self.path, "status": self.status, "processes": len(self.pids)}
        if self.functions:
            out["functions"] = list(self.functions)
        if self.reason:
            out["reason"] = self.reason
        return out


def executable_mappings(maps_text: str) -> dict[tuple[str, int], str]:
    """(device, inode) -> path of every file mapped executable, from /proc/PID/maps text."""
    files: dict[tuple[str, int], str] = {}
    for line in maps_text.splitlines():
        parts = line.split(None, 5)
        if len(parts) < 6 or "x" not in parts[1] or not parts[5].startswith("/"):
            continue
        path = parts[5]
        if path.endswith(" (deleted)"):
            continue
        try:
            inode = int(parts[4])
        except ValueError:
            continue
        if inode:
            files.setdefault((parts[3], inode), path)
    return files


def unsupported_library(path: str) -> str | None:
    """The name of a TLS library whose plaintext sidetrace does not read, or None."""
    name = os.path.basename(path)
    for pattern, library in UNSUPPORTED_NAMES:
        if pattern.search(name):
            return library
    return None


def openssl_named(path: str) -> bool:
    return bool(OPENSSL_NAME.search(os.path.basename(path)))


class TlsLibraries:
    """The TLS libraries of traced processes and the uprobes placed on them.

    ``programs`` maps program names to loaded :class:`bpfobj.Program` objects
    (the tracer collection's); ``counters`` is its ``tls_counters`` map, or
    None.  ``resolve`` is how files are read (tests pass their own).  With
    ``attach=False`` nothing is placed: libraries that would be are FOUND.
    """

    def __init__(self, programs: dict[str, Any], counters: Any = None, *,
                 resolve=bpfobj.read_functions, proc: str = "/proc", attach: bool = True) -> None:
        self.programs = programs
        self.attach = attach
        # The agent warns once per library; a report (check) only lists them.
        self._warn = log.warning if attach else log.debug
        self.counters = counters
        self.resolve = resolve
        self.proc = proc
        self.libraries: dict[tuple[str, int], TlsLibrary] = {}
        self._not_tls: set[tuple[str, int]] = set()
        self.scans = 0
        self.scan_errors = 0

    def scan(self, pids: Iterable[int]) -> list[TlsLibrary]:
        """Look at the executable mappings of ``pids``; place uprobes on new TLS
        libraries.  Returns the libraries seen for the first time."""
        self.scans += 1
        new: list[TlsLibrary] = []
        alive: set[int] = set()
        for pid in pids:
            try:
                with open(f"{self.proc}/{pid}/maps") as f:
                    text = f.read()
            except OSError:
                continue  # gone, or a kernel thread
            alive.add(pid)
            for key, path in executable_mappings(text).items():
                if key in self._not_tls:
                    continue
                library = self.libraries.get(key)
                if library is None:
                    library = self._examine(pid, path)
                    if library is None:
                        self._not_tls.add(key)
                        continue
                    self.libraries[key] = library
                    new.append(library)
                library.pids.add(pid)
        for library in self.libraries.values():
            library.pids &= alive
        return new

    def _examine(self, pid: int, path: str) -> TlsLibrary | None:
        other = unsupported_library(path)
        if other is not None:
            reason = (f"{other} is not supported: only OpenSSL-compatible libraries "
                      "(SSL_read/SSL_write) are read, so its TLS traffic stays opaque")
            self._warn("%s: %s", path, reason)
            return TlsLibrary(path, UNSUPPORTED, reason)
        # The path as this process sees it, valid from the agent's mount namespace too.
        seen_at = f"{self.proc}/{pid}/root{path}"
        try:
            table = self.resolve(seen_at, ENTRY_PROGRAMS)
        except (bpfobj.BpfError, OSError) as exc:
            self.scan_errors += 1
            if openssl_named(path):
                return self._failed(path, f"cannot read its symbols: {exc}")
            return None
        missing = [name for name in REQUIRED if name not in table.functions]
        if missing:
            if not openssl_named(path):
                return None  # an ordinary file: no TLS inside
            try:
                table.offset(missing[0])
            except bpfobj.SymbolNotFoundError as exc:
                return self._failed(path, exc.reason + f" ({', '.join(missing)} not found)")
        if not self.attach:
            return TlsLibrary(path, FOUND, functions=tuple(n for n in ENTRY_PROGRAMS if n in table.functions))
        return self._attach(path, seen_at, table)

    def _failed(self, path: str, reason: str) -> TlsLibrary:
        self._warn("%s: TLS plaintext not readable: %s", path, reason)
        return TlsLibrary(path, FAILED, reason)

    def _attach(self, path: str, seen_at: str, table: Any) -> TlsLibrary:
        links = []
        try:
            for function, program in ENTRY_PROGRAMS.items():
                sym = table.functions.get(function)
                if sym is None:
                    continue
                links.append(self.programs[program].attach_uprobe(seen_at, sym.file_offset))
                if function in WITH_RETURN:
                    links.append(self.programs[RETURN_PROGRAM].attach_uprobe(
                        seen_at, sym.file_offset, retprobe=True))
        except (bpfobj.BpfError, OSError, KeyError) as exc:
            for link in links:
                link.close()
            return self._failed(path, f"uprobe not placed: {exc}")
        functions = tuple(name for name in ENTRY_PROGRAMS if name in table.functions)
        log.info("%s: TLS uprobes on %s", path, ", ".join(functions))
        return TlsLibrary(path, ATTACHED, functions=functions, links=links)

    def kernel_counters(self) -> dict[str, int]:
        out = {}
        if self.counters is None:
            return out
        for slot, name in enumerate(TLS_COUNTER_NAMES):
            per_cpu = self.counters.lookup(slot) or []
            out[name] = sum(_U64.unpack(v)[0] for v in per_cpu)
        return out

    def stats(self) -> dict[str, Any]:
        return {
            "libraries": [library.summary() for library in self.libraries.values()],
            "attached": sum(1 for lib in self.libraries.values() if lib.status == ATTACHED),
            "kernel": self.kernel_counters(),
        }

    def close(self) -> None:
        for library in self.libraries.values():
            for link in library.links:
                link.close()
            library.links = []
