"""The API's launch server: one small, single-purpose process that starts and supervises every
sandbox of one API process.

Why a separate process:
  * cost: a sandbox's PID 1 is a forked copy of whoever clones it. Cloned from the API process
    (which compiled profiles: PyYAML, jsonschema, libseccomp, the compiler; and whatever the
    application itself holds), every launch copies a large page table twice (PID 1, then the
    program) and every PID 1 shares — and soon copies — a large heap. The server is started once
    with `python -I -S` and imports only the launch path (sandbox.launcher, init, rootfs,
    capabilities, the seccomp loader, cgroups, notify), so forks from it are cheap and its PID 1s
    small (`bench/api_launch.py`, `bench/concurrent.py`);
  * safety: it is single-threaded when it clones (the audit's notification threads aside: they only
    ever release the GIL around blocking system calls), whereas an application calling the API may
    run any number of threads — cloning from those could leave the child waiting forever on a
    lock another thread held. No per-run supervisor process is needed any more;
  * scale: one poll loop supervises every sandbox (PID 1 pidfds, deadlines, the callers' sockets),
    so N concurrent sandboxes cost N small PID 1s, not N supervisors.

Protocol (AF_UNIX SOCK_SEQPACKET; both ends are this package, same user):
  control socket (API -> server): one message per run, a launch message (sandbox/wire.py:
    a REQUEST section, and the plan's PLAN section the first time) with four descriptors
    attached: the run's own socket, the program's stdin, stdout, stderr;
  run socket (server -> API; pickled: the server's own objects for its own caller): ("event",
    type, fields) as the run goes (audit), ("events", [(type, fields), ...]) for a batch, then
    ("result", launcher.Result, [the clean-up's events]) or ("error", exit_code, message). The
    caller closing its run socket kills that sandbox; the control socket closing (the API process ended, however) kills them all.
Plans are sent once per Sandbox (by key) and kept by the server.
"""
from __future__ import annotations

import os
import pickle
import select
import socket
import sys
import threading
import time

from . import wire

MAX_MSG = 1 << 22
HELD_MAX = 32                                  # events held back to travel with the result (see end_run)
_PEEK = bytearray(1)


def _msg_len(sock) -> int:
    """The length of the next message on a SEQPACKET socket, without taking it (0: end of stream):
    a receive buffer of that size instead of MAX_MSG (allocating 4 MiB costs more than the call)."""
    return sock.recv_into(_PEEK, 1, socket.MSG_PEEK | socket.MSG_TRUNC)


def _recv(sock) -> bytes:
    return sock.recv(max(_msg_len(sock), 1))

# The server's module path: the standard library first (what `-I -S` leaves), then only the locations
# this package and its dependencies were imported from (module_roots) - never the caller's sys.path,
# whose entries (a script's directory, `python -m`'s working directory, PYTHONPATH) may hold a
# `json.py` or a `sandbox/` of anyone's.
_BOOT = ("import sys; sys.path += {paths!r}; from sandbox.zygote import serve; serve({fd})")
# Top-level modules the server imports (sandbox/launcher.py and what it imports; policies.plan to
# decode plans; audit for the events' schema); optional ones are skipped when not installed.
_SERVER_MODULES = ("sandbox", "policies", "audit", "prctl", "_prctl", "pyseccomp")


def module_roots(names=_SERVER_MODULES) -> list:
    """The sys.path entries the named top-level modules were imported from, derived from their
    files (an editable install's finder hook included, which `-S` would not run)."""
    import importlib
    roots = []
    for name in names:
        try:
            mod = sys.modules.get(name) or importlib.import_module(name)
        except ImportError:
            continue
        spec = getattr(mod, "__spec__", None)
        if spec is not None and spec.submodule_search_locations is not None:
            where = [os.path.dirname(p) for p in spec.submodule_search_locations]   # a package
        elif getattr(mod, "__file__", None):
            where = [os.path.dirname(mod.__file__)]                                  # a module
        else:
            where = []                                                               # built in
        roots += [os.path.realpath(w) for w in where if os.path.isabs(w)]
    return list(dict.fromkeys(roots))


# --- the server -----------------------------------------------------------------------------

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
            self.send(("event", etype, fields))
            return
        if len(held) >= HELD_MAX:              # many (denials drained at the end): in batches
            self.send(("events", held))
            held = self.held = []
        held.append((etype, fields))

    def send(self, msg) -> None:
        data = pickle.dumps(msg, protocol=pickle.HIGHEST_PROTOCOL)
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


# --- the template: PID 1s are cloned from a copy of the server that never changes -------------
#
# A forked PID 1 shares the pages of its parent until one of them writes. The server keeps working
# (every launch, every result, every audit event), and each page it writes afterwards becomes a
# private page of every PID 1 still running that was forked before: PID 1s of a busy server grow
# to megabytes. So the server forks, once, right after its imports, a template process that does
# nothing but clone PID 1s on request (one small message each way). The clone uses CLONE_PARENT:
# PID 1 is the server's own child all the same (pidfd, waitpid, PDEATHSIG as before). PID 1 then
# receives its context and descriptors from the server over a socket of its own and runs
# sandbox.launch.sequence.pid1 (through _pid1_entry).

CLONE_PARENT = 0x00008000
KEY_LEN = 32


def _key_bytes(key: str) -> bytes:
    """A plan's key as it travels to the template: KEY_LEN bytes, space-padded."""
    return key.encode().ljust(KEY_LEN)[:KEY_LEN]


_PLANS: dict = {}                                     # in the template: key -> plan


def ctx_fds(ctx) -> list:
    """Every descriptor PID 1's context refers to (they are re-created at the same numbers)."""
    fds = [ctx.go_r, ctx.status_w, *(fd for fd in ctx.stdio if fd is not None), *ctx.cg_fds]
    if ctx.cg_v2_fd is not None:
        fds.append(ctx.cg_v2_fd)
    for sock in (ctx.notify_sock, ctx.console):
        if sock is not None:
            fds.append(sock.fileno())
    fds += [v for v in ctx.volume_dirs.values() if isinstance(v, int)]
    fds += [b[0] for b in ctx.bind_srcs if b is not None]
    root = ctx.image_root
    if root is not None:
        fds += list(getattr(root, "lower_fds", ()) or ())
        if getattr(root, "rw_fd", -1) >= 0:
            fds.append(root.rw_fd)
        if (getattr(root, "layer_sock", (-1, -1)) or (-1, -1))[1] >= 0:
            fds.append(root.layer_sock[1])           # PID 1 sends the writable layer's tmpfs on it
    return list(dict.fromkeys(fds))


class _Template:
    """The server's handle on its template process (see above)."""

    def __init__(self):
        self.sock, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        pid = os.fork()
        if pid == 0:
            try:
                self.sock.close()
                _template_loop(theirs)
            finally:
                os._exit(0)
        theirs.close()
        self.pid = pid
        self.plans: set = set()
        self.zombies: list = []          # discarded spare PID 1s: our children (CLONE_PARENT), to reap

    def alive(self) -> bool:
        try:
            return os.waitpid(self.pid, os.WNOHANG)[0] == 0
        except ChildProcessError:
            return False

    def close(self) -> None:
        """(A dead template.) Its spare PID 1s end on their own (their socket closed); reap them."""
        self.sock.close()
        for pid in self.zombies:
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
        self.zombies = []

    def _ask(self, msg: bytes, nfds: int = 0):
        import errno
        try:
            self.sock.send(msg)
            reply, fds, _flags, _addr = socket.recv_fds(self.sock, 256, max(nfds, 1))
        except OSError as e:
            raise OSError(e.errno or errno.EPIPE, f"the template process is gone: {e.strerror}") from None
        if not reply:
            raise OSError(errno.EPIPE, "the template process is gone")
        return reply, fds

    def spare(self, flags: int, key: "str | None" = None) -> None:
        """Have a PID 1 for `flags` cloned ahead of the next launch (called when the server is idle);
        with the key of a plan the template has, also its root file system built ahead."""
        try:
            self.sock.send(b"S" + flags.to_bytes(8, "little")
                           + (_key_bytes(key) if key and key in self.plans else b""))
        except OSError:
            pass

    def reap(self) -> None:
        left = []
        for pid in self.zombies:
            try:
                if os.waitpid(pid, os.WNOHANG)[0] == 0:
                    left.append(pid)
            except ChildProcessError:
                pass
        self.zombies = left

    def clone(self, flags: int, ctx, key: str, plan, built_ok: bool = False, again: bool = True) -> tuple:
        """Launch.clone: PID 1 from the template (a spare cloned ahead when there is one for these
        flags), handed its context. Returns (its pid, whether its root was built ahead: then its id
        maps are written and the program skips building). built_ok: this run's root needs nothing
        of the run (launcher.prebuildable, and the context agrees).
        The template keeps `plan` (the Sandbox's, without per-run overrides: those only concern
        the supervisor, and the environment, which travels in ctx.env) under `key`, so a PID 1
        decodes only the small per-run part of its context (or the plan too, when it was cloned
        before the template had it). A spare that died while it waited (or whose build failed)
        is reaped and replaced by a fresh PID 1, once (again=False: no more)."""
        import errno
        import signal
        if key not in self.plans:
            ok, _ = self._ask(b"P" + _key_bytes(key) + wire.encode_plan(plan))
            if ok != b"K":
                raise OSError(errno.EPROTO, "the template process refused the plan")
            self.plans.add(key)
        reply, fds = self._ask(b"C" + flags.to_bytes(8, "little") + _key_bytes(key)
                               + (b"1" if built_ok else b"0"), 1)
        if reply[:1] == b"E" or len(fds) != 1:
            for fd in fds:
                os.close(fd)
            err = int(reply[1:].split()[0]) if reply[:1] == b"E" else errno.EPROTO
            raise OSError(err, os.strerror(err))
        chan = socket.socket(fileno=fds[0])
        fields = reply[1:].split()
        pid, has_plan, built = int(fields[0]), fields[1] == b"1", fields[2] == b"1"
        self.zombies += [int(x) for x in fields[3:]]

        def discard() -> None:
            chan.close()
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
        if built and not _built_ready(chan):
            discard()                                    # its build failed (or hangs): a fresh PID 1,
            return self.clone(flags, ctx, key, plan, False, again)     # which reports it as usual
        try:
            from .init import credential_steps
            wanted = ctx_fds(ctx)
            data = wire.encode_context(ctx, key, wanted, credential_steps(ctx.plan, ctx.rootless), built,
                                       with_plan=not has_plan)    # else PID 1 has it from the template
            socket.send_fds(chan, [data[:wire.PID1_PREFIX]], wanted)
            chan.sendall(data[wire.PID1_PREFIX:])
        except (BrokenPipeError, ConnectionResetError):
            discard()                                    # the spare died while it waited
            if not again:
                raise
            return self.clone(flags, ctx, key, plan, False, False)
        except BaseException:
            discard()
            raise
        chan.close()
        return pid, built


BUILD_WAIT = 5.0
# A built root binds the host's files as they were when it was built: a file replaced since (a new
# /etc/passwd written by rename) would be the old one in the sandbox. A spare built longer ago than
# this is not used (launches in a row take theirs within milliseconds).
BUILT_FRESH = 1.0
SPARES = 4              # PID 1s kept ready: one per (namespaces, plan) recently launched, at most


def _built_ready(chan) -> bool:
    """A spare's build: "R" ready, anything else (its build failed, it died) or nothing within
    BUILD_WAIT seconds: not usable."""
    p = select.poll()
    p.register(chan.fileno(), select.POLLIN)
    try:
        return bool(p.poll(int(BUILD_WAIT * 1000))) and chan.recv(1) == b"R"
    except OSError:
        return False


def _template_loop(sock) -> None:
    import gc
    import signal
    import prctl
    from . import _sys
    gc.disable()
    prctl.set_pdeathsig(signal.SIGKILL)               # dies with the server
    _quiet_threading_fork_hook()
    import errno
    from . import idmap, launcher
    rootless = os.geteuid() != 0
    # spares: (flags, key of the plan whose root it built or None) -> (pid, flags, our end of its
    # socket, keys it has, that key, when it was made), oldest first; at most SPARES of them
    spares: dict = {}
    dead: list = []                                   # discarded spares: reported with the next reply

    def drop(sp) -> None:
        dead.append(sp[0])
        sp[2].close()                                 # it exits on EOF

    def make(flags: int, build: "str | None" = None):
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        plan = _PLANS[build] if build else None      # (prebuildable: checked by the "S" below)
        try:
            pid = _sys.clone_fork(flags | CLONE_PARENT)
        except OSError:
            mine.close()
            theirs.close()
            raise
        if pid == 0:
            try:
                mine.close()
                _pid1_entry(theirs.fileno(), (plan, rootless) if plan is not None else None)
            finally:
                os._exit(1)
        theirs.close()
        if plan is not None:
            try:                                      # as Launch.start would (it then does not)
                if plan.namespaces.user:
                    idmap.write_maps(pid, plan, rootless)
                mine.send(b"B")                       # build now
            except Exception:  # noqa: BLE001 - not built: it ends on EOF, the server reaps it
                mine.close()
                dead.append(pid)
                raise OSError(errno.EPROTO, "spare: cannot write its id maps") from None
        return pid, flags, mine, frozenset(_PLANS), build if plan is not None else None, time.monotonic()

    while True:
        try:
            msg = _recv(sock)
        except InterruptedError:
            continue
        except OSError:
            os._exit(0)
        if not msg:
            os._exit(0)                               # the server is gone
        kind = msg[:1]
        if kind == b"P":                              # a plan, once per Sandbox
            try:
                _PLANS[msg[1:1 + KEY_LEN].decode().strip()] = wire.decode_plan(msg[1 + KEY_LEN:])
                sock.send(b"K")
            except Exception:  # noqa: BLE001
                sock.send(b"E22")
            continue
        if kind not in (b"C", b"S") or len(msg) < 9:
            sock.send(b"E22")
            continue
        flags = int.from_bytes(msg[1:9], "little")
        key = msg[9:9 + KEY_LEN].decode().strip() or None
        if kind == b"S":                              # clone ahead (no reply), built for `key`
            k = (flags, key if key in _PLANS and launcher.prebuildable(_PLANS[key]) else None)
            if k not in spares:
                try:
                    spares[k] = make(*k)
                except OSError:
                    pass
                while len(spares) > SPARES:           # the least recently used goes
                    drop(spares.pop(next(iter(spares))))
            continue
        built_ok = msg[9 + KEY_LEN:10 + KEY_LEN] == b"1"
        use = spares.pop((flags, key), None) if built_ok else None
        if use is not None and time.monotonic() - use[5] > BUILT_FRESH:
            drop(use)                                 # its binds of host files are too old a view
            use = None
        if use is None:
            use = spares.pop((flags, None), None)
        if use is None:
            try:
                use = make(flags)
            except OSError as e:
                sock.send(b"E%d" % (e.errno or 1))
                continue
        pid, _f, chan, keys, built, _t = use
        reply = b"P%d %d %d" % (pid, 1 if key in keys else 0, 1 if built else 0) + b"".join(b" %d" % d for d in dead)
        dead = []
        try:
            socket.send_fds(sock, [reply], [chan.fileno()])
        finally:
            chan.close()


def _noop() -> None:
    pass


def _quiet_threading_fork_hook() -> None:
    """In the template only: threading's after-fork hook (registered with os.register_at_fork when
    the server imported threading, and run in every child by CPython's fork handling) does nothing
    PID 1 or the program need — neither ever starts a thread or asks threading anything — but it
    costs each PID 1 about 400 KiB of copied pages (measured: 588 KiB private in a forked child
    with the hook, 188 KiB without). The registered function object cannot be unregistered; its
    code is replaced, in this process, which itself never forks threads either."""
    import threading
    hook = getattr(threading, "_after_fork", None)
    if hook is not None and hasattr(hook, "__code__"):
        hook.__code__ = _noop.__code__


def _pid1_entry(chan_fd: int, build=None) -> None:
    """In a new PID 1 (cloned ahead or on demand): wait for its context (a launch message,
    sandbox/wire.py: the fixed PID1 part first, with the descriptors, then the rest, kept
    encoded), then become PID 1 proper with sequence.pid1. The rest is decoded — and its
    descriptors put at the numbers it names — only where it is used (_inline_from, _program_from). Any failure
    or the server going away: exit (the server reports it).
    build (plan, rootless): a spare that builds the plan's root file system ahead, once the
    template has written its id maps ("B"), in a builder process of its own (init.prebuild_root:
    this process keeps the credentials it was cloned with, which forking the program into its
    cgroup needs); it then says "R" (ready) to whoever takes it, or "F" and ends."""
    import signal
    import prctl
    try:
        prctl.set_pdeathsig(signal.SIGKILL)      # our parent is the server (CLONE_PARENT)
        chan = socket.socket(fileno=chan_fd)
        if build is not None:
            if chan.recv(1) != b"B":
                os._exit(1)
            ok = _build(*build)
            chan.send(b"R" if ok else b"F")
            if not ok:
                os._exit(1)
        msg, fds, _flags, _addr = socket.recv_fds(chan, wire.PID1_PREFIX, 250)
        n, go_r, status_w, i0, i1, i2, cg_first, cg_count, cg_v2, soft, hard, flags = wire.decode_pid1(msg)
        if not all(-1 <= i < len(fds) for i in (go_r, status_w, i0, i1, i2, cg_v2)) or go_r < 0 \
                or status_w < 0 or cg_count < 0 or cg_count and not 0 <= cg_first <= len(fds) - cg_count:
            os._exit(1)
        buf = bytearray(n)
        buf[:wire.PID1_PREFIX] = msg
        view = memoryview(buf)
        got = wire.PID1_PREFIX
        while got < n:
            k = chan.recv_into(view[got:])
            if not k:
                os._exit(1)
            got += k
        chan.close()
        cg = fds[cg_first:cg_first + cg_count] if cg_count else ()
        consumed = {go_r, *range(cg_first, cg_first + cg_count)}     # closed by PID 1 before the fork
    except BaseException:  # noqa: BLE001
        os._exit(1)
    from .launch import sequence
    built = bool(flags & wire.F_BUILT)
    spec = wire.Pid1Spec(fds[status_w], fds[go_r], cg, fds[cg_v2] if cg_v2 >= 0 else None,
                         (soft, hard) if flags & wire.F_NOFILE else None,
                         tuple(fds[i] if i >= 0 else None for i in (i0, i1, i2)),
                         bool(flags & wire.F_TIME), bool(flags & wire.F_LINGER),
                         (bool(flags & wire.F_GID0), bool(flags & wire.F_GROUPS), bool(flags & wire.F_UID0)),
                         2 if built else None)          # (the builder had pid 2)
    sequence.pid1(spec, lambda err_w, prog_go_r: _program_from(buf, fds, consumed, err_w, prog_go_r, built),
                  inline=lambda: _inline_from(buf, fds, consumed, status_w, cg_v2, built))


def _build(plan, rootless: bool) -> bool:
    """Fork the builder (pid 2 of the new namespace), wait for it: True when the root is built."""
    try:
        pid = os.fork()
    except OSError:
        return False
    if pid == 0:
        code = 1
        try:
            from .init import prebuild_root
            prebuild_root(plan, rootless)
            code = 0
        except BaseException:  # noqa: BLE001 - a fresh PID 1 will report the error
            pass
        finally:
            os._exit(code)
    try:
        _, status = os.waitpid(pid, 0)
    except ChildProcessError:
        return False
    return os.waitstatus_to_exitcode(status) == 0


def _take_ctx(buf, fds: list, consumed: set, keep: list) -> tuple:
    """The context, its descriptors at the numbers it names (all but `consumed` indices of fds),
    and the descriptors in `keep` moved out of the way first: (ctx, keep's new numbers, the
    numbers fds are at now)."""
    import fcntl
    ctx, key, wanted = wire.decode_context(buf)
    if len(wanted) != len(fds):
        raise wire.WireError("the run's descriptors do not match its context")
    if ctx.plan is None:
        ctx.plan = _PLANS[key]
    floor = max([2, *keep, *wanted, *fds]) + 1
    kept = []
    for fd in keep:
        kept.append(fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, floor))
        os.close(fd)
    moved = []
    for i, fd in enumerate(fds):
        if i not in consumed:
            moved.append((fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, floor), wanted[i]))
            os.close(fd)
    for fd, want in moved:
        os.dup2(fd, want, inheritable=False)
        os.close(fd)
    if ctx.notify_sock is not None:
        ctx.notify_sock = socket.socket(fileno=ctx.notify_sock)
    if ctx.console is not None:
        ctx.console = socket.socket(fileno=ctx.console)
    return ctx, kept, wanted


def _inline_from(buf, fds: list, consumed: set, status_i: int, cg_v2_i: int, built: bool):
    """sequence.pid1's `inline` for a launch server's PID 1: the context (pysandbox-init's memfd
    kept out of the way of its numbers; PID 1's status pipe and cgroup2 directory move to theirs)."""
    from . import init
    ctx, (image,), wanted = _take_ctx(buf, fds, consumed, [init.image_fd()])
    init.move_image_fd(image)
    return ctx, wanted[status_i], wanted[cg_v2_i] if cg_v2_i >= 0 else None, built


def _program_from(buf, fds: list, consumed: set, err_w: int, go_r: int, built: bool = False) -> None:
    """In the program's process (forked by PID 1): the context, its descriptors at the numbers it
    names, then sequence.program. Never returns."""
    try:
        ctx, (err_w, go_r), _ = _take_ctx(buf, fds, consumed, [err_w, go_r])   # (PID 1's release: go_r)
    except BaseException as e:  # noqa: BLE001
        os.write(err_w, f"SETUP cannot take the sandbox's context: {type(e).__name__}: {e}".encode())
        os._exit(125)
    from .launch import sequence
    sequence.program(ctx, err_w, go_r, built)


def serve(ctl_fd: int) -> None:
    """The server's main loop. Returns (exits) when the control socket closes and every sandbox
    it started has ended and been cleaned up."""
    import dataclasses
    import gc
    import signal
    from . import launcher
    from .notify import supervision  # noqa: F401  imported once here, shared by every PID 1
    from .cgroups import leftover, manager  # noqa: F401  likewise
    from policies import plan as _plan  # noqa: F401  unpickling plans
    from policies.syscalls import seed_syscall_names

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
    from .init import init_image
    init_image()                                     # PID 1's last image: every PID 1 inherits it
    gc.collect()
    gc.freeze()                                      # what exists now is never scanned (nor copied) again
    tmpl = [_Template()]
    closing = False

    def template_clone(run: _Run, flags, ctx, plan) -> int:
        """Through the template; a template that died (it never should) is replaced once."""
        built_ok = launcher.prebuildable(run.launch.plan)  # (then no network, image or volume in ctx)
        t = tmpl[0]
        if not t.alive():
            t.close()
            t = tmpl[0] = _Template()                # a copy of the server as it is now
        pid, run.built = t.clone(flags, ctx, run.key, plan, built_ok)
        run.launch.maps_done = run.built             # the template wrote them before the build
        return pid

    def new_run() -> bool:
        try:
            msg, fds, _flags, _addr = socket.recv_fds(ctl, max(_msg_len(ctl), 1), 8)
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
            (run or _Run(rsock)).send(("error", e.code, str(e)))
            ok = None
        except Exception as e:  # noqa: BLE001 - one line to the caller, never a dead server
            (run or _Run(rsock)).send(("error", launcher.EXIT_SETUP, f"internal error: {type(e).__name__}: {e}"))
            ok = None
        finally:
            for fd in stdio:                           # PID 1 has its own copies
                os.close(fd)
        if not ok:
            if ok is False:
                run.send(("result", run.launch.result, []))
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
        try:
            result = run.launch.finish()
            run.send(("result", result, run.held))
        except Exception as e:  # noqa: BLE001
            if run.held:
                run.send(("events", run.held))
            run.send(("error", launcher.EXIT_SETUP, f"internal error: {type(e).__name__}: {e}"))
        run.sock.close()

    while True:
        if closing and not by_pidfd:
            break
        if tmpl[0].zombies:
            tmpl[0].reap()
        now = time.monotonic()
        deadlines = [r.launch.deadline for r in by_pidfd.values()
                     if r.launch.deadline is not None and not r.launch.timed_out]
        paced = [r for r in by_pidfd.values() if r.launch.sup is not None and r.launch.sup.inline_wakeup()]
        deadlines += [r.launch.sup.inline_wakeup() for r in paced]   # audit: a flood's pace ends
        timeout = None if not deadlines else max(0, int((min(deadlines) - now) * 1000) + 1)
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


# --- the client (in the API process) --------------------------------------------------------

class Client:
    """The API process's handle on its launch server, started on first use (per process: a
    forked child of the API starts its own)."""

    _lock = threading.Lock()
    _current: "Client | None" = None

    @classmethod
    def get(cls) -> "Client":
        with cls._lock:
            c = cls._current
            if c is None or c.owner != os.getpid() or c.broken or c.proc.poll() is not None:
                if c is not None and c.owner == os.getpid():
                    try:
                        c.ctl.close()      # (a server still there ends when its control socket closes)
                        c.proc.wait(5)     # gone: reaped, so the reclaimer sees its owner dead
                    except Exception:  # noqa: BLE001
                        pass
                from .store.reclaim import reclaim_quietly
                reclaim_quietly()          # what a SIGKILLed launch server left (sandbox/reclaim.py)
                c = cls._current = cls()
            return c

    def __init__(self):
        import subprocess
        self.owner = os.getpid()
        self.broken = False      # the server went away (its exit may not be reapable yet): start another
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        # -I -S: no PYTHONPATH, no user site, no current directory; the standard library first,
        # then where this package and its dependencies live (module_roots), nothing of sys.path
        paths = module_roots()
        self.proc = subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", _BOOT.format(paths=paths, fd=theirs.fileno())],
            pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, start_new_session=True)
        theirs.close()
        self.ctl = mine
        self.sent: set = set()
        self.names_sent = False
        import atexit
        atexit.register(self.close)

    def close(self) -> None:
        """End the server: it kills what still runs, cleans up and exits."""
        try:
            self.ctl.close()
        except OSError:
            pass
        if self.owner == os.getpid():
            try:
                self.proc.wait(10)
            except Exception:  # noqa: BLE001
                pass

    def run(self, key, plan, bpf, req: dict, stdio, on_event, names=None):
        """Start a sandbox and wait for it; returns the launcher's Result (LaunchError raised when
        the server refused or failed)."""
        from .launcher import LaunchError
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        try:
            req = dict(req, key=key)
            first = key not in self.sent
            if first:
                req["bpf"] = bpf
                if not self.names_sent and names is not None:
                    req["names"] = names
                    self.names_sent = True
            try:
                socket.send_fds(self.ctl, [wire.encode_request(req, plan if first else None)],
                                [theirs.fileno(), *stdio])
            except OSError as e:
                self.broken = True
                raise LaunchError(f"the launch server is gone: {e.strerror}") from None
            if first:
                self.sent.add(key)
            theirs.close()
            while True:
                data = _recv(mine)
                if not data:
                    self.broken = True
                    raise LaunchError("the launch server ended without a result")
                msg = pickle.loads(data)
                if msg[0] == "event":
                    if on_event is not None:
                        on_event(msg[1], **msg[2])
                elif msg[0] == "events" or msg[0] == "result":
                    if on_event is not None:
                        for etype, fields in msg[-1]:
                            on_event(etype, **fields)
                    if msg[0] == "result":
                        return msg[1]
                else:
                    raise LaunchError(msg[2], msg[1])
        finally:
            theirs.close()
            mine.close()
