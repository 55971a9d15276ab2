"""``sidetrace check``: what this kernel offers, and whether the agent can run here.

Prints the kernel version, kernel BTF, tracefs/bpffs (mounting them when
missing, and saying so), the process's capabilities, which program types,
map types and attach kinds really work (each probed by doing it), the TLS
libraries that would be read, and which monitor groups can run.  Exits 0
when the agent can run, 1 with a plain explanation when it cannot.  Whether
the privileges suffice is decided by ``check_privileges``, the same function
``sidetrace run`` asks before it loads anything.
"""

from __future__ import annotations

import os
import platform
import sys

from bpfobj import BpfError, arch_object, features
from bpfobj._fs import ensure_bpffs, ensure_tracefs
from wire import terminal_text

from ._app import TRACER_OBJECT
from ._monitor_check import monitor_report
from ._privileges import check_privileges
from ._tls_check import tls_report


def _mark(ok: bool) -> str:
    return "yes" if ok else "no"


def main(argv: list[str] | None = None, out=None) -> int:
    out = out or sys.stdout
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__.strip(), file=out)
        return 0

    def say(text: str = "") -> None:
        # Kernel strings, paths and error text reach the terminal escaped.
        print(terminal_text(text), file=out)

    problems: list[str] = []

    say(f"kernel: Linux {platform.release()} ({platform.machine()})")
    try:
        say(f"architecture: {platform.machine()}, tracer {arch_object(TRACER_OBJECT).name}")
    except BpfError as exc:
        say(f"architecture: {platform.machine()}, no tracer object for it")
        problems.append(f"no tracer for this architecture: {exc}")
    btf_ok = os.path.exists("/sys/kernel/btf/vmlinux")
    say(f"kernel BTF: {'/sys/kernel/btf/vmlinux' if btf_ok else 'missing'}")
    if not btf_ok:
        problems.append("the kernel has no BTF (/sys/kernel/btf/vmlinux); it needs "
                        "CONFIG_DEBUG_INFO_BTF=y for CO-RE")

    for label, ensure in (("tracefs", ensure_tracefs), ("bpffs", ensure_bpffs)):
        try:
            status = ensure()
            say(f"{label}: {status.path}" + (" (mounted now)" if status.mounted_now else " (mounted)"))
        except BpfError as exc:
            say(f"{label}: not mounted and could not mount: {exc}")

    # After the mounts: whether tracefs is readable is part of the answer.
    privileges = check_privileges()
    say(f"user: uid {os.geteuid()}; {privileges.summary()}")
    problems.extend(privileges.problems)

    results = features.summary()
    for group, items in results.items():
        say()
        say(f"{group}:")
        for name, ok in items.items():
            say(f"  {name:<40} {_mark(ok)}")

    basics, progs, maps, attach = (results["basics"], results["program types"],
                                   results["map types"], results["attach"])
    if not basics["bpf syscall"]:
        problems.append("the bpf() syscall is refused" + ("" if privileges.ok else " (not privileged)"))
    else:
        if not progs["tracepoint"]:
            problems.append("tracepoint programs cannot be loaded")
        if not maps["perf_event_array"]:
            problems.append("perf event array maps cannot be created")
        if not (maps["hash"] and maps["percpu_array"]):
            problems.append("hash or per-CPU array maps cannot be created")
        if not basics["global data"]:
            problems.append("programs cannot use global data (.rodata); needs Linux 5.2+")
        if not all(results["helpers"].values()):
            lacking = ", ".join(h for h, ok in results["helpers"].items() if not ok)
            problems.append(f"the kernel lacks BPF helpers the tracer calls: {lacking}")

    tls_notes = tls_report(say)
    monitor_notes = monitor_report(say) if basics["bpf syscall"] else []

    say()
    if problems:
        say("the agent cannot run here:")
        for p in problems:
            say(f"  - {p}")
        return 1
    say("the agent can run here.")
    for note in tls_notes + monitor_notes:
        say(f"note: {note}")
    if not attach["fentry"]:
        say("note: fentry/fexit are refused by this kernel; syscall tracepoints are used instead.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
