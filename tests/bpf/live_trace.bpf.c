/* Test object for the live loader: a syscall tracepoint program that reads
 * .rodata constants, a map written from user space, kernel task fields
 * through CO-RE, and reports through a perf event array. */
#include "bpf_api.h"

const volatile __u32 target_tgid = 0;
const volatile __u64 magic = 0;

/* Bumped on every hit: lives in .bss. */
__u64 total_hits = 0;

struct live_event {
	__u32 kind;
	__u32 tgid;
	__u32 ppid;
	__u32 cpu;
	__u64 arg0;
	__u64 magic;
	__u64 config;
};

struct arg_stat {
	__u64 count;
	__u64 last_tgid;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERF_EVENT_ARRAY);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, sizeof(__u32));
} live_events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} live_config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} live_percpu SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u64);
	__type(value, struct arg_stat);
} live_by_arg SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16);
	__type(key, __u64);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} live_pinned SEC(".maps");

/* Only the fields read here; CO-RE finds their real offsets in kernel BTF. */
struct task_struct {
	int tgid;
	struct task_struct *real_parent;
} __attribute__((preserve_access_index));

struct sys_enter_ctx {
	__u64 common;
	__s32 syscall_nr;
	__u32 pad;
	__u64 args[6];
};

SEC("tracepoint/syscalls/sys_enter_getpgid")
int live_getpgid(struct sys_enter_ctx *ctx)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	if (tgid != target_tgid)
		return 0;

	__u32 zero = 0;
	__u64 *hits = bpf_map_lookup_elem(&live_percpu, &zero);
	if (hits)
		*hits += 1;
	__sync_fetch_and_add(&total_hits, 1);

	struct live_event ev = {};
	ev.kind = 1;
	ev.tgid = tgid;
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct task_struct *parent = NULL;
	BPF_CORE_READ_INTO(&parent, task, real_parent);
	int ppid = 0;
	BPF_CORE_READ_INTO(&ppid, parent, tgid);
	ev.ppid = ppid;
	ev.cpu = bpf_get_smp_processor_id();
	ev.arg0 = ctx->args[0];
	ev.magic = magic;
	__u64 *cfg = bpf_map_lookup_elem(&live_config, &zero);
	ev.config = cfg ? *cfg : 0;

	struct arg_stat *st = bpf_map_lookup_elem(&live_by_arg, &ev.arg0);
	if (st) {
		st->count += 1;
		st->last_tgid = tgid;
	} else {
		struct arg_stat fresh = { .count = 1, .last_tgid = tgid };
		bpf_map_update_elem(&live_by_arg, &ev.arg0, &fresh, BPF_ANY);
	}
	__u64 *pinned = bpf_map_lookup_elem(&live_pinned, &ev.arg0);
	if (pinned)
		*pinned += 1;

	bpf_perf_event_output(ctx, &live_events, BPF_F_CURRENT_CPU, &ev, sizeof(ev));
	return 0;
}
