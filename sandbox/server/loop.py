"""The launch server's main loop (sandbox/server/): one poll loop starting and supervising every
sandbox of its API process — launch requests on the control socket, PID 1 pidfds, deadlines, the
audit's seccomp listeners, the callers' run sockets (protocol.py). PID 1s come from the template
(template.py). Started by client.BOOT in a `python -I -S` process; it imports the launch path
once, before the template is forked, so that every PID 1 shares those pages."""
from __future__ import annotations

import dataclasses
import os
import queue
import select
import socket
import threading
import time

from .. import wire
from . import protocol, template

HELD_MAX = 32                                  # events held back to travel with the result (see end_run)


class _Run:
    __slots__ = ("launch", "sock", "lock", "nfds", "held", "key", "built")

    def __init__(self, sock, key=None):
        self.launch = None                     # its launcher.Launch, once made
        self.sock = sock
        self.key = key                         # the plan's key (the template's spares are built for it)
        self.built = False                     # its PID 1 was a spare with the root built ahead
        self.lock = threading.Lock()
        self.nfds: tuple = ()                  # audit: seccomp listener (or the socket it comes on)
        self.held: "list | None" = None        # while finishing: events that go with the result

    def event(self, etype: str, fields: dict) -> None:
        held = self.held
        if held is None:
            self.send(events=((etype, fields),))
            return
        if len(held) >= HELD_MAX:              # many (denials drained at the end): in batches
            self.send(events=held)
            held = self.held = []
        held.append((etype, fields))

    def send(self, events=(), result=None, error: "tuple | None" = None) -> None:
        """One reply on the run's socket (protocol.py): events, then the launcher's Result or the
        server's error (exit code, message)."""
        if result is not None:
            result = {f.name: getattr(result, f.name) for f in dataclasses.fields(result)}
        data = wire.encode_reply(events, result, error)
        try:
            with self.lock:
                self.sock.send(data)
        except OSError:
            pass                               # the caller went away: its sandbox is being killed


class _Poller:
    """select.poll that remembers which descriptors were (un)registered since the last poll(): an
    event for one of those belongs to a closed descriptor whose number may be in use again."""

    def __init__(self):
        self._p = select.poll()
        self.changed: set = set()

    def register(self, fd: int, mask: int) -> None:
        self._p.register(fd, mask)
        self.changed.add(fd)

    def unregister(self, fd: int) -> None:
        self._p.unregister(fd)
        self.changed.add(fd)

    def poll(self, timeout):
        return self._p.poll(timeout)


def serve(ctl_fd: int) -> None:
    """The server's main loop. Returns (exits) when the control socket closes and every sandbox
    it started has ended and been cleaned up."""
    import gc
    import signal
    from .. import launcher
    from ..notify import supervision  # noqa: F401  imported once here, shared by every PID 1
    from policies.syscalls import seed_syscall_names
    from ..cgroups import leftover, manager  # noqa: F401  likewise
    from policies import plan as _plan  # noqa: F401  decoding plans

    signal.signal(signal.SIGINT, signal.SIG_IGN)     # the caller handles ^C (closing its run socket)
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:                                 # ~8 descriptors per running sandbox
        launcher.CHILD_NOFILE = (soft, hard)         # what the sandboxes start from (the caller's)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    ctl = socket.socket(fileno=ctl_fd)
    plans: dict = {}
    by_pidfd: dict[int, _Run] = {}
    by_sock: dict[int, _Run] = {}
    by_nfd: dict[int, _Run] = {}
    poller = _Poller()
    poller.register(ctl_fd, select.POLLIN)
    pending = select.poll()                          # "is another launch request waiting?"
    pending.register(ctl_fd, select.POLLIN)
    from ..init import init_image
    init_image()                                     # PID 1's last image: every PID 1 inherits it
    gc.collect()
    gc.freeze()                                      # what exists now is never scanned (nor copied) again
    tmpl = [template.Template()]
    closing = False
    # An ended sandbox is finished (reaped, audited, cleaned up, integrity-checked, answered) on a
    # worker thread, not on this loop: most of that time is the kernel's (tearing the sandbox's
    # namespaces down when the integrity snapshot lets go of them, removing its cgroups), during
    # which this loop starts and supervises the other sandboxes. The worker is started after the
    # template was forked; before another fork (a template replaced) it is drained (idle).
    ending: queue.Queue = queue.Queue()

    def finisher() -> None:
        while True:
            run = ending.get()
            try:
                if run is None:
                    return
                finish_run(run)
            finally:
                ending.task_done()
    worker = threading.Thread(target=finisher, name="pysandbox-finish", daemon=True)
    worker.start()

    def template_clone(run: _Run, flags, ctx, plan) -> int:
        """Through the template; a template that died (it never should) is replaced once."""
        built_ok = launcher.prebuildable(run.launch.plan)  # (then no network, image or volume in ctx)
        t = tmpl[0]
        if not t.alive():
            t.close()
            ending.join()                                    # no finish under way while we fork
            t = tmpl[0] = template.Template()                # a copy of the server as it is now
        pid, run.built = t.clone(flags, ctx, run.key, plan, built_ok)
        run.launch.maps_done = run.built             # the template wrote them before the build
        return pid

    def new_run() -> bool:
        try:
            msg, fds, _flags, _addr = socket.recv_fds(ctl, max(protocol.msg_len(ctl), 1), 8)
        except OSError:
            return False
        if not msg:
            for fd in fds:
                os.close(fd)
            return False
        if len(fds) != 4:
            for fd in fds:
                os.close(fd)
            return True
        rsock = socket.socket(fileno=fds[0])
        stdio = fds[1:]
        run = None
        try:
            req, first_plan = wire.decode_request(msg)
            if first_plan is not None:
                plans[req["key"]] = (first_plan, req.get("bpf"))
            if req.get("names"):
                seed_syscall_names(req["names"])        # syscall names without libseccomp here
            base, bpf = plans[req["key"]]
            plan = base
            if req.get("timeout") is not None or req.get("env"):
                proc = plan.process
                if req.get("timeout") is not None:
                    proc = dataclasses.replace(proc, timeout=float(req["timeout"]))
                if req.get("env"):
                    proc = dataclasses.replace(proc, env_set=tuple(proc.env_set) + tuple(req["env"]))
                plan = dataclasses.replace(plan, process=proc)
            run = _Run(rsock, req["key"])
            on_event = None
            if req.get("audit"):
                def on_event(etype, _run=run, **fields):
                    _run.event(etype, fields)
            run.launch = launcher.Launch(plan, req["argv"], bpf=bpf, sandbox_id=req["sandbox_id"],
                                         name=req.get("name"), on_event=on_event,
                                         stdin=stdio[0], stdout=stdio[1], stderr=stdio[2])
            run.launch.inline_supervision = True      # audit in this loop, no thread per sandbox
            run.launch.clone = lambda flags, ctx, _r=run, _p=base: \
                template_clone(_r, flags, ctx, _p)     # PID 1 from the template (see above)
            ok = run.launch.start()
        except launcher.LaunchError as e:
            (run or _Run(rsock)).send(error=(e.code, str(e)))
            ok = None
        except Exception as e:  # noqa: BLE001 - one line to the caller, never a dead server
            (run or _Run(rsock)).send(error=(launcher.EXIT_SETUP, f"internal error: {type(e).__name__}: {e}"))
            ok = None
        finally:
            for fd in stdio:                           # PID 1 has its own copies
                os.close(fd)
        if not ok:
            if ok is False:
                run.send(result=run.launch.result)
            rsock.close()
            return True
        by_pidfd[run.launch.pidfd] = run
        by_sock[rsock.fileno()] = run
        poller.register(run.launch.pidfd, select.POLLIN)
        poller.register(rsock.fileno(), 0)              # POLLHUP/POLLERR only: the caller gave up
        sync_notify(run)
        if run.launch.clone_flags is not None:
            if pending.poll(0):
                tmpl[0].spare(run.launch.clone_flags)    # more launches queued: clone ahead now
            elif run.built:
                # this sandbox builds no root (its spare did): the next spare is cloned and built
                # now, while it runs, so that it is ready for the next launch
                tmpl[0].spare(run.launch.clone_flags, run.key)
        return True

    def sync_notify(run: _Run) -> None:
        sup = run.launch.sup
        want = tuple(sup.inline_fds()) if sup is not None else ()
        for fd in run.nfds:
            if fd not in want:
                poller.unregister(fd)
                del by_nfd[fd]
        for fd in want:
            if fd not in run.nfds:
                poller.register(fd, select.POLLIN)
                by_nfd[fd] = run
        run.nfds = want

    def end_run(run: _Run) -> None:
        for fd in run.nfds:
            poller.unregister(fd)
            del by_nfd[fd]
        run.nfds = ()
        poller.unregister(run.launch.pidfd)
        poller.unregister(run.sock.fileno())
        del by_pidfd[run.launch.pidfd]
        del by_sock[run.sock.fileno()]
        if run.launch.clone_flags is not None and not closing:
            # the next PID 1 is cloned now, while this sandbox is cleaned up and the caller starts
            # the next launch: not while a sandbox builds its root (the clone copies the host's
            # mount table under the kernel's global mount lock). Built for this plan when nothing
            # else waits (a build takes a few milliseconds; queued launches take plain spares)
            tmpl[0].spare(run.launch.clone_flags, None if pending.poll(0) else run.key)
        # the events of the clean-up (sandbox_exit, ...) travel with the result: one message, one
        # wake-up of the caller, instead of one each while this process is still busy
        run.held = []
        ending.put(run)                                # finish_run, on the worker thread

    def finish_run(run: _Run) -> None:
        """On the worker: the launcher's finish (the audit's drain, cgroups, the integrity check),
        then the result with the clean-up's events. Nothing of this loop's state is touched: the
        run left every table and the poller in end_run."""
        try:
            result = run.launch.finish()
            run.send(run.held, result)
        except Exception as e:  # noqa: BLE001
            if run.held:
                run.send(run.held)
            run.send(error=(launcher.EXIT_SETUP, f"internal error: {type(e).__name__}: {e}"))
        run.sock.close()

    while True:
        if closing and not by_pidfd:
            ending.put(None)                           # the finishes under way complete first
            worker.join()
            break
        if tmpl[0].zombies:
            tmpl[0].reap()
        now = time.monotonic()
        deadlines = [r.launch.deadline for r in by_pidfd.values()
                     if r.launch.deadline is not None and not r.launch.timed_out]
        paced = [r for r in by_pidfd.values() if r.launch.sup is not None and r.launch.sup.inline_wakeup()]
        deadlines += [r.launch.sup.inline_wakeup() for r in paced]   # audit: a flood's pace ends
        timeout = None if not deadlines else min(max(0, int((min(deadlines) - now) * 1000) + 1), 2**31 - 1)
        events = poller.poll(timeout)
        poller.changed.clear()
        for fd, ev in events:
            if fd in poller.changed:
                continue                               # (re)registered since: a stale event, or another fd
            if fd == ctl_fd:
                if ev & select.POLLIN and new_run():
                    continue                           # (queued requests are served before a HUP)
                closing = True                         # the API process is gone: end everything
                poller.unregister(ctl_fd)
                for r in by_pidfd.values():
                    r.launch.kill()
            elif fd in by_nfd:                         # audit: a denial to record and answer
                run = by_nfd[fd]
                run.launch.sup.inline_ready(fd, ev)
                sync_notify(run)
            elif fd in by_pidfd:
                end_run(by_pidfd[fd])
            elif fd in by_sock and ev & (select.POLLHUP | select.POLLERR):
                by_sock[fd].launch.kill()             # PID 1's pidfd reports the end
        now = time.monotonic()
        for r in paced:
            if r.launch.pidfd in by_pidfd:
                r.launch.sup.inline_tick()             # coalesced audit records that are due
                sync_notify(r)                         # polls its listener again once the pace ended
        for r in list(by_pidfd.values()):
            d = r.launch.deadline
            if d is not None and not r.launch.timed_out and now >= d:
                r.launch.expire()
    os._exit(0)
