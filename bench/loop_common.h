/* What the benches' C loops share: a monotonic clock in ns, a comparison
 * for qsort of doubles (medians), and an exit that names the failed call. */
#ifndef LOOP_COMMON_H
#define LOOP_COMMON_H

#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static inline double now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e9 + ts.tv_nsec;
}

static inline int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return x < y ? -1 : x > y;
}

static inline void die(const char *what)
{
	perror(what);
	exit(1);
}

#endif
