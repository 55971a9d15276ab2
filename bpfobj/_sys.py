"""The one narrow syscall layer: bpf(), perf_event_open() and the perf ioctls.

Every kernel command has exactly one wrapper here, named after the command
(``map_create`` for BPF_MAP_CREATE, ...).  Each ``union bpf_attr`` member is
declared as a ctypes structure whose docstring quotes the C layout from
``<linux/bpf.h>``; offsets were checked against the UAPI header.

All calls go through :func:`_bpf` / :func:`perf_event_open`, the single place
that retries EINTR/EAGAIN and turns an errno into a typed error:

* EPERM/EACCES -> :class:`PermissionDeniedError` with a capability hint,
* a failed BPF_PROG_LOAD -> :class:`VerifierError` carrying the verifier log,
* EINVAL for a map or program type this kernel lacks -> :class:`NotSupportedError`
  (when the caller passes ``type_supported``, the probe that tells; this
  layer runs no probe of its own),
* anything else -> :class:`SyscallError`.

File descriptors returned by the kernel are plain ints; callers own them.
bpf() sets O_CLOEXEC on every fd it creates; perf events are opened with
PERF_FLAG_FD_CLOEXEC.
"""

from __future__ import annotations

import ctypes
import dataclasses
import errno as _errno
import fcntl
import os
import platform
import re
import resource
from collections.abc import Callable

from ._consts import (
    CORE_POISON_HELPER,
    PERF_FLAG_FD_CLOEXEC,
    AttachType,
    Cmd,
    MapType,
    ProgType,
)
from ._errors import (
    BpfError,
    CoreRelocationError,
    NotSupportedError,
    PermissionDeniedError,
    SyscallError,
    VerifierError,
)

__all__ = [
    "map_create", "map_lookup_elem", "map_update_elem", "map_delete_elem",
    "map_get_next_key", "map_lookup_batch", "map_freeze", "prog_load", "btf_load",
    "obj_pin", "obj_get", "link_create", "link_detach", "raw_tracepoint_open",
    "obj_get_info_by_fd", "perf_event_open", "perf_event_enable",
    "perf_event_disable", "perf_event_set_bpf", "close_fd", "PerfEventAttr",
    "BpfProgInfo", "BpfMapInfo", "BpfLinkInfo", "OBJ_NAME_LEN", "ArchAbi", "ARCHES", "ABI",
    "MACHINE", "arch_abi", "kernel_version", "HELPERS", "lift_memlock_limit",
]



@dataclasses.dataclass(frozen=True)
class ArchAbi:
    """What differs per architecture at the kernel boundary bpfobj uses.

    ``syscalls`` holds the numbers of the syscalls made by number (bpfobj's
    own, and those its tests watch for); ``syscall_prefix`` names the
    kernel's syscall entry functions (fentry targets: prefix + "getpgid");
    ``bpf_arch`` is the kernel's name of the architecture, which names the
    BPF objects built for it (``make bpf``: -D__TARGET_ARCH_<bpf_arch>,
    ``name.<bpf_arch>.bpf.o``).  The perf ioctl requests are encoded with
    the generic _IOC layout on both (asm-generic/ioctl.h).
    """

    machine: str
    bpf_arch: str
    syscalls: dict[str, int]
    syscall_prefix: str
    perf_ioc_enable: int
    perf_ioc_disable: int
    perf_ioc_set_bpf: int


ARCHES = {
    "x86_64": ArchAbi(
        machine="x86_64", bpf_arch="x86",
        syscalls={"bpf": 321, "perf_event_open": 298, "getpgid": 121},
        syscall_prefix="__x64_sys_",
        perf_ioc_enable=0x2400, perf_ioc_disable=0x2401, perf_ioc_set_bpf=0x40042408),
    "aarch64": ArchAbi(
        machine="aarch64", bpf_arch="arm64",
        syscalls={"bpf": 280, "perf_event_open": 241, "getpgid": 155},
        syscall_prefix="__arm64_sys_",
        perf_ioc_enable=0x2400, perf_ioc_disable=0x2401, perf_ioc_set_bpf=0x40042408),
}

MACHINE = platform.machine()
# None on an architecture bpfobj does not know: every call then raises
# NotSupportedError naming it (see arch_abi()).
ABI = ARCHES.get(MACHINE)


def _unknown_arch() -> NotSupportedError:
    return NotSupportedError(f"the {MACHINE or 'unknown'} architecture", "",
                             f"bpfobj knows {', '.join(sorted(ARCHES))}")


def arch_abi() -> ArchAbi:
    """The running architecture's entry, or NotSupportedError naming it."""
    if ABI is None:
        raise _unknown_arch()
    return ABI


NR_BPF = ABI.syscalls["bpf"] if ABI else -1
NR_PERF_EVENT_OPEN = ABI.syscalls["perf_event_open"] if ABI else -1

OBJ_NAME_LEN = 16  # BPF_OBJ_NAME_LEN, including the terminating NUL

_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long

# How many times a call failing with EAGAIN is retried (EINTR retries forever).
_EAGAIN_RETRIES = 5

_PERM_HINT = (
    "run as root, or grant CAP_BPF and CAP_PERFMON (CAP_SYS_ADMIN on kernels before 5.8)"
)
_PERF_HINT = (
    "perf_event_open needs CAP_PERFMON (or CAP_SYS_ADMIN), or a lower "
    "/proc/sys/kernel/perf_event_paranoid"
)

c_u32 = ctypes.c_uint32
c_s32 = ctypes.c_int32
c_u64 = ctypes.c_uint64


def _addr(buf: ctypes.Array | None) -> int:
    """Address of a ctypes buffer as a __aligned_u64 pointer field (0 for None)."""
    return 0 if buf is None else ctypes.addressof(buf)


def _cbuf(data: bytes | bytearray | memoryview) -> ctypes.Array:
    """A ctypes copy of ``data`` the kernel may read from (kept alive by the caller)."""
    return (ctypes.c_char * max(len(data), 1)).from_buffer_copy(bytes(data) or b"\0")


def _name_field(name: str) -> bytes:
    raw = name.encode("ascii", "replace")[: OBJ_NAME_LEN - 1]
    return raw


# ---------------------------------------------------------------------------
# union bpf_attr members
# ---------------------------------------------------------------------------


class MapCreateAttr(ctypes.Structure):
    """BPF_MAP_CREATE::

        struct { /* anonymous struct used by BPF_MAP_CREATE command */
            __u32   map_type;
            __u32   key_size;
            __u32   value_size;
            __u32   max_entries;
            __u32   map_flags;
            __u32   inner_map_fd;
            __u32   numa_node;
            char    map_name[BPF_OBJ_NAME_LEN];
            __u32   map_ifindex;
            __u32   btf_fd;
            __u32   btf_key_type_id;
            __u32   btf_value_type_id;
            __u32   btf_vmlinux_value_type_id;
            __u64   map_extra;
        };
    """

    _fields_ = [
        ("map_type", c_u32),
        ("key_size", c_u32),
        ("value_size", c_u32),
        ("max_entries", c_u32),
        ("map_flags", c_u32),
        ("inner_map_fd", c_u32),
        ("numa_node", c_u32),
        ("map_name", ctypes.c_char * OBJ_NAME_LEN),
        ("map_ifindex", c_u32),
        ("btf_fd", c_u32),
        ("btf_key_type_id", c_u32),
        ("btf_value_type_id", c_u32),
        ("btf_vmlinux_value_type_id", c_u32),
        ("map_extra", c_u64),
    ]


class MapElemAttr(ctypes.Structure):
    """BPF_MAP_*_ELEM and BPF_MAP_GET_NEXT_KEY::

        struct { /* anonymous struct used by BPF_MAP_*_ELEM commands */
            __u32           map_fd;
            __aligned_u64   key;
            union {
                __aligned_u64 value;
                __aligned_u64 next_key;
            };
            __u64           flags;
        };
    """

    _fields_ = [
        ("map_fd", c_u32),
        ("key", c_u64),
        ("value", c_u64),  # also next_key
        ("flags", c_u64),
    ]


class MapBatchAttr(ctypes.Structure):
    """BPF_MAP_*_BATCH::

        struct { /* struct used by BPF_MAP_*_BATCH commands */
            __aligned_u64   in_batch;   /* start batch, NULL to start from beginning */
            __aligned_u64   out_batch;  /* output: next start batch */
            __aligned_u64   keys;
            __aligned_u64   values;
            __u32           count;      /* input/output: input: # of key/value
                                         * elements, output: # of filled elements */
            __u32           map_fd;
            __u64           elem_flags;
            __u64           flags;
        } batch;
    """

    _fields_ = [
        ("in_batch", c_u64),
        ("out_batch", c_u64),
        ("keys", c_u64),
        ("values", c_u64),
        ("count", c_u32),
        ("map_fd", c_u32),
        ("elem_flags", c_u64),
        ("flags", c_u64),
    ]


class ProgLoadAttr(ctypes.Structure):
    """BPF_PROG_LOAD::

        struct { /* anonymous struct used by BPF_PROG_LOAD command */
            __u32           prog_type;
            __u32           insn_cnt;
            __aligned_u64   insns;
            __aligned_u64   license;
            __u32           log_level;
            __u32           log_size;
            __aligned_u64   log_buf;
            __u32           kern_version;
            __u32           prog_flags;
            char            prog_name[BPF_OBJ_NAME_LEN];
            __u32           prog_ifindex;
            __u32           expected_attach_type;
            __u32           prog_btf_fd;
            __u32           func_info_rec_size;
            __aligned_u64   func_info;
            __u32           func_info_cnt;
            __u32           line_info_rec_size;
            __aligned_u64   line_info;
            __u32           line_info_cnt;
            __u32           attach_btf_id;
            union {
                __u32       attach_prog_fd;
                __u32       attach_btf_obj_fd;
            };
            __u32           core_relo_cnt;
            __aligned_u64   fd_array;
            __aligned_u64   core_relos;
            __u32           core_relo_rec_size;
            __u32           log_true_size;   /* output, Linux 6.4+ */
        };
    """

    _fields_ = [
        ("prog_type", c_u32),
        ("insn_cnt", c_u32),
        ("insns", c_u64),
        ("license", c_u64),
        ("log_level", c_u32),
        ("log_size", c_u32),
        ("log_buf", c_u64),
        ("kern_version", c_u32),
        ("prog_flags", c_u32),
        ("prog_name", ctypes.c_char * OBJ_NAME_LEN),
        ("prog_ifindex", c_u32),
        ("expected_attach_type", c_u32),
        ("prog_btf_fd", c_u32),
        ("func_info_rec_size", c_u32),
        ("func_info", c_u64),
        ("func_info_cnt", c_u32),
        ("line_info_rec_size", c_u32),
        ("line_info", c_u64),
        ("line_info_cnt", c_u32),
        ("attach_btf_id", c_u32),
        ("attach_btf_obj_fd", c_u32),
        ("core_relo_cnt", c_u32),
        ("fd_array", c_u64),
        ("core_relos", c_u64),
        ("core_relo_rec_size", c_u32),
        ("log_true_size", c_u32),
    ]


class ObjAttr(ctypes.Structure):
    """BPF_OBJ_PIN / BPF_OBJ_GET::

        struct { /* anonymous struct used by BPF_OBJ_* commands */
            __aligned_u64   pathname;
            __u32           bpf_fd;
            __u32           file_flags;
        };
    """

    _fields_ = [("pathname", c_u64), ("bpf_fd", c_u32), ("file_flags", c_u32)]


class InfoAttr(ctypes.Structure):
    """BPF_OBJ_GET_INFO_BY_FD::

        struct { /* anonymous struct used by BPF_OBJ_GET_INFO_BY_FD */
            __u32           bpf_fd;
            __u32           info_len;
            __aligned_u64   info;
        } info;
    """

    _fields_ = [("bpf_fd", c_u32), ("info_len", c_u32), ("info", c_u64)]


class RawTracepointAttr(ctypes.Structure):
    """BPF_RAW_TRACEPOINT_OPEN::

        struct { /* anonymous struct used by BPF_RAW_TRACEPOINT_OPEN command */
            __u64 name;
            __u32 prog_fd;
        } raw_tracepoint;
    """

    _fields_ = [("name", c_u64), ("prog_fd", c_u32), ("_pad", c_u32)]


class BtfLoadAttr(ctypes.Structure):
    """BPF_BTF_LOAD::

        struct { /* anonymous struct for BPF_BTF_LOAD */
            __aligned_u64   btf;
            __aligned_u64   btf_log_buf;
            __u32           btf_size;
            __u32           btf_log_size;
            __u32           btf_log_level;
            __u32           btf_log_true_size;   /* output, Linux 6.4+ */
        };
    """

    _fields_ = [
        ("btf", c_u64),
        ("btf_log_buf", c_u64),
        ("btf_size", c_u32),
        ("btf_log_size", c_u32),
        ("btf_log_level", c_u32),
        ("btf_log_true_size", c_u32),
    ]


class LinkCreateAttr(ctypes.Structure):
    """BPF_LINK_CREATE (the members bpfobj uses)::

        struct { /* struct used by BPF_LINK_CREATE command */
            union {
                __u32   prog_fd;
                __u32   map_fd;
            };
            union {
                __u32   target_fd;
                __u32   target_ifindex;
            };
            __u32       attach_type;
            __u32       flags;
            union {
                __u32   target_btf_id;
                struct {
                    __u64   bpf_cookie;
                } perf_event;
                struct {
                    __u32   target_btf_id;
                    __u64   cookie;      /* at offset 24 */
                } tracing;
                ...
            };
        } link_create;
    """

    _fields_ = [
        ("prog_fd", c_u32),
        ("target_fd", c_u32),
        ("attach_type", c_u32),
        ("flags", c_u32),
        ("target_btf_id", c_u32),  # perf_event.bpf_cookie shares this slot (u64)
        ("_pad", c_u32),
        ("cookie", c_u64),  # tracing.cookie
    ]


class LinkDetachAttr(ctypes.Structure):
    """BPF_LINK_DETACH / BPF_MAP_FREEZE (a single fd)::

        struct { __u32 link_fd; } link_detach;
        struct { __u32 map_fd; } (BPF_MAP_FREEZE)
    """

    _fields_ = [("fd", c_u32)]


# ---------------------------------------------------------------------------
# Info structures (BPF_OBJ_GET_INFO_BY_FD output)
# ---------------------------------------------------------------------------


class BpfMapInfo(ctypes.Structure):
    """struct bpf_map_info::

        struct bpf_map_info {
            __u32 type;
            __u32 id;
            __u32 key_size;
            __u32 value_size;
            __u32 max_entries;
            __u32 map_flags;
            char  name[BPF_OBJ_NAME_LEN];
            __u32 ifindex;
            __u32 btf_vmlinux_value_type_id;
            __u64 netns_dev;
            __u64 netns_ino;
            __u32 btf_id;
            __u32 btf_key_type_id;
            __u32 btf_value_type_id;
            __u32 :32;
            __u64 map_extra;
        } __attribute__((aligned(8)));
    """

    _fields_ = [
        ("type", c_u32),
        ("id", c_u32),
        ("key_size", c_u32),
        ("value_size", c_u32),
        ("max_entries", c_u32),
        ("map_flags", c_u32),
        ("name", ctypes.c_char * OBJ_NAME_LEN),
        ("ifindex", c_u32),
        ("btf_vmlinux_value_type_id", c_u32),
        ("netns_dev", c_u64),
        ("netns_ino", c_u64),
        ("btf_id", c_u32),
        ("btf_key_type_id", c_u32),
        ("btf_value_type_id", c_u32),
        ("_pad", c_u32),
        ("map_extra", c_u64),
    ]


class BpfProgInfo(ctypes.Structure):
    """struct bpf_prog_info (the leading members, up to ``btf_id``)::

        struct bpf_prog_info {
            __u32 type;
            __u32 id;
            __u8  tag[BPF_TAG_SIZE];
            __u32 jited_prog_len;
            __u32 xlated_prog_len;
            __aligned_u64 jited_prog_insns;
            __aligned_u64 xlated_prog_insns;
            __u64 load_time;        /* ns since boottime */
            __u32 created_by_uid;
            __u32 nr_map_ids;
            __aligned_u64 map_ids;
            char name[BPF_OBJ_NAME_LEN];
            __u32 ifindex;
            __u32 gpl_compatible:1;
            __u32 :31;
            __u64 netns_dev;
            __u64 netns_ino;
            __u32 nr_jited_ksyms;
            __u32 nr_jited_func_lens;
            __aligned_u64 jited_ksyms;
            __aligned_u64 jited_func_lens;
            __u32 btf_id;
            ...
        } __attribute__((aligned(8)));
    """

    _fields_ = [
        ("type", c_u32),
        ("id", c_u32),
        ("tag", ctypes.c_uint8 * 8),
        ("jited_prog_len", c_u32),
        ("xlated_prog_len", c_u32),
        ("jited_prog_insns", c_u64),
        ("xlated_prog_insns", c_u64),
        ("load_time", c_u64),
        ("created_by_uid", c_u32),
        ("nr_map_ids", c_u32),
        ("map_ids", c_u64),
        ("name", ctypes.c_char * OBJ_NAME_LEN),
        ("ifindex", c_u32),
        ("gpl_compatible", c_u32),
        ("netns_dev", c_u64),
        ("netns_ino", c_u64),
        ("nr_jited_ksyms", c_u32),
        ("nr_jited_func_lens", c_u32),
        ("jited_ksyms", c_u64),
        ("jited_func_lens", c_u64),
        ("btf_id", c_u32),
        ("_pad", c_u32),
    ]


class BpfLinkInfo(ctypes.Structure):
    """struct bpf_link_info (the common head)::

        struct bpf_link_info {
            __u32 type;
            __u32 id;
            __u32 prog_id;
            union { ... };
        } __attribute__((aligned(8)));
    """

    _fields_ = [("type", c_u32), ("id", c_u32), ("prog_id", c_u32), ("_pad", c_u32)]


class PerfEventAttr(ctypes.Structure):
    """struct perf_event_attr up to ``sig_data`` (PERF_ATTR_SIZE_VER7 = 128 bytes)::

        struct perf_event_attr {
            __u32   type;
            __u32   size;
            __u64   config;
            union { __u64 sample_period; __u64 sample_freq; };
            __u64   sample_type;
            __u64   read_format;
            __u64   disabled : 1, inherit : 1, ... watermark : 1 (bit 14), ...;
            union { __u32 wakeup_events; __u32 wakeup_watermark; };
            __u32   bp_type;
            union { __u64 bp_addr; __u64 kprobe_func; __u64 uprobe_path; __u64 config1; };
            union { __u64 bp_len; __u64 kprobe_addr; __u64 probe_offset; __u64 config2; };
            __u64   branch_sample_type;
            __u64   sample_regs_user;
            __u32   sample_stack_user;
            __s32   clockid;
            __u64   sample_regs_intr;
            __u32   aux_watermark;
            __u16   sample_max_stack;
            __u16   __reserved_2;
            __u32   aux_sample_size;
            __u32   __reserved_3;
            __u64   sig_data;
            /* __u64 config3 (VER8) is not used and not sent */
        };
    """

    _fields_ = [
        ("type", c_u32),
        ("size", c_u32),
        ("config", c_u64),
        ("sample_period", c_u64),
        ("sample_type", c_u64),
        ("read_format", c_u64),
        ("flags", c_u64),
        ("wakeup", c_u32),  # wakeup_events, or wakeup_watermark with FLAG_WATERMARK
        ("bp_type", c_u32),
        ("config1", c_u64),
        ("config2", c_u64),
        ("branch_sample_type", c_u64),
        ("sample_regs_user", c_u64),
        ("sample_stack_user", c_u32),
        ("clockid", c_s32),
        ("sample_regs_intr", c_u64),
        ("aux_watermark", c_u32),
        ("sample_max_stack", ctypes.c_uint16),
        ("_reserved_2", ctypes.c_uint16),
        ("aux_sample_size", c_u32),
        ("_reserved_3", c_u32),
        ("sig_data", c_u64),
    ]

    FLAG_DISABLED = 1 << 0
    FLAG_INHERIT = 1 << 1
    FLAG_WATERMARK = 1 << 14


assert ctypes.sizeof(PerfEventAttr) == 128
assert ctypes.sizeof(ProgLoadAttr) == 144
assert ctypes.sizeof(MapCreateAttr) == 72


# ---------------------------------------------------------------------------
# The single call site and error mapping
# ---------------------------------------------------------------------------


def _bpf(cmd: Cmd, attr: ctypes.Structure, *, what: str = "",
         on_error: Callable[[int], BaseException | None] | None = None) -> int:
    """Issue bpf(cmd, &attr, sizeof(attr)); return the (non-negative) result.

    EINTR is retried until it stops; EAGAIN a few times.  On failure
    ``on_error(errno)`` may supply a more specific exception; otherwise EPERM
    and EACCES become :class:`PermissionDeniedError`, the rest
    :class:`SyscallError`.
    """
    size = ctypes.sizeof(attr)
    ref = ctypes.byref(attr)
    again = 0
    while True:
        ret = _syscall(NR_BPF, ctypes.c_long(int(cmd)), ref, ctypes.c_long(size))
        if ret >= 0:
            return ret
        err = ctypes.get_errno()
        if err == _errno.EINTR:
            continue
        if err == _errno.EAGAIN and again < _EAGAIN_RETRIES:
            again += 1
            continue
        if err == _errno.EPERM and lift_memlock_limit():
            continue
        raise _error(f"BPF_{cmd.name}", err, what, on_error)


def lift_memlock_limit() -> bool:
    """Raise RLIMIT_MEMLOCK to unlimited; True if it was limited and now is not.

    Kernels before 5.11 charge the memory of BPF maps and programs to the
    locked-memory limit of the process instead of its memory cgroup, and
    answer EPERM once it is used up, even to root.  A refused bpf() call is
    retried once after this, which a privileged process may do; a later
    EPERM is a real refusal.  Newer kernels leave the limit alone.
    """
    if kernel_version() >= (5, 11):
        return False
    soft, hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    if soft == hard == resource.RLIM_INFINITY:
        return False
    try:
        resource.setrlimit(resource.RLIMIT_MEMLOCK, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    except (ValueError, OSError):
        return False
    return True


def _error(command: str, err: int, what: str,
           on_error: Callable[[int], BaseException | None] | None,
           hint: str = _PERM_HINT) -> BaseException:
    if on_error is not None:
        exc = on_error(err)
        if exc is not None:
            return exc
    if err in (_errno.EPERM, _errno.EACCES):
        detail = f"{what}: {hint}" if what else hint
        return PermissionDeniedError(command, err, detail)
    if err == _errno.ENOSYS:
        if ABI is None:  # the call went out as syscall(-1)
            return _unknown_arch()
        return NotSupportedError(command, "3.18", "the bpf() syscall is not available")
    return SyscallError(command, err, what)


CAP_SYS_ADMIN = 21
CAP_PERFMON = 38
CAP_BPF = 39


def effective_capabilities() -> int:
    """The CapEff mask of this process (from /proc/self/status)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    return 0


def has_bpf_capabilities() -> bool:
    """CAP_SYS_ADMIN, or CAP_BPF together with CAP_PERFMON."""
    caps = effective_capabilities()
    return bool(caps >> CAP_SYS_ADMIN & 1) or bool(caps >> CAP_BPF & 1 and caps >> CAP_PERFMON & 1)


# Where a type first appeared, for NotSupportedError messages.
_MAP_TYPE_SINCE = {
    MapType.LRU_HASH: "4.10", MapType.LPM_TRIE: "4.11", MapType.ARRAY_OF_MAPS: "4.12",
    MapType.QUEUE: "4.20", MapType.STACK: "4.20", MapType.SK_STORAGE: "5.2",
    MapType.RINGBUF: "5.8", MapType.INODE_STORAGE: "5.10", MapType.TASK_STORAGE: "5.11",
    MapType.BLOOM_FILTER: "5.16", MapType.USER_RINGBUF: "6.1", MapType.CGRP_STORAGE: "6.2",
    MapType.ARENA: "6.9",
}
_PROG_TYPE_SINCE = {
    ProgType.RAW_TRACEPOINT: "4.17", ProgType.TRACING: "5.5", ProgType.EXT: "5.6",
    ProgType.LSM: "5.7", ProgType.SYSCALL: "5.14",
}
# The helpers sidetrace's programs call (enum bpf_func_id), by name and the
# kernel that brought them: a verifier that does not know one says so by id
# only.
HELPERS = {
    1: ("bpf_map_lookup_elem", "3.19"), 2: ("bpf_map_update_elem", "3.19"),
    3: ("bpf_map_delete_elem", "3.19"), 5: ("bpf_ktime_get_ns", "4.1"),
    6: ("bpf_trace_printk", "4.1"), 7: ("bpf_get_prandom_u32", "4.1"),
    8: ("bpf_get_smp_processor_id", "4.1"), 14: ("bpf_get_current_pid_tgid", "4.2"),
    15: ("bpf_get_current_uid_gid", "4.2"), 16: ("bpf_get_current_comm", "4.2"),
    25: ("bpf_perf_event_output", "4.4"), 35: ("bpf_get_current_task", "4.8"),
    112: ("bpf_probe_read_user", "5.5"), 113: ("bpf_probe_read_kernel", "5.5"),
    114: ("bpf_probe_read_user_str", "5.5"), 115: ("bpf_probe_read_kernel_str", "5.5"),
    125: ("bpf_ktime_get_boot_ns", "5.8"), 156: ("bpf_task_storage_get", "5.11"),
    157: ("bpf_task_storage_delete", "5.11"), 158: ("bpf_get_current_task_btf", "5.11"),
    175: ("bpf_task_pt_regs", "5.15"), 181: ("bpf_loop", "5.17"),
    # The last helpers added (kernel functions came after them): the tests
    # call one to meet a kernel that predates a helper.
    210: ("bpf_cgrp_storage_get", "6.2"), 211: ("bpf_cgrp_storage_delete", "6.2"),
}
# "invalid func unknown#175" (an id past the kernel's last helper) or
# "unknown func bpf_x#N" (a helper this program type may not call), after
# "<insn>: (85) call ...#N" naming the instruction.
_UNKNOWN_HELPER = re.compile(r"^(?:(\d+): \(85\) call \S+#\d+\n)?(?:invalid|unknown) func \S*#(\d+)$",
                             re.M)


def kernel_version(release: str | None = None) -> tuple[int, ...]:
    """(major, minor, patch) of the running kernel (or of ``release``)."""
    found = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", release or platform.release())
    return tuple(int(x or 0) for x in found.groups()) if found else (0, 0, 0)


def _missing_from_log(log: str, label: str,
                      running: tuple[int, ...] | None = None) -> BpfError | None:
    """The typed error for a program the verifier refused for want of a kernel feature.

    A call of the CO-RE poison helper is a kernel field or type this kernel's
    BTF lacks; an unknown helper the kernel predates is a missing helper.  A
    helper the kernel has but refuses for this program type stays a
    verifier error (the log says why).
    """
    found = _UNKNOWN_HELPER.search(log)
    if found is None:
        return None
    insn, helper = found.group(1), int(found.group(2))
    if helper == CORE_POISON_HELPER:
        where = f" at instruction {insn}" if insn else ""
        return CoreRelocationError(
            f"program {label!r}{where} uses a kernel field or type this kernel does not have "
            "(a CO-RE relocation that did not resolve)")
    name, since = HELPERS.get(helper, (f"helper #{helper}", ""))
    if since and (running or kernel_version()) >= kernel_version(since):
        return None
    return NotSupportedError(f"the BPF helper {name}", since, f"program {label!r}")


def _type_name(enum_cls: type, value: int) -> str:
    try:
        return enum_cls(value).name
    except ValueError:
        return str(value)


# ---------------------------------------------------------------------------
# Maps
# ---------------------------------------------------------------------------


def map_create(map_type: int, key_size: int, value_size: int, max_entries: int, *,
               flags: int = 0, name: str = "", inner_map_fd: int = 0, btf_fd: int = 0,
               btf_key_type_id: int = 0, btf_value_type_id: int = 0,
               map_extra: int = 0,
               type_supported: Callable[[int], bool] | None = None) -> int:
    """BPF_MAP_CREATE; returns the new map fd.

    With ``type_supported`` (a probe: can a minimal map of this type be
    created?), EINVAL is turned into :class:`NotSupportedError` when the probe
    says the kernel lacks the type.
    """
    attr = MapCreateAttr(
        map_type=map_type, key_size=key_size, value_size=value_size,
        max_entries=max_entries, map_flags=flags, inner_map_fd=inner_map_fd,
        map_name=_name_field(name), btf_fd=btf_fd, btf_key_type_id=btf_key_type_id,
        btf_value_type_id=btf_value_type_id, map_extra=map_extra,
    )
    label = f"map {name!r}" if name else "map"
    tname = _type_name(MapType, map_type)

    def on_error(err: int) -> BaseException | None:
        if err == _errno.EINVAL and type_supported is not None:
            if not type_supported(map_type):
                return NotSupportedError(
                    f"map type {tname}", _MAP_TYPE_SINCE.get(map_type, ""), label)
        return None

    return _bpf(Cmd.MAP_CREATE, attr, what=f"{label} ({tname})", on_error=on_error)


def _elem(cmd: Cmd, map_fd: int, key: ctypes.Array | None, value: ctypes.Array | None,
          flags: int, what: str) -> int:
    attr = MapElemAttr(map_fd=map_fd, key=_addr(key), value=_addr(value), flags=flags)
    return _bpf(cmd, attr, what=what)


def map_lookup_elem(map_fd: int, key: ctypes.Array, value: ctypes.Array, flags: int = 0) -> bool:
    """BPF_MAP_LOOKUP_ELEM into ``value``; False when the key is absent (ENOENT)."""
    try:
        _elem(Cmd.MAP_LOOKUP_ELEM, map_fd, key, value, flags, "")
    except SyscallError as exc:
        if exc.errno == _errno.ENOENT:
            return False
        raise
    return True


def map_update_elem(map_fd: int, key: ctypes.Array, value: ctypes.Array, flags: int = 0) -> None:
    """BPF_MAP_UPDATE_ELEM (flags: BPF_ANY, BPF_NOEXIST, BPF_EXIST)."""
    _elem(Cmd.MAP_UPDATE_ELEM, map_fd, key, value, flags, "")


def map_delete_elem(map_fd: int, key: ctypes.Array) -> bool:
    """BPF_MAP_DELETE_ELEM; False when the key was absent (ENOENT)."""
    try:
        _elem(Cmd.MAP_DELETE_ELEM, map_fd, key, None, 0, "")
    except SyscallError as exc:
        if exc.errno == _errno.ENOENT:
            return False
        raise
    return True


def map_get_next_key(map_fd: int, key: ctypes.Array | None, next_key: ctypes.Array) -> bool:
    """BPF_MAP_GET_NEXT_KEY; ``key=None`` asks for the first key.  False at the end."""
    try:
        _elem(Cmd.MAP_GET_NEXT_KEY, map_fd, key, next_key, 0, "")
    except SyscallError as exc:
        if exc.errno == _errno.ENOENT:
            return False
        raise
    return True


def map_lookup_batch(map_fd: int, in_batch: ctypes.Array | None, out_batch: ctypes.Array,
                     keys: ctypes.Array, values: ctypes.Array, count: int) -> tuple[int, bool]:
    """BPF_MAP_LOOKUP_BATCH; returns ``(filled, done)``.

    ``done`` is True when the kernel reported ENOENT (no more elements after
    this batch); ``filled`` elements were written in either case.
    """
    attr = MapBatchAttr(in_batch=_addr(in_batch), out_batch=_addr(out_batch),
                        keys=_addr(keys), values=_addr(values), count=count, map_fd=map_fd)
    try:
        _bpf(Cmd.MAP_LOOKUP_BATCH, attr)
    except SyscallError as exc:
        if exc.errno == _errno.ENOENT:
            return attr.count, True
        raise
    return attr.count, False


def map_freeze(map_fd: int) -> None:
    """BPF_MAP_FREEZE: no more writes from user space."""
    _bpf(Cmd.MAP_FREEZE, LinkDetachAttr(fd=map_fd))


# ---------------------------------------------------------------------------
# Programs and BTF
# ---------------------------------------------------------------------------


def prog_load(prog_type: int, insns: bytes, license: str, *, name: str = "",
              expected_attach_type: int = 0, attach_btf_id: int = 0,
              attach_btf_obj_fd: int = 0, kern_version: int = 0, prog_flags: int = 0,
              btf_fd: int = 0, func_info: bytes = b"", func_info_rec_size: int = 8,
              line_info: bytes = b"", line_info_rec_size: int = 16,
              log_level: int = 0, log_size: int = 0,
              type_supported: Callable[[int], bool] | None = None,
              log_sink: Callable[[str], None] | None = None) -> int:
    """BPF_PROG_LOAD; returns the program fd.

    The first attempt runs with ``log_level`` (0 by default: no log, fastest);
    ``log_sink``, if given, gets the log of a load that succeeds (e.g. the
    verifier's statistics at BPF_LOG_STATS).
    On failure the load is repeated with a verifier log (level >= 1), growing
    the buffer while the kernel answers ENOSPC, and a :class:`VerifierError`
    naming the program carries the log.  EPERM is a
    :class:`PermissionDeniedError`; EINVAL with an empty log is a
    :class:`NotSupportedError` when the ``type_supported`` probe (if given)
    says the kernel lacks the program type.
    """
    if len(insns) % 8:
        raise BpfError(f"program {name!r}: instruction bytes not a multiple of 8")
    insn_buf = _cbuf(insns)
    lic_buf = ctypes.create_string_buffer(license.encode("ascii", "replace"))
    fi_buf = _cbuf(func_info) if func_info else None
    li_buf = _cbuf(line_info) if line_info else None
    label = name or _type_name(ProgType, prog_type)

    def attempt(level: int, size: int) -> tuple[int, int, str, int]:
        log_buf = ctypes.create_string_buffer(size) if level and size else None
        attr = ProgLoadAttr(
            prog_type=prog_type, insn_cnt=len(insns) // 8, insns=_addr(insn_buf),
            license=_addr(lic_buf), log_level=level if log_buf is not None else 0,
            log_size=size if log_buf is not None else 0, log_buf=_addr(log_buf),
            kern_version=kern_version, prog_flags=prog_flags, prog_name=_name_field(name),
            expected_attach_type=expected_attach_type, prog_btf_fd=btf_fd,
            attach_btf_id=attach_btf_id, attach_btf_obj_fd=attach_btf_obj_fd,
        )
        if fi_buf is not None:
            attr.func_info_rec_size = func_info_rec_size
            attr.func_info = _addr(fi_buf)
            attr.func_info_cnt = len(func_info) // func_info_rec_size
        if li_buf is not None:
            attr.line_info_rec_size = line_info_rec_size
            attr.line_info = _addr(li_buf)
            attr.line_info_cnt = len(line_info) // line_info_rec_size
        again = 0
        while True:
            ret = _syscall(NR_BPF, ctypes.c_long(int(Cmd.PROG_LOAD)), ctypes.byref(attr),
                           ctypes.c_long(ctypes.sizeof(attr)))
            if ret >= 0:
                log = log_buf.value.decode("utf-8", "replace") if log_buf is not None else ""
                return ret, 0, log, 0
            err = ctypes.get_errno()
            if err == _errno.EINTR:
                continue
            if err == _errno.EAGAIN and again < _EAGAIN_RETRIES:
                again += 1
                continue
            log = log_buf.value.decode("utf-8", "replace") if log_buf is not None else ""
            return -1, err, log, attr.log_true_size

    level = log_level
    size = log_size or (256 * 1024 if log_level else 0)
    fd, err, log, true_size = attempt(level, size)
    if fd < 0 and err == _errno.EPERM and lift_memlock_limit():
        fd, err, log, true_size = attempt(level, size)
    if fd >= 0:
        if log_sink is not None:
            log_sink(log)
        return fd
    if err == _errno.EPERM:
        if has_bpf_capabilities():
            hint = ("the process already has the BPF capabilities, so the kernel refuses "
                    f"this program type or attach point ({_type_name(ProgType, prog_type)}, "
                    f"attach type {_type_name(AttachType, expected_attach_type)}); "
                    "fentry/fexit need BPF trampolines, which lockdown or a kernel without "
                    "ftrace direct calls forbids")
        else:
            hint = _PERM_HINT
        raise PermissionDeniedError("BPF_PROG_LOAD", err, f"program {label!r}: {hint}")
    # Repeat with a verifier log, growing it while the kernel says it was too small.
    level = max(level, 1)
    size = max(size, 256 * 1024)
    while True:
        fd, err2, log, true_size = attempt(level, size)
        if fd >= 0:
            # Loaded this time (a transient failure); keep it.
            return fd
        if err2 == _errno.ENOSPC and size < (1 << 28):
            size = max(size * 4, true_size + 1)
            continue
        err = err2
        break
    if err == _errno.EINVAL and not log.strip() and type_supported is not None:
        if not type_supported(prog_type):
            raise NotSupportedError(
                f"program type {_type_name(ProgType, prog_type)}",
                _PROG_TYPE_SINCE.get(prog_type, ""), f"program {label!r}")
    if err == _errno.ENOSPC and not log:
        log = "(verifier log exceeded the largest buffer bpfobj offers)"
    missing = _missing_from_log(log, label)
    if missing is not None:
        raise missing from VerifierError(label, err, log)
    raise VerifierError(label, err, log)


def btf_load(data: bytes, *, log_level: int = 0) -> int:
    """BPF_BTF_LOAD; returns the BTF fd.  A failure carries the BTF verifier log."""
    btf_buf = _cbuf(data)

    def attempt(level: int, size: int) -> tuple[int, int, str]:
        log_buf = ctypes.create_string_buffer(size) if level else None
        attr = BtfLoadAttr(btf=_addr(btf_buf), btf_log_buf=_addr(log_buf), btf_size=len(data),
                           btf_log_size=size if level else 0, btf_log_level=level)
        try:
            return _bpf(Cmd.BTF_LOAD, attr, what="BTF", on_error=lambda e: _Raw(e)), 0, ""
        except _Raw as raw:
            text = log_buf.value.decode("utf-8", "replace") if log_buf is not None else ""
            return -1, raw.err, text

    fd, err, log = attempt(log_level, 1 << 20 if log_level else 0)
    if fd >= 0:
        return fd
    if err not in (_errno.EPERM,):
        size = 1 << 20
        while True:
            fd2, err2, log = attempt(1, size)
            if fd2 >= 0:
                return fd2
            if err2 == _errno.ENOSPC and size < (1 << 26):
                size *= 4
                continue
            err = err2
            break
    if err in (_errno.EPERM, _errno.EACCES):
        raise PermissionDeniedError("BPF_BTF_LOAD", err, _PERM_HINT)
    tail = "\n".join(log.rstrip().splitlines()[-20:])
    raise SyscallError("BPF_BTF_LOAD", err, f"kernel rejected BTF; log tail:\n{tail}" if tail else "")


class _Raw(Exception):
    """Internal: carries a bare errno out of :func:`_bpf` for local handling."""

    def __init__(self, err: int) -> None:
        super().__init__(err)
        self.err = err


# ---------------------------------------------------------------------------
# Pinning and info
# ---------------------------------------------------------------------------


def obj_pin(fd: int, path: str) -> None:
    """BPF_OBJ_PIN: pin ``fd`` at ``path`` (on a bpffs)."""
    pbuf = ctypes.create_string_buffer(os.fsencode(path))
    _bpf(Cmd.OBJ_PIN, ObjAttr(pathname=_addr(pbuf), bpf_fd=fd), what=path)


def obj_get(path: str, *, file_flags: int = 0) -> int:
    """BPF_OBJ_GET: open the object pinned at ``path``; returns its fd."""
    pbuf = ctypes.create_string_buffer(os.fsencode(path))
    return _bpf(Cmd.OBJ_GET, ObjAttr(pathname=_addr(pbuf), file_flags=file_flags), what=path)


def obj_get_info_by_fd(fd: int, info: ctypes.Structure) -> ctypes.Structure:
    """BPF_OBJ_GET_INFO_BY_FD into ``info`` (a BpfMapInfo/BpfProgInfo/BpfLinkInfo)."""
    attr = InfoAttr(bpf_fd=fd, info_len=ctypes.sizeof(info), info=ctypes.addressof(info))
    _bpf(Cmd.OBJ_GET_INFO_BY_FD, attr)
    return info


# ---------------------------------------------------------------------------
# Links
# ---------------------------------------------------------------------------


def link_create(prog_fd: int, target_fd: int, attach_type: int, *, target_btf_id: int = 0,
                flags: int = 0, cookie: int = 0) -> int:
    """BPF_LINK_CREATE; returns the link fd (closing it detaches)."""
    attr = LinkCreateAttr(prog_fd=prog_fd, target_fd=target_fd, attach_type=attach_type,
                          flags=flags, target_btf_id=target_btf_id)
    if cookie:
        if attach_type == AttachType.PERF_EVENT:
            attr.target_btf_id = cookie & 0xFFFFFFFF
            attr._pad = cookie >> 32
        else:
            attr.cookie = cookie
    return _bpf(Cmd.LINK_CREATE, attr, what=f"attach type {_type_name(AttachType, attach_type)}")


def link_detach(link_fd: int) -> None:
    """BPF_LINK_DETACH: detach the program while the link fd stays open."""
    _bpf(Cmd.LINK_DETACH, LinkDetachAttr(fd=link_fd))


def raw_tracepoint_open(name: str | None, prog_fd: int) -> int:
    """BPF_RAW_TRACEPOINT_OPEN; ``name=None`` for tracing (fentry/tp_btf) programs."""
    nbuf = ctypes.create_string_buffer(name.encode()) if name else None
    return _bpf(Cmd.RAW_TRACEPOINT_OPEN, RawTracepointAttr(name=_addr(nbuf), prog_fd=prog_fd),
                what=name or "")


# ---------------------------------------------------------------------------
# perf_event_open and ioctls
# ---------------------------------------------------------------------------


def perf_event_open(attr: PerfEventAttr, pid: int, cpu: int, group_fd: int = -1,
                    flags: int = PERF_FLAG_FD_CLOEXEC, *, what: str = "") -> int:
    """perf_event_open(2); returns the event fd (CLOEXEC by default)."""
    attr.size = ctypes.sizeof(PerfEventAttr)
    again = 0
    while True:
        ret = _syscall(NR_PERF_EVENT_OPEN, ctypes.byref(attr), ctypes.c_long(pid),
                       ctypes.c_long(cpu), ctypes.c_long(group_fd), ctypes.c_long(flags))
        if ret >= 0:
            return ret
        err = ctypes.get_errno()
        if err == _errno.EINTR:
            continue
        if err == _errno.EAGAIN and again < _EAGAIN_RETRIES:
            again += 1
            continue
        raise _error("perf_event_open", err, what, None, hint=_PERF_HINT)


def _ioctl(fd: int, request: int, arg: int, name: str) -> None:
    while True:
        try:
            fcntl.ioctl(fd, request, arg)
            return
        except InterruptedError:
            continue
        except OSError as exc:
            raise _error(name, exc.errno or 0, "", None, hint=_PERF_HINT) from None


def perf_event_enable(fd: int) -> None:
    """ioctl(PERF_EVENT_IOC_ENABLE)."""
    _ioctl(fd, arch_abi().perf_ioc_enable, 0, "PERF_EVENT_IOC_ENABLE")


def perf_event_disable(fd: int) -> None:
    """ioctl(PERF_EVENT_IOC_DISABLE)."""
    _ioctl(fd, arch_abi().perf_ioc_disable, 0, "PERF_EVENT_IOC_DISABLE")


def perf_event_set_bpf(fd: int, prog_fd: int) -> None:
    """ioctl(PERF_EVENT_IOC_SET_BPF, prog_fd): run the program on this event."""
    _ioctl(fd, arch_abi().perf_ioc_set_bpf, prog_fd, "PERF_EVENT_IOC_SET_BPF")


def close_fd(fd: int) -> None:
    """Close a kernel object fd, ignoring EBADF (already closed)."""
    try:
        os.close(fd)
    except OSError as exc:
        if exc.errno != _errno.EBADF:
            raise
