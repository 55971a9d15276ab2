"""The layouts shared with BPF, declared once with construct.

These declarations are the source of truth on the Python side, mirrored in
bpfobj/bpf/include/sidetrace_events.h (the tracer's records) and
bpfobj/bpf/include/monitor_maps.h (the monitor's map values); tests compare
every offset with the structs the committed objects' BTF describes.  The running agent does not
import this module (nor construct): ``python -m agent._fastdecode write``
derives a ``struct`` format from each declaration into the generated module
agent/_event_layout.py, and a unit test fails when that module is stale.
"""

from __future__ import annotations

import construct as cs

EVENT_HEADER = cs.Struct(
    "kind" / cs.Int32ul,
    "ts_ns" / cs.Int64ul,
    "conn_id" / cs.Int64ul,
    "ret" / cs.Int64sl,
    "bytes_tx" / cs.Int64ul,
    "bytes_rx" / cs.Int64ul,
    "tgid" / cs.Int32ul,
    "tid" / cs.Int32ul,
    "fd" / cs.Int32sl,
    "tcp_seq" / cs.Int32ul,
    "payload_len" / cs.Int32ul,
    "syscall" / cs.Int16ul,
    "direction" / cs.Int8ul,
    "role" / cs.Int8ul,
    "family" / cs.Int16ul,
    "sport" / cs.Int16ul,
    "dport" / cs.Int16ul,
    "l4_proto" / cs.Int8ul,
    "flags" / cs.Int8ul,
    "saddr" / cs.Bytes(16),
    "daddr" / cs.Bytes(16),
    "comm" / cs.Bytes(16),
    "app_proto" / cs.Int16ul,
    "tls" / cs.Int8ul,
    "tls_version" / cs.Int8ul,
    "shed" / cs.Int32ul,
    "xflags" / cs.Int16ul,
    "reserved" / cs.Int16ul,
)
EVENT_HEADER.__doc__ = """struct st_event (bpfobj/bpf/include/sidetrace_events.h), 136 bytes, packed to 4:

    struct st_event {
        __u32 kind;            st_u64 ts_ns;      st_u64 conn_id;
        st_s64 ret;            st_u64 bytes_tx;   st_u64 bytes_rx;
        __u32 tgid;            __u32 tid;         __s32 fd;
        __u32 tcp_seq;         __u32 payload_len;
        __u16 syscall;         __u8 direction;    __u8 role;
        __u16 family;          __u16 sport;       __u16 dport;
        __u8 l4_proto;         __u8 flags;
        __u8 saddr[16];        __u8 daddr[16];    char comm[16];
        __u16 app_proto;       __u8 tls;          __u8 tls_version;
        __u32 shed;            __u16 xflags;      __u16 reserved;
    } __attribute__((aligned(4)));

followed by ``payload_len`` payload bytes.
"""

BATCH_HEADER = cs.Struct(
    "kind" / cs.Int32ul,
    "flush_ns" / cs.Int64ul,
    "count" / cs.Int16ul,
    "reason" / cs.Int16ul,
)
BATCH_HEADER.__doc__ = """struct st_batch_hdr (bpfobj/bpf/include/sidetrace_events.h), 16 bytes, packed to 4:

    struct st_batch_hdr {
        __u32 kind;        /* ST_BATCH_KIND */
        st_u64 flush_ns;   /* bpf_ktime_get_ns() when sent */
        __u16 count;       /* events that follow; 0: heartbeat */
        __u16 reason;      /* enum st_flush_reason */
    } __attribute__((aligned(4)));

followed by ``count`` events, each an st_event and its payload padded to 8 bytes.
"""

BUDGET = cs.Struct(
    "interval_ns" / cs.Int64ul,
    "burst_ns" / cs.Int64ul,
    "level" / cs.Int32ul,
    "pad" / cs.Int32ul,
    "tat_ns" / cs.Int64ul,
    "blocked_ns" / cs.Int64ul,
)
BUDGET.__doc__ = """struct st_budget: the `budget` map's one value, written by the agent (load
shedding: at most one unit per interval_ns, burst_ns ahead; level: enum st_budget_level;
tat_ns and blocked_ns are the kernel's, written as 0)."""

SHED_PROC = cs.Struct(
    "exchanges" / cs.Int64ul,
    "connections" / cs.Int64ul,
)
SHED_PROC.__doc__ = "struct st_shed_proc: the `shed_procs` map's value (key: tgid): what was shed of a process."

# Every declaration the generated module carries, under the prefix of its
# constants there (EVENT_HEADER_FORMAT, EVENT_HEADER_NAMES, EVENT_HEADER_SIZE).
DECLARATIONS: dict[str, cs.Struct] = {
    "EVENT_HEADER": EVENT_HEADER,
    "BATCH_HEADER": BATCH_HEADER,
    "BUDGET": BUDGET,
    "SHED_PROC": SHED_PROC,
}
# The C struct each declaration mirrors, as named in the object's BTF.
C_STRUCTS: dict[str, str] = {
    "EVENT_HEADER": "st_event",
    "BATCH_HEADER": "st_batch_hdr",
    "BUDGET": "st_budget",
    "SHED_PROC": "st_shed_proc",
}

# --- the monitor's maps (bpfobj/bpf/include/monitor_maps.h) -------------------

MON_HIST_BUCKETS = 24
MON_MARKS = 64
MON_RETRANS_MARKS = 16
MON_TCP_STATES = 16

MON_MARK = cs.Struct(
    "ts_ns" / cs.Int64ul,
    "oncpu_ns" / cs.Int64ul,
    "wait_ns" / cs.Int64ul,
    "iowait_ns" / cs.Int64ul,
)
MON_MARK.__doc__ = "struct mon_mark: a thread's cumulative times at one of its socket calls (ts_ns)."

MON_THREAD = cs.Struct(
    "tid" / cs.Int32ul,
    "tgid" / cs.Int32ul,
    "seq" / cs.Int32ul,
    "head" / cs.Int32ul,
    "exit_ns" / cs.Int64ul,
    "marks" / cs.Bytes(MON_MARKS * MON_MARK.sizeof()),
)
MON_THREAD.__doc__ = "struct mon_thread: one slot of the mmapped `threads` array; marks[] holds MON_MARKs."

MON_TUPLE = cs.Struct(
    "family" / cs.Int16ul,
    "lport" / cs.Int16ul,
    "rport" / cs.Int16ul,
    "pad" / cs.Int16ul,
    "laddr" / cs.Bytes(16),
    "raddr" / cs.Bytes(16),
)
MON_TUPLE.__doc__ = "struct mon_tuple: a TCP connection from the traced process's side."

MON_TCP = cs.Struct(
    "key" / cs.Bytes(MON_TUPLE.sizeof()),
    "tgid" / cs.Int32ul,
    "srtt_us" / cs.Int32ul,
    "seq" / cs.Int32ul,
    "head" / cs.Int32ul,
    "retransmits" / cs.Int64ul,
    "closed_ns" / cs.Int64ul,
    "retrans_ns" / cs.Array(MON_RETRANS_MARKS, cs.Int64ul),
    "retrans_segs" / cs.Array(MON_RETRANS_MARKS, cs.Int32ul),
)
MON_TCP.__doc__ = "struct mon_tcp: one slot of the mmapped `tcp` array; key is a MON_TUPLE."

MON_SHARED = cs.Struct(
    "last_retransmit_ns" / cs.Int64ul,
    "retransmits" / cs.Int64ul,
)
MON_SHARED.__doc__ = "struct mon_shared: the mmapped `shared` array's one entry."

MON_PROC = cs.Struct(
    "oncpu_ns" / cs.Int64ul,
    "wait_ns" / cs.Int64ul,
    "iowait_ns" / cs.Int64ul,
    "voluntary" / cs.Int64ul,
    "involuntary" / cs.Int64ul,
    "minor_faults" / cs.Int64ul,
    "major_faults" / cs.Int64ul,
    "disk_read_bytes" / cs.Int64ul,
    "disk_write_bytes" / cs.Int64ul,
    "tcp_retransmits" / cs.Int64ul,
    "oom_kills" / cs.Int64ul,
    "wait_hist" / cs.Array(MON_HIST_BUCKETS, cs.Int64ul),
)
MON_PROC.__doc__ = "struct mon_proc: per traced process, one per CPU in the `procs` map."

MON_DISK_KEY = cs.Struct(
    "dev" / cs.Int32ul,
    "op" / cs.Int32ul,
)
MON_DISK_KEY.__doc__ = "struct mon_disk_key: dev is the kernel's dev_t (major << 20 | minor)."

MON_DISK = cs.Struct(
    "ops" / cs.Int64ul,
    "bytes" / cs.Int64ul,
    "time_ns" / cs.Int64ul,
    "hist" / cs.Array(MON_HIST_BUCKETS, cs.Int64ul),
)
MON_DISK.__doc__ = "struct mon_disk: per device and direction, one per CPU in the `disks` map."

MON_HOST = cs.Struct(
    "tcp_retransmits" / cs.Int64ul,
    "tcp_retransmit_fails" / cs.Int64ul,
    "oom_kills" / cs.Int64ul,
    "tcp_transitions" / cs.Array(MON_TCP_STATES * MON_TCP_STATES, cs.Int64ul),
)
MON_HOST.__doc__ = "struct mon_host: host-wide, one per CPU in the `host` map."

# The monitor object's map values (checked against monitor.bpf.o's BTF,
# where each struct is named like its prefix in lower case).
MONITOR_DECLARATIONS: dict[str, cs.Struct] = {
    "MON_MARK": MON_MARK,
    "MON_THREAD": MON_THREAD,
    "MON_TUPLE": MON_TUPLE,
    "MON_TCP": MON_TCP,
    "MON_SHARED": MON_SHARED,
    "MON_PROC": MON_PROC,
    "MON_DISK_KEY": MON_DISK_KEY,
    "MON_DISK": MON_DISK,
    "MON_HOST": MON_HOST,
}
MONITOR_C_STRUCTS: dict[str, str] = {prefix: prefix.lower() for prefix in MONITOR_DECLARATIONS}

# --- the runtime-context object's record (bpfobj/bpf/include/sidetrace_context.h) ----

CTX_EVENT = cs.Struct(
    "kind" / cs.Int32ul,
    "tgid" / cs.Int32ul,
    "tid" / cs.Int32ul,
    "aux" / cs.Int32ul,
    "ts_ns" / cs.Int64ul,
    "a" / cs.Int64ul,
    "b" / cs.Int64ul,
    "c" / cs.Int64ul,
)
CTX_EVENT.__doc__ = """struct st_ctx_event (bpfobj/bpf/include/sidetrace_context.h), 48 bytes:

    struct st_ctx_event {
        __u32 kind;   __u32 tgid;   __u32 tid;   __u32 aux;
        __u64 ts_ns;  __u64 a;      __u64 b;     __u64 c;
    };

one per perf sample of the runtime-context object.
"""

# The runtime-context object's record (checked against sidetrace_context's BTF).
CONTEXT_DECLARATIONS: dict[str, cs.Struct] = {"CTX_EVENT": CTX_EVENT}
CONTEXT_C_STRUCTS: dict[str, str] = {"CTX_EVENT": "st_ctx_event"}

# Everything the generated module carries.
GENERATED: dict[str, cs.Struct] = {**DECLARATIONS, **MONITOR_DECLARATIONS, **CONTEXT_DECLARATIONS}
