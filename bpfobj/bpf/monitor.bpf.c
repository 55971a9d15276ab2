// SPDX-License-Identifier: GPL-2.0
/* sidetrace monitor: CPU, memory, disk and network of the traced processes,
 * aggregated in maps that the agent reads periodically (no per-event output).
 *
 * Hooks, by group (the agent loads and attaches each program on its own, so
 * a hook this kernel lacks disables that program only):
 *   cpu:    tp_btf sched_switch, sched_wakeup, sched_wakeup_new,
 *           sched_process_exit (thread slots), sched_process_exec;
 *           sock_send_length / sock_recv_length (checkpoints for spans)
 *   memory: perf_event programs on the software events page-faults-min and
 *           page-faults-maj (one per CPU, opened by the agent; the kernel
 *           classifies the fault), tp_btf mark_victim (OOM kills)
 *   disk:   tp_btf block_io_start (the submitting process), block_rq_issue,
 *           block_rq_complete (bytes completed, as /proc/diskstats counts)
 *   net:    tp_btf sock_send_length / sock_recv_length (a traced thread
 *           used a TCP socket: owner, smoothed RTT; tcp_rcv_space_adjust
 *           where those are missing), inet_sock_set_state (state changes;
 *           connect() marks the owner), tcp_retransmit_skb
 *
 * tp_btf (BTF-typed raw tracepoints) hand the programs the kernel's own
 * pointers: task and socket fields are plain loads, no probe reads, and no
 * tracefs record is built.
 *
 * Which tasks count: the tracer's `pids` map (the agent hands the loader the
 * tracer's own map, so fork and exec following apply here too), or every
 * task but the agent's and kernel threads in trace_all mode.  The decision is
 * cached per tgid in a direct-mapped array until the agent bumps
 * `targets_gen` (it does when it changes `pids`) and redone at exec, so a
 * context switch between two untraced tasks costs two inlined array
 * lookups: no helper call, no clock read.
 *
 * Per traced thread the task storage keeps a small state machine (running,
 * waiting for a CPU, sleeping, blocked for I/O) with cumulative times;
 * threads that do socket I/O also get a slot of checkpoints in the mmapped
 * `threads` array (see monitor_maps.h), from which the agent computes a
 * span's on-CPU time, run-queue wait and block I/O wait.  Traced TCP
 * connections get a slot in the mmapped `tcp` array: smoothed RTT and
 * recent retransmissions.
 *
 * Everything is bounded: fixed arrays, LRU or fixed hashes (a full map is
 * counted in `mon_counters`), task and socket storage (freed with the task
 * or socket).
 */
#include "bpf_api.h"
#include "monitor_kernel.h"
#include "monitor_maps.h"

char LICENSE[] SEC("license") = "GPL";

/* Not (yet) in bpf_api.h. */
#define BPF_MAP_TYPE_SK_STORAGE 24
#define BPF_F_MMAPABLE (1U << 10)
static void *(*bpf_sk_storage_get)(void *map, void *sk, void *value, __u64 flags) = (void *)107;

#define AF_INET 2
#define AF_INET6 10
#define IPPROTO_TCP 6
#define TCP_ESTABLISHED 1
#define TCP_SYN_SENT 2
#define TCP_CLOSE 7
#define REQ_OP_MASK 0xff
#define REQ_OP_FLUSH 2
#define REQ_OP_DISCARD 3
#define REQ_OP_SECURE_ERASE 5

#define CLAIM_RETRY_NS 1000000000ULL
#define THREAD_SLOT_GRACE_NS 2000000000ULL
#define TCP_SLOT_GRACE_NS 5000000000ULL

#define barrier() asm volatile("" ::: "memory")
/* Keep clang from merging pointer tests into arithmetic the verifier refuses. */
#define barrier_var(v) asm volatile("" : "+r"(v))

/* ---- configuration (.rodata, set by the loader) ---- */
const volatile __u32 trace_all = 0;    /* 1: every task but agent_tgid's and kernel threads */
const volatile __u32 agent_tgid = 0;
const volatile __u32 thread_marks = 1; /* 0: no thread checkpoints (the cpu group is off) */
const volatile __u32 tcp_slots = 1;    /* 0: no TCP owners, slots, RTT (the net group is off) */

/* .data, written by the agent: bumped whenever it changes `pids`, which
 * makes every task's cached decision stale. */
__u32 targets_gen = 1;

/* ---- maps ---- */

/* The tracer's map of traced processes (the agent passes the tracer's fd);
 * declared identically so the object also loads alone. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);   /* tgid */
	__type(value, __u32); /* the tracer's st_pid_flags */
} pids SEC(".maps");

struct mon_task {
	__u64 since_ns;   /* when `state` was entered */
	__u64 oncpu_ns;   /* cumulative while traced */
	__u64 wait_ns;
	__u64 iowait_ns;
	__u64 claim_ns;   /* last attempt at a thread slot */
	__u32 gen;        /* targets_gen when last seen traced */
	__u32 slot;       /* thread slot + 1; 0: none */
	__u32 state;      /* enum mon_state */
	__u32 pad;
};

/* Per-tgid decision cache, direct-mapped: tgid mod MON_VERDICT_SLOTS. */
#define MON_VERDICT_SLOTS 65536

struct mon_verdict {
	__u32 tgid;
	__u32 gen;    /* targets_gen it was decided at; 0: decide again */
	__u32 traced;
	__u32 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MON_VERDICT_SLOTS);
	__type(key, __u32);
	__type(value, struct mon_verdict);
} verdicts SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct mon_task);
} tasks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, MON_THREAD_SLOTS);
	__type(key, __u32);
	__type(value, struct mon_thread);
} threads SEC(".maps");

struct mon_sock {
	__u32 tgid; /* owner: the traced process that received or connected on it */
	__u32 slot; /* tcp slot + 1; 0: none */
	__u64 claim_ns;
};

struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct mon_sock);
} socks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, MON_TCP_SLOTS);
	__type(key, __u32);
	__type(value, struct mon_tcp);
} tcp SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct mon_shared);
} shared SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 2048);
	__type(key, __u32); /* tgid */
	__type(value, struct mon_proc);
} procs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 256);
	__type(key, struct mon_disk_key);
	__type(value, struct mon_disk);
} disks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 8192);
	__type(key, __u64); /* struct request address */
	__type(value, struct mon_request);
} requests SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct mon_host);
} host SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, MON_CNT_MAX);
	__type(key, __u32);
	__type(value, __u64); /* enum mon_counter */
} mon_counters SEC(".maps");

/* Zero values to insert from (map values, not stack: they are large). */
const struct mon_proc zero_proc = {};
const struct mon_disk zero_disk = {};

/* ---- helpers ---- */
static __always_inline void count(__u32 slot)
{
	__u64 *v = bpf_map_lookup_elem(&mon_counters, &slot);

	if (v)
		*v += 1;
}

static __always_inline struct mon_host *host_counters(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&host, &zero);
}

/* A histogram index, bounded where the verifier can see it: older
 * verifiers (Debian 12's 6.1 among them) know nothing of the result of an
 * OR with a variable (the steps below), and a 32-bit comparison then
 * bounds only the lower half of the register; so the clamp is a 64-bit
 * comparison of a value the compiler cannot narrow. */
static __always_inline __u64 log2_bucket(__u64 ns)
{
	__u64 v = ns / 1000;
	__u64 r = 0, s;

	s = (v > 0xFFFFFFFFULL) << 5; v >>= s; r |= s;
	s = (v > 0xFFFF) << 4; v >>= s; r |= s;
	s = (v > 0xFF) << 3; v >>= s; r |= s;
	s = (v > 0xF) << 2; v >>= s; r |= s;
	s = (v > 0x3) << 1; v >>= s; r |= s;
	r |= (v >> 1);
	barrier_var(r);
	return r < MON_HIST_BUCKETS ? r : MON_HIST_BUCKETS - 1;
}

static __always_inline bool decide(struct task_struct *t)
{
	__u32 tgid = t->tgid;

	if (tgid == 0 || tgid == agent_tgid || (t->flags & PF_KTHREAD))
		return false;
	if (trace_all)
		return true;
	return bpf_map_lookup_elem(&pids, &tgid) != NULL;
}

/* Whether `t`'s process is traced: the cached decision for its tgid
 * (an array lookup, inlined by the verifier), decided again when the
 * agent bumped targets_gen, at exec, or when another tgid took the slot. */
static __always_inline bool is_traced(struct task_struct *t)
{
	__u32 tgid = t->tgid, idx = tgid & (MON_VERDICT_SLOTS - 1), gen = targets_gen;
	struct mon_verdict *v = bpf_map_lookup_elem(&verdicts, &idx);
	bool traced;

	if (!v)
		return false;
	if (v->tgid == tgid && v->gen == gen)
		return v->traced;
	traced = decide(t);
	v->tgid = tgid;
	v->gen = gen;
	v->traced = traced;
	return traced;
}

/* The task's monitor state if it is traced, else NULL. */
static __always_inline struct mon_task *traced_task(struct task_struct *t)
{
	struct mon_task *s;
	__u32 gen = targets_gen;

	if (!is_traced(t))
		return NULL;
	s = bpf_task_storage_get(&tasks, t, 0, BPF_LOCAL_STORAGE_GET_F_CREATE);
	if (!s) {
		count(MON_CNT_TASK_STORAGE_FAILED);
		return NULL;
	}
	if (s->gen != gen) {
		/* untraced for a while, or new: its times restart from its next
		 * transition (the totals so far stay) */
		s->state = MON_UNKNOWN;
		s->gen = gen;
	}
	return s;
}

static __always_inline struct mon_proc *proc_of(__u32 tgid)
{
	struct mon_proc *p = bpf_map_lookup_elem(&procs, &tgid);

	if (p)
		return p;
	if (bpf_map_update_elem(&procs, &tgid, &zero_proc, BPF_NOEXIST) == -7 /* E2BIG */) {
		count(MON_CNT_PROCS_FULL);
		return NULL;
	}
	return bpf_map_lookup_elem(&procs, &tgid);
}

/* Fold the time spent in the current state into the task's and its
 * process's totals; the state's clock restarts at `now`. */
static __always_inline void settle(struct mon_task *s, struct mon_proc *p, __u64 now)
{
	__u64 d = now - s->since_ns;

	switch (s->state) {
	case MON_RUNNING:
		s->oncpu_ns += d;
		if (p)
			p->oncpu_ns += d;
		break;
	case MON_WAITING:
		s->wait_ns += d;
		if (p) {
			__u64 b = log2_bucket(d);

			p->wait_ns += d;
			if (b < MON_HIST_BUCKETS)
				p->wait_hist[b] += 1;
		}
		break;
	case MON_IOWAIT:
		s->iowait_ns += d;
		if (p)
			p->iowait_ns += d;
		break;
	}
	s->since_ns = now;
}

/* Append a checkpoint: the current thread's cumulative times now.  It is
 * running (this is its own context), so its on-CPU clock is open. */
static __always_inline void checkpoint(struct mon_task *s, __u64 now)
{
	__u32 idx = s->slot - 1;
	struct mon_thread *t;
	struct mon_mark *m;
	__u32 seq;

	if (!s->slot)
		return;
	t = bpf_map_lookup_elem(&threads, &idx);
	if (!t)
		return;
	if (s->state != MON_RUNNING) { /* unknown until now (just became traced) */
		s->state = MON_RUNNING;
		s->since_ns = now;
	}
	seq = t->seq;
	t->seq = seq + 1;
	barrier();
	m = &t->marks[t->head & (MON_MARKS - 1)];
	m->ts_ns = now;
	m->oncpu_ns = s->oncpu_ns + (now - s->since_ns);
	m->wait_ns = s->wait_ns;
	m->iowait_ns = s->iowait_ns;
	barrier();
	t->head += 1;
	t->seq = seq + 2;
}

/* A slot of checkpoints for `t` (the current task, traced), unless it has one. */
static __always_inline void claim_thread(struct task_struct *t, struct mon_task *s, __u64 now)
{
	__u32 tid = t->pid, h;

	if (s->slot || now - s->claim_ns < CLAIM_RETRY_NS)
		return;
	s->claim_ns = now;
	h = (tid * 2654435761U) >> (32 - MON_THREAD_BITS);
	for (int i = 0; i < MON_THREAD_PROBES; i++) {
		__u32 idx = (h + i) & (MON_THREAD_SLOTS - 1);
		struct mon_thread *th = bpf_map_lookup_elem(&threads, &idx);
		__u32 old, seq;

		if (!th)
			return;
		old = th->tid;
		if (old && old != tid && !(th->exit_ns && now - th->exit_ns > THREAD_SLOT_GRACE_NS))
			continue;
		seq = th->seq;
		if ((seq & 1) || __sync_val_compare_and_swap(&th->seq, seq, seq + 1) != seq)
			continue;
		if (th->tid != old) { /* taken meanwhile */
			th->seq = seq + 2;
			continue;
		}
		if (!old)
			count(MON_CNT_THREAD_SLOTS_USED);
		th->tid = tid;
		th->tgid = t->tgid;
		th->exit_ns = 0;
		th->head = 0;
		barrier();
		th->seq = seq + 2;
		s->slot = idx + 1;
		return;
	}
	count(MON_CNT_THREAD_SLOTS_FULL);
}

/* ---- cpu ---- */

SEC("tp_btf/sched_switch")
int on_sched_switch(__u64 *ctx)
{
	bool preempt = (bool)ctx[0];
	struct task_struct *prev = (struct task_struct *)ctx[1];
	struct task_struct *next = (struct task_struct *)ctx[2];
	unsigned int prev_state = (unsigned int)ctx[3];
	struct mon_task *s = NULL, *n = NULL;
	struct mon_proc *p;
	__u64 now;

	if (prev->pid)
		s = traced_task(prev);
	if (next->pid)
		n = traced_task(next);
	if (!s) {
		barrier_var(n);
		if (!n)
			return 0; /* the usual case: neither is traced */
	}
	now = bpf_ktime_get_ns();
	if (s) {
		p = proc_of(prev->tgid);
		settle(s, p, now);
		if (preempt || prev_state == 0) {
			s->state = MON_WAITING;
			if (p)
				p->involuntary += 1;
		} else {
			s->state = MON_READ_BITFIELD(prev, in_iowait) ? MON_IOWAIT : MON_SLEEPING;
			if (p)
				p->voluntary += 1;
		}
	}
	if (n) {
		if (n->state == MON_WAITING) {
			settle(n, proc_of(next->tgid), now);
		} else {
			n->since_ns = now; /* unknown until now: nothing to fold */
		}
		n->state = MON_RUNNING;
	}
	return 0;
}

static __always_inline void woken(struct task_struct *t)
{
	struct mon_task *s = traced_task(t);
	__u64 now;

	/* A wake-up of a task still on its CPU (woken before it could block)
	 * changes nothing: its switch-out will say runnable. */
	if (!s || s->state == MON_RUNNING || s->state == MON_WAITING)
		return;
	now = bpf_ktime_get_ns();
	if (s->state == MON_IOWAIT)
		settle(s, proc_of(t->tgid), now);
	s->state = MON_WAITING;
	s->since_ns = now;
}

SEC("tp_btf/sched_wakeup")
int on_sched_wakeup(__u64 *ctx)
{
	woken((struct task_struct *)ctx[0]);
	return 0;
}

SEC("tp_btf/sched_wakeup_new")
int on_sched_wakeup_new(__u64 *ctx)
{
	woken((struct task_struct *)ctx[0]);
	return 0;
}

/* Exec may make a process traced (the tracer matches --comm names at
 * exec): decide again at its next event. */
SEC("tp_btf/sched_process_exec")
int on_sched_exec(__u64 *ctx)
{
	struct task_struct *t = (struct task_struct *)ctx[0];
	__u32 idx = (__u32)t->tgid & (MON_VERDICT_SLOTS - 1);
	struct mon_verdict *v = bpf_map_lookup_elem(&verdicts, &idx);

	if (v)
		v->gen = 0;
	return 0;
}

/* A thread ends: its slot stays readable for THREAD_SLOT_GRACE_NS, then may
 * be claimed by another thread. */
SEC("tp_btf/sched_process_exit")
int on_thread_exit(__u64 *ctx)
{
	struct task_struct *t = (struct task_struct *)ctx[0];
	struct mon_task *s = bpf_task_storage_get(&tasks, t, 0, 0);
	__u32 idx;
	struct mon_thread *th;

	if (!s || !s->slot)
		return 0;
	idx = s->slot - 1;
	th = bpf_map_lookup_elem(&threads, &idx);
	if (th && th->tid == (__u32)t->pid)
		th->exit_ns = bpf_ktime_get_ns();
	return 0;
}

/* ---- memory ---- */

static __always_inline void fault(bool major)
{
	struct task_struct *t = bpf_get_current_task_btf();
	struct mon_proc *p;

	if (!t->pid || !traced_task(t))
		return;
	p = proc_of(t->tgid);
	if (!p)
		return;
	if (major)
		p->major_faults += 1;
	else
		p->minor_faults += 1;
}

SEC("perf_event")
int on_minor_fault(void *ctx)
{
	fault(false);
	return 0;
}

SEC("perf_event")
int on_major_fault(void *ctx)
{
	fault(true);
	return 0;
}

SEC("tp_btf/mark_victim")
int on_oom_victim(__u64 *ctx)
{
	struct task_struct *t = (struct task_struct *)ctx[0];
	struct mon_host *h = host_counters();
	struct mon_proc *p;

	if (h)
		h->oom_kills += 1;
	if (traced_task(t) && (p = proc_of(t->tgid)))
		p->oom_kills += 1;
	return 0;
}

/* ---- disk ---- */

/* Submission: the context is the process that issued the I/O. */
SEC("tp_btf/block_io_start")
int on_block_io_start(__u64 *ctx)
{
	__u64 rq = ctx[0];
	struct task_struct *t = bpf_get_current_task_btf();
	struct mon_request r = {};

	if (!t->pid || !traced_task(t))
		return 0;
	r.tgid = t->tgid;
	bpf_map_update_elem(&requests, &rq, &r, BPF_ANY);
	return 0;
}

SEC("tp_btf/block_rq_issue")
int on_block_rq_issue(__u64 *ctx)
{
	__u64 rq = ctx[0];
	struct mon_request *r = bpf_map_lookup_elem(&requests, &rq);
	struct mon_request fresh = {};

	if (r) {
		r->issue_ns = bpf_ktime_get_ns();
		return 0;
	}
	fresh.issue_ns = bpf_ktime_get_ns();
	bpf_map_update_elem(&requests, &rq, &fresh, BPF_ANY);
	return 0;
}

static __always_inline struct mon_disk *disk_of(struct mon_disk_key *key)
{
	struct mon_disk *d = bpf_map_lookup_elem(&disks, key);

	if (d)
		return d;
	if (bpf_map_update_elem(&disks, key, &zero_disk, BPF_NOEXIST) == -7 /* E2BIG */) {
		count(MON_CNT_DISKS_FULL);
		return NULL;
	}
	return bpf_map_lookup_elem(&disks, key);
}

/* Called for every completed part of a request, with the bytes completed
 * (what /proc/diskstats adds to its sector counts); the request is done
 * when they cover what is left of it. */
SEC("tp_btf/block_rq_complete")
int on_block_rq_complete(__u64 *ctx)
{
	struct request *rq = (struct request *)ctx[0];
	__u32 nr_bytes = (__u32)ctx[2];
	__u64 key = ctx[0], now = bpf_ktime_get_ns();
	struct mon_request *r = bpf_map_lookup_elem(&requests, &key);
	struct mon_disk_key dk = {};
	struct gendisk *disk = NULL;
	struct request_queue *q = NULL;
	unsigned int flags = 0, left = 0;
	int major = 0, minor = 0;
	struct mon_disk *d;
	__u32 op;

	bpf_core_read(&q, sizeof(q), &rq->q);
	if (q)
		bpf_core_read(&disk, sizeof(disk), &q->disk);
	if (disk) {
		bpf_core_read(&major, sizeof(major), &disk->major);
		bpf_core_read(&minor, sizeof(minor), &disk->first_minor);
	}
	bpf_core_read(&flags, sizeof(flags), &rq->cmd_flags);
	bpf_core_read(&left, sizeof(left), &rq->__data_len);
	op = flags & REQ_OP_MASK;
	if (op == REQ_OP_DISCARD || op == REQ_OP_SECURE_ERASE)
		dk.op = MON_DISK_DISCARD;
	else if (op == REQ_OP_FLUSH)
		dk.op = MON_DISK_FLUSH;
	else
		dk.op = (op & 1) ? MON_DISK_WRITE : MON_DISK_READ;
	dk.dev = ((__u32)major << 20) | ((__u32)minor & 0xFFFFF);
	d = disk_of(&dk);
	if (d)
		d->bytes += nr_bytes;
	if (r && r->tgid && (dk.op == MON_DISK_READ || dk.op == MON_DISK_WRITE)) {
		struct mon_proc *p = proc_of(r->tgid);

		if (p) {
			if (dk.op == MON_DISK_WRITE)
				p->disk_write_bytes += nr_bytes;
			else
				p->disk_read_bytes += nr_bytes;
		}
	}
	if (nr_bytes < left)
		return 0; /* more of this request to come */
	if (d) {
		d->ops += 1;
		if (r && r->issue_ns) {
			__u64 lat = now - r->issue_ns;
			__u64 b = log2_bucket(lat);

			d->time_ns += lat;
			if (b < MON_HIST_BUCKETS)
				d->hist[b] += 1;
		}
	}
	if (!r || !r->issue_ns)
		count(MON_CNT_REQUESTS_UNMATCHED);
	if (r)
		bpf_map_delete_elem(&requests, &key);
	return 0;
}

/* ---- net ---- */

static __always_inline bool v4_mapped(const __u8 *a)
{
	const __u32 *w = (const __u32 *)a;

	return w[0] == 0 && w[1] == 0 && w[2] == 0xFFFF0000U; /* ::ffff:0:0/96, LE */
}

/* The connection's key as the agent builds it from a span (monitor_maps.h). */
static __always_inline bool tuple_of(const struct sock *sk, struct mon_tuple *k)
{
	unsigned short family = 0;
	__u16 num = 0, dport = 0;

	bpf_core_read(&family, sizeof(family), &sk->__sk_common.skc_family);
	bpf_core_read(&num, sizeof(num), &sk->__sk_common.skc_num);
	bpf_core_read(&dport, sizeof(dport), &sk->__sk_common.skc_dport);
	k->lport = num;
	k->rport = (dport >> 8) | (dport << 8);
	if (family == AF_INET) {
		k->family = AF_INET;
		bpf_core_read(k->laddr, 4, &sk->__sk_common.skc_rcv_saddr);
		bpf_core_read(k->raddr, 4, &sk->__sk_common.skc_daddr);
		return true;
	}
	if (family != AF_INET6)
		return false;
	bpf_core_read(k->laddr, 16, &sk->__sk_common.skc_v6_rcv_saddr);
	bpf_core_read(k->raddr, 16, &sk->__sk_common.skc_v6_daddr);
	if (v4_mapped(k->laddr) && v4_mapped(k->raddr)) {
		__builtin_memcpy(k->laddr, k->laddr + 12, 4);
		__builtin_memcpy(k->raddr, k->raddr + 12, 4);
		__builtin_memset(k->laddr + 4, 0, 12);
		__builtin_memset(k->raddr + 4, 0, 12);
		k->family = AF_INET;
	} else {
		k->family = AF_INET6;
	}
	return true;
}

/* FNV-1a over the key's ten 32-bit words, top MON_TCP_BITS bits. */
static __always_inline __u32 tuple_hash(const struct mon_tuple *k)
{
	const __u32 *w = (const __u32 *)k;
	__u32 h = 2166136261U;

	for (int i = 0; i < (int)(sizeof(*k) / 4); i++)
		h = (h ^ w[i]) * 16777619U;
	return h >> (32 - MON_TCP_BITS);
}

static __always_inline bool same_tuple(const struct mon_tuple *a, const struct mon_tuple *b)
{
	const __u64 *x = (const __u64 *)a, *y = (const __u64 *)b;

	for (int i = 0; i < (int)(sizeof(*a) / 8); i++)
		if (x[i] != y[i])
			return false;
	return true;
}

static __always_inline void claim_tcp(const struct sock *sk, struct mon_sock *ss, __u64 now)
{
	struct mon_tuple k = {};
	__u32 h;

	if (ss->slot || now - ss->claim_ns < CLAIM_RETRY_NS)
		return;
	ss->claim_ns = now;
	if (!tuple_of(sk, &k) || !k.lport || !k.rport)
		return;
	h = tuple_hash(&k);
	for (int i = 0; i < MON_TCP_PROBES; i++) {
		__u32 idx = (h + i) & (MON_TCP_SLOTS - 1);
		struct mon_tcp *c = bpf_map_lookup_elem(&tcp, &idx);
		__u32 seq;

		if (!c)
			return;
		if (c->key.family && !same_tuple(&c->key, &k) &&
		    !(c->closed_ns && now - c->closed_ns > TCP_SLOT_GRACE_NS))
			continue;
		seq = c->seq;
		if ((seq & 1) || __sync_val_compare_and_swap(&c->seq, seq, seq + 1) != seq)
			continue;
		if (!c->key.family)
			count(MON_CNT_TCP_SLOTS_USED);
		__builtin_memcpy(&c->key, &k, sizeof(k));
		c->tgid = ss->tgid;
		c->srtt_us = 0;
		c->retransmits = 0;
		c->closed_ns = 0;
		c->head = 0;
		barrier();
		c->seq = seq + 2;
		ss->slot = idx + 1;
		return;
	}
	count(MON_CNT_TCP_SLOTS_FULL);
}

static __always_inline struct mon_tcp *tcp_slot(struct mon_sock *ss)
{
	__u32 idx = ss->slot - 1;

	return ss->slot ? bpf_map_lookup_elem(&tcp, &idx) : NULL;
}

/* A traced thread used TCP socket `sk`: it owns it; RTT as of now. */
static __always_inline void tcp_touched(struct sock *sk, struct task_struct *t, __u64 now)
{
	struct mon_sock *ss = bpf_sk_storage_get(&socks, sk, 0, BPF_LOCAL_STORAGE_GET_F_CREATE);
	struct mon_tcp *c;
	__u32 srtt = 0;

	if (!ss) {
		count(MON_CNT_SOCK_STORAGE_FAILED);
		return;
	}
	if (!ss->tgid)
		ss->tgid = t->tgid;
	claim_tcp(sk, ss, now);
	c = tcp_slot(ss);
	if (!c)
		return;
	bpf_core_read(&srtt, sizeof(srtt), &((struct tcp_sock *)sk)->srtt_us);
	c->srtt_us = srtt >> 3;
}

/* Every socket send or receive, in the calling thread, just before the
 * syscall returns `ret`. */
static __always_inline void socket_io(struct sock *sk, int ret)
{
	struct task_struct *t;
	struct mon_task *s;
	__u16 proto = 0;
	__u64 now;

	if (ret <= 0)
		return;
	t = bpf_get_current_task_btf();
	if (!t->pid || !(s = traced_task(t)))
		return;
	now = bpf_ktime_get_ns();
	if (thread_marks) {
		claim_thread(t, s, now);
		checkpoint(s, now);
	}
	if (!tcp_slots || !sk)
		return;
	bpf_core_read(&proto, sizeof(proto), &sk->sk_protocol);
	if (proto == IPPROTO_TCP)
		tcp_touched(sk, t, now);
}

SEC("tp_btf/sock_recv_length")
int on_sock_recv(__u64 *ctx)
{
	socket_io((struct sock *)ctx[0], (int)ctx[1]);
	return 0;
}

SEC("tp_btf/sock_send_length")
int on_sock_send(__u64 *ctx)
{
	socket_io((struct sock *)ctx[0], (int)ctx[1]);
	return 0;
}

/* Where sock_recv_length is missing: TCP receives only, no checkpoints. */
SEC("tp_btf/tcp_rcv_space_adjust")
int on_tcp_recv(__u64 *ctx)
{
	struct task_struct *t = bpf_get_current_task_btf();

	if (tcp_slots && t->pid && traced_task(t))
		tcp_touched((struct sock *)ctx[0], t, bpf_ktime_get_ns());
	return 0;
}

SEC("tp_btf/inet_sock_set_state")
int on_tcp_state(__u64 *ctx)
{
	struct sock *sk = (struct sock *)ctx[0];
	int old = (int)ctx[1], new = (int)ctx[2];
	struct mon_host *h = host_counters();
	__u16 proto = 0;
	struct mon_sock *ss;
	struct mon_tcp *c;
	__u64 now;

	bpf_core_read(&proto, sizeof(proto), &sk->sk_protocol);
	if (proto != IPPROTO_TCP)
		return 0;
	if (h) {
		/* masked after the barrier: see log2_bucket */
		__u64 i = (old & (MON_TCP_STATES - 1)) * MON_TCP_STATES + (new & (MON_TCP_STATES - 1));

		barrier_var(i);
		h->tcp_transitions[i & (MON_TCP_STATES * MON_TCP_STATES - 1)] += 1;
	}
	if (new == TCP_SYN_SENT) {
		/* connect(): the calling thread owns the socket. */
		struct task_struct *t = bpf_get_current_task_btf();

		if (!tcp_slots || !t->pid || !traced_task(t))
			return 0;
		ss = bpf_sk_storage_get(&socks, sk, 0, BPF_LOCAL_STORAGE_GET_F_CREATE);
		if (!ss) {
			count(MON_CNT_SOCK_STORAGE_FAILED);
			return 0;
		}
		ss->tgid = t->tgid;
		return 0;
	}
	if (new != TCP_ESTABLISHED && new != TCP_CLOSE)
		return 0;
	ss = bpf_sk_storage_get(&socks, sk, 0, 0);
	if (!ss || !ss->tgid)
		return 0;
	now = bpf_ktime_get_ns();
	if (new == TCP_ESTABLISHED) {
		/* the client end: addresses and ports are all known now */
		claim_tcp(sk, ss, now);
		return 0;
	}
	c = tcp_slot(ss);
	if (c && c->tgid == ss->tgid)
		c->closed_ns = now;
	return 0;
}

static __always_inline void retransmitted(const struct sock *sk, const struct sk_buff *skb, int err)
{
	struct mon_host *h = host_counters();
	__u16 segs = 0;
	struct mon_sock *ss;
	struct mon_proc *p;
	struct mon_tcp *c;
	struct mon_shared *sh;
	__u32 zero = 0, seq, i;
	__u64 now;

	if (err) {
		if (h)
			h->tcp_retransmit_fails += 1;
		return;
	}
	bpf_core_read(&segs, sizeof(segs), &((struct tcp_skb_cb *)&skb->cb[0])->tcp_gso_segs);
	if (!segs)
		segs = 1;
	if (h)
		h->tcp_retransmits += segs;
	ss = bpf_sk_storage_get(&socks, (void *)sk, 0, 0);
	if (!ss || !ss->tgid)
		return;
	now = bpf_ktime_get_ns();
	p = proc_of(ss->tgid);
	if (p)
		p->tcp_retransmits += segs;
	sh = bpf_map_lookup_elem(&shared, &zero);
	if (sh) {
		__sync_fetch_and_add(&sh->retransmits, segs);
		sh->last_retransmit_ns = now;
	}
	c = tcp_slot(ss);
	if (!c || c->tgid != ss->tgid)
		return;
	seq = c->seq;
	if ((seq & 1) || __sync_val_compare_and_swap(&c->seq, seq, seq + 1) != seq)
		return;
	i = (c->head - 1) & (MON_RETRANS_MARKS - 1);
	if (c->head && now - c->retrans_ns[i] < MON_RETRANS_COALESCE_NS) {
		c->retrans_segs[i] += segs; /* the same burst */
	} else {
		i = c->head & (MON_RETRANS_MARKS - 1);
		c->retrans_ns[i] = now;
		c->retrans_segs[i] = segs;
		barrier();
		c->head += 1;
	}
	c->retransmits += segs;
	barrier();
	c->seq = seq + 2;
}

/* Kernels since 6.x pass the result of the retransmission; earlier ones
 * only trace successful ones (the agent loads this program where the
 * other does not load). */
SEC("tp_btf/tcp_retransmit_skb")
int on_tcp_retransmit(__u64 *ctx)
{
	retransmitted((const struct sock *)ctx[0], (const struct sk_buff *)ctx[1], (int)ctx[2]);
	return 0;
}

SEC("tp_btf/tcp_retransmit_skb")
int on_tcp_retransmit_ok(__u64 *ctx)
{
	retransmitted((const struct sock *)ctx[0], (const struct sk_buff *)ctx[1], 0);
	return 0;
}
