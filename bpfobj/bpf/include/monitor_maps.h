/* sidetrace monitor: layouts of the maps the agent reads (shared with Python).
 *
 * The agent reads these maps periodically (per-process, per-disk and host
 * counters) or, for the two mmapped arrays, once per span (thread marks and
 * TCP connection slots).  The Python declarations in
 * agent/_event_layout_decl.py mirror every struct here; a unit test compares
 * them with the committed object's BTF.
 *
 * Byte order: host (little-endian) for every integer, ports included;
 * addresses are raw network-order bytes.  Times are bpf_ktime_get_ns()
 * (CLOCK_MONOTONIC), the tracer's clock.
 */
#ifndef SIDETRACE_MONITOR_MAPS_H
#define SIDETRACE_MONITOR_MAPS_H

/* log2 histograms: bucket 0 counts values below 2 us, bucket i (1..22)
 * values in [2^i, 2^(i+1)) us, bucket 23 everything from 2^23 us (8.4 s). */
#define MON_HIST_BUCKETS 24

/* ---- per thread: checkpoints at the thread's socket I/O ----
 *
 * Spans begin and end at socket syscalls.  A traced thread gets a slot the
 * first time it sends or receives on a socket (sock_send_length /
 * sock_recv_length, in its own context, just before the syscall returns),
 * and from then on every such call with a positive result appends a
 * checkpoint: its cumulative on-CPU, run-queue wait and block I/O wait
 * times at that instant (kept exact by the scheduler hooks).  The agent,
 * given a span's thread and start/end times, takes the last checkpoint at
 * or before each (the call that read the request, the call that wrote the
 * response) and adds the few microseconds to the syscall's exit as on-CPU
 * time, so it gets the thread's times DURING the span however late it
 * reads them, while the ring still holds the span's first call.
 *
 * Slot of a tid: h = (tid * 2654435761 mod 2^32) >> (32 - MON_THREAD_BITS),
 * then h+1, h+2, h+3 (mod MON_THREAD_SLOTS); the slot whose tid matches.
 * Writers bump seq to odd before touching marks/head and to even after, so
 * a reader retries when seq was odd or changed while it copied. */
#define MON_THREAD_BITS 10
#define MON_THREAD_SLOTS (1 << MON_THREAD_BITS)
#define MON_THREAD_PROBES 4
#define MON_MARKS 64 /* a power of two */

/* A task's state, kept per task by the scheduler hooks. */
enum mon_state {
	MON_UNKNOWN = 0,
	MON_RUNNING = 1,  /* on a CPU: on-CPU time accrues */
	MON_WAITING = 2,  /* runnable, not on a CPU: run-queue wait accrues */
	MON_SLEEPING = 3, /* blocked, not for block I/O */
	MON_IOWAIT = 4,   /* blocked in io_schedule: block I/O wait accrues */
};

struct mon_mark {
	__u64 ts_ns;
	__u64 oncpu_ns;  /* cumulative, at ts_ns */
	__u64 wait_ns;   /* cumulative run-queue wait, at ts_ns */
	__u64 iowait_ns; /* cumulative block I/O wait, at ts_ns */
};

struct mon_thread {
	__u32 tid;      /* owner; 0: free */
	__u32 tgid;
	__u32 seq;      /* odd while a writer is inside */
	__u32 head;     /* marks written since the slot was claimed */
	__u64 exit_ns;  /* when the owner exited (0: alive); reusable 2 s later */
	struct mon_mark marks[MON_MARKS]; /* marks[n % MON_MARKS] is the n-th */
};

/* ---- per TCP connection of a traced process ----
 *
 * Slot of a connection: h = mon_tuple_hash(key) (see monitor.bpf.c, the
 * agent computes the same) and the next MON_TCP_PROBES - 1 slots; the slot
 * whose key matches.  Ports in host order; an IPv4-mapped IPv6 address is
 * stored as AF_INET with the 4 address bytes first, zeros after. */
#define MON_TCP_BITS 12
#define MON_TCP_SLOTS (1 << MON_TCP_BITS)
#define MON_TCP_PROBES 4
#define MON_RETRANS_MARKS 16 /* a power of two */
/* Retransmissions within this long of a mark's first one join that mark (a
 * loss is repaired in bursts), so the marks cover more time under loss. */
#define MON_RETRANS_COALESCE_NS 2000000

struct mon_tuple {
	__u16 family; /* AF_INET or AF_INET6; 0: slot free */
	__u16 lport;
	__u16 rport;
	__u16 pad;
	__u8 laddr[16];
	__u8 raddr[16];
};

struct mon_tcp {
	struct mon_tuple key;
	__u32 tgid;        /* the traced process that owns the socket */
	__u32 srtt_us;     /* smoothed RTT at the owner's latest receive */
	__u32 seq;         /* odd while a writer is inside */
	__u32 head;        /* retransmission marks written */
	__u64 retransmits; /* segments retransmitted on this connection */
	__u64 closed_ns;   /* when it reached TCP_CLOSE (0: open); reusable 5 s later */
	/* the n-th mark at [n % MARKS]: when its first retransmission happened,
	 * and the segments retransmitted from then until the next mark */
	__u64 retrans_ns[MON_RETRANS_MARKS];
	__u32 retrans_segs[MON_RETRANS_MARKS];
};

/* One mmapped entry the agent checks before looking at any connection. */
struct mon_shared {
	__u64 last_retransmit_ns; /* latest retransmission on a traced connection */
	__u64 retransmits;        /* on traced connections since load */
};

/* ---- per traced process (per-CPU hash, key: tgid) ---- */
struct mon_proc {
	__u64 oncpu_ns;
	__u64 wait_ns;      /* run-queue wait */
	__u64 iowait_ns;    /* blocked for block I/O */
	__u64 voluntary;    /* switches out to sleep */
	__u64 involuntary;  /* switches out while runnable (preempted) */
	__u64 minor_faults;
	__u64 major_faults;
	__u64 disk_read_bytes;  /* block I/O submitted by the process */
	__u64 disk_write_bytes;
	__u64 tcp_retransmits;  /* segments, on its sockets */
	__u64 oom_kills;
	__u64 wait_hist[MON_HIST_BUCKETS]; /* run-queue wait per wake-up/preemption */
};

/* ---- per block device and direction (per-CPU hash) ---- */
enum mon_disk_op { MON_DISK_READ = 0, MON_DISK_WRITE = 1, MON_DISK_DISCARD = 2, MON_DISK_FLUSH = 3 };

struct mon_disk_key {
	__u32 dev; /* major << 20 | minor, the kernel's dev_t */
	__u32 op;  /* enum mon_disk_op */
};

struct mon_disk {
	__u64 ops;     /* requests completed */
	__u64 bytes;   /* bytes completed */
	__u64 time_ns; /* summed issue-to-completion time */
	__u64 hist[MON_HIST_BUCKETS]; /* issue-to-completion latency */
};

/* In-flight block requests (LRU hash, key: struct request address). */
struct mon_request {
	__u64 issue_ns; /* block_rq_issue time, 0 until issued */
	__u32 tgid;     /* traced submitter from block_io_start, 0 if none */
	__u32 pad;
};

/* ---- host-wide (per-CPU array of one) ---- */
#define MON_TCP_STATES 16

struct mon_host {
	__u64 tcp_retransmits;     /* segments, every socket */
	__u64 tcp_retransmit_fails;
	__u64 oom_kills;
	__u64 tcp_transitions[MON_TCP_STATES * MON_TCP_STATES]; /* [old * 16 + new] */
};

/* Per-CPU counters (slot `enum mon_counter`): what did not fit, and the
 * slots of the two mmapped arrays taken so far (a slot, once taken, is only
 * ever handed to another owner, never freed: these are the slots in use). */
enum mon_counter {
	MON_CNT_THREAD_SLOTS_FULL = 0, /* a thread found no free slot */
	MON_CNT_TCP_SLOTS_FULL,        /* a connection found no free slot */
	MON_CNT_PROCS_FULL,            /* a process found `procs` full */
	MON_CNT_DISKS_FULL,            /* a device found `disks` full */
	MON_CNT_TASK_STORAGE_FAILED,   /* no per-task storage (memory) */
	MON_CNT_SOCK_STORAGE_FAILED,   /* no per-socket storage (memory) */
	MON_CNT_REQUESTS_UNMATCHED,    /* completions with no issue seen */
	MON_CNT_THREAD_SLOTS_USED,     /* `threads` slots taken */
	MON_CNT_TCP_SLOTS_USED,        /* `tcp` slots taken */
	MON_CNT_MAX,
};

#endif
