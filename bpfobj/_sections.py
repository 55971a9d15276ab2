"""What an ELF section name says about the programs in it.

The conventions are libbpf's: ``SEC("tracepoint/syscalls/sys_enter_write")``
makes a tracepoint program attached to ``syscalls/sys_enter_write`` and so on.
:func:`program_kind` maps a section name to (program type, expected attach
type, attach target).  An executable section whose name matches none of the
known prefixes is an error (:class:`ObjectFormatError`), not silently
skipped: a program the loader quietly ignores is worse than a clear failure
at parse time.  ``.text`` holds subprograms only and is never a program.
"""

from __future__ import annotations

import dataclasses

from ._consts import AttachType, ProgType


@dataclasses.dataclass(frozen=True, slots=True)
class SectionKind:
    """How to load and attach the programs of one section name prefix."""

    prog_type: ProgType
    attach_type: AttachType
    # True when the part after the prefix is the attach target; False for
    # sections that take no target ("xdp", "socket").
    takes_target: bool = True


# Prefix (text before the first "/", or the whole name) -> kind.
_KINDS: dict[str, SectionKind] = {
    "tracepoint": SectionKind(ProgType.TRACEPOINT, AttachType.NONE),
    "tp": SectionKind(ProgType.TRACEPOINT, AttachType.NONE),
    "raw_tracepoint": SectionKind(ProgType.RAW_TRACEPOINT, AttachType.NONE),
    "raw_tp": SectionKind(ProgType.RAW_TRACEPOINT, AttachType.NONE),
    "tp_btf": SectionKind(ProgType.TRACING, AttachType.TRACE_RAW_TP),
    "fentry": SectionKind(ProgType.TRACING, AttachType.TRACE_FENTRY),
    "fexit": SectionKind(ProgType.TRACING, AttachType.TRACE_FEXIT),
    "fmod_ret": SectionKind(ProgType.TRACING, AttachType.MODIFY_RETURN),
    "lsm": SectionKind(ProgType.LSM, AttachType.LSM_MAC),
    "kprobe": SectionKind(ProgType.KPROBE, AttachType.NONE),
    "kretprobe": SectionKind(ProgType.KPROBE, AttachType.NONE),
    "uprobe": SectionKind(ProgType.KPROBE, AttachType.NONE),
    "uretprobe": SectionKind(ProgType.KPROBE, AttachType.NONE),
    "perf_event": SectionKind(ProgType.PERF_EVENT, AttachType.NONE, takes_target=False),
    "socket": SectionKind(ProgType.SOCKET_FILTER, AttachType.NONE, takes_target=False),
    "xdp": SectionKind(ProgType.XDP, AttachType.NONE, takes_target=False),
    "tc": SectionKind(ProgType.SCHED_CLS, AttachType.NONE, takes_target=False),
    "classifier": SectionKind(ProgType.SCHED_CLS, AttachType.NONE, takes_target=False),
    "action": SectionKind(ProgType.SCHED_ACT, AttachType.NONE, takes_target=False),
}

# Return probes share the program type with entry probes; the loader tells
# them apart by section prefix.
RETURN_PROBE_PREFIXES = ("kretprobe", "uretprobe")


def program_kind(section: str) -> tuple[ProgType, AttachType, str] | None:
    """(program type, expected attach type, attach target) for a section name.

    The attach target is everything after the first "/":
    ``"tracepoint/syscalls/sys_enter_write"`` -> ``"syscalls/sys_enter_write"``,
    ``"uprobe//usr/bin/true:main"`` -> ``"/usr/bin/true:main"``.
    Sections without a target ("xdp", "socket", "tc") give ``""``; any text
    after their "/" is kept as the target, for the loader to interpret.
    Returns None for an unknown prefix.
    """
    prefix, _, target = section.partition("/")
    kind = _KINDS.get(prefix)
    if kind is None:
        return None
    return kind.prog_type, kind.attach_type, target


def is_return_probe(section: str) -> bool:
    """True for kretprobe/uretprobe sections."""
    return section.partition("/")[0] in RETURN_PROBE_PREFIXES
