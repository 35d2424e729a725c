"""Carry out a compiled Plan: the supervisor side of a sandbox.

The steps, in the order they run (this process's half and PID 1's and the program's), are read in
one place: sandbox/launch/sequence.py. Launch carries the supervisor's state through them, then
waits (signals forwarded, --timeout), reads PID 1's report and cleans up.

Exit status: the program's (128+N when killed by signal N); 125 the sandbox could not be set up,
126 the command cannot be executed, 127 command not found, 124 timed out.
"""
from __future__ import annotations

# No `typing` import (as policies/plan.py): annotations are strings, `Optional`/`Callable` are
# documentation only, and `typing` would cost milliseconds on the launch path.

import os
import stat
import select
import signal
import threading
import time
from dataclasses import field

from policies.plan import dataclass            # shared methods, none compiled by exec at import
from policies.subids import holds_range

from . import _sys, idmap, seccomp
from .init import init_image, read_to_end
from .launch import sequence
from .wire import LaunchContext

EXIT_SETUP = 125
EXIT_CANNOT_EXEC = 126
EXIT_NOT_FOUND = 127
EXIT_TIMEOUT = 124
POLL_MAX_MS = 2**31 - 1     # poll(2) takes an int of milliseconds (~24.8 days): a longer --timeout waits in steps

# Set by a supervisor that raised its own RLIMIT_NOFILE (the API's launch server): the limits its
# sandboxes start from (the caller's), restored in PID 1.
CHILD_NOFILE = None

# the signals a foreground supervisor forwards to PID 1 (Launch.forward)
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)

# Stale cgroups (of SIGKILLed supervisors) are looked for at the first launch of a process, then at
# most every RECLAIM_EVERY seconds: a launch server starting many sandboxes need not rescan each time.
RECLAIM_EVERY = 30.0
_RECLAIMED = None


def needs_state(plan) -> bool:
    """Whether a launch of the plan records what it creates on the host in the state directory
    (cgroup limits, a network of its own, an image's layers: Launch._register)."""
    return bool(plan.limits.any() or plan.network.mode not in ("none", "host") or plan.filesystem.image)


class LaunchError(Exception):
    """The sandbox could not be set up as the plan says (exit 125). One line, names the control.
    .step: the launch step that failed (preflight, audit supervision, cgroup, network, filesystem,
    namespaces, id maps, release); .path: the file it failed on, when there is one."""

    def __init__(self, message: str, code: int = EXIT_SETUP, *, step: Optional[str] = None,
                 path: Optional[str] = None):
        super().__init__(message)
        self.code = code
        self.step = step
        self.path = path

    @classmethod
    def from_os(cls, step: str, e: OSError) -> "LaunchError":
        """A bare OSError of a launch step -> one line naming the step and the path."""
        path = os.fsdecode(e.filename) if e.filename is not None else None
        why = e.strerror or str(e)
        return cls(f"{step}: {path}: {why}" if path else f"{step}: {why}", step=step, path=path)


@dataclass(frozen=False)
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


def build_env(plan, environ=None) -> dict:
    """The program's environment: what the plan lets through of environ (this process's, unless
    given: the CLI's launch server passes its client's), then the plan's own variables."""
    env = {}
    environ = os.environ if environ is None else environ
    for name in plan.process.env_allow:
        if name.endswith("*"):
            env.update({k: v for k, v in environ.items() if k.startswith(name[:-1])})
        elif name in environ:
            env[name] = environ[name]
    env["container"] = "pysandbox"   # podman's convention (docs/profile-format.md); a profile's env may set it
    env.update(dict(plan.process.env_set))
    env.setdefault("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    return env


def needs_network(plan) -> bool:
    """A network of its own to prepare (sandbox.network): anything beyond none/host."""
    net = plan.network
    return net.mode not in ("none", "host") or bool(net.ports) or bool(net.egress_allow) \
        or net.egress_default == "deny"


def needs_image(plan) -> bool:
    """An image root or volumes to prepare per run (sandbox.store.overlay / sandbox.store.volumes)."""
    fs = plan.filesystem
    return bool(fs.image) or any(m.type == "volume" for m in fs.mounts)


def prebuildable(plan) -> bool:
    """Whether a PID 1 may build this plan's root file system before the run exists (the launch
    server's spares, sandbox/server/): the root then needs nothing of the run — no image,
    volume, network (hosts file) of its own — and binds no path the caller chose (the host root's
    system directories and /etc entries only): a user's bind source may be replaced between two
    runs (rm -rf DIR; mkdir DIR), and the run must see the new one. (And a pid namespace: the
    builder is pid 2 of it, and the program takes pid 2 back.)"""
    fs = plan.filesystem
    return plan.namespaces.pid and not needs_network(plan) and not needs_image(plan) \
        and fs.root == "host" and not any(m.type == "bind" for m in fs.mounts)


def preflight(plan, rootless: bool) -> None:
    """Refuse plans this caller/kernel cannot enforce, before anything is created."""
    ns = plan.namespaces
    if rootless:
        if not ns.user:
            raise LaunchError("namespaces: a rootless sandbox needs a user namespace (namespaces.user: true)")
        if idmap.uses_helpers(plan, rootless):     # ranges: the caller's /etc/subuid, /etc/subgid ids
            problem = idmap.helper_problem()
            if problem:
                raise LaunchError(f"user.uid_map: ranges of subordinate ids need newuidmap/newgidmap: {problem}")
        if plan.user.groups and not (idmap.uses_helpers(plan, rootless) and holds_range(plan.user.gid_map)):
            raise LaunchError("user.groups: supplementary groups need root, or a subordinate gid range "
                              "(setgroups is denied to a rootless caller mapping only its own gid)")
    if ns.user and not os.path.exists("/proc/self/ns/user"):
        raise LaunchError("namespaces.user: this kernel has no user namespaces")
    if ns.time and not os.path.exists("/proc/self/ns/time"):
        raise LaunchError("namespaces.time: this kernel has no time namespaces")
    if ns.cgroup and not os.path.exists("/proc/self/ns/cgroup"):
        raise LaunchError("namespaces.cgroup: this kernel has no cgroup namespaces")
    # (seccomp without no_new_privs: the program's process loads its filter while it holds
    # CAP_SYS_ADMIN in the sandbox's user namespace, rootless too — sequence.last_steps, pid1.c)
    landlock_check(plan)
    pid1_reach_check(plan.capabilities)


def landlock_check(plan) -> None:
    """The profile's Landlock ABI (sandbox/landlock.py): refused below it (exit 125)."""
    from . import landlock
    try:
        landlock.check(plan)
    except landlock.LandlockError as e:
        raise LaunchError(str(e)) from None


def pid1_reach_check(caps) -> None:
    """PID 1 out of the program's reach: CAP_SYS_PTRACE in the sandbox's user namespace beats both
    the uid check and PID 1's non-dumpability, and only the program's Landlock domain (pid1.c,
    landlock_confine) keeps it off PID 1. Without Landlock scoping (ABI < 6, or disabled at boot)
    a program keeping CAP_SYS_PTRACE is refused (without it, PID 1's non-dumpability is enough)."""
    if "SYS_PTRACE" in caps and _sys.landlock_abi() < _sys.LANDLOCK_SCOPE_ABI:
        abi = _sys.landlock_abi()
        raise LaunchError("capabilities: SYS_PTRACE needs Landlock ABI 6 (Linux 6.12) to keep PID 1 out of "
                          f"the program's reach; this kernel has {f'ABI {abi}' if abi else 'no Landlock'}")


class Launch:
    """One sandbox run in three steps, so that one process can supervise many at once:

        run = Launch(plan, argv, ...)
        if run.start():             # everything up to releasing PID 1 ("G"); False: run.result says why
            ... wait until run.pidfd is readable (or run.deadline passed: run.expire()) ...
        result = run.finish()       # reap, interpret the report, clean up, emit sandbox_exit

    launch() below does the three in a row (the CLI, detached sandboxes, learn mode); the API's
    launch server (sandbox/server/) interleaves many."""

    def __init__(self, plan, argv=None, *, bpf: Optional[bytes] = None, sandbox_id: Optional[str] = None,
                 name: Optional[str] = None, on_event: Optional[Callable] = None,
                 stdin=None, stdout=None, stderr=None, learn_plan=None, console=None, kernel_watch=False,
                 keep_keyring: bool = False):
        self.started = time.monotonic()
        self.plan = plan
        self.rootless = os.geteuid() != 0
        self.sandbox_id = sandbox_id or os.urandom(6).hex()
        self.argv = tuple(argv) if argv else tuple(plan.process.argv)
        self.bpf = bpf
        self.name = name
        self.on_event = on_event
        self.emit = on_event or _no_event
        self.stdio = (stdin, stdout, stderr)
        self.keep_keyring = keep_keyring       # the caller's session keyring for the program (runtime only)
        self.learn_plan = learn_plan   # learn mode: the base profile's seccomp plan (sandbox/learn.py)
        self.filters = None            # the run's seccomp filters (seccomp.filters), decided in context()
        self.console = console
        # Landlock denials: the caller reads the kernel's records (the CLI's foreground run), else the
        # notify layer's fallback records them (landlock.denial_source, decided in context())
        self.kernel_watch = kernel_watch
        self.environ = None            # the environment the plan's env.allow takes from (None: ours)
        self.landlock_notify = False
        self.cg = self.net = self.sup = self.ctx = None
        # egress interception (sandbox/network/egress/): the secrets (values after load_secrets) and
        # the sandbox's CA, kept in this process's memory for the egress proxy
        self.egress_secrets = self.egress_ca = None
        self.registered = None   # sandbox/reclaim.py: our record of what this launch creates on the host
        self.pid = None
        self.pidfd = -1
        self.deadline = None
        self.timed_out = False
        self.result = None
        self._status_r = self._go_w = -1
        self._pid1_ends: tuple = ()   # PID 1's ends of its pipes, until it has its copies
        # audit supervision without a thread: the caller polls self.sup.inline_fds() (sandbox/server/)
        self.inline_supervision = False
        # clone(flags, ctx) -> pid: PID 1 made by someone else (a child of ours all the same, through
        # CLONE_PARENT), which then runs sequence.pid1 — sandbox/server/template.py. Never 0.
        self.clone = None
        self.clone_flags = None
        self.maps_done = False   # set by `clone`: the id maps were written for PID 1 already (a spare's)
        # before_release(pid): called by release() before "G" (pysandbox-runtime: the OCI `create`
        # holds the set-up sandbox here until `start`, sandbox/runtime/monitor.py); may raise LaunchError
        self.before_release = None
        # what PID 1 and the program do differently (sequence.LaunchHooks: pysandbox-runtime's, per launch)
        self.hooks = sequence.PLAIN
        self.cgroup_path = None  # the leaf's path below each hierarchy's root (an OCI bundle's linux.cgroupsPath)
        # reap(pid) -> PID 1's wait status, when PID 1 is not our child (pysandbox-runtime clones it
        # with CLONE_PARENT: the engine reaps it); None: waitpid
        self.reap = None

    def start(self) -> bool:
        """Set up and release the sandbox: the supervisor's half of the launch sequence
        (sandbox/launch/sequence.py, start). False when it could not be started (self.result says
        why; everything created is cleaned up already)."""
        self.step = "preflight"
        try:
            sequence.start(self)
            return True
        except BaseException as e:
            self._close_pid1_ends()
            if isinstance(e, idmap.IdMapError):
                e = LaunchError(str(e), step="id maps", path=e.path)
            if isinstance(e, OSError):                 # a bare OSError: name the step and the path
                e = LaunchError.from_os(getattr(self, "step", "set-up"), e)
            if isinstance(e, LaunchError):
                self.error = e
                self.result = Result(exit_code=e.code, message=f"pysandbox: {e}")
            if self.pid:
                _kill(self.pid, self.cg)
            if self.result is None:                    # not a LaunchError: clean up, then raise
                self.result = Result(exit_code=EXIT_SETUP)
                self._cleanup()
                raise
            self._cleanup()
            self._ending()
            return False

    # --- the supervisor's steps, in the order sandbox/launch/sequence.start takes them -----------

    def preflight(self) -> None:
        preflight(self.plan, self.rootless)

    def context(self) -> LaunchContext:
        """The run's context for PID 1: the program's argv, environment and filter, PID 1's pipes."""
        plan = self.plan
        try:                          # built here unless given (a cached plan comes with its filter)
            f = self.filters = seccomp.filters(plan.seccomp, self.bpf, audit=self.on_event is not None,
                                               learn=self.learn_plan is not None)
        except (seccomp.FilterError, OSError) as e:
            raise LaunchError(f"seccomp: {e}") from None
        if self.on_event is not None and self.learn_plan is None and plan.landlock is not None:
            from . import landlock
            if landlock.denial_source(plan, kernel_watch=self.kernel_watch) == landlock.NOTIFY:
                from .notify.landlock_fallback import notify_filter
                f = self.filters = notify_filter(f, plan.seccomp, plan.landlock)
                self.landlock_notify = f.mode == "user_notif"
        env = build_env(plan, self.environ)
        ca_bundle = self.intercept_setup(env) if plan.network.http or plan.network.secrets else None
        self._status_r, status_w = os.pipe2(os.O_CLOEXEC)
        go_r, self._go_w = os.pipe2(os.O_CLOEXEC)
        self._pid1_ends = (go_r, status_w)             # closed once PID 1 has its copies
        ctx = self.ctx = LaunchContext(plan, self.argv, env, f.program, self.rootless, go_r, self._go_w,
                                       self._status_r, status_w)
        ctx.seccomp_log = f.log
        ctx.ca_bundle = ca_bundle
        ctx.nofile = CHILD_NOFILE
        ctx.stdio = self.stdio
        ctx.keep_keyring = self.keep_keyring
        ctx.console = self.console   # socket: the program sends its pty master back (run -t)
        return ctx

    def intercept_setup(self, env: dict) -> str:
        """Egress interception (docs/network.md, "Secrets"): each secret's placeholder into the
        program's environment (sandbox.network.egress.secrets), the sandbox's CA made in memory and
        the trust variables (sandbox.network.egress.ca). Returns the trust store's text (host CAs +
        the sandbox's CA, no key), which rootfs binds over the root's CA bundle paths."""
        try:
            from .network.egress import ca, secrets
        except ImportError as e:
            raise LaunchError(f"network.secrets / egress.http: TLS interception needs the `net` extra "
                              f"(pip install 'pysandbox[net]'): {e}") from None
        n = self.plan.network
        self.egress_secrets = secrets.SecretSet(n.secrets)
        for name in secrets.env_sources(n.secrets):   # never passed through (env.allow, -e NAME)
            env.pop(name, None)
        secrets.take_env_sources(n.secrets)            # nor inherited by a helper this launch spawns
        env.update(self.egress_secrets.env())
        env.update(ca.trust_env())
        self.egress_ca = ca.SandboxCA(self.sandbox_id, [r.host for r in n.http] + [h for s in n.secrets for h in s.hosts])
        return self.egress_ca.bundle()

    def load_secrets(self) -> None:
        """The secrets' values, into this process's memory only: after PID 1 was cloned, so no copy
        of this process in the sandbox holds one. Missing or malformed: the launch stops (125)."""
        if self.egress_secrets:
            self.step = "secrets"
            from .network.egress.secrets import SecretError, check_not_exposed
            try:
                check_not_exposed(self.egress_secrets, self.plan)
                self.egress_secrets.load()
            except SecretError as e:
                raise LaunchError(f"network.secrets: {e}") from None

    def clone_pid1(self, ctx) -> int:
        """clone with the plan's namespaces: PID 1 (sequence.pid1_main), or through `self.clone`
        (the launch server's template). Our copies of what PID 1 inherited are closed after."""
        ns = self.plan.namespaces
        flags = _sys.CLONE_NEWNS
        for on, flag in ((ns.user, _sys.CLONE_NEWUSER), (ns.pid, _sys.CLONE_NEWPID),
                         (ns.uts, _sys.CLONE_NEWUTS), (ns.ipc, _sys.CLONE_NEWIPC), (ns.net, _sys.CLONE_NEWNET)):
            if on:
                flags |= flag
        self.clone_flags = flags
        self.step = "namespaces"
        try:
            if self.clone is None:
                init_image()                       # PID 1's last image, inherited (sandbox/init.py)
            try:
                pid = self.clone(flags, ctx) if self.clone is not None else _sys.clone_fork(flags)
            except OSError as e:
                raise LaunchError(f"namespaces: cannot create them: {e.strerror}") from None
            if pid == 0:
                try:
                    sequence.pid1_main(ctx, self.hooks)
                finally:
                    os._exit(1)
            self.pid = pid
        finally:
            self._close_pid1_ends()
        for fd in (*ctx.cg_fds, *(() if ctx.cg_v2_fd is None else (ctx.cg_v2_fd,))):
            os.close(fd)                           # PID 1 has its own copies
        ctx.cg_fds, ctx.cg_v2_fd = (), None
        return pid

    def write_maps(self, pid: int) -> None:
        self.step = "id maps"
        if self.plan.namespaces.user and not self.maps_done:   # (a spare's were written already)
            idmap.write_maps(pid, self.plan, self.rootless)

    def join_cgroup(self, pid: int) -> None:
        self.step = "cgroup"
        if self.cg is not None:
            self.cg.add_pid(pid)                   # v2 only: PID 1 joined v1 leaves itself

    def attach_network(self, pid: int) -> None:
        self.step = "network"
        if self.net is not None:
            if self.egress_ca is not None:           # the proxy intercepts with the launch's CA and secrets
                self.net.intercept = (self.egress_secrets, self.egress_ca)
            try:
                self.net.attach(pid)
            except Exception as e:
                raise LaunchError(str(e) if str(e).startswith("network") else f"network: {e}") from None

    def announce(self, pid: int) -> None:
        """sandbox_start; the audit supervision starts watching."""
        more = {}
        if self.cg is not None:                    # PID 1 may not have joined them yet: say where
            more["cgroups"] = [d for d in self.cg.paths if os.path.basename(d) == self.cg.sandbox_id]
        self.emit("sandbox_start", pid=pid, argv=list(self.argv), **more)
        if self.sup is not None:
            kw = {"inline": True} if self.inline_supervision else {}
            self.sup.started(pid, lambda p=pid, c=self.cg: _kill(p, c), ctx=self.ctx, **kw)

    def release(self, pid: int) -> None:
        """"G" on PID 1's go pipe; the deadline starts."""
        self.step = "release"
        if self.before_release is not None:
            self.before_release(pid)
        self.pidfd = _sys.pidfd_open(pid)
        try:
            os.write(self._go_w, b"G")
        except BrokenPipeError:
            raise LaunchError("the sandbox's PID 1 ended before it was released") from None
        os.close(self._go_w)
        self._go_w = -1
        if self.plan.process.timeout:
            self.deadline = time.monotonic() + self.plan.process.timeout

    def _close_pid1_ends(self) -> None:
        for fd in self._pid1_ends:
            os.close(fd)
        self._pid1_ends = ()

    def prepare(self, ctx) -> None:
        """Before clone: audit supervision, cgroup, network, image root and volumes."""
        plan, rootless = self.plan, self.rootless
        self.step = "audit supervision"
        if self.on_event is not None:    # audit: seccomp denials recorded, integrity checked (sandbox/notify/)
            from .notify.supervision import Supervision
            try:
                predictor = None
                if self.landlock_notify:
                    from .notify.landlock_fallback import Predictor
                    predictor = Predictor(plan.landlock)
                self.sup = Supervision(self.filters, plan.seccomp, self.emit, learn_plan=self.learn_plan,
                                       landlock=predictor)
            except OSError as e:
                raise LaunchError(f"seccomp: {e}") from None
            ctx.notify_sock = self.sup.child_sock
        self._register(plan, rootless)
        self.step = "cgroup"
        if plan.limits.any() or self.cgroup_path:
            from .cgroups import leftover, manager
            from .cgroups.files import CgroupError
            global _RECLAIMED
            if _RECLAIMED is None or time.monotonic() - _RECLAIMED > RECLAIM_EVERY:
                leftover.reclaim_stale(rootless=rootless)  # leftovers of SIGKILLed supervisors (ours only)
                _RECLAIMED = time.monotonic()
            try:
                self.cg = manager.create_for_sandbox(self.sandbox_id, plan.limits, rootless=rootless,
                                                     path=self.cgroup_path)
                ctx.cg_fds = self.cg.join_fds()        # PID 1 joins by itself (no RCU wait on v1)
                ctx.cg_v2_fd = self.cg.v2_fd()         # PID 1 forks the program into it (clone3)
            except CgroupError as e:
                raise LaunchError(f"limits: {e}") from None
        self.step = "network"
        if needs_network(plan):
            from .network import endpoint
            from .network.common import NetworkError
            try:
                self.net = endpoint.prepare(plan.network, self.sandbox_id, self.name, rootless=rootless,
                                            hostname=plan.process.hostname, on_event=self.on_event)
            except NetworkError as e:
                raise LaunchError(str(e) if str(e).startswith("network") else f"network: {e}") from None
            if self.net is not None:
                ctx.hosts_text = self.net.etc_hosts()
                ctx.hosts_file = self.net.hosts_path
        self.step = "filesystem"
        if needs_image(plan):
            _prepare_image_and_volumes(ctx, plan, self.sandbox_id, rootless, self.name)   # sandbox.store.overlay / sandbox.store.volumes

        if any(m.type == "bind" for m in plan.filesystem.mounts):
            ctx.bind_srcs = open_bind_sources(plan, rootless)

    def _register(self, plan, rootless: bool) -> None:
        """Record what this launch is about to create on the host, before creating it, owned by this
        process (pid + start time): if it is SIGKILLed, the next pysandbox command of any kind
        removes it (sandbox/reclaim.py). Nothing to record for a sandbox that creates nothing there."""
        if not needs_state(plan):
            return
        net = plan.network.mode if plan.network.mode not in ("none", "host") else None
        overlay = None
        if plan.filesystem.image:
            from audit.paths import state_dir
            overlay = state_dir(rootless)
        from .store import reclaim
        try:
            # a detached sandbox's supervisor registered it already (its state): merged, and that
            # record stays its own to remove
            ours = not os.path.lexists(reclaim.record_path(self.sandbox_id, rootless))
            path = reclaim.register(self.sandbox_id, rootless=rootless, cgroup=plan.limits.any(),
                                    network=net, overlay=overlay, name=self.name)
            self.registered = path if ours else None
        except OSError as e:
            raise LaunchError(f"state: cannot record the sandbox's resources for their clean-up: "
                              f"{e.strerror or e}") from None

    def expire(self) -> None:
        """The deadline passed: kill the whole sandbox (finish() then reports exit 124)."""
        self.timed_out = True
        _kill(self.pid, self.cg)

    def kill(self) -> None:
        if self.pid:
            _kill(self.pid, self.cg)

    def forward(self, sig: int, _frame=None) -> None:
        """A signal handler: the signal to PID 1 (which forwards it to the program)."""
        if self.pid:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass

    def wait(self) -> None:
        """Block until PID 1 has ended, enforcing the deadline (poll on the pidfd: any thread)."""
        poller = select.poll()
        poller.register(self.pidfd, select.POLLIN)
        while True:
            wait_ms = None if self.deadline is None else max(0, int((self.deadline - time.monotonic()) * 1000))
            if poller.poll(None if wait_ms is None else min(wait_ms, POLL_MAX_MS)):   # (a long timeout: in steps)
                return
            if self.deadline is not None and time.monotonic() >= self.deadline:
                self.expire()
                return

    def finish(self) -> Result:
        """After PID 1 ended (or expire()/kill()): reap, interpret, clean up. Returns the Result."""
        if self.result is not None:                   # start() failed: already cleaned up
            return self.result
        plan = self.plan
        try:
            p1_status = self.reap(self.pid) if self.reap is not None else os.waitpid(self.pid, 0)[1]
            self.pid = None
            os.set_blocking(self._status_r, False)   # PID 1 is gone; other PID 1s may hold copies of status_w
            report = read_to_end(self._status_r).decode(errors="replace")
            result = _interpret(report, p1_status, self.argv, self.timed_out, plan)
            sup = self.sup
            if sup is not None:
                sup.stop()
                if sup.killed and not self.timed_out:   # a kill rule: recorded, then the sandbox was killed
                    result = Result(128 + signal.SIGSYS, signal=signal.SIGSYS,
                                    message=f"pysandbox: killed by the seccomp policy ({sup.killed})")
        except BaseException:
            self.result = Result(exit_code=EXIT_SETUP)
            if self.pid:
                _kill(self.pid, self.cg)
            self._cleanup()
            raise
        self.result = result
        self._cleanup()
        self._ending()
        return self.result

    def _cleanup(self) -> None:
        result, plan, ctx = self.result, self.plan, self.ctx
        if self.egress_secrets is not None:
            self.egress_secrets.clear()          # the values leave this process's memory with the run
        if self.pid:
            try:
                os.waitpid(self.pid, 0)
            except ChildProcessError:
                pass
            self.pid = None
        if self.pidfd >= 0:
            os.close(self.pidfd)
            self.pidfd = -1
        sup = self.sup
        if sup is not None:
            sup.stop()
        for fd in (self._status_r, self._go_w):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._status_r = self._go_w = -1
        for fd in (*(ctx.cg_fds if ctx is not None else ()),
                   *(() if ctx is None or ctx.cg_v2_fd is None else (ctx.cg_v2_fd,))):
            os.close(fd)
        if self.cg is not None:
            try:
                # PID 1 is reaped by now (above): with a pid namespace, nothing of the sandbox is left
                result.events.extend(self.cg.finish(pidns_reaped=bool(plan.namespaces.pid)))
            except Exception as e:  # clean-up problems are reported, never hidden
                result.events.append({"type": "integrity_violation", "what": "cgroup", "detail": str(e)})
        if ctx is not None and ctx.image_root is not None:   # discard the writable layer, or keep it (--keep)
            try:
                from .store import overlay
                keep = plan.filesystem.keep and result.exit_code != EXIT_SETUP
                result.events.extend(overlay.finish_root(ctx.image_root, keep=keep) or ())
                if keep:
                    kept = (f"pysandbox: kept the writable layer of {self.sandbox_id} (pysandbox diff "
                            f"{self.name or self.sandbox_id})" if not ctx.image_root.read_only else
                            "pysandbox: --keep: nothing kept, the root was read-only (use --read-write)")
                    result.message = kept if not result.message else result.message + "\n" + kept
            except Exception as e:
                result.events.append({"type": "integrity_violation", "what": "image root", "detail": str(e)})
        for v in (*(ctx.volume_dirs.values() if ctx is not None else ()),   # our copies of detached volume
                  *(b[0] for b in (ctx.bind_srcs if ctx is not None else ()) if b is not None)):   # trees, bind sources
            if isinstance(v, int):
                try:
                    os.close(v)
                except OSError:
                    pass
        net = self.net
        if net is not None:
            try:
                net.release()
            except Exception as e:
                result.events.append({"type": "integrity_violation", "what": "network", "detail": str(e)})
            if getattr(net, "denied", None):          # packets the egress allow-list refused (audit)
                result.events.append({"type": "limit_exceeded", "limit": "network.egress", "value": 0,
                                      "peak": net.denied, "via": "supervisor",
                                      "message": f"egress allow-list denied {net.denied} packet(s)"})
            if getattr(net, "spoof_dropped", None):   # frames the port's allow-list dropped (audit)
                result.events.append({"type": "limit_exceeded", "limit": "network.antispoof", "value": 0,
                                      "peak": net.spoof_dropped, "via": "supervisor",
                                      "message": f"private network: {net.spoof_dropped} frame(s) from the "
                                                 "sandbox's port dropped (not IPv4/ARP from its own "
                                                 "address and MAC)"})
        if sup is not None:
            result.events.extend(sup.integrity())     # audit: post-exit integrity checks (audit/integrity.py)
        if self.registered:                           # everything above is removed: forget it
            from .store import reclaim
            reclaim.unregister(self.registered)
            self.registered = None

    def _ending(self) -> None:
        result, plan = self.result, self.plan
        result.sandbox_id = self.sandbox_id
        result.duration = time.monotonic() - self.started
        if self.cg is not None:
            from .cgroups.stats import summary_line
            line = summary_line(result.events)
            if line:
                result.message = line if not result.message else result.message + "\n" + line
                oom = any(e.get("type") == "oom_kill" for e in result.events)
                if oom and (result.exit_code in (EXIT_SETUP, 137) or result.signal == signal.SIGKILL):
                    result.exit_code = 137
        if result.timed_out:
            self.emit("timeout", timeout=plan.process.timeout)
        self.emit("sandbox_exit", exit_code=result.exit_code, duration=round(result.duration, 6),
                  signal=result.signal, events=result.events)


def _no_event(*_a, **_k) -> None:
    pass


def launch(plan, argv=None, *, bpf: Optional[bytes] = None, sandbox_id: Optional[str] = None,
           name: Optional[str] = None, on_event: Optional[Callable] = None,
           stdin=None, stdout=None, stderr=None, learn_plan=None,
           console=None, kernel_watch=False) -> Result:
    """Run argv (or the plan's default argv) in a sandbox made from plan. Blocks until it ends.
    Signals (TERM INT HUP QUIT USR1 USR2) are forwarded to PID 1 when called from the main thread."""
    run = Launch(plan, argv, bpf=bpf, sandbox_id=sandbox_id, name=name, on_event=on_event, stdin=stdin,
                 stdout=stdout, stderr=stderr, learn_plan=learn_plan, console=console, kernel_watch=kernel_watch)
    old_handlers = {}
    try:
        if threading.current_thread() is threading.main_thread():
            for sig in FORWARDED:
                old_handlers[sig] = signal.signal(sig, run.forward)
        if not run.start():
            return run.result
        run.wait()
    except BaseException:
        run.kill()
        if run.result is None:
            run.result = Result(exit_code=EXIT_SETUP)
            run._cleanup()
        raise
    finally:
        for sig, h in old_handlers.items():
            signal.signal(sig, h)
    return run.finish()


def _prepare_image_and_volumes(ctx, plan, sandbox_id: str, rootless: bool, name: Optional[str] = None) -> None:
    """Before clone: an image's overlay root (per-sandbox upper/work dirs) and named volume dirs."""
    from .store.images import ImageError
    fs = plan.filesystem
    try:
        if fs.image:
            from .store import overlay
            if ctx.ca_bundle:                # the trust store's mount point (egress interception)
                from .rootfs import with_ca_mountpoint
                fs = with_ca_mountpoint(fs)
            ctx.image_root = overlay.prepare_root(fs, sandbox_id, rootless=rootless,
                                                  uid_map=plan.user.uid_map, gid_map=plan.user.gid_map,
                                                  name=name)
        vols = [m for m in fs.mounts if m.type == "volume"]
        if vols:
            from .store.volumes import resolve_volume
            owner = None
            if not rootless and plan.user.uid_map:      # the sandbox's root owns a new volume
                owner = tuple(next((e.outside for e in m if e.inside == 0), 0)
                              for m in (plan.user.uid_map, plan.user.gid_map))
            for m in vols:
                if m.source in ctx.volume_dirs:
                    raise ImageError(f"volume {m.source} is mounted twice (mount it once, bind a subdirectory "
                                     f"elsewhere if needed)")
                path = resolve_volume(m.source, rootless=rootless, create=True, owner=owner,
                                      maps=(plan.user.uid_map, plan.user.gid_map) if rootless else ())
                # as root: a detached tree (the store is 0700; PID 1 may be an unprivileged uid)
                ctx.volume_dirs[m.source] = path if rootless else _sys.open_tree(path, recursive=False)
    except ImageError as e:
        raise LaunchError(f"filesystem: {e}") from None
    except OSError as e:
        raise LaunchError.from_os("filesystem: volume", e) from None


def open_bind_sources(plan, rootless: bool) -> tuple:
    """Bind sources are opened here, by the supervisor, with the caller's own credentials: the
    caller's access decides what it may bind (issue 20 item 13) — not the sandbox's mapped root,
    which for a root caller is an unprivileged host uid that cannot enter /root. Returns one entry
    per plan.filesystem.mounts: None for other mounts, else (fd, is_dir, is_tree).

    As root the source becomes a detached mount tree here (open_tree on the descriptor, in the
    host's mount namespace); rootless, open_tree needs CAP_SYS_ADMIN over the host's mount
    namespace, so the O_PATH descriptor itself goes to PID 1. PID 1 cannot clone a mount of
    another mount namespace through a descriptor (the kernel's check_mnt: EINVAL), so there
    (rootfs.prepare) the source is cloned by name in the sandbox's copy of the host's mount table
    — whose mounts the kernel locks — and must be the very object opened here (device and inode),
    else the launch stops; as root, the supervisor's tree is used only when the sandbox's root
    cannot reach the source (rootfs.prepare says why it then refuses a program keeping
    CAP_SYS_ADMIN)."""
    out: list = []
    try:
        for m in plan.filesystem.mounts:
            if m.type != "bind":
                out.append(None)
                continue
            try:
                fd = os.open(m.source, os.O_PATH | os.O_CLOEXEC)
            except OSError as e:
                raise LaunchError(f"bind source {m.source}: {e.strerror} (opened as uid {os.getuid()})") from None
            try:
                is_dir = stat.S_ISDIR(os.fstat(fd).st_mode)
                if not rootless:
                    try:
                        tree = _sys.open_tree(fd)
                    except OSError as e:
                        raise LaunchError(f"bind source {m.source}: {e.strerror}") from None
                    os.close(fd)
                    fd = tree
            except BaseException:
                os.close(fd)
                raise
            out.append((fd, is_dir, not rootless))
    except BaseException:
        for b in out:
            if b is not None:
                os.close(b[0])
        raise
    return tuple(out)


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
