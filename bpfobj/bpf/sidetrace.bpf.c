// SPDX-License-Identifier: GPL-2.0
/* sidetrace tracer: socket syscalls of chosen processes -> perf events.
 *
 * Hooks (all plain tracepoints; no kprobes on this kernel):
 *   data:      syscalls/sys_exit_{read,readv,recvfrom,recvmsg,recvmmsg,
 *                                 write,writev,sendto,sendmsg,sendmmsg}
 *   lifecycle: syscalls/sys_exit_{connect,accept,accept4}, syscalls/sys_enter_close
 *   processes: task/task_newtask (fork follow), sched/sched_process_exec
 *              (process names), sched/sched_process_exit
 *   TLS:       uprobes on the TLS library's read/write calls, placed by the
 *              agent (include/sidetrace_tls.bpf.h)
 *
 * Exit-only data path.  The data syscalls need no sys_enter program and no
 * in-flight map: at sys_exit the syscall's arguments are still in the
 * task's saved user register frame (bpf_task_pt_regs(current), read
 * through bpf_regs.h: the argument registers are preserved across the
 * syscall, and arm64 keeps the first one in orig_x0), and the return
 * value is in the tracepoint context.  The TCP sequence number at the start
 * of the syscall is derived at exit: write_seq - ret for writes, copied_seq
 * - ret for reads (copied_seq for MSG_PEEK).  This halves the tracepoint
 * cost (one hook per syscall instead of two) and removes the in-flight map
 * update/lookup/delete entirely.  Caveat: two threads doing I/O on the same
 * TCP socket at the same time can skew the derived sequence number.
 *
 * Per syscall, in order (cheapest rejection first):
 *   1. ret <= 0 and not a reportable error      -> return (no helper call)
 *   2. tgid filter: trace_all ? tgid != agent_tgid : pids[tgid] exists
 *   3. fd -> struct file: current->files->fdt->fd[fd] (BTF pointer walk + 1 read)
 *   4. socket check: file->f_inode->i_mode is S_IFSOCK (else counted, return)
 *   5. conns[inode number] lookup; on a miss the socket is resolved once
 *      (file->private_data->sk, family, protocol, addresses) and cached;
 *      non-inet or non-TCP/UDP sockets are cached as ignored.
 *   6. header + payload built in place at the end of the CPU's batch
 *      buffer; the batch (batch header + events) leaves in ONE perf output
 *      when it is full, when its first event is old, when the agent's
 *      flusher writes zero bytes on that CPU, or at once with batching off
 *      (stale buffer bytes past the last event never leave).
 *
 * Connections are keyed by the socket's sockfs inode number, which is unique
 * per socket (unlike struct sock / struct file addresses, which the slab
 * reuses immediately after a free, so a missed close can't alias a new
 * socket's state).
 *
 * What is reported:
 *   - DATA for every data syscall with ret > 0 on an AF_INET/AF_INET6 TCP or
 *     UDP socket; for ret < 0 (except EAGAIN, EINTR, ERESTART*) only on an
 *     already known connection, without payload.  ret == 0 (EOF) is not
 *     reported.  recvmmsg/sendmmsg: the first message only.
 *   - payload: the first min(ret, max_payload, caller's buffer) bytes,
 *     gathered over the first ST_MAX_IOV iovecs for vectored calls.
 *   - CONN_OPEN on connect() (0 or -EINPROGRESS) and accept()/accept4();
 *     CONN_CLOSE on the close() that drops the last reference to the file.
 *   - PROC_FORK / PROC_EXIT for traced processes (pid mode; in trace_all
 *     mode PROC_EXIT for every process).
 * Not seen: sendfile/splice/io_uring I/O, sockets closed by exit(), exec
 * (O_CLOEXEC), dup2() over the fd or close_range() (no CONN_CLOSE; the
 * LRU map forgets them; the agent learns of exits from PROC_EXIT), 32-bit
 * compat syscalls.  Built for x86_64 and arm64 (bpf_regs.h).
 */
#include "bpf_api.h"
#include "vmlinux_min.h"
#include "bpf_regs.h"
#include "sidetrace_events.h"

char LICENSE[] SEC("license") = "GPL";

#define AF_UNSPEC 0
#define AF_INET 2
#define AF_INET6 10
#define IPPROTO_TCP 6
#define IPPROTO_UDP 17
#define SOCK_STREAM 1
#define SOCK_DGRAM 2
#define S_IFMT 00170000
#define S_IFSOCK 0140000
#define EINTR 4
#define EAGAIN 11
#define EINPROGRESS 115
#define ERESTARTSYS 512
#define ERESTART_RESTARTBLOCK 516
#define MSG_PEEK 2
#define CLONE_THREAD 0x00010000

/* Keep clang from folding a clamp the verifier needs to see. */
#define barrier_var(v) asm volatile("" : "+r"(v))

/* ---- configuration (.rodata, set by the loader before load) ---- */
const volatile __u32 trace_all = 0;     /* 1: trace every process except agent_tgid */
const volatile __u32 agent_tgid = 0;    /* never traced */
const volatile __u32 max_payload = 4096; /* payload bytes per event, clamped to ST_MAX_PAYLOAD */
const volatile __u32 drop_opaque = 1;   /* 1: nothing for OPAQUE connections; 0: header-only events */
/* 1: events wait in the CPU's batch (sent when full, when the oldest is
 * batch_max_age_ns old, or when the agent flushes); 0: each event is sent at
 * once, alone in its batch record.  Only the agent can turn it on: it must
 * run a flusher on every CPU (see on_agent_write). */
const volatile __u32 batching = 0;
const volatile __u64 batch_max_age_ns = 2000000;

/* ---- maps ---- */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);   /* tgid */
	__type(value, __u32); /* enum st_pid_flags */
} pids SEC(".maps");

/* Process names to trace (the agent's --comm): a process whose comm after
 * exec is a key here is added to `pids` by st_sched_process_exec. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 256);
	__type(key, char[ST_COMM_LEN]); /* task->comm, NUL padded */
	__type(value, __u32);
} comms SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64); /* sockfs inode number of the socket */
	__type(value, struct st_conn);
} conns SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERF_EVENT_ARRAY);
	__uint(max_entries, 1024); /* indexed by CPU id */
	__type(key, __u32);
	__type(value, __u32);
} events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, ST_CNT_MAX);
	__type(key, __u32);
	__type(value, __u64); /* enum st_counter */
} counters SEC(".maps");

/* The agent's budget for traced units (see "Overload" below). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct st_budget);
} budget SEC(".maps");

/* What was shed, per process (key: tgid).  Written only while shedding. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, struct st_shed_proc);
} shed_procs SEC(".maps");

struct st_iovec {
	__u64 base;
	__u64 len;
};

/* The CPU's batch: events are built in place at data[used], and `hdr`
 * followed by data[0..used) goes out as ONE perf record (see
 * sidetrace_events.h).  An event starts at most at ST_BATCH_SLOT_MAX, which
 * a mask proves to the verifier; data[] is long enough for a header and a
 * payload written at any offset the capture code can prove (2 * max).  hdr
 * sits 4 bytes past an 8-byte boundary, like the raw data of a perf sample,
 * so the events' u64 members are aligned here as they are in the ring. */
#define ST_BATCH_SLOT_MAX 16376
#define ST_BATCH_SLOT_MASK 0x3ff8
#define ST_BATCH_DATA (ST_BATCH_SLOT_MAX + ST_EVENT_HDR_SIZE + 2 * ST_MAX_PAYLOAD)

struct st_batch {
	__u64 oldest_ns; /* ts_ns of the batch's first event (count > 0) */
	__u32 used;      /* bytes of data[] holding events, a multiple of 8 */
	__u32 pad0;
	/* The user's iovec array, copied once: too large for the BPF stack. */
	struct st_iovec iov[ST_MAX_IOV];
	__u32 pad1;
	struct st_batch_hdr hdr;
	union {
		__u8 data[ST_BATCH_DATA];
		/* names the event type in the map's BTF, where tests and tools
		 * find the record layout */
		struct st_event first;
	};
};

_Static_assert(__builtin_offsetof(struct st_batch, hdr) % 8 == 4, "batch header placement");
_Static_assert(__builtin_offsetof(struct st_batch, data) % 8 == 4, "batch data placement");
_Static_assert(sizeof(struct st_batch) <= 32768, "per-CPU values are limited to 32 KiB");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct st_batch);
} batch SEC(".maps");

/* ---- tracepoint contexts (see /sys/kernel/tracing/events/.../format) ---- */
struct st_sys_enter_ctx {
	__u64 common;
	__s32 nr;
	__u32 pad;
	__u64 args[6];
};

struct st_sys_exit_ctx {
	__u64 common;
	__s32 nr;
	__u32 pad;
	__s64 ret;
};

struct st_newtask_ctx {
	__u64 common;
	__s32 pid;
	char comm[16];
	__u32 pad;
	__u64 clone_flags;
};

/* ---- user ABI structs (64-bit UAPI, the same on x86_64 and arm64) ---- */
struct st_msghdr_head { /* first 32 bytes of struct user_msghdr */
	__u64 name;
	__s32 namelen;
	__u32 pad;
	__u64 iov;
	__u64 iovlen;
};

struct st_mmsghdr { /* struct mmsghdr */
	__u64 name;
	__s32 namelen;
	__u32 pad;
	__u64 iov;
	__u64 iovlen;
	__u64 control;
	__u64 controllen;
	__u32 flags;
	__u32 pad2;
	__u32 msg_len;
	__u32 pad3;
};

struct st_sockaddr { /* covers sockaddr_in and sockaddr_in6 */
	__u16 family;
	__be16 port;
	__u32 v4_or_flowinfo;
	__u8 v6[16];
	__u32 scope_id;
};

/* ---- small helpers ---- */
static __always_inline void count(__u32 slot)
{
	__u64 *v = bpf_map_lookup_elem(&counters, &slot);

	if (v)
		*v += 1;
}

static __always_inline bool traced(__u32 tgid)
{
	if (trace_all)
		return tgid != agent_tgid;
	if (tgid == agent_tgid)
		return false;
	return bpf_map_lookup_elem(&pids, &tgid) != NULL;
}

static __always_inline __u16 bswap16(__u16 v)
{
	return (v >> 8) | (v << 8);
}

static __always_inline __u64 new_conn_id(void)
{
	__u32 slot = ST_CNT_CONN_SEQ;
	__u64 *v = bpf_map_lookup_elem(&counters, &slot);
	__u64 n = 0;

	if (v)
		n = ++*v;
	return ((__u64)(bpf_get_smp_processor_id() + 1) << 48) | (n & 0xffffffffffffULL);
}

static __always_inline void set_v4mapped(__u8 *dst, __u32 be_addr)
{
	__u32 *w = (__u32 *)dst;

	w[0] = 0;
	w[1] = 0;
	w[2] = 0xffff0000; /* bytes 00 00 ff ff */
	w[3] = be_addr;
}

static __always_inline bool is_v4mapped(const __u8 *a)
{
	const __u32 *w = (const __u32 *)a;

	return w[0] == 0 && w[1] == 0 && w[2] == 0xffff0000;
}

static __always_inline void copy16(__u8 *dst, const __u8 *src)
{
	((__u64 *)dst)[0] = ((const __u64 *)src)[0];
	((__u64 *)dst)[1] = ((const __u64 *)src)[1];
}

/* fd -> struct file * of the current task, or NULL. */
static __always_inline struct file *fd_to_file(struct task_struct *task, int fd)
{
	struct files_struct *files;
	struct fdtable *fdt;
	struct file **arr;
	struct file *f = NULL;

	files = task->files;
	if (!files)
		return NULL;
	fdt = files->fdt;
	if (!fdt)
		return NULL;
	if ((__u32)fd >= fdt->max_fds)
		return NULL;
	arr = fdt->fd;
	if (bpf_probe_read_kernel(&f, sizeof(f), &arr[(__u32)fd]))
		return NULL;
	return f;
}

/* Socket inode number of `file`, or 0 if it isn't a socket (counted).
 * i_mode and i_ino both sit in the first ST_INODE_WIN bytes of struct inode
 * (which is far larger), so one read of that window serves both; their
 * offsets are CO-RE relocated constants, so the verifier sees fixed stack
 * offsets. */
#define ST_INODE_WIN 128
static __always_inline __u64 socket_ino(struct file *file)
{
	struct inode *inode = NULL;
	__u64 win[ST_INODE_WIN / 8];
	__u32 mode_off = bpf_core_field_offset(inode->i_mode);
	__u32 ino_off = bpf_core_field_offset(inode->i_ino);
	unsigned short mode;
	__u64 ino;

	if (BPF_CORE_READ_INTO(&inode, file, f_inode) || !inode) {
		count(ST_CNT_KREAD_FAIL);
		return 0;
	}
	if (mode_off <= ST_INODE_WIN - 2 && ino_off <= ST_INODE_WIN - 8 && !(ino_off & 7) && !(mode_off & 1)) {
		if (bpf_probe_read_kernel(win, sizeof(win), inode)) {
			count(ST_CNT_KREAD_FAIL);
			return 0;
		}
		mode = *(unsigned short *)((__u8 *)win + mode_off);
		ino = *(__u64 *)((__u8 *)win + ino_off);
	} else {
		unsigned long ino_l = 0;

		mode = 0;
		if (BPF_CORE_READ_INTO(&mode, inode, i_mode) || BPF_CORE_READ_INTO(&ino_l, inode, i_ino)) {
			count(ST_CNT_KREAD_FAIL);
			return 0;
		}
		ino = ino_l;
	}
	if ((mode & S_IFMT) != S_IFSOCK) {
		count(ST_CNT_NOT_SOCKET);
		return 0;
	}
	return ino;
}

/* Read family, protocol and both ends of `sk` into `c`. */
static __always_inline void conn_fill_addrs(struct sock *sk, struct st_conn *c)
{
	unsigned short family = 0;
	__u16 proto = 0, type = 0, num = 0;
	__be16 dport = 0;

	BPF_CORE_READ_INTO(&family, &sk->__sk_common, skc_family);
	BPF_CORE_READ_INTO(&proto, sk, sk_protocol);
	BPF_CORE_READ_INTO(&type, sk, sk_type);
	if ((family != AF_INET && family != AF_INET6) ||
	    !((proto == IPPROTO_TCP && type == SOCK_STREAM) ||
	      (proto == IPPROTO_UDP && type == SOCK_DGRAM))) {
		c->flags |= ST_CONN_IGNORE;
		count(ST_CNT_NOT_INET);
		return;
	}
	c->l4_proto = proto;
	BPF_CORE_READ_INTO(&num, &sk->__sk_common, skc_num);
	BPF_CORE_READ_INTO(&dport, &sk->__sk_common, skc_dport);
	c->sport = num;
	c->dport = bswap16(dport);
	if (family == AF_INET) {
		__be32 s = 0, d = 0;

		BPF_CORE_READ_INTO(&s, &sk->__sk_common, skc_rcv_saddr);
		BPF_CORE_READ_INTO(&d, &sk->__sk_common, skc_daddr);
		set_v4mapped(c->saddr, s);
		set_v4mapped(c->daddr, d);
		c->family = AF_INET;
		c->flags &= ~ST_CONN_V4MAPPED;
	} else {
		if (bpf_core_read(c->saddr, 16, &sk->__sk_common.skc_v6_rcv_saddr) ||
		    bpf_core_read(c->daddr, 16, &sk->__sk_common.skc_v6_daddr))
			count(ST_CNT_KREAD_FAIL);
		if (is_v4mapped(c->daddr)) {
			c->family = AF_INET;
			c->flags |= ST_CONN_V4MAPPED;
		} else {
			c->family = AF_INET6;
			c->flags &= ~ST_CONN_V4MAPPED;
		}
	}
}

/* Create the conns entry of socket `ino` behind `file` (or return the one
 * a concurrent creator just inserted). */
static __always_inline struct st_conn *conn_create(struct file *file, __u64 ino, __u32 tgid, __u8 role)
{
	struct st_conn c = {};
	struct socket *so = NULL;
	struct sock *sk = NULL;

	if (BPF_CORE_READ_INTO(&so, file, private_data) || !so ||
	    BPF_CORE_READ_INTO(&sk, so, sk) || !sk) {
		count(ST_CNT_KREAD_FAIL);
		return NULL;
	}
	c.sk = (__u64)sk;
	c.tgid = tgid;
	c.role = role;
	conn_fill_addrs(sk, &c);
	if (!(c.flags & ST_CONN_IGNORE))
		c.conn_id = new_conn_id();
	/* NOEXIST: if another CPU created the entry first, use its conn_id */
	if (bpf_map_update_elem(&conns, &ino, &c, BPF_NOEXIST)) {
		struct st_conn *other = bpf_map_lookup_elem(&conns, &ino);

		if (!other)
			count(ST_CNT_CONN_FULL);
		return other;
	}
	return bpf_map_lookup_elem(&conns, &ino);
}

static __always_inline void count_n(__u32 slot, __u64 n)
{
	__u64 *v = bpf_map_lookup_elem(&counters, &slot);

	if (v)
		*v += n;
}

static __always_inline struct st_budget *budget_get(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&budget, &zero);
}

/* Send the batch (or, when it is empty, a heartbeat: the header alone) and
 * empty it.  flush_ns is taken here, after every event in the batch was
 * stamped; the programs of one CPU never interleave (syscall tracepoints run
 * them with preemption disabled, and bpf_prog_active keeps a second
 * tracepoint program off the CPU meanwhile), so any event appended later on
 * this CPU is stamped later: the agent may treat flush_ns as "every event of
 * this CPU stamped at or before it has been sent".  A failed output (ring
 * full) loses the batch's events; they are counted. */
static __always_inline void batch_flush(void *ctx, struct st_batch *b, __u16 reason)
{
	__u64 used = b->used;
	__u16 n = b->hdr.count;

	barrier_var(used);
	if (used > ST_BATCH_DATA)
		used = ST_BATCH_DATA;
	b->hdr.kind = ST_BATCH_KIND;
	b->hdr.flush_ns = bpf_ktime_get_ns();
	b->hdr.reason = reason;
	if (bpf_perf_event_output(ctx, &events, BPF_F_CURRENT_CPU, &b->hdr, sizeof(b->hdr) + used)) {
		struct st_budget *bg = budget_get();

		count(ST_CNT_PERF_FAIL);
		count_n(ST_CNT_LOST_EVENTS, n);
		/* the ring is full: no new unit until the agent has caught up a little */
		if (bg)
			bg->blocked_ns = b->hdr.flush_ns + ST_LOSS_BLOCK_NS;
	} else if (n) {
		count_n(ST_CNT_EVENTS, n);
		count(ST_CNT_BATCHES);
	} else {
		count(ST_CNT_HEARTBEATS);
	}
	b->used = 0;
	b->hdr.count = 0;
}

/* This CPU's batch, with room for one more event at data[used]. */
static __always_inline struct st_batch *batch_get(void *ctx)
{
	__u32 zero = 0;
	struct st_batch *b = bpf_map_lookup_elem(&batch, &zero);

	if (!b) {
		count(ST_CNT_NO_SCRATCH);
		return NULL;
	}
	if (b->used > ST_BATCH_SLOT_MAX) /* never left so by batch_commit */
		batch_flush(ctx, b, ST_FLUSH_FULL);
	return b;
}

/* Where the next event is built.  The mask changes nothing (batch_get
 * keeps used <= ST_BATCH_SLOT_MAX, a multiple of 8); it bounds the offset
 * for the verifier. */
static __always_inline struct st_event *batch_slot(struct st_batch *b)
{
	__u32 off = b->used & ST_BATCH_SLOT_MASK;

	return (struct st_event *)&b->data[off];
}

/* Append the event built at batch_slot(b) (header + payload_len bytes,
 * padded to 8 so the next header stays aligned); send the batch if
 * batching is off, if the next event might not fit, or if its first event
 * is batch_max_age_ns old. */
static __always_inline void batch_commit(void *ctx, struct st_batch *b, struct st_event *e, __u32 payload_len)
{
	__u64 ts = e->ts_ns;

	if (!b->hdr.count)
		b->oldest_ns = ts;
	b->used += (ST_EVENT_HDR_SIZE + (payload_len & (2 * ST_MAX_PAYLOAD - 1)) + 7) & ~7U;
	b->hdr.count++;
	if (!batching)
		batch_flush(ctx, b, ST_FLUSH_EACH);
	else if (b->used > ST_BATCH_SLOT_MAX)
		batch_flush(ctx, b, ST_FLUSH_FULL);
	else if (ts - b->oldest_ns >= batch_max_age_ns)
		batch_flush(ctx, b, ST_FLUSH_AGE);
}

/* Every header field is written: the scratch buffer is never zeroed. */
static __always_inline void fill_header(struct st_event *e, struct task_struct *task, __u32 kind,
					__u16 sys, __u8 dir, __u64 pid_tgid, __s32 fd, __s64 ret,
					const struct st_conn *c)
{
	const __u64 *comm = (const __u64 *)task->comm;
	__u64 *dst = (__u64 *)e->comm;

	e->kind = kind;
	e->ts_ns = bpf_ktime_get_ns();
	e->ret = ret;
	e->tgid = pid_tgid >> 32;
	e->tid = (__u32)pid_tgid;
	e->fd = fd;
	e->tcp_seq = 0;
	e->payload_len = 0;
	e->syscall = sys;
	e->direction = dir;
	e->app_proto = 0;
	e->tls = 0;
	e->tls_version = 0;
	e->shed = 0;
	e->xflags = 0;
	e->reserved = 0;
	if (c) {
		e->conn_id = c->conn_id;
		e->bytes_tx = c->bytes_tx;
		e->bytes_rx = c->bytes_rx;
		e->role = c->role;
		e->family = c->family;
		e->sport = c->sport;
		e->dport = c->dport;
		e->l4_proto = c->l4_proto;
		e->flags = c->flags & ST_CONN_V4MAPPED; /* == ST_F_V4MAPPED */
		e->app_proto = c->app_proto;
		copy16(e->saddr, c->saddr);
		copy16(e->daddr, c->daddr);
	} else {
		__u64 *p;

		e->conn_id = 0;
		e->bytes_tx = 0;
		e->bytes_rx = 0;
		e->role = 0;
		e->family = 0;
		e->sport = 0;
		e->dport = 0;
		e->l4_proto = 0;
		e->flags = 0;
		p = (__u64 *)e->saddr;
		p[0] = 0;
		p[1] = 0;
		p = (__u64 *)e->daddr;
		p[0] = 0;
		p[1] = 0;
	}
	/* comm: 16 bytes straight from the task (BTF pointer: plain loads, no
	 * helper call); the kernel keeps it NUL terminated and NUL padded */
	dst[0] = comm[0];
	dst[1] = comm[1];
}

static __always_inline __u32 payload_limit(__s64 ret)
{
	__u64 lim = max_payload;

	if (lim > ST_MAX_PAYLOAD)
		lim = ST_MAX_PAYLOAD;
	if ((__u64)ret < lim)
		lim = ret;
	return lim;
}

/* Copy the first `lim` (<= ST_MAX_PAYLOAD) bytes of a user buffer. */
static __always_inline __u32 capture_buf(__u8 *payload, __u64 ubuf, __u64 lim)
{
	__u64 n = lim;

	barrier_var(n);
	if (n > ST_MAX_PAYLOAD)
		n = ST_MAX_PAYLOAD;
	if (!n)
		return 0;
	if (bpf_probe_read_user(payload, n, (const void *)ubuf)) {
		count(ST_CNT_UREAD_FAIL);
		return 0;
	}
	return n;
}

/* One iovec of capture_iov: the first bytes of b->iov[i], at most
 * `lim` - `off`, appended at `off` to the payload of the event at
 * batch_slot(b); the payload's new length, or -1 when the read failed.  A
 * global function, like capture_iov: the verifier checks the copy once, and
 * the loop around it sees only a length it knows nothing of, so each
 * iteration is one state instead of one per range the copy's bounds left. */
__noinline int capture_iov_one(struct st_batch *b, __u32 i, __u32 off, __u32 lim)
{
	const struct st_iovec *iov;
	__u8 *payload;
	__u64 n;

	if (!b || off >= lim)
		return -1;
	iov = &b->iov[i & (ST_MAX_IOV - 1)];
	n = iov->len;
	if (n > lim - off)
		n = lim - off;
	barrier_var(n);
	if (n > ST_MAX_PAYLOAD)
		n = ST_MAX_PAYLOAD;
	barrier_var(off);
	off &= ST_MAX_PAYLOAD - 1;
	if (!n)
		return off;
	payload = (__u8 *)(batch_slot(b) + 1);
	if (bpf_probe_read_user(&payload[off], n, (const void *)iov->base)) {
		count(ST_CNT_UREAD_FAIL);
		return -1;
	}
	return off + n;
}

/* Gather up to `lim` (<= ST_MAX_PAYLOAD) bytes across the first ST_MAX_IOV
 * iovecs of a user iovec array into the payload of the event at
 * batch_slot(b), copying the array to b->iov first.  A global function: the
 * verifier checks it once per program; inlined, every length its loop could
 * stop at left a state of its own for the rest of the program. */
__noinline int capture_iov(struct st_batch *b, __u64 uiov, __u64 iovcnt, __u32 lim)
{
	__u32 cnt = iovcnt < ST_MAX_IOV ? iovcnt : ST_MAX_IOV;
	__u32 off = 0;
	int i, next;

	if (!b)
		return 0;
	barrier_var(cnt);
	if (cnt > ST_MAX_IOV)
		cnt = ST_MAX_IOV;
	if (!cnt || !lim)
		return 0;
	if (bpf_probe_read_user(b->iov, cnt * sizeof(struct st_iovec), (const void *)uiov)) {
		count(ST_CNT_UREAD_FAIL);
		return 0;
	}
	for (i = 0; i < ST_MAX_IOV; i++) {
		if (i >= cnt || off >= lim)
			break;
		next = capture_iov_one(b, i, off, lim);
		if (next < 0)
			break;
		off = next;
	}
	return off;
}

/* Peer address from a user sockaddr (UDP sendto/recvfrom/msg_name). */
static __always_inline void peer_from_sockaddr(struct st_event *e, __u64 uaddr)
{
	struct st_sockaddr sa;

	if (bpf_probe_read_user(&sa, sizeof(sa), (const void *)uaddr)) {
		count(ST_CNT_UREAD_FAIL);
		return;
	}
	if (sa.family == AF_INET) {
		set_v4mapped(e->daddr, sa.v4_or_flowinfo);
		e->family = AF_INET;
	} else if (sa.family == AF_INET6) {
		copy16(e->daddr, sa.v6);
		if (is_v4mapped(sa.v6)) {
			e->family = AF_INET;
			e->flags |= ST_F_V4MAPPED;
		} else {
			e->family = AF_INET6;
			e->flags &= ~ST_F_V4MAPPED;
		}
	} else {
		return;
	}
	e->dport = bswap16(sa.port);
	e->flags |= ST_F_PEER_FROM_ARG;
}

/* ---- protocol inference ---- */

/* Little-endian integer of the first 2..8 characters of a string literal
 * (clang folds these to constants). */
#define S2(t) ((__u64)(__u8)(t)[0] | (__u64)(__u8)(t)[1] << 8)
#define S3(t) (S2(t) | (__u64)(__u8)(t)[2] << 16)
#define S4(t) (S3(t) | (__u64)(__u8)(t)[3] << 24)
#define S5(t) (S4(t) | (__u64)(__u8)(t)[4] << 32)
#define S6(t) (S5(t) | (__u64)(__u8)(t)[5] << 40)
#define S7(t) (S6(t) | (__u64)(__u8)(t)[6] << 48)
#define S8(t) (S7(t) | (__u64)(__u8)(t)[7] << 56)
#define LO(w, n) ((w) & ((1ULL << (8 * (n))) - 1)) /* first n (< 8) bytes */

/* PostgreSQL message types (either direction) from '@' (0x40) up:
 * A B C D E F G H I K N P Q R S T V W X Z  c d f n p s t */
#define PG_TYPES ((1ULL << ('A' - 0x40)) | (1ULL << ('B' - 0x40)) | (1ULL << ('C' - 0x40)) | \
		  (1ULL << ('D' - 0x40)) | (1ULL << ('E' - 0x40)) | (1ULL << ('F' - 0x40)) | \
		  (1ULL << ('G' - 0x40)) | (1ULL << ('H' - 0x40)) | (1ULL << ('I' - 0x40)) | \
		  (1ULL << ('K' - 0x40)) | (1ULL << ('N' - 0x40)) | (1ULL << ('P' - 0x40)) | \
		  (1ULL << ('Q' - 0x40)) | (1ULL << ('R' - 0x40)) | (1ULL << ('S' - 0x40)) | \
		  (1ULL << ('T' - 0x40)) | (1ULL << ('V' - 0x40)) | (1ULL << ('W' - 0x40)) | \
		  (1ULL << ('X' - 0x40)) | (1ULL << ('Z' - 0x40)) | (1ULL << ('c' - 0x40)) | \
		  (1ULL << ('d' - 0x40)) | (1ULL << ('f' - 0x40)) | (1ULL << ('n' - 0x40)) | \
		  (1ULL << ('p' - 0x40)) | (1ULL << ('s' - 0x40)) | (1ULL << ('t' - 0x40)))

static __always_inline bool is_digit(__u8 b)
{
	return (__u8)(b - '0') < 10;
}

static __always_inline bool is_upper(__u8 b)
{
	return (__u8)(b - 'A') < 26;
}

/* A plausible DNS header (12 bytes, big-endian fields) at `b`: one question, opcode QUERY/IQUERY/STATUS, and
 * fewer than 256 answer, authority and additional records. */
static __always_inline bool dns_header(const __u8 *b)
{
	return b[4] == 0 && b[5] == 1 && ((b[2] >> 3) & 0xf) <= 2 && b[6] == 0 && b[8] == 0 && b[10] == 0;
}

/* The protocol of a connection from the first `got` captured bytes of one
 * payload (`w0`, `w1`: its first 16 bytes; `total` bytes moved by the
 * syscall), or ST_PROTO_UNKNOWN.  Bytes past `got` are stale scratch and
 * are masked off before any comparison.  Deliberately generous: a wrong
 * guess only costs the agent a failed confirmation, a missed protocol would
 * end as OPAQUE.  A global function: the verifier checks it once per
 * program; inlined, each of its tests of `got` split the caller's states,
 * and the rest of the data programs was verified again for every range of
 * `got` the tests left. */
__noinline int classify(__u64 w0, __u64 w1, __u32 got, __u64 total, const struct st_conn *c)
{
	__u8 b[16];
	__u32 h, len;
	int i;

	if (!c)
		return ST_PROTO_UNKNOWN;
	if (got < 16) {
		w1 = got > 8 ? LO(w1, got - 8) : 0;
		if (got < 8)
			w0 = LO(w0, got);
	}
	for (i = 0; i < 8; i++) {
		b[i] = w0 >> (8 * i);
		b[8 + i] = w1 >> (8 * i);
	}
	h = (__u32)w0;

	/* DNS: UDP datagram (or TCP with its 2-byte length) on port 53/5353, or
	 * any UDP datagram / length-prefixed TCP message with a sane header */
	if (got >= 12) {
		bool port = c->sport == 53 || c->dport == 53 || c->sport == 5353 || c->dport == 5353;

		if (c->l4_proto == IPPROTO_UDP)
			return port || dns_header(b) ? ST_PROTO_DNS : ST_PROTO_UNKNOWN;
		if (got >= 14 && ((__u32)b[0] << 8 | b[1]) + 2 == total && (port || dns_header(&b[2])))
			return ST_PROTO_DNS;
	}
	if (c->l4_proto != IPPROTO_TCP)
		return ST_PROTO_UNKNOWN;

	/* HTTP/1: request line of a standard method, or an HTTP/1.x status line */
	if (h == S4("GET ") || h == S4("PUT ") || h == S4("POST") || h == S4("HEAD") ||
	    h == S4("OPTI") || h == S4("PATC") || h == S4("CONN") || h == S4("TRAC") ||
	    LO(w0, 7) == S7("DELETE ") || LO(w0, 7) == S7("HTTP/1."))
		return ST_PROTO_HTTP1;
	/* HTTP/2: client preface */
	if (w0 == S8("PRI * HT"))
		return ST_PROTO_HTTP2;
	/* Length-framed protocols with strict headers, before the TLS record
	 * test (a MongoDB message of 788..791 bytes starts like one) and the
	 * looser binary ones.  MongoDB: a 16-byte header (read alone by most
	 * servers): little-endian length, requestID, responseTo, opCode OP_MSG,
	 * OP_QUERY, OP_REPLY or OP_COMPRESSED. */
	if (got >= 16) {
		__u32 op = (__u32)(w1 >> 32);

		if ((op == 2013 || op == 2004 || op == 1 || op == 2012) && h >= 21 && h <= 48000000)
			return ST_PROTO_MONGODB;
	}
	/* Kafka request: big-endian size (the whole request in this write), api
	 * key, api version, correlation id, client id length (-1 or short) */
	if (got >= 14 && b[0] == 0 && b[4] == 0 && b[5] < 100 && b[6] == 0 && b[7] < 20 &&
	    (((__u64)b[1] << 16 | (__u32)b[2] << 8 | b[3]) + 4 == total) &&
	    ((b[12] == 0xff && b[13] == 0xff) || b[12] < 4))
		return ST_PROTO_KAFKA;
	/* ... or its header alone, the size read in a syscall of its own (a
	 * broker): a connection's first request (ApiVersions, Metadata,
	 * SaslHandshake) with a printable client id */
	if (got >= 11 && b[0] == 0 && (b[1] == 18 || b[1] == 3 || b[1] == 17) && b[2] == 0 &&
	    b[3] < 20 && b[8] == 0 && b[9] > 0 && b[10] >= 0x20 && b[10] < 0x7f)
		return ST_PROTO_KAFKA;
	/* MQTT CONNECT: 0x10, a 1- or 2-byte remaining length, protocol name
	 * "MQTT" (3.1.1, 5) or "MQIsdp" (3.1); or the CONNECT body alone (a
	 * broker reading the fixed header a byte at a time) */
	if (LO(w0, 6) == S6("\0\4MQTT") || LO(w0, 6) == S6("\0\6MQIs") ||
	    (b[0] == 0x10 && b[1] < 0x80 && b[2] == 0 && (b[3] == 4 || b[3] == 6) && b[4] == 'M' && b[5] == 'Q') ||
	    (b[0] == 0x10 && b[1] >= 0x80 && b[2] < 0x80 && b[3] == 0 && (b[4] == 4 || b[4] == 6) &&
	     b[5] == 'M' && b[6] == 'Q'))
		return ST_PROTO_MQTT;
	/* AMQP 0-9-1: the client's protocol header, or the broker's
	 * connection.start (method frame on channel 0, class 10 method 10) */
	if (w0 == S8("AMQP\0\0\x09\x01") ||
	    (got >= 11 && b[0] == 1 && b[1] == 0 && b[2] == 0 && b[7] == 0 && b[8] == 10 && b[9] == 0 && b[10] == 10))
		return ST_PROTO_AMQP;
	/* TLS record (handshake, alert, change cipher spec, application data):
	 * nothing to read in the payload, ever */
	if (got >= 5 && b[0] >= 0x14 && b[0] <= 0x17 && b[1] == 3 && b[2] <= 4)
		return ST_PROTO_OPAQUE;
	/* memcached binary protocol: request/response magic, known opcode */
	if (got >= 24 && (b[0] == 0x80 || b[0] == 0x81) && b[1] <= 0x48)
		return ST_PROTO_MEMCACHED;
	/* PostgreSQL startup: length, then protocol 3.0, SSLRequest, GSSENCRequest
	 * or CancelRequest */
	if (got >= 8 && b[0] == 0 && b[1] == 0 && ((__u32)b[2] << 8 | b[3]) >= 8) {
		__u32 code = w0 >> 32; /* bytes 4..7, little-endian load of a big-endian code */

		if (code == 0x00000300 /* 3.0 */ || code == 0x2f16d204 /* 80877103 SSLRequest */ ||
		    code == 0x3016d204 /* 80877104 GSSENCRequest */ || code == 0x2e16d204 /* 80877102 cancel */)
			return ST_PROTO_POSTGRES;
	}
	/* MySQL: one whole packet (3-byte length, sequence 0): the server
	 * greeting (protocol 10) or a command (COM_QUERY, ...) */
	len = b[0] | (__u32)b[1] << 8 | (__u32)b[2] << 16;
	if (got >= 5 && b[3] == 0 && len && len + 4 == total && b[4] <= 0x1f)
		return ST_PROTO_MYSQL;
	/* PostgreSQL message (joined mid-stream): type, then a 4-byte big-endian
	 * length of at least 4 and under 1 MiB */
	if (got >= 5 && ((b[0] >= '1' && b[0] <= '3') || (b[0] >= 0x40 && b[0] < 0x80 && (PG_TYPES >> (b[0] - 0x40)) & 1))) {
		__u32 plen = (__u32)b[1] << 24 | (__u32)b[2] << 16 | (__u32)b[3] << 8 | b[4];

		if (plen >= 4 && plen < (1 << 20))
			return ST_PROTO_POSTGRES;
	}
	/* MySQL reply packets (sequence >= 1): OK, ERR, EOF or a result set */
	if (got >= 5 && b[3] >= 1 && len && len + 4 <= total)
		return ST_PROTO_MYSQL;
	/* HTTP/2 frame header (joined mid-stream): length <= 16 KiB, type <= 9
	 * (DATA..CONTINUATION), reserved bit clear */
	if (got >= 9 && b[0] == 0 && b[1] <= 0x40 && b[3] <= 9 && !(b[5] & 0x80))
		return ST_PROTO_HTTP2;
	/* Redis RESP2/RESP3: arrays, replies, pushes */
	switch (b[0]) {
	case '*':
	case '$':
	case ':':
	case '%':
	case '~':
	case '>':
		if (is_digit(b[1]) || b[1] == '-')
			return ST_PROTO_REDIS;
		break;
	case '+':
		if (is_upper(b[1]) || is_upper(b[1] - 0x20))
			return ST_PROTO_REDIS;
		break;
	case '-':
		if (is_upper(b[1]))
			return ST_PROTO_REDIS;
		break;
	case '_':
		if (b[1] == '\r')
			return ST_PROTO_REDIS;
		break;
	case '#':
		if (b[1] == 't' || b[1] == 'f')
			return ST_PROTO_REDIS;
		break;
	}
	/* memcached text: commands (lower case) and replies (upper case) */
	if (h == S4("get ") || h == S4("gets") || h == S4("set ") || h == S4("add ") ||
	    h == S4("incr") || h == S4("decr") || h == S4("cas ") || h == S4("dele") ||
	    h == S4("touc") || h == S4("appe") || h == S4("prep") || h == S4("repl") ||
	    h == S4("stat") || h == S4("vers") || h == S4("flus") || h == S4("verb") ||
	    h == S4("gat ") || h == S4("gats") ||
	    LO(w0, 3) == S3("mg ") || LO(w0, 3) == S3("ms ") || LO(w0, 3) == S3("md ") ||
	    LO(w0, 3) == S3("ma ") || LO(w0, 3) == S3("me ") || LO(w0, 3) == S3("mn\r") ||
	    LO(w0, 6) == S6("VALUE ") || LO(w0, 7) == S7("STORED\r") || h == S4("END\r") ||
	    w0 == S8("DELETED\r") || w0 == S8("NOT_FOUN") || w0 == S8("NOT_STOR") ||
	    LO(w0, 7) == S7("EXISTS\r") || LO(w0, 7) == S7("TOUCHED") || LO(w0, 6) == S6("ERROR\r") ||
	    w0 == S8("CLIENT_E") || w0 == S8("SERVER_E") || LO(w0, 3) == S3("VA ") ||
	    LO(w0, 3) == S3("HD\r") || LO(w0, 3) == S3("HD ") || LO(w0, 3) == S3("EN\r") ||
	    LO(w0, 3) == S3("NF\r") || LO(w0, 3) == S3("NS\r") || LO(w0, 3) == S3("EX\r") ||
	    LO(w0, 3) == S3("MN\r"))
		return ST_PROTO_MEMCACHED;
	/* Redis inline command: an upper-case word, then a space or CRLF */
	if (is_upper(b[0]) && is_upper(b[1]) && is_upper(b[2])) {
		for (i = 3; i < 12; i++) {
			if (b[i] == ' ' || b[i] == '\r')
				return ST_PROTO_REDIS;
			if (!is_upper(b[i]))
				break;
		}
	}
	return ST_PROTO_UNKNOWN;
}

/* ---- overload: shedding whole units ----
 *
 * When the agent cannot keep up (its CPU budget, its rings filling), it sets
 * a budget (the `budget` map: at most one unit per interval_ns, bursts of
 * burst_ns) and the kernel stops sending whole units instead of losing
 * events at random:
 *
 *   - an HTTP/1 exchange, on a connection whose role is known and whose
 *     messages start one per syscall: from a request's first syscall to the
 *     next request's.  The decision is taken where a request starts while no
 *     request is waiting for its response (the kernel counts the syscalls
 *     that start a request and a response: "GET ..." and "HTTP/1.x"), so a
 *     shed stretch holds whole exchanges and nothing of a kept one.  A
 *     connection where that count goes wrong (pipelining, 1xx responses,
 *     requests sharing a syscall) is marked MIXED and never shed by the
 *     exchange; while shed it stays shed until it closes.
 *   - any other connection whole, decided at its first syscall with bytes
 *     (the one its protocol is recognised from); at level HARD also a traced
 *     one, at a turn of direction, until it closes.
 *
 * A batch the ring had no room for blocks new units for ST_LOSS_BLOCK_NS
 * whatever the level: the kernel sheds before the agent has noticed.
 *
 * Shed syscalls cost the lookups that find their connection and, on HTTP/1,
 * a read of the first 8 bytes: no payload copy, no record.  The agent learns
 * of shed stretches from the first event after one (ST_X_RESUMED with the
 * number of exchanges), from the last event before one (ST_X_SHED_START),
 * or from the connection's CONN_CLOSE (ST_X_SHED); per-process counts are in
 * `shed_procs`, totals in `counters`.  The decisions are two global
 * functions (frame_step, shed_step): the verifier checks each once per
 * program instead of along every path of the caller, which would multiply
 * the data programs' verification time.
 */

/* One unit from the budget (a generic cell rate algorithm): admitted when
 * the budget's clock is at most burst_ns ahead of now.  Two CPUs deciding at
 * the same instant may both be admitted: the budget is a rate, not a lock. */
static __always_inline bool budget_admit(struct st_budget *bg)
{
	__u64 interval = bg->interval_ns, now, tat;

	if (!interval && !bg->blocked_ns)
		return true;
	now = bpf_ktime_get_ns();
	if (now < bg->blocked_ns)
		return false;
	if (!interval)
		return true;
	tat = bg->tat_ns;
	if (tat < now)
		tat = now;
	else if (tat - now > bg->burst_ns)
		return false;
	bg->tat_ns = tat + interval;
	count(ST_CNT_ADMITTED);
	return true;
}

static __always_inline void shed_proc_count(__u32 tgid, bool exchange)
{
	struct st_shed_proc *p = bpf_map_lookup_elem(&shed_procs, &tgid);

	if (!p) {
		struct st_shed_proc zero = {};

		bpf_map_update_elem(&shed_procs, &tgid, &zero, BPF_NOEXIST);
		p = bpf_map_lookup_elem(&shed_procs, &tgid);
		if (!p)
			return;
	}
	if (exchange)
		__sync_fetch_and_add(&p->exchanges, 1);
	else
		__sync_fetch_and_add(&p->connections, 1);
}

static __always_inline void shed_unit(struct st_conn *c, __u32 tgid, __u8 how)
{
	if (how == ST_SHED_EXCHANGE) {
		c->shed_units++;
		count(ST_CNT_SHED_EXCHANGES);
	} else {
		count(ST_CNT_SHED_CONNS);
	}
	c->shed = how;
	shed_proc_count(tgid, how == ST_SHED_EXCHANGE);
}

#include "sidetrace_tls.bpf.h"

/* Sticky per-connection protocol from one payload (see the header). */
static __always_inline void infer_proto(struct st_event *e, struct st_conn *c, __u32 got, __u64 total)
{
	const __u64 *w = (const __u64 *)(e + 1);
	__u16 proto = classify(w[0], w[1], got, total, c);

	if (proto == ST_PROTO_UNKNOWN) {
		if (c->proto_tries + 1 < ST_PROTO_TRIES) {
			c->proto_tries++;
			return;
		}
		proto = ST_PROTO_OPAQUE;
	}
	c->app_proto = proto;
	e->app_proto = proto;
	if (proto == ST_PROTO_OPAQUE && got >= 5 && tls_record_header((const __u8 *)(e + 1)))
		c->flags |= ST_CONN_TLS;
	count(proto == ST_PROTO_OPAQUE ? ST_CNT_PROTO_OPAQUE : ST_CNT_PROTO_KNOWN);
}


static __always_inline bool http1_request_start(__u64 w)
{
	__u32 h = (__u32)w;

	return h == S4("GET ") || h == S4("PUT ") || h == S4("POST") || h == S4("HEAD") ||
	       h == S4("OPTI") || h == S4("PATC") || h == S4("CONN") || h == S4("TRAC") ||
	       LO(w, 7) == S7("DELETE ");
}

static __always_inline bool http1_response_start(__u64 w)
{
	return LO(w, 7) == S7("HTTP/1.");
}

enum st_step {
	ST_STEP_KEEP = 0,   /* send the event */
	ST_STEP_SHED = 1,   /* this syscall starts a shed unit: send nothing */
};

/* Exchange boundaries of an HTTP/1 connection of known role, from the first
 * word of one syscall's data (`egress`: its direction); true at a request
 * start where no request is waiting for a response: the point where an
 * exchange may be shed or resumed. */
static __always_inline bool http1_boundary(struct st_conn *c, __u64 w, bool egress)
{
	bool request_dir = egress == (c->role == ST_ROLE_CLIENT);
	bool boundary = false;

	if (request_dir) {
		if (http1_request_start(w)) {
			if (c->outstanding)
				c->frame |= ST_FRAME_MIXED;  /* pipelined */
			else
				boundary = !(c->frame & ST_FRAME_MIXED);
			if (c->outstanding < 255)
				c->outstanding++;
		}
	} else if (http1_response_start(w)) {
		if (c->outstanding)
			c->outstanding--;
		else
			c->frame |= ST_FRAME_MIXED;  /* 1xx, or requests that shared a syscall */
	}
	return boundary;
}

static __always_inline bool framed(const struct st_conn *c)
{
	return c->app_proto == ST_PROTO_HTTP1 && c->role != ST_ROLE_UNKNOWN;
}

/* A traced connection's syscall that moved bytes, its event `e` built
 * (`w`: the first 8 bytes of its data, of which `got` are real): keep it,
 * or start shedding here.  Marks `e` when it resumes the connection
 * (`resumed`, decided by shed_step) or is the last one sent before shedding
 * it to its close.  A global function: the verifier checks it once, not once
 * per path of its caller. */
__noinline int frame_step(struct st_conn *c, struct st_event *e, __u64 w, __u32 got, __u32 resumed)
{
	struct st_budget *bg;
	bool boundary = false, first, turn, egress;
	__u8 frame;

	if (!c || !e)
		return ST_STEP_KEEP;
	if (resumed) {
		e->xflags = ST_X_RESUMED;
		e->shed = c->shed_units;
		c->shed_units = 0;
	}
	if (c->app_proto == ST_PROTO_OPAQUE)
		return ST_STEP_KEEP;
	egress = e->direction == ST_DIR_EGRESS;
	frame = c->frame;
	first = !(frame & ST_FRAME_SEEN);
	turn = !first && !!(frame & ST_FRAME_LAST_EGRESS) != egress;
	if (got && framed(c) && !resumed)
		boundary = http1_boundary(c, got < 8 ? LO(w, got) : w, egress);
	/* (http1_boundary may have marked it MIXED) */
	c->frame = (c->frame & ~ST_FRAME_LAST_EGRESS) | ST_FRAME_SEEN | (egress ? ST_FRAME_LAST_EGRESS : 0);
	if (!boundary && !first && !turn)
		return ST_STEP_KEEP;
	bg = budget_get();
	if (!bg || (bg->level == ST_BUDGET_OFF && !bg->blocked_ns))
		return ST_STEP_KEEP;
	if (framed(c)) {
		if (!boundary || budget_admit(bg))
			return ST_STEP_KEEP;
		shed_unit(c, e->tgid, ST_SHED_EXCHANGE);
		return ST_STEP_SHED;
	}
	if (first) {
		if (budget_admit(bg))
			return ST_STEP_KEEP;
		shed_unit(c, e->tgid, ST_SHED_CONN);
		return ST_STEP_SHED;
	}
	if (turn && bg->level >= ST_BUDGET_HARD && !budget_admit(bg)) {
		/* sent, marked: the agent drops what the connection holds */
		shed_unit(c, e->tgid, ST_SHED_CONN);
		e->xflags = ST_X_SHED_START;
	}
	return ST_STEP_KEEP;
}

/* A syscall of a shed connection: 1 when it resumes the connection (a shed
 * HTTP/1 exchange is followed by a request the budget admits), else 0: it
 * is dropped.  `sys_ret`: the syscall (enum st_syscall) << 32 | the bytes it
 * moved (0 for an error); `arg2`, `arg3`: its second and third arguments;
 * `flags`: its MSG_* flags.  Only on a shed exchange are the first bytes read
 * (a peeked read is read again: not those).  A global function, like
 * frame_step. */
__noinline int shed_step(struct st_conn *c, __u64 sys_ret, __u64 arg2, __u64 arg3, __u64 flags)
{
	int sys = sys_ret >> 32;
	__u32 moved = (__u32)sys_ret, n;
	bool egress = sys >= ST_SYS_WRITE;
	struct st_budget *bg;
	__u64 w = 0, len = 0, buf;

	if (!c)
		return 0;
	count(ST_CNT_SHED_SYSCALLS);
	if (c->shed != ST_SHED_EXCHANGE || !moved || (flags & MSG_PEEK))
		return 0;
	n = moved < 8 ? moved : 8;
	buf = first_buf_of(sys, arg2, arg3, &len);
	if (len < n)
		n = len;
	if (!buf || !n || bpf_probe_read_user(&w, sizeof(w), (const void *)buf))
		return 0;
	if (n < 8)
		w = LO(w, n);
	c->frame = (c->frame & ~ST_FRAME_LAST_EGRESS) | ST_FRAME_SEEN | (egress ? ST_FRAME_LAST_EGRESS : 0);
	if (!http1_boundary(c, w, egress))
		return 0;
	bg = budget_get();
	if (!bg || budget_admit(bg)) {
		c->shed = ST_SHED_NONE;
		count(ST_CNT_RESUMED);
		return 1;
	}
	shed_unit(c, bpf_get_current_pid_tgid() >> 32, ST_SHED_EXCHANGE);
	return 0;
}

/* ---- data syscalls (sys_exit only) ---- */
static __always_inline bool reportable(__s64 ret)
{
	if (ret > 0)
		return true;
	if (ret == 0 || ret == -EAGAIN || ret == -EINTR)
		return false;
	if (ret <= -ERESTARTSYS && ret >= -ERESTART_RESTARTBLOCK)
		return false;
	return true;
}

/* A DATA syscall on an OPAQUE connection: no payload copy, no TCP sequence
 * read; nothing at all with drop_opaque, else the header alone (nothing for
 * TLS seen through the library, whose plaintext is sent instead).  The byte
 * offsets still advance (not for recvmmsg/sendmmsg, whose per-message
 * length would need the mmsghdr read). */
static __always_inline int on_opaque_data(struct st_sys_exit_ctx *ctx, const int sys, struct task_struct *task,
					  struct pt_regs *regs, __u64 pid_tgid, int fd, __s64 ret,
					  struct st_conn *c, __u64 ino, __u8 evflags)
{
	const bool egress = sys >= ST_SYS_WRITE;
	struct st_batch *b;
	struct st_event *e;
	__u64 flags = 0;

	count(ST_CNT_OPAQUE_DATA);
	if (sys == ST_SYS_RECVFROM || sys == ST_SYS_RECVMMSG)
		flags = PT_REGS_SYSCALL_ARG4(regs);
	else if (sys == ST_SYS_RECVMSG)
		flags = PT_REGS_SYSCALL_ARG3(regs);
	if (tls_on_ciphertext(ctx, sys, task, regs, pid_tgid, fd, ret, c, ino, flags))
		;
	else if (!drop_opaque) {
		b = batch_get(ctx);
		if (b) {
			e = batch_slot(b);
			fill_header(e, task, ST_EV_DATA, sys, egress ? ST_DIR_EGRESS : ST_DIR_INGRESS,
				    pid_tgid, fd, ret, c);
			e->flags |= evflags | ST_F_OPAQUE;
			if (!egress && (flags & MSG_PEEK))
				e->flags |= ST_F_PEEK;
			batch_commit(ctx, b, e, 0);
		}
	}
	if (ret > 0 && sys != ST_SYS_RECVMMSG && sys != ST_SYS_SENDMMSG) {
		if (egress)
			__sync_fetch_and_add(&c->bytes_tx, ret);
		else if (!(flags & MSG_PEEK))
			__sync_fetch_and_add(&c->bytes_rx, ret);
	}
	return 0;
}

/* A zero-byte write() by the agent: the flush trigger.  The agent runs one
 * thread pinned to each CPU that makes this call every few milliseconds,
 * so every CPU's batch leaves within that period even when the CPU has no
 * more traced syscalls, and a CPU with nothing pending sends a heartbeat
 * (count 0), which tells the agent that nothing older is still waiting
 * there.  The program runs on the CPU the syscall ran on. */
static __always_inline void on_agent_write(void *ctx)
{
	struct st_batch *b;

	if ((bpf_get_current_pid_tgid() >> 32) != agent_tgid)
		return;
	b = batch_get(ctx);
	if (b)
		batch_flush(ctx, b, ST_FLUSH_AGENT);
}

/* The MSG_* flags of a receive call (0 for the others). */
static __always_inline __u64 call_flags(const int sys, struct pt_regs *regs)
{
	if (sys == ST_SYS_RECVFROM || sys == ST_SYS_RECVMMSG)
		return PT_REGS_SYSCALL_ARG4(regs);
	if (sys == ST_SYS_RECVMSG)
		return PT_REGS_SYSCALL_ARG3(regs);
	return 0;
}

/* The connection's stream offsets move past a call's bytes (a peeked read is
 * read again: it moves nothing). */
static __always_inline void advance(struct st_conn *c, bool egress, __u64 flags, __u64 bytes)
{
	if (egress)
		__sync_fetch_and_add(&c->bytes_tx, bytes);
	else if (!(flags & MSG_PEEK))
		__sync_fetch_and_add(&c->bytes_rx, bytes);
}

static __always_inline int on_data_exit(struct st_sys_exit_ctx *ctx, const int sys)
{
	const bool egress = sys >= ST_SYS_WRITE;
	__s64 ret = ctx->ret;
	struct task_struct *task;
	struct pt_regs *regs;
	struct st_batch *b;
	struct st_event *e;
	__u8 *payload;
	struct st_conn *c;
	struct file *file;
	__u64 pid_tgid, ino, uaddr = 0, flags = 0, bytes;
	__u32 tgid, lim, got = 0;
	__u8 evflags = 0;
	__u32 resumed = 0;
	int fd;

	if (!reportable(ret)) {
		if (sys == ST_SYS_WRITE && ret == 0 && batching)
			on_agent_write(ctx);
		return 0;
	}
	pid_tgid = bpf_get_current_pid_tgid();
	tgid = pid_tgid >> 32;
	if (!traced(tgid))
		return 0;

	task = bpf_get_current_task_btf();
	regs = bpf_task_pt_regs(task);
	if (!regs)
		return 0;
	fd = (int)PT_REGS_SYSCALL_ARG1(regs);
	file = fd_to_file(task, fd);
	if (!file) {
		count(ST_CNT_BAD_FD);
		return 0;
	}
	ino = socket_ino(file);
	if (!ino)
		return 0;
	c = bpf_map_lookup_elem(&conns, &ino);
	if (!c) {
		if (ret < 0)
			return 0;
		c = conn_create(file, ino, tgid, ST_ROLE_UNKNOWN);
		if (!c)
			return 0;
		evflags = ST_F_NEW_CONN;
	}
	if (c->flags & ST_CONN_IGNORE)
		return 0;
	if (c->app_proto == ST_PROTO_OPAQUE)
		return on_opaque_data(ctx, sys, task, regs, pid_tgid, fd, ret, c, ino, evflags);
	if (c->shed) {
		__u64 cflags = call_flags(sys, regs);

		if (!shed_step(c, (__u64)sys << 32 | (ret > 0 ? (__u32)ret : 0), PT_REGS_SYSCALL_ARG2(regs),
			       PT_REGS_SYSCALL_ARG3(regs), cflags)) {
			if (ret > 0 && sys != ST_SYS_RECVMMSG && sys != ST_SYS_SENDMMSG)
				advance(c, egress, cflags, ret);
			return 0;
		}
		resumed = 1;
	}
	b = batch_get(ctx);
	if (!b)
		return 0;
	e = batch_slot(b);
	payload = (__u8 *)(e + 1);

	fill_header(e, task, ST_EV_DATA, sys, egress ? ST_DIR_EGRESS : ST_DIR_INGRESS,
		    pid_tgid, fd, ret, c);
	e->flags |= evflags;
	if (ret < 0) {
		batch_commit(ctx, b, e, 0);
		return 0;
	}

	bytes = ret;
	lim = payload_limit(ret);
	switch (sys) {
	/* Never copy more than the caller's buffer: recv(MSG_TRUNC) on UDP
	 * returns the datagram's full length, which can exceed it. */
	case ST_SYS_READ:
	case ST_SYS_WRITE:
		got = capture_buf(payload, PT_REGS_SYSCALL_ARG2(regs), PT_REGS_SYSCALL_ARG3(regs) < lim ? PT_REGS_SYSCALL_ARG3(regs) : lim);
		break;
	case ST_SYS_READV:
	case ST_SYS_WRITEV:
		got = capture_iov(b, PT_REGS_SYSCALL_ARG2(regs), PT_REGS_SYSCALL_ARG3(regs), lim);
		break;
	case ST_SYS_RECVFROM:
	case ST_SYS_SENDTO:
		got = capture_buf(payload, PT_REGS_SYSCALL_ARG2(regs), PT_REGS_SYSCALL_ARG3(regs) < lim ? PT_REGS_SYSCALL_ARG3(regs) : lim);
		flags = PT_REGS_SYSCALL_ARG4(regs);
		uaddr = PT_REGS_SYSCALL_ARG5(regs);
		break;
	case ST_SYS_RECVMSG:
	case ST_SYS_SENDMSG: {
		struct st_msghdr_head m;

		flags = PT_REGS_SYSCALL_ARG3(regs);
		if (bpf_probe_read_user(&m, sizeof(m), (const void *)PT_REGS_SYSCALL_ARG2(regs))) {
			count(ST_CNT_UREAD_FAIL);
			break;
		}
		got = capture_iov(b, m.iov, m.iovlen, lim);
		uaddr = m.name;
		break;
	}
	case ST_SYS_RECVMMSG:
	case ST_SYS_SENDMMSG: {
		struct st_mmsghdr m;

		flags = PT_REGS_SYSCALL_ARG4(regs);
		/* ret counts messages; report the first one only */
		if (bpf_probe_read_user(&m, sizeof(m), (const void *)PT_REGS_SYSCALL_ARG2(regs))) {
			count(ST_CNT_UREAD_FAIL);
			bytes = 0;
			e->ret = 0;
			break;
		}
		if (ret > 1)
			e->flags |= ST_F_MULTI_MSG;
		bytes = m.msg_len;
		e->ret = bytes;
		got = capture_iov(b, m.iov, m.iovlen, payload_limit(bytes));
		uaddr = m.name;
		break;
	}
	}

	if (c->app_proto == ST_PROTO_UNKNOWN && got) {
		infer_proto(e, c, got, bytes);
	} else if (got >= 5 && c->app_proto != ST_PROTO_OPAQUE && tls_record_header(payload) &&
		   payload[0] == 0x16 && (got == 5 ? bytes == 5 : payload[5] == 1)) {
		/* A TLS ClientHello on a connection that spoke a known protocol
		 * (PostgreSQL's SSLRequest, MySQL's SSL request, STARTTLS), as
		 * written, or its record header alone as OpenSSL reads it: from
		 * here on the connection carries TLS records.  Nothing is sent
		 * for it. */
		c->app_proto = ST_PROTO_OPAQUE;
		c->flags |= ST_CONN_TLS;
		count(ST_CNT_PROTO_OPAQUE);
		tls_count(ST_TLS_CNT_STARTTLS);
		if (egress)
			__sync_fetch_and_add(&c->bytes_tx, bytes);
		else if (!(flags & MSG_PEEK))
			__sync_fetch_and_add(&c->bytes_rx, bytes);
		return 0;
	}

	/* stale buffer bytes past `got` are cleared in frame_step */
	if (frame_step(c, e, *(const __u64 *)payload, got, resumed) == ST_STEP_SHED) {
		count(ST_CNT_SHED_SYSCALLS);
		advance(c, egress, flags, bytes);
		return 0;  /* not committed: the slot is reused */
	}

	if (c->l4_proto == IPPROTO_UDP && uaddr)
		peer_from_sockaddr(e, uaddr);

	if (c->l4_proto == IPPROTO_TCP && sys != ST_SYS_RECVMMSG && sys != ST_SYS_SENDMMSG) {
		struct tcp_sock *tp = (struct tcp_sock *)c->sk;
		__u32 seq = 0;
		long err;

		if (egress)
			err = BPF_CORE_READ_INTO(&seq, tp, write_seq);
		else
			err = BPF_CORE_READ_INTO(&seq, tp, copied_seq);
		if (!err) {
			if (egress || !(flags & MSG_PEEK))
				seq -= (__u32)bytes;
			e->tcp_seq = seq;
			e->flags |= ST_F_SEQ_VALID;
		} else {
			count(ST_CNT_KREAD_FAIL);
		}
	}
	if (!egress && (flags & MSG_PEEK))
		e->flags |= ST_F_PEEK;

	if (got < bytes) {
		e->flags |= ST_F_TRUNCATED;
		count(ST_CNT_TRUNCATED);
	}
	e->payload_len = got;
	advance(c, egress, flags, bytes);
	batch_commit(ctx, b, e, got);
	return 0;
}

#define DATA_EXIT(name, sys)                                            \
	SEC("tracepoint/syscalls/sys_exit_" #name)                      \
	int st_exit_##name(struct st_sys_exit_ctx *ctx)                 \
	{                                                               \
		return on_data_exit(ctx, sys);                          \
	}

DATA_EXIT(read, ST_SYS_READ)
DATA_EXIT(readv, ST_SYS_READV)
DATA_EXIT(recvfrom, ST_SYS_RECVFROM)
DATA_EXIT(recvmsg, ST_SYS_RECVMSG)
DATA_EXIT(recvmmsg, ST_SYS_RECVMMSG)
DATA_EXIT(write, ST_SYS_WRITE)
DATA_EXIT(writev, ST_SYS_WRITEV)
DATA_EXIT(sendto, ST_SYS_SENDTO)
DATA_EXIT(sendmsg, ST_SYS_SENDMSG)
DATA_EXIT(sendmmsg, ST_SYS_SENDMMSG)

/* ---- connection lifecycle ---- */
static __always_inline int on_open(void *ctx, __u16 sys, int fd, __s64 ret, __u8 role)
{
	struct task_struct *task;
	struct st_batch *b;
	struct st_event *e;
	struct st_conn *c;
	struct file *file;
	__u64 pid_tgid = bpf_get_current_pid_tgid(), ino;
	__u32 tgid = pid_tgid >> 32;

	if (!traced(tgid))
		return 0;
	task = bpf_get_current_task_btf();
	file = fd_to_file(task, fd);
	if (!file) {
		count(ST_CNT_BAD_FD);
		return 0;
	}
	ino = socket_ino(file);
	if (!ino)
		return 0;
	c = bpf_map_lookup_elem(&conns, &ino);
	if (c && !(c->flags & ST_CONN_IGNORE)) {
		/* known socket (e.g. UDP used before connect()): refresh */
		struct sock *sk = (struct sock *)c->sk;

		conn_fill_addrs(sk, c);
		c->role = role;
	} else {
		c = conn_create(file, ino, tgid, role);
		if (!c)
			return 0;
	}
	if (c->flags & ST_CONN_IGNORE)
		return 0;
	b = batch_get(ctx);
	if (!b)
		return 0;
	e = batch_slot(b);
	fill_header(e, task, ST_EV_CONN_OPEN, sys, ST_DIR_NONE, pid_tgid, fd, ret, c);
	batch_commit(ctx, b, e, 0);
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_connect")
int st_exit_connect(struct st_sys_exit_ctx *ctx)
{
	__s64 ret = ctx->ret;
	struct pt_regs *regs;

	if (ret != 0 && ret != -EINPROGRESS)
		return 0;
	if (!traced(bpf_get_current_pid_tgid() >> 32))
		return 0;
	regs = bpf_task_pt_regs(bpf_get_current_task_btf());
	if (!regs)
		return 0;
	return on_open(ctx, ST_SYS_CONNECT, (int)PT_REGS_SYSCALL_ARG1(regs), ret, ST_ROLE_CLIENT);
}

SEC("tracepoint/syscalls/sys_exit_accept")
int st_exit_accept(struct st_sys_exit_ctx *ctx)
{
	if (ctx->ret < 0)
		return 0;
	return on_open(ctx, ST_SYS_ACCEPT, (int)ctx->ret, ctx->ret, ST_ROLE_SERVER);
}

SEC("tracepoint/syscalls/sys_exit_accept4")
int st_exit_accept4(struct st_sys_exit_ctx *ctx)
{
	if (ctx->ret < 0)
		return 0;
	return on_open(ctx, ST_SYS_ACCEPT4, (int)ctx->ret, ctx->ret, ST_ROLE_SERVER);
}

/* True when the fd table holds the only reference to `file`, i.e. this
 * close() really closes the socket (not a dup()ed fd, nor the parent's copy
 * of a socket a forked child keeps using).  Unknown layouts count as last. */
static __always_inline bool file_last_ref(struct file *file)
{
	long long n = 0;

	if (bpf_core_field_exists(((struct file___ref *)file)->f_ref)) {
		if (bpf_core_read(&n, sizeof(n), &((struct file___ref *)file)->f_ref.refcnt.counter))
			return true;
		return n == 0;
	}
	if (bpf_core_field_exists(((struct file___count *)file)->f_count)) {
		if (bpf_core_read(&n, sizeof(n), &((struct file___count *)file)->f_count.counter))
			return true;
		return n == 1;
	}
	return true;
}

/* close(): at entry, while the fd still resolves.  Only the close of the
 * last reference to the socket's file ends the connection; closing a
 * duplicate (dup(), or a parent's copy after fork) leaves it tracked. */
SEC("tracepoint/syscalls/sys_enter_close")
int st_enter_close(struct st_sys_enter_ctx *ctx)
{
	int fd = (int)ctx->args[0];
	struct task_struct *task;
	struct st_batch *b;
	struct st_event *e;
	struct st_conn *c;
	struct file *file;
	__u64 pid_tgid = bpf_get_current_pid_tgid(), ino;

	if (!traced(pid_tgid >> 32))
		return 0;
	task = bpf_get_current_task_btf();
	file = fd_to_file(task, fd);
	if (!file)
		return 0;
	ino = socket_ino(file);
	if (!ino)
		return 0;
	c = bpf_map_lookup_elem(&conns, &ino);
	if (!c)
		return 0;
	if (!file_last_ref(file))
		return 0;
	if (c->flags & ST_CONN_TLS)
		bpf_map_delete_elem(&tls_conns, &ino);
	if (!(c->flags & ST_CONN_IGNORE)) {
		b = batch_get(ctx);
		if (b) {
			e = batch_slot(b);
			fill_header(e, task, ST_EV_CONN_CLOSE, ST_SYS_CLOSE, ST_DIR_NONE, pid_tgid, fd, 0, c);
			if (c->shed)
				e->xflags = ST_X_SHED;
			batch_commit(ctx, b, e, 0);
		}
	}
	bpf_map_delete_elem(&conns, &ino);
	return 0;
}

/* ---- processes ---- */

/* task_newtask (not sched_process_fork): its clone_flags tell a new process
 * from a new thread, so only real children are added to `pids`. */
SEC("tracepoint/task/task_newtask")
int st_task_newtask(struct st_newtask_ctx *ctx)
{
	struct st_batch *b;
	struct st_event *e;
	__u64 pid_tgid;
	__u32 tgid, child, flags, *pflags;

	if (trace_all)
		return 0;
	if (ctx->clone_flags & CLONE_THREAD)
		return 0;
	pid_tgid = bpf_get_current_pid_tgid();
	tgid = pid_tgid >> 32;
	pflags = bpf_map_lookup_elem(&pids, &tgid);
	if (!pflags)
		return 0;
	flags = *pflags | ST_PID_INHERITED;
	child = ctx->pid;
	if (bpf_map_update_elem(&pids, &child, &flags, BPF_ANY)) {
		count(ST_CNT_PIDS_FULL);
		return 0;
	}
	b = batch_get(ctx);
	if (!b)
		return 0;
	e = batch_slot(b);
	fill_header(e, bpf_get_current_task_btf(), ST_EV_PROC_FORK, ST_SYS_NONE, ST_DIR_NONE, pid_tgid, -1, tgid, NULL);
	e->tgid = child;
	batch_commit(ctx, b, e, 0);
	return 0;
}

/* sched_process_exec fires in exec_binprm() once the new image is loaded:
 * begin_new_exec() has already set task->comm to the new program's name
 * (NUL padded by __set_task_comm), and de_thread() has made the caller the
 * thread group leader, so tgid is the process id.  A match in `comms` adds
 * the process to `pids` before the new program runs a single instruction,
 * so even a process that lives a few milliseconds is traced from its first
 * syscall.  Runs for every exec on the host: one hash lookup when comms
 * are selected, nothing else. */
SEC("tracepoint/sched/sched_process_exec")
int st_sched_process_exec(void *ctx)
{
	struct task_struct *task;
	__u64 key[ST_COMM_LEN / 8];
	__u32 tgid, flags, *pflags;
	const __u64 *comm;

	if (trace_all)
		return 0;
	task = bpf_get_current_task_btf();
	comm = (const __u64 *)task->comm;
	key[0] = comm[0];
	key[1] = comm[1];
	if (!bpf_map_lookup_elem(&comms, key))
		return 0;
	tgid = bpf_get_current_pid_tgid() >> 32;
	if (tgid == agent_tgid)
		return 0;
	flags = ST_PID_TRACED | ST_PID_BY_COMM;
	pflags = bpf_map_lookup_elem(&pids, &tgid);
	if (pflags) {
		*pflags |= flags;
		return 0;
	}
	if (bpf_map_update_elem(&pids, &tgid, &flags, BPF_ANY))
		count(ST_CNT_PIDS_FULL);
	return 0;
}

/* Fires for every exiting thread; acts when the thread group is dead
 * (signal->live already dropped to 0), whichever thread exits last. */
SEC("tracepoint/sched/sched_process_exit")
int st_sched_process_exit(void *ctx)
{
	struct task_struct *task;
	struct signal_struct *sig;
	struct st_batch *b;
	struct st_event *e;
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u32 tgid = pid_tgid >> 32;

	if (!traced(tgid))
		return 0;
	task = bpf_get_current_task_btf();
	sig = task->signal;
	if (!sig || sig->live.counter != 0)
		return 0;
	if (!trace_all)
		bpf_map_delete_elem(&pids, &tgid);
	b = batch_get(ctx);
	if (!b)
		return 0;
	e = batch_slot(b);
	fill_header(e, task, ST_EV_PROC_EXIT, ST_SYS_NONE, ST_DIR_NONE, pid_tgid, -1, 0, NULL);
	batch_commit(ctx, b, e, 0);
	return 0;
}
