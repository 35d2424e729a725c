"""The seccomp user-notification supervisor: every denied call, recorded exactly.

How it fits together
--------------------
1. Inside the sandbox, just before execve, the program's process loads its filter with
   SECCOMP_FILTER_FLAG_NEW_LISTENER (deny rules compiled as SCMP_ACT_NOTIFY when
   plan.seccomp.notify_denials is true), passes the listener fd to the launcher over a
   unix socketpair with SCM_RIGHTS (`send_listener`), closes it and execs.
2. The launcher receives it (`recv_listener`) and calls
   `start(listener_fd, seccomp_plan, on_event, kill_sandbox) -> Handle`.
3. A thread polls the listener. For each notification it reads the caller's identity
   (/proc/TID: comm, exe, tgid, pid inside the sandbox) and, where useful, its string
   and fd arguments (/proc/TID/mem, /proc/TID/fd), re-checks the notification id
   (SECCOMP_IOCTL_NOTIF_ID_VALID: the data belongs to the blocked caller, not a recycled
   pid), looks the rule up in the plan, records the event through on_event and then
   answers with the rule's errno. A `kill` rule is recorded, then the whole sandbox is
   killed (kill_sandbox()); the call is never answered.

Guarantees
----------
* Never a way around the policy: the enforcing supervisor has no code path that lets
  a call run (SECCOMP_USER_NOTIF_FLAG_CONTINUE exists only in the learn-mode
  supervisor, `start_learning`, which is used by `pysandbox learn` and nothing else).
  If the supervisor dies or stops, the kernel answers every pending and future
  notified call with ENOSYS: still denied.
* No deadlock with multi-threaded sandboxes or a slow supervisor: the kernel queues
  notifications; each calling thread sleeps until answered; the supervisor takes them
  one at a time with poll+RECV (RECV never blocks: ENOENT when the caller died).
  When every task using the filter is gone the listener reports POLLHUP and the thread
  ends by itself; `Handle.stop()` drains what is pending, ends the thread and joins.
* Memory stays flat: fixed receive/answer buffers, an nr->name cache bounded by the
  syscall table, no per-event state kept.

Fallback (`start_kmsg`): where user notification is unavailable, deny rules stay
SECCOMP_RET_ERRNO/KILL in the filter (loaded with SECCOMP_FILTER_FLAG_LOG) and the
kernel's audit records (`type=1326` on /dev/kmsg) are matched by pid. Those records
carry no arguments and the kernel rate-limits them; events say "via": "kmsg".
"""
from __future__ import annotations

import errno as _errno
import fcntl
import functools
import os
import re
import select
import signal
import socket
import struct
import threading
from dataclasses import dataclass
from typing import Any, Callable, Optional

# --- linux/seccomp.h -----------------------------------------------------------
# struct seccomp_notif { __u64 id; __u32 pid; __u32 flags; struct seccomp_data data; }
# struct seccomp_data  { int nr; __u32 arch; __u64 instruction_pointer; __u64 args[6]; }
NOTIF = struct.Struct("=QIIiIQ6Q")          # 80 bytes
# struct seccomp_notif_resp { __u64 id; __s64 val; __s32 error; __u32 flags; }
NOTIF_RESP = struct.Struct("=QqiI")         # 24 bytes
_U64 = struct.Struct("=Q")


def _IOC(d: int, t: int, nr: int, size: int) -> int:
    return (d << 30) | (size << 16) | (t << 8) | nr


_IOC_WRITE, _IOC_READ = 1, 2
SECCOMP_IOCTL_NOTIF_RECV = _IOC(_IOC_READ | _IOC_WRITE, ord("!"), 0, NOTIF.size)       # 0xc0502100
SECCOMP_IOCTL_NOTIF_SEND = _IOC(_IOC_READ | _IOC_WRITE, ord("!"), 1, NOTIF_RESP.size)  # 0xc0182101
SECCOMP_IOCTL_NOTIF_ID_VALID = _IOC(_IOC_WRITE, ord("!"), 2, 8)                       # 0x40082102
SECCOMP_USER_NOTIF_FLAG_CONTINUE = 1    # used by the learn-mode supervisor ONLY

SECCOMP_RET_ACTION_FULL = 0xFFFF0000
SECCOMP_RET_DATA = 0x0000FFFF
RET_KILL_PROCESS = 0x80000000
RET_KILL_THREAD = 0x00000000
RET_TRAP = 0x00030000
RET_ERRNO = 0x00050000
RET_USER_NOTIF = 0x7FC00000
RET_TRACE = 0x7FF00000
RET_LOG = 0x7FFC0000
RET_ALLOW = 0x7FFF0000

AUDIT_ARCH_NAMES = {0xC000003E: "x86_64", 0x40000003: "x86", 0xC00000B7: "aarch64", 0x40000028: "arm"}

MAX_STRING = 4096
_MAGIC = b"pysandbox-seccomp-listener"

OnEvent = Callable[..., Any]          # on_event(type, **fields), e.g. audit.Recorder.emit


@functools.lru_cache(maxsize=None)
def user_notif_available() -> bool:
    """Does this kernel offer seccomp user notification (SECCOMP_RET_USER_NOTIF)? (Read once per
    process: asked at every audited launch.)"""
    try:
        with open("/proc/sys/kernel/seccomp/actions_avail") as f:
            return "user_notif" in f.read().split()
    except OSError:
        return False


# --- fd passing ----------------------------------------------------------------

def send_listener(sock: socket.socket | int, listener_fd: int) -> None:
    """Child side: hand the listener fd to the supervisor (SCM_RIGHTS). Caller closes it after."""
    if isinstance(sock, int):
        s = socket.socket(fileno=sock)
        try:
            socket.send_fds(s, [_MAGIC], [listener_fd])
        finally:
            s.detach()
    else:
        socket.send_fds(sock, [_MAGIC], [listener_fd])


def recv_listener(sock: socket.socket | int, timeout: Optional[float] = 10.0) -> int:
    """Supervisor side: receive the listener fd. Raises OSError on timeout/EOF/garbage."""
    own = isinstance(sock, int)
    s = socket.socket(fileno=sock) if own else sock
    try:
        s.settimeout(timeout)
        try:
            msg, fds, _flags, _addr = socket.recv_fds(s, len(_MAGIC), 4)
        except socket.timeout:
            raise OSError(_errno.ETIMEDOUT, "seccomp listener fd not received in time") from None
        finally:
            s.settimeout(None)
        if not msg or len(fds) != 1:
            for fd in fds:
                os.close(fd)
            raise OSError(_errno.EPROTO, "seccomp listener fd: the sandbox sent no listener")
        os.set_inheritable(fds[0], False)
        return fds[0]
    finally:
        if own:
            s.detach()


# --- raw ioctls ----------------------------------------------------------------

@dataclass(frozen=True)
class Notification:
    id: int
    pid: int              # thread id, in the supervisor's pid namespace
    flags: int
    nr: int
    arch: int
    ip: int
    args: tuple


def notif_recv(fd: int, buf: bytearray) -> Optional[Notification]:
    """One pending notification, or None when it vanished (caller killed meanwhile)."""
    buf[:] = bytes(NOTIF.size)     # the kernel insists on a zeroed struct
    try:
        fcntl.ioctl(fd, SECCOMP_IOCTL_NOTIF_RECV, buf, True)
    except OSError as e:
        if e.errno in (_errno.ENOENT, _errno.EINTR, _errno.EAGAIN):
            return None
        raise
    nid, pid, flags, nr, arch, ip, *args = NOTIF.unpack(buf)
    return Notification(nid, pid, flags, nr, arch, ip, tuple(args))


def notif_id_valid(fd: int, nid: int) -> bool:
    try:
        fcntl.ioctl(fd, SECCOMP_IOCTL_NOTIF_ID_VALID, bytearray(_U64.pack(nid)), True)
        return True
    except OSError as e:
        if e.errno == _errno.ENOENT:
            return False
        raise


def notif_send_errno(fd: int, nid: int, err: int) -> bool:
    """Answer a notified call with -err (err > 0). The call does not run. False if the
    caller is gone."""
    if err <= 0:
        err = _errno.EPERM     # a denial always fails; never "success without running"
    return _send(fd, NOTIF_RESP.pack(nid, 0, -err, 0))


def _send(fd: int, payload: bytes) -> bool:
    try:
        fcntl.ioctl(fd, SECCOMP_IOCTL_NOTIF_SEND, bytearray(payload), True)
        return True
    except OSError as e:
        if e.errno in (_errno.ENOENT, _errno.EINPROGRESS):
            return False
        raise


# --- syscall names -------------------------------------------------------------

class SyscallNames:
    """nr -> name via libseccomp, loaded on first use (not on the launch path)."""

    def __init__(self):
        self._cache: dict[tuple[int, int], Optional[str]] = {}

    def name(self, arch: int, nr: int) -> Optional[str]:
        key = (arch, nr)
        if key in self._cache:
            return self._cache[key]
        name: Optional[str] = None
        try:
            import pyseccomp
            name = pyseccomp.resolve_syscall(arch, nr).decode()
        except Exception:  # noqa: BLE001 - unknown number, foreign arch
            name = None
        if len(self._cache) < 4096:
            self._cache[key] = name
        return name


    def table(self, arch: Optional[int] = None, top: int = 1024) -> dict:
        """{(arch, nr): name} for every native syscall number below `top` (libseccomp, once): for
        a process that must resolve names without loading libseccomp (the API's launch server)."""
        import pyseccomp
        arch = pyseccomp.system_arch() if arch is None else arch
        out = {}
        for nr in range(top):
            try:
                out[(arch, nr)] = pyseccomp.resolve_syscall(arch, nr).decode()
            except Exception:  # noqa: BLE001 - a hole in the table
                continue
        return out

    def seed(self, table: dict) -> None:
        self._cache.update(table)


_NAMES = SyscallNames()


# --- policy lookup -------------------------------------------------------------

@dataclass(frozen=True)
class Decision:
    action: str                 # errno | kill
    errno: Optional[int]
    rule: str                   # syscall name of the rule, or "default"
    policy_action: str          # what the plan says (errno, kill, notify, trap, log, allow, ...)


def decide(seccomp_plan, name: Optional[str], args) -> Decision:
    """How the supervisor answers a notified call: the plan's verdict (policies.seccomp.rule_for,
    the one decision) turned into an answer. The filter only notifies calls the plan denies, so
    an `allow`/`log` verdict here means plan and filter disagree: the call is still denied
    (EPERM). A `trap` rule cannot be emulated: answered ENOSYS."""
    if seccomp_plan is None:
        return Decision("errno", _errno.EPERM, "default", "unknown")
    from policies.seccomp_verdict import rule_for
    r = rule_for(seccomp_plan, name, args) if name is not None else None
    if r is None:
        act, err, rule = seccomp_plan.default_action, seccomp_plan.default_errno, "default"
    else:
        act, err, rule = r.action, r.errno, r.name
    if act == "kill":
        return Decision("kill", None, rule, act)
    if act in ("errno", "notify"):
        return Decision("errno", err if err else _errno.EPERM, rule, act)
    if act == "trap":
        return Decision("errno", _errno.ENOSYS, rule, act)
    return Decision("errno", _errno.EPERM, rule, act)


# --- reading the caller --------------------------------------------------------

def proc_identity(tid: int) -> dict:
    """pid (tgid), tid, sandbox_pid, comm, exe of a host thread id. Missing pieces omitted."""
    out: dict[str, Any] = {"tid": tid}
    base = f"/proc/{tid}"
    try:
        with open(f"{base}/status", "rb") as f:
            for line in f:
                if line.startswith(b"Tgid:"):
                    out["pid"] = int(line.split()[1])
                elif line.startswith(b"NStgid:"):      # the process (not thread) id inside
                    out["sandbox_pid"] = int(line.split()[-1])
    except (OSError, ValueError, IndexError):
        pass
    try:
        with open(f"{base}/comm", "rb") as f:
            out["comm"] = f.read().rstrip(b"\n").decode(errors="replace")
    except OSError:
        pass
    try:
        out["exe"] = os.readlink(f"{base}/exe")
    except OSError:
        pass
    out.setdefault("pid", tid)
    return out


def read_string(memfd: int, addr: int, limit: int = MAX_STRING) -> Optional[str]:
    """A NUL-terminated string from another process's memory (page by page)."""
    if not addr:
        return None
    out = bytearray()
    while len(out) < limit:
        chunk = min(4096 - (addr % 4096), limit - len(out))
        try:
            data = os.pread(memfd, chunk, addr)
        except OSError:
            break
        if not data:
            break
        i = data.find(b"\0")
        if i >= 0:
            out += data[:i]
            return out.decode(errors="replace")
        out += data
        addr += len(data)
    return out.decode(errors="replace") if out else None


def read_u64(memfd: int, addr: int) -> Optional[int]:
    if not addr:
        return None
    try:
        data = os.pread(memfd, 8, addr)
    except OSError:
        return None
    return _U64.unpack(data)[0] if len(data) == 8 else None


def read_arguments(tid: int, name: Optional[str], args) -> dict:
    """Strings, fd targets and clone3 flags the caller passed (best effort)."""
    from audit.techniques import ARG_NAMES, FD_ARGS, PATH_ARG, STRING_ARGS
    names = ARG_NAMES.get(name or "", {})
    out: dict[str, Any] = {}
    decoded: dict[str, Any] = {}
    idx = STRING_ARGS.get(name or "", ())
    if idx or name == "clone3":
        try:
            memfd = os.open(f"/proc/{tid}/mem", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            memfd = -1
        if memfd >= 0:
            try:
                for i in idx:
                    s = read_string(memfd, args[i])
                    if s is not None:
                        decoded[names.get(i, f"arg{i}")] = s
                if name == "clone3":
                    fl = read_u64(memfd, args[0])
                    if fl is not None:
                        out["clone3_flags"] = fl
            finally:
                os.close(memfd)
    for i in FD_ARGS.get(name or "", ()):
        fd = args[i] & 0xFFFFFFFF
        if fd >= 0x80000000:           # AT_FDCWD and other negatives
            continue
        try:
            decoded[f"fd{i}" if i not in names else names[i]] = os.readlink(f"/proc/{tid}/fd/{fd}")
        except OSError:
            pass
    pi = PATH_ARG.get(name or "")
    key = names.get(pi, f"arg{pi}") if pi is not None else None
    if key is not None and key in decoded:
        out["path"] = decoded[key]
    if decoded:
        out["decoded"] = decoded
    return out


# --- the supervisors -----------------------------------------------------------

class Handle:
    """A running supervisor thread. stop() drains, ends it and joins; idempotent."""

    def __init__(self, sup: "_Base"):
        self._sup = sup

    @property
    def stats(self) -> dict:
        return dict(self._sup.stats)

    def alive(self) -> bool:
        return self._sup.thread.is_alive()

    def stop(self, timeout: Optional[float] = 10.0) -> dict:
        self._sup.request_stop()
        self._sup.thread.join(timeout)
        self._sup.close()
        return self.stats

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Wait for the thread to end by itself (POLLHUP: all sandbox tasks are gone)."""
        self._sup.thread.join(timeout)
        return not self._sup.thread.is_alive()


class _Base:
    via = "user_notif"

    def __init__(self, fd: Optional[int], seccomp_plan, on_event: OnEvent, read_memory: bool = True,
                 fd_source: Optional[Callable[[], int]] = None, throttle=None):
        self.throttle = throttle          # audit.throttle.Throttle, or None: every event in full
        self.fd = fd if fd is not None else -1
        self._fd_source = fd_source
        self.plan = seccomp_plan
        self.on_event = on_event
        self.read_memory = read_memory
        self.stats = {"received": 0, "answered": 0, "killed": 0, "vanished": 0, "record_errors": 0,
                      "coalesced": 0, "paced_s": 0.0}
        self._buf = bytearray(NOTIF.size)
        self._finished = False
        self._wake_r = self._wake_w = -1
        self._stopping = False
        self._closed = False
        self._thread: Optional[threading.Thread] = None

    @property
    def thread(self) -> threading.Thread:
        """The supervising thread (and its wake-up pipe), made on first use: a launch server that
        drives _one() from its own poll loop (inline) needs neither."""
        if self._thread is None:
            self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
            self._thread = threading.Thread(target=self._run, name=f"pysandbox-{self.__class__.__name__}",
                                            daemon=True)
        return self._thread

    def request_stop(self) -> None:
        self._stopping = True
        if self._wake_w < 0:
            return
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass

    def close(self) -> None:
        if self._closed or self._thread is not None and self._thread.is_alive():
            return
        self._closed = True
        for fd in (self.fd, self._wake_r, self._wake_w):
            if fd < 0:
                continue
            try:
                os.close(fd)
            except OSError:
                pass

    def _run(self) -> None:
        if self.fd < 0:
            try:
                self.fd = self._fd_source()        # e.g. recv_listener: EOF when no filter came
            except OSError as e:
                self.stats["no_listener"] = e.strerror or str(e)
                return
        poller = select.poll()
        poller.register(self.fd, select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        try:
            while True:
                ready = dict(poller.poll(0 if self._stopping else self._flush_timeout()))
                if not ready and not self._stopping:
                    self.flush_due()              # a coalesced record's time came without a new call
                    continue
                m = ready.get(self.fd, 0)
                if m & select.POLLIN:
                    self._one()
                    continue                      # drain before looking at HUP/stop
                if m & (select.POLLHUP | select.POLLERR | select.POLLNVAL):
                    break                         # no task uses the filter any more
                if self._stopping and not m:
                    break
                if self._wake_r in ready and not self._stopping:
                    self._stopping = True
        except Exception as e:  # noqa: BLE001 - report, never hang the launcher
            self.stats["error"] = f"{type(e).__name__}: {e}"
        finally:
            self.finish()

    def finish(self) -> None:
        """No more calls will come: write the pending coalesced records and the
        audit_suppressed summary (once)."""
        if self._finished:
            return
        self._finished = True
        if self.throttle is not None:
            for etype, fields in self.throttle.finish():
                self.record(etype, fields)

    def _one(self) -> None:
        n = notif_recv(self.fd, self._buf)
        if n is None:
            self.stats["vanished"] += 1
            return
        self.stats["received"] += 1
        self.handle(n)

    def describe(self, n: Notification) -> tuple[Optional[str], dict]:
        name = _NAMES.name(n.arch, n.nr)
        info = proc_identity(n.pid)
        extra: dict[str, Any] = {}
        if self.read_memory:
            try:
                extra = read_arguments(n.pid, name, n.args)
            except Exception:  # noqa: BLE001
                extra = {}
        # The data above is only trustworthy if the caller is still the one blocked in
        # this notification (pid reuse): re-validate the id after reading.
        if not notif_id_valid(self.fd, n.id):
            info = {"tid": n.pid, "pid": n.pid}
            extra = {}
        return name, {**info, **extra}

    def record(self, etype: str, fields: dict) -> None:
        try:
            self.on_event(etype, **fields)
        except Exception:  # noqa: BLE001 - a broken sink must not wedge the sandbox
            self.stats["record_errors"] += 1

    def coalesced(self, etype: str, fields: dict) -> bool:
        """Rate limit (audit/throttle.py), asked with the call's cheap fields before anything is
        read from /proc: True when the call was only counted. Then waits as the throttle's pace
        says (bounds the supervisor's CPU under a flood: the flooding calls just take longer)."""
        thr = self.throttle
        if thr is None:
            return False
        if thr.admit(etype, fields):
            return False
        self.stats["coalesced"] += 1
        delay = thr.pace()
        if delay > 0:
            if self._inline_pace is not None:
                self._inline_pace(delay)
            else:
                import time
                time.sleep(delay)
            self.stats["paced_s"] += delay
        return True

    _inline_pace = None      # set by Supervision for the launch server's loop (no sleeping there)

    def _flush_timeout(self) -> Optional[int]:
        """poll() timeout (ms) until the throttle's next coalesced record is due; None: none."""
        thr = self.throttle
        nd = thr.next_due() if thr is not None else None
        if nd is None:
            return None
        import time
        return max(0, int((nd - time.monotonic()) * 1000)) + 1

    def flush_due(self) -> None:
        thr = self.throttle
        if thr is not None:
            for etype, fields in thr.due():
                self.record(etype, fields)

    def handle(self, n: Notification) -> None:  # pragma: no cover - abstract
        raise NotImplementedError


def _event(name, n: Notification, info: dict, action: str, err: Optional[int], via: str, **more):
    from audit.events import syscall_event_fields
    clone3_flags = info.pop("clone3_flags", None)
    decoded = info.pop("decoded", None)
    return syscall_event_fields(name, n.nr, n.args, action, errno=err, via=via,
                                arch=AUDIT_ARCH_NAMES.get(n.arch, hex(n.arch)), decoded=decoded,
                                clone3_flags=clone3_flags, **info, **more)


class _Enforcing(_Base):
    """Records, then answers with the policy's errno, or kills the sandbox. Never continues."""

    def __init__(self, fd, seccomp_plan, on_event, kill_sandbox, read_memory=True, fd_source=None,
                 throttle=None):
        super().__init__(fd, seccomp_plan, on_event, read_memory, fd_source, throttle)
        self.kill_sandbox = kill_sandbox

    def handle(self, n: Notification) -> None:
        answered = False
        try:
            name = _NAMES.name(n.arch, n.nr)
            d = decide(self.plan, name, n.args)
            if d.action != "kill" and self.throttle is not None:
                # the cheap fields first: a call over the rate limit is answered and counted
                # without reading the caller's /proc (a clone3's flags are read: they decide its kind)
                info = read_arguments(n.pid, name, n.args) if name == "clone3" and self.read_memory else {}
                etype, cheap = _event(name, n, {k: v for k, v in info.items() if k == "clone3_flags"},
                                      d.action, d.errno, self.via, rule=d.rule)
                if self.coalesced(etype, cheap):
                    ok = notif_send_errno(self.fd, n.id, d.errno or _errno.EPERM)
                    answered = True
                    self.stats["answered" if ok else "vanished"] += 1
                    self.flush_due()
                    return
            name, info = self.describe(n)
            etype, fields = _event(name, n, info, d.action, d.errno, self.via, rule=d.rule)
            self.record(etype, fields)
            if d.action == "kill":
                answered = True          # never answer a killed call
                self._kill(n, info)
                return
            ok = notif_send_errno(self.fd, n.id, d.errno or _errno.EPERM)
            answered = True
            self.stats["answered" if ok else "vanished"] += 1
            self.flush_due()
        finally:
            if not answered:             # whatever failed above: the call is denied
                try:
                    notif_send_errno(self.fd, n.id, _errno.EPERM)
                except OSError:
                    pass

    def _kill(self, n: Notification, info: dict) -> None:
        self.stats["killed"] += 1
        try:
            if self.kill_sandbox is not None:
                self.kill_sandbox()
                return
        except Exception:  # noqa: BLE001
            pass
        # No callback (or it failed): kill at least the offending process, race-free.
        tgid = info.get("pid", n.pid)
        try:
            from . import _sys
            pfd = _sys.pidfd_open(tgid)
            try:
                if notif_id_valid(self.fd, n.id):
                    _sys.pidfd_send_signal(pfd, signal.SIGKILL)
            finally:
                os.close(pfd)
        except OSError:
            pass


def throttle_for(seccomp_plan):
    """The per-sandbox audit rate limit the plan asks for (seccomp.audit_rate / audit_burst;
    defaults in audit/throttle.py, bounded there whatever the profile says)."""
    from audit.throttle import DEFAULT_BURST, DEFAULT_RATE, Throttle
    return Throttle(rate=getattr(seccomp_plan, "audit_rate", None) or DEFAULT_RATE,
                    burst=getattr(seccomp_plan, "audit_burst", None) or DEFAULT_BURST)


def start(listener_fd: int, seccomp_plan, on_event: OnEvent,
          kill_sandbox: Optional[Callable[[], Any]] = None, *, read_memory: bool = True,
          throttle: Any = None) -> Handle:
    """Supervise a seccomp listener in a thread (enforcing: errno answers, kill rules kill).

    listener_fd:  from recv_listener(); owned by the supervisor from now on (closed by stop()).
    seccomp_plan: policies.plan.Seccomp — the rules the filter was compiled from.
    on_event:     on_event(type, **fields) -> ignored; e.g. audit.Recorder.emit.
    kill_sandbox: called (no arguments) after a kill rule was recorded; must kill every
                  process of the sandbox. Without it the offending process gets SIGKILL.
    throttle:     the audit rate limit (audit.throttle.Throttle); None: the plan's
                  (throttle_for); False: none, every call recorded in full (tests, tools).
    """
    if throttle is None:
        throttle = throttle_for(seccomp_plan)
    sup = _Enforcing(listener_fd, seccomp_plan, on_event, kill_sandbox, read_memory,
                     throttle=throttle or None)
    sup.thread.start()
    return Handle(sup)


# --- learn mode: the ONLY place a notified call is allowed to run ----------------

class _Learning(_Base):
    """Learn mode (`pysandbox learn`): records every call the base profile would deny and
    lets it run (SECCOMP_USER_NOTIF_FLAG_CONTINUE). Not a security boundary: the
    profile is not enforced in learn mode, by design and by documentation."""

    def handle(self, n: Notification) -> None:
        try:
            if self.throttle is not None:
                # the same rate limit as enforcing: the first call of each kind (so every syscall
                # name the program used) is recorded in full; repeats beyond the rate only counted
                name = _NAMES.name(n.arch, n.nr)
                info = read_arguments(n.pid, name, n.args) if name == "clone3" and self.read_memory else {}
                etype, cheap = _event(name, n, {k: v for k, v in info.items() if k == "clone3_flags"},
                                      "allow", None, self.via, rule=decide(self.plan, name, n.args).rule)
                if self.coalesced(etype, cheap):
                    self.flush_due()
                    return
            name, info = self.describe(n)
            d = decide(self.plan, name, n.args)
            etype, fields = _event(name, n, info, "allow", None, self.via, rule=d.rule,
                                   message=f"learn mode: would be {d.policy_action}"
                                           + (f" ({_errno.errorcode.get(d.errno, d.errno)})"
                                              if d.action == "errno" else ""))
            self.record(etype, fields)
            self.flush_due()
        finally:
            if _send(self.fd, NOTIF_RESP.pack(n.id, 0, 0, SECCOMP_USER_NOTIF_FLAG_CONTINUE)):
                self.stats["answered"] += 1


def start_learning(listener_fd: int, seccomp_plan, on_event: OnEvent, *, read_memory: bool = True) -> Handle:
    """Learn-mode supervisor: record and let the call run. Never use for enforcement."""
    sup = _Learning(listener_fd, seccomp_plan, on_event, read_memory)
    sup.thread.start()
    return Handle(sup)


# --- launcher glue -------------------------------------------------------------

HANDOVER_CALLS = ("sendmsg", "close")


_PLAN_FACTS: dict = {}     # id(seccomp plan) -> (plan, {question: answer}): plans are frozen


def _fact(s, question, compute):
    """A fact about a (frozen, immutable) seccomp plan, computed once per plan object: a launch
    server asks the same questions of the same plan at every launch."""
    entry = _PLAN_FACTS.get(id(s))
    if entry is None or entry[0] is not s:
        if len(_PLAN_FACTS) > 256:
            _PLAN_FACTS.clear()
        entry = _PLAN_FACTS[id(s)] = (s, {})
    facts = entry[1]
    if question not in facts:
        facts[question] = compute()
    return facts[question]


def plan_allows(s, name: str) -> bool:
    """Does the plan allow `name` for every argument? (unconditional allow rule, or no rule
    and an allowing default)."""
    return _fact(s, ("allows", name), lambda: _plan_allows(s, name))


def _plan_allows(s, name: str) -> bool:
    from policies.seccomp_verdict import fixed_verdict
    v = fixed_verdict(s, name)
    return v is not None and v[0] in ("allow", "log")


class Supervision:
    """What the launcher needs, in three calls:

        sup = Supervision(plan.seccomp, bpf, on_event, learn=False)   # before clone
        ctx.notify_sock = sup.child_sock; ctx.bpf = sup.bpf; ctx.seccomp_log = sup.log_flag
        sup.started(pid, kill_sandbox)                                # after clone, before "go"
        ... waitpid ...
        sup.stop()                                                    # after the sandbox is gone
        if sup.killed: exit 128+SIGSYS

    Mode "user_notif": the program sends its listener over child_sock; a thread receives
    it and supervises. Mode "kmsg": user notification unavailable: the filter is rebuilt
    without notify rules and loaded with SECCOMP_FILTER_FLAG_LOG; /dev/kmsg is watched for
    the sandbox's pids. Mode None: nothing to supervise (no deny rules, seccomp off).
    """

    def __init__(self, seccomp_plan, bpf: Optional[bytes], on_event: OnEvent, *, learn: bool = False,
                 learn_plan=None):
        self.plan = seccomp_plan
        self.bpf = bpf
        self.on_event = on_event
        self.learn = learn
        self.learn_plan = learn_plan if learn_plan is not None else seccomp_plan
        self.mode: Optional[str] = None
        self.child_sock: Optional[socket.socket] = None
        self.log_flag = False
        self.killed: Optional[str] = None
        self.warning: Optional[str] = None
        self._parent: Optional[socket.socket] = None
        self._handle: Optional[Handle] = None
        self._match = None
        self._snap = None
        self._inline: Optional[_Base] = None
        self._inline_done = False
        self._paced_until = 0.0
        if seccomp_plan is None or not getattr(seccomp_plan, "enabled", False) or not bpf:
            return
        from . import seccomp as _sc
        if not learn and not _sc.needs_listener(seccomp_plan):
            return
        if user_notif_available():
            # The program hands the listener over with sendmsg and closes it, *after* its filter
            # is loaded: if the policy denied those through notification, the program would
            # wait for a supervisor that waits for the listener. Refuse such a plan up front.
            for call in HANDOVER_CALLS:
                if not plan_allows(seccomp_plan, call):
                    raise ValueError(f"notify_denials needs {call} allowed (the program hands its "
                                                 f"seccomp listener to the supervisor with it)")
            self.mode = "user_notif"
            if not learn and self._has_kill(seccomp_plan):
                # kill rules are recorded first, then the sandbox is killed: they must
                # reach the supervisor (as notify); the supervisor's plan still says kill.
                self.bpf = _fact(seccomp_plan, "bpf_kill_as_notify",
                                 lambda: _sc.build_bpf(_kill_as_notify(seccomp_plan)))
            self._parent, self.child_sock = socket.socketpair(socket.AF_UNIX,
                                                              socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
            return
        if learn:
            raise OSError(_errno.ENOSYS, "learn mode needs seccomp user notification")
        # Fallback: plain errno/kill rules, logged by the kernel.
        from dataclasses import replace
        self.bpf = _fact(seccomp_plan, "bpf_kmsg",
                         lambda: _sc.build_bpf(replace(seccomp_plan, notify_denials=False)))
        self.log_flag = True
        self._known: set = set()
        try:
            self._handle = start_kmsg(seccomp_plan, self._record, self._match_pid, throttle=None)
            self.mode = "kmsg"
        except OSError as e:
            self.warning = (f"seccomp denials are enforced but not recorded: no user notification on "
                            f"this kernel and /dev/kmsg is not readable ({e.strerror})")

    @staticmethod
    def _has_kill(s) -> bool:
        return _fact(s, "has_kill", lambda: getattr(s, "default_action", None) == "kill"
                     or any(r.action == "kill" for r in s.rules))

    def _record(self, etype: str, **fields) -> Any:
        if fields.get("action") == "kill" and self.killed is None:
            self.killed = (fields.get("syscall") or {}).get("name") or "?"
        return self.on_event(etype, **fields)

    def _match_pid(self, pid: int) -> bool:
        m = self._match
        return m(pid) if m is not None else False

    def started(self, pid: int, kill_sandbox: Optional[Callable[[], Any]] = None, ctx=None, *,
                inline: bool = False) -> None:
        """The sandbox's first process exists (host pid `pid`); call before releasing it.
        With ctx (the launcher's context), also snapshot what the integrity checks compare.
        inline=True: no thread; the caller's poll loop watches inline_fds() and calls
        inline_ready() (the API's launch server supervises every sandbox in one loop)."""
        if ctx is not None:
            self._snapshot(pid, ctx)
        if self.warning:
            try:
                self.on_event("audit_lost", message=self.warning, via="supervisor")
            except Exception:  # noqa: BLE001
                pass
        if self.mode == "kmsg":
            self._match = pidns_matcher(pid)
            return
        if self.mode != "user_notif":
            return
        self.child_sock.close()
        parent = self._parent

        def fd_source() -> int:
            return recv_listener(parent, timeout=None)
        if self.learn:
            sup: _Base = _Learning(None, self.learn_plan, self._record, True, fd_source,
                                   throttle=throttle_for(self.learn_plan))
        else:
            sup = _Enforcing(None, self.plan, self._record, kill_sandbox, True, fd_source,
                             throttle=throttle_for(self.plan))
        if inline:
            sup._inline_pace = self._pace_inline
            self._inline = sup
            return
        sup.thread.start()
        self._handle = Handle(sup)

    # --- inline supervision (no thread): driven by the caller's poll loop ---------------------
    def inline_fds(self) -> tuple:
        """Descriptors to poll for POLLIN now: the socket the listener arrives on, then the
        listener itself; () when there is nothing (more) to supervise."""
        sup = self._inline
        if sup is None or self._inline_done:
            return ()
        if sup.fd < 0:
            return (self._parent.fileno(),) if self._parent is not None else ()
        if self._paced_until:
            import time
            if time.monotonic() < self._paced_until:
                return ()                 # over the audit pace: not polled until inline_wakeup()
            self._paced_until = 0.0
        return (sup.fd,)

    def _pace_inline(self, delay: float) -> None:
        import time
        self._paced_until = time.monotonic() + delay

    def inline_wakeup(self) -> Optional[float]:
        """Monotonic time at which the caller's loop should call inline_tick(): a paced flood's
        listener is polled again, or a coalesced record is due. None: nothing to wait for."""
        sup = self._inline
        nd = sup.throttle.next_due() if sup is not None and sup.throttle is not None else None
        times = [t for t in (self._paced_until or None, nd) if t is not None]
        return min(times) if times else None

    def inline_tick(self) -> None:
        """inline_wakeup()'s time came: write the coalesced records that are due."""
        sup = self._inline
        if sup is not None and not self._inline_done:
            try:
                sup.flush_due()
            except Exception as e:  # noqa: BLE001 - reported in stats, never a dead launch server
                sup.stats["error"] = f"{type(e).__name__}: {e}"

    def inline_ready(self, fd: int, events: int) -> None:
        """One of inline_fds() is ready: take the listener, or answer one notification."""
        sup = self._inline
        if sup is None or self._inline_done:
            return
        try:
            if sup.fd < 0:
                sup.fd = recv_listener(self._parent, timeout=0)      # readable: no wait
            elif events & select.POLLIN:
                sup._one()
            elif events & (select.POLLHUP | select.POLLERR | select.POLLNVAL):
                self._inline_done = True                            # no task uses the filter any more
        except OSError as e:            # EOF: the program ended before it loaded its filter
            sup.stats["no_listener" if sup.fd < 0 else "error"] = e.strerror or str(e)
            self._inline_done = True
        except Exception as e:  # noqa: BLE001 - reported in stats, never a dead launch server
            sup.stats["error"] = f"{type(e).__name__}: {e}"
            self._inline_done = True

    def _stop_inline(self) -> dict:
        sup = self._inline
        self._inline = None
        if sup.fd >= 0 and not self._inline_done:       # answer what is still queued
            p = select.poll()
            p.register(sup.fd, select.POLLIN)
            try:
                while any(ev & select.POLLIN for _, ev in p.poll(0)):
                    sup._one()
            except Exception as e:  # noqa: BLE001
                sup.stats["error"] = f"{type(e).__name__}: {e}"
        sup.finish()
        sup.close()
        return dict(sup.stats)

    def _snapshot(self, pid: int, ctx) -> None:
        try:
            from audit import integrity
            from .rootfs import BASE
            plan = ctx.plan
            ro = [m.source for m in plan.filesystem.mounts if m.type == "bind" and m.read_only and m.source]
            ro += list(getattr(getattr(ctx, "image_root", None), "lowers", None) or ())
            self._snap = integrity.Snapshot.take(pid, ro_paths=ro, mount_prefixes=[BASE])
        except Exception as e:  # noqa: BLE001 - checks are best effort, reported
            self._snap = None
            self.warning = f"integrity snapshot failed: {e}"

    def integrity(self) -> list:
        """After the sandbox is gone and cleaned up: problems as launcher-style event dicts."""
        snap = getattr(self, "_snap", None)
        if snap is None:
            return []
        from audit import integrity
        try:
            found = integrity.check(snap)
        except Exception as e:  # noqa: BLE001
            return [{"type": "integrity_violation", "message": f"integrity checks failed: {e}"}]
        return [{"type": "integrity_violation", **f} for f in found]

    def stop(self) -> dict:
        """After the sandbox is gone: drain, end the thread, close everything."""
        if self._parent is not None:
            try:
                self._parent.shutdown(socket.SHUT_RDWR)     # unblocks a receiver still waiting
            except OSError:
                pass
        if self._inline is not None:
            stats = self._stop_inline()
        else:
            stats = self._handle.stop() if self._handle is not None else {}
        if self._parent is not None:
            self._parent.close()
            self._parent = None
        if self.child_sock is not None and self.child_sock.fileno() >= 0:
            self.child_sock.close()
        return stats


def _kill_as_notify(s):
    from dataclasses import replace
    rules = tuple(replace(r, action="notify", errno=None) if r.action == "kill" else r for r in s.rules)
    return replace(s, rules=rules, default_action="notify" if s.default_action == "kill" else s.default_action)


# --- fallback: kernel audit records on /dev/kmsg ---------------------------------

_KMSG_RE = re.compile(r"audit: type=1326 .*?\bpid=(\d+)\b.*?\bcomm=(\"[^\"]*\"|\S+).*?"
                      r"\bexe=(\"[^\"]*\"|\S+).*?\bsig=(\d+)\b.*?\barch=([0-9a-f]+)\b.*?"
                      r"\bsyscall=(\d+)\b.*?\bcode=0x([0-9a-f]+)")
_LOST_RE = re.compile(r"audit: (printk limit exceeded|audit_lost=(\d+))")


def parse_kmsg_record(line: str) -> Optional[dict]:
    """A /dev/kmsg line with an AUDIT_SECCOMP (type=1326) record -> its fields."""
    m = _KMSG_RE.search(line)
    if not m:
        return None

    def unq(s: str) -> str:
        if s.startswith('"') and s.endswith('"'):
            return s[1:-1]
        try:                            # audit hex-encodes values with spaces/quotes
            return bytes.fromhex(s).decode(errors="replace")
        except ValueError:
            return s
    code = int(m.group(7), 16)
    return {"pid": int(m.group(1)), "comm": unq(m.group(2)), "exe": unq(m.group(3)),
            "sig": int(m.group(4)), "arch": int(m.group(5), 16), "nr": int(m.group(6)), "code": code}


def code_action(code: int) -> tuple[str, Optional[int]]:
    act = code & SECCOMP_RET_ACTION_FULL
    if act in (RET_KILL_PROCESS, RET_KILL_THREAD):
        return "kill", None
    if act == RET_ERRNO:
        return "errno", code & SECCOMP_RET_DATA
    if act == RET_TRAP:
        return "trap", None
    if act == RET_LOG:
        return "log", None
    if act == RET_USER_NOTIF:
        return "notify", _errno.ENOSYS
    if act == RET_ALLOW:
        return "allow", None
    return "errno", None


def _errno_without_args(seccomp_plan, name: Optional[str]) -> int:
    for r in getattr(seccomp_plan, "rules", ()) or ():
        if r.name == name and r.action in ("errno", "notify"):
            return r.errno or _errno.EPERM
    if seccomp_plan is not None and getattr(seccomp_plan, "default_action", None) == "errno":
        return seccomp_plan.default_errno or _errno.EPERM
    return _errno.EPERM


def pidns_matcher(root_pid: int) -> Callable[[int], bool]:
    """match(pid): is host pid `pid` in the pid namespace of `root_pid` (the sandbox's pid 1
    or its program)? Pids once matched are remembered (a killed process has no /proc)."""
    try:
        ns = os.stat(f"/proc/{root_pid}/ns/pid").st_ino
    except OSError:
        ns = None
    known = {root_pid}

    def match(pid: int) -> bool:
        if pid in known:
            return True
        if ns is None:
            return False
        try:
            if os.stat(f"/proc/{pid}/ns/pid").st_ino == ns:
                if len(known) < 65536:
                    known.add(pid)
                return True
        except OSError:
            pass
        # gone from its namespaces already (exited: a zombie has no namespace links): its parent
        # tells — PID 1 keeps dead children unreaped for a moment in this mode (sandbox/init.py)
        try:
            with open(f"/proc/{pid}/status") as f:
                ppid = next((int(line.split()[1]) for line in f if line.startswith("PPid:")), 0)
        except (OSError, ValueError):
            return False
        if ppid and (ppid in known or ppid != pid and match(ppid)):
            if len(known) < 65536:
                known.add(pid)
            return True
        return False
    match.known = known  # type: ignore[attr-defined]
    return match


class _Kmsg:
    via = "kmsg"

    def __init__(self, seccomp_plan, on_event: OnEvent, match_pid: Callable[[int], bool],
                 kmsg_path: str = "/dev/kmsg", throttle=None):
        self.throttle = throttle
        self.plan = seccomp_plan
        self.on_event = on_event
        self.match = match_pid
        self.stats = {"received": 0, "matched": 0, "lost_notices": 0, "record_errors": 0}
        # Open before the sandbox starts and skip what is already there.
        self.fd = os.open(kmsg_path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        os.lseek(self.fd, 0, os.SEEK_END)
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._stopping = False
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="pysandbox-kmsg", daemon=True)

    thread = property(lambda self: self._thread)
    request_stop = _Base.request_stop

    def close(self) -> None:
        _Base.close(self)  # type: ignore[arg-type]

    def _run(self) -> None:
        poller = select.poll()
        poller.register(self.fd, select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        try:
            while True:
                ready = dict(poller.poll(None if not self._stopping else 0))
                if ready.get(self.fd, 0) & select.POLLIN:
                    self._drain()
                    continue
                if self._stopping:
                    self._drain()
                    break
                if self._wake_r in ready:
                    self._stopping = True
        except Exception as e:  # noqa: BLE001
            self.stats["error"] = f"{type(e).__name__}: {e}"
        finally:
            if self.throttle is not None:
                for etype, fields in self.throttle.finish():
                    self._record(etype, fields)

    def _drain(self) -> None:
        while True:
            try:
                rec = os.read(self.fd, 8192)
            except BlockingIOError:
                return
            except OSError as e:
                if e.errno == _errno.EPIPE:      # overwritten in the ring buffer: go on
                    continue
                raise
            if not rec:
                return
            self._line(rec.decode(errors="replace"))

    def _line(self, line: str) -> None:
        self.stats["received"] += 1
        msg = line.split(";", 1)[-1]
        r = parse_kmsg_record(msg)
        if r is None:
            lm = _LOST_RE.search(msg)
            if lm:
                self.stats["lost_notices"] += 1
                self._record("audit_lost", {"via": "kmsg", "message": f"kernel: {lm.group(0)}"})
            return
        if not self.match(r["pid"]):
            return
        self.stats["matched"] += 1
        action, _ = code_action(r["code"])
        name = _NAMES.name(r["arch"], r["nr"])
        err = None
        if action == "errno":
            # The kernel logs the action without its data: the errno comes from the plan
            # (arguments are unknown here, so the first deny rule for the name decides).
            err = _errno_without_args(self.plan, name)
        from audit.events import syscall_event_fields
        etype, fields = syscall_event_fields(
            name, r["nr"], None, action, errno=err, via="kmsg",
            arch=AUDIT_ARCH_NAMES.get(r["arch"], hex(r["arch"])), pid=r["pid"], comm=r["comm"],
            exe=r["exe"], rule=None)
        thr = self.throttle
        if thr is not None:
            if not thr.admit(etype, fields):
                return
            for t, f in thr.due():
                self._record(t, f)
        self._record(etype, fields)

    def _record(self, etype: str, fields: dict) -> None:
        try:
            self.on_event(etype, **fields)
        except Exception:  # noqa: BLE001
            self.stats["record_errors"] += 1


def start_kmsg(seccomp_plan, on_event: OnEvent, match_pid: Callable[[int], bool],
               kmsg_path: str = "/dev/kmsg", throttle: Any = None) -> Handle:
    """Fallback recorder: kernel audit records (type=1326) of the sandbox's pids.
    Open it BEFORE the sandbox runs (records before the open are skipped). Needs read
    access to /dev/kmsg (root, or kernel.dmesg_restrict=0). Raises OSError otherwise."""
    sup = _Kmsg(seccomp_plan, on_event, match_pid, kmsg_path,
                throttle=throttle_for(seccomp_plan) if throttle is None else (throttle or None))
    sup.thread.start()
    return Handle(sup)  # type: ignore[arg-type]
