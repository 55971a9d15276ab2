// SPDX-License-Identifier: GPL-2.0
/* Empty programs on the scheduler hooks bpfobj/bpf/monitor.bpf.o uses (same
 * section names).  bench/bench_sched_cost.py attaches them to measure the
 * floor cost of the hooks themselves. */
#include "bpf_api.h"

char LICENSE[] SEC("license") = "GPL";

#define EMPTY(sec, name)              \
	SEC(sec)                      \
	int name(void *ctx)           \
	{                             \
		return 0;             \
	}

EMPTY("tp_btf/sched_switch", empty_sched_switch)
EMPTY("tp_btf/sched_wakeup", empty_sched_wakeup)
EMPTY("tp_btf/sched_wakeup_new", empty_sched_wakeup_new)
EMPTY("raw_tp/sched_switch", empty_raw_sched_switch)
EMPTY("raw_tp/sched_wakeup", empty_raw_sched_wakeup)
EMPTY("raw_tp/sched_wakeup_new", empty_raw_sched_wakeup_new)
EMPTY("tracepoint/sched/sched_switch", empty_tp_sched_switch)
EMPTY("tracepoint/sched/sched_wakeup", empty_tp_sched_wakeup)
EMPTY("tracepoint/sched/sched_wakeup_new", empty_tp_sched_wakeup_new)
