// SPDX-License-Identifier: GPL-2.0
/* sidetrace runtime context: what an event-loop or task-switching thread was
 * doing between its socket calls (see include/sidetrace_context.h).
 *
 * Hooks:
 *   loops:   syscalls/sys_exit_{epoll_wait,epoll_pwait,epoll_pwait2,poll,
 *            ppoll,select,pselect6}: one LOOP_WAIT per return (an
 *            architecture without some of these, arm64, has no tracepoint
 *            for them: the agent attaches those that exist)
 *   asyncio: uprobe + uretprobe on task_step_impl, uprobe on the Task type's
 *            __init__ (_asyncio_Task___init__) of CPython's _asyncio module
 *   node:    uprobe + uretprobe on node::AsyncWrap::AsyncReset(Local<Object>,
 *            double, bool)
 *
 * The uprobe sections name no target: the agent places them on the files
 * its traced processes map (a uprobe belongs to a file, so one placement
 * serves every process mapping it), and every program keeps to the traced
 * processes through the tracer's `pids` map, which the agent shares with
 * this object.
 */
#include "bpf_api.h"
#include "vmlinux_min.h"
#include "bpf_regs.h"
#include "sidetrace_context.h"

char LICENSE[] SEC("license") = "GPL";

/* ---- configuration (.rodata, set by the loader before load) ---- */
const volatile __u32 trace_all = 0;  /* 1: every process except agent_tgid */
const volatile __u32 agent_tgid = 0; /* never traced */
/* Offsets inside node::AsyncWrap of async_id_, trigger_async_id_ (doubles)
 * and provider_type_ (u32): they depend on node's version (the agent sets
 * them for the versions it knows; no AsyncReset probe is placed otherwise). */
const volatile __u32 node_async_id_off = 0x28;
const volatile __u32 node_trigger_id_off = 0x30;
const volatile __u32 node_provider_off = 0x20;

/* ---- maps ---- */
/* The tracer's map of traced processes (the agent passes the tracer's own). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);   /* tgid */
	__type(value, __u32); /* enum st_pid_flags */
} pids SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERF_EVENT_ARRAY);
	__uint(max_entries, 1024); /* indexed by CPU id */
	__type(key, __u32);
	__type(value, __u32);
} ctx_events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, ST_CTX_CNT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} ctx_counters SEC(".maps");

/* Thread -> the asyncio task whose step runs on it (for TASK_NEW's creator). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);   /* tid */
	__type(value, __u64); /* task object address */
} running_task SEC(".maps");

/* Thread -> the AsyncWrap whose AsyncReset runs on it, innermost last (a
 * reset can run JS hooks that create more wraps). */
#define ST_RESET_DEPTH 4
struct st_resets {
	__u64 wrap[ST_RESET_DEPTH];
	__u32 depth;
	__u32 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32); /* tid */
	__type(value, struct st_resets);
} resetting SEC(".maps");

struct st_sys_exit_ctx {
	__u64 common;
	__s32 nr;
	__u32 pad;
	__s64 ret;
};

static __always_inline void count(__u32 slot)
{
	__u64 *v = bpf_map_lookup_elem(&ctx_counters, &slot);

	if (v)
		*v += 1;
}

static __always_inline bool traced(__u32 tgid)
{
	if (tgid == agent_tgid)
		return false;
	if (trace_all)
		return true;
	return bpf_map_lookup_elem(&pids, &tgid) != NULL;
}

/* A function of its own (not inlined), so that the event type is named in
 * the object's BTF, where tests and tools find the record layout. */
static __noinline int output(void *ctx, struct st_ctx_event *e)
{
	if (bpf_perf_event_output(ctx, &ctx_events, BPF_F_CURRENT_CPU, e, sizeof(*e)))
		count(ST_CTX_CNT_LOST);
	else
		count(ST_CTX_CNT_EVENTS);
	return 0;
}

static __always_inline void emit(void *ctx, __u32 kind, __u64 pid_tgid, __u32 aux, __u64 a, __u64 b,
				 __u64 c)
{
	struct st_ctx_event e = {
		.kind = kind,
		.tgid = pid_tgid >> 32,
		.tid = (__u32)pid_tgid,
		.aux = aux,
		.ts_ns = bpf_ktime_get_ns(),
		.a = a,
		.b = b,
		.c = c,
	};

	output(ctx, &e);
}

/* ---- event loops ---- */
static __always_inline int on_wait_exit(struct st_sys_exit_ctx *ctx)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();

	if (ctx->ret < 0 || !traced(pid_tgid >> 32))
		return 0;
	emit(ctx, ST_CTX_LOOP_WAIT, pid_tgid, (__u32)ctx->nr, 0, 0, 0);
	return 0;
}

#define WAIT_EXIT(name)                                         \
	SEC("tracepoint/syscalls/sys_exit_" #name)              \
	int st_ctx_exit_##name(struct st_sys_exit_ctx *ctx)     \
	{                                                       \
		return on_wait_exit(ctx);                       \
	}

WAIT_EXIT(epoll_wait)
WAIT_EXIT(epoll_pwait)
WAIT_EXIT(epoll_pwait2)
WAIT_EXIT(poll)
WAIT_EXIT(ppoll)
WAIT_EXIT(select)
WAIT_EXIT(pselect6)

/* ---- CPython asyncio ---- */
/* static PyObject *task_step_impl(TaskObj *task, PyObject *exc) */
SEC("uprobe")
int st_py_task_step(struct pt_regs *ctx)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u32 tid = (__u32)pid_tgid;
	__u64 task = PT_REGS_PARM1(ctx);

	if (!traced(pid_tgid >> 32))
		return 0;
	bpf_map_update_elem(&running_task, &tid, &task, BPF_ANY);
	emit(ctx, ST_CTX_TASK_RUN, pid_tgid, 0, task, 0, 0);
	return 0;
}

SEC("uretprobe")
int st_py_task_step_return(struct pt_regs *ctx)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u32 tid = (__u32)pid_tgid;
	__u64 *task;

	if (!traced(pid_tgid >> 32))
		return 0;
	task = bpf_map_lookup_elem(&running_task, &tid);
	if (!task) {
		count(ST_CTX_CNT_ORPHAN_RETURNS);
		return 0;
	}
	emit(ctx, ST_CTX_TASK_DONE, pid_tgid, 0, *task, 0, 0);
	bpf_map_delete_elem(&running_task, &tid);
	return 0;
}

/* static int _asyncio_Task___init__(PyObject *self, PyObject *args, PyObject *kwargs) */
SEC("uprobe")
int st_py_task_new(struct pt_regs *ctx)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u32 tid = (__u32)pid_tgid;
	__u64 *creator, parent = 0;

	if (!traced(pid_tgid >> 32))
		return 0;
	creator = bpf_map_lookup_elem(&running_task, &tid);
	if (creator)
		parent = *creator;
	emit(ctx, ST_CTX_TASK_NEW, pid_tgid, 0, PT_REGS_PARM1(ctx), parent, 0);
	return 0;
}

/* ---- Node.js async ids ---- */
/* void node::AsyncWrap::AsyncReset(v8::Local<v8::Object>, double, bool): `this` first */
SEC("uprobe")
int st_node_async_reset(struct pt_regs *ctx)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u32 tid = (__u32)pid_tgid;
	struct st_resets fresh = {}, *r;
	__u32 depth;

	if (!traced(pid_tgid >> 32))
		return 0;
	r = bpf_map_lookup_elem(&resetting, &tid);
	if (!r) {
		bpf_map_update_elem(&resetting, &tid, &fresh, BPF_NOEXIST);
		r = bpf_map_lookup_elem(&resetting, &tid);
		if (!r)
			return 0;
	}
	depth = r->depth;
	if (depth < ST_RESET_DEPTH)
		r->wrap[depth] = PT_REGS_PARM1(ctx);
	r->depth = depth + 1;
	return 0;
}

SEC("uretprobe")
int st_node_async_reset_return(struct pt_regs *ctx)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u32 tid = (__u32)pid_tgid;
	struct st_resets *r;
	__u64 wrap, async_id = 0, trigger_id = 0;
	__u32 provider = 0, depth;

	if (!traced(pid_tgid >> 32))
		return 0;
	r = bpf_map_lookup_elem(&resetting, &tid);
	if (!r || r->depth == 0) {
		count(ST_CTX_CNT_ORPHAN_RETURNS);
		return 0;
	}
	depth = r->depth - 1;
	r->depth = depth;
	if (depth >= ST_RESET_DEPTH)
		return 0;
	wrap = r->wrap[depth];
	if (bpf_probe_read_user(&async_id, sizeof(async_id), (void *)(wrap + node_async_id_off)) ||
	    bpf_probe_read_user(&trigger_id, sizeof(trigger_id), (void *)(wrap + node_trigger_id_off)) ||
	    bpf_probe_read_user(&provider, sizeof(provider), (void *)(wrap + node_provider_off))) {
		count(ST_CTX_CNT_READ_FAILURES);
		return 0;
	}
	emit(ctx, ST_CTX_ASYNC_RESET, pid_tgid, provider, wrap, async_id, trigger_id);
	return 0;
}
