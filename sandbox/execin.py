"""`pysandbox exec NAME -- CMD`: run a command inside a running sandbox.

Order (everything imported before the first setns: after joining the mount namespace the
package's files are not reachable):

 1. Read the state; check PID 1 and the program are the processes recorded (pid + start time).
 2. Make ourselves non-dumpable (runc CVE-2016-9962 class: no process of the sandbox may ptrace us
    or open /proc/PID/{fd,mem,exe} while we still hold host privileges or host descriptors) and
    mark every descriptor above 2 close-on-exec.
 3. Pin PID 1 with a pidfd (then check its start time: the pidfd is the recorded process), open
    the namespace files of the sandbox (PID 1's where this caller may read them, else the
    program's: rootless, PID 1 may be non-dumpable) and check each one's device and inode
    against the identity the supervisor recorded from PID 1 before releasing it (so before any
    code of the program's ran: sandbox/detached.py), then check through the pidfd that PID 1
    is still alive — it held those namespaces all the while, so their inode numbers were not
    reused. A sandbox that made itself new namespaces, or a pid reused, cannot redirect us.
 4. Join the sandbox's cgroups (host paths recorded by the supervisor, so before the mount
    namespace), then setns: user first (from here on we hold no privilege outside the sandbox),
    mnt, pid (applies to our children), uts, ipc, net; then make our own cgroup namespace
    (rooted at the sandbox's cgroups, as the program's was) and time namespace (no offsets, as
    the sandbox's): those the program could have replaced are never taken from it.
 5. fork: the child is in the sandbox's pid namespace. It does what the launcher does for the
    program: setsid (or takes the pty as controlling terminal), rlimits, cwd, uid/gid (no
    supplementary groups but the plan's), a Landlock domain of its own (no capability reaches PID 1),
    capabilities (all five sets), no_new_privs, close
    descriptors, seccomp (the sandbox's own filter, kept in the state directory, plain errno/kill
    actions), execve. Dumpability comes back only with execve, after every privilege is gone.
 6. The parent (in the sandbox's namespaces but not its pid namespace, invisible from inside)
    forwards signals (and, with -t, relays the terminal and window size) and exits with the
    command's status (128+N on signal N).

Exit codes: the command's; 125 cannot join the sandbox; 126 cannot execute; 127 not found.
"""
from __future__ import annotations

import dataclasses
import errno
import fcntl
import os
import select
import signal
import socket
import stat
import struct
import sys
import termios
import tty as _tty

import prctl

from policies.plan import IdMapEntry
from policies.subids import holds_range

from . import _sys, capabilities, landlock, procid, recorded
from .notify import listener  # noqa: F401 - before setns: sequence.last_steps hands it the command's listener
from .init import RLIMIT_IDS
from .launch import sequence
from .store import state
from .store.state import StateError
from .wire import ProgramSpec

NS_ORDER = (("user", _sys.CLONE_NEWUSER), ("mnt", _sys.CLONE_NEWNS), ("pid", _sys.CLONE_NEWPID),
            ("uts", _sys.CLONE_NEWUTS), ("ipc", _sys.CLONE_NEWIPC), ("net", _sys.CLONE_NEWNET),
            ("cgroup", _sys.CLONE_NEWCGROUP), ("time", _sys.CLONE_NEWTIME))
UNSHARED = ("cgroup", "time")                # made by exec itself (see exec_in), never joined
PLAN_NS = {"user": "user", "mnt": "mount", "pid": "pid", "uts": "uts", "ipc": "ipc", "net": "net",
           "cgroup": "cgroup", "time": "time"}
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)

EXIT_SETUP = 125


class ExecError(StateError):
    def __init__(self, message: str):
        super().__init__(message, code=EXIT_SETUP)


def _env(plan: dict, extra) -> dict:
    proc = plan["process"]
    env = {}
    for name in proc.get("env_allow") or ():
        if name.endswith("*"):
            env.update({k: v for k, v in os.environ.items() if k.startswith(name[:-1])})
        elif name in os.environ:
            env[name] = os.environ[name]
    for s in (plan.get("network") or {}).get("secrets") or ():   # a secret's env: source stays outside,
        if s.get("source", "").startswith("env:"):              # as in the program's (launcher.intercept_setup)
            env.pop(s["source"][4:], None)
    env["container"] = "pysandbox"      # as the program's (launcher.build_env)
    env.update({k: v for k, v in proc.get("env_set") or ()})
    env.setdefault("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    for item in extra or ():
        k, eq, v = item.partition("=")
        if eq:
            env[k] = v
        elif k in os.environ:
            env[k] = os.environ[k]
    return env


def exec_in(ref: str, argv: list, *, tty: bool = False, env=(), workdir=None) -> int:
    name, st, status = recorded.load(ref)
    if status == "paused":                       # joining a frozen cgroup would hang (Docker refuses too)
        raise StateError(f"{name} is paused: unpause it before exec (pysandbox unpause {name})")
    if status != "running":
        raise StateError(f"{name} is not running ({status})")
    plan = st["plan"]
    rootless = os.geteuid() != 0
    if bool(st.get("rootless")) != rootless:
        raise ExecError(f"{name}: started by another user")
    pid1, prog = st.get("pid1"), st.get("program_pid")
    if not procid.same_process(pid1, st.get("pid1_start")):
        raise ExecError(f"{name}: its PID 1 is gone")
    if "SYS_PTRACE" in plan["capabilities"] and _sys.landlock_abi() < _sys.LANDLOCK_SCOPE_ABI:
        raise ExecError(f"{name}: capabilities: SYS_PTRACE needs Landlock ABI 6 (Linux 6.12) to keep "
                        "PID 1 out of the command's reach")
    bpf = b""
    if plan["seccomp"]["enabled"]:
        try:
            bpf = state.read_private(name, "seccomp.bpf")
        except OSError as e:
            raise ExecError(f"{name}: seccomp: cannot read the sandbox's filter: {e.strerror}") from None
        if not bpf:
            raise ExecError(f"{name}: seccomp: the sandbox's filter is missing; refusing to run without it")
    # denials of the command are recorded by the sandbox's supervisor (sandbox/detached.py,
    # _ExecAudit): it gets the command's seccomp listener over the state directory's socket —
    # connected now, while the host's paths are reachable
    audit_sock = None
    if bpf:
        try:
            nbpf = state.read_private(name, "seccomp-notify.bpf")
        except (OSError, StateError):
            nbpf = b""
        if nbpf:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
            try:
                s.connect(str(state.sandbox_dir(name) / recorded.EXEC_AUDIT_SOCKET))
                audit_sock, bpf = s, nbpf
            except OSError as e:
                s.close()
                sys.stderr.write(f"pysandbox: exec: the sandbox's supervisor does not record this "
                                 f"command's denials ({e.strerror}); they are enforced\n")
    want, want_dev = st.get("namespaces") or {}, st.get("namespaces_dev") or {}
    enabled = plan["namespaces"]
    fds: list[tuple[str, int, int]] = []
    prctl.set_dumpable(False)                    # before we hold anything of the sandbox's
    _close_fds(keep=(audit_sock.fileno(),) if audit_sock is not None else ())
    # PID 1, pinned: a pidfd first, then its start time (so the pidfd is the recorded process, not
    # one that got its pid since), and after the namespace files are open, it must still be
    # alive: then it held the recorded namespaces all along, so their inode numbers cannot have
    # been handed to new namespaces, and a file whose device and inode are the recorded ones is
    # the recorded namespace.
    pidfd = procid.open_pidfd(pid1, st.get("pid1_start"))
    if pidfd is None:
        raise ExecError(f"{name}: its PID 1 is gone")
    try:
        # namespaces to join: the identities recorded from PID 1 before the program ran; opened
        # from PID 1 where we may (root; rootless once PID 1 runs pysandbox-init), else from the
        # program's process - which cannot choose them: only a file naming the recorded
        # namespace is used
        sources = [(pid1, st.get("pid1_start")), (prog, st.get("program_start"))]
        for ns, flag in NS_ORDER:
            if not enabled.get(PLAN_NS[ns]) or ns in UNSHARED:
                continue
            if ns not in want or ns not in want_dev:
                raise ExecError(f"{name}: namespaces.{PLAN_NS[ns]}: identity not recorded before the program "
                                f"started (a sandbox of an older pysandbox?); cannot join safely")
            fd = None
            for src, start in sources:
                if not src or not procid.same_process(src, start):
                    continue
                try:
                    f = os.open(f"/proc/{src}/ns/{ns}", os.O_RDONLY | os.O_CLOEXEC)
                except OSError:
                    continue
                fst = os.fstat(f)
                if (fst.st_dev, fst.st_ino) == (want_dev[ns], want[ns]):
                    fd = f
                    break
                os.close(f)
            if fd is None:
                raise ExecError(f"{name}: namespaces.{PLAN_NS[ns]}: cannot open the sandbox's namespace "
                                f"(gone, or it changed since the start)")
            fds.append((ns, flag, fd))
        if select.select([pidfd], [], [], 0)[0]:  # readable: PID 1 has ended
            raise ExecError(f"{name}: its PID 1 is gone")
    except BaseException:
        for _, _, fd in fds:
            os.close(fd)
        raise
    finally:
        os.close(pidfd)
    try:
        # cgroups first: their files are host paths (recorded by the supervisor, not the program)
        for cg in st.get("cgroups") or ():
            try:
                with open(os.path.join(cg, "cgroup.procs"), "w") as f:
                    f.write(str(os.getpid()))
            except OSError as e:
                raise ExecError(f"{name}: limits: cannot join the sandbox's cgroup {cg}: {e.strerror}") from None
        for ns, flag, fd in fds:
            try:
                _sys.setns(fd, flag)
            except OSError as e:
                raise ExecError(f"{name}: namespaces.{PLAN_NS[ns]}: setns: {e.strerror}") from None
        # cgroup and time namespaces: our own, owned by the sandbox's user namespace, never the
        # program's. A cgroup namespace made here is rooted at the sandbox's cgroups (just joined),
        # as the program's was at its start: the same view. The sandbox's time namespace has no
        # offsets (pysandbox sets none), so a new one shows the same clocks.
        flags = 0
        for ns in UNSHARED:
            if enabled.get(PLAN_NS[ns]):
                flags |= dict(NS_ORDER)[ns]
        if flags:
            try:
                _sys.unshare(flags)
            except OSError as e:
                raise ExecError(f"{name}: namespaces: cannot make the cgroup/time namespace: {e.strerror}") from None
    finally:
        for _, _, fd in fds:
            os.close(fd)
    proc = plan["process"]
    cwd = workdir or proc.get("cwd") or "/"
    environ = _env(plan, env)
    master = None
    if tty:
        master, slave_name = _open_pty()         # the sandbox's own devpts (we are in its mount ns)
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        os.close(err_r)
        _child(plan, argv, environ, cwd, bpf, rootless, err_w, master, slave_name if tty else None,
               audit_sock)
    os.close(err_w)
    if audit_sock is not None:
        audit_sock.close()
    for sig in FORWARDED:
        signal.signal(sig, lambda s, _f, _p=pid: _kill(_p, s))
    relay = None
    if master is not None:
        relay = _TtyRelay(master, pid)
    report = b""
    while True:
        try:
            chunk = os.read(err_r, 512)
        except InterruptedError:
            continue
        if not chunk:
            break
        report += chunk
    os.close(err_r)
    if relay is not None:
        relay.run()
    while True:
        try:
            _, status = os.waitpid(pid, 0)
            break
        except InterruptedError:
            continue
    if relay is not None:
        relay.restore()
    if report:
        code_s, _, rest = report.decode(errors="replace").partition(" ")
        stage, _, what = rest.partition(" ")
        err = int(code_s) if code_s.isdigit() else 0
        if stage == "exec" and err == errno.ENOENT:
            sys.stderr.write(f"pysandbox: {argv[0]}: command not found\n")
            return 127
        if stage in ("exec", "cwd"):
            sys.stderr.write(f"pysandbox: {argv[0] if stage == 'exec' else cwd}: {os.strerror(err) if err else what}\n")
            return 126
        sys.stderr.write(f"pysandbox: exec: cannot set up the command ({stage}): {what}\n")
        return EXIT_SETUP
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


def _close_fds(keep=()) -> None:
    """Close every descriptor above 2: nothing of the host may follow us into the sandbox (but
    `keep`: the socket to the sandbox's own supervisor, close-on-exec, closed before the command
    runs)."""
    sys.stdout.flush()
    sys.stderr.flush()
    _sys.close_all_but(keep)
    _sys.close_range_cloexec(3)


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _stored_map(m) -> tuple:
    """An id map of the plan as stored (plan.to_dict(), through JSON: {inside, outside, count}
    dicts; [inside, outside, count] lists in older records) -> policies.plan.IdMapEntry tuple:
    the stored form normalised here, where it is read, for the rules of policies/."""
    return tuple(IdMapEntry(int(e["inside"]), int(e["outside"]), int(e["count"])) if isinstance(e, dict)
                 else IdMapEntry(*(int(v) for v in e)) for e in m or ())


def _spec(plan, argv, env, cwd, bpf, rootless, listener: bool) -> ProgramSpec:
    """The command's last steps, from the plan as stored: the program's (sequence.last_steps),
    in its own session already (_child), with no PID 1 release to wait for."""
    user, proc = plan["user"], plan["process"]
    set_ids = bool(plan["namespaces"]["user"] or not rootless)
    allowed = not rootless or holds_range(_stored_map(user.get("gid_map")))   # setgroups allowed:
    return ProgramSpec(                                          # the caller's groups dropped
        new_session=False, set_ids=set_ids, setgroups=allowed, nnp=bool(plan["no_new_privs"]),
        listener=listener, log=False, cgroupns=False, gid0=False, groups0=False, uid0=False,
        landlock=_sys.landlock_abi() >= _sys.LANDLOCK_SCOPE_ABI,
        uid=user["uid"], gid=user["gid"], groups=tuple(user.get("groups") or ()) if allowed else (),
        rlimits=tuple((RLIMIT_IDS[r["name"]], r["soft"], r["hard"], r["name"]) for r in proc.get("rlimits") or ()),
        cwd=cwd, keep=capabilities.mask(tuple(plan["capabilities"])), bpf=bpf or b"", argv=tuple(argv),
        env=dict(env))


def _child(plan, argv, env, cwd, bpf, rootless, err_w, master, slave_name, audit_sock=None) -> None:
    """The command's process: its own session (a pty of the sandbox's, -t), then the program's last
    steps (sandbox/launch/sequence.py, last_steps). Never returns."""
    try:
        prctl.set_pdeathsig(signal.SIGKILL)
        os.setsid()
        if slave_name is not None:
            os.close(master)
            s = os.open(slave_name, os.O_RDWR | os.O_NOFOLLOW)   # first tty opened after setsid: ours
            if not 136 <= os.major(os.fstat(s).st_rdev) <= 143:   # UNIX98 pty slaves
                raise OSError(errno.EPERM, f"{slave_name} is not a pty slave")
            fcntl.ioctl(s, termios.TIOCSCTTY, 0)
            for t in (0, 1, 2):
                os.dup2(s, t)
            if s > 2:
                os.close(s)
        spec = _spec(plan, argv, env, cwd, bpf, rootless, audit_sock is not None)
        ruleset = landlock.build_recorded(plan)      # the profile's rules, paths inside the sandbox
        if ruleset >= 0:
            spec = dataclasses.replace(spec, ruleset=ruleset, ruleset_flags=landlock.restrict_flags())
    except landlock.LandlockError as e:
        os.write(err_w, f"SETUP {e}".encode())
        os._exit(125)
    except OSError as e:
        os.write(err_w, f"{e.errno or 0} prepare {e.strerror or e}".encode())
        os._exit(126)
    except BaseException as e:                   # noqa: BLE001 - reported, never a traceback
        os.write(err_w, f"0 prepare {e}".encode())
        os._exit(126)
    sequence.last_steps(spec, err_w, listener_sock=audit_sock, listener_tag=None)


def _open_pty() -> tuple[int, str]:
    """A pty of the sandbox's devpts instance (/dev/ptmx -> pts/ptmx inside)."""
    try:
        master = os.open("/dev/ptmx", os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as e:
        raise ExecError(f"tty: cannot open /dev/ptmx inside the sandbox: {e.strerror}") from None
    st = os.fstat(master)
    if not stat.S_ISCHR(st.st_mode) or os.major(st.st_rdev) != 5 or os.minor(st.st_rdev) != 2:
        os.close(master)                         # the sandbox replaced its /dev/ptmx: refuse it
        raise ExecError("tty: /dev/ptmx inside the sandbox is not the pty multiplexer; refusing it")
    fcntl.ioctl(master, 0x40045431, struct.pack("i", 0))      # TIOCSPTLCK: unlockpt
    n = struct.unpack("I", fcntl.ioctl(master, 0x80045430, b"\0" * 4))[0]    # TIOCGPTN
    return master, f"/dev/pts/{n}"


class _TtyRelay:
    """Copy between our terminal and the pty master; raw mode while it runs; SIGWINCH -> TIOCSWINSZ."""

    def __init__(self, master: int, pid: int):
        self.master = master
        self.pid = pid
        self.saved = None
        if os.isatty(0):
            try:
                self.saved = termios.tcgetattr(0)
                _tty.setraw(0)
            except termios.error:
                self.saved = None
        self._winsize()
        signal.signal(signal.SIGWINCH, lambda *_: self._winsize())

    def _winsize(self) -> None:
        for fd in (0, 1):
            if os.isatty(fd):
                try:
                    ws = fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * 8)
                    fcntl.ioctl(self.master, termios.TIOCSWINSZ, ws)
                except OSError:
                    pass
                return

    def run(self) -> None:
        relay(self.master, self.pid)

    def restore(self) -> None:
        if self.saved is not None:
            try:
                termios.tcsetattr(0, termios.TCSADRAIN, self.saved)
            except termios.error:
                pass


def relay(master: int, pid: int, stdin: int = 0, stdout: int = 1) -> None:
    """Until the pty's other side is closed: stdin -> master, master -> stdout."""
    stdin_open = True
    while True:
        rl = [master] + ([stdin] if stdin_open else [])
        try:
            r, _, _ = select.select(rl, [], [], 0.5)
        except InterruptedError:
            continue
        if master in r:
            try:
                data = os.read(master, 65536)
            except OSError as e:
                if e.errno == errno.EIO:          # no slave left: the command ended
                    break
                raise
            if not data:
                break
            os.write(stdout, data)
        if stdin_open and stdin in r:
            data = os.read(stdin, 65536)
            if not data:
                stdin_open = False
                try:
                    os.write(master, b"\x04")     # EOF for the program's canonical-mode read
                except OSError:
                    pass
            else:
                try:
                    os.write(master, data)
                except OSError:
                    break
        if not r and pid > 0:
            try:
                if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                    break                         # ended (reaped by the caller)
            except ChildProcessError:
                break


# --- run -t: the supervisor side of a terminal sandbox ----------------------------------------

def run_tty(plan, bpf, argv, runopts) -> int:
    """`pysandbox run -t [-i] -- CMD`: the program's controlling terminal is a pty of the sandbox's
    own devpts (created inside, master passed back over a socket); we relay it to our terminal in
    raw mode and forward window-size changes (SIGWINCH -> TIOCSWINSZ on the master)."""
    import threading
    from audit.session import open_session
    from .launcher import LaunchError, launch
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    devnull = os.open("/dev/null", os.O_RDWR | os.O_CLOEXEC)
    try:
        sess = open_session(os.urandom(6).hex(), runopts.get("name"), plan.name, log_path=runopts.get("audit_log"))
    except OSError as e:
        sys.stderr.write(f"pysandbox: {e}\n")
        return EXIT_SETUP
    box: dict = {}
    ready = threading.Event()

    def winsize(*_):
        m = box.get("master")
        if m is None:
            return
        for fd in (0, 1):
            if os.isatty(fd):
                try:
                    fcntl.ioctl(m, termios.TIOCSWINSZ, fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * 8))
                except OSError:
                    pass
                return

    def pump():
        try:
            _, fds, _, _ = socket.recv_fds(parent, 1, 1)
        except OSError:
            fds = []
        if not fds:
            ready.set()
            return
        box["master"] = fds[0]
        winsize()
        ready.set()
        relay(fds[0], -1)

    saved = None
    if os.isatty(0):
        try:
            saved = termios.tcgetattr(0)
            _tty.setraw(0)
        except termios.error:
            saved = None
    old = signal.signal(signal.SIGWINCH, winsize)
    t = threading.Thread(target=pump, daemon=True)

    def on_event(etype, **fields):
        if etype == "sandbox_start" and not t.is_alive():
            t.start()                            # after the clone: PID 1 is never cloned from a threaded process
        return sess.emit(etype, **fields)
    try:
        result = launch(plan, argv, bpf=bpf, name=runopts.get("name"), sandbox_id=sess.sandbox_id,
                        on_event=on_event, stdin=devnull, stdout=devnull, stderr=devnull, console=child)
        code, message = result.exit_code, result.message
    except LaunchError as e:
        code, message = e.code, f"pysandbox: {e}"
    finally:
        child.close()
        try:
            parent.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        if t.ident is not None:
            t.join(5)
        signal.signal(signal.SIGWINCH, old)
        if saved is not None:
            termios.tcsetattr(0, termios.TCSADRAIN, saved)
        parent.close()
        if "master" in box:
            os.close(box["master"])
        os.close(devnull)
    if message:
        sys.stderr.write(message.rstrip("\n") + "\n")
    sess.close()
    return code
