/*
 * pysandbox-init: a sandbox's PID 1 once its root file system is built.
 *
 * PID 1 starts as a forked copy of the (Python) launcher: it joins its cgroups and builds the root
 * file system (sandbox/launch/sequence.py, pid1). What is left for it to do until the end is small — drop
 * its privileges, release the program, forward signals, report the program's set-up failure or
 * wait status, reap — and a Python interpreter doing it keeps ~1.5 MiB of copied pages per sandbox
 * and spends ~1 ms of CPU on the privilege drop alone. So sequence.pid1 execs this program instead (from
 * a sealed memfd copy that PID 1 may execute but not read: sandbox/init.py, init_image), which does
 * exactly what the rest of sequence.pid1 does, in the same order and with the same report lines.
 *
 *   pysandbox-init spawn STATUS_FD LINGER_MS PARAM_FD CGROUP2_FD PROGRAM_PID NOTIFY_FD CONSOLE_FD CREDS
 *
 * Spawn mode (the usual one): it first forks the program's process itself — see "the program's
 * last steps" below — and takes the sandbox's root identity (CREDS); PID 1 arrives with the
 * credentials it was cloned with and its capabilities as ambient ones. Otherwise (no root in the
 * user namespace: the program's process is a Python copy forked before, and waits):
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
 * it keeps its capabilities across it), or, in spawn mode, with the credentials it was cloned with
 * and its capabilities as ambient ones; either way, the two that would let it read its image were
 * out of its effective set when it exec'd (so the kernel made it non-dumpable).
 * Before the release PID 1 also loads a seccomp filter of its own (pid1_filter: only the calls it
 * makes from then on), and the program's process enters a Landlock domain PID 1 is not in
 * (landlock_confine): no capability a profile grants lets the program ptrace PID 1 or open its
 * memory. Test modes: `pysandbox-init filter` (the filter's BPF on stdout), `pysandbox-init
 * filter-test NR` (one call under it).
 * The forwarded signals are blocked when it starts (they stay pending) and unblocked once their
 * handlers are in place. Exit status 0 after the EXIT line, 1 otherwise (the supervisor then
 * reports what it has).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/audit.h>
#include <linux/sched.h>
#include <linux/seccomp.h>
#include <linux/filter.h>
#include <stddef.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/capability.h>
#include <linux/keyctl.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <termios.h>
#include <time.h>
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
    char line[4200];
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

/* The sandbox's root identity (ROOT_GID 1: gid 0; ROOT_GROUPS 2: no supplementary groups; ROOT_UID
 * 4: uid 0), as init._set_credentials: 0, or -1 with errno set. */
enum { ROOT_GID = 1, ROOT_GROUPS = 2, ROOT_UID = 4 };

static int become_root(int creds)
{
    if (creds & ROOT_GID && syscall(SYS_setresgid, 0, 0, 0) < 0)
        return -1;
    if (creds & ROOT_GROUPS && syscall(SYS_setgroups, 0, NULL) < 0)
        return -1;
    if (creds & ROOT_UID && syscall(SYS_setresuid, 0, 0, 0) < 0)
        return -1;
    return 0;
}

/* Parent-death signal re-armed (the credential change cleared it) and the supervisor checked to
 * be still there, every capability gone (bounding, ambient, permitted, effective, inheritable),
 * no_new_privs: sequence.pid1's Python fallback does the same. 0, or -1 with errno set; 1: the
 * supervisor is gone. */
static int drop_privileges(int status_fd, int creds)
{
    if (become_root(creds) < 0)                     /* (spawn mode: CREDS; else 0, done before the exec) */
        return -1;
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

/* ---- PID 1 out of the program's reach: Landlock ----------------------------------------------
 * ptrace_may_access lets CAP_SYS_PTRACE in the sandbox's user namespace beat both the uid check and
 * PID 1's non-dumpability: a profile granting it would let the program attach to PID 1, write
 * /proc/1/mem, process_vm_writev or pidfd_getfd it. Landlock vetoes all of those (its ptrace hook)
 * for a process inside a domain towards any process outside that domain or its descendants,
 * whatever the capabilities. So the program's process enters a domain of its own before it drops
 * its privileges; PID 1 never does. The ruleset handles no file system or network access (one that
 * did would deny the program mount, umount and pivot_root) and scopes only abstract unix sockets
 * (ABI 6: a ruleset must restrict something): the program cannot connect to an abstract socket
 * bound outside its domain (the host's, with the host's network namespace; a `pysandbox exec`
 * process's). Signals are not scoped: a signal to PID 1 gains nothing (the kernel drops SIGKILL and
 * SIGSTOP sent to a namespace's init from inside it; the others are forwarded to the program) and
 * `pysandbox exec` processes (a sibling domain) can still signal the program. 0, or -1 with errno. */
struct ll_ruleset_attr { uint64_t handled_access_fs, handled_access_net, scoped; };
#define LL_SCOPE_ABSTRACT_UNIX_SOCKET 1ULL
#ifndef SYS_landlock_create_ruleset
#define SYS_landlock_create_ruleset 444
#define SYS_landlock_restrict_self 446
#endif

static int landlock_confine(void)
{
    struct ll_ruleset_attr attr = {.scoped = LL_SCOPE_ABSTRACT_UNIX_SOCKET};
    long fd = syscall(SYS_landlock_create_ruleset, &attr, sizeof(attr), 0);
    if (fd < 0)
        return -1;
    long r = syscall(SYS_landlock_restrict_self, (int)fd, 0);
    int e = errno;
    close((int)fd);
    errno = e;
    return r < 0 ? -1 : 0;
}

/* The profile's Landlock ruleset (sandbox/landlock.py built it after pivot_root; the PROGRAM
 * section names its descriptor): the program's process enters it instead. 0, or -1 with errno. */
static int landlock_enter(int ruleset, uint32_t flags)
{
    long r = syscall(SYS_landlock_restrict_self, ruleset, flags);
    int e = errno;
    close(ruleset);
    errno = e;
    return r < 0 ? -1 : 0;
}

/* ---- PID 1's own seccomp filter ------------------------------------------------------------------
 * Installed once PID 1 holds no privilege (no_new_privs set) and before it releases the program:
 * from then on PID 1 may only do what main() does below — write its report and the "G", read the
 * error pipe, forward signals (kill, rt_sigaction/rt_sigprocmask/rt_sigreturn), wait and reap
 * (waitid, wait4), the kmsg audit's linger (clock_gettime, poll; restart_syscall when a stop
 * interrupted it), close, exit. Anything else, another architecture's calling convention (i386
 * int 0x80) or the x32 syscall numbers: the kernel kills PID 1 (SECCOMP_RET_KILL_PROCESS, recorded
 * by the kernel's audit), which takes the whole sandbox down — a PID 1 doing anything else is
 * not ours any more. Plain BPF, no libseccomp: `pysandbox-init filter` prints it. */
#if defined(__x86_64__)
#define PID1_ARCH AUDIT_ARCH_X86_64
#define PID1_X32 1
#elif defined(__aarch64__)
#define PID1_ARCH AUDIT_ARCH_AARCH64
#define PID1_X32 0
#else
#error "pysandbox-init: PID 1's seccomp filter knows x86_64 and aarch64 only"
#endif

static const long pid1_allowed[] = {
    SYS_read, SYS_write, SYS_close, SYS_kill, SYS_rt_sigaction, SYS_rt_sigprocmask, SYS_rt_sigreturn,
    SYS_wait4, SYS_waitid, SYS_clock_gettime, SYS_ppoll, SYS_restart_syscall, SYS_exit, SYS_exit_group,
#ifdef SYS_poll
    SYS_poll,
#endif
};
#define N_ALLOWED (sizeof(pid1_allowed) / sizeof(pid1_allowed[0]))

/* [0] arch check, [1..2] load nr (and x32), then one JEQ per allowed call, KILL, ALLOW */
static unsigned short pid1_filter(struct sock_filter *f)
{
    unsigned short n = 0;
    f[n++] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch));
    f[n++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, PID1_ARCH, 1, 0);
    f[n++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS);
    f[n++] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr));
#if PID1_X32
    f[n++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JGE | BPF_K, 0x40000000, (unsigned char)N_ALLOWED, 0);   /* to KILL */
#endif
    for (size_t i = 0; i < N_ALLOWED; i++)      /* a match jumps to ALLOW, the last instruction */
        f[n++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (uint32_t)pid1_allowed[i],
                                              (unsigned char)(N_ALLOWED - i), 0);
    f[n++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS);
    f[n++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW);
    return n;
}

#define PID1_FILTER_MAX (N_ALLOWED + 8)

static int pid1_seccomp(void)                   /* needs no_new_privs (drop_privileges) */
{
    struct sock_filter f[PID1_FILTER_MAX];
    struct sock_fprog prog = {.len = pid1_filter(f), .filter = f};
    return (int)syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &prog);
}

/* ---- the program's last steps (spawn mode) -------------------------------------------------
 * In spawn mode PID 1 starts the program's process itself: a fork of this small program, not of the
 * Python launcher (whose copy-on-write pages, page-table copy and teardown were most of a launch's
 * CPU). The Python PID 1 has built the root file system (in a thread that took the sandbox's root
 * identity; PID 1 itself kept the credentials it was cloned with, which clone3 CLONE_INTO_CGROUP
 * is checked against); what is left for the program's process is its root identity, its cgroup
 * namespace, and what sequence.last_steps does, in the same order, with the
 * same error reports ("<errno> <stage> <text>" on its error pipe, exit 126/127; "SETUP <text>" for a
 * set-up step): the parameters come from init.program_params, as one launch message on PARAM_FD
 * (sandbox/wire.py, which documents the layout; version WIRE_VERSION):
 *
 *   header   magic "PSBW" | version u16 | count u16 | length u32 (the whole message)
 *   section  tag u16 | reserved u16 | length u32 | payload        (little-endian throughout)
 *
 * Only the PROGRAM section (tag 2) is read here: flags u32 (P_*), uid u32, gid u32, ngroups u32,
 * groups u32[ngroups], nrlimits u32, (resource u32, soft i64, hard i64, name str)[nrlimits], cwd str,
 * capabilities kept u64, bpf (u32 length, bytes), argc u32, argv str[argc], envc u32,
 * env str[envc], Landlock ruleset descriptor i32 (-1: none), landlock_restrict_self flags u32; str = u32 length + bytes. Another magic or version, a section beyond the message,
 * an unknown tag, or no PROGRAM section: the program does not start (SETUP, exit 125). */

struct blob { const unsigned char *p; size_t left; int bad; };

static void take(struct blob *b, void *v, size_t n)      /* (zeroes, and b->bad, when short) */
{
    if (b->left < n) {
        b->bad = 1;
        memset(v, 0, n);
        return;
    }
    memcpy(v, b->p, n);
    b->p += n;
    b->left -= n;
}

static uint32_t take_u32(struct blob *b) { uint32_t v; take(b, &v, sizeof(v)); return v; }
static int64_t take_i64(struct blob *b) { int64_t v; take(b, &v, sizeof(v)); return v; }

static char *take_str(struct blob *b)           /* length-prefixed, returned NUL-terminated */
{
    uint32_t n = take_u32(b);
    if (b->bad || b->left < n) { b->bad = 1; return NULL; }
    char *out = malloc((size_t)n + 1);
    if (!out) { b->bad = 1; return NULL; }
    memcpy(out, b->p, n);
    out[n] = 0;
    b->p += n; b->left -= n;
    return out;
}

#define WIRE_VERSION 1
enum { WIRE_HEADER = 12, WIRE_SECTION = 8, WIRE_MAX_SECTIONS = 8, WIRE_TAG_MAX = 6, WIRE_PROGRAM = 2 };

/* the PROGRAM section of a launch message (see above); 0 when there is none or the message is bad */
static int wire_program(const unsigned char *buf, size_t len, struct blob *out)
{
    uint16_t version, count;
    uint32_t total;
    if (len < WIRE_HEADER || memcmp(buf, "PSBW", 4))
        return 0;
    memcpy(&version, buf + 4, 2);
    memcpy(&count, buf + 6, 2);
    memcpy(&total, buf + 8, 4);
    if (version != WIRE_VERSION || count > WIRE_MAX_SECTIONS || total != len)
        return 0;
    size_t at = WIRE_HEADER;
    unsigned seen = 0;
    int found = 0;
    for (unsigned i = 0; i < count; i++) {
        uint16_t tag;
        uint32_t n;
        if (len - at < WIRE_SECTION)
            return 0;
        memcpy(&tag, buf + at, 2);
        memcpy(&n, buf + at + 4, 4);
        at += WIRE_SECTION;
        if (tag < 1 || tag > WIRE_TAG_MAX || seen & (1u << tag) || n > len - at)
            return 0;
        seen |= 1u << tag;
        if (tag == WIRE_PROGRAM) {
            *out = (struct blob){buf + at, n, 0};
            found = 1;
        }
        at += n;
    }
    return found && at == len;
}

enum { P_NEW_SESSION = 1, P_SET_IDS = 2, P_SETGROUPS = 4, P_NNP = 8, P_LISTENER = 16, P_LOG = 32,
       P_CGROUPNS = 64, P_GID0 = 128, P_GROUPS0 = 256, P_UID0 = 512,    /* (these 3: ROOT_* << 7) */
       P_LANDLOCK = 1024, P_KEYRING = 2048 };

static int err_w = -1;

static void report(int code, const char *stage, const char *text, int status)
{
    char line[1200];
    int n = snprintf(line, sizeof(line), "%d %s %s", code, stage, text);
    if (n > 0)
        (void)!write(err_w, line, (size_t)n < sizeof(line) ? (size_t)n : sizeof(line) - 1);
    _exit(status);
}

static void fail(const char *stage, const char *what)      /* errno set by the failed call */
{
    int e = errno;
    char text[600];
    if (what)
        snprintf(text, sizeof(text), "%s: %s", what, strerror(e));
    else
        snprintf(text, sizeof(text), "%s", strerror(e));
    report(e, stage, text, 126);
}

static void setup_fail(const char *what)
{
    char line[600];
    int n = snprintf(line, sizeof(line), "SETUP %s: %s", what, strerror(errno));
    if (n > 0)
        (void)!write(err_w, line, (size_t)n < sizeof(line) ? (size_t)n : sizeof(line) - 1);
    _exit(125);
}

/* close (cloexec: mark close-on-exec) every descriptor from low to high; one by one where
 * close_range is refused (an outer seccomp filter): -1 only when that fails too */
static int close_from(int low, unsigned int high, int cloexec)
{
    if (!syscall(SYS_close_range, low, high, cloexec ? CLOSE_RANGE_CLOEXEC : 0))
        return 0;
    long max = sysconf(_SC_OPEN_MAX);
    if (max < 0)
        return -1;
    for (long fd = low; fd < max && fd <= (long)high; fd++) {
        if (cloexec) {
            if (fcntl((int)fd, F_SETFD, FD_CLOEXEC) < 0 && errno != EBADF)
                return -1;
        } else {
            close((int)fd);
        }
    }
    return 0;
}

static void close_all_but(const int *keep, int n)
{
    int low = 3;
    for (;;) {                                      /* the smallest kept fd >= low */
        int next = -1;
        for (int i = 0; i < n; i++)
            if (keep[i] >= low && (next < 0 || keep[i] < next))
                next = keep[i];
        if (next < 0)
            break;
        if (next > low && close_from(low, (unsigned int)next - 1, 0) < 0)
            setup_fail("cannot close the launcher's descriptors");
        low = next + 1;
    }
    if (close_from(low, ~0U, 0) < 0)
        setup_fail("cannot close the launcher's descriptors");
}

static int send_fd(int sock, int fd, char tag)
{
    char cbuf[CMSG_SPACE(sizeof(int))];
    memset(cbuf, 0, sizeof(cbuf));
    struct iovec iov = {.iov_base = &tag, .iov_len = 1};
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf, .msg_controllen = sizeof(cbuf)};
    struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(c), &fd, sizeof(int));
    return sendmsg(sock, &msg, MSG_NOSIGNAL) < 0 ? -1 : 0;
}

/* run -t: a new session whose controlling terminal is a fresh pty of the sandbox's devpts; the
 * master goes to the supervisor (init._console) */
static void console(int sock)
{
    if (setsid() < 0)
        fail("tty", "setsid");
    int master = open("/dev/ptmx", O_RDWR | O_NOCTTY | O_CLOEXEC);
    if (master < 0)
        fail("tty", "/dev/ptmx");
    int unlock = 0, n = 0;
    if (ioctl(master, TIOCSPTLCK, &unlock) < 0 || ioctl(master, TIOCGPTN, &n) < 0)
        fail("tty", "ptmx");
    char path[64];
    snprintf(path, sizeof(path), "/dev/pts/%d", n);
    int slave = open(path, O_RDWR);
    if (slave < 0)
        fail("tty", path);
    if (ioctl(slave, TIOCSCTTY, 0) < 0)
        fail("tty", "TIOCSCTTY");
    if (send_fd(sock, master, 'T') < 0)
        fail("tty", "console socket");
    close(master);
    close(sock);
    for (int t = 0; t < 3; t++)
        if (dup2(slave, t) < 0)
            fail("tty", "dup2");
    if (slave > 2)
        close(slave);
}

/* os.execvpe's search: the PATH of the program's environment (else /bin:/usr/bin); the first error
 * other than ENOENT/ENOTDIR wins, else the last */
static void exec_search(char **argv, char **envp)
{
    const char *file = argv[0];
    if (strchr(file, '/')) {
        execve(file, argv, envp);
        return;
    }
    const char *path = "/bin:/usr/bin";
    for (char **e = envp; *e; e++)
        if (!strncmp(*e, "PATH=", 5))
            path = *e + 5;
    int saved = 0, last = ENOENT;
    size_t flen = strlen(file);
    for (const char *p = path;; ) {
        const char *end = strchr(p, ':');
        size_t dlen = end ? (size_t)(end - p) : strlen(p);
        char full[4096];
        if (dlen + flen + 2 <= sizeof(full)) {
            memcpy(full, p, dlen);
            size_t off = dlen;
            if (dlen && full[dlen - 1] != '/')
                full[off++] = '/';
            memcpy(full + off, file, flen + 1);
            if (!dlen)                              /* an empty entry: os.path.join("", file) */
                memmove(full, full + (off - dlen), flen + 1);
            execve(full, argv, envp);
            last = errno;
            if (last != ENOENT && last != ENOTDIR && !saved)
                saved = last;
        }
        if (!end)
            break;
        p = end + 1;
    }
    errno = saved ? saved : last;
}

static void program(const unsigned char *buf, size_t len, int go_r, int notify, int cons)
{
    struct blob b = {buf, 0, 1};
    if (!wire_program(buf, len, &b)) {
        errno = EPROTO;
        setup_fail("the program's parameters: not a launch message of this version");
    }
    uint32_t flags = take_u32(&b), uid = take_u32(&b), gid = take_u32(&b), ngroups = take_u32(&b);
    gid_t *groups = ngroups <= 65536 ? calloc((size_t)ngroups + 1, sizeof(gid_t)) : NULL;
    if (!groups)
        b.bad = 1;
    for (uint32_t i = 0; i < ngroups && !b.bad; i++)
        groups[i] = take_u32(&b);
    uint32_t nlim = take_u32(&b);
    if (nlim > 32)
        b.bad = 1;
    int lim_id[32];
    int64_t lim_soft[32], lim_hard[32];
    char *lim_name[32];
    for (uint32_t i = 0; i < nlim && !b.bad; i++) {
        lim_id[i] = (int)take_u32(&b);
        lim_soft[i] = take_i64(&b);
        lim_hard[i] = take_i64(&b);
        lim_name[i] = take_str(&b);
    }
    char *cwd = take_str(&b);
    uint64_t keep = (uint64_t)take_i64(&b);
    uint32_t bpf_len = take_u32(&b);
    const unsigned char *bpf = b.p;
    if (bpf_len % 8 || b.left < bpf_len)
        b.bad = 1;
    else {
        b.p += bpf_len; b.left -= bpf_len;
    }
    uint32_t argc = take_u32(&b);
    char **av = calloc((size_t)argc + 1, sizeof(char *));
    for (uint32_t i = 0; av && i < argc && !b.bad; i++)
        av[i] = take_str(&b);
    uint32_t envc = take_u32(&b);
    char **ev = calloc((size_t)envc + 1, sizeof(char *));
    for (uint32_t i = 0; ev && i < envc && !b.bad; i++)
        ev[i] = take_str(&b);
    int ruleset = (int)take_u32(&b);              /* the profile's Landlock ruleset (-1: none) */
    uint32_t ruleset_flags = take_u32(&b);
    if (b.bad || !av || !ev || !argc) {
        errno = EINVAL;
        setup_fail("the program's parameters");
    }

    /* first the sandbox's root identity, as the Python program's process had it (init._identity) */
    if (become_root((int)(flags / P_GID0) & (ROOT_GID | ROOT_GROUPS | ROOT_UID)) < 0)
        setup_fail("the sandbox's root identity");
    if (prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) < 0)
        setup_fail("pdeathsig");
    if (flags & P_CGROUPNS && syscall(SYS_unshare, CLONE_NEWCGROUP) < 0)  /* rooted at the cgroup it was forked into */
        setup_fail("cannot unshare the cgroup namespace");
    /* every permitted capability effective, as the Python program's process had them */
    struct __user_cap_header_struct hdr = {.version = _LINUX_CAPABILITY_VERSION_3, .pid = 0};
    struct __user_cap_data_struct cap[2];
    if (syscall(SYS_capget, &hdr, cap) < 0)
        setup_fail("capget");
    cap[0].effective = cap[0].permitted;
    cap[1].effective = cap[1].permitted;
    if (syscall(SYS_capset, &hdr, cap) < 0)
        setup_fail("capset");
    /* out of reach of PID 1 (see landlock_confine), while it still holds CAP_SYS_ADMIN in the
     * namespace (landlock_restrict_self needs it or no_new_privs, which a profile may not want).
     * No Landlock: the launcher refused a program that would keep CAP_SYS_PTRACE (checked again) */
    if (ruleset >= 0) {        /* the profile's rules, built by init.landlock_rules (they scope too) */
        if (landlock_enter(ruleset, ruleset_flags) < 0)
            setup_fail("landlock (the profile's rules)");
    } else if (flags & P_LANDLOCK ? landlock_confine() < 0 : (keep >> CAP_SYS_PTRACE & 1) != 0) {
        if (!(flags & P_LANDLOCK))
            errno = ENOSYS;
        setup_fail("landlock (keeps pid 1 out of the program's reach)");
    }

    int kept[] = {err_w, go_r, notify, cons};
    close_all_but(kept, 4);
    if (cons >= 0)
        console(cons);
    else if (flags & P_NEW_SESSION && setsid() < 0)
        fail("prepare", "setsid");
    /* a session keyring of its own (runc's default), never the caller's: keys are not namespaced,
     * and a key reachable from the session keyring is the possessor's whatever the uid. Refused by
     * an outer filter (EPERM) or a kernel without keys (ENOSYS): keyctl is as closed to the program
     * (sequence.last_steps does the same) */
    if (flags & P_KEYRING && syscall(SYS_keyctl, KEYCTL_JOIN_SESSION_KEYRING, NULL) < 0
        && errno != EPERM && errno != ENOSYS)
        setup_fail("a session keyring of its own");
    for (uint32_t i = 0; i < nlim; i++) {
        char stage[64];
        snprintf(stage, sizeof(stage), "ulimit:%s", lim_name[i]);
        struct rlimit rl = {.rlim_cur = lim_soft[i] < 0 ? RLIM_INFINITY : (rlim_t)lim_soft[i],
                            .rlim_max = lim_hard[i] < 0 ? RLIM_INFINITY : (rlim_t)lim_hard[i]};
        if (setrlimit(lim_id[i], &rl) < 0) {         /* (the words of Python's resource.setrlimit) */
            if (errno == EPERM)
                report(0, stage, "not allowed to raise maximum limit", 126);
            if (errno == EINVAL)
                report(0, stage, "current limit exceeds maximum limit", 126);
            fail(stage, NULL);
        }
    }
    if (chdir(cwd) < 0)
        fail("cwd", NULL);
    /* the kernel's order (sequence.last_steps does the same): the bounding set first, while
     * CAP_SETPCAP is still effective (a change to a non-zero uid clears the effective set) — every
     * capability not kept, up to the kernel's last (EINVAL past it) */
    for (int c = 0; c < 64; c++) {
        if (keep & (1ULL << c))
            continue;
        if (prctl(PR_CAPBSET_DROP, c, 0, 0, 0) < 0) {
            if (errno == EINVAL)
                break;
            fail("capabilities", "capbset_drop");
        }
    }
    if (flags & P_SET_IDS) {
        if (flags & P_SETGROUPS && syscall(SYS_setgroups, (size_t)ngroups, groups) < 0)
            fail("identity", "setgroups");
        if (uid != 0 && prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0) < 0)
            fail("identity", "keepcaps");
        if (syscall(SYS_setresgid, gid, gid, gid) < 0)
            fail("identity", "setresgid");
        if (syscall(SYS_setresuid, uid, uid, uid) < 0)
            fail("identity", "setresuid");
        if (prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) < 0)       /* cleared by the change */
            fail("identity", "pdeathsig");
    }
    /* capabilities.set_sets: ambient cleared, permitted = effective = inheritable = `keep`, and
     * ambient = `keep` for a non-root uid. A seccomp filter without no_new_privs is loaded with
     * CAP_SYS_ADMIN in the namespace (as runc does): it stays in permitted/effective until execve,
     * which drops it (it is in neither the bounding nor the inheritable set, root or not) */
    uint64_t pe = keep;
    if (bpf_len && !(flags & P_NNP))
        pe |= 1ULL << CAP_SYS_ADMIN;
    if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) < 0)
        fail("capabilities", "prctl(PR_CAP_AMBIENT_CLEAR_ALL)");
    for (int i = 0; i < 2; i++) {
        cap[i].permitted = cap[i].effective = (uint32_t)(pe >> (32 * i));
        cap[i].inheritable = (uint32_t)(keep >> (32 * i));
    }
    if (syscall(SYS_capset, &hdr, cap) < 0)
        fail("capabilities", "capset");
    if (uid != 0)
        for (int c = 0; c < 64; c++)
            if (keep & (1ULL << c) && prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, c, 0, 0) < 0)
                fail("capabilities", "prctl(PR_CAP_AMBIENT_RAISE)");
    if (flags & P_NNP && prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
        fail("capabilities", "no_new_privs");
    if (close_from(3, ~0U, 1) < 0)                  /* no descriptor of ours survives execve */
        fail("capabilities", "close_range");
    /* nothing of the sandbox's runs beside a privileged PID 1 */
    char g = 0;
    ssize_t r;
    while ((r = read(go_r, &g, 1)) < 0 && errno == EINTR)
        ;
    if (r != 1 || g != 'G')
        _exit(125);                                 /* PID 1 failed (it reports why) or is gone */
    close(go_r);
    if (bpf_len) {
        struct sock_fprog prog = {.len = (unsigned short)(bpf_len / 8), .filter = (struct sock_filter *)bpf};
        unsigned int sflags = (flags & P_LISTENER ? SECCOMP_FILTER_FLAG_NEW_LISTENER : 0)
                              | (flags & P_LOG ? SECCOMP_FILTER_FLAG_LOG : 0);
        long fd = syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, sflags, &prog);
        if (fd < 0)
            fail("seccomp", "seccomp");
        if (flags & P_LISTENER && notify >= 0) {
            if (send_fd(notify, (int)fd, 'L') < 0)
                fail("seccomp", "notify socket");
            close((int)fd);
        }
    }
    exec_search(av, ev);
    int e = errno;
    report(e, "exec", av[0], e == ENOENT ? 127 : 126);
}

static pid_t spawn_program(int param_fd, int cg_fd, pid_t want_pid, int notify, int cons, int *err_r, int *go_w)
{
    struct stat st;
    if (fstat(param_fd, &st) < 0)
        return -1;
    if (st.st_size <= 0 || st.st_size > (64 << 20)) {
        errno = E2BIG;
        return -1;
    }
    unsigned char *buf = malloc((size_t)st.st_size);
    if (!buf)
        return -1;
    size_t got = 0;
    while (got < (size_t)st.st_size) {
        ssize_t r = pread(param_fd, buf + got, (size_t)st.st_size - got, (off_t)got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            if (!r)
                errno = EIO;
            return -1;
        }
        got += (size_t)r;
    }
    close(param_fd);
    int ep[2], gp[2];
    if (pipe2(ep, O_CLOEXEC) < 0 || pipe2(gp, O_CLOEXEC) < 0)
        return -1;
    struct clone_args ca;
    memset(&ca, 0, sizeof(ca));
    ca.exit_signal = SIGCHLD;
    if (cg_fd >= 0) {
        ca.flags |= CLONE_INTO_CGROUP;
        ca.cgroup = (uint64_t)cg_fd;
    }
    pid_t tid = want_pid;
    if (want_pid > 0) {
        ca.set_tid = (uint64_t)(uintptr_t)&tid;
        ca.set_tid_size = 1;
    }
    /* pid 2 (set_tid): it was the Python PID 1's thread that built the root (init.setup_in_thread), or
     * a spare's builder. The kernel wakes an exec waiting for the other threads to end slightly
     * before it frees their pids: EEXIST for a moment at most */
    long pid;
    for (int tries = 0; (pid = syscall(SYS_clone3, &ca, sizeof(ca))) < 0 && errno == EEXIST && tries < 2000; tries++) {
        struct timespec ts = {0, 50000};
        nanosleep(&ts, NULL);
    }
    if (pid < 0)
        return -1;
    if (pid == 0) {
        /* the program starts with every signal at its default disposition (the kernel's call: the C
         * library's sigaction refuses its own 32 and 33, which a caller may have ignored), none
         * blocked */
        struct { void *handler; unsigned long flags; void *restorer; uint64_t mask; } dfl = {0}, old;
        for (int sig = 1; sig < 65; sig++)
            if (sig != SIGKILL && sig != SIGSTOP && !syscall(SYS_rt_sigaction, sig, NULL, &old, 8)
                    && old.handler == (void *)SIG_IGN)
                syscall(SYS_rt_sigaction, sig, &dfl, NULL, 8);
        uint64_t none = 0;
        syscall(SYS_rt_sigprocmask, SIG_SETMASK, &none, NULL, 8);
        err_w = ep[1];
        close(ep[0]);
        close(gp[1]);
        if (prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) < 0)
            setup_fail("pdeathsig");
        program(buf, (size_t)st.st_size, gp[0], notify, cons);
        _exit(126);
    }
    free(buf);
    close(ep[1]);
    close(gp[0]);
    *err_r = ep[0];
    *go_w = gp[1];
    return (pid_t)pid;
}

/* sleep ms milliseconds, a forwarded signal or not */
static void linger(int ms)
{
    struct timespec now, end;
    clock_gettime(CLOCK_MONOTONIC, &end);
    end.tv_sec += ms / 1000;
    end.tv_nsec += (long)(ms % 1000) * 1000000L;
    if (end.tv_nsec >= 1000000000L) {
        end.tv_sec++;
        end.tv_nsec -= 1000000000L;
    }
    for (;;) {
        clock_gettime(CLOCK_MONOTONIC, &now);
        long left = (end.tv_sec - now.tv_sec) * 1000L + (end.tv_nsec - now.tv_nsec) / 1000000L;
        if (left <= 0 || poll(NULL, 0, (int)left) == 0)
            return;
    }
}

int main(int argc, char **argv)
{
    int status_fd, err_fd = -1, linger_ms, go_fd = -1, creds = 0;
    prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);             /* (it is already: it could not read its image) */
    prctl(PR_SET_NAME, "pysandbox-init", 0, 0, 0);  /* (not "memfd:pysandbox" in ps) */
    if (argc == 2 && !strcmp(argv[1], "filter")) {
        /* PID 1's seccomp filter, as raw BPF on stdout (what the host reads back from a running
         * PID 1 with PTRACE_SECCOMP_GET_FILTER: tests/security/test_pid1_seccomp.py) */
        struct sock_filter f[PID1_FILTER_MAX];
        unsigned short n = pid1_filter(f);
        return write(1, f, n * sizeof(f[0])) == (ssize_t)(n * sizeof(f[0])) ? 0 : 1;
    }
    if ((argc == 3 || argc == 4) && !strcmp(argv[1], "filter-test")) {
        /* filter-test NR | filter-test int80 NR: load PID 1's filter, then make system call NR with
         * every argument -1 (the 64-bit convention, or i386's int 0x80), print "errno E" (or
         * "ok"): a call the filter refuses kills this process (SIGSYS) */
        if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0 || pid1_seccomp() < 0)
            return 2;
        long nr = atol(argv[argc - 1]), r;
        if (argc == 4) {
#if defined(__x86_64__)
            if (strcmp(argv[2], "int80"))
                return 2;
            __asm__ volatile("int $0x80" : "=a"(r) : "0"(nr), "b"(-1L), "c"(-1L), "d"(-1L) : "memory");
            if (r < 0) {
                errno = (int)-r;
                r = -1;
            }
#else
            return 2;
#endif
        } else {
            r = syscall(nr, -1L, -1L, -1L, -1L, -1L, -1L);
        }
        char line[64];
        int n = r < 0 ? snprintf(line, sizeof(line), "errno %d\n", errno) : snprintf(line, sizeof(line), "ok\n");
        return write(1, line, (size_t)n) == n ? 0 : 1;
    }
    if (argc == 10 && !strcmp(argv[1], "spawn")) {
        /* pysandbox-init spawn STATUS_FD LINGER_MS PARAM_FD CGROUP2_FD PROGRAM_PID NOTIFY_FD CONSOLE_FD
         * CREDS (-1: none; CREDS: see drop_privileges): start the program's process first (see
         * above), then go on as below */
        status_fd = atoi(argv[2]);
        creds = atoi(argv[9]);
        linger_ms = atoi(argv[3]);
        int cg = atoi(argv[5]), notify = atoi(argv[7]), cons = atoi(argv[8]);
        child = spawn_program(atoi(argv[4]), cg, (pid_t)atoi(argv[6]), notify, cons, &err_fd, &go_fd);
        if (child < 0) {
            const char *why = strerror(errno);
            send_line(status_fd, "SETUP cannot start the program's process: ", why, strlen(why));
            return 1;
        }
        for (int i = 7; i <= 8; i++) {              /* (the program has them; we need neither) */
            int fd = atoi(argv[i]);
            if (fd > 2)
                close(fd);
        }
        if (cg > 2)
            close(cg);
    } else if (argc == 6) {
        status_fd = atoi(argv[1]);
        err_fd = atoi(argv[2]);
        linger_ms = atoi(argv[4]);
        go_fd = atoi(argv[5]);
        child = (pid_t)atoi(argv[3]);
    } else {
        return 1;
    }

    int dropped = drop_privileges(status_fd, creds);
    if (dropped != 0) {
        if (dropped < 0) {
            const char *why = strerror(errno);
            send_line(status_fd, "SETUP pid 1 could not drop its privileges: ", why, strlen(why));
        }
        kill(child, SIGKILL);
        return 1;
    }
    if (pid1_seccomp() < 0) {
        const char *why = strerror(errno);
        send_line(status_fd, "SETUP pid 1 could not load its seccomp filter: ", why, strlen(why));
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
    char err[4096];
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
            linger(linger_ms);
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
            /* the kernel now kills what is left; our own status is the program's (an engine that
             * reaps PID 1, pysandbox-runtime's conmon, reads it as runc's container process's) */
            return WIFSIGNALED(status) ? 128 + WTERMSIG(status) : WEXITSTATUS(status);
        }
    }
}
