"""Live programs and the links that attach them.

A :class:`Program` owns one program fd.  ``attach()`` picks the mechanism from
the program type:

* tracepoint (``tracepoint/<cat>/<name>``): a PERF_TYPE_TRACEPOINT event
  (config = id from tracefs ``events/<cat>/<name>/id``) plus BPF_LINK_CREATE
  (attach type BPF_PERF_EVENT), falling back to PERF_EVENT_IOC_SET_BPF +
  PERF_EVENT_IOC_ENABLE on kernels without perf links;
* raw tracepoint: BPF_RAW_TRACEPOINT_OPEN;
* tp_btf / fentry / fexit (BPF_PROG_TYPE_TRACING, loaded with attach_btf_id
  from kernel BTF): BPF_LINK_CREATE, falling back to BPF_RAW_TRACEPOINT_OPEN;
* uprobes (BPF_PROG_TYPE_KPROBE, ``uprobe/<path>:<offset>`` or
  ``uprobe/<path>:<function>``, the function resolved from the file's
  ``.dynsym``/``.symtab`` by :mod:`._elfsym`): a perf event of the uprobe PMU
  plus the same link as tracepoints; a bare ``uprobe`` section names no
  target, and :meth:`Program.attach_uprobe_symbol` places it;
* perf_event programs (``SEC("perf_event")``): the section names no event,
  so ``attach()`` refuses them; :meth:`Program.attach_perf_event` runs one on
  a perf event the caller opened, e.g. a per-CPU software clock from
  :func:`open_cpu_clock`.

A :class:`Link` holds the fds that keep the attachment alive; closing it
detaches.
"""

from __future__ import annotations

import ctypes
import os

from . import _features, _sys
from ._btf import Btf, Kind
from ._consts import PERF_TYPE_SOFTWARE, PERF_TYPE_TRACEPOINT, AttachType, ProgType
from ._elfsym import function_offset
from ._errors import BpfError, NotSupportedError, SyscallError
from ._fd import FdOwner
from ._fs import ensure_tracefs
from ._kernel_btf import kernel_btf_id

__all__ = ["Program", "Link", "tracepoint_id", "attach_btf_id_for", "open_cpu_clock",
           "open_software_event", "PERF_COUNT_SW_PAGE_FAULTS_MIN", "PERF_COUNT_SW_PAGE_FAULTS_MAJ"]

# enum perf_sw_ids: the CPU clock software event (an hrtimer per CPU), and the
# page faults the kernel counts as minor or major (mm_account_fault).
PERF_COUNT_SW_CPU_CLOCK = 0
PERF_COUNT_SW_PAGE_FAULTS_MIN = 5
PERF_COUNT_SW_PAGE_FAULTS_MAJ = 6


def open_software_event(cpu: int, config: int, period: int = 1, *, what: str = "") -> int:
    """Open software perf event ``config`` (enum perf_sw_ids) on ``cpu`` for every
    task (pid -1), overflowing every ``period`` occurrences; returns its fd,
    disabled until a program is attached with :meth:`Program.attach_perf_event`.

    With ``period`` 1 an attached program runs at every occurrence, in the
    context of the task it happened to (page faults: the faulting task).
    """
    if period <= 0:
        raise BpfError(f"software event period must be positive, not {period}")
    attr = _sys.PerfEventAttr(type=PERF_TYPE_SOFTWARE, config=config, sample_period=period)
    attr.flags = _sys.PerfEventAttr.FLAG_DISABLED
    return _sys.perf_event_open(attr, -1, cpu, what=what or f"software event {config} on cpu {cpu}")


def open_cpu_clock(cpu: int, period_ns: int) -> int:
    """Open a software cpu-clock perf event on ``cpu`` for every task (pid -1)
    that overflows every ``period_ns`` nanoseconds; returns its fd (disabled
    until a program is attached with :meth:`Program.attach_perf_event`).

    The clock is an hrtimer pinned to ``cpu``: it fires on that CPU, idle or
    not, and a perf_event program attached to it runs there.
    """
    if period_ns <= 0:
        raise BpfError(f"cpu-clock period must be positive, not {period_ns} ns")
    return open_software_event(cpu, PERF_COUNT_SW_CPU_CLOCK, period_ns, what=f"cpu-clock event on cpu {cpu}")


def tracepoint_id(category: str, name: str) -> int:
    """The id of tracepoint ``category:name`` from tracefs (mounting it if needed)."""
    root = ensure_tracefs().path
    path = os.path.join(root, "events", category, name, "id")
    try:
        with open(path) as f:
            return int(f.read())
    except FileNotFoundError:
        raise BpfError(f"no tracepoint {category}:{name} ({path} does not exist)") from None


def attach_btf_id_for(prog_type: int, attach_type: int, target: str,
                      kernel_types: Btf | None = None) -> int:
    """attach_btf_id for a tracing program: the id of ``btf_trace_<tp>`` or of
    the function in ``kernel_types`` (default: the running kernel's BTF); 0
    for other programs."""
    if prog_type != ProgType.TRACING:
        return 0
    if not target:
        raise BpfError("tracing program without an attach target")
    if attach_type == AttachType.TRACE_RAW_TP:
        return kernel_btf_id(f"btf_trace_{target}", Kind.TYPEDEF, kernel_types)
    return kernel_btf_id(target, Kind.FUNC, kernel_types)


class Link(FdOwner):
    """An attachment.  ``close()`` detaches and releases every fd it holds.

    ``kind`` is one of "perf_link", "perf_ioctl", "raw_tracepoint", "tracing".
    ``fd`` keeps the program attached: a BPF link, except for "perf_ioctl"
    (kernels without perf links), where it is the perf event the program was
    set on.  A "perf_link" also holds its perf event (``perf_event``).
    """

    def __init__(self, kind: str, fd: int, *, perf_event: FdOwner | None = None,
                 program: str = "", target: str = "") -> None:
        super().__init__(fd)
        self.kind = kind
        self.perf_event = perf_event
        self.program = program
        self.target = target

    def _label(self) -> str:
        return f"link of program {self.program!r} to {self.target!r}"

    @property
    def has_bpf_link(self) -> bool:
        return self.kind != "perf_ioctl"

    def detach(self) -> None:
        """BPF_LINK_DETACH (the link fd stays open until close)."""
        if not self.has_bpf_link:
            raise BpfError(f"{self!r} has no BPF link to detach")
        _sys.link_detach(self.fd)

    def info(self) -> _sys.BpfLinkInfo:
        if not self.has_bpf_link:
            raise BpfError(f"{self!r} has no BPF link")
        return _sys.obj_get_info_by_fd(self.fd, _sys.BpfLinkInfo())

    def close(self) -> None:
        super().close()
        if self.perf_event is not None:
            self.perf_event.close()

    def __repr__(self) -> str:
        return f"<Link {self.kind} {self.program!r} -> {self.target!r}{' closed' if self.closed else ''}>"


class Program(FdOwner):
    """A loaded program.  ``attach()`` returns a :class:`Link`; ``close()`` drops the fd
    (links keep the program alive in the kernel until they are closed too)."""

    def __init__(self, fd: int, *, name: str, type: int,
                 expected_attach_type: int = AttachType.NONE, attach_target: str = "",
                 section: str = "") -> None:
        super().__init__(fd)
        self.name = name
        try:
            self.type: ProgType | int = ProgType(type)
        except ValueError:
            self.type = type
        try:
            self.expected_attach_type: AttachType | int = AttachType(expected_attach_type)
        except ValueError:
            self.expected_attach_type = expected_attach_type
        self.attach_target = attach_target
        self.section = section

    @classmethod
    def load(cls, type: int, instructions: bytes, license: str = "GPL", *, name: str = "",
             expected_attach_type: int = AttachType.NONE, attach_target: str = "",
             attach_btf_id: int | None = None, btf_fd: int = 0, func_info: bytes = b"",
             line_info: bytes = b"", kern_version: int = 0, section: str = "") -> "Program":
        """BPF_PROG_LOAD raw instructions.  For tracing programs ``attach_btf_id``
        defaults to the kernel BTF id of ``attach_target``."""
        if attach_btf_id is None:
            attach_btf_id = attach_btf_id_for(type, expected_attach_type, attach_target)
        fd = _sys.prog_load(type, instructions, license, name=name,
                            expected_attach_type=expected_attach_type,
                            attach_btf_id=attach_btf_id, btf_fd=btf_fd, func_info=func_info,
                            line_info=line_info, kern_version=kern_version,
                            type_supported=_features.prog_type_supported)
        return cls(fd, name=name, type=type, expected_attach_type=expected_attach_type,
                   attach_target=attach_target, section=section)

    def _label(self) -> str:
        return f"program {self.name!r}"

    def __repr__(self) -> str:
        t = self.type.name if isinstance(self.type, ProgType) else self.type
        return f"<Program {self.name!r} {t} {self.attach_target!r}{' closed' if self.closed else ''}>"

    def info(self) -> _sys.BpfProgInfo:
        """The kernel's ``struct bpf_prog_info`` (id, tag, name, btf_id...)."""
        return _sys.obj_get_info_by_fd(self.fd, _sys.BpfProgInfo())

    # -- attaching ----------------------------------------------------------

    def attach(self, target: str | None = None) -> Link:
        """Attach according to the program type; ``target`` overrides the section's."""
        target = self.attach_target if target is None else target
        t = self.type
        if t == ProgType.TRACEPOINT:
            category, sep, name = target.partition("/")
            if not sep:
                category, sep, name = target.partition(":")
            if not sep or not name:
                raise BpfError(f"program {self.name!r}: tracepoint target {target!r} "
                               "is not <category>/<name>")
            return self.attach_tracepoint(category, name)
        if t in (ProgType.RAW_TRACEPOINT, ProgType.RAW_TRACEPOINT_WRITABLE):
            return self.attach_raw_tracepoint(target)
        if t == ProgType.TRACING:
            return self.attach_tracing()
        if t == ProgType.KPROBE and self.section.startswith(("uprobe", "uretprobe")):
            path, _, where = target.rpartition(":")
            if not path:
                raise BpfError(f"program {self.name!r}: uprobe target {target!r} is not "
                               "<path>:<offset> or <path>:<function>")
            retprobe = self.section.startswith("uretprobe")
            try:
                offset = int(where, 0)
            except ValueError:
                return self.attach_uprobe_symbol(path, where, retprobe=retprobe)
            return self.attach_uprobe(path, offset, retprobe=retprobe)
        if t == ProgType.PERF_EVENT:
            raise NotSupportedError("attaching perf_event programs by section name", "",
                                    f"program {self.name!r}: open the perf event and use "
                                    "attach_perf_event(fd)")
        if t == ProgType.KPROBE:
            raise NotSupportedError("kprobes", "", "this kernel is built without CONFIG_KPROBES"
                                    if not os.path.exists("/sys/bus/event_source/devices/kprobe")
                                    else f"program {self.name!r}: kprobe attach is not implemented")
        raise NotSupportedError(f"attaching {t!r} programs", "", f"program {self.name!r}")

    def _attach_perf(self, perf_fd: int, target: str, use_link: bool = True) -> Link:
        """Run this program on a perf event (fd ownership moves into the Link)."""
        # Try the modern way first (no separate probe: a probe costs an extra
        # load/attach/detach cycle); kernels before 5.15 answer EINVAL.
        try:
            try:
                if use_link:
                    link_fd = _sys.link_create(self.fd, perf_fd, AttachType.PERF_EVENT)
                    return Link("perf_link", link_fd, perf_event=FdOwner(perf_fd, "perf event"),
                                program=self.name, target=target)
            except SyscallError as exc:
                if exc.errno not in (22, 95, 524):  # EINVAL/EOPNOTSUPP/ENOTSUPP: fall back
                    raise
            _sys.perf_event_set_bpf(perf_fd, self.fd)
            _sys.perf_event_enable(perf_fd)
            return Link("perf_ioctl", perf_fd, program=self.name, target=target)
        except BaseException:
            _sys.close_fd(perf_fd)
            raise

    def attach_perf_event(self, perf_fd: int, target: str = "") -> Link:
        """Run this program on the caller's perf event ``perf_fd`` and enable it.

        The fd moves into the returned :class:`Link` (closed with it, or at
        once if attaching fails).
        """
        link = self._attach_perf(perf_fd, target or f"perf event fd {perf_fd}")
        if link.kind == "perf_link":
            try:
                _sys.perf_event_enable(perf_fd)  # the ioctl path enables it already
            except BaseException:
                link.close()
                raise
        return link

    def attach_tracepoint(self, category: str, name: str, *, use_link: bool = True) -> Link:
        """Attach to tracepoint ``category:name`` (one event on cpu 0 covers all CPUs).

        ``use_link=False`` skips BPF_LINK_CREATE and uses the pre-5.15 way
        (PERF_EVENT_IOC_SET_BPF + PERF_EVENT_IOC_ENABLE) directly.
        """
        tp = tracepoint_id(category, name)
        attr = _sys.PerfEventAttr(type=PERF_TYPE_TRACEPOINT, config=tp, sample_period=1)
        attr.wakeup = 1
        perf_fd = _sys.perf_event_open(attr, -1, 0, what=f"tracepoint {category}:{name}")
        return self._attach_perf(perf_fd, f"{category}:{name}", use_link)

    def attach_raw_tracepoint(self, name: str) -> Link:
        fd = _sys.raw_tracepoint_open(name, self.fd)
        return Link("raw_tracepoint", fd, program=self.name, target=name)

    def attach_tracing(self) -> Link:
        """Attach an fentry/fexit/tp_btf program (its target was fixed at load time)."""
        at = int(self.expected_attach_type)
        try:
            fd = _sys.link_create(self.fd, 0, at)
            return Link("tracing", fd, program=self.name, target=self.attach_target)
        except SyscallError as exc:
            if exc.errno not in (22, 95, 524):  # no LINK_CREATE for tracing: fall back
                raise
        try:
            fd = _sys.raw_tracepoint_open(None, self.fd)
        except SyscallError as exc:
            if exc.errno not in (95, 524):  # EOPNOTSUPP, the kernel's ENOTSUPP
                raise
            # Loaded, yet not attachable: a kernel whose BPF trampolines cannot
            # call into kernel functions on this architecture (arm64 before
            # ftrace direct calls, as Debian 12's 6.1).
            kind = getattr(self.expected_attach_type, "name", at)
            raise NotSupportedError(f"attaching {kind} programs", "",
                                    f"program {self.name!r} to {self.attach_target}: {exc}") from None
        return Link("tracing", fd, program=self.name, target=self.attach_target)

    def attach_uprobe_symbol(self, path: str, function: str, *, retprobe: bool = False,
                             pid: int = -1) -> Link:
        """Attach to the entry (or, with ``retprobe``, the returns) of ``function``
        in the ELF file ``path``; :class:`SymbolNotFoundError` if the file does
        not define it (a stripped file has no symbols to find)."""
        return self.attach_uprobe(path, function_offset(path, function), retprobe=retprobe, pid=pid)

    def attach_uprobe(self, path: str, offset: int, *, retprobe: bool = False,
                      pid: int = -1) -> Link:
        """Attach to the instruction at file ``offset`` of ``path`` (all processes
        when ``pid`` is -1) through the uprobe PMU."""
        try:
            with open("/sys/bus/event_source/devices/uprobe/type") as f:
                pmu = int(f.read())
        except FileNotFoundError:
            raise NotSupportedError("uprobe PMU", "4.17") from None
        bit = 0
        if retprobe:
            with open("/sys/bus/event_source/devices/uprobe/format/retprobe") as f:
                spec = f.read().strip()  # e.g. "config:0"
            bit = 1 << int(spec.partition(":")[2].split("-")[0])
        cpath = ctypes.create_string_buffer(os.fsencode(os.path.realpath(path)))
        attr = _sys.PerfEventAttr(type=pmu, config=bit, sample_period=1)
        attr.config1 = ctypes.addressof(cpath)
        attr.config2 = offset
        attr.wakeup = 1
        cpu = 0 if pid == -1 else -1
        perf_fd = _sys.perf_event_open(attr, pid, cpu, what=f"uprobe {path}:{offset:#x}")
        return self._attach_perf(perf_fd, f"{path}:{offset:#x}")


