"""The template: PID 1s are cloned from a copy of the server that never changes.

A forked PID 1 shares the pages of its parent until one of them writes. The server keeps working
(every launch, every result, every audit event), and each page it writes afterwards becomes a
private page of every PID 1 still running that was forked before: PID 1s of a busy server grow
to megabytes. So the server forks, once, right after its imports, a template process that does
nothing but clone PID 1s on request (one small message each way). The clone uses CLONE_PARENT:
PID 1 is the server's own child all the same (pidfd, waitpid, PDEATHSIG as before). PID 1 then
receives its context and descriptors from the server over a socket of its own and runs
sandbox.launch.sequence.pid1 (through sandbox/server/pid1.py).

The template keeps the plans it was sent (PLANS) and up to SPARES PID 1s cloned ahead, some
with their root file system built for a plan (see Template.clone). Its socket's messages (server
-> template; a key is KEY_LEN bytes, flags u64 little-endian):
  P key PLAN-message        keep a plan (wire.encode_plan)      -> "K", or "E22"
  C flags key built_ok      a PID 1 for a launch                -> "P pid has-plan built dead..."
                                                                   with PID 1's socket, or "E errno"
  S flags [key]             clone a spare ahead (built for key)    (no reply)
"""
from __future__ import annotations

import os
import select
import socket
import time

from .. import wire
from . import pid1, protocol

CLONE_PARENT = 0x00008000
KEY_LEN = 32


def _key_bytes(key: str) -> bytes:
    """A plan's key as it travels to the template: KEY_LEN bytes, space-padded."""
    return key.encode().ljust(KEY_LEN)[:KEY_LEN]


PLANS: dict = {}                                     # in the template: key -> plan


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


# run first in a forked template: what of the server it must not keep (the CLI's server: its
# listening socket and its SIGTERM wake-up, sandbox/server/loop.py)
AFTER_FORK: list = []


class Template:
    """The server's handle on its template process (see above)."""

    def __init__(self):
        self.sock, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        pid = os.fork()
        if pid == 0:
            try:
                self.sock.close()
                for fn in AFTER_FORK:
                    fn()
                main(theirs)
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
            from ..init import credential_steps
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


def main(sock) -> None:
    """The template process: clone PID 1s (and spares ahead) on the server's request."""
    import gc
    import signal
    import prctl
    from .. import _sys
    gc.disable()
    prctl.set_pdeathsig(signal.SIGKILL)               # dies with the server
    _quiet_threading_fork_hook()
    import errno
    from .. import idmap, launcher
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
        plan = PLANS[build] if build else None      # (prebuildable: checked by the "S" below)
        try:
            pid = _sys.clone_fork(flags | CLONE_PARENT)
        except OSError:
            mine.close()
            theirs.close()
            raise
        if pid == 0:
            try:
                mine.close()
                pid1.entry(theirs.fileno(), PLANS, (plan, rootless) if plan is not None else None)
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
        return pid, flags, mine, frozenset(PLANS), build if plan is not None else None, time.monotonic()

    while True:
        try:
            msg = protocol.recv(sock)
        except InterruptedError:
            continue
        except OSError:
            os._exit(0)
        if not msg:
            os._exit(0)                               # the server is gone
        kind = msg[:1]
        if kind == b"P":                              # a plan, once per Sandbox
            try:
                PLANS[msg[1:1 + KEY_LEN].decode().strip()] = wire.decode_plan(msg[1 + KEY_LEN:])
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
            k = (flags, key if key in PLANS and launcher.prebuildable(PLANS[key]) else None)
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
        if use is not None and use[4] is not None and idmap.uses_helpers(PLANS[use[4]], rootless) \
                and not idmap.still_granted(PLANS[use[4]]):
            drop(use)                                 # its maps were written ahead: ranges withdrawn since
            use = None                                # (a fresh clone's newuidmap refuses them: exit 125)
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
