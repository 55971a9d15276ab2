/* Pipe ping-pong between two processes pinned to one CPU, for
 * bench_sched_cost.py: every round trip is two context switches and two
 * wake-ups.  Usage: pingpong CPU ROUNDS BATCH
 * Prints "pids=<parent>,<child>", waits for a line on stdin (so the caller
 * can register the pids with a tracer), runs ROUNDS rounds of BATCH round
 * trips, and prints "rt_ns=<median ns per round trip over rounds>". */
#define _GNU_SOURCE
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "loop_common.h"

int main(int argc, char **argv)
{
	int to_child[2], to_parent[2];
	char byte = 'x', line[16];
	cpu_set_t set;
	pid_t child;

	if (argc != 4) {
		fprintf(stderr, "usage: pingpong CPU ROUNDS BATCH\n");
		return 2;
	}
	int cpu = atoi(argv[1]), rounds = atoi(argv[2]), batch = atoi(argv[3]);
	double *per = calloc(rounds, sizeof(double));

	CPU_ZERO(&set);
	CPU_SET(cpu, &set);
	if (sched_setaffinity(0, sizeof(set), &set))
		die("sched_setaffinity");
	struct sched_param prio = {.sched_priority = 10};
	if (sched_setscheduler(0, SCHED_FIFO, &prio))
		perror("sched_setscheduler (running without real-time priority)");
	if (pipe(to_child) || pipe(to_parent))
		die("pipe");
	child = fork();
	if (child < 0)
		die("fork");
	if (child == 0) {
		close(to_child[1]);
		close(to_parent[0]);
		for (;;) {
			if (read(to_child[0], &byte, 1) != 1)
				_exit(0);
			if (write(to_parent[1], &byte, 1) != 1)
				_exit(1);
		}
	}
	close(to_child[0]);
	close(to_parent[1]);
	printf("pids=%d,%d\n", getpid(), child);
	fflush(stdout);
	if (!fgets(line, sizeof(line), stdin))
		die("stdin");
	for (int r = 0; r < rounds; r++) {
		double t0 = now_ns();

		for (int i = 0; i < batch; i++) {
			if (write(to_child[1], &byte, 1) != 1 || read(to_parent[0], &byte, 1) != 1)
				die("ping-pong");
		}
		per[r] = (now_ns() - t0) / batch;
	}
	close(to_child[1]);
	waitpid(child, NULL, 0);
	qsort(per, rounds, sizeof(double), cmp_double);
	printf("rt_ns=%.1f\n", per[rounds / 2]);
	return 0;
}
