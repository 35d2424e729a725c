"""The launcher's glue: one sandbox's audit supervision — the listener it receives, the
supervisor that answers it (in a thread, or inline in a caller's poll loop), the kmsg fallback,
and the integrity snapshot compared after the run. The filters are decided before, in one
place (sandbox/seccomp.py, filters); this module only supervises."""
from __future__ import annotations

import select
import socket

TYPE_CHECKING = False  # annotations only (postponed): importing typing is ~2 ms of the launch path
if TYPE_CHECKING:
    from typing import Any, Callable, Optional

from .listener import recv_listener
from .supervisor import Enforcing, Handle, Learning, Supervisor, throttle_for

if TYPE_CHECKING:
    from .supervisor import OnEvent


class Supervision:
    """What the launcher needs, in three calls:

        f = seccomp.filters(plan.seccomp, bpf, audit=True)            # the run's filters
        sup = Supervision(f, plan.seccomp, on_event)                  # before clone
        ctx.notify_sock = sup.child_sock
        sup.started(pid, kill_sandbox)                                # after clone, before "go"
        ... waitpid ...
        sup.stop()                                                    # after the sandbox is gone
        if sup.killed: exit 128+SIGSYS

    Mode "user_notif": the program sends its listener over child_sock; a thread receives
    it and supervises. Mode "kmsg": user notification unavailable: the filter has no notify
    rules and is loaded with SECCOMP_FILTER_FLAG_LOG; /dev/kmsg is watched for the sandbox's
    pids. Mode None: nothing to supervise (no deny rules, seccomp off).
    learn_plan: learn mode (the filters were decided with learn=True): the base profile's
    seccomp plan, whose verdicts the learn supervisor reports while it lets every call run.
    """

    def __init__(self, filters, seccomp_plan, on_event: OnEvent, *, learn_plan=None, landlock=None):
        self.plan = seccomp_plan
        self.landlock = landlock          # landlock_fallback.Predictor: the filter notifies Landlock's calls
        self.on_event = on_event
        self.learn_plan = learn_plan
        self.mode: Optional[str] = None
        self.child_sock: Optional[socket.socket] = None
        self.killed: Optional[str] = None
        self.warning: Optional[str] = None
        self._parent: Optional[socket.socket] = None
        self._handle: Optional[Handle] = None
        self._match = None
        self._snap = None
        self._inline: Optional[Supervisor] = None
        self._inline_done = False
        self._paced_until = 0.0
        if filters.mode == "user_notif":
            self.mode = "user_notif"
            self._parent, self.child_sock = socket.socketpair(socket.AF_UNIX,
                                                              socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        elif filters.mode == "kmsg":
            from .kmsg import start_kmsg            # (the fallback only: not on the launch path otherwise)
            try:
                self._handle = start_kmsg(seccomp_plan, self._record, self._match_pid, throttle=None)
                self.mode = "kmsg"
            except OSError as e:
                self.warning = (f"seccomp denials are enforced but not recorded: no user notification on "
                                f"this kernel and /dev/kmsg is not readable ({e.strerror})")

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
            from .kmsg import pidns_matcher
            self._match = pidns_matcher(pid)
            return
        if self.mode != "user_notif":
            return
        self.child_sock.close()
        parent = self._parent

        def fd_source() -> int:
            return recv_listener(parent, timeout=None)
        if self.learn_plan is not None:
            sup: Supervisor = Learning(None, self.learn_plan, self._record, True, fd_source,
                                       throttle=throttle_for(self.learn_plan))
        else:
            sup = Enforcing(None, self.plan, self._record, kill_sandbox, True, fd_source,
                            throttle=throttle_for(self.plan), landlock=self.landlock)
        if inline:
            sup.inline_pace = self._pace_inline
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
                sup.take_one()
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
                    sup.take_one()
            except Exception as e:  # noqa: BLE001
                sup.stats["error"] = f"{type(e).__name__}: {e}"
        sup.finish()
        sup.close()
        return dict(sup.stats)

    def _snapshot(self, pid: int, ctx) -> None:
        try:
            from audit import integrity
            from ..rootfs import BASE
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
            found = integrity.check(snap, sandbox_mounts=_sandbox_mounts)
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


def _sandbox_mounts(ns_fds: dict):
    """integrity.check's reader of the sandbox's own mount table (only when a host mount appeared)."""
    from ..nsmounts import mountinfo
    return mountinfo(ns_fds)
