/* Test object for the parser: the remaining section kinds, a transitive
 * chain of subprograms (one global, verified on its own by the kernel),
 * a static helper placed in a program section, map-in-map, and .data/.bss
 * sub-sections. */
#include "bpf_api.h"

struct inner_map {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 8);
	__type(key, __u32);
	__type(value, __u64);
};

struct {
	__uint(type, 12 /* BPF_MAP_TYPE_ARRAY_OF_MAPS */);
	__uint(max_entries, 2);
	__type(key, __u32);
	__array(values, struct inner_map);
} outer SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, __u64);
} per_task SEC(".maps");

__u64 hits SEC(".data.hits") = 1;
__u32 scratch_area[4] SEC(".bss.scratch");
static volatile const __u32 limit = 5; /* a static in .rodata */

static __noinline __u64 leaf(__u64 x)
{
	return x * 3 + limit;
}

static __noinline __u64 middle(__u64 x)
{
	return leaf(x) + leaf(x + 1);
}

__noinline int global_helper(__u32 v)
{
	/* Global: the kernel checks it against its BTF prototype alone. */
	return v > 10;
}

static __noinline int in_section_helper(int v) SEC("kprobe/do_nanosleep");
static __noinline int in_section_helper(int v)
{
	return v + 1;
}

SEC("kprobe/do_nanosleep")
int on_sleep(void *ctx)
{
	hits += middle(hits);
	return in_section_helper(global_helper((__u32)hits));
}

SEC("kretprobe/do_nanosleep")
int on_sleep_ret(void *ctx)
{
	scratch_area[1] = (__u32)middle(2);
	return 0;
}

SEC("uretprobe/libc.so.6:malloc")
int on_malloc_ret(void *ctx)
{
	return 0;
}

SEC("tp/sched/sched_process_exec")
int on_exec(void *ctx)
{
	return global_helper(3);
}

SEC("raw_tp/sched_switch")
int on_switch_raw(void *ctx)
{
	return 0;
}

SEC("tp_btf/sched_wakeup")
int on_wakeup(void *ctx)
{
	return 0;
}

SEC("tc")
int tc_pass(void *ctx)
{
	return 0;
}

SEC("classifier/ingress")
int cls_pass(void *ctx)
{
	return 0;
}

SEC("fexit/do_nanosleep")
int after_sleep(void *ctx)
{
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
