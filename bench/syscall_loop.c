/* Tight write/read loop on a connected TCP loopback pair, for
 * bench_syscall_cost.py.  Usage: syscall_loop FAMILY(4|6) ROUNDS BATCH SIZE
 * Each round writes BATCH messages of SIZE bytes on the client socket, then
 * reads them back (SIZE bytes per read) on the server socket; write and read
 * phases are timed separately with CLOCK_MONOTONIC.  Prints
 * "write_ns=<per call> read_ns=<per call>" (medians over rounds).
 * With a 5th argument "wait", it first prints "pid=<pid>" and waits for a
 * line on stdin, so the caller can register the pid with the tracer.
 * A 6th argument, if given, is written at the start of every message (e.g.
 * "GET " so the tracer recognises the connection's protocol); the rest of
 * each message is 'x' bytes. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "loop_common.h"

int main(int argc, char **argv)
{
	int fam = argc > 1 ? atoi(argv[1]) : 4;
	int rounds = argc > 2 ? atoi(argv[2]) : 2000;
	int batch = argc > 3 ? atoi(argv[3]) : 16;
	int size = argc > 4 ? atoi(argv[4]) : 64;
	struct sockaddr_storage ss = {0};
	socklen_t sl;
	int ls, c, s, one = 1, r, i;
	char buf[65536];
	double *w = calloc(rounds, sizeof(double)), *rd = calloc(rounds, sizeof(double));

	memset(buf, 'x', sizeof(buf));
	if (argc > 6) {
		size_t n = strlen(argv[6]);

		memcpy(buf, argv[6], n < (size_t)size ? n : (size_t)size);
	}
	if (fam == 6) {
		struct sockaddr_in6 *a = (void *)&ss;
		a->sin6_family = AF_INET6;
		a->sin6_addr = in6addr_loopback;
		sl = sizeof(*a);
	} else {
		struct sockaddr_in *a = (void *)&ss;
		a->sin_family = AF_INET;
		a->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
		sl = sizeof(*a);
	}
	ls = socket(ss.ss_family, SOCK_STREAM, 0);
	if (ls < 0 || bind(ls, (void *)&ss, sl) || listen(ls, 1))
		die("listen");
	if (getsockname(ls, (void *)&ss, &sl))
		die("getsockname");
	c = socket(ss.ss_family, SOCK_STREAM, 0);
	if (c < 0 || connect(c, (void *)&ss, sl))
		die("connect");
	s = accept(ls, NULL, NULL);
	if (s < 0)
		die("accept");
	(void)one;
	if (argc > 5 && !strcmp(argv[5], "wait")) {
		char line[16];

		printf("pid=%d\n", getpid());
		fflush(stdout);
		if (!fgets(line, sizeof(line), stdin))
			die("stdin");
	}
	/* warm up */
	for (i = 0; i < 200; i++) {
		if (write(c, buf, size) != size || read(s, buf, size) != size)
			die("warmup");
	}
	for (r = 0; r < rounds; r++) {
		double t0 = now_ns(), t1, t2;

		for (i = 0; i < batch; i++)
			if (write(c, buf, size) != size)
				die("write");
		t1 = now_ns();
		for (i = 0; i < batch; i++) {
			int got = 0;

			while (got < size) {
				int n = read(s, buf, size - got);

				if (n <= 0)
					die("read");
				got += n;
			}
		}
		t2 = now_ns();
		w[r] = (t1 - t0) / batch;
		rd[r] = (t2 - t1) / batch;
	}
	qsort(w, rounds, sizeof(double), cmp_double);
	qsort(rd, rounds, sizeof(double), cmp_double);
	printf("write_ns=%.1f read_ns=%.1f\n", w[rounds / 2], rd[rounds / 2]);
	close(c);
	close(s);
	close(ls);
	return 0;
}
