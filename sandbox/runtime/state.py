"""One container's state directory under the runtime's --root: state.json (what `state` prints,
plus the monitor's and PID 1's identities and the exit: `pid`/`pid_start` the pid the engine gets
— the sandbox's PID 1, as runc's container init; the monitor's on a kernel without
PIDFD_INFO_EXIT — `sandbox_pid`/`sandbox_pid_start` PID 1, `monitor_pid`/`monitor_pid_start` the
monitor, `status` and, once the monitor recorded the end, `exit_code`), exec.fifo (create's process waits on it
until `start`), config.json's translation is not kept (the bundle stays the engine's).

Status (the OCI runtime spec, "State"): creating (state.json not yet written by the monitor),
created (the launch is held before its release), running (released, the monitor alive),
stopped (the monitor recorded the exit, or `pid` is gone)."""
from __future__ import annotations

import os
import re

from .. import procid
from ..fsutil import atomic_write_json, read_json_object

OCI_VERSION = "1.2.0"
ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,127}$")
MAX_STATE = 1 << 20


def remove_dir(d: str) -> None:
    """A container's state directory, gone (delete; a create that failed)."""
    for n in ("exec.fifo", "state.json"):
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
    import stat
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
    path = os.path.join(container_dir(root, cid), "state.json")
    try:
        return read_json_object(path, MAX_STATE)
    except FileNotFoundError:
        raise StateError(f"container {cid} does not exist") from None
    except ValueError:
        raise StateError(f"container {cid}: its state file is damaged") from None


def save(root: str, cid: str, st: dict) -> None:
    atomic_write_json(os.path.join(container_dir(root, cid), "state.json"), st, fsync=False)


def status(st: dict) -> str:
    """The status now: what the monitor recorded, corrected by whether it is still alive."""
    s = st.get("status", "creating")
    if s in ("created", "running") and not procid.running(st.get("pid"), st.get("pid_start")):
        return "stopped"
    return s


def oci_state(st: dict) -> dict:
    """The state JSON of the OCI runtime spec (what `state` prints and hooks read on stdin)."""
    s = status(st)
    out = {"ociVersion": OCI_VERSION, "id": st["id"], "status": s, "bundle": st["bundle"],
           "annotations": st.get("annotations") or {}}
    if s in ("created", "running"):
        out["pid"] = st["pid"]
    return out
