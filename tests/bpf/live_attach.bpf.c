/* Test object for attach kinds: raw tracepoint, tp_btf, fentry and fexit,
 * each counting calls of getpgid() made by one process. */
#include "bpf_api.h"
#include "bpf_regs.h"

const volatile __u32 target_tgid = 0;
const volatile __u64 target_arg = 0;
const volatile __s64 nr_getpgid = -1; /* this architecture's number, set by the test */

enum { RAW_TP = 0, TP_BTF = 1, FENTRY = 2, FEXIT = 3, FEXIT_RET = 4, SLOTS = 5 };

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, SLOTS);
	__type(key, __u32);
	__type(value, __u64);
} attach_counts SEC(".maps");

static __always_inline int mine(void)
{
	return (bpf_get_current_pid_tgid() >> 32) == target_tgid;
}

static __always_inline void bump(__u32 slot, __u64 by)
{
	__u64 *v = bpf_map_lookup_elem(&attach_counts, &slot);
	if (v)
		__sync_fetch_and_add(v, by);
}

/* raw_tp/sys_enter: args are (struct pt_regs *regs, long id). */
SEC("raw_tp/sys_enter")
int live_raw_enter(__u64 *ctx)
{
	if (mine() && ctx[1] == nr_getpgid)
		bump(RAW_TP, 1);
	return 0;
}

SEC("tp_btf/sys_enter")
int live_btf_enter(__u64 *ctx)
{
	if (mine() && ctx[1] == nr_getpgid)
		bump(TP_BTF, 1);
	return 0;
}

SEC("fentry/" SYSCALL_PREFIX "getpgid")
int live_fentry(__u64 *ctx)
{
	if (!mine())
		return 0;
	struct pt_regs *regs = (struct pt_regs *)ctx[0];
	unsigned long arg = 0;
	PT_REGS_CORE_READ(&arg, regs, SYSCALL_ARG1);
	if (arg == target_arg)
		bump(FENTRY, 1);
	return 0;
}

SEC("fexit/" SYSCALL_PREFIX "getpgid")
int live_fexit(__u64 *ctx)
{
	if (!mine())
		return 0;
	bump(FEXIT, 1);
	bump(FEXIT_RET, -(long)ctx[1]);
	return 0;
}
