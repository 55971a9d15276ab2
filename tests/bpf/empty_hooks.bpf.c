// SPDX-License-Identifier: GPL-2.0
/* Empty programs on every hook sidetrace.bpf.o uses (same section names),
 * plus the sys_enter side of the data syscalls.  bench/bench_syscall_cost.py
 * attaches them to measure the floor cost of the hooks themselves. */
#include "bpf_api.h"

char LICENSE[] SEC("license") = "GPL";

#define EMPTY(sec, name)              \
	SEC(sec)                      \
	int name(void *ctx)           \
	{                             \
		return 0;             \
	}

#define EMPTY_SYS(name)                                                          \
	EMPTY("tracepoint/syscalls/sys_exit_" #name, empty_exit_##name)          \
	EMPTY("tracepoint/syscalls/sys_enter_" #name, empty_enter_##name)

EMPTY_SYS(read)
EMPTY_SYS(readv)
EMPTY_SYS(recvfrom)
EMPTY_SYS(recvmsg)
EMPTY_SYS(recvmmsg)
EMPTY_SYS(write)
EMPTY_SYS(writev)
EMPTY_SYS(sendto)
EMPTY_SYS(sendmsg)
EMPTY_SYS(sendmmsg)
EMPTY("tracepoint/syscalls/sys_exit_connect", empty_exit_connect)
EMPTY("tracepoint/syscalls/sys_exit_accept", empty_exit_accept)
EMPTY("tracepoint/syscalls/sys_exit_accept4", empty_exit_accept4)
EMPTY("tracepoint/syscalls/sys_enter_close", empty_enter_close)
EMPTY("tracepoint/task/task_newtask", empty_task_newtask)
EMPTY("tracepoint/sched/sched_process_exit", empty_sched_process_exit)
