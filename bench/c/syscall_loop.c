/* Kernel-floor cost of one system call, with or without a seccomp filter (bench/seccomp.py).
 *
 *   syscall_loop FILTER|- CALL ITERATIONS REPEATS
 *
 * FILTER: a file of classic BPF (8 bytes an instruction, as sandbox.seccomp.build_bpf writes),
 * loaded with no_new_privs before the loop; "-" runs unfiltered. CALL: getppid (no arguments
 * checked by strict), personality (personality(0xffffffff): a query; strict checks the argument),
 * ioctl (ioctl(pipe, FIONREAD): strict checks the request). Prints the median over REPEATS of
 * the nanoseconds a call took, each repeat ITERATIONS calls. */
#define _GNU_SOURCE
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e9 + t.tv_nsec;
}

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: %s FILTER|- getppid|personality|ioctl ITERATIONS REPEATS\n", argv[0]);
        return 2;
    }
    long iters = atol(argv[3]), reps = atol(argv[4]);
    int fds[2];
    if (pipe(fds)) { perror("pipe"); return 1; }
    if (strcmp(argv[1], "-")) {
        static unsigned char buf[4096 * 8];
        FILE *f = fopen(argv[1], "rb");
        if (!f) { perror(argv[1]); return 1; }
        size_t n = fread(buf, 1, sizeof buf, f);
        fclose(f);
        struct sock_fprog prog = { .len = (unsigned short)(n / 8), .filter = (struct sock_filter *)buf };
        if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) || syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &prog)) {
            perror("seccomp");
            return 1;
        }
    }
    int which = !strcmp(argv[2], "getppid") ? 0 : !strcmp(argv[2], "personality") ? 1 : 2;
    double *t = calloc(reps, sizeof *t);
    int avail;
    for (long r = 0; r < reps; r++) {
        double t0 = now();
        for (long i = 0; i < iters; i++) {
            long rc;
            if (which == 0) rc = syscall(SYS_getppid);
            else if (which == 1) rc = syscall(SYS_personality, 0xffffffffUL);
            else rc = syscall(SYS_ioctl, fds[0], FIONREAD, &avail);
            if (rc < 0) { perror(argv[2]); return 1; }
        }
        t[r] = (now() - t0) / iters;
    }
    qsort(t, reps, sizeof *t, cmp);
    printf("%.2f\n", t[reps / 2]);
    return 0;
}
