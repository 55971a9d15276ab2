/* Per-architecture register access for sidetrace's BPF programs.
 *
 * A source that includes this header is built once per architecture
 * (`make bpf` passes -D__TARGET_ARCH_x86 or -D__TARGET_ARCH_arm64 and
 * writes name.x86.bpf.o and name.arm64.bpf.o); the loader picks the object
 * of the machine it runs on.
 *
 * struct pt_regs carries preserve_access_index: every register read below
 * is a CO-RE field relocation resolved by name against the running
 * kernel's BTF, so only the register names must match the kernel's; the
 * member order here is irrelevant.  arm64's kernel nests regs[] in an
 * anonymous union with user_pt_regs; CO-RE looks through it.
 *
 * Two calling conventions:
 *   PT_REGS_PARMn / PT_REGS_RC   a function's arguments and return value
 *                                (uprobe and uretprobe contexts);
 *   PT_REGS_SYSCALL_ARGn         a syscall's arguments in the user register
 *                                frame saved at syscall entry
 *                                (bpf_task_pt_regs(current)), still valid
 *                                at sys_exit.  On x86_64 the fourth is r10,
 *                                not cx; on arm64 the first is orig_x0,
 *                                because x0 is overwritten by the return
 *                                value before sys_exit runs.
 * Each expands to a direct load (ctx or BTF pointers); for any other
 * pointer use PT_REGS_CORE_READ(&dst, regs, PARM1 | SYSCALL_ARG1 | RC ...).
 *
 * SYSCALL_PREFIX is the prefix of the kernel's syscall entry functions
 * (fentry/fexit and kprobe targets).
 *
 * Needs bpf_api.h (for bpf_core_read).
 */
#ifndef SIDETRACE_BPF_REGS_H
#define SIDETRACE_BPF_REGS_H

#if defined(__TARGET_ARCH_x86)

struct pt_regs {
	unsigned long di;
	unsigned long si;
	unsigned long dx;
	unsigned long cx;
	unsigned long r8;
	unsigned long r9;
	unsigned long r10;
	unsigned long ax;
	unsigned long bp;
	unsigned long sp;
	unsigned long ip;
} __attribute__((preserve_access_index));

#define __PT_PARM1_REG di
#define __PT_PARM2_REG si
#define __PT_PARM3_REG dx
#define __PT_PARM4_REG cx
#define __PT_PARM5_REG r8
#define __PT_PARM6_REG r9
#define __PT_SYSCALL_ARG1_REG di
#define __PT_SYSCALL_ARG2_REG si
#define __PT_SYSCALL_ARG3_REG dx
#define __PT_SYSCALL_ARG4_REG r10
#define __PT_SYSCALL_ARG5_REG r8
#define __PT_SYSCALL_ARG6_REG r9
#define __PT_RC_REG ax
#define __PT_FP_REG bp
#define __PT_SP_REG sp
#define __PT_IP_REG ip
#define SYSCALL_PREFIX "__x64_sys_"

#elif defined(__TARGET_ARCH_arm64)

struct pt_regs {
	unsigned long regs[31];
	unsigned long sp;
	unsigned long pc;
	unsigned long orig_x0;
} __attribute__((preserve_access_index));

#define __PT_PARM1_REG regs[0]
#define __PT_PARM2_REG regs[1]
#define __PT_PARM3_REG regs[2]
#define __PT_PARM4_REG regs[3]
#define __PT_PARM5_REG regs[4]
#define __PT_PARM6_REG regs[5]
#define __PT_SYSCALL_ARG1_REG orig_x0
#define __PT_SYSCALL_ARG2_REG regs[1]
#define __PT_SYSCALL_ARG3_REG regs[2]
#define __PT_SYSCALL_ARG4_REG regs[3]
#define __PT_SYSCALL_ARG5_REG regs[4]
#define __PT_SYSCALL_ARG6_REG regs[5]
#define __PT_RC_REG regs[0]
#define __PT_FP_REG regs[29]
#define __PT_SP_REG sp
#define __PT_IP_REG pc
#define SYSCALL_PREFIX "__arm64_sys_"

#else
#error "build with -D__TARGET_ARCH_x86 or -D__TARGET_ARCH_arm64 (make bpf does)"
#endif

#define PT_REGS_PARM1(x) ((x)->__PT_PARM1_REG)
#define PT_REGS_PARM2(x) ((x)->__PT_PARM2_REG)
#define PT_REGS_PARM3(x) ((x)->__PT_PARM3_REG)
#define PT_REGS_PARM4(x) ((x)->__PT_PARM4_REG)
#define PT_REGS_PARM5(x) ((x)->__PT_PARM5_REG)
#define PT_REGS_PARM6(x) ((x)->__PT_PARM6_REG)
#define PT_REGS_SYSCALL_ARG1(x) ((x)->__PT_SYSCALL_ARG1_REG)
#define PT_REGS_SYSCALL_ARG2(x) ((x)->__PT_SYSCALL_ARG2_REG)
#define PT_REGS_SYSCALL_ARG3(x) ((x)->__PT_SYSCALL_ARG3_REG)
#define PT_REGS_SYSCALL_ARG4(x) ((x)->__PT_SYSCALL_ARG4_REG)
#define PT_REGS_SYSCALL_ARG5(x) ((x)->__PT_SYSCALL_ARG5_REG)
#define PT_REGS_SYSCALL_ARG6(x) ((x)->__PT_SYSCALL_ARG6_REG)
#define PT_REGS_RC(x) ((x)->__PT_RC_REG)
#define PT_REGS_FP(x) ((x)->__PT_FP_REG)
#define PT_REGS_SP(x) ((x)->__PT_SP_REG)
#define PT_REGS_IP(x) ((x)->__PT_IP_REG)

/* Read one register through a pointer the verifier cannot follow directly:
 * PT_REGS_CORE_READ(&arg, regs, SYSCALL_ARG1) (0 on success). */
#define PT_REGS_CORE_READ(dst, x, which) \
	bpf_core_read((dst), sizeof(*(dst)), &(x)->__PT_##which##_REG)

#endif
