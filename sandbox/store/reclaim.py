"""Nothing left behind: one registry of what each launch creates, one reclaimer for dead owners.

Before a launch creates anything on the host that outlives a process — a cgroup leaf, a private
network's endpoint (veth, nft rules, address, hosts file), an image's `containers/<id>` directory,
a detached sandbox's state entry — its owner registers it here:

    <state dir>/owners/<sandbox id>.<owner pid>.<owner start time>     (the state directory:
                                                                        audit/paths.py)

The file name alone names the sandbox and its owner (pid + start time in clock ticks since boot:
a pid is never reused with the same start time), so even an empty or torn record (disk full) can be
reclaimed; its content (one small JSON object) says which kinds of resources to look for and, for a
detached sandbox, its name. The owner removes the record after it removed what it created.

`reclaim()` runs at the start of every `pysandbox` command (sandbox/cli.py) and in `pysandbox
prune`: one directory listing and, per record, one read of /proc/PID/stat — no scan of the host.
A sandbox id is dead when every record of it names a dead owner and (for a detached sandbox) no
process holds its `alive` lock. What a dead sandbox left is removed by its id only: processes in
its cgroup leaves (SIGKILL), the leaves, its network endpoint (sandbox.network.reclaim_stale,
which checks the endpoint's own owner), its container directory (unless --keep), and its state
entry while it was still starting (the `run -d` that started it reported a failure) or with
`--rm`; a detached sandbox that was running is marked `dead` (its record stays for `ps -a`,
`logs`, `inspect` until `rm` or `prune`).
"""
from __future__ import annotations

import contextlib
import os
import re
import time

TYPE_CHECKING = False  # annotations only (postponed): importing typing is ~2 ms of the launch path
if TYPE_CHECKING:
    from typing import Optional

from .. import procid          # pid + start time: the one process identity

# json and fsutil are imported where used: the check at the start of every command needs neither

_REC = re.compile(r"^([A-Za-z0-9][A-Za-z0-9_.-]{0,127})\.(\d+)\.(\d+)\Z")
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}\Z")    # sandbox ids (as sandbox.cgroups)


class RegistryError(OSError):
    pass


def base_dir(rootless: Optional[bool] = None) -> str:
    """The one state directory (audit/paths.py)."""
    from audit import paths
    return paths.state_dir(rootless)


def owners_dir(rootless: Optional[bool] = None) -> str:
    return os.path.join(base_dir(rootless), "owners")


_SELF: Optional[tuple] = None


def _self_identity() -> tuple[int, int]:
    global _SELF
    pid = os.getpid()
    if _SELF is None or _SELF[0] != pid:          # a fork is another owner
        _SELF = (pid, procid.start_time(pid))
    return _SELF


def register(sandbox_id: str, *, rootless: bool, owner: Optional[tuple] = None, **what) -> str:
    """Record, before creating them, the resources `what` (cgroup=True, network=MODE, overlay=STORE
    ROOT, name=NAME) of sandbox_id as owned by this process. Returns the record's path. OSError
    (RegistryError) when it cannot be written: the launch must not go on (its leftovers could not
    be found)."""
    if not _ID.match(sandbox_id or ""):
        raise RegistryError(0, f"invalid sandbox id {sandbox_id!r}")
    pid, start = owner or _self_identity()
    if start is None:
        raise RegistryError(0, "cannot read this process's start time")
    d = owners_dir(rootless)
    try:
        from audit import paths
        paths.ensure_state_dir(rootless)      # 0711, the caller's (a makedirs here made it 0755)
        os.mkdir(d, 0o700)
    except FileExistsError:
        pass
    except OSError as e:
        raise RegistryError(e.errno, f"{d}: {e.strerror}") from None
    path = os.path.join(d, f"{sandbox_id}.{pid}.{start}")
    import json
    old = _read(path) if os.path.lexists(path) else None     # the same owner registering more: merged
    merged = dict(old or {})
    merged.update({k: v for k, v in what.items() if v})
    data = json.dumps(merged, separators=(",", ":")).encode()
    # atomic (a temp file renamed into place): an owner killed while registering leaves either no
    # record or a whole one - never an empty one, whose sandbox name the reclaimer could not read
    # (its state entry then stayed behind: tests/faults/test_supervisor_sigkill_leftovers.py)
    from .. import fsutil
    try:
        fsutil.atomic_write(path, data, mode=0o600, fsync=False)
    except OSError as e:
        raise RegistryError(e.errno, f"{path}: {e.strerror}") from None
    return path


def record_path(sandbox_id: str, rootless: bool) -> str:
    """This process's record of sandbox_id (which may not exist)."""
    pid, start = _self_identity()
    return os.path.join(owners_dir(rootless), f"{sandbox_id}.{pid}.{start}")


def unregister(path: Optional[str]) -> None:
    if path:
        with contextlib.suppress(OSError):
            os.unlink(path)


def _records(d: str) -> dict[str, list[tuple[str, int, int]]]:
    try:
        names = os.listdir(d)
    except OSError:
        return {}
    out: dict = {}
    for n in names:
        m = _REC.match(n)
        if m:
            out.setdefault(m.group(1), []).append((n, int(m.group(2)), int(m.group(3))))
    return out


def _read(path: str) -> Optional[dict]:
    """A record's content; None when it is torn or unreadable (then every kind is looked for)."""
    import json
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if st.st_uid != os.geteuid() or st.st_size > 4096:
            return {}
        data = json.loads(os.read(fd, 4096) or b"null")
        return data if isinstance(data, dict) else None
    except (OSError, ValueError):
        return None
    finally:
        os.close(fd)


def reclaim(rootless: Optional[bool] = None, *, only: Optional[str] = None) -> list[str]:
    """Remove whatever sandboxes of dead owners left (see the module's docstring). Cheap when there
    is nothing dead: one listing and a /proc/PID/stat per record. Returns the ids reclaimed.
    only: a single sandbox id (`rm`)."""
    if rootless is None:
        rootless = os.geteuid() != 0
    d = owners_dir(rootless)
    recs = _records(d)
    if only is not None:
        recs = {only: recs.get(only, [])} if only in recs else {}
    dead = [sid for sid, rs in recs.items() if not any(procid.running(p, s) for _, p, s in rs)]
    if not dead:
        return []
    done = []
    from .. import fsutil
    try:
        lock = fsutil.lock(os.path.join(d, ".lock"))
    except OSError:
        return []
    try:
        fresh = _records(d)                       # another command may have reclaimed them meanwhile
        for sid in dead:
            rs = fresh.get(sid)
            if not rs or any(procid.running(p, s) for _, p, s in rs):
                continue
            kinds: dict = {}
            torn = False
            for n, _, _ in rs:
                data = _read(os.path.join(d, n))
                if data is None:
                    torn = True
                else:
                    kinds.update(data)
            name = kinds.get("name")
            if name and _state_alive(name, sid):
                # every owner is dead: what still holds `alive` is its PID 1 on its way out (it dies
                # with the supervisor: PDEATHSIG, or EOF on its release pipe) — a moment, bounded
                deadline = time.monotonic() + 3.0
                while _state_alive(name, sid) and time.monotonic() < deadline:
                    time.sleep(0.01)
                if _state_alive(name, sid):
                    continue
            if _reclaim_one(sid, kinds, torn, rootless):
                for n, _, _ in rs:
                    unregister(os.path.join(d, n))
                done.append(sid)
    finally:
        os.close(lock)
    return done


def _state_alive(name: str, sid: str) -> bool:
    from . import state
    try:
        return state.read(name).get("id") == sid and state.is_alive(name)
    except (state.StateError, OSError):
        return False


def _reclaim_one(sid: str, kinds: dict, torn: bool, rootless: bool) -> bool:
    """Remove one dead sandbox's leftovers; True when nothing is left (the records may go)."""
    ok = True
    if kinds.get("cgroup") or torn:
        from ..cgroups import leftover
        try:
            ok = not leftover.remove_leftover(sid, rootless=rootless) and ok
        except OSError:
            ok = False
    if kinds.get("network") or torn:
        try:
            from ..network import bridge
            bridge.reclaim_stale(rootless)        # every endpoint whose own supervisor is gone
        except Exception:                         # noqa: BLE001 - pyroute2 missing, nft failing: retry later
            ok = False if kinds.get("network") else ok
    if kinds.get("overlay") or torn:
        ok = _remove_container(sid, kinds.get("overlay"), rootless) and ok
    if kinds.get("name"):
        _settle_state(kinds["name"], sid)
    return ok


def _remove_container(sid: str, store_root: Optional[str], rootless: bool) -> bool:
    import json
    from .. import fsutil
    from .images import Store, rmtree
    store = Store(store_root, rootless=rootless) if store_root else Store(rootless=rootless)
    cdir = os.path.join(store.containers, sid)
    if not os.path.lexists(cdir):
        return True
    try:
        with store.locked():
            try:
                with open(os.path.join(cdir, "container.json")) as f:
                    meta = json.load(f)
            except (OSError, ValueError):
                meta = {}
            if meta.get("keep") and meta.get("status") == "running":
                meta.update(status="dead", pid=None)   # --keep: the layer stays for diff/commit
                fsutil.atomic_write_json(os.path.join(cdir, "container.json"), meta, mode=0o644, fsync=False)
                return True
            rmtree(cdir)
    except OSError:
        return False
    return not os.path.lexists(cdir)


def _settle_state(name: str, sid: str) -> None:
    """A detached sandbox whose supervisor died: gone while starting or with --rm; else `dead`."""
    from . import state
    try:
        st = state.read(name)
    except (state.StateError, OSError):
        return
    if st.get("id") != sid or state.is_alive(name):
        return
    if st.get("status") in ("starting", "created") or st.get("auto_remove"):
        state.remove(name)
    elif st.get("status") == "running":
        with contextlib.suppress(state.StateError, OSError):
            state.update(name, _only_if_status=("running",), status="dead", finished=state.now(),
                         message=f"pysandbox: the supervisor of {name} died; its sandbox was killed "
                                 f"and its resources removed")


def reclaim_quietly() -> None:
    """At the start of every command: never in the way of the command itself."""
    try:
        reclaim()
    except Exception:                             # noqa: BLE001
        pass


def prune(rootless: Optional[bool] = None) -> list[str]:
    """`pysandbox prune`: leftovers of dead owners, then every detached sandbox that is not running
    (exited or dead) — its state directory and logs, as `docker container prune`. Returns names."""
    from . import state
    reclaim(rootless)
    removed = []
    for n in state.names():
        try:
            st = state.read(n)
        except state.StateError:
            continue
        if st.get("status") in ("starting", "created", "running") and state.is_alive(n):
            continue
        if state.is_alive(n):
            continue
        sid = st.get("id") or ""
        if _ID.match(sid):
            reclaim(rootless, only=sid)
        state.remove(n)
        removed.append(n)
    return removed


def wait_reclaimable(sid: str, timeout: float, rootless: Optional[bool] = None) -> bool:
    """Tests and `rm`: until every record of sid names a dead owner (or none is left)."""
    deadline = time.monotonic() + timeout
    d = owners_dir(rootless)
    while True:
        rs = _records(d).get(sid, [])
        if not any(procid.running(p, s) for _, p, s in rs):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
