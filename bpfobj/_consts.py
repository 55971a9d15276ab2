"""Kernel ABI numbers from <linux/bpf.h> and <linux/perf_event.h>, as IntEnums.

Only the values bpfobj uses are listed; each enum keeps the kernel's numbering.
"""

from __future__ import annotations

import enum


class Cmd(enum.IntEnum):
    """enum bpf_cmd"""

    MAP_CREATE = 0
    MAP_LOOKUP_ELEM = 1
    MAP_UPDATE_ELEM = 2
    MAP_DELETE_ELEM = 3
    MAP_GET_NEXT_KEY = 4
    PROG_LOAD = 5
    OBJ_PIN = 6
    OBJ_GET = 7
    PROG_ATTACH = 8
    PROG_DETACH = 9
    PROG_TEST_RUN = 10
    OBJ_GET_INFO_BY_FD = 15
    RAW_TRACEPOINT_OPEN = 17
    BTF_LOAD = 18
    MAP_LOOKUP_AND_DELETE_ELEM = 21
    MAP_FREEZE = 22
    MAP_LOOKUP_BATCH = 24
    MAP_LOOKUP_AND_DELETE_BATCH = 25
    MAP_UPDATE_BATCH = 26
    MAP_DELETE_BATCH = 27
    LINK_CREATE = 28
    LINK_DETACH = 34


class MapType(enum.IntEnum):
    """enum bpf_map_type"""

    UNSPEC = 0
    HASH = 1
    ARRAY = 2
    PROG_ARRAY = 3
    PERF_EVENT_ARRAY = 4
    PERCPU_HASH = 5
    PERCPU_ARRAY = 6
    STACK_TRACE = 7
    CGROUP_ARRAY = 8
    LRU_HASH = 9
    LRU_PERCPU_HASH = 10
    LPM_TRIE = 11
    ARRAY_OF_MAPS = 12
    HASH_OF_MAPS = 13
    DEVMAP = 14
    SOCKMAP = 15
    CPUMAP = 16
    XSKMAP = 17
    SOCKHASH = 18
    CGROUP_STORAGE = 19
    REUSEPORT_SOCKARRAY = 20
    PERCPU_CGROUP_STORAGE = 21
    QUEUE = 22
    STACK = 23
    SK_STORAGE = 24
    DEVMAP_HASH = 25
    STRUCT_OPS = 26
    RINGBUF = 27
    INODE_STORAGE = 28
    TASK_STORAGE = 29
    BLOOM_FILTER = 30
    USER_RINGBUF = 31
    CGRP_STORAGE = 32
    ARENA = 33


PERCPU_MAP_TYPES = frozenset(
    {MapType.PERCPU_HASH, MapType.PERCPU_ARRAY, MapType.LRU_PERCPU_HASH,
     MapType.PERCPU_CGROUP_STORAGE}
)


class ProgType(enum.IntEnum):
    """enum bpf_prog_type"""

    UNSPEC = 0
    SOCKET_FILTER = 1
    KPROBE = 2
    SCHED_CLS = 3
    SCHED_ACT = 4
    TRACEPOINT = 5
    XDP = 6
    PERF_EVENT = 7
    RAW_TRACEPOINT = 17
    RAW_TRACEPOINT_WRITABLE = 24
    TRACING = 26
    EXT = 28
    LSM = 29
    SYSCALL = 31


class AttachType(enum.IntEnum):
    """enum bpf_attach_type (0 doubles as 'none' for program types without one)"""

    NONE = 0
    TRACE_RAW_TP = 23
    TRACE_FENTRY = 24
    TRACE_FEXIT = 25
    MODIFY_RETURN = 26
    LSM_MAC = 27
    TRACE_ITER = 28
    PERF_EVENT = 41
    TRACE_KPROBE_MULTI = 42
    TRACE_UPROBE_MULTI = 48


class MapFlags(enum.IntFlag):
    """Map creation flags (BPF_F_* for BPF_MAP_CREATE)."""

    NO_PREALLOC = 1 << 0
    NO_COMMON_LRU = 1 << 1
    NUMA_NODE = 1 << 2
    RDONLY = 1 << 3
    WRONLY = 1 << 4
    STACK_BUILD_ID = 1 << 5
    ZERO_SEED = 1 << 6
    RDONLY_PROG = 1 << 7
    WRONLY_PROG = 1 << 8
    CLONE = 1 << 9
    MMAPABLE = 1 << 10


class UpdateFlags(enum.IntEnum):
    """BPF_ANY / BPF_NOEXIST / BPF_EXIST for map updates."""

    ANY = 0
    NOEXIST = 1
    EXIST = 2


class PinType(enum.IntEnum):
    """The ``pinning`` attribute of a BTF-defined map (LIBBPF_PIN_*)."""

    NONE = 0
    BY_NAME = 1


class PseudoSrc(enum.IntEnum):
    """src_reg values of ld_imm64 / call instructions that the loader rewrites."""

    MAP_FD = 1        # BPF_PSEUDO_MAP_FD
    MAP_VALUE = 2     # BPF_PSEUDO_MAP_VALUE
    BTF_ID = 3        # BPF_PSEUDO_BTF_ID
    FUNC = 4          # BPF_PSEUDO_FUNC (ld_imm64 of a callback)
    CALL = 1          # BPF_PSEUDO_CALL (call of a subprogram)
    KFUNC_CALL = 2    # BPF_PSEUDO_KFUNC_CALL


class CoreReloKind(enum.IntEnum):
    """enum bpf_core_relo_kind"""

    FIELD_BYTE_OFFSET = 0
    FIELD_BYTE_SIZE = 1
    FIELD_EXISTS = 2
    FIELD_SIGNED = 3
    FIELD_LSHIFT_U64 = 4
    FIELD_RSHIFT_U64 = 5
    TYPE_ID_LOCAL = 6
    TYPE_ID_TARGET = 7
    TYPE_EXISTS = 8
    TYPE_SIZE = 9
    ENUMVAL_EXISTS = 10
    ENUMVAL_VALUE = 11
    TYPE_MATCHES = 12


# A CO-RE relocation that cannot be resolved turns its instruction into a call
# of this non-existent helper, so the verifier names it (libbpf's convention).
CORE_POISON_HELPER = 0xBAD2310

# perf_event_open ABI
PERF_TYPE_HARDWARE = 0
PERF_TYPE_SOFTWARE = 1
PERF_TYPE_TRACEPOINT = 2
PERF_COUNT_SW_BPF_OUTPUT = 10
PERF_SAMPLE_RAW = 1 << 10
PERF_FLAG_FD_CLOEXEC = 1 << 3
PERF_RECORD_LOST = 2
PERF_RECORD_SAMPLE = 9
