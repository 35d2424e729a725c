"""`create`: the container's monitor, a process of its own that runs the project's one launch
sequence (launcher.Launch -> sandbox/launch/sequence.py) and holds it before its release until
`start` writes to the exec FIFO (runc's exec.fifo; here the monitor waits on it, PID 1 waits on
its go pipe as in every launch).

    create (the engine's child)          monitor (forked by create)          PID 1, the program
      translate the bundle                 join namespaces by path             (sequence.pid1)
      state dir, exec.fifo                 Launch.start: preflight ... announce
      fork the monitor  ───────────────►   before_release: sysctl, oomScoreAdj,
      wait for "OK"/"ERR"  ◄───────────    state "created", createRuntime+prestart hooks, "OK"
      --pid-file: PID 1's pid              wait: exec.fifo ("G" from `start`) or PID 1 gone
      exit 0                               release ("G")  ───────────────────►  runs
                                           poststart hooks, state "running"
                                           wait, finish (report, clean-up), state "stopped"
                                           exit with the program's status

The pid the engine gets (pid file, `state`) is the sandbox's PID 1, as runc's and crun's is the
container's init: the monitor clones it with CLONE_PARENT, a child of `create`, so when create
exits PID 1 is reparented to the engine's subreaper (podman's conmon), which waits for it and reads
the container's exit status from it (PID 1 exits with the program's status); `podman top` reads
/proc in PID 1's mount namespace. The monitor, reparented there too, learns PID 1's wait status
from its pidfd once it was reaped (PIDFD_INFO_EXIT, Linux 6.15; older kernels: the monitor is the
pid, as before). `kill` signals PID 1 (which forwards to the program). PID 1 arms no parent-death
signal before its release (create's exit would fire it); if the monitor dies before `start`, PID 1
reads the end of its go pipe and exits; after, the container runs on, as runc's does."""
from __future__ import annotations

import fcntl
import os
import select
import signal
import socket
import struct
import time

from .. import _sys, procid
from . import hooks as _hooks
from . import state as _state

NS_FLAGS = {"network": "CLONE_NEWNET", "ipc": "CLONE_NEWIPC", "uts": "CLONE_NEWUTS"}
CLONE_PARENT = 0x00008000
PIDFD_GET_INFO = 0xC040FF0B                      # _IOWR(0xFF, 11, struct pidfd_info (64 bytes))
PIDFD_INFO_EXIT = 0x8
REAP_WAIT = 60.0                                 # seconds for PID 1's reaper to collect it


def pidfd_exit_status(pidfd: int) -> "int | None":
    """PID 1's wait status once its parent reaped it (PIDFD_GET_INFO, PIDFD_INFO_EXIT: Linux 6.15),
    else None (still running or a zombie). OSError ENOTTY/EINVAL: the kernel has no PIDFD_GET_INFO."""
    buf = bytearray(64)
    struct.pack_into("Q", buf, 0, PIDFD_INFO_EXIT)
    try:
        fcntl.ioctl(pidfd, PIDFD_GET_INFO, buf)
    except ProcessLookupError:                   # reaped, but the exit was not recorded (cannot be: asked)
        return None
    mask, = struct.unpack_from("Q", buf, 0)
    return struct.unpack_from("i", buf, 60)[0] if mask & PIDFD_INFO_EXIT else None


def exit_info_supported() -> bool:
    """Whether this kernel reports a reaped process's exit status on its pidfd (our own pidfd)."""
    fd = _sys.pidfd_open(os.getpid())
    try:
        pidfd_exit_status(fd)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def create(root: str, cid: str, bundle, *, pid_file: "str | None", console_socket: "str | None", log,
           new_keyring: bool = True) -> int:
    """Fork the monitor and wait until the container is created (or failed). Returns the exit code.
    new_keyring: the monitor joins a new anonymous session keyring, which PID 1 inherits (runc's
    default; `create --no-new-keyring`: the caller's)."""
    d = _state.container_dir(root, cid)
    _state.check_root(root, create=True)
    try:
        os.mkdir(d, 0o700)
    except FileExistsError:
        log(f"container {cid} already exists")
        return 1
    fifo = os.path.join(d, "exec.fifo")
    os.mkfifo(fifo, 0o600)
    st = {"id": cid, "bundle": bundle.path, "annotations": bundle.annotations, "status": "creating",
          "hooks": bundle.hooks, "created": time.time()}
    _state.save(root, cid, st)
    ready_r, ready_w = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:
        os.close(ready_r)
        code = 1
        try:
            if new_keyring:
                from .. import _sys
                _sys.join_session_keyring()
            code = _monitor(root, cid, bundle, st, ready_w, console_socket, log, new_keyring)
        except BaseException as e:          # noqa: BLE001 - one line, never a traceback
            _tell(ready_w, f"ERR {e}")
        finally:
            os._exit(code)
    os.close(ready_w)
    # one message, one write (PID 1 holds a copy of ready_w until it closes its descriptors: no EOF)
    msg = os.read(ready_r, 4096)
    os.close(ready_r)
    text = msg.decode(errors="replace")
    if not text.startswith("OK"):
        log(text[4:] if text.startswith("ERR ") else "the container's monitor ended before the container was created")
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass
        _reap_children()                         # a PID 1 it cloned as our child (CLONE_PARENT), killed
        _state.remove_dir(d)
        return 1
    if pid_file:                                 # "OK <PID 1's pid>" (an older kernel: the monitor's)
        from ..fsutil import atomic_write
        atomic_write(pid_file, text[3:].strip() or str(pid), mode=0o644, fsync=False)
    return 0


def _reap_children() -> None:
    while True:
        try:
            if os.waitpid(-1, os.WNOHANG)[0] == 0:
                return
        except ChildProcessError:
            return


def _tell(fd: int, text: str) -> None:
    try:
        os.write(fd, text.replace("\n", " ").encode()[:4000])
        os.close(fd)
    except OSError:
        pass


def _monitor(root: str, cid: str, bundle, st: dict, ready_w: int, console_socket, log,
             new_keyring: bool = True) -> int:
    from ..launcher import FORWARDED, Launch, LaunchError
    for t, path in bundle.join.items():               # namespaces joined by path: inherited by PID 1
        if t not in NS_FLAGS:
            continue                                  # (pid: clone_joining, below)
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            _sys.setns(fd, getattr(_sys, NS_FLAGS[t]))
        except OSError as e:
            raise LaunchError(f"linux.namespaces: cannot join {path}: {e.strerror}") from None
        finally:
            os.close(fd)
    if bundle.umask is not None:
        os.umask(bundle.umask)
    stdio = (None, None, None)
    if bundle.terminal:                            # the pty master to the engine before create returns
        if not console_socket:
            raise LaunchError("process.terminal: needs --console-socket")
        stdio = _console(console_socket)
    elif console_socket:
        raise LaunchError("--console-socket: given, but process.terminal is false")
    from audit.session import open_session
    sess = open_session(os.urandom(6).hex(), cid, bundle.plan.name, log_path=bundle.audit_log, summary=False)
    run = Launch(bundle.plan, sandbox_id=sess.sandbox_id, name=None, on_event=sess.emit, stdin=stdio[0],
                 stdout=stdio[1], stderr=stdio[2], keep_keyring=not new_keyring)
    run.cgroup_path = bundle.cgroup_path               # linux.cgroupsPath (None: pysandbox's own leaf)
    fifo = os.path.join(_state.container_dir(root, cid), "exec.fifo")
    me = os.getpid()

    def hold(pid: int) -> None:
        """Launch.before_release: the container is created; wait for `start`."""
        try:
            for k, v in bundle.sysctl.items():
                _write_sysctl(pid, k, v, "ipc" if not k.startswith("net.") else "net")
            if bundle.oom_score_adj is not None:
                with open(f"/proc/{pid}/oom_score_adj", "w") as f:
                    f.write(str(bundle.oom_score_adj))
        except OSError as e:
            raise LaunchError(f"{'process.oomScoreAdj' if 'oom' in str(e.filename) else 'linux.sysctl'}: "
                              f"{e.strerror}") from None
        p1 = pid if direct else me                 # the pid the engine gets: PID 1 (older kernels: ours)
        st.update(status="created", pid=p1, pid_start=procid.start_time(p1), sandbox_pid=pid,
                  sandbox_pid_start=procid.start_time(pid), monitor_pid=me,
                  monitor_pid_start=procid.start_time(me), sandbox_id=run.sandbox_id,
                  cgroups=run.cg.paths if run.cg is not None and bundle.cgroup_path else [],
                  cgroup_dirs=run.cg.paths if run.cg is not None else [],   # ps, pause (control.py)
                  own_pidns=bool(bundle.plan.namespaces.pid) and "pid" not in bundle.join)
        _state.save(root, cid, st)
        try:
            for kind in ("createRuntime", "prestart"):
                _hooks.run(kind, bundle.hooks, _state.oci_state(st))
            if bundle.hooks.get("createContainer"):   # in the container's namespaces, before pivot_root
                enter = join_ns_of(pid)
                try:
                    _hooks.run("createContainer", bundle.hooks, _state.oci_state(st), preexec=enter)
                finally:
                    enter.close()
        except _hooks.HookError as e:
            raise LaunchError(str(e)) from None
        if start_w is not None:                    # PID 1 runs the startContainer hooks with this state
            _state_to(start_w, _state.oci_state(st))
        ffd = os.open(fifo, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        pidfd = _sys.pidfd_open(pid)
        _tell(ready_w, f"OK {p1}")
        null = os.open(os.devnull, os.O_RDWR)
        for n in (0, 1, 2):                        # the engine's pipes are the container's, not ours (errors: --log)
            os.dup2(null, n)
        os.close(null)
        try:
            p = select.poll()
            p.register(ffd, select.POLLIN)
            p.register(pidfd, select.POLLIN)
            while True:
                ready = dict(p.poll())
                if pidfd in ready:
                    raise LaunchError("the container's PID 1 ended before start")
                if ffd in ready and os.read(ffd, 1) == b"G":
                    break
        finally:
            os.close(ffd)
            os.close(pidfd)
            try:
                os.unlink(fifo)
            except FileNotFoundError:
                pass

    run.before_release = hold
    from ..launch.sequence import LaunchHooks
    direct = exit_info_supported()
    extra = CLONE_PARENT if direct else 0
    hooks = {}                                     # this launch's sequence.LaunchHooks (run.hooks)
    if direct:
        hooks["pid1_pdeathsig"] = False            # create's exit would fire it
    if "pid" in bundle.join:
        run.clone = clone_joining(bundle.join["pid"], extra)
        hooks["spawn_inline"] = False
    elif "user" in bundle.join or "mount" in bundle.join:
        run.clone = clone_via_helper(bundle.join.get("user"), bundle.join.get("mount"), extra)
        run.maps_done = "user" in bundle.join          # the namespace's own maps (bundle.joined_maps)
        if "mount" in bundle.join:
            hooks["join_mount"] = True                 # no root to build: the namespace's, as it is
            hooks["spawn_inline"] = False              # (the Python program's set-up knows that)
    else:
        run.clone = clone_plain(extra)
    pidfds = []
    if direct:
        run.clone = _keeping_pidfd(run.clone, pidfds)
        run.reap = lambda pid: _reap(*pidfds[0])
    start_w = None
    if bundle.hooks.get("startContainer"):
        start_w, hooks["before_program"] = _start_container_hooks(bundle)
    run.hooks = LaunchHooks(**hooks)

    for sig in FORWARDED:                          # `kill` signals PID 1; an engine may signal us
        signal.signal(sig, run.forward)
    if not run.start():
        msg = run.result.message or "the container could not be created"
        _tell(ready_w, "ERR " + msg.removeprefix("pysandbox: "))
        st.update(status="stopped", exit_code=run.result.exit_code)
        if st.get("pid"):
            _state.save(root, cid, st)
        sess.close()
        return run.result.exit_code
    try:
        _hooks.run("poststart", bundle.hooks, dict(_state.oci_state(st), status="running"))
    except _hooks.HookError as e:
        log(f"warning: {e}")
    st["status"] = "running"
    _state.save(root, cid, st)
    try:
        run.wait()
    finally:
        result = run.finish()
        st.update(status="stopped", exit_code=result.exit_code, signal=result.signal)
        if result.message and result.exit_code in (125, 126, 127):
            st["error"] = result.message.removeprefix("pysandbox: ")
        _state.save(root, cid, st)
        if result.message and result.exit_code in (125, 126, 127):
            log(result.message.removeprefix("pysandbox: "))
        sess.close()
    return result.exit_code


def clone_plain(extra: int):
    """Launch.clone as the launcher's own (init_image, clone with the namespaces), plus `extra`."""
    from ..init import init_image

    def clone(flags: int, ctx) -> int:
        init_image()
        return _sys.clone_fork(flags | extra)
    return clone


def clone_via_helper(user_ns: "str | None", mnt_ns: "str | None", extra: int):
    """Launch.clone for a user and/or mount namespace joined by path. Neither can be left again
    (setns back to a parent user namespace is refused), so a helper process joins them (user
    first, as runc) and clones PID 1 from there with CLONE_PARENT (our child, or with `extra` =
    CLONE_PARENT the helper and PID 1 both `create`'s): the namespaces PID 1 creates (pid, net,
    ipc, uts) are owned by the joined user namespace; without a new mount namespace PID 1 lives in
    the joined one (LaunchHooks.join_mount: no root is built in it). The helper sends PID 1's pid and
    exits."""
    from ..init import init_image

    def clone(flags: int, ctx) -> int:
        from ..launcher import LaunchError
        init_image()
        fds = [(os.open(p, os.O_RDONLY | os.O_CLOEXEC), flag, p)
               for p, flag in ((user_ns, _sys.CLONE_NEWUSER), (mnt_ns, _sys.CLONE_NEWNS)) if p]
        r, w = os.pipe2(os.O_CLOEXEC)
        try:
            helper = _sys.clone_fork(extra)
        except BaseException:
            for fd, _, _ in fds:
                os.close(fd)
            os.close(r)
            os.close(w)
            raise
        if helper == 0:
            os.close(r)
            try:
                for fd, flag, p in fds:
                    try:
                        _sys.setns(fd, flag)
                    except OSError as e:
                        raise OSError(e.errno, f"cannot join {p}: {e.strerror}") from None
                    flags &= ~flag
                    os.close(fd)
                pid = _sys.clone_fork(flags | CLONE_PARENT)
            except OSError as e:
                os.write(w, f"E{e.strerror or e}".encode()[:1000])
                os._exit(1)
            if pid == 0:
                os.close(w)
                return 0                               # PID 1: the launcher runs sequence.pid1_main
            os.write(w, f"P{pid}".encode())
            os._exit(0)
        for fd, _, _ in fds:
            os.close(fd)
        os.close(w)
        msg = os.read(r, 1024).decode(errors="replace")
        os.close(r)
        if not extra:                                  # (else `create`'s child, as PID 1)
            os.waitpid(helper, 0)
        if not msg.startswith("P"):
            raise LaunchError(f"linux.namespaces: {msg[1:] or 'the helper that joins them failed'}")
        return int(msg[1:])
    return clone


def _keeping_pidfd(clone, out: list):
    """PID 1's pidfd, opened at once (before anyone can reap it), with its pid and start time: its
    exit status comes on it."""
    def wrapped(flags: int, ctx) -> int:
        pid = clone(flags, ctx)
        if pid != 0:
            out.append((_sys.pidfd_open(pid), pid, procid.start_time(pid)))
        return pid
    return wrapped


def _reap(pidfd: int, pid: int, start: "int | None") -> int:
    """Launch.reap: PID 1 is the engine's child (CLONE_PARENT). Its wait status: from /proc/PID/stat
    while it is a zombie (identity checked by its start time), else from our pidfd once its reaper
    collected it (PIDFD_INFO_EXIT) - not waiting for a reaper that takes its time (init reaps
    orphans when it gets to them: seconds here). Neither within REAP_WAIT: 255 (unknown)."""
    select.select([pidfd], [], [])               # it ended (a zombie, or reaped)
    deadline, delay = time.monotonic() + REAP_WAIT, 0.001
    while True:
        status = pidfd_exit_status(pidfd)
        if status is None:
            status = procid.zombie_status(pid, start)
        if status is not None:
            os.close(pidfd)
            return status
        if time.monotonic() > deadline:
            os.close(pidfd)
            return 255 << 8
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


def clone_joining(pid_ns: str, extra: int = 0):
    """Launch.clone for a pid namespace joined by path: setns(CLONE_NEWPID) changes the namespace
    of our next children only, so around PID 1's clone (without CLONE_NEWPID), then back to ours
    (hooks and helpers stay in the runtime's). PID 1 is then a process of that namespace, not its
    init: what the program leaves running belongs to the namespace's init, as with runc."""
    from ..init import init_image

    def clone(flags: int, ctx) -> int:
        from ..launcher import LaunchError
        init_image()                                   # (launcher.clone_pid1 does it without a clone)
        target = os.open(pid_ns, os.O_RDONLY | os.O_CLOEXEC)
        own = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
        try:
            try:
                _sys.setns(target, _sys.CLONE_NEWPID)
            except OSError as e:
                raise LaunchError(f"linux.namespaces: cannot join {pid_ns}: {e.strerror}") from None
            pid = _sys.clone_fork((flags & ~_sys.CLONE_NEWPID) | extra)
        except BaseException:
            _back(own)
            raise
        finally:
            os.close(target)
        if pid != 0:
            _back(own)
        os.close(own)
        return pid
    return clone


def _back(own: int) -> None:
    """The supervisor's children in its own pid namespace again (setns to our own: allowed)."""
    try:
        _sys.setns(own, _sys.CLONE_NEWPID)
    except OSError:
        pass


def as_program(plan):
    """A preexec function for a startContainer hook: the program's credentials, not PID 1's (as
    runc runs them after finalizeNamespace): its capability sets, groups, gid and uid, and
    no_new_privs — the hook is a file of the container's image."""
    from .. import capabilities
    import prctl
    keep, u = capabilities.mask(plan.capabilities), plan.user

    def drop() -> None:
        capabilities.drop_bounding(keep)
        try:
            _sys.setgroups(list(u.groups))
        except OSError:
            if u.groups:                               # (setgroups denied in a rootless namespace)
                raise
        if u.uid != 0:
            _sys.set_keepcaps(True)
        _sys.setresgid(u.gid, u.gid, u.gid)
        _sys.setresuid(u.uid, u.uid, u.uid)
        capabilities.set_sets(keep, uid_inside=u.uid)
        prctl.set_no_new_privs(1)
    return drop


def join_ns_of(pid: int):
    """A preexec function: setns into every namespace of `pid` that differs from ours (the user
    namespace first, as sandbox/execin.py's NS_ORDER), for a createContainer hook's process: "in
    the container namespace". Its mount namespace is PID 1's before pivot_root, a copy of ours:
    the hook's path resolves as in the runtime namespace, as the spec says."""
    from ..execin import NS_ORDER
    fds = []
    for ns, flag in NS_ORDER:
        if ns == "time":
            continue
        if os.stat(f"/proc/self/ns/{ns}").st_ino != os.stat(f"/proc/{pid}/ns/{ns}").st_ino:
            fds.append((os.open(f"/proc/{pid}/ns/{ns}", os.O_RDONLY | os.O_CLOEXEC), flag))

    def enter() -> None:
        for fd, flag in fds:
            _sys.setns(fd, flag)
    enter.close = lambda: [os.close(fd) for fd, _ in fds]
    return enter


def _state_to(w: int, state: dict) -> None:
    """The state for PID 1's startContainer hooks, one write (annotations dropped past a pipe's
    buffer: the write must not wait for PID 1, which reads it only after its release)."""
    import json
    data = json.dumps(state).encode()
    if len(data) > 60000:
        data = json.dumps(dict(state, annotations={})).encode()[:60000]
    try:
        os.write(w, data)
    finally:
        os.close(w)


def _start_container_hooks(bundle) -> tuple:
    """startContainer: LaunchHooks.before_program, run by PID 1 (or the program's Python process) in
    the container's namespaces after pivot_root, before the program's last steps; the hook's path
    resolves in the container. The state comes on a pipe from hold(). Returns the pipe's write end
    and the before_program function."""
    import subprocess  # noqa: F401  (hooks.run imports it where it runs: after pivot_root it could not)
    r, w = os.pipe2(os.O_CLOEXEC)

    def before_program() -> None:
        os.close(w)                                # (the monitor's copy is the writer)
        data = os.read(r, 65536)                   # written whole before the release (PID 1 may hold
        os.close(r)                                # a copy of w: no EOF to wait for)
        try:
            _hooks.run("startContainer", bundle.hooks, data, preexec=as_program(bundle.plan))
        except _hooks.HookError as e:
            raise RuntimeError(str(e)) from None
    return w, before_program


def _console(path: str) -> tuple:
    """process.terminal: a pty whose master goes to the engine's console socket now (SCM_RIGHTS,
    as runc and crun send it during create); its slave is the program's stdin, stdout and stderr.
    The pty is the host's devpts (the sandbox's own is mounted only after the release, when `create`
    has returned), and the program has no controlling terminal (a session of its own, as every
    sandboxed program: no TIOCSTI into a terminal it shares)."""
    from ..launcher import LaunchError
    master, slave = os.openpty()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(path)
            socket.send_fds(s, [os.ttyname(slave).encode()], [master])
    except OSError as e:
        raise LaunchError(f"--console-socket {path}: {e.strerror}") from None
    finally:
        os.close(master)
    return (slave, slave, slave)


def _write_sysctl(pid: int, key: str, value: str, ns: str) -> None:
    """A sysctl of the container's net or ipc namespace: /proc/sys shows the namespaces of the
    process reading it, so a child of ours joins PID 1's namespace and writes it there."""
    flag = _sys.CLONE_NEWNET if ns == "net" else _sys.CLONE_NEWIPC
    nsfd = os.open(f"/proc/{pid}/ns/{ns}", os.O_RDONLY | os.O_CLOEXEC)
    r, w = os.pipe2(os.O_CLOEXEC)
    child = os.fork()
    if child == 0:
        err = 0
        try:
            _sys.setns(nsfd, flag)
            with open("/proc/sys/" + key.replace(".", "/"), "w") as f:
                f.write(value)
        except OSError as e:
            err = e.errno or 1
        os.write(w, str(err).encode())
        os._exit(0)
    os.close(w)
    os.close(nsfd)
    err = int(os.read(r, 16) or b"1")
    os.close(r)
    os.waitpid(child, 0)
    if err:
        raise OSError(err, f"{key}: {os.strerror(err)}", f"/proc/sys/{key}")
