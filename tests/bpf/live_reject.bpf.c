/* Test object the verifier must reject: it dereferences a number taken
 * from the tracepoint context as if it were a pointer. */
#include "bpf_api.h"

struct sys_enter_ctx {
	__u64 common;
	__s32 syscall_nr;
	__u32 pad;
	__u64 args[6];
};

SEC("tracepoint/syscalls/sys_enter_getpgid")
int live_reject(struct sys_enter_ctx *ctx)
{
	return *(int *)(long)ctx->args[0];
}
