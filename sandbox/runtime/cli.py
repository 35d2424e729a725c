"""pysandbox-runtime's command line, in the conventions runc and crun share (what podman, conmon and
containerd's shim call):

  pysandbox-runtime [--root DIR] [--log FILE] [--log-format text|json] COMMAND ...
    create --bundle DIR [--pid-file F] [--console-socket S] [--no-new-keyring] ID
    start ID | state ID | kill [--all] ID [SIGNAL] | delete [--force] ID | features | --version
    exec ... | ps [--format table|json] ID | pause ID | resume ID | update ID   (control.py: cgroups)

Errors: one line on stderr (and in --log, as JSON with --log-format json); exit 1 (2: usage).
Lean on purpose: no click, nothing of the launcher until `create` needs it."""
from __future__ import annotations

import json
import os
import signal
import sys
import time

from . import state as _state

VERSION = "0.1.0"
UNSUPPORTED = ("checkpoint", "restore", "events", "run", "list", "spec", "exec-cpu-affinity")
USAGE = ("usage: pysandbox-runtime [--root DIR] [--log FILE] [--log-format text|json] COMMAND\n"
         "  create --bundle DIR [--pid-file F] [--console-socket S] ID | start ID | state ID\n"
         "  kill [--all] ID [SIGNAL] | delete [--force] ID | features | --version\n"
         "  ps [--format table|json] ID [-- PS-ARGS] | pause ID | resume ID\n"
         "  update [--resources FILE|-] [--memory N] [--memory-reservation N] [--memory-swap N] [--cpu-shares N]\n"
         "         [--cpu-quota N] [--cpu-period N] [--cpuset-cpus L] [--pids-limit N] ID\n"
         "  exec [--process FILE] [--pid-file F] [--detach] [--console-socket S] [--cwd D] [--env K=V]...\n"
         "       [--user UID[:GID]] [--additional-gids G]... [--cap CAP_X]... [--no-new-privs] ID [CMD...]")


class Usage(Exception):
    pass


class Ctx:
    def __init__(self):
        self.root = _state.default_root()
        self.log_file = None
        self.log_format = "text"

    def log(self, msg: str, level: str = "error") -> None:
        line = f"pysandbox-runtime: {msg}"
        try:
            sys.stderr.write(line + "\n")
            sys.stderr.flush()
        except (OSError, ValueError):
            pass
        if self.log_file:
            rec = (json.dumps({"level": level, "msg": msg, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
                   if self.log_format == "json" else f"{level}: {msg}")
            try:
                with open(self.log_file, "a") as f:
                    f.write(rec + "\n")
            except OSError:
                pass


def _opts(args: list, flags: dict, first_positional_ends: bool = False) -> tuple:
    """Parse --name VALUE / --name=VALUE / --flag options (flags: name -> takes a value); the rest
    are positional. Unknown options: Usage."""
    out, pos = {}, []
    i = 0
    while i < len(args):
        a = args[i]
        if a == "--" or (first_positional_ends and pos):
            pos += args[i + 1:] if a == "--" else args[i:]
            break
        if a.startswith("-") and len(a) > 1 and not (pos and a[1:].isdigit()):
            name, eq, val = a.lstrip("-").partition("=")
            if name not in flags:
                raise Usage(f"unknown option {a}")
            if flags[name]:
                if not eq:
                    i += 1
                    if i >= len(args):
                        raise Usage(f"option --{name} needs a value")
                    val = args[i]
                if flags[name] == "many":                   # repeatable: --env A=1 --env B=2
                    out.setdefault(name, []).append(val)
                else:
                    out[name] = val
            else:
                out[name] = True
        else:
            pos.append(a)
        i += 1
    return out, pos


def main(argv: "list | None" = None) -> None:
    from .. import stdio
    stdio.ensure_open()                  # (a caller's closed 0-2: /dev/null, never a traceback)
    argv = list(sys.argv[1:] if argv is None else argv)
    ctx = Ctx()
    try:
        code = _main(ctx, argv)
    except Usage as e:
        ctx.log(str(e))
        sys.stderr.write(USAGE + "\n")
        code = 2
    except _state.StateError as e:
        ctx.log(str(e))
        code = 1
    # no interpreter teardown (module and object finalisation: ~3-10 ms of every command); nothing is
    # left to flush but the standard streams (files are written in `with` blocks; the monitor _exits)
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):
        code = code or 1
    os._exit(code)


def _main(ctx: Ctx, argv: list) -> int:
    # global options, before the command
    while argv and argv[0].startswith("-"):
        a = argv.pop(0)
        name, eq, val = a.lstrip("-").partition("=")
        if name in ("version", "v") and not eq:
            print(f"pysandbox-runtime version {VERSION}\nspec: {_state.OCI_VERSION}")
            return 0
        if name in ("h", "help"):
            print(USAGE)
            return 0
        if name == "systemd-cgroup":
            ctx.log("--systemd-cgroup: not supported (pysandbox-runtime manages cgroupfs cgroups itself; "
                    "configure the engine's cgroup manager as cgroupfs)")
            return 1
        if name in ("root", "log", "log-format", "rootless", "criu", "cgroup-manager"):
            if not eq:
                if not argv:
                    raise Usage(f"option --{name} needs a value")
                val = argv.pop(0)
            if name == "root":
                ctx.root = os.path.abspath(val)
            elif name == "log":
                ctx.log_file = val
            elif name == "log-format":
                if val not in ("text", "json"):
                    raise Usage("--log-format: text or json")
                ctx.log_format = val
            elif name == "cgroup-manager" and val != "cgroupfs":
                ctx.log(f"--cgroup-manager {val}: not supported (cgroupfs only)")
                return 1
            continue
        if name == "debug":
            continue
        raise Usage(f"unknown global option {a}")
    if not argv:
        raise Usage("no command")
    cmd, args = argv[0], argv[1:]
    if cmd in UNSUPPORTED:
        ctx.log(f"{cmd}: not supported by pysandbox-runtime (create, start, state, kill, delete, exec, ps, "
                "pause, resume, update, features)")
        return 1
    fn = COMMANDS.get(cmd)
    if fn is None:
        raise Usage(f"unknown command {cmd!r}")
    return fn(ctx, args)


def _one_id(pos: list, cmd: str, most: int = 1) -> str:
    if not 1 <= len(pos) <= most:
        raise Usage(f"{cmd}: needs the container id")
    return _state.check_id(pos[0])


def cmd_create(ctx: Ctx, args: list) -> int:
    o, pos = _opts(args, {"bundle": True, "b": True, "pid-file": True, "console-socket": True,
                          "no-pivot": False, "no-new-keyring": False, "preserve-fds": True})
    cid = _one_id(pos, "create")
    if o.get("no-pivot"):
        ctx.log("create --no-pivot: not supported (the root is always pivoted)")
        return 1
    if o.get("preserve-fds") not in (None, "0"):
        ctx.log("create --preserve-fds: not supported")
        return 1
    from .bundle import BundleError, load
    try:
        bundle = load(o.get("bundle") or o.get("b") or os.getcwd())
    except BundleError as e:
        ctx.log(str(e))
        return 1
    from . import monitor
    return monitor.create(ctx.root, cid, bundle, pid_file=o.get("pid-file"),
                          console_socket=o.get("console-socket"), log=ctx.log,
                          new_keyring=not o.get("no-new-keyring"))


def cmd_start(ctx: Ctx, args: list) -> int:
    _, pos = _opts(args, {})
    cid = _one_id(pos, "start")
    st = _state.load(ctx.root, cid)
    s = _state.status(st)
    if s != "created":
        ctx.log(f"start: container {cid} is {s}, not created")
        return 1
    fifo = os.path.join(_state.container_dir(ctx.root, cid), "exec.fifo")
    try:
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError as e:
        ctx.log(f"start: container {cid} is not waiting to start ({e.strerror})")
        return 1
    try:
        os.write(fd, b"G")
    finally:
        os.close(fd)
    deadline = time.monotonic() + 120          # poststart hooks run before start returns
    while time.monotonic() < deadline:
        st = _state.load(ctx.root, cid)
        if st.get("status") != "created" or _state.status(st) == "stopped":
            return 0
        time.sleep(0.002)
    ctx.log(f"start: container {cid} did not report running")
    return 1


def cmd_state(ctx: Ctx, args: list) -> int:
    _, pos = _opts(args, {})
    cid = _one_id(pos, "state")
    print(json.dumps(_state.oci_state(_state.load(ctx.root, cid)), indent=2))
    return 0


def parse_signal(s: str) -> int:
    s = s.upper()
    if s.isdigit():
        n = int(s)
    else:
        name = s if s.startswith("SIG") else "SIG" + s
        n = getattr(signal.Signals, name, None) if name in signal.Signals.__members__ else None
        if n is None:
            raise Usage(f"kill: unknown signal {s!r}")
        n = int(n)
    if not 1 <= n <= 64:
        raise Usage(f"kill: signal {s} out of range")
    return n


def _live(ctx: Ctx, cid: str, cmd: str, why: str = "") -> tuple:
    """(state, status) of a container that is created, running or paused; (None, status) after
    saying "CMD: container ID is STATUS" (+ why) for any other."""
    st = _state.load(ctx.root, cid)
    s = _state.status(st)
    if s not in ("created", "running", "paused"):
        ctx.log(f"{cmd}: container {cid} is {s}{why}")
        return None, s
    return st, s


def cmd_kill(ctx: Ctx, args: list) -> int:
    o, pos = _opts(args, {"all": False, "a": False})
    cid = _one_id(pos, "kill", 2)
    sig = parse_signal(pos[1]) if len(pos) > 1 else signal.SIGTERM
    st, s = _live(ctx, cid, "kill", ": container not running")   # runc's words: containerd's shim
    if st is None:                                                   # reads them as "process already finished"
        return 1
    if o.get("all") or o.get("a") or s == "paused":
        return _kill_all(ctx, cid, st, s, sig, bool(o.get("all") or o.get("a")))
    from .. import procid
    pidfd = next((fd for fd in (procid.open_pidfd(*t) for t in _state.kill_targets(st)) if fd is not None), None)
    if pidfd is None:
        ctx.log(f"kill: container {cid} is stopped: container not running")
        return 1
    from .. import _sys
    try:
        _sys.pidfd_send_signal(pidfd, sig)
    except OSError as e:
        ctx.log(f"kill: {e.strerror}")
        return 1
    finally:
        os.close(pidfd)
    return 0


def _kill_all(ctx: Ctx, cid: str, st: dict, s: str, sig: int, every: bool) -> int:
    """kill --all (every process of the container: its cgroups), and any kill of a paused container:
    a frozen process takes a SIGKILL only once thawed, so SIGKILL thaws it after the signal (runc's
    order); other signals wait for `resume`."""
    from . import control
    try:
        if every:
            control.signal_all(st, sig)
        else:
            from .. import procid, _sys
            for t in _state.kill_targets(st):
                fd = procid.open_pidfd(*t)
                if fd is not None:
                    try:
                        _sys.pidfd_send_signal(fd, sig)
                    finally:
                        os.close(fd)
                    break
        if s == "paused" and sig == signal.SIGKILL:
            control.thaw(st)
    except (control.ControlError, OSError) as e:
        ctx.log(f"kill: container {cid}: {getattr(e, 'strerror', None) or e}")
        return 1
    return 0


def cmd_ps(ctx: Ctx, args: list) -> int:
    """runc's ps: --format json prints the container's pids as a JSON array (what containerd's shim
    reads); table (the default) runs ps(1) with PS-ARGS (default -ef) and keeps its header and the
    container's lines."""
    o, pos = _opts(args, {"format": True, "f": True}, first_positional_ends=True)
    if not pos:
        raise Usage("ps: needs the container id")
    cid = _state.check_id(pos[0])
    fmt = o.get("format") or o.get("f") or "table"
    if fmt not in ("table", "json"):
        raise Usage("ps: --format table or json")
    st, s = _live(ctx, cid, "ps")
    if st is None:
        return 1
    from . import control
    try:
        pids = control.pids(st)
    except control.ControlError as e:
        ctx.log(f"ps: container {cid}: {e}")
        return 1
    if fmt == "json":
        print(json.dumps(pids))
        return 0
    import subprocess
    extra = pos[1:]
    if extra[:1] == ["--"]:
        extra = extra[1:]
    try:
        out = subprocess.run(["ps", *(extra or ["-ef"])], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        ctx.log(f"ps: {e}")
        return 1
    if out.returncode != 0:
        ctx.log(f"ps: {out.stderr.strip()[:200]}")
        return 1
    lines = out.stdout.splitlines()
    if not lines:
        return 0
    head = lines[0].split()
    if "PID" not in head:
        ctx.log("ps: the ps arguments must keep the PID column")
        return 1
    col, want = head.index("PID"), set(pids)
    print(lines[0])
    for line in lines[1:]:
        f = line.split()
        if len(f) > col and f[col].isdigit() and int(f[col]) in want:
            print(line)
    return 0


def _pause_resume(ctx: Ctx, args: list, cmd: str) -> int:
    _, pos = _opts(args, {})
    cid = _one_id(pos, cmd)
    st = _state.load(ctx.root, cid)
    s = _state.status(st)
    need, new = ("running", "paused") if cmd == "pause" else ("paused", "running")
    if s != need:
        ctx.log(f"{cmd}: container {cid} is {s}, not {need}")
        return 1
    from . import control
    try:
        control.set_frozen(st, cmd == "pause")
    except control.ControlError as e:
        ctx.log(f"{cmd}: container {cid}: {e}")
        return 1
    control.save_status(ctx.root, cid, new, (need,))
    return 0


def cmd_pause(ctx: Ctx, args: list) -> int:
    return _pause_resume(ctx, args, "pause")


def cmd_resume(ctx: Ctx, args: list) -> int:
    return _pause_resume(ctx, args, "resume")


UPDATE_FLAGS = {"memory": ("memory", "limit"), "memory-reservation": ("memory", "reservation"),
                "memory-swap": ("memory", "swap"), "cpu-shares": ("cpu", "shares"), "cpu-quota": ("cpu", "quota"),
                "cpu-period": ("cpu", "period"), "cpuset-cpus": ("cpu", "cpus"), "pids-limit": ("pids", "limit")}


def cmd_update(ctx: Ctx, args: list) -> int:
    """runc's update: `--resources FILE` (`-`: stdin; a LinuxResources object, what containerd's shim
    and CRI-O send) and/or the flags, written into the container's cgroups (control.update)."""
    o, pos = _opts(args, {"resources": True, "r": True, **{k: True for k in UPDATE_FLAGS}})
    cid = _one_id(pos, "update")
    src = o.get("resources") or o.get("r")
    res: dict = {}
    from . import control
    if src:
        try:
            if src == "-":
                raw = sys.stdin.buffer.read(control.MAX_RESOURCES + 1)
                if len(raw) > control.MAX_RESOURCES:
                    raise ValueError(f"larger than {control.MAX_RESOURCES} bytes")
                res = json.loads(raw)
            else:
                from ..fsutil import read_json_object
                res = read_json_object(src, control.MAX_RESOURCES)
        except OSError as e:
            ctx.log(f"update: --resources {src}: {e.strerror}")
            return 1
        except (ValueError, RecursionError) as e:
            ctx.log(f"update: --resources {src}: {e}")
            return 1
        if not isinstance(res, dict):
            ctx.log(f"update: --resources {src}: not a JSON object")
            return 1
    for flag, (sect, key) in UPDATE_FLAGS.items():
        if flag in o:
            v = o[flag]
            if key != "cpus":
                try:
                    v = int(v)
                except ValueError:
                    raise Usage(f"update --{flag}: an integer") from None
            res.setdefault(sect, {})[key] = v
    st, s = _live(ctx, cid, "update")
    if st is None:
        return 1
    try:
        control.update(st, res)
    except control.ControlError as e:
        ctx.log(f"update: container {cid}: {e}")
        return 1
    return 0


def cmd_delete(ctx: Ctx, args: list) -> int:
    o, pos = _opts(args, {"force": False, "f": False})
    cid = _one_id(pos, "delete")
    try:
        st = _state.load(ctx.root, cid)
    except _state.StateError:
        if o.get("force") or o.get("f"):
            return 0
        raise
    s = _state.status(st)
    from .. import procid
    if s != "stopped":
        if not (o.get("force") or o.get("f")):
            ctx.log(f"delete: container {cid} is {s} (stop it first, or --force)")
            return 1
        from .. import _sys
        for pid, start in ((st.get("sandbox_pid"), st.get("sandbox_pid_start")), _state.monitor_ident(st)):
            fd = procid.open_pidfd(pid, start)
            if fd is not None:
                try:
                    _sys.pidfd_send_signal(fd, signal.SIGKILL)
                except OSError:
                    pass
                os.close(fd)
        if s == "paused":                      # frozen: the SIGKILL is taken once thawed
            from . import control
            control.thaw(st)
    # the monitor cleans up (cgroup, mounts) as it ends; PID 1, killed above, must have left its
    # cgroups before they can be removed (a cgroupsPath leaf's rmdir below: EBUSY while it exits)
    deadline = time.monotonic() + 10
    monitor, pid1 = _state.monitor_ident(st), _state.alive_ident(st)
    while (procid.running(*monitor) or procid.running(*pid1)) and time.monotonic() < deadline:
        time.sleep(0.005)
    try:                                       # what the monitor recorded as it ended (PID 1 gone is
        st = _state.load(ctx.root, cid)        # "stopped" already: its record may have come since)
    except _state.StateError:
        pass
    if st.get("status") != "stopped":          # the monitor did not finish (SIGKILLed): what it left
        try:                                   # on the host (a monitor that recorded "stopped" has
            from ..store.reclaim import reclaim_quietly   # cleaned up: ~17 ms saved)
            reclaim_quietly()
        except Exception:                      # noqa: BLE001 - best effort, as every command's
            pass
    for d in st.get("cgroups") or ():          # linux.cgroupsPath leaves a SIGKILLed monitor left
        try:
            os.rmdir(d)
        except OSError:
            pass
    if (st.get("hooks") or {}).get("poststop"):   # (imported only then: subprocess costs a delete ~10 ms)
        from . import hooks
        try:
            hooks.run("poststop", st["hooks"], dict(_state.oci_state(st), status="stopped"))
        except hooks.HookError as e:
            ctx.log(f"warning: {e}", "warning")
    _state.remove_dir(_state.container_dir(ctx.root, cid))
    return 0


def cmd_exec(ctx: Ctx, args: list) -> int:
    o, pos = _opts(args, {"process": True, "p": True, "pid-file": True, "detach": False, "d": False,
                          "console-socket": True, "tty": False, "t": False, "cwd": True, "env": "many",
                          "e": "many", "user": True, "u": True, "additional-gids": "many", "g": "many",
                          "cap": "many", "c": "many", "no-new-privs": False}, first_positional_ends=True)
    if not pos:
        raise Usage("exec: needs the container id")
    cid = _state.check_id(pos[0])
    process = o.get("process") or o.get("p")
    if not process and len(pos) < 2:
        raise Usage("exec: needs --process FILE or a command after the id")
    flags = {"cwd": o.get("cwd"), "env": o.get("env", []) + o.get("e", []), "user": o.get("user") or o.get("u"),
             "additional-gids": o.get("additional-gids", []) + o.get("g", []),
             "cap": o.get("cap", []) + o.get("c", []), "no-new-privs": bool(o.get("no-new-privs"))}
    from .execproc import exec_process
    return exec_process(ctx.root, cid, process, pos[1:], pid_file=o.get("pid-file"),
                        detach=bool(o.get("detach") or o.get("d")), console_socket=o.get("console-socket"),
                        log=ctx.log, flags=flags)


def cmd_features(ctx: Ctx, args: list) -> int:
    from .bundle import HOOK_KINDS, SUPPORTED_HOOKS, NS_FIELDS, OK_OPTIONS
    from policies.plan import CAPABILITIES
    print(json.dumps({
        "ociVersionMin": "1.0.0", "ociVersionMax": _state.OCI_VERSION,
        "hooks": [h for h in HOOK_KINDS if h in SUPPORTED_HOOKS],
        "mountOptions": sorted(OK_OPTIONS),
        "linux": {"namespaces": sorted(NS_FIELDS), "capabilities": ["CAP_" + c for c in CAPABILITIES],
                  "cgroup": {"v1": True, "v2": True, "systemd": False, "systemdUser": False},
                  "seccomp": {"enabled": True, "actions": ["SCMP_ACT_ALLOW", "SCMP_ACT_ERRNO", "SCMP_ACT_KILL",
                                                           "SCMP_ACT_KILL_PROCESS", "SCMP_ACT_KILL_THREAD",
                                                           "SCMP_ACT_LOG", "SCMP_ACT_TRAP"],
                              "operators": ["SCMP_CMP_EQ", "SCMP_CMP_GE", "SCMP_CMP_GT", "SCMP_CMP_LE",
                                            "SCMP_CMP_LT", "SCMP_CMP_MASKED_EQ", "SCMP_CMP_NE"]},
                  "apparmor": {"enabled": False}, "selinux": {"enabled": False}},
        "annotations": {"org.pysandbox.profile": "a pysandbox profile applied on top of the bundle",
                        "org.pysandbox.audit-log": "the container's audit log (JSONL)"},
    }, indent=2))
    return 0


COMMANDS = {"create": cmd_create, "start": cmd_start, "state": cmd_state, "kill": cmd_kill,
            "delete": cmd_delete, "features": cmd_features, "exec": cmd_exec, "ps": cmd_ps,
            "pause": cmd_pause, "resume": cmd_resume, "update": cmd_update}
