"""What the running kernel offers, each probed once (by really doing it) and cached.

Probes create the smallest possible object of the kind in question and close
it at once.  None of them leaves anything behind.  :func:`summary` runs them
all for ``sidetrace check``.
"""

from __future__ import annotations

import ctypes
import functools
import os
import re
import struct

from . import _insn, _sys
from ._btf import Kind
from ._consts import AttachType, MapFlags, MapType, PseudoSrc, ProgType
from ._errors import BpfError, VerifierError
from ._fs import tracefs_path
from ._kernel_btf import kernel_btf_id

__all__ = [
    "bpf_syscall", "btf", "prog_type_supported", "map_type_supported", "map_batch_ops",
    "ringbuf", "global_data", "map_freeze", "link_create_perf_event", "raw_tracepoint",
    "tp_btf", "fentry", "fexit", "link_create_tracing", "uprobe_pmu", "kprobe_pmu", "summary",
    "PROBED_PROG_TYPES", "PROBED_MAP_TYPES", "PROBED_HELPERS", "helper_supported",
]


# --- probe programs -----------------------------------------------------------

def ld_map_value(dst: int, map_fd: int, offset: int) -> bytes:
    """ld_imm64 dst = &map[0] + offset (BPF_PSEUDO_MAP_VALUE)."""
    return (_insn.encode(_insn.LD_IMM64, dst, PseudoSrc.MAP_VALUE, 0, map_fd)
            + _insn.encode(0, 0, 0, 0, offset))


RETURN_ZERO = _insn.mov64_imm(0, 0) + _insn.exit_insn()


def _closing(fd: int) -> None:
    _sys.close_fd(fd)


def _try(fn) -> bool:
    try:
        fd = fn()
    except BpfError:
        return False
    if isinstance(fd, int):
        _closing(fd)
    else:
        for f in fd:
            _closing(f)
    return True


# --- basics -----------------------------------------------------------------

@functools.cache
def bpf_syscall() -> bool:
    """bpf() works for this process (root / CAP_BPF)."""
    return _try(lambda: _sys.map_create(MapType.ARRAY, 4, 4, 1))


def _tiny_btf() -> bytes:
    """BTF with one type: [1] INT 'int' size 4, signed, 32 bits."""
    strings = b"\0int\0"
    types = struct.pack("<III", 1, 1 << 24, 4) + struct.pack("<I", (1 << 24) | 32)
    header = struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(types), len(types), len(strings))
    return header + types + strings


@functools.cache
def btf() -> bool:
    """BPF_BTF_LOAD accepts BTF (needed for typed maps, func/line info, CO-RE)."""
    return _try(lambda: _sys.btf_load(_tiny_btf()))


@functools.cache
def kernel_btf_present() -> bool:
    return os.path.exists("/sys/kernel/btf/vmlinux")


# --- program and map types ---------------------------------------------------

PROBED_PROG_TYPES = (ProgType.SOCKET_FILTER, ProgType.KPROBE, ProgType.TRACEPOINT,
                     ProgType.PERF_EVENT, ProgType.RAW_TRACEPOINT, ProgType.TRACING)


@functools.cache
def prog_type_supported(prog_type: int) -> bool:
    """A trivial program of this type loads (TRACING: an fentry program loads)."""
    if prog_type == ProgType.TRACING:
        return tp_btf() or fentry()
    if prog_type in (ProgType.EXT, ProgType.LSM):
        return False  # needs a target; not used by bpfobj
    return _try(lambda: _sys.prog_load(prog_type, RETURN_ZERO, "GPL"))


PROBED_MAP_TYPES = (MapType.HASH, MapType.ARRAY, MapType.PERCPU_HASH, MapType.PERCPU_ARRAY,
                    MapType.LRU_HASH, MapType.LRU_PERCPU_HASH, MapType.PERF_EVENT_ARRAY,
                    MapType.LPM_TRIE, MapType.ARRAY_OF_MAPS, MapType.HASH_OF_MAPS,
                    MapType.QUEUE, MapType.STACK, MapType.RINGBUF, MapType.TASK_STORAGE,
                    MapType.BLOOM_FILTER)


@functools.cache
def map_type_supported(map_type: int) -> bool:
    """A minimal map of this type can be created."""
    mt = map_type
    create = _sys.map_create
    if mt in (MapType.HASH, MapType.ARRAY, MapType.PERCPU_HASH, MapType.PERCPU_ARRAY,
              MapType.LRU_HASH, MapType.LRU_PERCPU_HASH):
        return _try(lambda: create(mt, 4, 8, 1))
    if mt in (MapType.PERF_EVENT_ARRAY, MapType.PROG_ARRAY, MapType.CGROUP_ARRAY):
        return _try(lambda: create(mt, 4, 4, 1))
    if mt == MapType.LPM_TRIE:
        return _try(lambda: create(mt, 8, 8, 1, flags=MapFlags.NO_PREALLOC))
    if mt in (MapType.QUEUE, MapType.STACK):
        return _try(lambda: create(mt, 0, 4, 1))
    if mt == MapType.BLOOM_FILTER:
        return _try(lambda: create(mt, 0, 4, 1))
    if mt == MapType.RINGBUF:
        return _try(lambda: create(mt, 0, 0, os.sysconf("SC_PAGE_SIZE")))
    if mt in (MapType.ARRAY_OF_MAPS, MapType.HASH_OF_MAPS):
        def outer() -> list[int]:
            inner = create(MapType.ARRAY, 4, 4, 1)
            try:
                return [create(mt, 4, 4, 1, inner_map_fd=inner), inner]
            except BaseException:
                _closing(inner)
                raise
        return _try(outer)
    if mt in (MapType.TASK_STORAGE, MapType.INODE_STORAGE, MapType.SK_STORAGE,
              MapType.CGRP_STORAGE):
        def storage() -> list[int]:
            btf_fd = _sys.btf_load(_tiny_btf())
            try:
                return [create(mt, 4, 4, 0, flags=MapFlags.NO_PREALLOC, btf_fd=btf_fd,
                               btf_key_type_id=1, btf_value_type_id=1), btf_fd]
            except BaseException:
                _closing(btf_fd)
                raise
        return _try(storage)
    return _try(lambda: create(mt, 4, 4, 1))


@functools.cache
def ringbuf() -> bool:
    """BPF_MAP_TYPE_RINGBUF (Linux 5.8)."""
    return map_type_supported(MapType.RINGBUF)


@functools.cache
def map_batch_ops() -> bool:
    """BPF_MAP_LOOKUP_BATCH works on hash maps (Linux 5.6)."""
    try:
        fd = _sys.map_create(MapType.HASH, 4, 4, 4)
    except BpfError:
        return False
    try:
        token = (ctypes.c_char * 8)()
        keys = (ctypes.c_char * 16)()
        values = (ctypes.c_char * 16)()
        _sys.map_lookup_batch(fd, None, token, keys, values, 4)
        return True  # an empty map answers ENOENT, which counts as "done"
    except BpfError:
        return False
    finally:
        _closing(fd)


@functools.cache
def map_freeze() -> bool:
    """BPF_MAP_FREEZE (Linux 5.2)."""
    try:
        fd = _sys.map_create(MapType.ARRAY, 4, 4, 1)
    except BpfError:
        return False
    try:
        _sys.map_freeze(fd)
        return True
    except BpfError:
        return False
    finally:
        _closing(fd)


@functools.cache
def global_data() -> bool:
    """Programs may point into array map values (BPF_PSEUDO_MAP_VALUE, Linux 5.2)."""
    try:
        mfd = _sys.map_create(MapType.ARRAY, 4, 16, 1)
    except BpfError:
        return False
    try:
        prog = ld_map_value(1, mfd, 8) + RETURN_ZERO
        return _try(lambda: _sys.prog_load(ProgType.SOCKET_FILTER, prog, "GPL"))
    finally:
        _closing(mfd)


# --- attach kinds -----------------------------------------------------------

def _tracepoint_id(category: str, name: str) -> int | None:
    root = tracefs_path()
    if root is None:
        return None
    try:
        with open(os.path.join(root, "events", category, name, "id")) as f:
            return int(f.read())
    except OSError:
        return None


@functools.cache
def link_create_perf_event() -> bool:
    """BPF_LINK_CREATE with a tracepoint perf event (Linux 5.15)."""
    tp = _tracepoint_id("syscalls", "sys_enter_getppid")
    if tp is None:
        return False
    try:
        prog = _sys.prog_load(ProgType.TRACEPOINT, RETURN_ZERO, "GPL")
    except BpfError:
        return False
    try:
        attr = _sys.PerfEventAttr(type=2, config=tp, sample_period=1)
        pfd = _sys.perf_event_open(attr, -1, 0)
        try:
            return _try(lambda: _sys.link_create(prog, pfd, AttachType.PERF_EVENT))
        finally:
            _closing(pfd)
    except BpfError:
        return False
    finally:
        _closing(prog)


@functools.cache
def raw_tracepoint() -> bool:
    """BPF_RAW_TRACEPOINT_OPEN of a raw tracepoint program (Linux 4.17)."""
    try:
        prog = _sys.prog_load(ProgType.RAW_TRACEPOINT, RETURN_ZERO, "GPL")
    except BpfError:
        return False
    try:
        return _try(lambda: _sys.raw_tracepoint_open("sys_enter", prog))
    finally:
        _closing(prog)


def _tracing_probe(attach_type: int, btf_name: str, kind: Kind) -> tuple[bool, bool]:
    """(loads, attaches through LINK_CREATE) for a trivial tracing program."""
    try:
        btf_id = kernel_btf_id(btf_name, kind)
    except BpfError:
        return False, False
    try:
        prog = _sys.prog_load(ProgType.TRACING, RETURN_ZERO, "GPL",
                              expected_attach_type=attach_type, attach_btf_id=btf_id)
    except BpfError:
        return False, False
    try:
        if _try(lambda: _sys.link_create(prog, 0, attach_type)):
            return True, True
        return _try(lambda: _sys.raw_tracepoint_open(None, prog)), False
    finally:
        _closing(prog)


def _getpgid_entry() -> str:
    """The kernel's entry function of getpgid(), a harmless fentry target."""
    return (_sys.ABI.syscall_prefix if _sys.ABI else "") + "getpgid"


@functools.cache
def _fentry_probe() -> tuple[bool, bool]:
    return _tracing_probe(AttachType.TRACE_FENTRY, _getpgid_entry(), Kind.FUNC)


@functools.cache
def _tp_btf_probe() -> tuple[bool, bool]:
    return _tracing_probe(AttachType.TRACE_RAW_TP, "btf_trace_sys_enter", Kind.TYPEDEF)


@functools.cache
def fentry() -> bool:
    """fentry programs load and attach (BPF trampolines, Linux 5.5)."""
    return _fentry_probe()[0]


@functools.cache
def fexit() -> bool:
    """fexit programs load and attach (Linux 5.5)."""
    return _tracing_probe(AttachType.TRACE_FEXIT, _getpgid_entry(), Kind.FUNC)[0]


@functools.cache
def tp_btf() -> bool:
    """BTF-typed raw tracepoints (tp_btf, Linux 5.5)."""
    return _tp_btf_probe()[0]


@functools.cache
def link_create_tracing() -> bool:
    """BPF_LINK_CREATE attaches tracing programs (else RAW_TRACEPOINT_OPEN does)."""
    return _tp_btf_probe()[1] or _fentry_probe()[1]


@functools.cache
def kprobe_pmu() -> bool:
    """The kprobe PMU exists (CONFIG_KPROBES)."""
    return os.path.exists("/sys/bus/event_source/devices/kprobe/type")


@functools.cache
def uprobe_pmu() -> bool:
    """The uprobe PMU exists (perf_event_open-based uprobes, Linux 4.17)."""
    return os.path.exists("/sys/bus/event_source/devices/uprobe/type")


# --- helpers ------------------------------------------------------------------

# Helpers sidetrace's tracer calls that came after Linux 5.4 (ids: bpfobj._sys.HELPERS).
PROBED_HELPERS = (112, 113, 158, 175)


@functools.cache
def helper_supported(helper_id: int) -> bool:
    """A tracepoint program may call this helper.

    The probe calls it with no arguments: a verifier that knows the helper
    refuses the arguments instead, which means the helper is there.
    """
    try:
        fd = _sys.prog_load(ProgType.TRACEPOINT, _insn.encode(_insn.CALL, imm=helper_id) + RETURN_ZERO,
                            "GPL")
    except VerifierError as exc:
        return re.search(r"^(?:invalid|unknown) func ", exc.log, re.M) is None
    except BpfError:  # NotSupportedError: a helper this kernel predates
        return False
    _closing(fd)
    return True


def _helper_label(helper_id: int) -> str:
    name, since = _sys.HELPERS[helper_id]
    return f"{name} (Linux {since})"


def summary() -> dict[str, dict[str, bool]]:
    """Every probe's result, grouped: basics, program types, map types, attach kinds, helpers."""
    basics = {
        "bpf syscall": bpf_syscall(),
        "BTF load": btf(),
        "kernel BTF (/sys/kernel/btf/vmlinux)": kernel_btf_present(),
        "global data": global_data(),
        "map freeze": map_freeze(),
        "map batch ops": map_batch_ops(),
        "ring buffer": ringbuf(),
    }
    # Program types: whether a program of the type loads (attaching is under "attach").
    progs = {ProgType(t).name.lower(): prog_type_supported(t) for t in PROBED_PROG_TYPES}
    maps = {MapType(t).name.lower(): map_type_supported(t) for t in PROBED_MAP_TYPES}
    attach = {
        "tracepoint via link_create": link_create_perf_event(),
        "raw tracepoint": raw_tracepoint(),
        "tp_btf": tp_btf(),
        "fentry": fentry(),
        "fexit": fexit(),
        "tracing via link_create": link_create_tracing(),
        "uprobe PMU": uprobe_pmu(),
        "kprobe PMU": kprobe_pmu(),
    }
    helpers = {_helper_label(h): helper_supported(h) for h in PROBED_HELPERS}
    return {"basics": basics, "program types": progs, "map types": maps, "attach": attach,
            "helpers": helpers}
