/* TLS round trips over loopback TCP, both ends in one thread.
 *
 * usage: tls_loop CERT KEY ITERATIONS SIZE
 * Connects a TLS client and server over 127.0.0.1 (handshake driven on
 * non-blocking sockets, then blocking), prints "ready <pid>", waits for a
 * line on stdin, then runs ITERATIONS round trips of SIZE bytes: client
 * SSL_write, server SSL_read, server SSL_write, client SSL_read (four TLS
 * calls, each with its socket syscall).  Loopback TCP delivers a write to
 * the receiving socket before the write returns, so no call ever waits and
 * no thread wakes another.  Prints the process's CPU time per round trip in
 * nanoseconds (user + system: uprobe and tracepoint programs run in the
 * calling task, so they are in it; time spent descheduled on a busy machine
 * is not), then the wall time per round trip.
 */
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static void die(const char *what)
{
	fprintf(stderr, "tls_loop: %s\n", what);
	ERR_print_errors_fp(stderr);
	exit(1);
}

static void set_blocking(int fd, int blocking)
{
	int flags = fcntl(fd, F_GETFL);

	fcntl(fd, F_SETFL, blocking ? flags & ~O_NONBLOCK : flags | O_NONBLOCK);
}

static int step(SSL *ssl, int r)
{
	int err;

	if (r == 1)
		return 1;
	err = SSL_get_error(ssl, r);
	if (err != SSL_ERROR_WANT_READ && err != SSL_ERROR_WANT_WRITE)
		die("handshake");
	return 0;
}

/* One message of n bytes from `from` to `to`. */
static void pass(SSL *from, SSL *to, char *buf, int n)
{
	int got = 0;

	if (SSL_write(from, buf, n) != n)
		die("SSL_write");
	while (got < n) {
		int r = SSL_read(to, buf + got, n - got);

		if (r <= 0)
			die("SSL_read");
		got += r;
	}
}

int main(int argc, char **argv)
{
	struct sockaddr_in addr = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	socklen_t len = sizeof(addr);
	SSL_CTX *sctx, *cctx;
	SSL *client, *server;
	struct timespec t0, t1, c0, c1;
	long iterations, i;
	int lfd, cfd, sfd, one = 1, size, client_done = 0, server_done = 0;
	char line[16], *buf;

	if (argc != 5)
		die("usage: tls_loop CERT KEY ITERATIONS SIZE");
	iterations = atol(argv[3]);
	size = atoi(argv[4]);
	buf = calloc(1, size);
	lfd = socket(AF_INET, SOCK_STREAM, 0);
	if (bind(lfd, (struct sockaddr *)&addr, sizeof(addr)) || listen(lfd, 1) ||
	    getsockname(lfd, (struct sockaddr *)&addr, &len))
		die("listen");
	cfd = socket(AF_INET, SOCK_STREAM, 0);
	if (connect(cfd, (struct sockaddr *)&addr, sizeof(addr)))
		die("connect");
	sfd = accept(lfd, NULL, NULL);
	setsockopt(cfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	setsockopt(sfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));

	sctx = SSL_CTX_new(TLS_server_method());
	cctx = SSL_CTX_new(TLS_client_method());
	if (!sctx || !cctx || SSL_CTX_use_certificate_chain_file(sctx, argv[1]) != 1 ||
	    SSL_CTX_use_PrivateKey_file(sctx, argv[2], SSL_FILETYPE_PEM) != 1)
		die("certificate");
	server = SSL_new(sctx);
	client = SSL_new(cctx);
	SSL_set_fd(server, sfd);
	SSL_set_fd(client, cfd);
	set_blocking(cfd, 0);
	set_blocking(sfd, 0);
	while (!client_done || !server_done) {
		if (!client_done)
			client_done = step(client, SSL_connect(client));
		if (!server_done)
			server_done = step(server, SSL_accept(server));
	}
	set_blocking(cfd, 1);
	set_blocking(sfd, 1);
	/* a first round trip: the client reads the server's session tickets */
	pass(client, server, buf, size);
	pass(server, client, buf, size);
	printf("ready %d\n", getpid());
	fflush(stdout);
	if (!fgets(line, sizeof(line), stdin))
		return 1;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &c0);
	for (i = 0; i < iterations; i++) {
		pass(client, server, buf, size);
		pass(server, client, buf, size);
	}
	clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &c1);
	clock_gettime(CLOCK_MONOTONIC, &t1);
	printf("%.1f %.1f\n", ((c1.tv_sec - c0.tv_sec) * 1e9 + (c1.tv_nsec - c0.tv_nsec)) / iterations,
	       ((t1.tv_sec - t0.tv_sec) * 1e9 + (t1.tv_nsec - t0.tv_nsec)) / iterations);
	fflush(stdout);
	return 0;
}
