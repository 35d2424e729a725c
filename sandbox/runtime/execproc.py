"""`exec --process FILE [--pid-file F] [--detach] [--console-socket S] ID`: one more process in a
running container (podman exec through conmon): the bundle's config.json with its `process`
replaced by FILE, translated as `create` does (sandbox/runtime/bundle.py); the process joins the
cgroups and namespaces of the container's PID 1 (the ones the sandbox made: user first, as
sandbox/execin.py's NS_ORDER) and a cgroup namespace of its own rooted there, then takes the
program's last steps (sequence.last_steps, from execin's ProgramSpec: capabilities, ids,
rlimits, no_new_privs, the seccomp filter, Landlock).

    exec (the engine's child) -> joiner (cgroups, setns) -> the process (pid namespace: a fork)
The joiner stays the process's parent (its parent-death signal is armed by the last steps),
forwards signals and exits with its status: its pid is the one in --pid-file (--detach: exec
returns once the process runs, and the joiner is reparented to the engine's subreaper, which
waits for it); without --detach exec waits for the joiner and exits with its status. With no --process, the arguments after ID replace config.json's args."""
from __future__ import annotations

import os
import select
import signal

from .. import _sys, procid
from . import state as _state
from ..fsutil import read_json_object

MAX_PROCESS = 1 << 20


def apply_flags(proc: dict, flags: dict) -> dict:
    """runc's exec flags on top of the process (config.json's, or --process FILE's): --cwd, --env
    (KEY=VALUE replaces KEY), --user UID[:GID], --additional-gids, --cap (added to every set, as
    runc does; a profile annotation still intersects them), --no-new-privs. ValueError: one line."""
    proc = dict(proc)
    if flags.get("cwd"):
        proc["cwd"] = flags["cwd"]
    if flags.get("env"):
        env = {e.split("=", 1)[0]: e for e in proc.get("env") or [] if isinstance(e, str)}
        for e in flags["env"]:
            if "=" not in e:
                raise ValueError(f"--env {e!r}: KEY=VALUE")
            env[e.split("=", 1)[0]] = e
        proc["env"] = list(env.values())
    user = dict(proc.get("user") or {})
    if flags.get("user"):
        uid, _, gid = flags["user"].partition(":")
        if not uid.isdigit() or (gid and not gid.isdigit()):
            raise ValueError(f"--user {flags['user']!r}: UID[:GID] (numbers: no passwd lookup in the container)")
        user.update(uid=int(uid), gid=int(gid) if gid else 0)
    if flags.get("additional-gids"):
        if not all(g.isdigit() for g in flags["additional-gids"]):
            raise ValueError("--additional-gids: numbers")
        user["additionalGids"] = [int(g) for g in flags["additional-gids"]]
    proc["user"] = user
    if flags.get("cap"):
        have = proc.get("capabilities") if isinstance(proc.get("capabilities"), dict) else {}
        caps = {k: list(v or []) if isinstance(v, list) else v for k, v in have.items()}
        for c in flags["cap"]:
            for k in ("bounding", "effective", "permitted", "inheritable", "ambient"):
                if c not in caps.setdefault(k, []):
                    caps[k].append(c)
        proc["capabilities"] = caps
    if flags.get("no-new-privs"):
        proc["noNewPrivileges"] = True
    return proc


def exec_process(root: str, cid: str, process_file, args: list, *, pid_file, detach: bool, console_socket, log,
                 flags: "dict | None" = None) -> int:
    from .bundle import BundleError, read_config, translate
    st = _state.load(root, cid)
    if _state.status(st) != "running":
        log(f"exec: container {cid} is {_state.status(st)}, not running")
        return 1
    try:
        cfg = read_config(st["bundle"])                 # as create read it: bounded, an object
        if process_file:
            proc = read_json_object(process_file, MAX_PROCESS)
        else:
            proc = dict(cfg.get("process") or {}, args=args, terminal=False)
    except BundleError as e:
        log(f"exec: {e}")
        return 1
    except OSError as e:
        log(f"exec: {process_file}: {e.strerror}")
        return 1
    except ValueError as e:
        log(f"exec: {process_file}: {e}")
        return 1
    try:
        proc = apply_flags(proc, flags or {})
    except ValueError as e:
        log(f"exec: {e}")
        return 1
    cfg["process"] = proc
    try:
        plan = translate(cfg, st["bundle"]).plan
    except BundleError as e:
        log(f"exec: {e}")
        return 1
    from .. import seccomp
    from ..execin import NS_ORDER, _spec
    from ..launch import sequence                     # everything imported before setns
    from ..launcher import FORWARDED
    pid1, start = st.get("sandbox_pid"), st.get("sandbox_pid_start")
    pidfd = procid.open_pidfd(pid1, start)
    if pidfd is None:
        log(f"exec: container {cid}: its PID 1 is gone")
        return 1
    bpf = seccomp.filters(plan.seccomp, None, audit=False, learn=False).program if plan.seccomp.enabled else b""
    nsfds, cgroups = [], []
    try:
        for ns, flag in NS_ORDER:
            mine, theirs = os.stat(f"/proc/self/ns/{ns}"), os.stat(f"/proc/{pid1}/ns/{ns}")
            if (mine.st_dev, mine.st_ino) != (theirs.st_dev, theirs.st_ino):
                nsfds.append((flag, os.open(f"/proc/{pid1}/ns/{ns}", os.O_RDONLY | os.O_CLOEXEC)))
        with open(f"/proc/{pid1}/cgroup") as f:        # PID 1's v1 leaves (its v2 leaf: unified)
            for line in f:
                _, ctrls, path = line.rstrip("\n").split(":", 2)
                if ctrls and ctrls.startswith("name="):
                    continue
                d = f"/sys/fs/cgroup/{ctrls.split(',')[0]}{path}" if ctrls else f"/sys/fs/cgroup/unified{path}"
                if path != "/" and os.path.isdir(d):
                    cgroups.append(d)
        if select.select([pidfd], [], [], 0)[0]:
            raise OSError(3, "its PID 1 ended")
    except OSError as e:
        log(f"exec: container {cid}: {e.strerror or e}")
        return 1
    finally:
        os.close(pidfd)
    stdio = None
    if proc.get("terminal"):
        if not console_socket:
            log("exec: process.terminal: needs --console-socket")
            return 1
        from .monitor import _console
        try:
            stdio = _console(console_socket)
        except Exception as e:                          # noqa: BLE001 - LaunchError: one line
            log(f"exec: {e}")
            return 1
    env = dict(plan.process.env_set)
    env.setdefault("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    spec = _spec(plan.to_dict(), plan.process.argv, env, plan.process.cwd, bpf, os.geteuid() != 0, False)
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    import prctl
    prctl.set_dumpable(False)                          # (as execin's) before anything joins the sandbox
    joiner = os.fork()
    if joiner == 0:                                    # cgroups, namespaces, then the process
        os.close(err_r)
        try:
            _sys.join_session_keyring()               # not the engine's keyring (runc's default)
            for d in cgroups:
                with open(os.path.join(d, "cgroup.procs"), "w") as f:
                    f.write("0")
            for flag, fd in nsfds:
                _sys.setns(fd, flag)
                os.close(fd)
            _sys.unshare(_sys.CLONE_NEWCGROUP)
            child = os.fork()
        except OSError as e:
            os.write(err_w, f"SETUP cannot join the container: {e.strerror or e}".encode())
            os._exit(125)
        if child == 0:
            if stdio is not None:
                for n in (0, 1, 2):
                    os.dup2(stdio[0], n)
            os.setsid()
            sequence.last_steps(spec, err_w)           # never returns
        # the process's parent while it runs (its parent-death signal is armed): what the engine
        # waits for (pid file), exiting with its status; signals forwarded
        os.close(err_w)
        for sig in FORWARDED:
            signal.signal(sig, lambda s, _f: os.kill(child, s))
        os._exit(_exit_code(child))
    os.close(err_w)
    for _, fd in nsfds:
        os.close(fd)
    if stdio is not None:
        os.close(stdio[0])
    report = b""
    while True:                                        # end of file: the process exec'd (or died)
        chunk = os.read(err_r, 4096)
        if not chunk:
            break
        report += chunk
    os.close(err_r)
    if report:
        log(f"exec: {report.decode(errors='replace')}")
        os.waitpid(joiner, 0)
        return 125 if report.startswith(b"SETUP") else 126
    if pid_file:
        from ..fsutil import atomic_write
        atomic_write(pid_file, str(joiner), mode=0o644, fsync=False)
    if detach:
        return 0
    for sig in FORWARDED:
        signal.signal(sig, lambda s, _f: os.kill(joiner, s))
    return _exit_code(joiner)


def _exit_code(pid: int) -> int:
    """Wait for the child pid: its exit status, 128+N when killed by signal N."""
    while True:
        try:
            _, status = os.waitpid(pid, 0)
            break
        except InterruptedError:
            continue
    return 128 + os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
