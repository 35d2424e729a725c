"""One container's state directory under the runtime's --root: state.json (what `state` prints,
plus the monitor's and PID 1's identities and the exit: `pid`/`pid_start` the pid the engine gets
— the sandbox's PID 1, as runc's container init; the monitor's on a kernel without
PIDFD_INFO_EXIT — `sandbox_pid`/`sandbox_pid_start` PID 1, `monitor_pid`/`monitor_pid_start` the
monitor, `status` and, once the monitor recorded the end, `exit_code`), exec.fifo (create's process waits on it
until `start`), config.json's translation is not kept (the bundle stays the engine's).
state.front: derived from the same record on every save, for the C front end (front.c; its format
is front_text's); state.json stays the one source of truth. The liveness identity (alive_ident)
and kill's targets (kill_targets) are defined once here and written into it: change them here.

Status (the OCI runtime spec, "State"): creating (state.json not yet written by the monitor),
created (the launch is held before its release), running (released, the monitor alive),
stopped (the monitor recorded the exit, or `pid` is gone); and runc's paused (`pause`: frozen;
front.c leaves a paused container to Python)."""
from __future__ import annotations

import json
import os
import re
import stat

from .. import procid
from ..fsutil import atomic_write, atomic_write_json, read_json_object

OCI_VERSION = "1.2.0"
ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,127}$")
MAX_STATE = 1 << 20
FRONT = "state.front"       # the C front end's companion of state.json (front_text; sandbox/runtime/front.c)


def remove_dir(d: str) -> None:
    """A container's state directory, gone (delete; a create that failed)."""
    for n in ("exec.fifo", "state.json", FRONT):
        try:
            os.unlink(os.path.join(d, n))
        except FileNotFoundError:
            pass
    try:
        os.rmdir(d)
    except OSError:
        pass


class StateError(Exception):
    """A container that does not exist, or a command its status forbids: one line."""


def default_root() -> str:
    if os.geteuid() == 0:
        return "/run/pysandbox-runtime"
    return os.path.join(os.environ.get("XDG_RUNTIME_DIR") or f"/tmp/pysandbox-runtime-{os.getuid()}",
                        "pysandbox-runtime")


def check_root(root: str, create: bool = False) -> None:
    """The --root directory: made 0700 when `create`; ours and writable by no one else, else
    refused (a rootless default below /tmp could have been made by another user first)."""
    if create:
        os.makedirs(root, mode=0o700, exist_ok=True)
    try:
        st = os.lstat(root)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
        raise StateError(f"--root {root}: not a directory of uid {os.geteuid()} writable by it alone")


def check_id(cid: str) -> str:
    if not ID_RE.match(cid or ""):
        raise StateError(f"container id {cid!r}: letters, digits, and _ . + - (at most 128)")
    return cid


def container_dir(root: str, cid: str) -> str:
    return os.path.join(root, check_id(cid))


def load(root: str, cid: str) -> dict:
    check_root(root)
    d = container_dir(root, cid)
    path = os.path.join(d, "state.json")
    try:
        # the directory and the file ours and not links (a link is never followed; as front.c)
        for p, kind in ((d, stat.S_ISDIR), (path, stat.S_ISREG)):
            s = os.lstat(p)
            if not kind(s.st_mode) or s.st_uid != os.geteuid():
                raise ValueError
        return read_json_object(path, MAX_STATE)
    except FileNotFoundError:
        raise StateError(f"container {cid} does not exist") from None
    except ValueError:
        raise StateError(f"container {cid}: its state file is damaged") from None


def save(root: str, cid: str, st: dict) -> None:
    """state.json (the one source of truth), then its companion for the C front end."""
    path = os.path.join(container_dir(root, cid), "state.json")
    atomic_write_json(path, st, fsync=False)
    atomic_write(os.path.join(container_dir(root, cid), FRONT), front_text(st, os.stat(path)), fsync=False)


def alive_ident(st: dict) -> tuple:
    """(pid, start time) of the process whose end makes a created/running container stopped."""
    return st.get("pid"), st.get("pid_start")


def monitor_ident(st: dict) -> tuple:
    """(pid, start time) of the container's monitor (`pid` itself on a kernel without
    PIDFD_INFO_EXIT, where the monitor is the recorded process)."""
    return st.get("monitor_pid", st.get("pid")), st.get("monitor_pid_start", st.get("pid_start"))


def kill_targets(st: dict) -> list:
    """What `kill` signals, the first still there: the sandbox's PID 1 (it forwards to the program;
    SIGKILL ends the whole pid namespace), else the recorded pid."""
    return [(st.get("sandbox_pid"), st.get("sandbox_pid_start")), (st.get("pid"), st.get("pid_start"))]


def front_text(st: dict, js: os.stat_result) -> str:
    """state.front: what front.c needs of st, derived from it alone and bound to the state.json it
    was made from (inode, size, mtime: any other state.json there and front.c leaves the command to
    Python): the recorded status, the liveness identity, the kill targets, whether `delete` needs
    Python, and the `state` output pre-rendered as recorded and as stopped."""
    def ident(pid, start) -> str:
        if not isinstance(pid, int) or pid <= 0:
            return "0 0"
        return f"{pid} {start if isinstance(start, int) and start >= 0 else -1}"
    rec = st.get("status", "creating")
    as_is = json.dumps(oci_state(st, rec), indent=2) + "\n"
    stopped = json.dumps(oci_state(st, "stopped"), indent=2) + "\n"
    fast = not (st.get("hooks") or {}).get("poststop") and not st.get("cgroups")
    return "".join([
        "pysandbox-runtime-front 1\n", f"id {st['id']}\n", f"json {js.st_ino} {js.st_size} {js.st_mtime_ns}\n",
        f"status {rec}\n", f"alive {ident(*alive_ident(st))}\n",
        *(f"kill {ident(*t)}\n" for t in kill_targets(st)), f"fast-delete {int(fast)}\n",
        f"as-is {len(as_is)}\n", as_is, f"stopped {len(stopped)}\n", stopped, "end\n"])


def status(st: dict) -> str:
    """The status now: what the monitor recorded, corrected by whether it is still alive."""
    s = st.get("status", "creating")
    if s in ("created", "running", "paused") and not procid.running(*alive_ident(st)):
        return "stopped"
    return s


def oci_state(st: dict, s: "str | None" = None) -> dict:
    """The state JSON of the OCI runtime spec (what `state` prints and hooks read on stdin), in
    status s (default: the status now)."""
    s = s or status(st)
    out = {"ociVersion": OCI_VERSION, "id": st["id"], "status": s, "bundle": st["bundle"],
           "annotations": st.get("annotations") or {}}
    if s in ("created", "running", "paused"):
        out["pid"] = st["pid"]
    return out
