"""Carry out a compiled Plan: the supervisor side of a sandbox.

Sequence (kernel order):
  supervisor: preflight checks (fail closed) -> cgroup -> network prepare -> clone(CLONE_NEWUSER |
  NEWNS | NEWPID | NEWUTS | NEWIPC | NEWNET) -> write setgroups/uid_map/gid_map -> put the child in
  its cgroup -> attach its network -> release it ("G")
  PID 1 (sandbox/init.py): pdeathsig, non-dumpable -> identity in the userns -> hostname -> cgroup
  namespace -> loopback -> root filesystem, pivot_root -> fork the program -> drop its own privileges
  -> forward signals, reap, report the wait status
  program: setsid -> rlimits -> cwd -> uid/gid -> capabilities -> no_new_privs -> close fds ->
  seccomp -> execve
  supervisor: forward signals, enforce --timeout, wait, read the report, clean up, exit status.

Exit status: the program's (128+N when killed by signal N); 125 the sandbox could not be set up,
126 the command cannot be executed, 127 command not found, 124 timed out.
"""
from __future__ import annotations

import os
import select
import signal
import threading
import time
from dataclasses import dataclass, field

from . import _sys
from .init import pid1_main

EXIT_SETUP = 125
EXIT_CANNOT_EXEC = 126
EXIT_NOT_FOUND = 127
EXIT_TIMEOUT = 124


class LaunchError(Exception):
    """The sandbox could not be set up as the plan says (exit 125). One line, names the control."""

    def __init__(self, message: str, code: int = EXIT_SETUP):
        super().__init__(message)
        self.code = code


@dataclass
class Result:
    """Outcome of one sandbox run."""
    exit_code: int
    status: Optional[int] = None          # raw wait status of the program
    signal: Optional[int] = None
    timed_out: bool = False
    message: Optional[str] = None         # one line for stderr (launcher's own outcome)
    duration: float = 0.0
    sandbox_id: str = ""
    events: list = field(default_factory=list)


@dataclass
class _Ctx:
    """What PID 1 needs, handed over by fork."""
    plan: object
    argv: tuple
    env: dict
    bpf: Optional[bytes]
    rootless: bool
    go_r: int
    go_w: int
    status_r: int
    status_w: int
    hosts_text: Optional[str] = None
    hosts_file: Optional[str] = None      # private network: live hosts file, bind-mounted read-only
    image_root: object = None
    volume_dirs: dict = field(default_factory=dict)
    notify_sock: object = None
    stdio: tuple = (None, None, None)     # descriptors for the program's stdin/stdout/stderr


def build_env(plan) -> dict:
    env = {}
    for name in plan.process.env_allow:
        if name.endswith("*"):
            env.update({k: v for k, v in os.environ.items() if k.startswith(name[:-1])})
        elif name in os.environ:
            env[name] = os.environ[name]
    env.update(dict(plan.process.env_set))
    env.setdefault("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    return env


def preflight(plan, rootless: bool) -> None:
    """Refuse plans this caller/kernel cannot enforce, before anything is created."""
    ns = plan.namespaces
    if rootless:
        if not ns.user:
            raise LaunchError("namespaces: a rootless sandbox needs a user namespace (namespaces.user: true)")
        uid, gid = os.geteuid(), os.getegid()
        for what, m, own in (("uid_map", plan.user.uid_map, uid), ("gid_map", plan.user.gid_map, gid)):
            if len(m) != 1 or m[0].count != 1 or m[0].outside != own:
                raise LaunchError(f"user.{what}: rootless callers can only map their own id "
                                  f"({own}) to one id inside; ranges need root")
        if plan.user.groups:
            raise LaunchError("user.groups: supplementary groups need root (setgroups is denied rootless)")
    if ns.user and not os.path.exists("/proc/self/ns/user"):
        raise LaunchError("namespaces.user: this kernel has no user namespaces")
    if ns.time and not os.path.exists("/proc/self/ns/time"):
        raise LaunchError("namespaces.time: this kernel has no time namespaces")
    if ns.cgroup and not os.path.exists("/proc/self/ns/cgroup"):
        raise LaunchError("namespaces.cgroup: this kernel has no cgroup namespaces")
    if plan.seccomp.enabled and not plan.no_new_privs and rootless:
        raise LaunchError("seccomp: an unprivileged caller can only load a filter with no_new_privs: true")
    if plan.landlock:
        raise LaunchError("landlock: not implemented yet in this version; refusing to run without it")


def _write_maps(pid: int, plan, rootless: bool) -> None:
    def fmt(m):
        return "".join(f"{e.inside} {e.outside} {e.count}\n" for e in m)
    try:
        if rootless:
            with open(f"/proc/{pid}/setgroups", "w") as f:
                f.write("deny")
        with open(f"/proc/{pid}/uid_map", "w") as f:
            f.write(fmt(plan.user.uid_map))
        with open(f"/proc/{pid}/gid_map", "w") as f:
            f.write(fmt(plan.user.gid_map))
    except OSError as e:
        raise LaunchError(f"user namespace: cannot write the id maps: {e.strerror}") from None


def launch(plan, argv=None, *, bpf: Optional[bytes] = None, sandbox_id: Optional[str] = None,
           name: Optional[str] = None, on_event: Optional[Callable] = None,
           stdin=None, stdout=None, stderr=None, supervision: Optional[Callable] = None,
           console=None) -> Result:
    """Run argv (or the plan's default argv) in a sandbox made from plan. Blocks until it ends."""
    started = time.monotonic()
    rootless = os.geteuid() != 0
    sandbox_id = sandbox_id or os.urandom(6).hex()
    argv = tuple(argv) if argv else tuple(plan.process.argv)
    preflight(plan, rootless)
    if plan.seccomp.enabled and bpf is None:
        from . import seccomp
        bpf = seccomp.build_bpf(plan.seccomp)
    env = build_env(plan)
    emit = on_event or (lambda *a, **k: None)

    cg = net = None
    status_r, status_w = os.pipe2(os.O_CLOEXEC)
    go_r, go_w = os.pipe2(os.O_CLOEXEC)
    ctx = _Ctx(plan, argv, env, bpf if plan.seccomp.enabled else None, rootless, go_r, go_w, status_r, status_w)
    pid = None
    result = Result(exit_code=EXIT_SETUP, sandbox_id=sandbox_id)
    old_handlers = {}
    sup = None
    try:
        if on_event is not None:     # audit: seccomp denials recorded, integrity checked (sandbox/notify.py)
            from .notify import Supervision
            try:
                sup = (supervision or Supervision)(plan.seccomp, ctx.bpf, emit)   # learn mode passes its own
            except (OSError, ValueError) as e:
                raise LaunchError(f"seccomp: {e}") from None
            ctx.bpf, ctx.notify_sock, ctx.seccomp_log = sup.bpf, sup.child_sock, sup.log_flag
        if plan.limits.any():
            from . import cgroups
            cgroups.reclaim_stale(rootless=rootless)   # leftovers of SIGKILLed supervisors (ours only)
            try:
                cg = cgroups.create_for_sandbox(sandbox_id, plan.limits, rootless=rootless)
            except cgroups.CgroupError as e:
                raise LaunchError(f"limits: {e}") from None
        if plan.network.mode not in ("none", "host") or plan.network.ports or plan.network.egress_allow \
                or plan.network.egress_default == "deny":
            from . import network
            try:
                net = network.prepare(plan.network, sandbox_id, name, rootless=rootless,
                                      hostname=plan.process.hostname)
            except network.NetworkError as e:
                raise LaunchError(str(e) if str(e).startswith("network") else f"network: {e}") from None
            if net is not None:
                ctx.hosts_text = net.etc_hosts()
                ctx.hosts_file = net.hosts_path

        if plan.filesystem.image or any(m.type == "volume" for m in plan.filesystem.mounts):
            _prepare_image_and_volumes(ctx, plan, sandbox_id, rootless)   # sandbox.overlay / sandbox.volumes

        ns = plan.namespaces
        flags = _sys.CLONE_NEWNS
        for on, flag in ((ns.user, _sys.CLONE_NEWUSER), (ns.pid, _sys.CLONE_NEWPID),
                         (ns.uts, _sys.CLONE_NEWUTS), (ns.ipc, _sys.CLONE_NEWIPC), (ns.net, _sys.CLONE_NEWNET)):
            if on:
                flags |= flag
        ctx.stdio = (stdin, stdout, stderr)
        ctx.console = console        # socket: the program sends its pty master back (run -t)
        try:
            pid = _sys.clone_fork(flags)
        except OSError as e:
            raise LaunchError(f"namespaces: cannot create them: {e.strerror}") from None
        if pid == 0:
            try:
                pid1_main(ctx)
            finally:
                os._exit(1)
        os.close(go_r)
        os.close(status_w)
        if ns.user:
            _write_maps(pid, plan, rootless)
        if cg is not None:
            cg.add_pid(pid)
        if net is not None:
            try:
                net.attach(pid)
            except Exception as e:
                raise LaunchError(str(e) if str(e).startswith("network") else f"network: {e}") from None
        emit("sandbox_start", pid=pid, argv=list(argv))
        if sup is not None:
            sup.started(pid, lambda p=pid: _kill(p, cg), ctx=ctx)

        # Forward signals to PID 1 (which forwards to the program) — only possible from the main
        # thread; API callers in other threads forward with Result-less kill() themselves.
        def forward(sig, _frame):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2):
                old_handlers[sig] = signal.signal(sig, forward)
        pidfd = _sys.pidfd_open(pid)
        os.write(go_w, b"G")
        os.close(go_w)
        go_w = -1
        # wait for PID 1 (poll on its pidfd: works in any thread, enforces the timeout)
        timed_out = False
        deadline = time.monotonic() + plan.process.timeout if plan.process.timeout else None
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        while True:
            wait_ms = None if deadline is None else max(0, int((deadline - time.monotonic()) * 1000))
            if poller.poll(wait_ms):
                break
            if deadline is not None and time.monotonic() >= deadline:
                timed_out = True
                _kill(pid, cg)
                break
        os.close(pidfd)
        _, p1_status = os.waitpid(pid, 0)
        pid = None
        os.set_blocking(status_r, False)   # PID 1 is gone; other threads' PID 1s may hold copies of status_w
        report = _read_all(status_r)
        result = _interpret(report, p1_status, argv, timed_out, plan)
        if sup is not None:
            sup.stop()
            if sup.killed and not timed_out:     # a kill rule: recorded, then the sandbox was killed
                result = Result(128 + signal.SIGSYS, signal=signal.SIGSYS,
                                message=f"pysandbox: killed by the seccomp policy ({sup.killed})")
    except LaunchError as e:
        result = Result(exit_code=e.code, message=f"pysandbox: {e}")
        if pid:
            _kill(pid, cg)
    finally:
        for sig, h in old_handlers.items():
            signal.signal(sig, h)
        if pid:
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
        if sup is not None:
            sup.stop()
        for fd in (status_r, go_w):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        if cg is not None:
            try:
                result.events.extend(cg.finish())
            except Exception as e:  # clean-up problems are reported, never hidden
                result.events.append({"type": "integrity_violation", "what": "cgroup", "detail": str(e)})
        if ctx.image_root is not None:             # discard the writable layer, or keep it (--keep)
            try:
                from . import overlay
                keep = plan.filesystem.keep and result.exit_code != EXIT_SETUP
                overlay.finish_root(ctx.image_root, keep=keep)
                if keep:
                    kept = (f"pysandbox: kept the writable layer of {sandbox_id} (pysandbox diff {sandbox_id})"
                            if not ctx.image_root.read_only else
                            "pysandbox: --keep: nothing kept, the root was read-only (use --read-write)")
                    result.message = kept if not result.message else result.message + "\n" + kept
            except Exception as e:
                result.events.append({"type": "integrity_violation", "what": "image root", "detail": str(e)})
        for v in ctx.volume_dirs.values():           # the supervisor's copies of detached volume trees
            if isinstance(v, int):
                try:
                    os.close(v)
                except OSError:
                    pass
        if net is not None:
            try:
                net.release()
            except Exception as e:
                result.events.append({"type": "integrity_violation", "what": "network", "detail": str(e)})
            if getattr(net, "denied", None):          # packets the egress allow-list refused (audit)
                result.events.append({"type": "limit_exceeded", "limit": "network.egress", "value": 0,
                                      "peak": net.denied, "via": "supervisor",
                                      "message": f"egress allow-list denied {net.denied} packet(s)"})
        if sup is not None:
            result.events.extend(sup.integrity())     # audit: post-exit integrity checks (audit/integrity.py)
    result.sandbox_id = sandbox_id
    result.duration = time.monotonic() - started
    if cg is not None:
        from . import cgroups
        line = cgroups.summary_line(result.events)
        if line:
            result.message = line if not result.message else result.message + "\n" + line
            if any(e.get("type") == "oom_kill" for e in result.events) and result.exit_code in (EXIT_SETUP, 137) \
                    or any(e.get("type") == "oom_kill" for e in result.events) and result.signal == signal.SIGKILL:
                result.exit_code = 137
    if result.timed_out:
        emit("timeout", timeout=plan.process.timeout)
    emit("sandbox_exit", exit_code=result.exit_code, duration=round(result.duration, 6),
         signal=result.signal, events=result.events)
    return result


def _prepare_image_and_volumes(ctx, plan, sandbox_id: str, rootless: bool) -> None:
    """Before clone: an image's overlay root (per-sandbox upper/work dirs) and named volume dirs."""
    from .images import ImageError
    fs = plan.filesystem
    try:
        if fs.image:
            from . import overlay
            ctx.image_root = overlay.prepare_root(fs, sandbox_id, rootless=rootless,
                                                  uid_map=plan.user.uid_map, gid_map=plan.user.gid_map)
        vols = [m for m in fs.mounts if m.type == "volume"]
        if vols:
            from .volumes import resolve_volume
            owner = None
            if not rootless and plan.user.uid_map:      # the sandbox's root owns a new volume
                owner = tuple(next((e.outside for e in m if e.inside == 0), 0)
                              for m in (plan.user.uid_map, plan.user.gid_map))
            for m in vols:
                if m.source in ctx.volume_dirs:
                    raise ImageError(f"volume {m.source} is mounted twice (mount it once, bind a subdirectory "
                                     f"elsewhere if needed)")
                path = resolve_volume(m.source, rootless=rootless, create=True, owner=owner)
                # as root: a detached tree (the store is 0700; PID 1 may be an unprivileged uid)
                ctx.volume_dirs[m.source] = path if rootless else _sys.open_tree(path, recursive=False)
    except ImageError as e:
        raise LaunchError(f"filesystem: {e}") from None
    except OSError as e:
        raise LaunchError(f"filesystem: volume: {e.strerror}") from None


def _kill(pid: int, cg) -> None:
    try:
        os.kill(pid, signal.SIGKILL)             # PID 1 of the namespace: takes everything with it
    except ProcessLookupError:
        pass
    if cg is not None:
        try:
            cg.kill()
        except Exception:
            pass


def _read_all(fd: int) -> str:
    out = b""
    while True:
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
    return out.decode(errors="replace")


def _interpret(report: str, p1_status: int, argv, timed_out: bool, plan) -> Result:
    setup = execm = exit_status = None
    for line in report.splitlines():
        kind, _, rest = line.partition(" ")
        if kind == "SETUP":
            setup = rest
        elif kind == "EXEC":
            execm = rest
        elif kind == "EXIT":
            exit_status = int(rest)
    if timed_out:
        return Result(EXIT_TIMEOUT, timed_out=True,
                      message=f"pysandbox: timed out after {plan.process.timeout:g}s; sandbox killed")
    if setup is not None:
        return Result(EXIT_SETUP, message=f"pysandbox: cannot set up the sandbox: {setup}")
    if execm is not None:
        code_s, _, rest = execm.partition(" ")
        stage, _, what = rest.partition(" ")
        err = int(code_s) if code_s.isdigit() else 0
        if stage == "exec" and err == 2:
            return Result(EXIT_NOT_FOUND, message=f"pysandbox: {argv[0]}: command not found")
        if stage == "exec":
            return Result(EXIT_CANNOT_EXEC, message=f"pysandbox: {argv[0]}: cannot execute: {os.strerror(err)}")
        if stage == "cwd":
            return Result(EXIT_CANNOT_EXEC, message=f"pysandbox: working directory {plan.process.cwd}: {what}")
        return Result(EXIT_SETUP, message=f"pysandbox: cannot set up the program ({stage}): {what}")
    if exit_status is None:
        if os.WIFSIGNALED(p1_status):
            return Result(128 + os.WTERMSIG(p1_status), signal=os.WTERMSIG(p1_status),
                          message=f"pysandbox: sandbox killed by signal {os.WTERMSIG(p1_status)}")
        return Result(EXIT_SETUP, message="pysandbox: the sandbox ended without reporting a status")
    if os.WIFSIGNALED(exit_status):
        sig = os.WTERMSIG(exit_status)
        return Result(128 + sig, status=exit_status, signal=sig)
    return Result(os.WEXITSTATUS(exit_status), status=exit_status)
