/* Test object for the parser: several program kinds, a subprogram shared by
 * two programs, a callback, global data in three sections, BTF-defined maps
 * of several types (one pinned) and one legacy `maps` definition. */
#include "bpf_api.h"

struct bpf_map_def {
	unsigned int type;
	unsigned int key_size;
	unsigned int value_size;
	unsigned int max_entries;
	unsigned int map_flags;
};

struct event {
	__u32 pid;
	__u32 kind;
	__u64 ts;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u32);
	__type(value, struct event);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} inflight SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 4);
	__uint(key_size, 4);
	__uint(value_size, 64);
} scratch SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERF_EVENT_ARRAY);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, sizeof(__u32));
} events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 256);
	__type(key, __u64);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} pinned_counts SEC(".maps");

struct bpf_map_def SEC("maps") legacy_counts = {
	.type = BPF_MAP_TYPE_ARRAY,
	.key_size = sizeof(__u32),
	.value_size = sizeof(__u64),
	.max_entries = 16,
	.map_flags = 0,
};

/* .rodata: set before load with ObjectSpec.with_constants. */
const volatile __u32 target_pid = 0;
const volatile __u64 min_duration_ns = 1000;
const volatile char tag[8] = "side";

/* .data and .bss */
__u64 events_seen = 7;
__u32 sample_rate = 3;
__u64 dropped;
__u32 last_pid;
struct event last_event;

static __noinline __u32 classify(__u32 pid, __u64 ts)
{
	/* A subprogram in .text called from two programs. */
	if (pid == target_pid)
		return 1;
	last_pid = pid;
	return ts > min_duration_ns ? 2 : 3;
}

static int count_cb(__u32 index, void *ctx)
{
	__u64 *total = ctx;
	*total += index;
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_write")
int trace_enter_write(void *ctx)
{
	__u32 pid = bpf_get_current_pid_tgid() >> 32;
	struct event ev = {};

	ev.pid = pid;
	ev.ts = bpf_ktime_get_ns();
	ev.kind = classify(pid, ev.ts);
	bpf_map_update_elem(&inflight, &pid, &ev, BPF_ANY);
	events_seen++;
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_write")
int trace_exit_write(void *ctx)
{
	__u32 pid = bpf_get_current_pid_tgid() >> 32;
	struct event *ev = bpf_map_lookup_elem(&inflight, &pid);
	__u32 zero = 0;
	__u64 *slot;

	if (!ev) {
		dropped++;
		return 0;
	}
	ev->kind = classify(pid, bpf_ktime_get_ns() - ev->ts);
	last_event = *ev;
	slot = bpf_map_lookup_elem(&legacy_counts, &zero);
	if (slot)
		*slot += sample_rate;
	bpf_perf_event_output(ctx, &events, BPF_F_CURRENT_CPU, ev, sizeof(*ev));
	bpf_map_delete_elem(&inflight, &pid);
	return 0;
}

SEC("raw_tracepoint/sys_enter")
int raw_enter(void *ctx)
{
	__u64 key = bpf_get_current_pid_tgid();
	__u64 one = 1, *count;
	__u64 total = 0;

	count = bpf_map_lookup_elem(&pinned_counts, &key);
	if (count)
		*count += 1;
	else
		bpf_map_update_elem(&pinned_counts, &key, &one, BPF_NOEXIST);
	bpf_loop(4, count_cb, &total, 0);
	return total == 6;
}

SEC("fentry/do_unlinkat")
int on_unlink(void *ctx)
{
	__u32 zero = 0;
	char *buf = bpf_map_lookup_elem(&scratch, &zero);

	if (buf)
		bpf_trace_printk("unlink %d\n", sizeof("unlink %d\n"), (int)tag[0]);
	return 0;
}

SEC("uprobe//usr/bin/true:main")
int on_true_main(void *ctx)
{
	return 0;
}

SEC("xdp")
int pass_all(void *ctx)
{
	return 2; /* XDP_PASS */
}

/* Two programs in one section. */
SEC("socket")
int sock_first(void *ctx)
{
	return 0;
}

SEC("socket")
int sock_second(void *ctx)
{
	return -1;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
