/* Minimal BPF program API for sidetrace's objects: section macros, map
 * definition macros, helper prototypes (by helper id from <linux/bpf.h>),
 * and CO-RE accessors built on clang's preserve_*_info builtins.
 * Nothing here is needed at run time; clang reads it when `make bpf` runs. */
#ifndef SIDETRACE_BPF_API_H
#define SIDETRACE_BPF_API_H

typedef signed char __s8;
typedef unsigned char __u8;
typedef short __s16;
typedef unsigned short __u16;
typedef int __s32;
typedef unsigned int __u32;
typedef long long __s64;
typedef unsigned long long __u64;
typedef __u16 __be16;
typedef __u32 __be32;
typedef __u32 __wsum;
typedef _Bool bool;
#define true 1
#define false 0
#ifndef NULL
#define NULL ((void *)0)
#endif

#define SEC(name) __attribute__((section(name), used))
#define __always_inline inline __attribute__((always_inline))
#define __noinline __attribute__((noinline))
#define __weak __attribute__((weak))
#define __hidden __attribute__((visibility("hidden")))

/* BTF-defined map attributes: encoded as pointer-to-array types that the
 * loader reads back from BTF. */
#define __uint(name, val) int (*name)[val]
#define __type(name, val) typeof(val) *name
#define __array(name, val) typeof(val) *name[]

enum { BPF_ANY = 0, BPF_NOEXIST = 1, BPF_EXIST = 2 };
enum { LIBBPF_PIN_NONE = 0, LIBBPF_PIN_BY_NAME = 1 };

#define BPF_MAP_TYPE_HASH 1
#define BPF_MAP_TYPE_ARRAY 2
#define BPF_MAP_TYPE_PERF_EVENT_ARRAY 4
#define BPF_MAP_TYPE_PERCPU_HASH 5
#define BPF_MAP_TYPE_PERCPU_ARRAY 6
#define BPF_MAP_TYPE_LRU_HASH 9
#define BPF_MAP_TYPE_LRU_PERCPU_HASH 10
#define BPF_MAP_TYPE_TASK_STORAGE 29

#define BPF_F_NO_PREALLOC (1U << 0)
#define BPF_F_CURRENT_CPU 0xffffffffULL
#define BPF_LOCAL_STORAGE_GET_F_CREATE (1ULL << 0)

/* Helpers, by id (enum bpf_func_id). */
static void *(*bpf_map_lookup_elem)(void *map, const void *key) = (void *)1;
static long (*bpf_map_update_elem)(void *map, const void *key, const void *value, __u64 flags) = (void *)2;
static long (*bpf_map_delete_elem)(void *map, const void *key) = (void *)3;
static __u64 (*bpf_ktime_get_ns)(void) = (void *)5;
static long (*bpf_trace_printk)(const char *fmt, __u32 fmt_size, ...) = (void *)6;
static __u32 (*bpf_get_prandom_u32)(void) = (void *)7;
static __u32 (*bpf_get_smp_processor_id)(void) = (void *)8;
static __u64 (*bpf_get_current_pid_tgid)(void) = (void *)14;
static __u64 (*bpf_get_current_uid_gid)(void) = (void *)15;
static long (*bpf_get_current_comm)(void *buf, __u32 size_of_buf) = (void *)16;
static long (*bpf_perf_event_output)(void *ctx, void *map, __u64 flags, void *data, __u64 size) = (void *)25;
static __u64 (*bpf_get_current_task)(void) = (void *)35;
static long (*bpf_probe_read_user)(void *dst, __u32 size, const void *unsafe_ptr) = (void *)112;
static long (*bpf_probe_read_kernel)(void *dst, __u32 size, const void *unsafe_ptr) = (void *)113;
static long (*bpf_probe_read_user_str)(void *dst, __u32 size, const void *unsafe_ptr) = (void *)114;
static long (*bpf_probe_read_kernel_str)(void *dst, __u32 size, const void *unsafe_ptr) = (void *)115;
static __u64 (*bpf_ktime_get_boot_ns)(void) = (void *)125;
static void *(*bpf_task_storage_get)(void *map, void *task, void *value, __u64 flags) = (void *)156;
static long (*bpf_task_storage_delete)(void *map, void *task) = (void *)157;
static void *(*bpf_get_current_task_btf)(void) = (void *)158;
static long (*bpf_loop)(__u32 nr_loops, void *callback_fn, void *callback_ctx, __u64 flags) = (void *)181;
static void *(*bpf_task_pt_regs)(void *task) = (void *)175;

/* CO-RE: field and type relocations resolved by bpfobj against kernel BTF. */
#define bpf_core_read(dst, sz, src) \
	bpf_probe_read_kernel(dst, sz, (const void *)__builtin_preserve_access_index(src))
#define bpf_core_field_exists(field) __builtin_preserve_field_info(field, 2 /* FIELD_EXISTS */)
#define bpf_core_field_size(field) __builtin_preserve_field_info(field, 1 /* FIELD_BYTE_SIZE */)
#define bpf_core_field_offset(field) __builtin_preserve_field_info(field, 0 /* FIELD_BYTE_OFFSET */)
#define bpf_core_field_signed(field) __builtin_preserve_field_info(field, 3 /* FIELD_SIGNED */)
#define bpf_core_type_exists(type) __builtin_preserve_type_info(*(typeof(type) *)0, 0 /* TYPE_EXISTS */)
#define bpf_core_type_size(type) __builtin_preserve_type_info(*(typeof(type) *)0, 1 /* TYPE_SIZE */)
#define bpf_core_enum_value_exists(enum_type, enumerator) \
	__builtin_preserve_enum_value(*(typeof(enum_type) *)enumerator, 0 /* ENUMVAL_EXISTS */)
#define bpf_core_enum_value(enum_type, enumerator) \
	__builtin_preserve_enum_value(*(typeof(enum_type) *)enumerator, 1 /* ENUMVAL_VALUE */)

/* Read one kernel field through CO-RE into a local of the field's type. */
#define BPF_CORE_READ_INTO(dst, src, field) \
	bpf_core_read((dst), sizeof(*(dst)), &(src)->field)

char _sidetrace_license[] SEC("license") __weak = "GPL";

#endif
