/* Minimal kernel type definitions for sidetrace's BPF programs.
 *
 * Only the members the programs touch are declared.  Every struct carries
 * preserve_access_index, so clang records each member access as a CO-RE
 * relocation (by member name) that the loader resolves against the running
 * kernel's BTF: the offsets and layouts below are NOT used at run time, and
 * the member order here is irrelevant.  Names must match the kernel's.
 *
 * Members that the kernel nests inside anonymous unions/structs (for example
 * sock_common.skc_daddr) are declared flat here; CO-RE matching looks through
 * anonymous members of the target type.
 *
 * Needs the integer typedefs of bpf_api.h.
 */
#ifndef SIDETRACE_VMLINUX_MIN_H
#define SIDETRACE_VMLINUX_MIN_H

#define __st_core __attribute__((preserve_access_index))

typedef struct {
	int counter;
} atomic_t;

/* struct pt_regs differs per architecture: see bpf_regs.h. */

struct signal_struct {
	atomic_t live; /* threads of the group still running; 0 once the group is dead */
} __st_core;

struct file;

struct fdtable {
	unsigned int max_fds;
	struct file **fd;
} __st_core;

struct files_struct {
	struct fdtable *fdt;
} __st_core;

struct task_struct {
	int pid;
	int tgid;
	char comm[16];
	struct files_struct *files;
	struct signal_struct *signal;
} __st_core;

struct inode {
	unsigned short i_mode;
	unsigned long i_ino;
} __st_core;

struct file {
	void *private_data;
	struct inode *f_inode;
} __st_core;

/* Reference count of struct file, two layouts (CO-RE picks the one the
 * running kernel has; the ___suffix is ignored when matching names):
 * 6.13+: file_ref_t f_ref, whose counter is 0 for exactly one reference;
 * before: atomic_long_t f_count, 1 for exactly one reference. */
struct file___ref {
	struct {
		struct {
			long long counter;
		} refcnt;
	} f_ref;
} __st_core;

struct file___count {
	struct {
		long long counter;
	} f_count;
} __st_core;

struct in6_addr {
	union {
		__u8 u6_addr8[16];
		__be32 u6_addr32[4];
	} in6_u;
} __st_core;

struct sock_common {
	__be32 skc_daddr;
	__be32 skc_rcv_saddr;
	__be16 skc_dport;
	__u16 skc_num;
	unsigned short skc_family;
	struct in6_addr skc_v6_daddr;
	struct in6_addr skc_v6_rcv_saddr;
} __st_core;

struct sock {
	struct sock_common __sk_common;
	__u16 sk_protocol;
	__u16 sk_type;
} __st_core;

struct tcp_sock {
	__u32 copied_seq;
	__u32 write_seq;
} __st_core;

struct socket {
	short type;
	struct sock *sk;
} __st_core;

#endif
