/* sidetrace runtime-context events (sidetrace_context.bpf.c -> user space).
 *
 * The tracer's events say which thread made which socket call; these say
 * what that thread was doing in between, so that a call can be tied to the
 * request that caused it where many requests share a thread:
 *
 *   LOOP_WAIT    an event loop's wait (epoll_wait, epoll_pwait, epoll_pwait2,
 *                poll, ppoll, select, pselect6) returned: the thread starts a
 *                new iteration of its loop.  Calls made between two waits
 *                ran in the callbacks of one iteration.
 *   TASK_RUN     CPython asyncio: a step of task `a` starts on this thread
 *                (uprobe on the C accelerator's task_step_impl).
 *   TASK_DONE    ... and ends (its uretprobe).
 *   TASK_NEW     a task object `a` is initialised while task `b` runs on
 *                this thread (b = 0: outside any task).
 *   ASYNC_RESET  Node.js: AsyncWrap::AsyncReset returned for the wrap at
 *                address `a`: its new async id is `b` and the async id of
 *                what caused it `c` (both the bits of a C double), `aux`
 *                its provider type.
 *
 * One record per perf sample, 48 bytes, host byte order; ts_ns is
 * bpf_ktime_get_ns(), the clock of the tracer's events.  Only processes in
 * the tracer's `pids` map (shared with this object) produce events.
 */
#ifndef SIDETRACE_CONTEXT_H
#define SIDETRACE_CONTEXT_H

enum st_ctx_kind {
	ST_CTX_LOOP_WAIT = 1,
	ST_CTX_TASK_RUN = 2,
	ST_CTX_TASK_DONE = 3,
	ST_CTX_TASK_NEW = 4,
	ST_CTX_ASYNC_RESET = 5,
};

struct st_ctx_event {
	__u32 kind;
	__u32 tgid;
	__u32 tid;
	__u32 aux;
	__u64 ts_ns;
	__u64 a;
	__u64 b;
	__u64 c;
};

#define ST_CTX_EVENT_SIZE 48

_Static_assert(sizeof(struct st_ctx_event) == ST_CTX_EVENT_SIZE, "st_ctx_event size");

/* Slots of the per-CPU `ctx_counters` array (u64 each); sum over CPUs. */
enum st_ctx_counter {
	ST_CTX_CNT_EVENTS = 0,       /* events written */
	ST_CTX_CNT_LOST = 1,         /* perf output failed (ring full) */
	ST_CTX_CNT_ORPHAN_RETURNS = 2, /* a return probe without its entry (attached mid-call) */
	ST_CTX_CNT_READ_FAILURES = 3, /* user memory read failed */
	ST_CTX_CNT_MAX = 8,
};

#endif
