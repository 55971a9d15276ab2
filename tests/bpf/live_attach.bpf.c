/* Test object for attach kinds: raw tracepoint, tp_btf, fentry and fexit,
 * each counting calls of getpgid() made by one process. */
#include "bpf_api.h"

const volatile __u32 target_tgid = 0;
const volatile __u64 target_arg = 0;

enum { RAW_TP = 0, TP_BTF = 1, FENTRY = 2, FEXIT = 3, FEXIT_RET = 4, SLOTS = 5 };

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, SLOTS);
	__type(key, __u32);
	__type(value, __u64);
} attach_counts SEC(".maps");

#define NR_GETPGID 121

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

struct pt_regs {
	unsigned long di;
} __attribute__((preserve_access_index));

/* raw_tp/sys_enter: args are (struct pt_regs *regs, long id). */
SEC("raw_tp/sys_enter")
int live_raw_enter(__u64 *ctx)
{
	if (mine() && ctx[1] == NR_GETPGID)
		bump(RAW_TP, 1);
	return 0;
}

SEC("tp_btf/sys_enter")
int live_btf_enter(__u64 *ctx)
{
	if (mine() && ctx[1] == NR_GETPGID)
		bump(TP_BTF, 1);
	return 0;
}

SEC("fentry/__x64_sys_getpgid")
int live_fentry(__u64 *ctx)
{
	if (!mine())
		return 0;
	struct pt_regs *regs = (struct pt_regs *)ctx[0];
	unsigned long arg = 0;
	BPF_CORE_READ_INTO(&arg, regs, di);
	if (arg == target_arg)
		bump(FENTRY, 1);
	return 0;
}

SEC("fexit/__x64_sys_getpgid")
int live_fexit(__u64 *ctx)
{
	if (!mine())
		return 0;
	bump(FEXIT, 1);
	bump(FEXIT_RET, -(long)ctx[1]);
	return 0;
}
