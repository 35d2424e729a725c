/* The C front ends' one way back to Python (sandbox/cli/front.c, sandbox/runtime/front.c): execv()
 * the Python implementation `name`, the script beside this executable (/proc/self/exe), with the
 * same argv and environment. If that fails: one line on stderr naming `prog`, and exit `code`. */
#ifndef PYSANDBOX_FRONT_FALLBACK_H
#define PYSANDBOX_FRONT_FALLBACK_H

static void __attribute__((noreturn)) exec_beside(const char *prog, const char *name, char **argv, int code)
{
    char self[PATH_MAX];
    size_t room = sizeof self - strlen(name) - 1;
    ssize_t n = readlink("/proc/self/exe", self, room);
    if (n > 0 && (size_t)n < room) {
        self[n] = 0;
        char *slash = strrchr(self, '/');
        if (slash) {
            strcpy(slash + 1, name);
            execv(self, argv);
        }
    } else {
        strcpy(self, "?");
    }
    fprintf(stderr, "%s: cannot run the Python implementation %s: %s\n", prog, self, strerror(errno));
    _exit(code);
}

#endif
