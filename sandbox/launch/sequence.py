"""The launch sequence, top to bottom, in kernel order: one step per line, each a function of the
module that owns the mechanism. Three processes take part; their halves are below in the order
they run (as runc's `Init` shows the parent's and the child's side):

  1. the supervisor   start()       the `pysandbox` process (run, run -d's supervisor, learn mode),
                                    or the API's launch server (sandbox/server/, PID 1 cloned by
                                    its template) — all through launcher.Launch, which start() drives
  2. PID 1            pid1()        the clone's child: cgroups, the release, then the program's
                                    process (in C: pysandbox-init, sandbox/pid1.c) and supervision
  3. the program      program()     root of the user namespace, hostname, cgroup namespace,
                                    loopback, root file system, pivot_root
                      last_steps()  terminal, Landlock, rlimits, cwd, capabilities, ids,
                                    no_new_privs, seccomp, execve — also what `pysandbox exec`'s
                                    command does (sandbox/execin.py), from the same ProgramSpec;
                                    pysandbox-init's `program` (pid1.c) is the same steps in C

What differs between callers is data: the plan, a wire.LaunchContext (the run's
descriptors, filter, environment; inherited by fork, or sent to a launch server's PID 1 in the
launch wire format), a wire.ProgramSpec (the program's last steps; pysandbox-init reads the same
spec as a PROGRAM section), and a LaunchHooks (below: the plain launch's, but for pysandbox-runtime's,
passed down per launch). Everything here is imported before the clone: after pivot_root the
package's files are not reachable.
"""
from __future__ import annotations

import errno
import gc
import os
import resource
import signal
import socket

import prctl

from policies.plan import dataclass      # shared methods, none compiled by exec at import

from .. import _sys, capabilities, init
from .. import wire
try:                                       # install() needs no libseccomp; imported before pivot_root
    from .. import seccomp as _seccomp
except ImportError:                        # pragma: no cover
    _seccomp = None


@dataclass(frozen=True)
class LaunchHooks:
    """How one launch's PID 1 and program differ from the plain launch, beside its data: the
    caller's per launch (launcher.Launch.hooks, passed down to pid1_main/pid1/program; never a
    module global: a launch server, the API or a test process launches many). PLAIN is every
    caller's but pysandbox-runtime's (sandbox/runtime/monitor.py sets the fields per container)."""
    # OCI startContainer hooks: called in the sandbox's namespaces after pivot_root, before the
    # program's last steps; an exception is a set-up failure (exit 125)
    before_program: object = None
    # False: PID 1 forks the program's Python process itself, never pysandbox-init's spawn mode (which
    # clones it as pid 2): for a pid namespace joined by path (PID 1 is not that namespace's init;
    # pid 2 is someone else's)
    spawn_inline: bool = True
    # False: PID 1 arms no parent-death signal before its release: cloned with CLONE_PARENT (a child
    # of `create`, which exits: the engine's subreaper reaps PID 1, as runc's)
    pid1_pdeathsig: bool = True
    # True: PID 1 was cloned into a mount namespace joined by path: the program's process builds no
    # root in it (no pivot_root, no mounts: that namespace's root, as it is)
    join_mount: bool = False


PLAIN = LaunchHooks()


# --- 1. the supervisor -----------------------------------------------------------------------

def start(run) -> None:
    """The supervisor's half (launcher.Launch.start; its errors become one line and exit 125)."""
    run.preflight()                        # refuse what this caller/kernel cannot enforce (launcher.preflight)
    ctx = run.context()                    # PID 1's pipes, the program's argv, environment, seccomp filter
    run.prepare(ctx)                       # audit supervision, reclaim record, cgroup, network, image, bind sources
    pid = run.clone_pid1(ctx)              # clone(CLONE_NEWUSER|NEWNS|NEWPID|NEWUTS|NEWIPC|NEWNET): PID 1 -> pid1()
    run.load_secrets()                     # network.secrets' values, in the supervisor only (network.egress.secrets)
    run.write_maps(pid)                    # setgroups, uid_map, gid_map (idmap.write_maps)
    run.join_cgroup(pid)                   # the cgroup2 leaf (cgroups; v1 leaves: PID 1 joins itself)
    run.attach_network(pid)                # its end of a private network (network)
    run.announce(pid)                      # sandbox_start; the audit supervision watches PID 1
    run.release(pid)                       # "G": PID 1 goes on; the deadline starts
    # then: launcher.Launch.wait() (forward signals, --timeout) and finish() (report, clean-up)


# --- 2. PID 1 --------------------------------------------------------------------------------

def pid1_main(ctx, hooks: LaunchHooks = PLAIN) -> None:
    """PID 1 forked by the supervisor itself (the whole context at hand). Never returns."""
    os.close(ctx.go_w)                     # (the supervisor's ends)
    os.close(ctx.status_r)
    spec = wire.Pid1Spec(ctx.status_w, ctx.go_r, ctx.cg_fds, ctx.cg_v2_fd, ctx.nofile, ctx.stdio,
                         ctx.plan.namespaces.time, ctx.seccomp_log, init.credential_steps(ctx.plan, ctx.rootless))
    pid1(spec, lambda err_w, go_r: program(ctx, err_w, go_r, hooks=hooks),
         inline=(lambda: (ctx, ctx.status_w, ctx.cg_v2_fd, False)) if hooks.spawn_inline else None,
         hooks=hooks)


def pid1(spec: "wire.Pid1Spec", program_fn, inline=None, hooks: LaunchHooks = PLAIN) -> None:
    """PID 1. Never returns. It reads no plan before `inline`/`program_fn`: the rest is `spec`
    (a launch server's PID 1 has it from the PID1 section of its context).

    Then, when init.can_inline(creds): `inline()` -> (the run's context, status_w and cg_v2_fd
    where those descriptors are now, whether a spare built the root already); the program's set-up
    (program() up to pivot_root) runs in a thread of PID 1 as the sandbox's root, and PID 1 execs
    pysandbox-init in spawn mode, which forks the program's process (into the cgroup2 leaf:
    clone3 CLONE_INTO_CGROUP, checked against the credentials PID 1 was cloned with — hence the
    thread), becomes the sandbox's root, drops its privileges, releases the program (last_steps in
    C, from the PROGRAM section) and supervises it. Otherwise it forks the program's process as a
    Python copy, `program_fn(err_w, go_r)` (program() below), and does the same itself.
    spec.program_pid: the program's pid in the namespace (2, when a spare's builder had it).
    hooks: the launch's LaunchHooks (pid1_pdeathsig, before_program; program_fn has them too)."""
    status_w, go_r, cg_v2_fd, creds = spec.status_w, spec.go_r, spec.cg_v2_fd, spec.creds
    try:
        gc.disable()                               # a collection would copy every shared page
        if spec.nofile is not None:                # the supervisor's own, raised limit is not ours
            resource.setrlimit(resource.RLIMIT_NOFILE, spec.nofile)
        for fd in spec.cg_fds:                     # join our v1 cgroups ourselves, before any fork
            os.write(fd, b"0")                     # (no threadgroup lock: sandbox/cgroups.py, join_fds)
            os.close(fd)
        for target, fd in enumerate(spec.stdio):   # the program's stdin, stdout, stderr
            if fd is not None:
                os.dup2(fd, target, inheritable=True)
        if hooks.pid1_pdeathsig:
            prctl.set_pdeathsig(signal.SIGKILL)    # the sandbox dies with its supervisor
        if os.read(go_r, 1) != b"G":               # the release (supervisor gone or refused: stop)
            os._exit(1)
        os.close(go_r)
        prctl.set_dumpable(False)                  # only now: the id maps needed us dumpable
        if spec.time_ns:
            _sys.unshare(_sys.CLONE_NEWTIME)       # applies to the program (our children)
        os.chdir("/")                              # the old root: the program's pivot_root moves it
    except Exception as e:                         # any failure of the set-up: report and stop (exit 125)
        init.report(status_w, f"SETUP {init.describe(e)}")
        os._exit(1)

    if inline is not None and init.can_inline(creds):
        try:
            ctx, status_w, cg_v2_fd, built = inline()
            init.setup_in_thread(ctx, built)       # program() up to pivot_root, in a thread of ours
            if hooks.before_program is not None:
                hooks.before_program()
        except Exception as e:                     # noqa: BLE001 - reported as the program's would be
            init.report(status_w, f"SETUP {init.describe(e)}")
            os._exit(1)
        init.exec_spawning_init(status_w, ctx, creds, spec.linger, cg_v2_fd, spec.program_pid)   # never returns
    try:
        prog_err_r, prog_err_w = os.pipe2(os.O_CLOEXEC)
        prog_go_r, prog_go_w = os.pipe2(os.O_CLOEXEC)   # "G": PID 1 holds no privilege any more
        pid = _sys.clone3_fork(0, cg_v2_fd, spec.program_pid) if cg_v2_fd is not None or spec.program_pid \
            else os.fork()
    except Exception as e:
        init.report(status_w, f"SETUP cannot start the program's process: {init.describe(e)}")
        os._exit(1)
    if pid == 0:
        os.close(prog_err_r)
        os.close(prog_go_w)
        program_fn(prog_err_w, prog_go_r)          # never returns
        os._exit(125)
    os.close(prog_err_w)
    os.close(prog_go_r)
    init.become_init(status_w, prog_err_r, prog_go_w, pid, creds, spec.linger)   # pysandbox-init, when built
    init.forward_signals_to(pid)
    try:
        init.set_credentials(creds)                # not host root any more: the sandbox's root
        prctl.set_pdeathsig(signal.SIGKILL)        # (the credential change cleared it)
        if init.supervisor_gone(status_w):
            os.kill(pid, signal.SIGKILL)
            os._exit(1)
        capabilities.drop_all()
        prctl.set_no_new_privs(1)
        _sys.seccomp_load(init.pid1_filter())      # what the loop below uses, nothing else (as pid1.c's)
    except Exception as e:
        init.report(status_w, f"SETUP pid 1 could not drop its privileges: {init.describe(e)}")
        os.kill(pid, signal.SIGKILL)
        os._exit(1)
    try:
        os.write(prog_go_w, b"G")                  # the program may go on to its seccomp filter and execve
    except OSError:                                # it ended before (a set-up error: its report follows)
        pass
    os.close(prog_go_w)
    init.supervise(status_w, prog_err_r, pid, spec.linger)    # report, reap, EXIT; never returns


# --- 3. the program's process ----------------------------------------------------------------

def program(ctx, err_w: int, go_r: "int | None" = None, built: bool = False,
            hooks: LaunchHooks = PLAIN) -> None:
    """The program's process as a Python copy (PID 1 forked it): its set-up, then last_steps.
    built: a spare built the root already (init.prebuild_root): only the identity is left.
    hooks: the launch's LaunchHooks (join_mount, before_program)."""
    plan = ctx.plan
    step = "user identity and hostname"
    try:
        init.identity(plan, ctx.rootless)          # root of the userns, hostname, cgroup namespace
        prctl.set_pdeathsig(signal.SIGKILL)        # dies with PID 1 (armed after the credential change)
        if not built and not hooks.join_mount:
            step = "root filesystem"
            init.build_root(plan, ctx, ctx.rootless)   # loopback, rootfs.prepare, pivot_root, finish
        if hooks.before_program is not None:
            step = "startContainer hooks"
            hooks.before_program()
        step = "landlock"
        init.landlock_rules(plan)                  # the profile's ruleset, paths as the program sees them
    except Exception as e:                         # reported by PID 1 as a set-up failure (exit 125)
        os.write(err_w, f"SETUP {init.describe(e, step)}".replace("\n", " ").encode())
        os._exit(125)
    last_steps(init.program_spec(ctx, init.credential_steps(plan, ctx.rootless)), err_w, go_r=go_r,
               listener_sock=ctx.notify_sock, console=ctx.console)


def last_steps(spec: "wire.ProgramSpec", err_w: int, *, go_r: "int | None" = None, listener_sock=None,
               listener_tag: "bytes | None" = b"L", console=None) -> None:
    """The program's last steps, in the kernel's order (pid1.c `program` is the same in C). Never
    returns. go_r: PID 1's release (the program waits for it before its filter and execve);
    listener_sock: where the seccomp listener goes (listener_tag None: notify.listener.send_listener's
    form, `pysandbox exec`'s); console: run -t's socket (the pty master goes back on it).
    Reports on err_w: "SETUP <text>" (exit 125) or "<errno> <stage> <text>" (exit 126/127)."""
    stage = "prepare"
    argv = spec.argv
    try:
        # keep only what the last steps use (descriptors inherited from a busy supervisor could
        # exceed the program's RLIMIT_NOFILE before it even starts)
        _sys.close_all_but((err_w, go_r, listener_sock.fileno() if listener_sock is not None else None,
                            console.fileno() if console is not None else None,
                            spec.ruleset if spec.ruleset >= 0 else None))
        if console is not None:
            stage = "tty"
            init.console_terminal(console)          # run -t: a pty of the sandbox's devpts, our terminal
        elif spec.new_session:
            os.setsid()                            # no controlling terminal: no TIOCSTI into ours
        if spec.keyring:                           # a session keyring of its own, never the caller's
            stage = "keyring"                      # (pid1.c: why, and why EPERM/ENOSYS pass)
            try:
                _sys.join_session_keyring()
            except OSError as e:
                if e.errno not in (errno.EPERM, errno.ENOSYS):
                    raise
        stage = "landlock"                         # out of PID 1's reach (pid1.c, landlock_confine),
        init.confine(spec)                         # while we still hold CAP_SYS_ADMIN in the namespace
        for rid, soft, hard, name in spec.rlimits:
            stage = f"ulimit:{name}"               # e.g. raising a hard limit needs CAP_SYS_RESOURCE
            resource.setrlimit(rid, (resource.RLIM_INFINITY if soft == -1 else soft,
                                     resource.RLIM_INFINITY if hard == -1 else hard))
        stage = "cwd"
        os.chdir(spec.cwd)
        # the kernel's order: bounding set (needs CAP_SETPCAP, gone from the effective set at a
        # change to a non-zero uid) -> keep caps across the uid change -> groups, gid, uid ->
        # permitted/effective/inheritable -> ambient -> no_new_privs -> seccomp
        stage = "capabilities"
        capabilities.drop_bounding(spec.keep)
        stage = "identity"
        if spec.set_ids:
            if spec.setgroups:
                _sys.setgroups(list(spec.groups))
            if spec.uid != 0:
                _sys.set_keepcaps(True)
            _sys.setresgid(spec.gid, spec.gid, spec.gid)
            _sys.setresuid(spec.uid, spec.uid, spec.uid)
            prctl.set_pdeathsig(signal.SIGKILL)    # cleared by the credential change
        stage = "capabilities"
        # without no_new_privs the filter is loaded with CAP_SYS_ADMIN in the namespace (as runc
        # does), which execve then drops (in neither the bounding nor the inheritable set)
        capabilities.set_sets(spec.keep, uid_inside=spec.uid, seccomp_cap=bool(spec.bpf) and not spec.nnp)
        if spec.nnp:
            prctl.set_no_new_privs(1)
        _sys.close_range_cloexec(3)                # no descriptor of ours survives execve
        os.set_inheritable(err_w, False)
        if go_r is not None:                       # nothing of the sandbox's runs beside a privileged PID 1
            stage = "pid 1"
            if os.read(go_r, 1) != b"G":
                os._exit(125)                      # PID 1 failed (it reports why) or is gone
            os.close(go_r)
        _sys.default_signals()
        stage = "seccomp"
        if spec.bpf:
            listener = _seccomp.install(spec.bpf, listener=spec.listener, log=spec.log)
            if listener_sock is not None and listener:
                if listener_tag is None:
                    from ..notify.listener import send_listener   # (exec: imported already, by sandbox/execin.py)
                    send_listener(listener_sock, listener)
                else:
                    socket.send_fds(listener_sock, [listener_tag], [listener])
                os.close(listener)
        stage = "exec"
        os.execvpe(argv[0], list(argv), spec.env)
    except OSError as e:
        code = e.errno or 0
        if stage == "landlock":                    # a control that cannot be enforced: exit 125
            os.write(err_w, f"SETUP landlock (keeps pid 1 out of the program's reach): {init.describe(e)}".encode())
            os._exit(125)
        if stage == "keyring":                     # (as pid1.c's setup_fail: exit 125)
            os.write(err_w, f"SETUP a session keyring of its own: {init.describe(e)}".encode())
            os._exit(125)
        os.write(err_w, f"{code} {stage} {argv[0] if stage == 'exec' else init.describe(e)}".encode())
        os._exit(127 if code == 2 and stage == "exec" else 126)
    except Exception as e:                         # pragma: no cover - reported, never a traceback
        os.write(err_w, f"0 {stage} {init.describe(e)}".encode())
        os._exit(126)
