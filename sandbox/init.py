"""The mechanisms of PID 1 and of the program's process (the order they run in is
sandbox/launch/sequence.py's: pid1, program, last_steps).

PID 1 is a forked copy of the supervisor (never an exec of a host binary the program could
reach): it is made non-dumpable first, so the program cannot open /proc/1/exe, /proc/1/mem
or its descriptors (CVE-2019-5736 class). It joins its cgroups, builds the root filesystem (in a
thread that takes the sandbox's identity: setup_in_thread) and execs the C program pysandbox-init
(init_image), which forks the program's process — a copy of that small program, not of the Python
launcher — does its last steps and execs it once PID 1 has dropped every capability of its own
(nothing of the sandbox's runs beside a privileged PID 1); it forwards signals to the program,
reaps zombies, and reports the program's wait status to the supervisor over a pipe. Without
pysandbox-init (or with no root in the user namespace), PID 1 forks the program's process as a
Python copy, which builds the root and does the last steps itself (sequence.program,
sequence.last_steps), and PID 1 ends as become_init / supervise.

Messages to the supervisor, one line each:  SETUP <text> | EXEC <errno> <text> | EXIT <status>
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import resource
import select
import signal
import socket
import struct
import termios


from . import _sys, capabilities, idmap, landlock, rootfs
from policies.plan import CAP_INDEX
from policies.subids import holds_range
from . import wire
from .network import loopback             # lo up in PID 1 (the rest of sandbox.network stays off the launch path)

# Everything PID 1 and the program use must be imported here: after pivot_root the
# package's files are no longer reachable.

KMSG_LINGER_MS = 50
# PID 1's environment (pysandbox-init's, /proc/1/environ): the container interface of systemd and
# podman, nothing of the host's (sandbox/interface.py, ENGINE)
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
    (sequence.pid1); it drops PID 1's privileges, releases the program, and does the rest: all small,
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


def report(fd: int, line: str) -> None:
    """One line to the supervisor (a write error: it is gone, nothing to do)."""
    try:
        os.write(fd, (line.replace("\n", " ") + "\n").encode())
    except OSError:
        pass


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
    return not rootless or bool(plan.namespaces.user and holds_range(plan.user.gid_map))


def become_init(status_w: int, prog_err_r: int, go_w: int, pid: int, creds: tuple, linger: bool) -> None:
    """PID 1 after forking the program's Python copy (sequence.pid1): close every descriptor but
    its status pipe, the program's pipes and its last image (PID 1 needs nothing it inherited from
    its supervisor, which may serve many sandboxes), then — when pysandbox-init was built — become
    it as the sandbox's root (keeping its capabilities across the exec; the C program drops the
    rest, then releases the program). Returns only when there is no pysandbox-init to exec."""
    init = _INIT[1]
    _sys.close_all_but((status_w, prog_err_r, go_w, init))
    if init is None:
        return
    try:
        for fd in (status_w, prog_err_r, go_w):
            os.set_inheritable(fd, True)
        signal.pthread_sigmask(signal.SIG_BLOCK, FORWARDED)    # pending until its handlers exist
        set_credentials(creds)
        drop_dac_for_exec()
        os.execve(init, ["pysandbox-init", str(status_w), str(prog_err_r), str(pid),
                         str(KMSG_LINGER_MS if linger else 0), str(go_w)], PID1_ENV)
    except OSError:                              # (e.g. memfds made non-executable): go on here
        signal.pthread_sigmask(signal.SIG_UNBLOCK, FORWARDED)


def forward_signals_to(pid: int) -> None:
    """The Python PID 1: the forwarded signals go to the program's process."""
    _PID1_CHILD[0] = pid
    for sig in FORWARDED:
        signal.signal(sig, _forward_to_child)


def supervise(status_w: int, prog_err_r: int, pid: int, linger: bool) -> None:
    """The Python PID 1 once the program is released: relay its set-up failure, reap every child,
    report the program's wait status. Never returns."""
    err = read_to_end(prog_err_r)
    os.close(prog_err_r)
    if err:
        report(status_w, err.decode(errors="replace") if err.startswith(b"SETUP ")
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
            report(status_w, f"EXIT {status}")
            # the kernel now kills what is left in the pid namespace; our status is the program's
            # (pysandbox-runtime: the engine's conmon reaps PID 1, as runc's container process)
            os._exit(128 + os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status))


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


def _forward_to_child(sig: int, _frame) -> None:
    _forward(_PID1_CHILD[0], sig)


def set_credentials(creds: tuple) -> None:
    gid0, groups, uid0 = creds
    if gid0:
        _sys.setresgid(0, 0, 0)
    if groups:
        _sys.setgroups([])                     # drop the host's supplementary groups
    if uid0:
        _sys.setresuid(0, 0, 0)


def setup_in_thread(ctx, built: bool = False):
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
            identity(plan, ctx.rootless, cgroupns=False)   # (this thread's credentials: raw system calls;
            if not built:                            # the program's process makes the cgroup namespace)
                step = "root filesystem"
                build_root(plan, ctx, ctx.rootless)
            step = "landlock"
            landlock_rules(plan)
        except Exception as e:                       # the report names the step (describe)
            with contextlib.suppress(AttributeError):
                e.pysandbox_step = step
            raise
    _in_thread(build)


def can_inline(creds: tuple) -> bool:
    """Whether PID 1 can do the program's set-up itself (setup_in_thread; decided before anything is
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


def program_spec(ctx, creds: tuple) -> "wire.ProgramSpec":
    """The program's last steps as data (sequence.last_steps in Python, pysandbox-init's spawn
    mode in C: a PROGRAM section of the launch wire format)."""
    plan = ctx.plan
    allowed = setgroups_allowed(plan, ctx.rootless)
    return wire.ProgramSpec(
        new_session=plan.process.new_session, set_ids=bool(plan.namespaces.user or not ctx.rootless),
        setgroups=allowed, nnp=plan.no_new_privs, listener=ctx.notify_sock is not None,
        log=bool(ctx.seccomp_log), cgroupns=plan.namespaces.cgroup, gid0=bool(creds[0]),
        groups0=bool(creds[1]), uid0=bool(creds[2]),
        landlock=_sys.landlock_abi() >= _sys.LANDLOCK_SCOPE_ABI,
        uid=plan.user.uid, gid=plan.user.gid, groups=tuple(plan.user.groups) if allowed else (),
        rlimits=tuple((RLIMIT_IDS[r.name], r.soft, r.hard, r.name) for r in plan.process.rlimits),
        cwd=plan.process.cwd, keep=capabilities.mask(plan.capabilities), bpf=ctx.bpf or b"",
        argv=tuple(ctx.argv), env=dict(ctx.env), ruleset=_RULESET[0],
        ruleset_flags=landlock.restrict_flags() if _RULESET[0] >= 0 else 0, keyring=not ctx.keep_keyring)


def exec_spawning_init(status_w: int, ctx, creds: tuple, linger: bool, cg_v2_fd, program_pid) -> None:
    """PID 1 (after setup_in_thread) becomes pysandbox-init in spawn mode, with the credentials it was
    cloned with and every capability it has as ambient (so that it keeps them across the exec
    without being the namespace's root); it takes the sandbox's root identity itself (`creds`)
    once it has forked the program. Never returns."""
    init = _INIT[1]
    try:
        blob = wire.encode_program(program_spec(ctx, creds))
        pfd = os.memfd_create("pysandbox-program", 0)
        done = 0
        while done < len(blob):
            done += os.write(pfd, blob[done:])
        fd_of = lambda sock: sock.fileno() if sock is not None else -1     # noqa: E731
        notify, console = fd_of(ctx.notify_sock), fd_of(ctx.console)
        cg = cg_v2_fd if cg_v2_fd is not None else -1
        ruleset = _RULESET[0]
        _sys.close_all_but((status_w, init, pfd, cg, notify, console, ruleset))
        for fd in (status_w, pfd, cg, notify, console, ruleset):
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
        report(status_w, f"SETUP cannot start pid 1: {describe(e)}")
    os._exit(1)


def drop_dac_for_exec() -> None:
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


def supervisor_gone(fd: int) -> bool:
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


def describe(e: BaseException, step: str = "") -> str:
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


def identity(plan, rootless: bool, cgroupns: bool = True) -> None:
    """The program's process, first: credentials, hostname, cgroup namespace (rooted at the
    cgroup it was forked into; cgroupns=False: a builder, which is in none of the sandbox's)."""
    set_credentials(credential_steps(plan, rootless))
    if plan.namespaces.uts:
        socket.sethostname(plan.process.hostname)
    if cgroupns and plan.namespaces.cgroup:
        _sys.unshare(_sys.CLONE_NEWCGROUP)


def prebuild_root(plan, rootless: bool) -> None:
    """In a builder process that a launch server's spare PID 1 forks before any run exists
    (sandbox/server/; plans where launcher.prebuildable() holds, id maps already written): what
    the program's process does first — the mapped root's credentials, the hostname, loopback, the
    whole root file system and pivot_root (which moves PID 1's root and cwd too). Raises on failure."""
    identity(plan, rootless, cgroupns=False)
    build_root(plan, None, rootless)


def build_root(plan, ctx, rootless: bool) -> None:
    """Loopback, the root file system, pivot_root, the mounts inside (ctx None: a run's context
    adds nothing to the root, see prebuild_root)."""
    if plan.namespaces.net:
        loopback.bring_up_loopback()
    fds = rootfs.prepare(plan, has_netns=plan.namespaces.net, has_pidns=plan.namespaces.pid,
                         resolv_conf=plan.network.mode != "none", rootless=rootless,
                         **({} if ctx is None else
                            {"hosts_text": ctx.hosts_text, "hosts_file": ctx.hosts_file,
                             "image_root": ctx.image_root, "volume_dirs": ctx.volume_dirs,
                             "bind_srcs": ctx.bind_srcs, "ca_bundle": ctx.ca_bundle,
                             "sys_admin": "SYS_ADMIN" in plan.capabilities}))
    rootfs.pivot(plan)
    rootfs.finish(plan, fds)


def _mapped(idmap, ident: int) -> bool:
    return any(e.inside <= ident < e.inside + e.count for e in idmap)


def console_terminal(sock) -> None:
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


def confine(spec) -> None:
    """The program's process (and `pysandbox exec`'s command) enters a Landlock domain of its own:
    no capability it keeps lets it ptrace, open /proc/1/mem of, process_vm_* or pidfd_getfd PID 1
    (see pid1.c, landlock_confine). Without Landlock scoping the launcher refused a program that
    keeps CAP_SYS_PTRACE (launcher.pid1_reach_check); checked again here."""
    if spec.ruleset >= 0:                # the profile's rules (scoping abstract unix sockets too)
        landlock.enter(spec.ruleset)
    elif spec.landlock:
        _sys.landlock_confine()
    elif spec.keep >> CAP_INDEX["SYS_PTRACE"] & 1:
        raise OSError(38, "no Landlock to keep pid 1 out of the program's reach")


_RULESET = [-1]        # the profile's Landlock ruleset, built after pivot_root (landlock_rules)


def landlock_rules(plan) -> None:
    """After pivot_root, in the program's process or PID 1's set-up thread: the profile's Landlock
    ruleset with its paths as the program will see them (sandbox/landlock.py); the program's
    process enters it in its last steps (confine; pid1.c program())."""
    _RULESET[0] = landlock.build(plan)


def image_fd():
    """PID 1's last image (init_image's memfd) as this process has it, or None."""
    return _INIT[1]


def move_image_fd(fd) -> None:
    """A launch server's PID 1 moved the image's descriptor out of the way of its context's."""
    _INIT[1] = fd
