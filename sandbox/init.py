"""PID 1 of the sandbox, and the program's last steps before execve.

PID 1 is a forked copy of the supervisor (never an exec of a host binary the program could
reach): it is made non-dumpable first, so the program cannot open /proc/1/exe, /proc/1/mem
or its descriptors (CVE-2019-5736 class). It joins its cgroups, builds the root filesystem (in a
thread that takes the sandbox's identity: _inline) and execs the C program pysandbox-init
(init_image), which forks the program's process — a copy of that small program, not of the Python
launcher — does its last steps and execs it once PID 1 has dropped every capability of its own
(nothing of the sandbox's runs beside a privileged PID 1); it forwards signals to the program,
reaps zombies, and reports the program's wait status to the supervisor over a pipe. Without
pysandbox-init (or with no root in the user namespace), PID 1 forks the program's process as a
Python copy, which builds the root and does the last steps itself (_program, _exec_program).

Messages to the supervisor, one line each:  SETUP <text> | EXEC <errno> <text> | EXIT <status>
"""
from __future__ import annotations

import contextlib
import fcntl
import gc
import os
import resource
import select
import signal
import socket
import struct
import termios

import prctl

from . import _sys, capabilities, idmap, rootfs
from .launch import wire
from . import netlo                        # lo up in PID 1 (sandbox.network stays off the launch path)
try:                                       # install() needs no libseccomp; imported before pivot_root
    from . import seccomp as _seccomp
except ImportError:                        # pragma: no cover
    _seccomp = None

# Everything PID 1 and the program use must be imported here: after pivot_root the
# package's files are no longer reachable.

KMSG_LINGER_MS = 50
# PID 1's environment (pysandbox-init's, /proc/1/environ): the container interface of systemd and
# podman, nothing of the host's (sandbox/rootfs.py, ENGINE)
PID1_ENV = {"container": "pysandbox"}

# PID 1's last stage as a small static program (sandbox/pid1.c, built by `make`): see init_image()
INIT_BINARY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pysandbox-init")
_INIT: list = [None, None]                  # (the pid that made it, its descriptor)
MFD_EXEC = 0x10                             # (Linux 6.3; os lacks the constant in Python 3.11)


def init_image():
    """The descriptor of a sealed, execute-only memfd copy of pysandbox-init, made once per process
    before PID 1s are cloned from it (they inherit it); None when it was not built (PID 1 then
    stays the Python process it is, as before — nothing of the isolation depends on it).

    PID 1 execs it once the program's process exists and PID 1 is root of the user namespace
    (pid1_core); it drops PID 1's privileges, releases the program, and does the rest: all small,
    and a Python interpreter doing it keeps ~1.5 MiB of copied pages per sandbox (the C program:
    ~0.05). The copy, not the file: PID 1 runs inside the sandbox, and a writable host binary
    behind /proc/1/exe is the runc CVE-2019-5736 class; the memfd is sealed (no write, grow,
    shrink) and mode 0111 — PID 1, which execs it without the two capabilities that read any
    file, cannot read its own image, so the kernel makes it non-dumpable from its first
    instruction (no ptrace, no /proc/1/mem for the program, before it could set that itself)."""
    if _INIT[0] == os.getpid():
        return _INIT[1]
    fd = None
    try:
        src = os.open(INIT_BINARY, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        _INIT[:] = [os.getpid(), None]
        return None
    try:
        size = os.fstat(src).st_size
        flags = os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING
        try:
            fd = os.memfd_create("pysandbox-init", flags | MFD_EXEC)
        except OSError:
            fd = os.memfd_create("pysandbox-init", flags)      # (before 6.3: executable anyway)
        done = 0
        while done < size:
            n = os.sendfile(fd, src, done, size - done)
            if n <= 0:
                raise OSError("short copy")
            done += n
        os.fchmod(fd, 0o111)
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_WRITE | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SHRINK
                    | fcntl.F_SEAL_SEAL)
    except OSError:
        if fd is not None:
            os.close(fd)
        fd = None
    finally:
        os.close(src)
    _INIT[:] = [os.getpid(), fd]
    return fd

FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1,
             signal.SIGUSR2, signal.SIGWINCH, signal.SIGCONT)

RLIMIT_IDS = {n: getattr(resource, "RLIMIT_" + n.upper()) for n in
              ("as", "core", "cpu", "data", "fsize", "locks", "memlock", "msgqueue", "nice", "nofile",
               "nproc", "rss", "rtprio", "rttime", "sigpending", "stack") if hasattr(resource, "RLIMIT_" + n.upper())}


def _send(fd: int, line: str) -> None:
    try:
        os.write(fd, (line.replace("\n", " ") + "\n").encode())
    except OSError:
        pass


def pid1_main(ctx) -> None:
    """Entry of the cloned child (a full context at hand: the CLI's launcher). Never returns."""
    os.close(ctx.go_w)                            # (the supervisor's ends)
    os.close(ctx.status_r)
    plan = ctx.plan
    creds = credential_steps(plan, ctx.rootless)
    pid1_core(ctx.status_w, ctx.go_r, ctx.cg_fds, ctx.cg_v2_fd, ctx.nofile, ctx.stdio,
              plan.namespaces.time, ctx.seccomp_log, creds,
              lambda err_w: _program(ctx, err_w),
              inline=lambda: (ctx, ctx.status_w, ctx.cg_v2_fd, False))


def credential_steps(plan, rootless: bool) -> tuple:
    """(setresgid 0, setgroups [], setresuid 0): how PID 1 and the program become the mapped root
    of the new user namespace (files the set-up creates must be owned by a mapped id;
    capabilities in the namespace are kept); the host's supplementary groups are dropped where
    allowed."""
    ns_user = plan.namespaces.user
    return (bool(ns_user and _mapped(plan.user.gid_map, 0)), setgroups_allowed(plan, rootless),
            bool(ns_user and _mapped(plan.user.uid_map, 0)))


def setgroups_allowed(plan, rootless: bool) -> bool:
    """Whether the sandbox may call setgroups: root's, and a rootless caller's whose gid map holds a
    subordinate range (newgidmap left `setgroups` at `allow`: the caller's supplementary groups
    are dropped then; sandbox/idmap.py). A rootless map of the caller's own gid: `deny`."""
    return not rootless or bool(plan.namespaces.user and idmap.ranged(plan.user.gid_map))


def pid1_core(status_w: int, go_r: int, cg_fds, cg_v2_fd, nofile, stdio, time_ns: bool, linger: bool,
              creds: tuple, program, program_pid: int | None = None, inline=None) -> None:
    """PID 1 proper. Never returns.

    PID 1 joins its cgroups and, once released, either
      * (when can_inline: `inline()` -> (the run's context, status_w and cg_v2_fd where those
        descriptors are now, whether a spare built the root already)) has the root
        filesystem built by a thread of its own as the sandbox's root, and execs pysandbox-init in
        spawn mode, which forks the program's process (straight into the cgroup2 leaf when there is
        one: clone3 CLONE_INTO_CGROUP, which needs the credentials PID 1 was cloned with — hence
        the thread), changes its own credentials, drops its privileges, releases the program
        (which does its last steps in C) and supervises it: one copy of the Python launcher per
        sandbox, whose copied pages, page-table copy and teardown were most of a launch's CPU;
      * or forks the program's process, where `program(err_w)` runs (a Python copy: identity, root
        filesystem — same mount namespace: its pivot_root moves PID 1's root and cwd too — and,
        once PID 1 releases it, "G" on its go pipe, init._exec_program, seccomp and execve), then
        changes its credentials, drops its privileges (in pysandbox-init when it exists),
        releases the program, forwards signals and reaps.
    It reads no plan before `inline`/`program`: everything else comes as arguments. program_pid:
    the pid the program must have in the namespace (2, when a builder process had it before: a
    launch server's spare, sandbox/zygote.py; spawn mode always asks for 2)."""
    try:
        gc.disable()                             # a collection would copy every shared page
        if nofile is not None:                   # the supervisor's own, raised limit is not ours
            resource.setrlimit(resource.RLIMIT_NOFILE, nofile)
        for fd in cg_fds:                        # join our cgroups ourselves, before any fork
            os.write(fd, b"0")                   # (see sandbox/cgroups.py, Cgroup.join_fds)
            os.close(fd)
        for target, fd in enumerate(stdio):
            if fd is not None:
                os.dup2(fd, target, inheritable=True)
        prctl.set_pdeathsig(signal.SIGKILL)      # the sandbox dies with its supervisor
        if os.read(go_r, 1) != b"G":              # supervisor gone or refused: stop here
            os._exit(1)
        os.close(go_r)
        # non-dumpable only now: before, the (rootless) supervisor still had to open our
        # /proc/PID/uid_map, which a non-dumpable process makes root-owned
        prctl.set_dumpable(False)                # no /proc/1/exe, /proc/1/mem for the program
        if time_ns:
            _sys.unshare(_sys.CLONE_NEWTIME)     # applies to the program (our children)
        os.chdir("/")                            # the old root: the program's pivot_root moves it
    except Exception as e:                       # any failure of the set-up: report and stop (exit 125)
        _send(status_w, f"SETUP {_describe(e)}")
        os._exit(1)

    if inline is not None and can_inline(creds):
        try:
            ctx, status_w, cg_v2_fd, built = inline()
            _inline(ctx, built)                  # the program's Python set-up, here
        except Exception as e:                   # noqa: BLE001 - reported as the program's would be
            _send(status_w, f"SETUP {_describe(e)}")
            os._exit(1)
        _exec_spawning_init(status_w, ctx, creds, linger, cg_v2_fd, program_pid)    # never returns
    try:
        prog_err_r, prog_err_w = os.pipe2(os.O_CLOEXEC)
        go_r, go_w = os.pipe2(os.O_CLOEXEC)      # "G": PID 1 holds no privilege any more
        pid = _sys.clone3_fork(0, cg_v2_fd, program_pid) if cg_v2_fd is not None or program_pid \
            else os.fork()
    except Exception as e:
        _send(status_w, f"SETUP cannot start the program's process: {_describe(e)}")
        os._exit(1)
    if pid == 0:
        os.close(prog_err_r)
        os.close(go_w)
        _PROGRAM_GO[0] = go_r
        program(prog_err_w)                      # never returns
        os._exit(125)
    os.close(prog_err_w)
    os.close(go_r)
    _PID1_CHILD[0] = pid
    # PID 1 needs nothing it inherited from its supervisor (which may serve many sandboxes: their
    # pipes, sockets and pidfds) but its status pipe, the program's pipes and its last image
    init = _INIT[1]
    _sys.close_all_but((status_w, prog_err_r, go_w, init))
    if init is not None:                         # the rest, as a small program (init_image)
        try:
            for fd in (status_w, prog_err_r, go_w):
                os.set_inheritable(fd, True)
            signal.pthread_sigmask(signal.SIG_BLOCK, FORWARDED)    # pending until its handlers exist
            _set_credentials(creds)              # the sandbox's root (keeps its capabilities across
            _drop_dac_for_exec()                 # the exec); the C program drops the rest, then
            # releases the program
            os.execve(init, ["pysandbox-init", str(status_w), str(prog_err_r), str(pid),
                             str(KMSG_LINGER_MS if linger else 0), str(go_w)], PID1_ENV)
        except OSError:                          # (e.g. memfds made non-executable): go on here
            signal.pthread_sigmask(signal.SIG_UNBLOCK, FORWARDED)
    for sig in FORWARDED:
        signal.signal(sig, _forward_to_child)
    try:
        _set_credentials(creds)                  # not host root any more: the sandbox's root
        # changing credentials cleared the parent-death signal: arm it again, then make sure the
        # supervisor did not die in between (a pipe with no reader polls as POLLERR)
        prctl.set_pdeathsig(signal.SIGKILL)
        if _supervisor_gone(status_w):
            os.kill(pid, signal.SIGKILL)
            os._exit(1)
        capabilities.drop_all()
        prctl.set_no_new_privs(1)
        _sys.seccomp_load(pid1_filter())         # what this loop uses, nothing else (as pid1.c's)
    except Exception as e:
        _send(status_w, f"SETUP pid 1 could not drop its privileges: {_describe(e)}")
        os.kill(pid, signal.SIGKILL)
        os._exit(1)
    try:
        os.write(go_w, b"G")                     # the program may go on to its seccomp filter and execve
    except OSError:                              # it ended before (a set-up error: its report follows)
        pass
    os.close(go_w)
    err = read_to_end(prog_err_r)
    os.close(prog_err_r)
    if err:
        _send(status_w, err.decode(errors="replace") if err.startswith(b"SETUP ")
              else "EXEC " + err.decode(errors="replace"))
    while True:
        try:
            if linger:
                # audit through /dev/kmsg (no user notification): the supervisor attributes a kernel
                # record to this sandbox by the process's ancestry, which a reaped process no longer
                # has — a dead child stays a zombie for a moment before it is reaped
                info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOWAIT)
                select.poll().poll(KMSG_LINGER_MS)
                wpid, status = os.waitpid(info.si_pid, 0)
            else:
                wpid, status = os.waitpid(-1, 0)
        except ChildProcessError:
            os._exit(1)
        if wpid == pid:
            _send(status_w, f"EXIT {status}")
            os._exit(0)                          # the kernel now kills what is left in the pid namespace


# The Python PID 1's own seccomp filter (without pysandbox-init): pid1.c's list (pid1_filter) and
# what CPython's allocator may ask for while it loops (brk, mmap, munmap, mremap, madvise). Same
# shape: another architecture's convention, an x32 number or any other call kills PID 1.
_PID1_CALLS = {
    "x86_64": (0xC000003E, True, {"read": 0, "write": 1, "close": 3, "poll": 7, "rt_sigaction": 13,
               "rt_sigprocmask": 14, "rt_sigreturn": 15, "exit": 60, "wait4": 61, "kill": 62,
               "restart_syscall": 219, "clock_gettime": 228, "exit_group": 231, "waitid": 247,
               "ppoll": 271, "brk": 12, "mmap": 9, "munmap": 11, "mremap": 25, "madvise": 28}),
    "aarch64": (0xC00000B7, False, {"read": 63, "write": 64, "close": 57, "rt_sigaction": 134,
                "rt_sigprocmask": 135, "rt_sigreturn": 139, "exit": 93, "wait4": 260, "kill": 129,
                "restart_syscall": 128, "clock_gettime": 113, "exit_group": 94, "waitid": 95,
                "ppoll": 73, "brk": 214, "mmap": 222, "munmap": 215, "mremap": 216, "madvise": 233}),
}


def pid1_filter() -> bytes:
    """Classic BPF (struct sock_filter, native order) of the Python PID 1's filter."""
    arch, x32, calls = _PID1_CALLS[os.uname().machine]
    nrs = sorted(calls.values())
    ins = lambda code, jt, jf, k: struct.pack("=HBBI", code, jt, jf, k)     # noqa: E731
    kill, allow = ins(0x06, 0, 0, 0x80000000), ins(0x06, 0, 0, 0x7FFF0000)  # RET KILL_PROCESS / ALLOW
    out = [ins(0x20, 0, 0, 4), ins(0x15, 1, 0, arch), kill, ins(0x20, 0, 0, 0)]  # arch; load nr
    if x32:
        out.append(ins(0x35, len(nrs), 0, 0x40000000))                      # JGE x32 bit -> KILL
    out += [ins(0x15, len(nrs) - i, 0, nr) for i, nr in enumerate(nrs)]     # JEQ nr -> ALLOW
    return b"".join(out + [kill, allow])


_PID1_CHILD = [0]
_PROGRAM_GO: list = [None]                 # in the program's process: PID 1's "G" pipe


def _forward_to_child(sig: int, _frame) -> None:
    _forward(_PID1_CHILD[0], sig)


def _set_credentials(creds: tuple) -> None:
    gid0, groups, uid0 = creds
    if gid0:
        _sys.setresgid(0, 0, 0)
    if groups:
        _sys.setgroups([])                     # drop the host's supplementary groups
    if uid0:
        _sys.setresuid(0, 0, 0)


def _inline(ctx, built: bool = False):
    """In PID 1 (still the Python copy of its launcher), when can_inline: the program's Python
    set-up done here instead of in a forked copy — the sandbox's root identity, hostname,
    loopback, root file system — so that PID 1 can exec pysandbox-init at once, which forks the
    program's process as a copy of itself (small) and does its last steps (`spawn` in pid1.c).
    One copy of the Python launcher per sandbox instead of two: its copied pages, page-table copy
    and teardown were most of a launch's CPU (bench/concurrent.py)."""
    plan = ctx.plan

    def build() -> None:
        step = "user identity and hostname"
        try:
            _identity(plan, ctx.rootless, cgroupns=False)   # (this thread's credentials: raw system calls;
            if not built:                            # the program's process makes the cgroup namespace)
                step = "root filesystem"
                _build_root(plan, ctx, ctx.rootless)
        except Exception as e:                       # the report names the step (_describe)
            with contextlib.suppress(AttributeError):
                e.pysandbox_step = step
            raise
    _in_thread(build)


def can_inline(creds: tuple) -> bool:
    """Whether PID 1 can do the program's set-up itself (_inline; decided before anything is
    changed): pysandbox-init exists and PID 1 will be root of its user namespace (or is host root
    without one). Else the program's process must still be a Python copy: a caller mapped to
    itself keeps no capability across PID 1's exec, and the program's set-up needs them."""
    return _INIT[1] is not None and (creds[2] or os.geteuid() == 0)


def _in_thread(fn) -> None:
    """fn() in a thread of its own, waited for; its exception raised here. Credentials are a
    thread's own: the root file system is built as the sandbox's root (files it creates must be
    owned by a mapped id) while PID 1 keeps the credentials it was cloned with — pysandbox-init
    forks the program's process into its cgroup2 directory with them (clone3 CLONE_INTO_CGROUP:
    the mapped root may not write the host's cgroup.procs), then takes the sandbox's root itself."""
    import _thread
    done = _thread.allocate_lock()
    done.acquire()
    out: list = []

    def body() -> None:
        try:
            fn()
        except BaseException as e:  # noqa: BLE001
            out.append(e)
        finally:
            done.release()
    _thread.start_new_thread(body, ())
    done.acquire()
    if out:
        raise out[0]


def program_params(ctx, creds: tuple) -> bytes:
    """The program's last steps (_exec_program's, less what PID 1 did already) as pysandbox-init's
    spawn mode reads them: a launch message of one PROGRAM section (sandbox/launch/wire.py)."""
    plan = ctx.plan
    flags = ((wire.P_NEW_SESSION if plan.process.new_session else 0)
             | (wire.P_SET_IDS if plan.namespaces.user or not ctx.rootless else 0)
             | (wire.P_SETGROUPS if setgroups_allowed(plan, ctx.rootless) else 0)
             | (wire.P_NNP if plan.no_new_privs else 0)
             | (wire.P_LISTENER if ctx.notify_sock is not None else 0)
             | (wire.P_LOG if ctx.seccomp_log else 0)
             | (wire.P_CGROUPNS if plan.namespaces.cgroup else 0)
             | (wire.P_GID0 if creds[0] else 0) | (wire.P_GROUPS0 if creds[1] else 0)
             | (wire.P_UID0 if creds[2] else 0)
             | (wire.P_LANDLOCK if _sys.landlock_abi() >= _sys.LANDLOCK_SCOPE_ABI else 0))
    groups = list(plan.user.groups) if setgroups_allowed(plan, ctx.rootless) else []
    return wire.encode_program(flags, plan.user.uid, plan.user.gid, groups,
                               [(RLIMIT_IDS[r.name], r.soft, r.hard, r.name) for r in plan.process.rlimits],
                               plan.process.cwd, capabilities.mask(plan.capabilities), ctx.bpf or b"",
                               ctx.argv, ctx.env)


def _exec_spawning_init(status_w: int, ctx, creds: tuple, linger: bool, cg_v2_fd, program_pid) -> None:
    """PID 1 (after _inline) becomes pysandbox-init in spawn mode, with the credentials it was
    cloned with and every capability it has as ambient (so that it keeps them across the exec
    without being the namespace's root); it takes the sandbox's root identity itself (`creds`)
    once it has forked the program. Never returns."""
    init = _INIT[1]
    try:
        blob = program_params(ctx, creds)
        pfd = os.memfd_create("pysandbox-program", 0)
        done = 0
        while done < len(blob):
            done += os.write(pfd, blob[done:])
        fd_of = lambda sock: sock.fileno() if sock is not None else -1     # noqa: E731
        notify, console = fd_of(ctx.notify_sock), fd_of(ctx.console)
        cg = cg_v2_fd if cg_v2_fd is not None else -1
        _sys.close_all_but((status_w, init, pfd, cg, notify, console))
        for fd in (status_w, pfd, cg, notify, console):
            if fd >= 0:
                os.set_inheritable(fd, True)
        signal.pthread_sigmask(signal.SIG_BLOCK, FORWARDED)    # pending until its handlers exist
        permitted = _sys.cap_permitted()        # (every one to the kernel's last, 38-40 too)
        dac = 1 << capabilities.CAP_DAC_OVERRIDE | 1 << capabilities.CAP_DAC_READ_SEARCH
        _sys.capset(permitted, permitted & ~dac, permitted)
        for c in range(capabilities.LAST + 1):
            if permitted >> c & 1:
                _sys.ambient_raise(c)
        cred_bits = (1 if creds[0] else 0) | (2 if creds[1] else 0) | (4 if creds[2] else 0)
        os.execve(init, ["pysandbox-init", "spawn", str(status_w), str(KMSG_LINGER_MS if linger else 0),
                         str(pfd), str(cg), str(program_pid or (2 if ctx.plan.namespaces.pid else 0)), str(notify),
                         str(console), str(cred_bits)], PID1_ENV)
    except Exception as e:                       # noqa: BLE001
        _send(status_w, f"SETUP cannot start pid 1: {_describe(e)}")
    os._exit(1)


def _drop_dac_for_exec() -> None:
    """Before PID 1 execs pysandbox-init as root of the namespace: without the capabilities that
    read any file, PID 1 cannot read the image it execs, and the kernel makes it non-dumpable from
    its first instruction. (No root in the namespace, e.g. a rootless caller mapped to itself:
    the exec clears every capability but the ambient ones — keep CAP_SETPCAP, which the C program
    needs to empty the bounding set too.)"""
    permitted, effective, inheritable = _sys.capget()
    dac = 1 << capabilities.CAP_DAC_OVERRIDE | 1 << capabilities.CAP_DAC_READ_SEARCH
    if os.geteuid() == 0:
        _sys.capset(permitted, effective & ~dac, inheritable)
    else:
        _sys.capset(permitted, effective & ~dac, inheritable | 1 << capabilities.CAP_SETPCAP)
        _sys.ambient_raise(capabilities.CAP_SETPCAP)


def _supervisor_gone(fd: int) -> bool:
    p = select.poll()
    p.register(fd, select.POLLOUT)
    return any(ev & (select.POLLERR | select.POLLHUP) for _, ev in p.poll(0))


REPORT_MAX = 64 * 1024


def read_to_end(fd: int, limit: int = REPORT_MAX) -> bytes:
    """Everything until end of file (a read error ends it too): PID 1's report pipes. At most
    `limit` bytes are kept (PID 1 relays at most 4 KiB of the program's report); the rest is read
    and dropped, so that the writer never blocks and the supervisor's memory stays bounded."""
    out = bytearray()
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:
            break
        if not chunk:
            break
        if len(out) < limit:
            out += chunk[:limit - len(out)]
    return bytes(out)


def _forward(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _describe(e: BaseException, step: str = "") -> str:
    """One line for the supervisor: the step, the path (when the error has one) and the reason."""
    if isinstance(e, OSError) and e.strerror and e.args and len(e.args) > 1:
        why = str(e.args[1]) if isinstance(e.args[1], str) else f"{e.strerror}"
        if e.filename is not None and str(e.filename) not in why:
            what = f"{os.fsdecode(e.filename)}" + (f" -> {os.fsdecode(e.filename2)}" if e.filename2 else "")
            why = f"{what}: {why}"
    else:
        why = str(e) or type(e).__name__
    step = step or getattr(e, "pysandbox_step", "")
    return f"{step}: {why}" if step else why


def _identity(plan, rootless: bool, cgroupns: bool = True) -> None:
    """The program's process, first: credentials, hostname, cgroup namespace (rooted at the
    cgroup it was forked into; cgroupns=False: a builder, which is in none of the sandbox's)."""
    _set_credentials(credential_steps(plan, rootless))
    if plan.namespaces.uts:
        socket.sethostname(plan.process.hostname)
    if cgroupns and plan.namespaces.cgroup:
        _sys.unshare(_sys.CLONE_NEWCGROUP)


def prebuild_root(plan, rootless: bool) -> None:
    """In a builder process that a launch server's spare PID 1 forks before any run exists
    (sandbox/zygote.py; plans where launcher.prebuildable() holds, id maps already written): what
    the program's process does first — the mapped root's credentials, the hostname, loopback, the
    whole root file system and pivot_root (which moves PID 1's root and cwd too). Raises on failure."""
    _identity(plan, rootless, cgroupns=False)
    _build_root(plan, None, rootless)


def _build_root(plan, ctx, rootless: bool) -> None:
    """Loopback, the root file system, pivot_root, the mounts inside (ctx None: a run's context
    adds nothing to the root, see prebuild_root)."""
    if plan.namespaces.net:
        netlo.bring_up_loopback()
    fds = rootfs.prepare(plan, has_netns=plan.namespaces.net, has_pidns=plan.namespaces.pid,
                         resolv_conf=plan.network.mode != "none", rootless=rootless,
                         **({} if ctx is None else
                            {"hosts_text": ctx.hosts_text, "hosts_file": ctx.hosts_file,
                             "image_root": ctx.image_root, "volume_dirs": ctx.volume_dirs,
                             "bind_srcs": ctx.bind_srcs,
                             "sys_admin": "SYS_ADMIN" in plan.capabilities}))
    rootfs.pivot(plan)
    rootfs.finish(plan, fds)


def _program(ctx, err_w: int, built: bool = False) -> None:
    """The program's process: loopback, root filesystem (pivot_root), then _exec_program.
    built: prebuild_root() did all that already for this sandbox (only the identity is left)."""
    plan = ctx.plan
    step = "user identity and hostname"
    try:
        _identity(plan, ctx.rootless)
        prctl.set_pdeathsig(signal.SIGKILL)      # dies with PID 1 (armed after the credential change)
        if not built:
            step = "root filesystem"
            _build_root(plan, ctx, ctx.rootless)
    except Exception as e:                       # reported by PID 1 as a set-up failure (exit 125)
        os.write(err_w, f"SETUP {_describe(e, step)}".replace("\n", " ").encode())
        os._exit(125)
    _exec_program(ctx, err_w)


def _mapped(idmap, ident: int) -> bool:
    return any(e.inside <= ident < e.inside + e.count for e in idmap)


def _console(sock) -> None:
    """New session whose controlling terminal is a fresh pty of the sandbox's own devpts instance;
    the master goes to the supervisor over `sock` (the runc console-socket pattern)."""
    os.setsid()
    master = os.open("/dev/ptmx", os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    fcntl.ioctl(master, 0x40045431, struct.pack("i", 0))      # TIOCSPTLCK: unlockpt
    n = struct.unpack("I", fcntl.ioctl(master, 0x80045430, b"\0" * 4))[0]    # TIOCGPTN
    slave = os.open(f"/dev/pts/{n}", os.O_RDWR)
    fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
    socket.send_fds(sock, [b"T"], [master])
    os.close(master)
    sock.close()
    for target in (0, 1, 2):
        os.dup2(slave, target)
    if slave > 2:
        os.close(slave)


def _confine(caps) -> None:
    """The program's process (and `pysandbox exec`'s) enters a Landlock domain of its own: no
    capability it keeps lets it ptrace, open /proc/1/mem of, process_vm_* or pidfd_getfd PID 1
    (see pid1.c, landlock_confine). Without Landlock scoping the launcher refused a program that
    keeps CAP_SYS_PTRACE (launcher.pid1_reach_check); checked again here."""
    if _sys.landlock_abi() >= _sys.LANDLOCK_SCOPE_ABI:
        _sys.landlock_confine()
    elif "SYS_PTRACE" in caps:
        raise OSError(38, "no Landlock to keep pid 1 out of the program's reach")


def _exec_program(ctx, err_w: int) -> None:
    """In the program's process: session, limits, identity, capabilities, no_new_privs,
    descriptors, seccomp (last), execve. Never returns."""
    plan = ctx.plan
    stage = "prepare"
    try:
        # (PDEATHSIG: armed by _program, after the identity's credential change)
        # the set-up is done: keep only what the last steps use (else the descriptors inherited
        # from a busy supervisor could exceed the program's RLIMIT_NOFILE before it even starts)
        _sys.close_all_but((err_w, _PROGRAM_GO[0], ctx.notify_sock.fileno() if ctx.notify_sock is not None else None,
                        ctx.console.fileno() if ctx.console is not None else None))
        if ctx.console is not None:
            stage = "tty"
            _console(ctx.console)                # run -t: a pty of the sandbox's devpts, our terminal
        elif plan.process.new_session:
            os.setsid()                          # no controlling terminal: no TIOCSTI into ours
        stage = "landlock"                       # out of PID 1's reach (pid1.c, landlock_confine),
        _confine(plan.capabilities)              # while we still hold CAP_SYS_ADMIN in the namespace
        for r in plan.process.rlimits:
            stage = f"ulimit:{r.name}"           # e.g. raising a hard limit needs CAP_SYS_RESOURCE
            resource.setrlimit(RLIMIT_IDS[r.name],
                               (resource.RLIM_INFINITY if r.soft == -1 else r.soft,
                                resource.RLIM_INFINITY if r.hard == -1 else r.hard))
        stage = "cwd"
        os.chdir(plan.process.cwd)
        # the kernel's order: bounding set (needs CAP_SETPCAP, gone from the effective set at a
        # change to a non-zero uid) -> keep caps across the uid change -> groups, gid, uid ->
        # permitted/effective/inheritable -> ambient -> no_new_privs -> seccomp (pid1.c: the same)
        stage = "capabilities"
        keep = capabilities.mask(plan.capabilities)
        capabilities.drop_bounding(keep)
        stage = "identity"
        uid, gid = plan.user.uid, plan.user.gid
        if plan.namespaces.user or not ctx.rootless:
            if setgroups_allowed(plan, ctx.rootless):
                _sys.setgroups(list(plan.user.groups))
            if uid != 0:
                _sys.set_keepcaps(True)
            _sys.setresgid(gid, gid, gid)
            _sys.setresuid(uid, uid, uid)
            prctl.set_pdeathsig(signal.SIGKILL)  # cleared by the credential change
        stage = "capabilities"
        # without no_new_privs the filter is loaded with CAP_SYS_ADMIN in the namespace (as runc
        # does), which execve then drops (in neither the bounding nor the inheritable set)
        capabilities.set_sets(keep, uid_inside=uid,
                              seccomp_cap=bool(ctx.bpf) and not plan.no_new_privs)
        if plan.no_new_privs:
            prctl.set_no_new_privs(1)
        _sys.close_range_cloexec(3)              # no descriptor of ours survives execve
        os.set_inheritable(err_w, False)
        if _PROGRAM_GO[0] is not None:           # nothing of the sandbox's runs beside a privileged PID 1
            stage = "pid 1"
            if os.read(_PROGRAM_GO[0], 1) != b"G":
                os._exit(125)                    # PID 1 failed (it reports why) or is gone
            os.close(_PROGRAM_GO[0])
        _sys.default_signals()
        stage = "seccomp"
        if ctx.bpf:
            listener = _seccomp.install(ctx.bpf, listener=ctx.notify_sock is not None,
                                       log=ctx.seccomp_log)
            if ctx.notify_sock is not None and listener:
                socket.send_fds(ctx.notify_sock, [b"L"], [listener])
                os.close(listener)
        stage = "exec"
        os.execvpe(ctx.argv[0], list(ctx.argv), ctx.env)
    except OSError as e:
        code = e.errno or 0
        if stage == "landlock":                  # a control that cannot be enforced: exit 125
            os.write(err_w, f"SETUP landlock (keeps pid 1 out of the program's reach): {_describe(e)}".encode())
            os._exit(125)
        os.write(err_w, f"{code} {stage} {ctx.argv[0] if stage == 'exec' else _describe(e)}".encode())
        os._exit(127 if code == 2 and stage == "exec" else 126)
    except Exception as e:                       # pragma: no cover - reported, never a traceback
        os.write(err_w, f"0 {stage} {_describe(e)}".encode())
        os._exit(126)
