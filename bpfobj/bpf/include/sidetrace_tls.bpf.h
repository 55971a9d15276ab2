/* sidetrace tracer, TLS part: plaintext from OpenSSL-compatible libraries.
 *
 * Included by sidetrace.bpf.c, whose maps and helpers it uses; its uprobe
 * programs carry no target in their section names: the agent places them on
 * the TLS library files that traced processes map (a uprobe belongs to a
 * file, so one attachment serves every process; the programs filter by the
 * traced set).
 *
 *   st_tls_read / st_tls_read_ex     entry of SSL_read / SSL_read_ex
 *   st_tls_write / st_tls_write_ex   entry of SSL_write / SSL_write_ex
 *   st_tls_handshake                 entry of SSL_do_handshake (SSL_accept and
 *                                    SSL_connect run it too)
 *   st_tls_return                    return of all five
 *   st_tls_free                      entry of SSL_free
 *
 * Which socket.  The entry notes the call in the thread's tls_threads entry;
 * a socket syscall the thread makes while the call runs (OpenSSL's socket
 * BIO, or a library's own BIO calling send/recv) names the socket: the
 * call's SSL * is bound to it in tls_ssl.  The handshake is such a call
 * too, so the binding exists before the first plaintext: a server that
 * reads ahead (nginx) may have read the first request during the handshake
 * and return it from its buffer with no socket call inside SSL_read.
 * Plaintext returned with no socket call inside uses that binding.  A library
 * that does its socket I/O outside its calls (node: memory BIOs, the
 * event loop reads the ciphertext before SSL_read and writes it after
 * SSL_write) is bound from the thread's adjacent I/O instead: a read
 * returning plaintext binds to the socket of the thread's last ciphertext
 * read, and a write is held (tls_deferred) until the thread's next
 * ciphertext write, which binds it and sends it.  Those events carry
 * ST_TLS_BY_THREAD.  Once bound, a connection is ST_CONN_TLS_LIB and its
 * ciphertext syscalls send nothing.
 *
 * Which TCP sequence number.  Both ends of a TLS connection see the same
 * ciphertext stream, record by record.  Every ciphertext read or write of a
 * thread that uses the library is walked for TLS record headers
 * (tls_conns: per socket and direction, where the next header starts and
 * the last ST_TLS_RECS application-data records); a plaintext call claims
 * the first remembered record whose length is the plaintext's plus the
 * cipher's overhead (16, 17 or 24 bytes for the AEAD suites, learned per
 * stream from the first match), and reports that record's sequence number.
 * The writer's record and the reader's are the same record, so both ends
 * report the same number whatever their socket I/O sizes.  A call that
 * matches no record (the plaintext continues a record, a CBC suite, tracking
 * lost) reports no sequence number.
 *
 * Function arguments and return values are read through bpf_regs.h's
 * PT_REGS_PARMn / PT_REGS_RC, syscall arguments through PT_REGS_SYSCALL_ARGn.
 *
 * Versions: OpenSSL 1.1.1, 3.0 and 3.1 keep the negotiated version in the
 * first int of SSL; 3.2 and later start SSL with a small type code, which
 * is not a version and is not reported.
 */
#ifndef SIDETRACE_TLS_BPF_H
#define SIDETRACE_TLS_BPF_H

#define ST_TLS_CALL_READ 1
#define ST_TLS_CALL_WRITE 2
#define ST_TLS_CALL_HANDSHAKE 3
#define ST_TLS_RECS 8              /* records remembered per direction: a power of two */
#define ST_TLS_SCAN 8              /* record headers walked per socket call */
#define ST_TLS_MAX_FRAGMENT 16384  /* plaintext bytes per record */
#define ST_TLS_APP_DATA 0x17

/* The thread's call in progress, and its ciphertext reads outside calls. */
struct st_tls_thread {
	__u64 ssl;      /* SSL * of the call in progress */
	__u64 buf;      /* its plaintext buffer */
	__u64 lenp;     /* _ex calls: size_t *readbytes / *written */
	__u64 ino;      /* socket of a socket call made inside the call (0: none) */
	__u64 rx_ino;   /* socket of the thread's last ciphertext read outside a call */
	__s32 fd;
	__s32 rx_fd;
	__u8 call;      /* ST_TLS_CALL_*; 0 when no call runs */
	__u8 ex;        /* the call is SSL_read_ex / SSL_write_ex */
	__u8 nested_tx; /* the call wrote ciphertext itself */
	__u8 rx_fresh;  /* rx_ino has not bound an SSL yet */
	__u8 deferred;  /* a write waits in tls_deferred */
	__u8 pad[3];
};

struct st_tls_ssl_key {
	__u64 ssl;
	__u32 tgid;
	__u32 pad;
};

/* What is known of one SSL *. */
struct st_tls_ssl {
	__u64 ino;      /* its socket (0: not known) */
	__u64 pt_tx;    /* plaintext bytes written */
	__u64 pt_rx;    /* plaintext bytes read */
	__s32 fd;
	__u8 by_thread; /* bound from the thread's adjacent I/O */
	__u8 version;   /* low byte of the protocol version, 0 unknown */
	__u16 pad;
};

struct st_tls_rec {
	__u32 seq; /* TCP sequence number of the record's first header byte */
	__u32 len; /* record length after the 5-byte header */
};

/* Records of one direction of one TLS stream. */
struct st_tls_track {
	__u32 next_seq; /* where the next record header starts (when synced) */
	__u8 synced;
	__u8 head;      /* recs[head] is the oldest unclaimed record */
	__u8 count;
	__u8 overhead;  /* record length - plaintext length, once learned */
	struct st_tls_rec recs[ST_TLS_RECS];
};

struct st_tls_conn {
	__u64 ssl; /* the SSL * bound to this socket (0: none yet) */
	struct st_tls_track tx;
	struct st_tls_track rx;
};

/* A write whose ciphertext has not reached the socket yet (see the top). */
struct st_tls_deferred {
	__u64 ssl;
	__u64 len; /* plaintext bytes written */
	__u32 got; /* bytes captured in payload */
	__u32 pad;
	__u8 payload[ST_MAX_PAYLOAD];
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64); /* pid_tgid */
	__type(value, struct st_tls_thread);
} tls_threads SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct st_tls_ssl_key);
	__type(value, struct st_tls_ssl);
} tls_ssl SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64); /* sockfs inode number, as in `conns` */
	__type(value, struct st_tls_conn);
} tls_conns SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 256);
	__type(key, __u64); /* pid_tgid */
	__type(value, struct st_tls_deferred);
} tls_deferred SEC(".maps");

/* Where a deferred write is built before it is stored (too large for the stack). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct st_tls_deferred);
} tls_scratch SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, ST_TLS_CNT_MAX);
	__type(key, __u32);
	__type(value, __u64); /* enum st_tls_counter */
} tls_counters SEC(".maps");

static __always_inline void tls_count(__u32 slot)
{
	__u64 *v = bpf_map_lookup_elem(&tls_counters, &slot);

	if (v)
		*v += 1;
}

/* A TLS record header: content type (change_cipher_spec, alert, handshake,
 * application_data), then version 3.x. */
static __always_inline bool tls_record_header(const __u8 *h)
{
	return h[0] >= 0x14 && h[0] <= ST_TLS_APP_DATA && h[1] == 3 && h[2] <= 4;
}

/* ---- record tracking ---- */

static __always_inline void track_lost(struct st_tls_track *t)
{
	t->synced = 0;
	tls_count(ST_TLS_CNT_RESYNC);
}

static __always_inline void track_push(struct st_tls_track *t, __u32 seq, __u32 len)
{
	__u32 slot = (t->head + t->count) & (ST_TLS_RECS - 1);

	t->recs[slot].seq = seq;
	t->recs[slot].len = len;
	if (t->count < ST_TLS_RECS)
		t->count++;
	else
		t->head = (t->head + 1) & (ST_TLS_RECS - 1);
}

/* Walk the record headers of one socket call's ciphertext: `seen` readable
 * bytes at `ubuf` (the first buffer), `total` bytes moved, starting at TCP
 * sequence number `start`. */
static __always_inline void track_feed(struct st_tls_track *t, __u64 ubuf, __u64 seen, __u64 total, __u32 start)
{
	__u8 h[5];
	__u32 off;
	int i;

	if (t->synced && (__s32)(t->next_seq - start) < 0)
		track_lost(t); /* bytes went by unseen */
	if (!t->synced) {
		/* (re)start where a call begins with a record header */
		if (seen < 5 || bpf_probe_read_user(h, 5, (const void *)ubuf) || !tls_record_header(h))
			return;
		t->synced = 1;
		t->next_seq = start;
	}
	for (i = 0; i < ST_TLS_SCAN; i++) {
		off = t->next_seq - start;
		if (off >= total)
			return; /* the next header comes with a later call */
		if (off + 5 > seen || bpf_probe_read_user(h, 5, (const void *)(ubuf + off)) ||
		    !tls_record_header(h)) {
			track_lost(t);
			return;
		}
		if (h[0] == ST_TLS_APP_DATA)
			track_push(t, t->next_seq, (__u32)h[3] << 8 | h[4]);
		t->next_seq += 5 + ((__u32)h[3] << 8 | h[4]);
	}
	if (t->next_seq - start < total)
		track_lost(t); /* more records than walked */
}

/* The record carrying the first byte of `len` plaintext bytes just read or
 * written: its sequence number in *seq.  A write of more than one record's
 * worth also takes the records that follow. */
static __always_inline bool track_claim(struct st_tls_track *t, __u64 len, bool write, __u32 *seq)
{
	__u32 want = len < ST_TLS_MAX_FRAGMENT ? len : ST_TLS_MAX_FRAGMENT;
	__u32 need = 1, found = ST_TLS_RECS, diff = 0, drop, i;

	if (write)
		need = len > (__u64)ST_TLS_MAX_FRAGMENT * ST_TLS_RECS ? ST_TLS_RECS
								   : (len + ST_TLS_MAX_FRAGMENT - 1) / ST_TLS_MAX_FRAGMENT;
	else if (len > ST_TLS_MAX_FRAGMENT)
		return false;
	for (i = 0; i < ST_TLS_RECS; i++) {
		struct st_tls_rec *r;

		if (i >= t->count)
			break;
		r = &t->recs[(t->head + i) & (ST_TLS_RECS - 1)];
		diff = r->len - want;
		if (t->overhead ? diff == t->overhead : (diff == 16 || diff == 17 || diff == 24)) {
			found = i;
			*seq = r->seq;
			break;
		}
	}
	if (found == ST_TLS_RECS)
		return false;
	if (!t->overhead)
		t->overhead = diff;
	drop = found + need;
	if (drop > t->count)
		drop = t->count;
	t->head = (t->head + drop) & (ST_TLS_RECS - 1);
	t->count -= drop;
	return true;
}

/* ---- maps of SSL *s, sockets and threads ---- */

static __always_inline struct st_tls_conn *tls_conn_get(__u64 ino)
{
	struct st_tls_conn *tc = bpf_map_lookup_elem(&tls_conns, &ino);

	if (!tc) {
		struct st_tls_conn fresh = {};

		bpf_map_update_elem(&tls_conns, &ino, &fresh, BPF_NOEXIST);
		tc = bpf_map_lookup_elem(&tls_conns, &ino);
	}
	return tc;
}

static __always_inline void tls_bind(struct st_tls_ssl *s, __u64 ino, __s32 fd, bool by_thread)
{
	s->ino = ino;
	s->fd = fd;
	s->by_thread = by_thread;
}

/* The first buffer of a data syscall `sys` whose second and third
 * arguments are `arg2` and `arg3`, and its length (0: none). */
static __always_inline __u64 first_buf_of(int sys, __u64 arg2, __u64 arg3, __u64 *len)
{
	struct st_iovec v;

	switch (sys) {
	case ST_SYS_READ:
	case ST_SYS_WRITE:
	case ST_SYS_RECVFROM:
	case ST_SYS_SENDTO:
		*len = arg3;
		return arg2;
	case ST_SYS_READV:
	case ST_SYS_WRITEV:
		if (!arg3 || bpf_probe_read_user(&v, sizeof(v), (const void *)arg2))
			return 0;
		*len = v.len;
		return v.base;
	case ST_SYS_RECVMSG:
	case ST_SYS_SENDMSG: {
		struct st_msghdr_head m;

		if (bpf_probe_read_user(&m, sizeof(m), (const void *)arg2) || !m.iovlen ||
		    bpf_probe_read_user(&v, sizeof(v), (const void *)m.iov))
			return 0;
		*len = v.len;
		return v.base;
	}
	}
	return 0;
}

/* The first buffer of a data syscall (what a record walk can read) and its length. */
static __always_inline __u64 io_first_buf(const int sys, struct pt_regs *regs, __u64 *len)
{
	return first_buf_of(sys, PT_REGS_SYSCALL_ARG2(regs), PT_REGS_SYSCALL_ARG3(regs), len);
}

/* ---- plaintext events ---- */

/* Load shedding for plaintext (see "overload" in sidetrace.bpf.c): a TLS
 * connection is one unit, decided at its first plaintext; a shed one sends
 * nothing more until it closes. */
static __always_inline bool tls_admitted(struct st_conn *c, __u32 tgid)
{
	struct st_budget *bg;

	if (c->shed)
		return false;
	if (c->frame & ST_FRAME_TLS_SEEN)
		return true;
	c->frame |= ST_FRAME_TLS_SEEN;
	bg = budget_get();
	if (!bg || (bg->level == ST_BUDGET_OFF && !bg->blocked_ns) || budget_admit(bg))
		return true;
	shed_unit(c, tgid, ST_SHED_CONN);
	return false;
}

/* Send `len` plaintext bytes of SSL `s` on connection `c`: from the user
 * buffer `ubuf`, or from a deferred write `held`. */
static __always_inline void tls_emit(void *ctx, struct task_struct *task, __u64 pid_tgid, struct st_conn *c,
				     struct st_tls_ssl *s, struct st_tls_conn *tc, bool write, __u64 ubuf,
				     __u64 len, struct st_tls_deferred *held, __u8 tls_flags)
{
	struct st_batch *b;
	struct st_event *e;
	__u8 *payload;
	__u32 seq = 0, got;

	if (!tls_admitted(c, pid_tgid >> 32))
		return;
	b = batch_get(ctx);
	if (!b)
		return;
	e = batch_slot(b);
	payload = (__u8 *)(e + 1);
	fill_header(e, task, ST_EV_DATA, write ? ST_SYS_TLS_WRITE : ST_SYS_TLS_READ,
		    write ? ST_DIR_EGRESS : ST_DIR_INGRESS, pid_tgid, s->fd, len, c);
	e->app_proto = ST_PROTO_UNKNOWN; /* the ciphertext's OPAQUE says nothing of the plaintext */
	e->bytes_tx = s->pt_tx;
	e->bytes_rx = s->pt_rx;
	e->tls = ST_TLS_PLAINTEXT | tls_flags | (s->by_thread ? ST_TLS_BY_THREAD : 0);
	e->tls_version = s->version;
	if (tc && track_claim(write ? &tc->tx : &tc->rx, len, write, &seq)) {
		e->tcp_seq = seq;
		e->flags |= ST_F_SEQ_VALID;
		tls_count(ST_TLS_CNT_SEQ);
	} else {
		tls_count(ST_TLS_CNT_NO_SEQ);
	}
	if (held) {
		__u64 n = held->got;

		barrier_var(n);
		if (n > ST_MAX_PAYLOAD)
			n = ST_MAX_PAYLOAD;
		got = 0;
		if (n && !bpf_probe_read_kernel(payload, n, held->payload))
			got = n;
	} else {
		got = capture_buf(payload, ubuf, payload_limit(len));
	}
	if (got < len) {
		e->flags |= ST_F_TRUNCATED;
		count(ST_CNT_TRUNCATED);
	}
	e->payload_len = got;
	if (write)
		s->pt_tx += len;
	else
		s->pt_rx += len;
	tls_count(ST_TLS_CNT_EVENTS);
	batch_commit(ctx, b, e, got);
}

/* Hold a write until the thread's next ciphertext write (see the top). */
static __always_inline void tls_defer(__u64 pid_tgid, struct st_tls_thread *t, __u64 ssl, __u64 ubuf, __u64 len)
{
	__u32 zero = 0;
	struct st_tls_deferred *d = bpf_map_lookup_elem(&tls_scratch, &zero);

	if (!d)
		return;
	if (t->deferred)
		tls_count(ST_TLS_CNT_DEFER_LOST);
	d->ssl = ssl;
	d->len = len;
	d->got = capture_buf(d->payload, ubuf, payload_limit(len));
	if (bpf_map_update_elem(&tls_deferred, &pid_tgid, d, BPF_ANY)) {
		t->deferred = 0;
		return;
	}
	t->deferred = 1;
	tls_count(ST_TLS_CNT_DEFERRED);
}

/* A ciphertext write by a thread holding a deferred write: if the write is
 * on that SSL's socket (or binds it), send the held plaintext now. */
static __always_inline void tls_send_deferred(void *ctx, struct task_struct *task, __u64 pid_tgid,
					      struct st_tls_thread *t, struct st_conn *c, struct st_tls_conn *tc,
					      __u64 ino, int fd)
{
	struct st_tls_deferred *d = bpf_map_lookup_elem(&tls_deferred, &pid_tgid);
	struct st_tls_ssl_key key = {};
	struct st_tls_ssl *s;

	if (!d) {
		t->deferred = 0;
		return;
	}
	key.ssl = d->ssl;
	key.tgid = pid_tgid >> 32;
	s = bpf_map_lookup_elem(&tls_ssl, &key);
	if (!s) {
		t->deferred = 0;
		bpf_map_delete_elem(&tls_deferred, &pid_tgid);
		return;
	}
	if (s->ino != ino) {
		if (s->ino && bpf_map_lookup_elem(&conns, &s->ino))
			return; /* the SSL's socket is another one: keep waiting */
		if (!tc || (tc->ssl && tc->ssl != d->ssl))
			return; /* this socket belongs to another SSL */
		tls_bind(s, ino, fd, true);
	}
	if (tc)
		tc->ssl = d->ssl;
	c->flags |= ST_CONN_TLS_LIB;
	t->deferred = 0;
	tls_emit(ctx, task, pid_tgid, c, s, tc, true, 0, d->len, d, ST_TLS_DEFERRED);
	bpf_map_delete_elem(&tls_deferred, &pid_tgid);
}

/* A data syscall on an OPAQUE connection (see on_opaque_data), for TLS:
 * note it for the thread's TLS call, walk its records, send a deferred
 * write.  True when the syscall must send nothing (its plaintext is seen
 * through the library). */
static __always_inline bool tls_on_ciphertext(void *ctx, const int sys, struct task_struct *task,
					      struct pt_regs *regs, __u64 pid_tgid, int fd, __s64 ret,
					      struct st_conn *c, __u64 ino, __u64 flags)
{
	const bool egress = sys >= ST_SYS_WRITE;
	struct st_tls_thread *t;
	struct st_tls_conn *tc;
	struct tcp_sock *tp;
	__u64 ubuf, seen = 0;
	__u32 seq = 0;
	long err;

	if (!(c->flags & ST_CONN_TLS) || ret <= 0 || c->l4_proto != IPPROTO_TCP ||
	    sys == ST_SYS_RECVMMSG || sys == ST_SYS_SENDMMSG || (!egress && (flags & MSG_PEEK)))
		return c->flags & ST_CONN_TLS_LIB;
	t = bpf_map_lookup_elem(&tls_threads, &pid_tgid);
	if (!t)
		return c->flags & ST_CONN_TLS_LIB; /* this thread never called the library */
	if (t->call && (!t->ino || t->ino == ino)) {
		t->ino = ino;
		t->fd = fd;
		if (egress)
			t->nested_tx = 1;
		c->flags |= ST_CONN_TLS_LIB;
	} else if (!egress) {
		t->rx_ino = ino;
		t->rx_fd = fd;
		t->rx_fresh = 1;
	}
	tc = tls_conn_get(ino);
	if (tc) {
		tp = (struct tcp_sock *)c->sk;
		if (egress)
			err = BPF_CORE_READ_INTO(&seq, tp, write_seq);
		else
			err = BPF_CORE_READ_INTO(&seq, tp, copied_seq);
		ubuf = io_first_buf(sys, regs, &seen);
		if (err)
			count(ST_CNT_KREAD_FAIL);
		else if (ubuf)
			track_feed(egress ? &tc->tx : &tc->rx, ubuf, seen < (__u64)ret ? seen : ret, ret,
				   seq - (__u32)ret);
	}
	if (egress && t->deferred)
		tls_send_deferred(ctx, task, pid_tgid, t, c, tc, ino, fd);
	return c->flags & ST_CONN_TLS_LIB;
}

/* ---- uprobes ---- */

static __always_inline int tls_enter(struct pt_regs *ctx, __u8 call, bool ex)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	struct st_tls_thread *t;

	if (!traced(pid_tgid >> 32))
		return 0;
	t = bpf_map_lookup_elem(&tls_threads, &pid_tgid);
	if (!t) {
		struct st_tls_thread fresh = {};

		bpf_map_update_elem(&tls_threads, &pid_tgid, &fresh, BPF_NOEXIST);
		t = bpf_map_lookup_elem(&tls_threads, &pid_tgid);
		if (!t)
			return 0;
	}
	t->ssl = PT_REGS_PARM1(ctx);
	t->buf = PT_REGS_PARM2(ctx);
	t->lenp = ex ? PT_REGS_PARM4(ctx) : 0;
	t->ex = ex;
	t->ino = 0;
	t->fd = -1;
	t->nested_tx = 0;
	t->call = call;
	return 0;
}

SEC("uprobe")
int st_tls_read(struct pt_regs *ctx)
{
	return tls_enter(ctx, ST_TLS_CALL_READ, false);
}

SEC("uprobe")
int st_tls_read_ex(struct pt_regs *ctx)
{
	return tls_enter(ctx, ST_TLS_CALL_READ, true);
}

SEC("uprobe")
int st_tls_write(struct pt_regs *ctx)
{
	return tls_enter(ctx, ST_TLS_CALL_WRITE, false);
}

SEC("uprobe")
int st_tls_write_ex(struct pt_regs *ctx)
{
	return tls_enter(ctx, ST_TLS_CALL_WRITE, true);
}

SEC("uprobe")
int st_tls_handshake(struct pt_regs *ctx)
{
	return tls_enter(ctx, ST_TLS_CALL_HANDSHAKE, false);
}

/* The return of a handshake: bind its SSL * to the socket it used. */
static __always_inline int tls_handshake_return(struct st_tls_thread *t, __u64 pid_tgid)
{
	struct st_tls_ssl_key key = {};
	struct st_tls_ssl *s;
	struct st_tls_conn *tc;
	struct st_conn *c;

	if (!t->ino)
		return 0;
	key.ssl = t->ssl;
	key.tgid = pid_tgid >> 32;
	s = bpf_map_lookup_elem(&tls_ssl, &key);
	if (!s) {
		struct st_tls_ssl fresh = {};

		bpf_map_update_elem(&tls_ssl, &key, &fresh, BPF_NOEXIST);
		s = bpf_map_lookup_elem(&tls_ssl, &key);
		if (!s)
			return 0;
	}
	tls_bind(s, t->ino, t->fd, false);
	c = bpf_map_lookup_elem(&conns, &t->ino);
	if (c)
		c->flags |= ST_CONN_TLS | ST_CONN_TLS_LIB;
	tc = bpf_map_lookup_elem(&tls_conns, &t->ino);
	if (tc)
		tc->ssl = key.ssl;
	return 0;
}

/* Return of SSL_read, SSL_read_ex, SSL_write, SSL_write_ex and SSL_do_handshake. */
SEC("uretprobe")
int st_tls_return(struct pt_regs *ctx)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid(), len = 0, ssl, ubuf;
	struct st_tls_thread *t = bpf_map_lookup_elem(&tls_threads, &pid_tgid);
	struct st_tls_ssl_key key = {};
	struct st_tls_ssl *s;
	struct st_tls_conn *tc;
	struct st_conn *c;
	__u32 version = 0;
	bool write;
	int ret;

	if (!t)
		return 0; /* not a traced thread, or its entry was evicted */
	if (!t->call) {
		tls_count(ST_TLS_CNT_ORPHAN_RET);
		return 0;
	}
	write = t->call == ST_TLS_CALL_WRITE;
	if (t->call == ST_TLS_CALL_HANDSHAKE) {
		t->call = 0;
		return tls_handshake_return(t, pid_tgid);
	}
	t->call = 0;
	tls_count(ST_TLS_CNT_CALLS);
	ret = (int)PT_REGS_RC(ctx);
	if (t->ex) {
		if (ret != 1 || bpf_probe_read_user(&len, sizeof(len), (const void *)t->lenp))
			return 0;
	} else if (ret > 0) {
		len = ret;
	}
	if (!len)
		return 0;
	ssl = t->ssl;
	ubuf = t->buf;
	key.ssl = ssl;
	key.tgid = pid_tgid >> 32;
	s = bpf_map_lookup_elem(&tls_ssl, &key);
	if (!s) {
		struct st_tls_ssl fresh = {};

		bpf_map_update_elem(&tls_ssl, &key, &fresh, BPF_NOEXIST);
		s = bpf_map_lookup_elem(&tls_ssl, &key);
		if (!s)
			return 0;
	}
	if (!bpf_probe_read_user(&version, sizeof(version), (const void *)ssl) && (version >> 8) == 3 &&
	    (version & 0xff) <= 4)
		s->version = version & 0xff;

	if (t->ino) {
		if (s->ino != t->ino || s->by_thread)
			tls_bind(s, t->ino, t->fd, false);
	} else if (!s->ino || !bpf_map_lookup_elem(&conns, &s->ino)) {
		s->ino = 0;
		if (write) {
			tls_defer(pid_tgid, t, ssl, ubuf, len);
			return 0;
		}
		if (!t->rx_fresh || !t->rx_ino) {
			tls_count(ST_TLS_CNT_NO_CONN);
			return 0;
		}
		tc = bpf_map_lookup_elem(&tls_conns, &t->rx_ino);
		if (tc && tc->ssl && tc->ssl != ssl) {
			tls_count(ST_TLS_CNT_NO_CONN);
			return 0;
		}
		tls_bind(s, t->rx_ino, t->rx_fd, true);
		t->rx_fresh = 0;
	}
	c = bpf_map_lookup_elem(&conns, &s->ino);
	if (!c || (c->flags & ST_CONN_IGNORE)) {
		s->ino = 0;
		tls_count(ST_TLS_CNT_NO_CONN);
		return 0;
	}
	c->flags |= ST_CONN_TLS | ST_CONN_TLS_LIB;
	tc = tls_conn_get(s->ino);
	if (tc)
		tc->ssl = ssl;
	if (write && !t->nested_tx) {
		/* the ciphertext is written after the call (memory BIO) */
		tls_defer(pid_tgid, t, ssl, ubuf, len);
		return 0;
	}
	tls_emit(ctx, bpf_get_current_task_btf(), pid_tgid, c, s, tc, write, ubuf, len, NULL, 0);
	return 0;
}

/* SSL_free: forget the SSL *, whose address malloc will hand out again. */
SEC("uprobe")
int st_tls_free(struct pt_regs *ctx)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	struct st_tls_ssl_key key = {};
	struct st_tls_ssl *s;
	struct st_tls_conn *tc;

	if (!traced(pid_tgid >> 32))
		return 0;
	key.ssl = PT_REGS_PARM1(ctx);
	key.tgid = pid_tgid >> 32;
	s = bpf_map_lookup_elem(&tls_ssl, &key);
	if (!s)
		return 0;
	if (s->ino) {
		tc = bpf_map_lookup_elem(&tls_conns, &s->ino);
		if (tc && tc->ssl == key.ssl)
			tc->ssl = 0;
	}
	bpf_map_delete_elem(&tls_ssl, &key);
	return 0;
}

#endif
