"""Detached sandboxes (`run -d`): their supervisor, their status, and the signal queue.

The commands that act on them (ps, inspect, logs, top, stats, pause, unpause, stop, kill, rm,
exec, prune) are in sandbox/cli/status.py and sandbox/cli/lifecycle.py; `exec` itself is
sandbox/execin.py. This module is what they share with the supervisor (a sandbox's status, `status_of`/`load`, is
sandbox/recorded.py): `deliver` (the signal queue of a starting
sandbox) and `signal_sandbox` (PID 1 through a pidfd).

`run -d --name NAME -- CMD`
    The CLI creates NAME's state directory (sandbox/state.py), then forks twice (setsid in between):
    the grandchild is the sandbox's *supervisor*. It keeps a shared flock on `alive` (PID 1, its
    fork, shares that lock: the lock is free exactly when both are gone), sends the program's
    stdout/stderr to stdout.log/stderr.log, records audit events through the usual session, and
    calls the launcher. When the launcher reports PID 1 (`on_event("sandbox_start", pid=...)`) the
    supervisor records PID 1's host pid and start time, the identities (device + inode) of the
    namespaces `exec` joins — read from PID 1 before it is released, so before any code of the
    program's runs — and the sandbox's cgroups; a watcher thread waits until the program runs
    (PID 1's first child), records it and tells the waiting CLI, which prints the name and exits 0. When the sandbox ends the state says `exited` with the exit code (`--rm`: the state
    directory is removed).

Status shown by `ps`: starting | running | exited (CODE) | dead (the supervisor vanished without
recording an exit, e.g. SIGKILL; the next command removes what it left — sandbox/reclaim.py — and
`rm`/`prune` the state).

Start-up: the CLI registers the sandbox (sandbox/reclaim.py) and creates its state as `starting`
with the `alive` lock taken before state.json exists, so the entry is never seen dead. `kill` and
`stop` queue their signal in the state while it is `starting` (`state.queue_signal`, under the
state lock); the supervisor takes the queue when it records PID 1 (a SIGKILL there aborts the
launch before PID 1 is released: nothing runs) and again, atomically with the switch to `running`,
when the program runs (then PID 1 gets them at once). `rm` refuses a starting sandbox (exit 1);
`rm -f` kills it through the queue and waits for its supervisor.
"""
from __future__ import annotations

import os
import select
import signal
import sys
import threading
import time
from typing import Optional

from . import _sys
from . import procid
from .recorded import EXEC_AUDIT_SOCKET
from .store import state
from .store.state import StateError

NS_TYPES = ("user", "mnt", "pid", "uts", "ipc", "net", "cgroup", "time")


def _err(msg: str) -> None:
    sys.stderr.write(msg.rstrip("\n") + "\n")
    sys.stderr.flush()


# --- facts about live processes ---------------------------------------------------

def ns_inodes(pid: int, types=NS_TYPES) -> dict:
    out = {}
    for t in types:
        try:
            out[t] = os.stat(f"/proc/{pid}/ns/{t}").st_ino
        except OSError:
            pass
    return out


def first_child(pid: int) -> Optional[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            kids = f.read().split()
        return int(kids[0]) if kids else None
    except (OSError, ValueError):
        pass
    for ent in os.scandir("/proc"):             # fallback: scan for PPid
        if ent.name.isdigit() and _ppid(int(ent.name)) == pid:
            return int(ent.name)
    return None


def _ppid(pid: int) -> Optional[int]:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            s = f.read()
        return int(s[s.rindex(b")") + 2:].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def sandbox_cgroups(pid: int, sandbox_id: str) -> list[str]:
    """The cgroup directories (host paths) created for this sandbox that `pid` is in."""
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    from .cgroups.layout import detect
    try:
        layout = detect()
    except OSError:
        return []
    v1 = layout.v1_map
    out = []
    for line in lines:
        _, ctls, path = line.split(":", 2)
        if os.path.basename(path) != sandbox_id:
            continue
        if ctls == "":
            if layout.unified:
                out.append(os.path.normpath(layout.unified + path))
            continue
        for c in ctls.split(","):
            if c in v1:
                out.append(os.path.normpath(v1[c] + path))
                break
    return sorted(set(out))


# --- the supervisor of a detached sandbox ----------------------------------------------

def run_detached(plan, bpf, argv, runopts) -> int:
    """CLI side of `run -d`: returns the exit code of the `run` command (0 when started)."""
    sid = os.urandom(6).hex()
    name = runopts.get("name") or f"sbx-{sid}"
    argv = tuple(argv) if argv else tuple(plan.process.argv)
    from .store import reclaim
    try:
        state.check_name(name)
        # registered before it exists: a `run -d` killed at any point leaves nothing the next
        # command does not remove (sandbox/reclaim.py)
        rec = reclaim.register(sid, rootless=os.geteuid() != 0, name=name)
    except StateError as e:
        _err(f"pysandbox: {e}")
        return e.code
    except OSError as e:
        _err(f"pysandbox: state directory: {e.strerror or e}")
        return 125
    try:
        d, alive_fd = state.create(name, {
            "name": name, "id": sid, "status": "starting", "created": state.now(), "profile": plan.name,
            "argv": list(argv), "rootless": os.geteuid() != 0, "auto_remove": bool(runopts.get("rm")),
            "plan": plan.to_dict(), "supervisor_pid": None, "pid1": None, "program_pid": None,
            "namespaces": {}, "cgroups": [], "exit_code": None, "message": None,
            "stdout_log": None, "stderr_log": None, "audit_log": None,
        })
    except StateError as e:
        reclaim.unregister(rec)
        _err(f"pysandbox: {e}")
        return e.code
    except OSError as e:
        reclaim.unregister(rec)
        _err(f"pysandbox: state directory: {e.strerror}")
        return 125
    try:
        return _start_detached(name, sid, d, plan, bpf, argv, runopts)
    finally:
        os.close(alive_fd)      # the supervisor holds `alive` by now (or it failed and cleaned up)
        reclaim.unregister(rec)


def _start_detached(name, sid, d, plan, bpf, argv, runopts) -> int:
    exec_bpf = b""
    if plan.seccomp.enabled:
        try:
            from .seccomp import exec_filters
            exec_bpf, notify_bpf = exec_filters(plan.seccomp, bpf)
            if notify_bpf and _landlock_fallback(plan):      # exec'd commands' Landlock denials too
                from .notify.landlock_fallback import notify_bpf as landlock_notify_bpf
                notify_bpf = landlock_notify_bpf(notify_bpf, bool(plan.landlock.filesystem),
                                                 bool(plan.landlock.network))
            state.write_private(name, "seccomp.bpf", exec_bpf)
            if notify_bpf:                           # exec'd commands' denials are recorded too
                state.write_private(name, "seccomp-notify.bpf", notify_bpf)
        except (OSError, ValueError) as e:
            state.remove(name)
            _err(f"pysandbox: seccomp: {getattr(e, 'strerror', None) or e}")
            return 125
    r, w = os.pipe2(os.O_CLOEXEC)
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:                                     # intermediate: new session, fork the supervisor
        try:
            os.close(r)
            os.setsid()
            if os.fork() != 0:
                os._exit(0)
            _supervisor_main(name, sid, plan, bpf, argv, runopts, w, str(d))
        finally:
            os._exit(0)
    os.close(w)
    os.waitpid(pid, 0)
    msg = b""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready, _, _ = select.select([r], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            break
        chunk = os.read(r, 4096)
        if not chunk:
            break
        msg += chunk
        if msg.endswith(b"\n"):
            break
    os.close(r)
    line = msg.decode(errors="replace").strip()
    if line.startswith("OK"):
        print(name)
        return 0
    if line.startswith("ERR "):
        code_s, _, text = line[4:].partition(" ")
        _err(text)
        return int(code_s) if code_s.isdigit() else 125
    _err(f"pysandbox: the supervisor of {name} did not report (see {d}/supervisor.log)")
    return 125


def _landlock_fallback(plan) -> bool:
    """Whether the sandbox's Landlock denials go through the notify layer (landlock.denial_source:
    a detached sandbox never reads the kernel's records): its exec'd commands' filter then
    notifies the calls Landlock could deny, and _ExecAudit predicts them."""
    if plan.landlock is None:
        return False
    from . import landlock
    return landlock.denial_source(plan, kernel_watch=False) == landlock.NOTIFY


class _ExecAudit:
    """The detached supervisor records the seccomp denials of `pysandbox exec` commands with its
    own recorder (one sandbox, one event sequence): the exec'd command hands its listener over
    the state directory's `audit.sock` (0600; the peer must be this user or root), and a
    supervisor thread answers and records its notifications like the program's."""

    def __init__(self, path: str, seccomp_plan, emit, kill, landlock=None):
        import socket
        self.plan, self.emit, self.kill = seccomp_plan, emit, kill
        self.landlock = landlock          # plan.landlock when the commands' filter notifies its calls
        self.handles: list = []
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        old = os.umask(0o177)
        try:
            self.sock.bind(path)
        finally:
            os.umask(old)
        self.sock.listen(8)
        threading.Thread(target=self._serve, name="pysandbox-exec-audit", daemon=True).start()

    def _serve(self) -> None:
        import socket
        import struct
        from .notify.listener import recv_listener
        from .notify.supervisor import start
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return                                # closed: the sandbox ended
            try:
                _pid, uid, _gid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                                      struct.calcsize("3i")))
                if uid not in (os.geteuid(), 0):
                    continue
                fd = recv_listener(conn, timeout=10)
            except OSError:
                continue
            finally:
                conn.close()
            predictor = None
            if self.landlock is not None:                 # one per command: a Predictor is one thread's
                from .notify.landlock_fallback import Predictor
                predictor = Predictor(self.landlock)
            self.handles.append(start(fd, self.plan, self.emit, self.kill, landlock=predictor))

    def close(self) -> None:
        import socket
        try:
            self.sock.shutdown(socket.SHUT_RDWR)     # wakes accept()
        except OSError:
            pass
        self.sock.close()
        for h in self.handles:
            h.stop(timeout=2)


def _supervisor_main(name, sid, plan, bpf, argv, runopts, notify_w, d) -> None:
    """In the detached supervisor process. Never returns."""
    told = [False]

    def tell(line: str) -> None:
        if told[0]:
            return
        told[0] = True
        try:
            os.write(notify_w, (line.replace("\n", " ") + "\n").encode())
            os.close(notify_w)
        except OSError:
            pass

    try:
        os.chdir("/")
        devnull = os.open("/dev/null", os.O_RDWR | os.O_CLOEXEC)
        sup_log = os.open(os.path.join(d, "supervisor.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC,
                          0o600)
        os.dup2(devnull, 0)
        os.dup2(sup_log, 1)
        os.dup2(sup_log, 2)
        for fdname in os.listdir("/proc/self/fd"):  # nothing of the caller's stays open in the background
            fd = int(fdname)
            if fd > 2 and fd not in (notify_w, devnull, sup_log):
                try:
                    os.close(fd)
                except OSError:
                    pass
        sys.stdout = open(1, "w", buffering=1, closefd=False)
        sys.stderr = open(2, "w", buffering=1, closefd=False)
        out = os.open(os.path.join(d, "stdout.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        err = os.open(os.path.join(d, "stderr.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        state.hold_alive(name)                   # kept open for the supervisor's (and PID 1's) lifetime
        from .store import reclaim
        own_rec = reclaim.register(sid, rootless=os.geteuid() != 0, name=name)   # the CLI's record goes
        from audit.session import open_session
        sess = open_session(sid, name, plan.name, log_path=runopts.get("audit_log"), summary=False)
        state.update(name, status="starting", supervisor_pid=os.getpid(),
                     supervisor_start=procid.start_time(os.getpid()),
                     stdout_log=os.path.join(d, "stdout.log"), stderr_log=os.path.join(d, "stderr.log"),
                     audit_log=sess.log_path)
    except Exception as e:                        # noqa: BLE001
        tell(f"ERR 125 pysandbox: cannot start the supervisor of {name}: {e}")
        state.remove(name)
        os._exit(125)

    pid1 = [None]

    def on_event(etype, **fields):
        if etype == "sandbox_start":
            pid1[0] = fields["pid"]
            queued = []
            try:
                queued = _record_start(name, sid, fields["pid"], tell, fields.get("cgroups"))
            except Exception as e:                # noqa: BLE001 - never break the launch over state
                print(f"pysandbox: state of {name}: {e}", file=sys.stderr)
            if signal.SIGKILL in queued:          # `kill`/`rm -f` while starting: nothing runs
                sess.emit(etype, **fields)
                from .launcher import LaunchError
                raise LaunchError(f"{name} was killed while starting (SIGKILL before its program ran)",
                                  code=128 + signal.SIGKILL)
        return sess.emit(etype, **fields)

    def kill_sandbox() -> None:                   # a kill rule hit by an exec'd command
        if pid1[0]:
            try:
                os.kill(pid1[0], signal.SIGKILL)
            except ProcessLookupError:
                pass

    exec_audit = None
    if plan.seccomp.enabled and os.path.exists(os.path.join(d, "seccomp-notify.bpf")):
        try:
            exec_audit = _ExecAudit(os.path.join(d, EXEC_AUDIT_SOCKET), plan.seccomp, sess.emit, kill_sandbox,
                                    landlock=plan.landlock if _landlock_fallback(plan) else None)
        except OSError as e:                      # exec'd commands' denials: enforced, not recorded
            print(f"pysandbox: {name}: exec audit socket: {e.strerror}", file=sys.stderr)

    from .launcher import LaunchError, launch
    ran = False
    try:
        result = launch(plan, argv, bpf=bpf, sandbox_id=sid, name=name, on_event=on_event,
                        stdin=devnull, stdout=out, stderr=err)
        code, message = result.exit_code, result.message
        ran = result.status is not None or result.signal is not None or result.timed_out
    except LaunchError as e:
        code, message = e.code, f"pysandbox: {e}"
    except Exception as e:                        # noqa: BLE001
        code, message = 125, f"pysandbox: internal error: {type(e).__name__}: {e}"
    if message:
        print(message, file=sys.stderr)
    if exec_audit is not None:
        exec_audit.close()
    try:
        sess.close()
    except Exception:                             # noqa: BLE001
        pass
    try:
        state.update(name, status="exited", exit_code=code, message=message, finished=state.now())
    except StateError:
        pass
    if ran or code not in (125, 126, 127):
        tell(f"OK exited {code}")
    else:
        tell(f"ERR {code} {message or 'pysandbox: the sandbox could not be started'}")
        state.remove(name)
        reclaim.unregister(own_rec)
        os._exit(code)
    if runopts.get("rm"):
        state.remove(name)
    reclaim.unregister(own_rec)
    os._exit(0)


JOINED_NS = ("user", "mnt", "pid", "uts", "ipc", "net")     # what `exec` joins (sandbox/execin.py)


def ns_identities(pid: int, types=JOINED_NS) -> tuple[dict, dict]:
    """({type: inode}, {type: device}) of /proc/PID/ns/TYPE: together they name a namespace (while
    it lives: a freed namespace's inode number is given to the next one)."""
    ino, dev = {}, {}
    for t in types:
        try:
            st = os.stat(f"/proc/{pid}/ns/{t}")
        except OSError:
            continue
        ino[t], dev[t] = st.st_ino, st.st_dev
    return ino, dev


def _record_start(name: str, sid: str, pid1: int, tell, cgroups=None) -> None:
    """Launcher thread, right after clone: record PID 1 and the namespaces `exec` will join.

    PID 1 is still waiting for "go" (the launcher writes it after this event), so no code of the
    program's has run, and it is our unreaped child, so its pid cannot have been reused: what is
    read here are the sandbox's namespaces (user, mnt, pid, uts, ipc, net — the ones PID 1 lives
    in; the cgroup and time namespaces are made later, by PID 1 and the program's process, and
    `exec` makes its own instead of trusting the program's: sandbox/execin.py)."""
    st1 = procid.start_time(pid1)
    ns, ns_dev = ns_identities(pid1)
    cgs = list(cgroups) if cgroups is not None else sandbox_cgroups(pid1, sid)
    queued = state.take_signals(name, pid1=pid1, pid1_start=st1, namespaces=ns, namespaces_dev=ns_dev,
                                cgroups=cgs, started=state.now())
    if signal.SIGKILL not in queued:
        threading.Thread(target=_watch_ready, args=(name, pid1, st1, tell, queued), daemon=True).start()
    return queued


def _watch_ready(name: str, pid1: int, st1, tell, queued=(), limit: float = 60.0) -> None:
    """Wait until PID 1 has started the program (after its execve), record it, then report
    "running". Its namespaces are kept as `program_namespaces`, for information only: they are
    read after the program started, which may have made new ones by then, so `exec` never uses
    them as the reference (that is `namespaces`, read from PID 1 before the program ran)."""
    deadline = time.monotonic() + limit
    delay = 0.001
    while time.monotonic() < deadline:
        if not procid.same_process(pid1, st1):
            return                                # ended before: the supervisor reports the exit
        prog = first_child(pid1)
        if prog and _execed(prog):
            ns = ns_inodes(prog)
            if "mnt" in ns:
                try:
                    # running, and the signals `kill` queued while it was starting (atomically: a
                    # `kill` from now on finds it running and signals PID 1 itself)
                    queued = list(queued) + state.take_signals(
                        name, _only_if_status=("starting",), status="running", program_pid=prog, program_start=procid.start_time(prog),
                        program_namespaces=ns)
                except StateError:
                    return
                for sig in queued:                # PID 1 (pysandbox-init) forwards them to the program
                    signal_sandbox({"pid1": pid1, "pid1_start": st1}, sig)
                tell("OK running")
                return
        time.sleep(delay)
        delay = min(delay * 2, 0.02)


def _comm(pid: int) -> Optional[bytes]:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            s = f.read()
        return s[s.index(b"(") + 1:s.rindex(b")")]
    except (OSError, ValueError):
        return None


def _exe(pid: int) -> Optional[str]:
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return None


INIT_COMM = b"pysandbox-init"


def _execed(prog: int) -> bool:
    """Has PID 1's child called execve yet? Before, it is a fork of pysandbox-init (its comm; its
    exe the memfd, unreadable while it is non-dumpable) or, without it, of PID 1 as a copy of this
    supervisor (our comm and exe); its cgroup namespace is not the sandbox's yet."""
    c = _comm(prog)
    if c is not None and c not in (_comm(os.getpid()), INIT_COMM):
        return True
    e = _exe(prog)
    return e is not None and e != _exe(os.getpid()) and not e.startswith("/memfd:" + INIT_COMM.decode())


# --- signals: what `kill`, `stop` and `rm` send (sandbox/cli/lifecycle.py) -----------------

def signal_sandbox(st: dict, sig: int) -> bool:
    """Send sig to the sandbox's PID 1 (which forwards it to the program; SIGKILL ends the whole
    sandbox). Uses a pidfd after checking the start time, so a recycled pid is never signalled."""
    fd = procid.open_pidfd(st.get("pid1"), st.get("pid1_start"))
    if fd is None:
        return False
    try:
        _sys.pidfd_send_signal(fd, sig)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def wait_gone(name: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    delay = 0.005
    while time.monotonic() < deadline:
        if not state.is_alive(name):
            return True
        time.sleep(delay)
        delay = min(delay * 2, 0.1)
    return not state.is_alive(name)


def deliver(name: str, st: dict, sig: int) -> bool:
    """Signal a live sandbox: while it is `starting` the signal is queued in its state (under the
    state lock) and its supervisor delivers it the moment the program runs — a SIGKILL queued
    before PID 1 is released aborts the launch, so nothing runs; once `running`, PID 1 gets it."""
    if st.get("status") == "starting" or not st.get("pid1"):
        try:
            if state.queue_signal(name, sig):
                return True
        except StateError:
            return False
        st = state.read(name)                     # it went on to running meanwhile
    return signal_sandbox(st, sig)


