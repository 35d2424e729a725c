/* `pysandbox`'s C front end: `pysandbox run OPTIONS -- CMD` sent to the caller's launch server
 * (`pysandbox server start`) without starting a Python interpreter, exactly as the lean Python client
 * (sandbox/server/lean.py, run()) sends it from sandbox/cli/__init__.py's main().
 *
 * One decision, made once: when argv is `run ... -- ...`, descriptors 0-2 are open, the state
 * directory is computed as audit/paths.py's state_dir() would compute it without doubt, there is no
 * owner record for the Python side to reclaim, the socket passes lean.connect()'s checks (directory
 * and socket lstat'ed: the euid's, no group/other bits, not links; SO_PEERCRED uid == euid), the
 * environment is one Python reads back unchanged, and the message fits, it sends lean.encode()'s
 * bytes with the same four descriptors, forwards the same signals and exits with the code the server
 * sends. In every other case (any other command, no socket, a refused socket, "N" or no answer before
 * "S", any doubt) it execv()s `pysandbox-py` beside this executable with the same argv and
 * environment: Python is the fallback, never a weaker path, and nothing was started before it.
 *
 * The installation path sent (lean.INSTALL: the directory holding the `sandbox` package) is read from
 * `pysandbox.install`, a companion file beside this executable written by sandbox/entry.py (one line,
 * the path; absent, unreadable, not root's or the caller's, writable by others, or not exactly one
 * absolute line: fallback). A wheel's
 * install has none (entry.py is not run there): every run goes to Python.
 *
 * What Python would change in its own environment before reading it: the C-locale coercion of PEP 538
 * (python -IS: LC_ALL unset or empty and the LC_CTYPE locale from the environment "C" → LC_CTYPE set to
 * the first of C.UTF-8, C.utf8, UTF-8 the C library accepts); done here on the message's copy only.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <langinfo.h>
#include <limits.h>
#include <locale.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <unistd.h>

#include "../front_fallback.h"

#define FALLBACK_NAME "pysandbox-py"
#define INSTALL_NAME "pysandbox.install"
#define MAGIC "PSBCLI1"
#define MAX_MSG (1L << 20)          /* larger: Python's (sendmsg fails there alike: fallback) */
#define MAX_ENV 4096
#define DEBUG_VAR "PYSANDBOX_SERVER_DEBUG"
#define GONE "pysandbox: the launch server ended during the run; the sandbox was killed\n"

extern char **environ;
static char **g_argv;
static int g_run = -1;              /* the run's socket, for the signal handler */

/* ---- the fallback ---------------------------------------------------------------------------- */

static void __attribute__((noreturn)) fallback(void)
{
    exec_beside("pysandbox", FALLBACK_NAME, g_argv, 125);
}

/* ---- the state directory (audit/paths.py, state_dir) ----------------------------------------- */

/* an absolute path os.path.abspath() leaves as it is (no empty, "." or ".." component, no trailing
 * slash), or "/" */
static int normal_abs(const char *p)
{
    if (p[0] != '/')
        return 0;
    if (!p[1])
        return 1;
    for (const char *c = p; *c;) {
        c++;                                            /* past the slash */
        const char *e = strchrnul(c, '/');
        size_t len = (size_t)(e - c);
        if (len == 0 || (len == 1 && c[0] == '.') || (len == 2 && c[0] == '.' && c[1] == '.'))
            return 0;
        c = e;
    }
    return 1;
}

/* os.path.join(a, b) into out (size n): 0, or -1 when it does not fit */
static int join(char *out, size_t n, const char *a, const char *b)
{
    size_t la = strlen(a);
    const char *sep = (la && a[la - 1] == '/') ? "" : "/";
    int r = snprintf(out, n, "%s%s%s", a, sep, b);
    return (r < 0 || (size_t)r >= n) ? -1 : 0;
}

static void state_dir(char *out, size_t n)
{
    const char *env = getenv("PYSANDBOX_STATE_DIR");
    if (env && *env) {
        if (!normal_abs(env) || (size_t)snprintf(out, n, "%s", env) >= n)
            fallback();
        return;
    }
    if (geteuid() == 0) {
        snprintf(out, n, "/var/lib/pysandbox");
        return;
    }
    const char *x = getenv("XDG_DATA_HOME");
    char base[PATH_MAX];
    if (x && x[0] == '/') {
        if ((size_t)snprintf(base, sizeof base, "%s", x) >= sizeof base)
            fallback();
    } else {
        const char *h = getenv("HOME");
        if (!h || h[0] != '/')
            fallback();                                 /* Python asks the password database */
        char tmp[PATH_MAX];
        if (join(tmp, sizeof tmp, h, ".local") || join(base, sizeof base, tmp, "share"))
            fallback();
    }
    if (join(out, n, base, "pysandbox"))
        fallback();
}

/* sandbox/cli/__init__.py _owner_records(): a record for the Python side's reclaimer */
static void owner_records(const char *state)
{
    char p[PATH_MAX];
    if (join(p, sizeof p, state, "owners"))
        fallback();
    DIR *d = opendir(p);
    if (!d)
        return;
    struct dirent *e;
    while ((e = readdir(d)))
        if (e->d_name[0] != '.') {
            closedir(d);
            fallback();
        }
    closedir(d);
}

/* ---- the socket (lean.connect) --------------------------------------------------------------- */

static int ours(const char *path, mode_t kind)
{
    struct stat st;
    return lstat(path, &st) == 0 && (st.st_mode & S_IFMT) == kind && st.st_uid == geteuid()
           && !(st.st_mode & 077);
}

static int connect_server(const char *state)
{
    char dir[PATH_MAX], path[PATH_MAX];
    if (join(dir, sizeof dir, state, "server") || join(path, sizeof path, dir, "launch.sock"))
        fallback();
    if (!ours(dir, S_IFDIR) || !ours(path, S_IFSOCK))
        fallback();
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof a.sun_path)
        fallback();                                     /* (Python's connect fails too) */
    strcpy(a.sun_path, path);
    int s = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    if (s < 0 || connect(s, (struct sockaddr *)&a, sizeof a) < 0)
        fallback();
    struct ucred cred;
    socklen_t len = sizeof cred;
    if (getsockopt(s, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0 || len != sizeof cred
        || cred.uid != geteuid())
        fallback();
    return s;
}

/* ---- the message (lean.encode) --------------------------------------------------------------- */

static char *g_msg;
static size_t g_len, g_cap;

static void put(const char *s, size_t n, int sep)
{
    if (g_msg && n + 1 <= g_cap - g_len) {
        if (sep)
            g_msg[g_len] = 0;
        memcpy(g_msg + g_len + (sep ? 1 : 0), s, n);
    }
    g_len += n + (sep ? 1 : 0);
}

static void put_str(const char *s) { put(s, strlen(s), g_len > 0); }

static void put_num(long long v)
{
    char b[32];
    snprintf(b, sizeof b, "%lld", v);
    put_str(b);
}

/* the names of `resource`'s RLIMIT_* constants, sorted (lean.rlimits): RLIMIT_OFILE is NOFILE */
static const int LIMITS[] = {RLIMIT_AS, RLIMIT_CORE, RLIMIT_CPU, RLIMIT_DATA, RLIMIT_FSIZE,
                             RLIMIT_MEMLOCK, RLIMIT_MSGQUEUE, RLIMIT_NICE, RLIMIT_NOFILE, RLIMIT_NPROC,
                             RLIMIT_NOFILE, RLIMIT_RSS, RLIMIT_RTPRIO, RLIMIT_RTTIME, RLIMIT_SIGPENDING,
                             RLIMIT_STACK};
#define NLIMITS (sizeof LIMITS / sizeof LIMITS[0])

struct envs {
    const char *kv[MAX_ENV + 1];
    size_t n;
    char coerced[32];
};

/* the environment as os.environb would hold it: entries without "=" or with an empty or repeated
 * name are a doubt (fallback); PEP 538's coercion applied to the copy */
static void read_env(struct envs *e)
{
    e->n = 0;
    for (char **p = environ; *p; p++) {
        const char *eq = strchr(*p, '=');
        if (!eq || eq == *p || e->n >= MAX_ENV)
            fallback();
        size_t kl = (size_t)(eq - *p);
        for (size_t i = 0; i < e->n; i++)
            if (!strncmp(e->kv[i], *p, kl + 1))
                fallback();
        e->kv[e->n++] = *p;
    }
    const char *all = getenv("LC_ALL");
    if (all && *all)
        return;
    const char *cur = setlocale(LC_CTYPE, "");
    if (!cur)
        cur = setlocale(LC_CTYPE, NULL);
    if (!cur || strcmp(cur, "C"))
        return;
    static const char *const targets[] = {"C.UTF-8", "C.utf8", "UTF-8"};
    for (size_t t = 0; t < 3; t++) {
        if (!setlocale(LC_CTYPE, targets[t]))
            continue;
        const char *cs = nl_langinfo(CODESET);
        if (!cs || !*cs) {
            setlocale(LC_CTYPE, "");
            continue;
        }
        snprintf(e->coerced, sizeof e->coerced, "LC_CTYPE=%s", targets[t]);
        size_t i;
        for (i = 0; i < e->n && strncmp(e->kv[i], "LC_CTYPE=", 9); i++)
            ;
        if (i == e->n) {
            if (e->n >= MAX_ENV)
                fallback();
            e->n++;
        }
        e->kv[i] = e->coerced;
        break;
    }
    setlocale(LC_CTYPE, "C");
}

static const char *env_get(const struct envs *e, const char *name)
{
    size_t l = strlen(name);
    for (size_t i = 0; i < e->n; i++)
        if (!strncmp(e->kv[i], name, l) && e->kv[i][l] == '=')
            return e->kv[i] + l + 1;
    return NULL;
}

static void encode(int argc, int dd, const struct envs *e, mode_t mask, const char *cwd,
                   const char *install)
{
    struct rlimit rl[NLIMITS];
    for (size_t i = 0; i < NLIMITS; i++)
        if (getrlimit(LIMITS[i], &rl[i]) < 0)
            fallback();
    for (int pass = 0; pass < 2; pass++) {          /* the size, then the bytes */
        g_len = 0;
        put_str(MAGIC);
        put_num(mask);
        put_str(cwd);
        put_str(install);
        put_num(dd - 2);                             /* the options: argv[2:dd] */
        for (int i = 2; i < dd; i++)
            put_str(g_argv[i]);
        put_num(argc - dd - 1);                      /* the command: argv[dd+1:] */
        for (int i = dd + 1; i < argc; i++)
            put_str(g_argv[i]);
        put_num((long long)e->n);
        for (size_t i = 0; i < e->n; i++)
            put_str(e->kv[i]);
        put_num(NLIMITS);
        for (size_t i = 0; i < NLIMITS; i++) {
            char b[64];
            snprintf(b, sizeof b, "%lld %lld", (long long)rl[i].rlim_cur, (long long)rl[i].rlim_max);
            put_str(b);
        }
        if (pass == 0) {
            if (g_len > MAX_MSG)
                fallback();
            g_cap = g_len + 1;
            g_msg = malloc(g_cap);
            if (!g_msg)
                fallback();
        }
    }
}

/* ---- the run --------------------------------------------------------------------------------- */

static void forward(int sig)
{
    int saved = errno;
    char m[2] = {'K', (char)sig};
    if (g_run >= 0)
        send(g_run, m, 2, MSG_NOSIGNAL);
    errno = saved;
}

/* the companion file: one absolute path and a newline, regular, not a link, the caller's or root's
 * (as the executable beside it is) and writable by no one else */
static int read_install(char *out, size_t n)
{
    char p[PATH_MAX];
    ssize_t l = readlink("/proc/self/exe", p, sizeof p - sizeof INSTALL_NAME - 1);
    if (l <= 0)
        return -1;
    p[l] = 0;
    char *slash = strrchr(p, '/');
    if (!slash)
        return -1;
    strcpy(slash + 1, INSTALL_NAME);
    int fd = open(p, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0)
        return -1;
    struct stat st;
    ssize_t r = -1;
    if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && (st.st_uid == geteuid() || st.st_uid == 0)
        && !(st.st_mode & 022))
        r = read(fd, out, n);
    close(fd);
    if (r < 2 || (size_t)r >= n || out[0] != '/' || out[r - 1] != '\n')
        return -1;
    out[r - 1] = 0;
    if (memchr(out, '\n', (size_t)r - 1) || memchr(out, 0, (size_t)r - 1))
        return -1;
    return 0;
}

int main(int argc, char **argv)
{
    g_argv = argv;
    if (argc < 2 || strcmp(argv[1], "run"))
        fallback();
    int dd = 0;                                      /* the first "--" after "run" */
    for (int i = 2; i < argc && !dd; i++)
        if (!strcmp(argv[i], "--"))
            dd = i;
    if (!dd)
        fallback();
    for (int fd = 0; fd < 3; fd++)                   /* closed: Python opens /dev/null there */
        if (fcntl(fd, F_GETFD) < 0)
            fallback();

    char state[PATH_MAX], cwd[PATH_MAX], install[PATH_MAX];
    struct envs *e = malloc(sizeof *e);
    if (!e || read_install(install, sizeof install) < 0 || !getcwd(cwd, sizeof cwd))
        fallback();
    read_env(e);
    state_dir(state, sizeof state);
    owner_records(state);
    int ctl = connect_server(state);

    mode_t mask = umask(077);
    umask(mask);
    encode(argc, dd, e, mask, cwd, install);

    int sv[2];
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0)
        fallback();
    int fds[4] = {sv[1], 0, 1, 2};
    union {
        char buf[CMSG_SPACE(sizeof fds)];
        struct cmsghdr align;
    } u;
    memset(&u, 0, sizeof u);
    struct iovec iov = {.iov_base = g_msg, .iov_len = g_len};
    struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.buf,
                        .msg_controllen = sizeof u.buf};
    struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof fds);
    memcpy(CMSG_DATA(c), fds, sizeof fds);
    if (sendmsg(ctl, &mh, MSG_NOSIGNAL) < 0) {
        close(ctl);
        close(sv[0]);
        close(sv[1]);
        fallback();
    }
    close(sv[1]);
    g_run = sv[0];

    static const int FORWARDED[] = {SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2};
    struct sigaction sa = {.sa_handler = forward};
    sigemptyset(&sa.sa_mask);
    for (size_t i = 0; i < sizeof FORWARDED / sizeof FORWARDED[0]; i++)
        sigaction(FORWARDED[i], &sa, NULL);

    int started = 0;
    for (;;) {
        char data[257];
        ssize_t n = recv(g_run, data, 256, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            if (!started) {
                close(g_run);
                close(ctl);
                g_run = -1;
                fallback();                          /* nothing began: the ordinary path */
            }
            if (write(2, GONE, sizeof GONE - 1) < 0) {
            }
            _exit(125);
        }
        data[n] = 0;
        if (n == 1 && data[0] == 'S') {
            started = 1;
        } else if (data[0] == 'N' && !started) {
            const char *dbg = env_get(e, DEBUG_VAR);
            if (dbg && *dbg) {
                static const char pre[] = "pysandbox: launch server: not here: ";
                struct iovec v[3] = {{(void *)pre, sizeof pre - 1}, {data + 1, (size_t)n - 1},
                                     {(void *)"\n", 1}};
                if (writev(2, v, 3) < 0) {
                }
            }
            close(g_run);
            close(ctl);
            g_run = -1;
            fallback();
        } else if (data[0] == 'X') {
            char *end;
            errno = 0;
            long long code = strtoll(data + 1, &end, 10);
            if (n > 1 && end == data + n && !errno && data[1] != ' ')
                _exit((int)code);
            if (!started) {
                close(g_run);
                close(ctl);
                g_run = -1;
                fallback();
            }
            if (write(2, GONE, sizeof GONE - 1) < 0) {
            }
            _exit(125);
        }
    }
}
