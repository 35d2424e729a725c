"""The supervisors of a seccomp listener: take one notification at a time, decide
(decision.decide), record (through on_event, rate-limited by audit/throttle.py), answer.

Enforcing (start): records, then answers with the policy's errno, or kills the sandbox; never
lets a call run. Learning (start_learning, `pysandbox learn` only): records and lets the call run.
Each runs in a thread of its own, or is driven by a caller's poll loop (supervision.Supervision,
inline: the API's launch server)."""
from __future__ import annotations

import errno as _errno
import os
import select
import signal
import threading

TYPE_CHECKING = False  # annotations only (postponed): importing typing is ~2 ms of the launch path
if TYPE_CHECKING:
    from typing import Any, Callable, Optional

from .caller import event_fields, read_arguments, proc_identity
from .decision import decide
from .ioctl import NOTIF, Notification, notif_id_valid, notif_recv, notif_send_continue, notif_send_errno

if TYPE_CHECKING:
    OnEvent = Callable[..., Any]          # on_event(type, **fields), e.g. audit.Recorder.emit


def _name(n: Notification) -> Optional[str]:
    # imported at the first notification, not with this module: the launch path imports this
    # module and most runs are never notified (policies.syscalls would grow `pysandbox run`'s imports)
    from policies.syscalls import syscall_name
    return syscall_name(n.nr, n.arch)


class Handle:
    """A running supervisor thread. stop() drains, ends it and joins; idempotent."""

    def __init__(self, sup):
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


class Supervisor:
    """What both supervisors share: the listener, the loop (a thread, or take_one() from a
    caller's loop), the rate limit, recording."""
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
        # set by supervision.Supervision for the launch server's loop (no sleeping there):
        # inline_pace(delay) instead of time.sleep(delay)
        self.inline_pace: Optional[Callable[[float], None]] = None

    @property
    def thread(self) -> threading.Thread:
        """The supervising thread (and its wake-up pipe), made on first use: a launch server that
        drives take_one() from its own poll loop (inline) needs neither."""
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
                    self.take_one()
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

    def take_one(self) -> None:
        """Receive and handle one pending notification (the listener is readable)."""
        n = notif_recv(self.fd, self._buf)
        if n is None:
            self.stats["vanished"] += 1
            return
        self.stats["received"] += 1
        self.handle(n)

    def describe(self, n: Notification) -> tuple[Optional[str], dict]:
        name = _name(n)
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
            if self.inline_pace is not None:
                self.inline_pace(delay)
            else:
                import time
                time.sleep(delay)
            self.stats["paced_s"] += delay
        return True

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


class Enforcing(Supervisor):
    """Records, then answers with the policy's errno, or kills the sandbox. Never continues a
    call the plan denies; a call the plan allows is only notified for the Landlock fallback
    (landlock: a landlock_fallback.Predictor), see landlock_call."""

    def __init__(self, fd, seccomp_plan, on_event, kill_sandbox, read_memory=True, fd_source=None,
                 throttle=None, landlock=None):
        super().__init__(fd, seccomp_plan, on_event, read_memory, fd_source, throttle)
        self.kill_sandbox = kill_sandbox
        self.landlock = landlock

    def landlock_call(self, n: Notification, name: Optional[str]) -> None:
        """A call the plan allows, notified because Landlock could deny it (landlock_fallback):
        predicted denied -> EACCES and a `landlock_denied` event; else it continues.
        SECCOMP_USER_NOTIF_FLAG_CONTINUE is safe here, unlike for a policy decision: the
        control is the kernel's Landlock ruleset, which still checks the call when it runs (a
        path swapped after this prediction is judged by Landlock, not by us); the notifier only
        observes, and answers first what Landlock would answer, to record it."""
        from .landlock_fallback import read_memory
        verdict = None
        try:
            read, read_u64, close, read_bytes = read_memory(n.pid)
            try:
                verdict = self.landlock.predict(n.pid, name, n.args, read, read_u64, read_bytes)
            finally:
                close()
            if verdict is not None and not notif_id_valid(self.fd, n.id):
                verdict = None           # read from a recycled pid: not this call's data
        except Exception:  # noqa: BLE001 - Landlock decides
            verdict = None
        if verdict is None:
            self.landlock.stats["continued"] += 1
            ok = notif_send_continue(self.fd, n.id)
            self.stats["answered" if ok else "vanished"] += 1
            return
        self.landlock.stats["predicted_denied"] += 1
        path, access = verdict
        fields = {"syscall": {"name": name, "nr": n.nr}, "action": "errno", "errno": _errno.EACCES,
                  "via": self.via}
        port = path.startswith("tcp port ") and path[9:].isdigit() and int(path[9:])
        if not self.coalesced("landlock_denied", fields):
            info = proc_identity(n.pid)
            if not notif_id_valid(self.fd, n.id):
                info = {"tid": n.pid, "pid": n.pid}
            acc = access.split(",")
            self.record("landlock_denied", {
                **fields, **info, **({} if port else {"path": path}),
                "detail": {"access": acc, "syscall": name, **({"port": port} if port else {})},
                "message": f"landlock denied {' '.join(acc)} on {path} ({name}; predicted by the notify layer)"})
        ok = notif_send_errno(self.fd, n.id, _errno.EACCES)
        self.stats["answered" if ok else "vanished"] += 1
        self.flush_due()

    def handle(self, n: Notification) -> None:
        answered = False
        try:
            name = None
            if self.landlock is not None:          # (its calls named without libseccomp)
                from .landlock_fallback import name_of
                name = name_of(n.nr, n.arch)
            name = name or _name(n)
            d = decide(self.plan, name, n.args)
            if self.landlock is not None and d.policy_action in ("allow", "log"):
                answered = True          # (landlock_call answers, whatever happens)
                self.landlock_call(n, name)
                return
            if d.action != "kill" and self.throttle is not None:
                # the cheap fields first: a call over the rate limit is answered and counted
                # without reading the caller's /proc (a clone3's flags are read: they decide its kind)
                info = read_arguments(n.pid, name, n.args) if name == "clone3" and self.read_memory else {}
                etype, cheap = event_fields(name, n, {k: v for k, v in info.items() if k == "clone3_flags"},
                                            d.action, d.errno, self.via, rule=d.rule)
                if self.coalesced(etype, cheap):
                    ok = notif_send_errno(self.fd, n.id, d.errno or _errno.EPERM)
                    answered = True
                    self.stats["answered" if ok else "vanished"] += 1
                    self.flush_due()
                    return
            name, info = self.describe(n)
            etype, fields = event_fields(name, n, info, d.action, d.errno, self.via, rule=d.rule)
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
            from .. import _sys
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
          throttle: Any = None, landlock=None) -> Handle:
    """Supervise a seccomp listener in a thread (enforcing: errno answers, kill rules kill).

    listener_fd:  from listener.recv_listener(); owned by the supervisor from now on (closed by stop()).
    seccomp_plan: policies.plan.Seccomp — the rules the filter was compiled from.
    on_event:     on_event(type, **fields) -> ignored; e.g. audit.Recorder.emit.
    kill_sandbox: called (no arguments) after a kill rule was recorded; must kill every
                  process of the sandbox. Without it the offending process gets SIGKILL.
    throttle:     the audit rate limit (audit.throttle.Throttle); None: the plan's
                  (throttle_for); False: none, every call recorded in full (tests, tools).
    landlock:     a landlock_fallback.Predictor (this listener's own) when the filter notifies
                  the calls Landlock could deny (landlock_fallback.notify_filter).
    """
    if throttle is None:
        throttle = throttle_for(seccomp_plan)
    sup = Enforcing(listener_fd, seccomp_plan, on_event, kill_sandbox, read_memory,
                    throttle=throttle or None, landlock=landlock)
    sup.thread.start()
    return Handle(sup)


# --- learn mode: the ONLY place a notified call is allowed to run ----------------

class Learning(Supervisor):
    """Learn mode (`pysandbox learn`): records every call the base profile would deny and
    lets it run (SECCOMP_USER_NOTIF_FLAG_CONTINUE). Not a security boundary: the
    profile is not enforced in learn mode, by design and by documentation."""

    def handle(self, n: Notification) -> None:
        try:
            if self.throttle is not None:
                # the same rate limit as enforcing: the first call of each kind (so every syscall
                # name the program used) is recorded in full; repeats beyond the rate only counted
                name = _name(n)
                info = read_arguments(n.pid, name, n.args) if name == "clone3" and self.read_memory else {}
                etype, cheap = event_fields(name, n, {k: v for k, v in info.items() if k == "clone3_flags"},
                                            "allow", None, self.via, rule=decide(self.plan, name, n.args).rule)
                if self.coalesced(etype, cheap):
                    self.flush_due()
                    return
            name, info = self.describe(n)
            d = decide(self.plan, name, n.args)
            etype, fields = event_fields(name, n, info, "allow", None, self.via, rule=d.rule,
                                         message=f"learn mode: would be {d.policy_action}"
                                                 + (f" ({_errno.errorcode.get(d.errno, d.errno)})"
                                                    if d.action == "errno" else ""))
            self.record(etype, fields)
            self.flush_due()
        finally:
            if notif_send_continue(self.fd, n.id):
                self.stats["answered"] += 1


def start_learning(listener_fd: int, seccomp_plan, on_event: OnEvent, *, read_memory: bool = True) -> Handle:
    """Learn-mode supervisor: record and let the call run. Never use for enforcement."""
    sup = Learning(listener_fd, seccomp_plan, on_event, read_memory)
    sup.thread.start()
    return Handle(sup)
