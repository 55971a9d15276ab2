/* Kernel types the monitor programs touch, for CO-RE.
 *
 * Like vmlinux_min.h (the tracer's), only the members used are declared and
 * every struct carries preserve_access_index: offsets are resolved against
 * the running kernel's BTF at load time, member order here is irrelevant.
 * This is a separate header so the two objects evolve independently.
 *
 * Needs the integer typedefs of bpf_api.h.
 */
#ifndef SIDETRACE_MONITOR_KERNEL_H
#define SIDETRACE_MONITOR_KERNEL_H

#define __mon_core __attribute__((preserve_access_index))

#define PF_KTHREAD 0x00200000

struct task_struct {
	int pid;
	int tgid;
	unsigned int flags;
	unsigned int in_iowait : 1;
} __mon_core;

struct in6_addr {
	union {
		__u8 u6_addr8[16];
		__be32 u6_addr32[4];
	} in6_u;
} __mon_core;

struct sock_common {
	__be32 skc_daddr;
	__be32 skc_rcv_saddr;
	__be16 skc_dport;
	__u16 skc_num;
	unsigned short skc_family;
	struct in6_addr skc_v6_daddr;
	struct in6_addr skc_v6_rcv_saddr;
} __mon_core;

struct sock {
	struct sock_common __sk_common;
	__u16 sk_protocol;
} __mon_core;

struct tcp_sock {
	__u32 srtt_us; /* smoothed RTT << 3, in us */
} __mon_core;

struct sk_buff {
	char cb[48];
} __mon_core;

/* TCP's control block in skb->cb; tcp_gso_segs = tcp_skb_pcount().  The
 * kernel nests it in an anonymous union; declared flat (CO-RE looks through
 * anonymous members of the target type). */
struct tcp_skb_cb {
	__u16 tcp_gso_segs;
} __mon_core;

struct gendisk {
	int major;
	int first_minor;
} __mon_core;

struct request_queue {
	struct gendisk *disk;
} __mon_core;

struct request {
	struct request_queue *q;
	unsigned int cmd_flags;
	unsigned int __data_len;
} __mon_core;

/* Read a bitfield member through CO-RE (probed: works on any pointer). */
#define MON_READ_BITFIELD(s, field)                                                         \
	({                                                                                  \
		unsigned long long __v = 0;                                                 \
		bpf_probe_read_kernel(&__v, __builtin_preserve_field_info((s)->field, 1),   \
				      (const void *)(s) +                                   \
					      __builtin_preserve_field_info((s)->field, 0)); \
		__v <<= __builtin_preserve_field_info((s)->field, 4);                       \
		__v >>= __builtin_preserve_field_info((s)->field, 5);                       \
		__v;                                                                        \
	})

#endif
