/* pysandbox-runtime's C front end: the lifecycle commands engines call many times per container
 * (`state`, `start`, `kill`, `delete` of a stopped container) without starting a Python interpreter.
 *
 * One decision, made once: when the command, its flags and the container's state directory are all
 * what this program fully understands, it does the work; in every other case (other commands, other
 * flags, any parse doubt, a missing or unexpected file, every error message) it execv()s the Python
 * implementation, `pysandbox-runtime-py` beside this executable, with the same argv. Python is the
 * fallback, never a weaker path: the front end refuses more than Python does, never less.
 *
 * What it reads: state.front, the companion the Python side writes beside state.json on every save
 * (sandbox/runtime/state.py, save() and front_text()): state.json stays the one source of truth; the
 * companion is derived from it, names the state.json it was derived from (inode, size, mtime) and is
 * ignored (fallback) unless that state.json is still the one in place. It carries the recorded status,
 * the process whose liveness (pid + start time, not a zombie) decides "stopped", the processes `kill`
 * signals in order, whether `delete` needs Python (poststop hooks, cgroups to remove), and the OCI
 * state JSON pre-rendered by Python as recorded and as stopped, so `state` prints Python's exact bytes.
 *
 * Bounds and checks (as state.py's): --root a directory of our uid writable by no one else, opened
 * without following links; the id as state.py's ID_RE; the container directory and both files opened
 * or examined without following links, ours, regular, state.json at most 1 MiB, state.front at most
 * 4 MiB; a process is signalled only through a pidfd taken between two checks of its start time.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#include "../front_fallback.h"

#define MAX_STATE (1L << 20)
#define MAX_FRONT (4L << 20)
#define FALLBACK_NAME "pysandbox-runtime-py"
#define MAGIC "pysandbox-runtime-front 1\n"

static char **g_argv;
static const char *g_log;
static int g_log_json;

/* ---- the fallback ---------------------------------------------------------------------------- */

static void __attribute__((noreturn)) fallback(void)
{
    exec_beside("pysandbox-runtime", FALLBACK_NAME, g_argv, 1);
}

/* ---- errors this program reports itself (only after it acted: `start` once released) --------- */

static void log_error(const char *msg)
{
    fprintf(stderr, "pysandbox-runtime: %s\n", msg);
    if (!g_log)
        return;
    FILE *f = fopen(g_log, "ae");
    if (!f)
        return;
    if (g_log_json) {
        char t[32];
        time_t now = time(NULL);
        struct tm tm;
        strftime(t, sizeof t, "%Y-%m-%dT%H:%M:%SZ", gmtime_r(&now, &tm));
        fputs("{\"level\": \"error\", \"msg\": \"", f);
        for (const unsigned char *p = (const unsigned char *)msg; *p; p++) {
            if (*p == '"' || *p == '\\')
                fprintf(f, "\\%c", *p);
            else if (*p < 0x20 || *p >= 0x7f)
                fprintf(f, "\\u%04x", *p);
            else
                fputc(*p, f);
        }
        fprintf(f, "\", \"time\": \"%s\"}\n", t);
    } else {
        fprintf(f, "error: %s\n", msg);
    }
    fclose(f);
}

/* ---- process identity (sandbox/procid.py) ------------------------------------------------------ */

/* The start time of pid (field 22 of /proc/PID/stat), -1 when there is no such process; *state gets
 * field 3. */
static long long start_time(long pid, char *state)
{
    char path[64], buf[2048];
    if (pid <= 0 || pid > INT_MAX)
        return -1;
    snprintf(path, sizeof path, "/proc/%ld/stat", pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return -1;
    buf[n] = 0;
    char *p = strrchr(buf, ')');
    if (!p || p[1] != ' ')
        return -1;
    p += 2;
    if (state)
        *state = *p;
    for (int field = 0; field < 19; field++) {     /* fields[19] after the command name */
        p = strchr(p, ' ');
        if (!p)
            return -1;
        p++;
    }
    char *end;
    errno = 0;
    long long v = strtoll(p, &end, 10);
    if (errno || end == p || (*end != ' ' && *end != '\n' && *end != 0))
        return -1;
    return v;
}

/* procid.running(pid, start): live, not a zombie, the same start time */
static int running(long pid, long long start)
{
    char s = 0;
    return pid > 0 && start_time(pid, &s) == start && s != 'Z' && s != 'X';
}

/* procid.open_pidfd(pid, start): -1 when gone */
static int open_pidfd(long pid, long long start)
{
    if (pid <= 0 || start_time(pid, NULL) != start)
        return -1;
    int fd = (int)syscall(SYS_pidfd_open, (pid_t)pid, 0);
    if (fd < 0)
        return -1;
    if (start_time(pid, NULL) != start) {
        close(fd);
        return -1;
    }
    return fd;
}

/* ---- the state directory ---------------------------------------------------------------------- */

struct front {
    char status[16];
    long alive_pid;
    long long alive_start;
    long kill_pid[2];
    long long kill_start[2];
    int fast_delete;
    const char *as_is, *stopped;     /* the OCI state JSON, as recorded / as stopped (with "\n") */
    size_t as_is_len, stopped_len;
    char *buf;
};

static int valid_id(const char *id)
{
    size_t n = strlen(id);
    if (n < 1 || n > 128)
        return 0;
    for (size_t i = 0; i < n; i++) {
        char c = id[i];
        int alnum = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
        if (!alnum && (i == 0 || !strchr("_.+-", c)))
            return 0;
    }
    return 1;
}

/* the next line of *p (without its "\n"), NULL when there is none */
static char *next_line(char **p, char *end)
{
    char *s = *p, *nl = memchr(s, '\n', (size_t)(end - s));
    if (!nl)
        return NULL;
    *nl = 0;
    *p = nl + 1;
    return s;
}

/* "KEY INT INT" -> a, b; 0 when the line is anything else */
static int two_ints(const char *line, const char *key, long *a, long long *b)
{
    size_t k = strlen(key);
    if (strncmp(line, key, k) || line[k] != ' ')
        return 0;
    char *e1, *e2;
    errno = 0;
    *a = strtol(line + k + 1, &e1, 10);
    if (errno || e1 == line + k + 1 || *e1 != ' ')
        return 0;
    *b = strtoll(e1 + 1, &e2, 10);
    return !errno && e2 != e1 + 1 && *e2 == 0 && *a >= 0;
}

/* a text block: "KEY LEN\n" then LEN bytes */
static int block(char **p, char *end, const char *key, const char **out, size_t *len)
{
    char *line = next_line(p, end);
    size_t k = strlen(key);
    if (!line || strncmp(line, key, k) || line[k] != ' ')
        return 0;
    char *e;
    errno = 0;
    unsigned long long n = strtoull(line + k + 1, &e, 10);
    if (errno || *e || e == line + k + 1 || n > (unsigned long long)(end - *p))
        return 0;
    *out = *p;
    *len = (size_t)n;
    *p += n;
    return 1;
}

/* Open --root and the container's directory; 0 and *dirfd set, or -1 (anything unexpected). */
static int open_dirs(const char *root, const char *id, int *rootfd, int *dirfd)
{
    struct stat st;
    *rootfd = open(root, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (*rootfd < 0)
        return -1;
    if (fstat(*rootfd, &st) || st.st_uid != geteuid() || (st.st_mode & 022))
        return -1;
    *dirfd = openat(*rootfd, id, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (*dirfd < 0)
        return -1;
    if (fstat(*dirfd, &st) || st.st_uid != geteuid())
        return -1;
    return 0;
}

/* Read and check state.front against the state.json in place. 0, or -1 with errno (ENOENT: the
 * container's directory or state.json is gone). */
static int read_front(int dirfd, const char *id, struct front *f)
{
    struct stat js, fs;
    memset(f, 0, sizeof *f);
    if (fstatat(dirfd, "state.json", &js, AT_SYMLINK_NOFOLLOW))
        return -1;
    if (!S_ISREG(js.st_mode) || js.st_uid != geteuid() || js.st_size > MAX_STATE)
        return errno = EINVAL, -1;
    int fd = openat(dirfd, "state.front", O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0)
        return errno = EINVAL, -1;
    if (fstat(fd, &fs) || !S_ISREG(fs.st_mode) || fs.st_uid != geteuid() || fs.st_size > MAX_FRONT) {
        close(fd);
        return errno = EINVAL, -1;
    }
    size_t cap = (size_t)fs.st_size + 1, len = 0;
    f->buf = malloc(cap + 1);
    if (!f->buf) {
        close(fd);
        return errno = ENOMEM, -1;
    }
    for (;;) {                                      /* at most st_size + 1: a grown file is refused */
        ssize_t n = read(fd, f->buf + len, cap - len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            close(fd);
            return errno = EINVAL, -1;
        }
        if (n == 0)
            break;
        len += (size_t)n;
        if (len == cap) {
            close(fd);
            return errno = EINVAL, -1;
        }
    }
    close(fd);
    f->buf[len] = 0;
    char *p = f->buf, *end = f->buf + len, *line;
    if (len < sizeof MAGIC - 1 || memcmp(p, MAGIC, sizeof MAGIC - 1))
        return errno = EINVAL, -1;
    p += sizeof MAGIC - 1;
    /* id */
    line = next_line(&p, end);
    if (!line || strncmp(line, "id ", 3) || strcmp(line + 3, id))
        return errno = EINVAL, -1;
    /* the state.json it was made from */
    unsigned long long ino, size, mtime;
    line = next_line(&p, end);
    if (!line || sscanf(line, "json %llu %llu %llu", &ino, &size, &mtime) != 3)
        return errno = EINVAL, -1;
    if (ino != (unsigned long long)js.st_ino || size != (unsigned long long)js.st_size ||
        mtime != (unsigned long long)js.st_mtim.tv_sec * 1000000000ULL + (unsigned long long)js.st_mtim.tv_nsec)
        return errno = EINVAL, -1;
    line = next_line(&p, end);
    if (!line || strncmp(line, "status ", 7) || strlen(line + 7) >= sizeof f->status)
        return errno = EINVAL, -1;
    strcpy(f->status, line + 7);
    if (strcmp(f->status, "creating") && strcmp(f->status, "created") && strcmp(f->status, "running") &&
        strcmp(f->status, "stopped"))
        return errno = EINVAL, -1;
    line = next_line(&p, end);
    if (!line || !two_ints(line, "alive", &f->alive_pid, &f->alive_start))
        return errno = EINVAL, -1;
    for (int i = 0; i < 2; i++) {
        line = next_line(&p, end);
        if (!line || !two_ints(line, "kill", &f->kill_pid[i], &f->kill_start[i]))
            return errno = EINVAL, -1;
    }
    line = next_line(&p, end);
    if (!line || (strcmp(line, "fast-delete 0") && strcmp(line, "fast-delete 1")))
        return errno = EINVAL, -1;
    f->fast_delete = line[12] == '1';
    if (!block(&p, end, "as-is", &f->as_is, &f->as_is_len) || !block(&p, end, "stopped", &f->stopped, &f->stopped_len))
        return errno = EINVAL, -1;
    if ((size_t)(end - p) != 4 || memcmp(p, "end\n", 4))
        return errno = EINVAL, -1;
    return 0;
}

/* state.status(): the recorded status, "stopped" when the container's process is gone */
static const char *status_now(const struct front *f)
{
    if ((!strcmp(f->status, "created") || !strcmp(f->status, "running")) && !running(f->alive_pid, f->alive_start))
        return "stopped";
    return f->status;
}

/* ---- the commands ----------------------------------------------------------------------------- */

static int write_all(int fd, const char *s, size_t n)
{
    while (n) {
        ssize_t w = write(fd, s, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        s += w;
        n -= (size_t)w;
    }
    return 0;
}

static int cmd_state(int dirfd, const char *id)
{
    struct front f;
    if (read_front(dirfd, id, &f))
        fallback();
    const char *s = status_now(&f);
    int as_is = !strcmp(s, f.status);
    if (write_all(1, as_is ? f.as_is : f.stopped, as_is ? f.as_is_len : f.stopped_len))
        return 1;
    return 0;
}

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static int cmd_start(int dirfd, const char *id)
{
    struct front f;
    char msg[256];
    if (read_front(dirfd, id, &f) || strcmp(status_now(&f), "created"))
        fallback();                                 /* Python says what the status is */
    free(f.buf);
    int fd = openat(dirfd, "exec.fifo", O_WRONLY | O_NONBLOCK | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0)
        fallback();                                 /* not waiting: Python says so */
    ssize_t w;
    do
        w = write(fd, "G", 1);
    while (w < 0 && errno == EINTR);
    close(fd);
    if (w != 1) {
        snprintf(msg, sizeof msg, "start: container %s: the release could not be written (%s)", id, strerror(errno));
        log_error(msg);
        return 1;
    }
    double deadline = now_s() + 120;               /* poststart hooks run before start returns */
    while (now_s() < deadline) {
        if (read_front(dirfd, id, &f) == 0) {
            int done = strcmp(f.status, "created") || !strcmp(status_now(&f), "stopped");
            free(f.buf);
            if (done)
                return 0;
        } else {
            int e = errno;
            free(f.buf);
            if (e == ENOENT) {
                snprintf(msg, sizeof msg, "container %s does not exist", id);
                log_error(msg);
                return 1;
            }
        }                                           /* else: between two saves, look again */
        sleep_ms(2);
    }
    snprintf(msg, sizeof msg, "start: container %s did not report running", id);
    log_error(msg);
    return 1;
}

static const struct { const char *name; int sig; } SIGNALS[] = {
    {"HUP", SIGHUP}, {"INT", SIGINT}, {"QUIT", SIGQUIT}, {"ILL", SIGILL}, {"TRAP", SIGTRAP},
    {"ABRT", SIGABRT}, {"IOT", SIGIOT}, {"BUS", SIGBUS}, {"FPE", SIGFPE}, {"KILL", SIGKILL},
    {"USR1", SIGUSR1}, {"SEGV", SIGSEGV}, {"USR2", SIGUSR2}, {"PIPE", SIGPIPE}, {"ALRM", SIGALRM},
    {"TERM", SIGTERM}, {"STKFLT", SIGSTKFLT}, {"CHLD", SIGCHLD}, {"CLD", SIGCHLD}, {"CONT", SIGCONT},
    {"STOP", SIGSTOP}, {"TSTP", SIGTSTP}, {"TTIN", SIGTTIN}, {"TTOU", SIGTTOU}, {"URG", SIGURG},
    {"XCPU", SIGXCPU}, {"XFSZ", SIGXFSZ}, {"VTALRM", SIGVTALRM}, {"PROF", SIGPROF}, {"WINCH", SIGWINCH},
    {"IO", SIGIO}, {"POLL", SIGPOLL}, {"PWR", SIGPWR}, {"SYS", SIGSYS},
};

/* cli.parse_signal for what it accepts; 0 for anything else (Python then says why) */
static int parse_signal(const char *s)
{
    size_t n = strlen(s);
    if (n >= 1 && n <= 3 && strspn(s, "0123456789") == n) {
        int v = atoi(s);
        return v >= 1 && v <= 64 ? v : 0;
    }
    char up[16];
    if (n >= sizeof up)
        return 0;
    for (size_t i = 0; i <= n; i++)
        up[i] = (s[i] >= 'a' && s[i] <= 'z') ? (char)(s[i] - 32) : s[i];
    const char *name = strncmp(up, "SIG", 3) ? up : up + 3;
    for (size_t i = 0; i < sizeof SIGNALS / sizeof *SIGNALS; i++)
        if (!strcmp(name, SIGNALS[i].name))
            return SIGNALS[i].sig;
    return 0;
}

static int cmd_kill(int dirfd, const char *id, int sig)
{
    struct front f;
    if (read_front(dirfd, id, &f))
        fallback();
    const char *s = status_now(&f);
    if (strcmp(s, "created") && strcmp(s, "running"))
        fallback();
    for (int i = 0; i < 2; i++) {                  /* the first of the recorded processes still there */
        int pfd = open_pidfd(f.kill_pid[i], f.kill_start[i]);
        if (pfd < 0)
            continue;
        long r = syscall(SYS_pidfd_send_signal, pfd, sig, NULL, 0);
        close(pfd);
        if (r)
            fallback();                             /* not delivered: Python tries and says why */
        return 0;
    }
    fallback();
}

static int cmd_delete(int rootfd, int dirfd, const char *id)
{
    struct front f;
    if (read_front(dirfd, id, &f) || strcmp(f.status, "stopped") || !f.fast_delete)
        fallback();                                 /* hooks, cgroups, a monitor that did not finish */
    double deadline = now_s() + 10;                 /* the monitor cleans up as it ends */
    while (running(f.alive_pid, f.alive_start) && now_s() < deadline)
        sleep_ms(5);
    unlinkat(dirfd, "exec.fifo", 0);
    unlinkat(dirfd, "state.json", 0);
    unlinkat(dirfd, "state.front", 0);
    unlinkat(rootfd, id, AT_REMOVEDIR);
    return 0;
}

/* ---- the command line ------------------------------------------------------------------------- */

/* an absolute path with no ".", ".." or empty component (what os.path.abspath leaves unchanged) */
static int normal_path(const char *p)
{
    if (p[0] != '/')
        return 0;
    if (!strcmp(p, "/"))
        return 1;
    for (const char *c = p + 1;;) {
        const char *e = strchr(c, '/');
        size_t n = e ? (size_t)(e - c) : strlen(c);
        if (n == 0 || (n == 1 && c[0] == '.') || (n == 2 && c[0] == '.' && c[1] == '.'))
            return 0;
        if (!e)
            return 1;
        c = e + 1;
    }
}

/* "--NAME VALUE" or "--NAME=VALUE" at argv[*i]; the value, or NULL when argv[*i] is not --NAME */
static const char *opt_value(int argc, char **argv, int *i, const char *name)
{
    const char *a = argv[*i];
    size_t n = strlen(name);
    if (strncmp(a, "--", 2) || strncmp(a + 2, name, n))
        return NULL;
    if (a[2 + n] == '=')
        return a + 3 + n;
    if (a[2 + n] || *i + 1 >= argc)
        return NULL;
    return argv[++*i];
}

int main(int argc, char **argv)
{
    static char root_buf[PATH_MAX];
    const char *root = NULL;
    int i = 1;
    g_argv = argv;
    for (; i < argc && argv[i][0] == '-'; i++) {
        const char *v;
        if (!strcmp(argv[i], "--debug"))
            continue;
        if ((v = opt_value(argc, argv, &i, "root"))) {
            if (!*v)
                fallback();
            if (v[0] == '/') {
                root = v;
            } else {
                char cwd[PATH_MAX];
                if (!getcwd(cwd, sizeof cwd) ||
                    snprintf(root_buf, sizeof root_buf, "%s/%s", strcmp(cwd, "/") ? cwd : "", v) >= (int)sizeof root_buf)
                    fallback();
                root = root_buf;
            }
        } else if ((v = opt_value(argc, argv, &i, "log-format"))) {
            if (strcmp(v, "text") && strcmp(v, "json"))
                fallback();
            g_log_json = !strcmp(v, "json");
        } else if ((v = opt_value(argc, argv, &i, "log"))) {
            g_log = v;
        } else if ((v = opt_value(argc, argv, &i, "rootless")) || (v = opt_value(argc, argv, &i, "criu"))) {
            continue;
        } else if ((v = opt_value(argc, argv, &i, "cgroup-manager"))) {
            if (strcmp(v, "cgroupfs"))
                fallback();
        } else {
            fallback();
        }
    }
    if (i >= argc)
        fallback();
    const char *cmd = argv[i++];
    const char *id = NULL, *sigarg = NULL;
    int sig = SIGTERM;
    if (!strcmp(cmd, "state") || !strcmp(cmd, "start")) {
        if (argc - i != 1 || argv[i][0] == '-')
            fallback();
        id = argv[i];
    } else if (!strcmp(cmd, "kill")) {
        for (; i < argc; i++) {
            if (argv[i][0] == '-')                  /* --all (every process of the cgroups): Python */
                fallback();
            if (!id)
                id = argv[i];
            else if (!sigarg)
                sigarg = argv[i];
            else
                fallback();
        }
        if (!id || (sigarg && !(sig = parse_signal(sigarg))))
            fallback();
    } else if (!strcmp(cmd, "delete")) {
        for (; i < argc; i++) {
            if (!strcmp(argv[i], "--force") || !strcmp(argv[i], "-f"))
                continue;                           /* a stopped container: deleted either way */
            if (argv[i][0] == '-' || id)
                fallback();
            id = argv[i];
        }
        if (!id)
            fallback();
    } else {
        fallback();
    }
    if (!valid_id(id))
        fallback();
    if (!root) {
        if (geteuid() == 0) {
            root = "/run/pysandbox-runtime";
        } else {
            const char *x = getenv("XDG_RUNTIME_DIR");
            int n = (x && *x) ? snprintf(root_buf, sizeof root_buf, "%s/pysandbox-runtime", x)
                              : snprintf(root_buf, sizeof root_buf, "/tmp/pysandbox-runtime-%u/pysandbox-runtime",
                                         (unsigned)getuid());
            if (n >= (int)sizeof root_buf)
                fallback();
            root = root_buf;
        }
    }
    if (!normal_path(root))
        fallback();
    int rootfd, dirfd;
    if (open_dirs(root, id, &rootfd, &dirfd))
        fallback();
    if (!strcmp(cmd, "state"))
        return cmd_state(dirfd, id);
    if (!strcmp(cmd, "start"))
        return cmd_start(dirfd, id);
    if (!strcmp(cmd, "kill"))
        return cmd_kill(dirfd, id, sig);
    return cmd_delete(rootfd, dirfd, id);
}
