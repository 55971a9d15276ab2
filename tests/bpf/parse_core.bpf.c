/* Test object for CO-RE: kernel structs declared locally with only the
 * fields used, laid out differently from any real kernel, so every offset
 * the program uses must come from relocation. */
#include "bpf_api.h"

struct task_struct {
	int tgid;                          /* deliberately first: kernel differs */
	int pid;
	unsigned int in_iowait : 1;        /* a bitfield in the kernel too */
	unsigned int in_execve : 1;
	struct task_struct *real_parent;
	char comm[16];
	unsigned int __state;
} __attribute__((preserve_access_index));

/* Older kernels named __state "state" (a long): a flavor describes them. */
struct task_struct___pre514 {
	long state;
} __attribute__((preserve_access_index));

/* A field no kernel has, to exercise bpf_core_field_exists guards. */
struct task_struct___future {
	int no_such_field;
} __attribute__((preserve_access_index));

struct struct_not_in_any_kernel {
	int x;
} __attribute__((preserve_access_index));

enum pid_type {
	PIDTYPE_PID,
	PIDTYPE_TGID = 7, /* kernel value is 1 */
};

enum pid_type___mine {
	PIDTYPE_BOGUS___mine = 99,
};

struct core_result {
	__u32 tgid;
	__u32 parent_tgid;
	__u64 state;
	__u32 future;
	__u32 tgid_enum;
	__u32 has_bogus;
	__u32 task_size;
	__u32 has_task;
	__u32 has_alien;
	__u32 iowait;
	__u32 pid_signed;
	char comm[16];
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct core_result);
} results SEC(".maps");

#define READ_BITFIELD(s, field) ({ \
	__u64 __val = 0; \
	bpf_probe_read_kernel(&__val, __builtin_preserve_field_info((s)->field, 1), \
		(void *)(s) + __builtin_preserve_field_info((s)->field, 0)); \
	__val <<= __builtin_preserve_field_info((s)->field, 4); \
	__val >>= __builtin_preserve_field_info((s)->field, 5); \
	__val; })

SEC("raw_tracepoint/sys_enter")
int core_reads(void *ctx)
{
	struct task_struct *task = (void *)bpf_get_current_task();
	struct task_struct *parent = 0;
	struct core_result *out;
	__u32 zero = 0;

	out = bpf_map_lookup_elem(&results, &zero);
	if (!out)
		return 0;
	BPF_CORE_READ_INTO(&out->tgid, task, tgid);
	BPF_CORE_READ_INTO(&parent, task, real_parent);
	BPF_CORE_READ_INTO(&out->parent_tgid, parent, tgid);
	BPF_CORE_READ_INTO(&out->comm, task, comm);
	if (bpf_core_field_exists(((struct task_struct___pre514 *)task)->state)) {
		long state = 0;
		bpf_core_read(&state, sizeof(state), &((struct task_struct___pre514 *)task)->state);
		out->state = state;
	} else {
		unsigned int state = 0;
		BPF_CORE_READ_INTO(&state, task, __state);
		out->state = state;
	}
	if (bpf_core_field_exists(((struct task_struct___future *)task)->no_such_field)) {
		int v = 0;
		bpf_core_read(&v, sizeof(v), &((struct task_struct___future *)task)->no_such_field);
		out->future = v;
	}
	out->tgid_enum = bpf_core_enum_value(enum pid_type, PIDTYPE_TGID);
	out->has_bogus = bpf_core_enum_value_exists(enum pid_type___mine, PIDTYPE_BOGUS___mine);
	out->task_size = bpf_core_type_size(struct task_struct);
	out->has_task = bpf_core_type_exists(struct task_struct);
	out->has_alien = bpf_core_type_exists(struct struct_not_in_any_kernel);
	out->iowait = READ_BITFIELD(task, in_iowait);
	out->pid_signed = bpf_core_field_signed(task->pid);
	return 0;
}

/* BTF-typed context: plain dereferences become CO-RE-relocated loads. */
SEC("tp_btf/sched_switch")
int on_switch(__u64 *ctx)
{
	struct task_struct *next = (struct task_struct *)ctx[2];
	struct core_result *out;
	__u32 zero = 0;

	out = bpf_map_lookup_elem(&results, &zero);
	if (out)
		out->tgid = next->tgid + next->real_parent->pid;
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
