/* sidetrace kernel -> user space event format (shared with the Python side).
 *
 * Every record (perf raw sample) the tracer writes to the `events` perf
 * buffer is one BATCH: a `struct st_batch_hdr` (16 bytes, see below), then
 * `count` events back to back.  Each event is one `struct st_event` header
 * (ST_EVENT_HDR_SIZE = 136 bytes) immediately followed by `payload_len`
 * payload bytes, then zero to seven bytes of padding up to the next multiple
 * of 8 (so the next event's header keeps the alignment described below).
 * After the last event comes nothing but the up to 7 bytes of padding perf
 * adds to a raw sample; use payload_len, never the raw sample size, to find
 * the end of an event.
 *
 * Byte order: host (little-endian on x86_64) for every integer, INCLUDING
 * sport and dport (converted from network order in the kernel).  Addresses are
 * raw network-order bytes.
 *
 * Alignment: the struct has 4-byte alignment and its u64 members sit at
 * offsets 4, 12, 20, 28, 36.  A perf raw sample starts 12 bytes into its
 * record (8-byte record header + u32 size), and every event starts at a
 * multiple of 8 after the 16-byte batch header, so in the ring those members
 * (and the batch header's flush_ns) are 8-byte aligned.  The struct has no
 * implicit padding.
 *
 *  off size field        meaning
 *    0   4  kind         enum st_event_kind
 *    4   8  ts_ns        bpf_ktime_get_ns() at the hook: CLOCK_MONOTONIC, ns
 *   12   8  conn_id      connection id (see below); 0 for PROC_* events
 *   20   8  ret          s64. DATA: syscall return (bytes > 0, or -errno);
 *                        CONN_OPEN: connect() return (0 or -EINPROGRESS) or
 *                        accept()'s new fd; CONN_CLOSE: 0;
 *                        PROC_FORK: parent tgid; PROC_EXIT: 0
 *   28   8  bytes_tx     DATA: egress bytes on this connection BEFORE this
 *                        event (stream offset; gaps reveal lost records);
 *                        CONN_CLOSE: total egress bytes; CONN_OPEN: bytes
 *                        so far (0 unless a UDP socket was used before
 *                        connect()); PROC_*: 0
 *   36   8  bytes_rx     same for ingress bytes
 *   44   4  tgid         process id, initial pid namespace (PROC_FORK: the child's)
 *   48   4  tid          thread id (PROC_FORK: the forking parent thread)
 *   52   4  fd           s32 socket fd (CONN_OPEN by accept: the new fd); -1 if none
 *   56   4  tcp_seq      TCP only, with ST_F_SEQ_VALID: egress = tcp write_seq
 *                        at the first byte of this write; ingress = copied_seq
 *                        at the first byte of this read.  The writer's value
 *                        equals the reader's for the same bytes (across hosts).
 *   60   4  payload_len  bytes of payload following the header
 *                        (<= min(ret, max_payload) and <= ST_MAX_PAYLOAD)
 *   64   2  syscall      enum st_syscall
 *   66   1  direction    enum st_direction
 *   67   1  role         enum st_role
 *   68   2  family       AF_INET (2) or AF_INET6 (10) of the PEER address:
 *                        an AF_INET6 socket talking to an IPv4-mapped peer is
 *                        reported as AF_INET with ST_F_V4MAPPED set
 *   70   2  sport        local port, host order
 *   72   2  dport        remote port, host order
 *   74   1  l4_proto     IPPROTO_TCP (6) or IPPROTO_UDP (17)
 *   75   1  flags        ST_F_* bits
 *   76  16  saddr        LOCAL address; IPv4 as IPv4-mapped IPv6
 *                        (::ffff:a.b.c.d, bytes 12..15 are the IPv4 address)
 *   92  16  daddr        REMOTE address, same encoding.  For UDP with a
 *                        sockaddr argument (sendto/recvfrom/msg_name) it is
 *                        the per-datagram peer and ST_F_PEER_FROM_ARG is set.
 *  108  16  comm         comm of the calling thread, NUL padded
 *  124   2  app_proto    enum st_app_proto: the connection's protocol as
 *                        classified in the kernel from the first bytes of its
 *                        payloads (a hint: the agent confirms it); 0 while
 *                        unknown, ST_PROTO_OPAQUE once the kernel gave up.
 *                        The event whose payload decided it carries it.
 *  126   1  tls          enum st_tls_flags: 0 for socket syscalls; ST_TLS_PLAINTEXT
 *                        (+ provenance bits) for plaintext read or written
 *                        through a TLS library (syscall ST_SYS_TLS_*)
 *  127   1  tls_version  low byte of the negotiated TLS version (0x01..0x04
 *                        for TLS 1.0..1.3) where the library told it; else 0
 *  128   4  shed         with ST_X_RESUMED: exchanges of this connection shed
 *                        (not sent) since its previous event; else 0
 *  132   2  xflags       ST_X_* bits (load shedding, see below)
 *  134   2  reserved     0
 *  136   -  payload      first payload_len bytes of the data (DATA only)
 *
 * s = local end and d = remote end of the socket, whatever the direction.
 *
 * Protocol inference: while a connection's app_proto is UNKNOWN, every DATA
 * event with payload is classified from its first 16 bytes (HTTP/1 request
 * line or status line, HTTP/2 preface or frame header, RESP, PostgreSQL
 * startup/SSLRequest or a typed message, MySQL packet, DNS header,
 * memcached text or binary, MongoDB header, Kafka request header, MQTT
 * CONNECT, AMQP protocol header or connection.start); the first match sticks to the connection.  A
 * TLS record, or ST_PROTO_TRIES payloads that match nothing, make it OPAQUE:
 * from then on its DATA events are dropped in the kernel (.rodata
 * drop_opaque = 1, the default) or sent as the header alone (payload_len 0,
 * ST_F_OPAQUE, tcp_seq not read), so unrecognised traffic costs no payload
 * copy and no (or a small) perf record.
 *
 * TLS plaintext (ST_SYS_TLS_READ / ST_SYS_TLS_WRITE, tls != 0): uprobes on
 * the TLS library's read and write calls send the plaintext as DATA events of
 * the socket underneath (same conn_id, addresses and ports as its syscalls);
 * ret is the plaintext length, bytes_tx/bytes_rx count plaintext, and
 * tcp_seq (with ST_F_SEQ_VALID) is the TCP sequence number of the first byte
 * of the TLS record that carries the first plaintext byte, the same number
 * at both ends of the connection.  Once a socket is seen through the
 * library its ciphertext syscalls send nothing.  See sidetrace_tls.bpf.h.
 *
 * Load shedding (see "Overload" in sidetrace.bpf.c): when the agent sets a
 * budget (the `budget` map), the kernel stops sending whole units, never
 * single events: a connection from its first syscall, or, on an HTTP/1
 * connection whose messages start at syscall boundaries one at a time, an
 * exchange from its request's first syscall to the next request's.  A
 * connection resumed after shed exchanges says so on its first event
 * (ST_X_RESUMED, `shed` = the exchanges left out): what the agent held of
 * it before is not to be completed.  The last event of a connection that
 * stops being traced mid-stream carries ST_X_SHED_START (its bytes are not
 * to be parsed), and a CONN_CLOSE of a connection being shed carries
 * ST_X_SHED.
 *
 * Connection ids: unique per loaded object (and boot): ((cpu + 1) << 48) | n,
 * n counting per CPU.  A connection is one socket (identified in the kernel by
 * its sockfs inode number), so threads and forked children sharing a socket
 * share its conn_id.
 */
#ifndef SIDETRACE_EVENTS_H
#define SIDETRACE_EVENTS_H

/* struct st_batch_hdr: the start of every record.
 *
 *  off size field     meaning
 *    0   4  kind      ST_BATCH_KIND (no st_event kind has this value)
 *    4   8  flush_ns  bpf_ktime_get_ns() when the batch was sent.  Every event
 *                     of this CPU stamped (ts_ns) at or before flush_ns has
 *                     been sent in this batch or an earlier one of the same
 *                     CPU's ring (or counted in ST_CNT_LOST_EVENTS).
 *   12   2  count     events that follow; 0 for a heartbeat (nothing pending)
 *   14   2  reason    enum st_flush_reason: why the batch was sent
 *
 * With the .rodata const batching = 0 (the default) every event is sent at
 * once, alone in its batch (reason ST_FLUSH_EACH).  With batching = 1 the
 * events of one CPU collect in a per-CPU buffer that is sent when the next
 * event might not fit (about 16 KiB), when its first event is
 * batch_max_age_ns (default 2 ms) old at the next append, or when the agent
 * makes a zero-byte write() on that CPU (the agent's flushers, one per CPU;
 * an empty buffer then sends a heartbeat).  A batch holds events of one CPU
 * in the order their programs ran, which is ts_ns order.
 */
#define ST_BATCH_KIND 0x48425453 /* "STBH" */

enum st_flush_reason {
	ST_FLUSH_EACH = 1,  /* batching off: one event per batch */
	ST_FLUSH_FULL = 2,  /* the next event might not fit */
	ST_FLUSH_AGE = 3,   /* the first event reached batch_max_age_ns */
	ST_FLUSH_AGENT = 4, /* the agent's flush on this CPU (or its heartbeat) */
};

/* Largest payload one event can carry; the .rodata const max_payload (default
 * 4096) lowers it.  Must be a power of two. */
#define ST_MAX_PAYLOAD 4096
/* iovecs gathered by readv/writev/recvmsg/sendmsg capture. */
#define ST_MAX_IOV 32

enum st_event_kind {
	ST_EV_DATA = 1,       /* one read/write-family syscall on a traced socket */
	ST_EV_CONN_OPEN = 2,  /* connect() (0 or -EINPROGRESS) or accept()/accept4() succeeded */
	ST_EV_CONN_CLOSE = 3, /* close() of a tracked socket fd */
	ST_EV_PROC_FORK = 4,  /* traced process forked: child tgid added to `pids` */
	ST_EV_PROC_EXIT = 5,  /* last thread of a traced process exited: tgid removed from `pids` */
};

enum st_syscall {
	ST_SYS_NONE = 0,
	ST_SYS_READ = 1,
	ST_SYS_READV = 2,
	ST_SYS_RECVFROM = 3,
	ST_SYS_RECVMSG = 4,
	ST_SYS_RECVMMSG = 5,
	ST_SYS_WRITE = 6,
	ST_SYS_WRITEV = 7,
	ST_SYS_SENDTO = 8,
	ST_SYS_SENDMSG = 9,
	ST_SYS_SENDMMSG = 10,
	ST_SYS_CONNECT = 11,
	ST_SYS_ACCEPT = 12,
	ST_SYS_ACCEPT4 = 13,
	ST_SYS_CLOSE = 14,
	ST_SYS_TLS_READ = 15,  /* SSL_read / SSL_read_ex: plaintext received */
	ST_SYS_TLS_WRITE = 16, /* SSL_write / SSL_write_ex: plaintext sent */
};

/* st_event.tls */
enum st_tls_flags {
	ST_TLS_PLAINTEXT = 1 << 0, /* payload is plaintext from a TLS library call */
	/* the socket was found from the thread's socket I/O next to the call (a
	 * library that does its socket I/O outside its calls, e.g. node's),
	 * not from a socket call made inside it */
	ST_TLS_BY_THREAD = 1 << 1,
	/* a write sent at the ciphertext's socket write, after the call
	 * returned (ts_ns is the socket write's) */
	ST_TLS_DEFERRED = 1 << 2,
};

enum st_direction {
	ST_DIR_NONE = 0,
	ST_DIR_INGRESS = 1, /* read family: bytes received */
	ST_DIR_EGRESS = 2,  /* write family: bytes sent */
};

enum st_role {
	ST_ROLE_UNKNOWN = 0, /* first seen mid-stream */
	ST_ROLE_CLIENT = 1,  /* created by connect() */
	ST_ROLE_SERVER = 2,  /* created by accept()/accept4() */
};

enum st_event_flags {
	ST_F_SEQ_VALID = 1 << 0,     /* tcp_seq is meaningful */
	ST_F_PEER_FROM_ARG = 1 << 1, /* daddr/dport/family come from the syscall's sockaddr */
	ST_F_V4MAPPED = 1 << 2,      /* AF_INET6 socket, IPv4 peer (reported as AF_INET) */
	ST_F_TRUNCATED = 1 << 3,     /* payload_len < ret */
	ST_F_NEW_CONN = 1 << 4,      /* connection first seen by this event (no CONN_OPEN was sent) */
	ST_F_MULTI_MSG = 1 << 5,     /* recvmmsg/sendmmsg moved more than one message; only the first is reported */
	ST_F_PEEK = 1 << 6,          /* MSG_PEEK read: the data will be read again */
	ST_F_OPAQUE = 1 << 7,        /* OPAQUE connection: header only, no payload, no tcp_seq */
};

/* st_event.xflags */
enum st_event_xflags {
	ST_X_RESUMED = 1 << 0,    /* first event after `shed` exchanges of this connection were shed */
	ST_X_SHED_START = 1 << 1, /* the connection is shed after this event, to its close */
	ST_X_SHED = 1 << 2,       /* CONN_CLOSE of a connection that was being shed */
};

/* st_event.app_proto / st_conn.app_proto. */
enum st_app_proto {
	ST_PROTO_UNKNOWN = 0,   /* not classified yet */
	ST_PROTO_HTTP1 = 1,
	ST_PROTO_HTTP2 = 2,
	ST_PROTO_REDIS = 3,
	ST_PROTO_POSTGRES = 4,
	ST_PROTO_MYSQL = 5,
	ST_PROTO_DNS = 6,
	ST_PROTO_MEMCACHED = 7,
	ST_PROTO_MONGODB = 8,
	ST_PROTO_KAFKA = 9,
	ST_PROTO_MQTT = 10,
	ST_PROTO_AMQP = 11,
	ST_PROTO_OPAQUE = 255,  /* gave up (or TLS): no payload is captured any more */
};

/* Payload-carrying DATA events classified before a connection turns OPAQUE. */
#define ST_PROTO_TRIES 4

/* Slots of the per-CPU `counters` array (u64 each); sum over CPUs. */
enum st_counter {
	ST_CNT_EVENTS = 0,          /* events sent to `events` (in batches) */
	ST_CNT_PERF_FAIL = 1,       /* bpf_perf_event_output failed (ring full: batch lost) */
	ST_CNT_CONN_FULL = 2,       /* conns map update failed */
	ST_CNT_PIDS_FULL = 3,       /* pids map update failed (fork of a traced process) */
	ST_CNT_KREAD_FAIL = 4,      /* kernel memory read failed */
	ST_CNT_UREAD_FAIL = 5,      /* user memory read failed (payload, iovec, sockaddr, msghdr) */
	ST_CNT_NOT_SOCKET = 6,      /* traced process I/O on a non-socket fd (skipped) */
	ST_CNT_NOT_INET = 7,        /* socket not AF_INET/AF_INET6 TCP/UDP (skipped) */
	ST_CNT_TRUNCATED = 8,       /* DATA events whose payload was truncated */
	ST_CNT_NO_SCRATCH = 9,      /* per-CPU scratch lookup failed (should never happen) */
	ST_CNT_CONN_SEQ = 10,       /* connections created on this CPU (conn_id sequence) */
	ST_CNT_BAD_FD = 11,         /* fd out of range or not open at the hook */
	ST_CNT_PROTO_KNOWN = 12,    /* connections classified as a known protocol */
	ST_CNT_PROTO_OPAQUE = 13,   /* connections given up on (OPAQUE) */
	ST_CNT_OPAQUE_DATA = 14,    /* DATA syscalls on OPAQUE connections (dropped or header only) */
	ST_CNT_LOST_EVENTS = 15,    /* events in batches whose output failed */
	ST_CNT_BATCHES = 16,        /* batches with events sent */
	ST_CNT_HEARTBEATS = 17,     /* empty batches sent (agent flush, nothing pending) */
	ST_CNT_SHED_SYSCALLS = 18,  /* data syscalls of shed units (nothing sent) */
	ST_CNT_SHED_EXCHANGES = 19, /* HTTP/1 exchanges shed */
	ST_CNT_SHED_CONNS = 20,     /* connections shed (from their start, or from mid-stream) */
	ST_CNT_ADMITTED = 21,       /* units the budget admitted (exchanges and connections) */
	ST_CNT_RESUMED = 22,        /* connections resumed after shed exchanges */
	ST_CNT_MAX = 24,
};

/* Values of the `pids` map (u32 tgid -> u32 flags). */
enum st_pid_flags {
	ST_PID_TRACED = 1 << 0,    /* set by the agent */
	ST_PID_INHERITED = 1 << 1, /* added by the kernel for a child of a traced process */
	ST_PID_BY_COMM = 1 << 2,   /* added by the kernel at exec: the new comm is in `comms` */
};

/* Key of the `comms` map (value: u32, unused): a process name exactly as the
 * kernel keeps task->comm, at most 15 bytes then NUL padded to 16. */
#define ST_COMM_LEN 16

typedef __u64 __attribute__((aligned(4))) st_u64;
typedef __s64 __attribute__((aligned(4))) st_s64;

struct st_event {
	__u32 kind;
	st_u64 ts_ns;
	st_u64 conn_id;
	st_s64 ret;
	st_u64 bytes_tx;
	st_u64 bytes_rx;
	__u32 tgid;
	__u32 tid;
	__s32 fd;
	__u32 tcp_seq;
	__u32 payload_len;
	__u16 syscall;
	__u8 direction;
	__u8 role;
	__u16 family;
	__u16 sport;
	__u16 dport;
	__u8 l4_proto;
	__u8 flags;
	__u8 saddr[16];
	__u8 daddr[16];
	char comm[16];
	__u16 app_proto;
	__u8 tls;
	__u8 tls_version;
	__u32 shed;
	__u16 xflags;
	__u16 reserved;
} __attribute__((aligned(4)));

#define ST_EVENT_HDR_SIZE 136

_Static_assert(sizeof(struct st_event) == ST_EVENT_HDR_SIZE, "st_event size");
_Static_assert(__builtin_offsetof(struct st_event, kind) == 0, "kind");
_Static_assert(__builtin_offsetof(struct st_event, ts_ns) == 4, "ts_ns");
_Static_assert(__builtin_offsetof(struct st_event, conn_id) == 12, "conn_id");
_Static_assert(__builtin_offsetof(struct st_event, ret) == 20, "ret");
_Static_assert(__builtin_offsetof(struct st_event, bytes_tx) == 28, "bytes_tx");
_Static_assert(__builtin_offsetof(struct st_event, bytes_rx) == 36, "bytes_rx");
_Static_assert(__builtin_offsetof(struct st_event, tgid) == 44, "tgid");
_Static_assert(__builtin_offsetof(struct st_event, tid) == 48, "tid");
_Static_assert(__builtin_offsetof(struct st_event, fd) == 52, "fd");
_Static_assert(__builtin_offsetof(struct st_event, tcp_seq) == 56, "tcp_seq");
_Static_assert(__builtin_offsetof(struct st_event, payload_len) == 60, "payload_len");
_Static_assert(__builtin_offsetof(struct st_event, syscall) == 64, "syscall");
_Static_assert(__builtin_offsetof(struct st_event, direction) == 66, "direction");
_Static_assert(__builtin_offsetof(struct st_event, role) == 67, "role");
_Static_assert(__builtin_offsetof(struct st_event, family) == 68, "family");
_Static_assert(__builtin_offsetof(struct st_event, sport) == 70, "sport");
_Static_assert(__builtin_offsetof(struct st_event, dport) == 72, "dport");
_Static_assert(__builtin_offsetof(struct st_event, l4_proto) == 74, "l4_proto");
_Static_assert(__builtin_offsetof(struct st_event, flags) == 75, "flags");
_Static_assert(__builtin_offsetof(struct st_event, saddr) == 76, "saddr");
_Static_assert(__builtin_offsetof(struct st_event, daddr) == 92, "daddr");
_Static_assert(__builtin_offsetof(struct st_event, comm) == 108, "comm");
_Static_assert(__builtin_offsetof(struct st_event, app_proto) == 124, "app_proto");
_Static_assert(__builtin_offsetof(struct st_event, tls) == 126, "tls");
_Static_assert(__builtin_offsetof(struct st_event, tls_version) == 127, "tls_version");
_Static_assert(__builtin_offsetof(struct st_event, shed) == 128, "shed");
_Static_assert(__builtin_offsetof(struct st_event, xflags) == 132, "xflags");

struct st_batch_hdr {
	__u32 kind;
	st_u64 flush_ns;
	__u16 count;
	__u16 reason;
} __attribute__((aligned(4)));

_Static_assert(sizeof(struct st_batch_hdr) == 16, "st_batch_hdr size");
_Static_assert(__builtin_offsetof(struct st_batch_hdr, flush_ns) == 4, "flush_ns");
_Static_assert(__builtin_offsetof(struct st_batch_hdr, count) == 12, "count");
_Static_assert(__builtin_offsetof(struct st_batch_hdr, reason) == 14, "reason");

/* Value of the `conns` map (key: u64 sockfs inode number of the socket). */
struct st_conn {
	__u64 conn_id;
	__u64 sk;       /* struct sock * (kernel address, used for TCP sequence reads) */
	__u64 bytes_tx; /* egress bytes so far (first message only for sendmmsg) */
	__u64 bytes_rx; /* ingress bytes so far */
	__u32 tgid;     /* process that created the entry */
	__u16 family;   /* AF_INET / AF_INET6 of the peer (see st_event.family) */
	__u16 sport;    /* host order */
	__u16 dport;    /* host order */
	__u8 l4_proto;  /* IPPROTO_TCP / IPPROTO_UDP; 0 = not traced (see ST_CONN_IGNORE) */
	__u8 role;      /* enum st_role */
	__u16 app_proto;  /* enum st_app_proto */
	__u8 flags;       /* ST_CONN_* */
	__u8 proto_tries; /* payloads classified without a match (< ST_PROTO_TRIES) */
	__u8 saddr[16];
	__u8 daddr[16];
	__u8 shed;        /* enum st_shed: what is left out now */
	__u8 frame;       /* ST_FRAME_* bits: how its messages line up with syscalls */
	__u8 outstanding; /* HTTP/1: requests started that no response has started for (saturating) */
	__u8 pad;
	__u32 shed_units; /* exchanges shed since the last event sent */
};

/* st_conn.shed */
enum st_shed {
	ST_SHED_NONE = 0,     /* traced */
	ST_SHED_EXCHANGE = 1, /* the current HTTP/1 exchange is shed; the next request may resume it */
	ST_SHED_CONN = 2,     /* shed until it closes */
};

/* st_conn.frame */
enum st_frame_flags {
	ST_FRAME_SEEN = 1 << 0,     /* a data syscall with bytes was seen */
	ST_FRAME_LAST_EGRESS = 1 << 1, /* the last one was a send */
	ST_FRAME_MIXED = 1 << 2,    /* messages do not start one per syscall (pipelining, 1xx,
				     * coalesced requests): no exchange is shed alone */
	ST_FRAME_TLS_SEEN = 1 << 3, /* plaintext was seen through its TLS library */
};

/* Value of the `budget` map (one entry), written by the agent.  Units (an
 * exchange or a connection) are admitted at most one per interval_ns on
 * average, up to burst_ns ahead (a generic cell rate algorithm on tat_ns,
 * which the kernel keeps; the agent writes 0 there).  Whatever the level,
 * no unit is admitted before blocked_ns: the kernel sets it ST_LOSS_BLOCK_NS
 * ahead when a batch could not be written (a full ring), so new units stop
 * at once, before the agent has noticed. */
struct st_budget {
	__u64 interval_ns; /* 0: admit every unit */
	__u64 burst_ns;
	__u32 level;       /* enum st_budget_level */
	__u32 pad;
	__u64 tat_ns;      /* kernel: when the budget next has a unit to give */
	__u64 blocked_ns;  /* kernel: no unit is admitted before this (bpf_ktime_get_ns) */
};

#define ST_LOSS_BLOCK_NS 20000000ULL /* 20 ms */

enum st_budget_level {
	ST_BUDGET_OFF = 0,   /* everything traced; shed exchanges resume at their next request */
	ST_BUDGET_NEW = 1,   /* new connections and HTTP/1 exchanges pass the budget */
	ST_BUDGET_HARD = 2,  /* also traced connections of other protocols, at a turn of direction
			      * (shed until they close: nothing later tells where messages start) */
};

/* Value of the `shed_procs` map (key: u32 tgid): what was shed of a process. */
struct st_shed_proc {
	__u64 exchanges;
	__u64 connections;
};

enum st_conn_flags {
	ST_CONN_IGNORE = 1 << 0,   /* socket of another family/protocol: cached negative */
	ST_CONN_V4MAPPED = 1 << 2, /* same bit as ST_F_V4MAPPED */
	ST_CONN_TLS = 1 << 3,      /* carries TLS records (OPAQUE from a TLS record or a STARTTLS handshake) */
	ST_CONN_TLS_LIB = 1 << 4,  /* seen through a TLS library: its ciphertext sends nothing */
};

/* Slots of the per-CPU `tls_counters` array (u64 each); sum over CPUs. */
enum st_tls_counter {
	ST_TLS_CNT_CALLS = 0,       /* TLS read/write calls of traced threads that returned */
	ST_TLS_CNT_EVENTS = 1,      /* plaintext events sent */
	ST_TLS_CNT_NO_CONN = 2,     /* plaintext dropped: its socket could not be found */
	ST_TLS_CNT_SEQ = 3,         /* plaintext events with the TCP sequence of their TLS record */
	ST_TLS_CNT_NO_SEQ = 4,      /* plaintext events whose record was not identified */
	ST_TLS_CNT_ORPHAN_RET = 5,  /* a return without its entry (attached mid-call) */
	ST_TLS_CNT_DEFERRED = 6,    /* writes held until their ciphertext's socket write */
	ST_TLS_CNT_DEFER_LOST = 7,  /* held writes replaced before their socket write */
	ST_TLS_CNT_RESYNC = 8,      /* record tracking lost its place in a TLS stream */
	ST_TLS_CNT_STARTTLS = 9,    /* connections that switched to TLS after plaintext */
	ST_TLS_CNT_MAX = 12,
};

_Static_assert(sizeof(struct st_conn) == 88, "st_conn size");
_Static_assert(sizeof(struct st_budget) == 40, "st_budget size");

#endif
