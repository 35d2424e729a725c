"""The backend ladder and the namespace-free sandbox, top to bottom.

    choose(plan)    -> ("namespaces" | "landlock" | None, why): which backend a run gets here
    run(plan, ...)  the namespace-free launch: no clone with namespaces, no mounts, no id maps

`namespaces` (sequence.py: today's sandbox) whenever user namespaces work. Where they do not
(Ubuntu's apparmor_restrict_unprivileged_userns, user.max_user_namespaces=0, a container without
CAP_SYS_ADMIN, a seccomp filter denying unshare) a plan gets the namespace-free backend only when it
accepts it (`isolation: {minimum: landlock}`, or `run --isolation landlock`, which also forces it
where namespaces work). It confines the program with what needs no namespace:

    fork -> setsid, PDEATHSIG -> the cgroup leaf (limits, where delegated; else refused)
    -> rlimits -> cwd -> Landlock (the plan's rules on the HOST's paths: its ABI checked)
    -> capabilities: bounding, ambient, permitted, effective, inheritable all emptied
    -> no_new_privs -> seccomp (the plan's filter, plain errno actions) -> execve

What it cannot give (docs/security.md, "The namespace-free backend"): a private root, /tmp, /proc,
pid, network, IPC or UTS namespace, a uid other than the caller's; the program sees the host's
processes and network (Landlock's TCP rules and seccomp's socket families are the only network
control; abstract unix sockets are scoped on ABI 6).
"""
from __future__ import annotations

import os
import signal

NAMESPACES, LANDLOCK = "namespaces", "landlock"
ACCEPT_HINT = ("accept the namespace-free backend with `run --isolation landlock` or `isolation: {minimum: "
               "landlock}` in the profile (Landlock, seccomp, no_new_privs, no capabilities, rlimits, cgroup "
               "limits where delegated; no private root, pid, network or user ids)")


def userns_problem() -> "str | None":
    """Why an unprivileged user namespace cannot be created here (None: it can). Asked by trying,
    in a child process: a sysctl, an LSM or a seccomp filter may each be what refuses."""
    from .. import _sys
    try:
        with open("/proc/sys/user/max_user_namespaces") as f:
            if f.read().strip() == "0":
                return "user.max_user_namespaces is 0"
    except OSError:
        pass
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:                                  # pragma: no cover - child
        os.close(r)
        try:
            _sys.unshare(_sys.CLONE_NEWUSER)
            os.write(w, b"0")
        except OSError as e:
            os.write(w, str(e.errno).encode())
        os._exit(0)
    os.close(w)
    out = os.read(r, 16)
    os.close(r)
    os.waitpid(pid, 0)
    if out in (b"0", b""):
        return None if out else "the probe died"
    import errno
    code = int(out)
    return f"unshare(CLONE_NEWUSER) fails here: {errno.errorcode.get(code, code)} ({os.strerror(code)})"


def choose(plan, problem=userns_problem) -> tuple:
    """(backend or None, the reason in one line). plan.backend (--isolation) forces one."""
    from .. import _sys
    if plan.backend == LANDLOCK or (plan.backend is None and plan.isolation == LANDLOCK):
        if not _sys.landlock_abi():
            return None, "the namespace-free backend needs Landlock, which this kernel has not (or not enabled)"
    if plan.backend == LANDLOCK:
        return LANDLOCK, "--isolation landlock"
    if not plan.namespaces.user:
        return NAMESPACES, "the plan uses no user namespace"
    why = problem()
    if why is None:
        return NAMESPACES, "user namespaces work"
    if plan.isolation == LANDLOCK and plan.backend is None:
        return LANDLOCK, f"no user namespaces ({why}); the profile accepts isolation landlock"
    return None, (f"the profile requires namespaces and this machine has no user namespaces ({why}); "
                  + ACCEPT_HINT)


def refusal(plan) -> "str | None":
    """What the plan cannot have in the namespace-free backend (one line), or None."""
    if plan.capabilities:
        return (f"capabilities: {' '.join(plan.capabilities)}: the namespace-free backend keeps no "
                "capability (they would be the host's)")
    fs = plan.filesystem
    if fs.image or fs.root != "host":
        return "filesystem: an image or a root: directory needs the namespaces backend (no mounts here)"
    binds = [m.target for m in fs.mounts if m.type != "tmpfs"]
    if binds:
        return (f"filesystem: mounts at {' '.join(binds)} need the namespaces backend (no mounts here; a "
                "tmpfs target is the host's directory of that name, shared)")
    if not plan.seccomp.enabled:
        return "seccomp: the namespace-free backend needs the plan's seccomp filter (it is disabled)"
    keys = keyring_calls_open(plan.seccomp)
    if keys:
        return (f"seccomp: {' '.join(keys)} allowed: without a user namespace the program shares the "
                "caller's user keyring (the caller's keys, by uid); deny them or use the namespaces backend")
    return None


KEYRING_CALLS = ("keyctl", "add_key", "request_key")


def keyring_calls_open(s) -> list:
    """The keyring calls the filter may let through (allowed or logged, or decided by their
    arguments). A new session keyring (the program's last steps) does not hide the *user* keyring,
    which the kernel finds by uid in the user namespace: the namespaces backend has a register of
    its own, the namespace-free backend is the caller's uid in the caller's namespace."""
    from policies.seccomp_verdict import fixed_verdict
    out = []
    for name in KEYRING_CALLS:
        v = fixed_verdict(s, name)
        if v is None or v[0] in ("allow", "log"):
            out.append(name)
    return out


def confined_plan(plan):
    """The plan as the namespace-free backend enforces it: Landlock file system rules always (a
    profile without them gets its mount plan's, on the host's paths: policies.landlock,
    derive_from_mounts host=True), and `network: none` as Landlock's TCP rules with no port (ABI 4;
    other protocols are not covered: docs/security.md)."""
    from dataclasses import replace
    from policies import plan as P
    from policies.landlock import derive_from_mounts
    ll = plan.landlock or P.Landlock()
    if not ll.filesystem or ll.derived:
        ll = replace(ll, filesystem=True, derived=True, paths=derive_from_mounts(plan.filesystem, host=True))
    if plan.network.mode == "none" and not ll.network:
        ll = replace(ll, network=True, bind=(), connect=(), needs_abi=max(ll.needs_abi, P.LANDLOCK_NET_ABI))
    return replace(plan, landlock=ll)


def run(plan, bpf, argv, env: dict, *, on_event=None, sandbox_id: str = "nsfree") -> int:
    """The namespace-free sandbox: the program's exit status (128+N: killed by signal N), 125 when
    it could not be confined (one line on stderr), 126/127 as execve's. env: launcher.build_env's."""
    from .. import _sys, capabilities, landlock, seccomp
    why = refusal(plan)
    if why:
        raise NsfreeError(why)
    plan = confined_plan(plan)
    try:
        landlock.check(plan)                           # the profile's ABI (exit 125 below it)
    except landlock.LandlockError as e:
        raise NsfreeError(str(e)) from None
    plain, _ = seccomp.exec_filters(plan.seccomp, bpf)  # errno actions: no listener to notify here
    source = landlock.denial_source(plan, kernel_watch=True) if on_event else None
    sup = None
    if source == landlock.NOTIFY:
        # the Landlock fallback (sandbox/notify/landlock_fallback.py): the calls Landlock could deny
        # are notified to a supervisor in this process, which records the denials it predicts
        from ..notify.landlock_fallback import Predictor, notify_filter
        f = notify_filter(seccomp.Filters(plain), plan.seccomp, plan.landlock)
        if f.mode == "user_notif":
            from ..notify.supervision import Supervision
            plain = f.program
            sup = Supervision(f, plan.seccomp, on_event, landlock=Predictor(plan.landlock))
    cg = registered = None
    if plan.limits.any():
        from ..cgroups import manager
        from ..cgroups.files import CgroupError
        from ..store import reclaim
        rootless = os.geteuid() != 0
        try:                                           # recorded first: a SIGKILLed supervisor's is reclaimed
            registered = reclaim.register(sandbox_id, rootless=rootless, cgroup=True)
            cg = manager.create_for_sandbox(sandbox_id, plan.limits, rootless=rootless)
        except (CgroupError, OSError) as e:
            reclaim.unregister(registered)
            raise NsfreeError(f"limits: {e} (the namespace-free backend puts limits in a delegated cgroup)") \
                from None
    argv = list(argv or plan.process.argv)
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    go_r, go_w = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:                                       # the program's process
        os.close(err_r)
        os.close(go_w)
        stage = "prepare"
        try:
            import prctl
            os.setsid()                                # no controlling terminal: no TIOCSTI
            prctl.set_pdeathsig(signal.SIGKILL)
            if os.read(go_r, 1) != b"G":               # in the cgroup first
                os._exit(125)
            for r in plan.process.rlimits:
                stage = f"ulimit:{r.name}"
                import resource
                rid = getattr(resource, "RLIMIT_" + r.name.upper())
                resource.setrlimit(rid, (resource.RLIM_INFINITY if r.soft == -1 else r.soft,
                                         resource.RLIM_INFINITY if r.hard == -1 else r.hard))
            stage = "cwd"
            os.chdir(plan.process.cwd)
            stage = "no_new_privs"
            prctl.set_no_new_privs(1)                  # (Landlock needs it without CAP_SYS_ADMIN)
            stage = "landlock"
            fd = landlock.build(plan)
            if fd >= 0:
                landlock.enter(fd)
            else:
                _sys.landlock_confine()                # at least a domain of its own (ptrace scoping)
            stage = "capabilities"
            if os.geteuid() == 0:                      # (an unprivileged caller has none to drop:
                capabilities.drop_bounding(0)          # no_new_privs keeps file capabilities off)
            capabilities.set_sets(0, uid_inside=os.geteuid())
            _sys.close_range_cloexec(3)
            _sys.default_signals()
            stage = "seccomp"
            if sup is not None:
                from ..notify.listener import send_listener
                lfd = seccomp.install(plain, listener=True)
                send_listener(sup.child_sock, lfd)       # (sendmsg, close: allowed, checked above)
                os.close(lfd)
                sup.child_sock.close()
            else:
                seccomp.install(plain)
            stage = "exec"
            os.execvpe(argv[0], argv, env)
        except Exception as e:                         # noqa: BLE001 - one line, never a traceback
            code = getattr(e, "errno", 0) or 0
            os.write(err_w, f"{code} {stage} {e}".encode())
            os._exit(127 if stage == "exec" and code == 2 else 126 if stage == "exec" else 125)
    os.close(err_w)
    os.close(go_r)
    watch = None
    if on_event:
        on_event("sandbox_start", pid=pid, argv=argv)
        if source == landlock.KERNEL:              # the kernel's records of its denials (root)
            try:
                watch = landlock.DenialWatch(on_event, lambda p: p == pid)
            except OSError:
                pass
    if sup is not None:
        sup.started(pid)                           # receives the listener, answers in a thread
    try:
        if cg is not None:
            cg.add_pid(pid)
        os.write(go_w, b"G")
    except OSError as e:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        if watch is not None:
            watch.stop()
        if sup is not None:
            sup.stop()
        raise NsfreeError(f"limits: cannot put the program in its cgroup: {e}") from None
    finally:
        os.close(go_w)
    forward = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)
    old = {s: signal.signal(s, lambda n, _f: os.kill(pid, n)) for s in forward}
    timed_out = False
    try:
        if plan.process.timeout:                       # --timeout: the program's session killed (exit 124)
            import select
            pfd = os.pidfd_open(pid)
            try:
                if not select.select([pfd], [], [], plan.process.timeout)[0]:
                    timed_out = True
                    for kill in (lambda: os.killpg(pid, signal.SIGKILL), lambda: os.kill(pid, signal.SIGKILL)):
                        try:
                            kill()
                        except OSError:
                            pass
            finally:
                os.close(pfd)
        _, status = os.waitpid(pid, 0)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    if watch is not None:
        watch.stop()
    if sup is not None:
        sup.stop()
    report = os.read(err_r, 4096).decode(errors="replace")
    os.close(err_r)
    events = cg.finish() if cg is not None else []   # leftovers killed, events and peaks read, removed
    if registered:
        from ..store import reclaim
        reclaim.unregister(registered)
    code = os.waitstatus_to_exitcode(status)
    code = 128 - code if code < 0 else code
    if timed_out:
        code = 124
        if on_event:
            on_event("timeout", timeout=plan.process.timeout)
    if report:
        errno_, stage, text = (report.split(" ", 2) + ["", ""])[:3]
        if code == 125:
            raise NsfreeError(f"{stage}: {text}")
        import sys
        sys.stderr.write(f"pysandbox: {stage}: {text}\n")
    if on_event:
        on_event("sandbox_exit", exit_code=code, events=events, signal=-os.waitstatus_to_exitcode(status)
                 if os.WIFSIGNALED(status) else None)
    return code


class NsfreeError(Exception):
    """The namespace-free sandbox could not be set up (exit 125, one line)."""
