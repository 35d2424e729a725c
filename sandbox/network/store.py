"""The state of private networks on disk, under the one state directory (audit/paths.py):

    networks/.lock                      flock: every change of network state
    networks/<net>/network.json         name, subnet, gateway, bridge
    networks/<net>/endpoints/<sid>.json one per attached sandbox (address, supervisor pid, ...)
    networks/<net>/hosts/<sid>          that sandbox's /etc/hosts (bind-mounted read-only)
"""
from __future__ import annotations

import json
import os
import re
from contextlib import contextmanager
from pathlib import Path

from audit import paths as _paths

from .. import fsutil
from ..procid import start_time as proc_starttime
from .common import NET_NAME_RE, NetworkError, short


def _is_rootless() -> bool:
    return os.geteuid() != 0


def state_dir(rootless: bool | None = None) -> Path:
    """<state directory>/networks (the one resolver: audit/paths.py)."""
    if rootless is None:
        rootless = _is_rootless()
    return Path(_paths.state_dir(rootless)) / "networks"


@contextmanager
def locked(root: Path):
    # traversable (0711): sandboxes' hosts files under <net>/hosts are bind-mounted by the
    # sandbox's mapped root, which has no capabilities on the host
    try:
        if str(root.parent) == _paths.state_dir():
            _paths.ensure_state_dir()          # 0711, ours, not writable by others
        root.mkdir(parents=True, exist_ok=True, mode=0o711)
        if root.stat().st_uid == os.geteuid() and not root.stat().st_mode & 0o001:
            os.chmod(root, 0o711)              # make sure o+x survived the umask
    except _paths.StateDirError as e:
        raise NetworkError(str(e)) from None
    except OSError as e:
        raise NetworkError(f"network state {e.filename or root}: {e.strerror}") from None
    with fsutil.locked(root / ".lock"):
        yield


def write_json(path: Path, data: dict) -> None:
    fsutil.atomic_write_json(path, data, mode=None, fsync=False, indent=1, sort_keys=True)


def read_json(path: Path) -> dict | None:
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return None


def alive(pid: int | None, start: int | None) -> bool:
    """Whether process `pid` is still the one that started at `start` (None: any process)."""
    if not pid:
        return False
    st = proc_starttime(pid)
    return st is not None and (start is None or st == start)


def safe_id(sid: str) -> str:
    """A sandbox id as a file name."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", sid)[:64] or short(sid)


def load_network(name: str, rootless: bool | None = None) -> dict | None:
    if not NET_NAME_RE.match(name or ""):
        return None
    return read_json(state_dir(rootless) / name / "network.json")


def all_networks(root: Path) -> list[dict]:
    out = []
    if root.is_dir():
        for d in sorted(root.iterdir()):
            nd = read_json(d / "network.json") if d.is_dir() else None
            if nd:
                out.append(nd)
    return out


def endpoints(root: Path, name: str) -> list[dict]:
    d = root / name / "endpoints"
    out = []
    if d.is_dir():
        for f in sorted(d.glob("*.json")):
            e = read_json(f)
            if e:
                out.append(e)
    return out


def endpoint_path(root: Path, network: str, sandbox_id: str) -> Path:
    return root / network / "endpoints" / (safe_id(sandbox_id) + ".json")
