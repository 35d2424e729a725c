/*
 * pysandbox-init: a sandbox's PID 1 once its program's process exists.
 *
 * PID 1 starts as a forked copy of the (Python) launcher: it joins its cgroups, forks the program
 * and drops every privilege (sandbox/init.py, pid1_core). What is left for it to do until the end
 * is small — forward signals, report the program's set-up failure or wait status, reap — and
 * a Python interpreter doing it keeps ~1.5 MiB of copied pages per sandbox. So pid1_core then
 * execs this program instead (from a sealed memfd copy that PID 1 may execute but not read:
 * sandbox/init.py, init_image), which does exactly what the rest of pid1_core does, in the same
 * order and with the same report lines.
 *
 *   pysandbox-init STATUS_FD ERR_FD CHILD_PID LINGER_MS
 *
 * STATUS_FD: the supervisor's status pipe ("SETUP ...", "EXEC ...", "EXIT <wait status>" lines);
 * ERR_FD: the program's error pipe (end of file at its execve; text: why it failed);
 * CHILD_PID: the program's pid; LINGER_MS: > 0 when the audit reads kernel records from /dev/kmsg
 * (a dead child stays a zombie that long, so the record can still be attributed by its ancestry).
 * The forwarded signals are blocked when it starts (they stay pending) and unblocked once their
 * handlers are in place. Exit status 0 after the EXIT line, 1 otherwise (the supervisor then
 * reports what it has).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

static const int forwarded[] = {SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGWINCH, SIGCONT};
static volatile pid_t child;

static void forward(int sig)
{
    int saved = errno;
    if (child > 0)
        kill(child, sig);
    errno = saved;
}

static void send_line(int fd, const char *prefix, const char *text, size_t n)
{
    char line[1100];
    size_t len = strlen(prefix);
    if (n > sizeof(line) - len - 1)
        n = sizeof(line) - len - 1;
    memcpy(line, prefix, len);
    for (size_t i = 0; i < n; i++)                  /* one line: newlines become spaces */
        line[len + i] = text[i] == '\n' ? ' ' : text[i];
    len += n;
    line[len++] = '\n';
    for (size_t off = 0; off < len;) {
        ssize_t w = write(fd, line + off, len - off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return;
        off += (size_t)w;
    }
}

int main(int argc, char **argv)
{
    if (argc != 5)
        return 1;
    int status_fd = atoi(argv[1]), err_fd = atoi(argv[2]), linger_ms = atoi(argv[4]);
    child = (pid_t)atoi(argv[3]);
    prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);             /* (it is already: it could not read its image) */
    prctl(PR_SET_NAME, "pysandbox-init", 0, 0, 0);  /* (not "memfd:pysandbox" in ps) */

    sigset_t set;
    sigemptyset(&set);
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = forward;
    sa.sa_flags = SA_RESTART;
    sigemptyset(&sa.sa_mask);
    for (size_t i = 0; i < sizeof(forwarded) / sizeof(forwarded[0]); i++) {
        sigaction(forwarded[i], &sa, NULL);
        sigaddset(&set, forwarded[i]);
    }
    sigprocmask(SIG_UNBLOCK, &set, NULL);

    /* the program's error pipe: end of file when it execs (or dies); anything else: why it failed */
    char err[1000];
    size_t got = 0;
    for (;;) {
        ssize_t r = read(err_fd, err + got, sizeof(err) - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        got += (size_t)r;
        if (got == sizeof(err)) {                   /* more than a report: drain it */
            char sink[512];
            for (;;) {
                ssize_t d = read(err_fd, sink, sizeof(sink));
                if (d > 0 || (d < 0 && errno == EINTR))
                    continue;
                break;
            }
            break;
        }
    }
    close(err_fd);
    if (got)
        send_line(status_fd, got >= 6 && !memcmp(err, "SETUP ", 6) ? "" : "EXEC ", err, got);

    for (;;) {
        int status;
        pid_t w;
        if (linger_ms > 0) {
            siginfo_t si;
            memset(&si, 0, sizeof(si));
            if (waitid(P_ALL, 0, &si, WEXITED | WNOWAIT) < 0) {
                if (errno == EINTR)
                    continue;
                return 1;
            }
            poll(NULL, 0, linger_ms);
            w = waitpid(si.si_pid, &status, 0);
        } else {
            w = waitpid(-1, &status, 0);
        }
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return 1;                               /* no child left, none was the program */
        }
        if (w == child) {
            char line[32];
            int n = snprintf(line, sizeof(line), "%d", status);
            send_line(status_fd, "EXIT ", line, (size_t)n);
            return 0;                               /* the kernel now kills what is left */
        }
    }
}
