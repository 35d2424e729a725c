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


# A message on a run socket from its caller (the CLI's, lean.py): a signal for the sandbox
SIGNAL = b"K"


class _Ctl:
    """A control connection: the API process's (one, serve(ctl_fd)) or a CLI's (accepted)."""
    __slots__ = ("sock", "peer")

    def __init__(self, sock, peer=None):
        self.sock = sock
        self.peer = peer                       # a CLI's: (pidfd, pid, uid) (peer.py); None: the API


class _Run:
    __slots__ = ("launch", "sock", "lock", "nfds", "held", "key", "built", "ctl", "cli")

    def __init__(self, sock, key=None, ctl=None):
        self.launch = None                     # its launcher.Launch, once made
        self.ctl = ctl                         # the control connection's fd it came on
        self.cli = None                        # a CLI's run (cli_run): (plan, audit session, its stderr)
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


def serve(ctl_fd: "int | None" = None, *, listen_fd: "int | None" = None, idle: float = 600.0,
          sock_path: "str | None" = None, sock_id: "tuple | None" = None) -> None:
    """The server's main loop. Returns (exits) when the control socket closes and every sandbox
    it started has ended and been cleaned up.

    listen_fd instead of ctl_fd: the CLI's launch server (`pysandbox server`, sandbox/cli/server.py):
    every accepted connection is a control connection of its own (its sandboxes are killed when it
    closes), whose peer must be exactly as confined as this process (peer.py) at every request;
    the server ends after `idle` seconds without a connection or a sandbox, on a STOP message or
    SIGTERM, and then removes its socket (sock_path, when it is still the one it was given:
    sock_id, its (st_dev, st_ino))."""
    import gc
    import signal
    from .. import launcher
    from ..notify import supervision  # noqa: F401  imported once here, shared by every PID 1
    from policies.syscalls import seed_syscall_names
    from ..cgroups import leftover, manager  # noqa: F401  likewise
    from policies import plan as _plan  # noqa: F401  decoding plans

    signal.signal(signal.SIGINT, signal.SIG_IGN)     # the caller handles ^C (closing its run socket)
    import resource
    # the CLI's server: a client whose rlimits differ from these (as this process started) is "not
    # here" - its sandbox would start from other limits than the CLI's own launch would
    from . import lean
    limits0 = lean.rlimits()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:                                 # ~8 descriptors per running sandbox
        launcher.CHILD_NOFILE = (soft, hard)         # what the sandboxes start from (the caller's)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    ctls: dict[int, _Ctl] = {}
    plans: dict = {}
    by_pidfd: dict[int, _Run] = {}
    by_sock: dict[int, _Run] = {}
    by_nfd: dict[int, _Run] = {}
    poller = _Poller()
    pending = select.poll()                          # "is another launch request waiting?"

    def add_ctl(sock, peer_=None) -> None:
        ctls[sock.fileno()] = _Ctl(sock, peer_)
        poller.register(sock.fileno(), select.POLLIN)
        pending.register(sock.fileno(), select.POLLIN)

    def drop_ctl(fd: int) -> None:
        c = ctls.pop(fd)
        poller.unregister(fd)
        pending.unregister(fd)
        for r in by_pidfd.values():
            if r.ctl == fd:
                r.launch.kill()                        # its sandboxes die with it
        if c.peer is not None:
            os.close(c.peer[0])
        c.sock.close()

    if ctl_fd is not None:
        add_ctl(socket.socket(fileno=ctl_fd))
    listener = None
    if listen_fd is not None:
        from .. import landlock, plancache, runout  # noqa: F401  (a CLI's run: imported now, see
        from audit import session  # noqa: F401        #  clirun.loaded)
        from . import clirun, peer
        listener = socket.socket(fileno=listen_fd)
        listener.setblocking(False)
        poller.register(listen_fd, select.POLLIN)
        term_r, term_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)    # SIGTERM: as `server stop`
        signal.set_wakeup_fd(term_w)
        signal.signal(signal.SIGTERM, lambda *_: None)
        poller.register(term_r, select.POLLIN)

        def in_template() -> None:                   # (the template keeps none of it)
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            for fd in (listen_fd, term_r, term_w):
                os.close(fd)
        template.AFTER_FORK.append(in_template)
    idle_since = [time.monotonic()]
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

    def new_run(c: _Ctl) -> bool:
        ctl = c.sock
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
            if c.peer is not None and msg in (b"STOP", b"STATUS"):    # `pysandbox server stop|status`
                try:
                    ctl.send(b"pid %d sandboxes %d connections %d idle %g"
                             % (os.getpid(), len(by_pidfd), len(ctls), idle))
                except OSError:
                    pass
                if msg == b"STOP":
                    stop()
            return True
        rsock = socket.socket(fileno=fds[0])
        stdio = fds[1:]
        if c.peer is not None:                         # a CLI's run (lean.py), and nothing else
            try:
                return cli_run(c, msg, rsock, stdio)
            finally:
                for fd in stdio:                       # PID 1 has its own copies
                    os.close(fd)
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
            run = _Run(rsock, req["key"], ctl.fileno())
            on_event = None
            if req.get("audit"):
                def on_event(etype, _run=run, **fields):
                    _run.event(etype, fields)
            run.launch = launcher.Launch(plan, req["argv"], bpf=bpf, sandbox_id=req["sandbox_id"],
                                         name=req.get("name"), on_event=on_event,
                                         stdin=stdio[0], stdout=stdio[1], stderr=stdio[2])
            ok = start(run, base)
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
        supervise(run)
        return True

    def start(run: _Run, base) -> bool:
        """Launch.start with PID 1 from the template, the audit in this loop."""
        run.launch.inline_supervision = True          # audit in this loop, no thread per sandbox
        run.launch.clone = lambda flags, ctx, _r=run, _p=base: \
            template_clone(_r, flags, ctx, _p)         # PID 1 from the template (see above)
        return run.launch.start()

    def supervise(run: _Run) -> None:
        """A started sandbox into the loop's tables; the next spare asked for."""
        rsock = run.sock
        by_pidfd[run.launch.pidfd] = run
        by_sock[rsock.fileno()] = run
        poller.register(run.launch.pidfd, select.POLLIN)
        poller.register(rsock.fileno(), select.POLLIN)  # a signal to forward; POLLHUP: the caller gave up
        sync_notify(run)
        if run.launch.clone_flags is not None:
            if pending.poll(0):
                tmpl[0].spare(run.launch.clone_flags)    # more launches queued: clone ahead now
            elif run.built:
                # this sandbox builds no root (its spare did): the next spare is cloned and built
                # now, while it runs, so that it is ready for the next launch
                tmpl[0].spare(run.launch.clone_flags, run.key)

    def cli_run(c: _Ctl, msg: bytes, rsock, stdio) -> bool:
        """A CLI's run (lean.py, clirun.py): as its own cached path would do it, or "not here"."""
        def say(data: bytes) -> None:
            try:
                rsock.send(data)
            except OSError:
                pass
        try:
            f = lean.decode(msg)
            peer.check(*c.peer)
            plan, bpf, runopts, key = clirun.accept(f, mask0, limits0)
        except (ValueError, StopIteration, peer.NotHere, clirun.NotHere, OSError) as e:
            say(b"N" + str(e).encode(errors="replace")[:200])
            rsock.close()
            return True
        except Exception as e:  # noqa: BLE001 - never a dead server: the CLI does it itself
            say(b"N" + f"internal error: {type(e).__name__}: {e}".encode(errors="replace")[:200])
            rsock.close()
            return True
        out = clirun.stderr_of(stdio[2])
        sess = runout.session(plan, runopts, out, f["cwd"])   # audit log + summary (on their stderr) + syslog
        if sess is None:
            return cli_end(rsock, out, None, 125)

        def on_event(etype, **fields):
            if etype == "sandbox_start":
                say(b"S")                              # set up: its program may run from now on
            return sess.emit(etype, **fields)
        run = _Run(rsock, key, c.sock.fileno())
        run.cli = (plan, sess, out)
        try:
            run.launch = launcher.Launch(plan, f["cmd"] or None, bpf=bpf, sandbox_id=sess.sandbox_id,
                                         name=runopts.get("name"), on_event=on_event,
                                         stdin=stdio[0], stdout=stdio[1], stderr=stdio[2],
                                         kernel_watch=True)
            run.launch.environ = f["environ"]          # what env.allow takes from: the caller's
            ok = start(run, plan)
        except launcher.LaunchError as e:
            runout.err(f"pysandbox: {e}", out)
            return cli_end(rsock, out, sess, e.code)
        except Exception as e:  # noqa: BLE001
            runout.err(f"pysandbox: internal error: {type(e).__name__}: {e}", out)
            return cli_end(rsock, out, sess, launcher.EXIT_SETUP)
        if not ok:
            runout.report(plan, run.launch.result.message, out)
            return cli_end(rsock, out, sess, run.launch.result.exit_code)
        supervise(run)
        return True

    def cli_end(rsock, out, sess, code: int) -> bool:
        """A CLI's run ends: its audit session closed (the summary on its stderr), its exit code."""
        if sess is not None:
            sess.close()
        try:
            out.flush()
            out.close()
        except OSError:
            pass
        try:
            rsock.send(b"X%d" % code)
        except OSError:
            pass
        rsock.close()
        return True

    def stop() -> None:
        nonlocal closing
        if closing:
            return
        closing = True
        if listener is not None:
            poller.unregister(listener.fileno())
            _unlink_ours(sock_path, sock_id)
            listener.close()
        for fd in list(ctls):
            drop_ctl(fd)
        for r in by_pidfd.values():
            r.launch.kill()

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
        if run.cli is not None:                        # a CLI's: as its own launch ends
            plan, sess, out = run.cli
            try:
                result = run.launch.finish()
                runout.report(plan, result.message, out)
                code = result.exit_code
            except Exception as e:  # noqa: BLE001
                runout.err(f"pysandbox: internal error: {type(e).__name__}: {e}", out)
                code = launcher.EXIT_SETUP
            cli_end(run.sock, out, sess, code)
            return
        try:
            result = run.launch.finish()
            run.send(run.held, result)
        except Exception as e:  # noqa: BLE001
            if run.held:
                run.send(run.held)
            run.send(error=(launcher.EXIT_SETUP, f"internal error: {type(e).__name__}: {e}"))
        run.sock.close()

    def accept() -> None:
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        conn.setblocking(True)
        try:
            who = peer.peer_of(conn)
        except (OSError, peer.NotHere):
            conn.close()
            return
        if who[2] != os.geteuid():                    # (the socket's mode refuses them already)
            os.close(who[0])
            conn.close()
            return
        add_ctl(conn, who)

    mask0 = os.umask(0o077)
    os.umask(mask0)
    if listener is not None:
        clirun.loaded()                                # a request finding these changed: not here
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
        if listener is not None and not closing:
            if ctls or by_pidfd:
                idle_since[0] = now
            elif now - idle_since[0] >= idle:
                stop()                                 # idle: nothing runs, nobody is connected
                continue
            else:
                deadlines.append(idle_since[0] + idle)
        paced = [r for r in by_pidfd.values() if r.launch.sup is not None and r.launch.sup.inline_wakeup()]
        deadlines += [r.launch.sup.inline_wakeup() for r in paced]   # audit: a flood's pace ends
        timeout = None if not deadlines else min(max(0, int((min(deadlines) - now) * 1000) + 1), 2**31 - 1)
        events = poller.poll(timeout)
        poller.changed.clear()
        for fd, ev in events:
            if fd in poller.changed:
                continue                               # (re)registered since: a stale event, or another fd
            if fd in ctls:
                c = ctls[fd]
                if ev & select.POLLIN and new_run(c):
                    continue                           # (queued requests are served before a HUP)
                if closing:
                    continue
                if c.peer is not None:                 # a CLI went away: its sandboxes end
                    drop_ctl(fd)
                    continue
                closing = True                         # the API process is gone: end everything
                drop_ctl(fd)
                for r in by_pidfd.values():
                    r.launch.kill()
            elif listener is not None and fd == listener.fileno():
                accept()
            elif listener is not None and fd == term_r:
                try:
                    os.read(term_r, 64)
                except OSError:
                    pass
                stop()                                 # SIGTERM: as `pysandbox server stop`
            elif fd in by_nfd:                         # audit: a denial to record and answer
                run = by_nfd[fd]
                run.launch.sup.inline_ready(fd, ev)
                sync_notify(run)
            elif fd in by_pidfd:
                end_run(by_pidfd[fd])
            elif fd in by_sock:
                run = by_sock[fd]
                if ev & select.POLLIN:
                    try:
                        m = run.sock.recv(8, socket.MSG_DONTWAIT)
                    except OSError:
                        m = b""
                    if len(m) == 2 and m[:1] == SIGNAL and m[1] in launcher.FORWARDED:
                        run.launch.forward(m[1])       # the CLI's signal, as its own launch forwards it
                        continue
                    if m:
                        continue                       # (anything else: ignored)
                run.launch.kill()                      # gone: PID 1's pidfd reports the end
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


def _unlink_ours(path: "str | None", ident: "tuple | None") -> None:
    """Remove the socket at path if it is still the one this server was given (not another
    server's that replaced it)."""
    if not path or not ident:
        return
    try:
        st = os.lstat(path)
        if (st.st_dev, st.st_ino) == tuple(ident):
            os.unlink(path)
    except OSError:
        pass
