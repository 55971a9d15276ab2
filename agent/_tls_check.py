"""The TLS part of ``sidetrace check``: do uprobes work, and which TLS libraries would be read.

Uprobes are tried for real: a program that does nothing is placed on a libc
function and removed.  Libraries are looked for in every process's memory
maps, as the agent does for the processes it traces (here nothing is
attached): each OpenSSL-compatible file is listed as found, each TLS library
that cannot be read with the reason.
"""

from __future__ import annotations

from collections.abc import Callable

import bpfobj
from bpfobj._consts import ProgType
from bpfobj._insn import exit_insn, mov64_imm

from ._targets import live_pids
from ._tls import FOUND, TlsLibraries, executable_mappings


def _libc_path() -> str | None:
    with open("/proc/self/maps") as f:
        mapped = executable_mappings(f.read())
    return next((path for path in mapped.values() if "/libc.so" in path), None)


def uprobes_work() -> tuple[bool, str]:
    """(works, what was tried or why it failed)."""
    if not bpfobj.features.uprobe_pmu():
        return False, "the kernel has no uprobe PMU (CONFIG_UPROBE_EVENTS)"
    libc = _libc_path()
    if libc is None:
        return False, "no libc mapped in this process to try one on"
    try:
        with bpfobj.Program.load(ProgType.KPROBE, mov64_imm(0, 0) + exit_insn(), name="st_uprobe_try") as prog:
            prog.attach_uprobe_symbol(libc, "getpid").close()
    except bpfobj.BpfError as exc:
        return False, str(exc)
    return True, f"placed and removed on {libc}:getpid"


def tls_report(say: Callable[[str], None]) -> list[str]:
    """Print the TLS section; returns problems that only limit TLS (never fatal)."""
    notes: list[str] = []
    ok, detail = uprobes_work()
    say("")
    say("TLS plaintext (uprobes on OpenSSL):")
    say(f"  uprobes: {'yes' if ok else 'no'} ({detail})")
    if not ok:
        notes.append(f"uprobes do not work ({detail}): TLS traffic stays opaque")
    libraries = TlsLibraries({}, attach=False)
    libraries.scan(live_pids())
    if not libraries.libraries:
        say("  no process maps a TLS library now")
    for library in libraries.libraries.values():
        what = ", ".join(library.functions) if library.status == FOUND else library.reason
        say(f"  {library.path}: {library.status}: {what} ({len(library.pids)} processes)")
    return notes
