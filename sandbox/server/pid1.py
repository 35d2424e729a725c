"""In a PID 1 the template cloned (sandbox/server/template.py): wait for the run's context (a launch
message of sandbox/wire.py: its PID1 section first, with the descriptors, then the rest), put the
descriptors at the numbers the context names, and run sandbox.launch.sequence.pid1 — the same
PID 1 as the CLI's, its differences as data (wire.Pid1Spec). A spare may build the plan's root
ahead (_build, init.prebuild_root) before it is taken."""
from __future__ import annotations

import os
import socket

from .. import wire


def entry(chan_fd: int, plans: dict, build=None) -> None:
    """In a new PID 1 (cloned ahead or on demand): wait for its context (a launch message,
    sandbox/wire.py: the fixed PID1 part first, with the descriptors, then the rest, kept
    encoded), then become PID 1 proper with sequence.pid1. The rest is decoded — and its
    descriptors put at the numbers it names — only where it is used (_inline_from, _program_from). Any failure
    or the server going away: exit (the server reports it).
    build (plan, rootless): a spare that builds the plan's root file system ahead, once the
    template has written its id maps ("B"), in a builder thread (_build, init.prebuild_root: only
    the thread takes the sandbox's identity; this process keeps the credentials it was cloned with,
    which forking the program into its cgroup needs); it then says "R" (ready) to whoever takes it, or "F" and ends.
    plans: the template's plans by key (a run's context names its plan by key when the template
    had it before this PID 1 was cloned)."""
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
    from ..launch import sequence
    built = bool(flags & wire.F_BUILT)
    spec = wire.Pid1Spec(fds[status_w], fds[go_r], cg, fds[cg_v2] if cg_v2 >= 0 else None,
                         (soft, hard) if flags & wire.F_NOFILE else None,
                         tuple(fds[i] if i >= 0 else None for i in (i0, i1, i2)),
                         bool(flags & wire.F_TIME), bool(flags & wire.F_LINGER),
                         (bool(flags & wire.F_GID0), bool(flags & wire.F_GROUPS), bool(flags & wire.F_UID0)),
                         2 if built else None)          # (the builder thread had pid 2)
    sequence.pid1(spec, lambda err_w, prog_go_r: _program_from(buf, fds, consumed, err_w, prog_go_r, built, plans),
                  inline=lambda: _inline_from(buf, fds, consumed, status_w, cg_v2, built, plans))


def _build(plan, rootless: bool) -> bool:
    """Build the root in a thread of this PID 1 (init._in_thread, as init.setup_in_thread does at
    a launch: the thread takes the sandbox's identity, this process keeps the credentials it was
    cloned with), wait for it: True when the root is built. A thread, not a forked builder: a
    copy of the Python process per spare (its page tables, copied pages and teardown) was the
    largest CPU cost of a launch server's launch (docs/performance.md). The thread is pid 2 of
    the new namespace; the program gets pid 2 again (Pid1Spec.program_pid) once it has gone."""
    import _thread
    tid: list = []

    def build() -> None:
        from ..init import prebuild_root
        tid.append(_thread.get_native_id())
        prebuild_root(plan, rootless)
    try:
        from ..init import _in_thread
        _in_thread(build)
    except BaseException:  # noqa: BLE001 - a fresh PID 1 will report the error
        return False
    return _gone(tid[0]) if tid else False


def _gone(tid: int, limit: float = 1.0) -> bool:
    """Wait (bounded) until the builder thread's task has left the kernel, so that its pid is
    free for the program's process: the thread says it is done just before it exits."""
    import time
    end = time.monotonic() + limit
    while time.monotonic() < end:
        try:
            os.kill(tid, 0)
        except ProcessLookupError:
            return True
        except OSError:
            return False
        time.sleep(0.0002)
    return False


def _take_ctx(buf, fds: list, consumed: set, keep: list, plans: dict) -> tuple:
    """The context, its descriptors at the numbers it names (all but `consumed` indices of fds),
    and the descriptors in `keep` moved out of the way first: (ctx, keep's new numbers, the
    numbers fds are at now)."""
    import fcntl
    ctx, key, wanted = wire.decode_context(buf)
    if len(wanted) != len(fds):
        raise wire.WireError("the run's descriptors do not match its context")
    if ctx.plan is None:
        ctx.plan = plans[key]
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


def _inline_from(buf, fds: list, consumed: set, status_i: int, cg_v2_i: int, built: bool, plans: dict):
    """sequence.pid1's `inline` for a launch server's PID 1: the context (pysandbox-init's memfd
    kept out of the way of its numbers; PID 1's status pipe and cgroup2 directory move to theirs)."""
    from .. import init
    ctx, (image,), wanted = _take_ctx(buf, fds, consumed, [init.image_fd()], plans)
    init.move_image_fd(image)
    return ctx, wanted[status_i], wanted[cg_v2_i] if cg_v2_i >= 0 else None, built


def _program_from(buf, fds: list, consumed: set, err_w: int, go_r: int, built: bool, plans: dict) -> None:
    """In the program's process (forked by PID 1): the context, its descriptors at the numbers it
    names, then sequence.program. Never returns."""
    try:
        ctx, (err_w, go_r), _ = _take_ctx(buf, fds, consumed, [err_w, go_r], plans)   # (PID 1's release: go_r)
    except BaseException as e:  # noqa: BLE001
        os.write(err_w, f"SETUP cannot take the sandbox's context: {type(e).__name__}: {e}".encode())
        os._exit(125)
    from ..launch import sequence
    sequence.program(ctx, err_w, go_r, built)
