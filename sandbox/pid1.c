/*
 * pysandbox-init: a sandbox's PID 1 once its program's process exists.
 *
 * PID 1 starts as a forked copy of the (Python) launcher: it joins its cgroups and forks the
 * program (sandbox/init.py, pid1_core). What is left for it to do until the end is small — drop
 * its privileges, release the program, forward signals, report the program's set-up failure or
 * wait status, reap — and a Python interpreter doing it keeps ~1.5 MiB of copied pages per sandbox
 * and spends ~1 ms of CPU on the privilege drop alone. So pid1_core execs this program instead (from
 * a sealed memfd copy that PID 1 may execute but not read: sandbox/init.py, init_image), which does
 * exactly what the rest of pid1_core does, in the same order and with the same report lines.
 *
 *   pysandbox-init STATUS_FD ERR_FD CHILD_PID LINGER_MS GO_FD
 *
 * STATUS_FD: the supervisor's status pipe ("SETUP ...", "EXEC ...", "EXIT <wait status>" lines);
 * ERR_FD: the program's error pipe (end of file at its execve; text: why it failed);
 * CHILD_PID: the program's pid; LINGER_MS: > 0 when the audit reads kernel records from /dev/kmsg
 * (a dead child stays a zombie that long, so the record can still be attributed by its ancestry);
 * GO_FD: the program waits on it before its seccomp filter and execve — one byte "G" once PID 1
 * holds no privilege (so no code of the sandbox's ever runs beside a privileged PID 1).
 * PID 1 arrives as root of the user namespace (its credentials changed before the exec, so that
 * it keeps its capabilities across it, less the two that would let it read its image).
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
#include <linux/capability.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
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

/* Parent-death signal re-armed (the credential change cleared it) and the supervisor checked to
 * be still there, every capability gone (bounding, ambient, permitted, effective, inheritable),
 * no_new_privs: init.pid1_core's Python fallback does the same. 0, or -1 with errno set; 1: the
 * supervisor is gone. */
static int drop_privileges(int status_fd)
{
    if (prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) < 0)
        return -1;
    struct pollfd p = {.fd = status_fd, .events = POLLOUT};
    if (poll(&p, 1, 0) > 0 && (p.revents & (POLLERR | POLLHUP)))
        return 1;                                   /* a pipe with no reader polls as POLLERR */
    for (int cap = 0; cap < 64; cap++) {            /* every one the kernel knows, to cap_last_cap */
        if (prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) < 0) {
            if (errno == EINVAL)
                break;
            return -1;
        }
    }
    if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) < 0)
        return -1;
    struct __user_cap_header_struct hdr = {.version = _LINUX_CAPABILITY_VERSION_3, .pid = 0};
    struct __user_cap_data_struct data[2];
    memset(data, 0, sizeof(data));
    if (syscall(SYS_capset, &hdr, data) < 0)
        return -1;
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
        return -1;
    return 0;
}

int main(int argc, char **argv)
{
    if (argc != 6)
        return 1;
    int status_fd = atoi(argv[1]), err_fd = atoi(argv[2]), linger_ms = atoi(argv[4]), go_fd = atoi(argv[5]);
    child = (pid_t)atoi(argv[3]);
    prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);             /* (it is already: it could not read its image) */
    prctl(PR_SET_NAME, "pysandbox-init", 0, 0, 0);  /* (not "memfd:pysandbox" in ps) */

    int dropped = drop_privileges(status_fd);
    if (dropped != 0) {
        if (dropped < 0) {
            const char *why = strerror(errno);
            send_line(status_fd, "SETUP pid 1 could not drop its privileges: ", why, strlen(why));
        }
        kill(child, SIGKILL);
        return 1;
    }
    /* the program may go on to its seccomp filter and execve */
    while (write(go_fd, "G", 1) < 0 && errno == EINTR)
        ;
    close(go_fd);

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
