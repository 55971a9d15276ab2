/* TLS round trips over loopback TCP between two threads of one process.
 *
 * usage: tls_loop CERT KEY ITERATIONS SIZE
 * Sets up a TLS connection (server thread: SSL_accept then echo; main
 * thread: SSL_connect), prints "ready <pid>", waits for a line on stdin, then
 * runs ITERATIONS round trips of SIZE bytes (client SSL_write, server
 * SSL_read + SSL_write, client SSL_read: four TLS calls) and prints the
 * nanoseconds per round trip.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static SSL *server_ssl;
static int size;

static void die(const char *what)
{
	fprintf(stderr, "tls_loop: %s\n", what);
	ERR_print_errors_fp(stderr);
	exit(1);
}

static int read_full(SSL *ssl, char *buf, int n)
{
	int got = 0;

	while (got < n) {
		int r = SSL_read(ssl, buf + got, n - got);

		if (r <= 0)
			return got;
		got += r;
	}
	return got;
}

static void *echo(void *arg)
{
	char *buf = malloc(size);

	(void)arg;
	if (SSL_accept(server_ssl) != 1)
		die("SSL_accept");
	while (read_full(server_ssl, buf, size) == size)
		if (SSL_write(server_ssl, buf, size) != size)
			die("server SSL_write");
	free(buf);
	return NULL;
}

int main(int argc, char **argv)
{
	struct sockaddr_in addr = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	socklen_t len = sizeof(addr);
	SSL_CTX *sctx, *cctx;
	SSL *client;
	pthread_t thread;
	struct timespec t0, t1;
	long iterations, i;
	int lfd, cfd, sfd, one = 1;
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
	server_ssl = SSL_new(sctx);
	client = SSL_new(cctx);
	SSL_set_fd(server_ssl, sfd);
	SSL_set_fd(client, cfd);
	pthread_create(&thread, NULL, echo, NULL);
	if (SSL_connect(client) != 1)
		die("SSL_connect");
	/* one round trip: the server's session tickets are read before timing */
	if (SSL_write(client, buf, size) != size || read_full(client, buf, size) != size)
		die("first round trip");
	printf("ready %d\n", getpid());
	fflush(stdout);
	if (!fgets(line, sizeof(line), stdin))
		return 1;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	for (i = 0; i < iterations; i++) {
		if (SSL_write(client, buf, size) != size || read_full(client, buf, size) != size)
			die("round trip");
	}
	clock_gettime(CLOCK_MONOTONIC, &t1);
	printf("%.1f\n", ((t1.tv_sec - t0.tv_sec) * 1e9 + (t1.tv_nsec - t0.tv_nsec)) / iterations);
	fflush(stdout);
	SSL_shutdown(client);
	shutdown(cfd, SHUT_RDWR);
	pthread_join(thread, NULL);
	return 0;
}
