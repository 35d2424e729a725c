"""A sandbox's id maps: /proc/PID/{setgroups,uid_map,gid_map}, written by the supervisor after the
clone and before PID 1's release.

* root: any map, written directly.
* rootless, its own id only (`uid_map: auto`): written directly, with `setgroups` `deny` first
  (the kernel's rule for an unprivileged map of the writer's own gid).
* rootless, ranges (`uid_map: subordinate`, or entries inside the caller's /etc/subuid,
  /etc/subgid ranges — the compiler checks them, policies/subids.py): only the setuid helpers of
  shadow's `uidmap` package may write those, after checking the ranges against the same files —
  as podman, buildah and rootlesskit do. `newuidmap PID inside outside count ...`, then
  `newgidmap PID ...`, which leaves `setgroups` at `allow` when a subordinate range is mapped
  (so PID 1 drops the caller's supplementary groups with setgroups([])) and writes `deny` when
  only the caller's own gid is. Both are spawned at once (~7 ms each on this machine) and waited
  for; the target must still be dumpable and owned by the caller (PID 1 is, until its release).
"""
from __future__ import annotations

import os

HELPERS = ("newuidmap", "newgidmap")
_STDERR_MAX = 4096
_found: dict = {}


def _own(m, own: int) -> bool:
    return len(m) == 1 and m[0].count == 1 and m[0].outside == own


def uses_helpers(plan, rootless: bool) -> bool:
    """A rootless plan mapping more than the caller's own uid and gid (ranges: the setuid helpers)."""
    return bool(rootless and plan.namespaces.user and not (_own(plan.user.uid_map, os.geteuid())
                                                          and _own(plan.user.gid_map, os.getegid())))


def helper_problem() -> str | None:
    """Why newuidmap/newgidmap cannot write ranges here (None: they can): missing, or neither
    setuid root nor given file capabilities (`security.capability`)."""
    for name in HELPERS:
        path = find(name)
        if path is None:
            return f"{name} not found (install the uidmap package)"
        try:
            st = os.stat(path)
        except OSError as e:
            return f"{path}: {e.strerror}"
        if not (st.st_uid == 0 and st.st_mode & 0o4000):
            try:
                os.getxattr(path, "security.capability")
            except OSError:
                return f"{path} is neither setuid root nor has file capabilities"
    return None


def find(name: str) -> str | None:
    if name not in _found:
        import shutil
        _found[name] = shutil.which(name, path="/usr/bin:/bin:/usr/sbin:/sbin")
    return _found[name]


def _args(m) -> list[str]:
    return [str(x) for e in m for x in ((e.inside, e.outside, e.count) if hasattr(e, "inside") else e)]


def still_granted(plan) -> bool:
    """Whether the ranges a rootless plan maps through newuidmap/newgidmap are still the caller's
    in /etc/subuid and /etc/subgid (read now, as the helpers check them). For maps written ahead
    (a launch server's spare built before its launch): used only while the administrator still
    grants them - else the spare is dropped and the launch's own newuidmap call decides (refused:
    exit 125). The caller's own id needs no grant."""
    from policies import subids
    try:
        for what, m, own in (("uid", plan.user.uid_map, os.geteuid()), ("gid", plan.user.gid_map, os.getegid())):
            rs = subids.ranges(what, os.geteuid())
            for e in m:
                if not (e.count == 1 and e.outside == own) and not subids.owns(rs, e.outside, e.count):
                    return False
    except subids.SubidError:
        return False
    return True


def write_with_helpers(pid: int, plan) -> str | None:
    """Run newuidmap and newgidmap for PID 1 (at once). None when both succeeded, else one line:
    what failed and the helper's own words."""
    return write_ranges(pid, plan.user.uid_map, plan.user.gid_map)


def write_ranges(pid: int, uid_map, gid_map) -> str | None:
    """newuidmap and newgidmap for process `pid` (entries: IdMapEntry or (inside, outside, count))."""
    procs, failed = [], None
    try:
        for name, m in (("newuidmap", uid_map), ("newgidmap", gid_map)):
            path = find(name)
            if path is None:
                failed = f"{name} not found (install the uidmap package)"
                break
            r, w = os.pipe2(os.O_CLOEXEC)
            try:
                devnull = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
                try:
                    child = os.posix_spawn(path, [name, str(pid), *_args(m)], {"LC_ALL": "C"},
                                           file_actions=[(os.POSIX_SPAWN_DUP2, devnull, 0),
                                                         (os.POSIX_SPAWN_DUP2, w, 1),
                                                         (os.POSIX_SPAWN_DUP2, w, 2)])
                finally:
                    os.close(devnull)
            except OSError as e:
                os.close(r)
                failed = f"{name}: {e.strerror}"
                break
            finally:
                os.close(w)
            procs.append((name, child, r))
        for name, child, r in procs:           # every spawned helper is read and reaped
            out = b""
            while True:
                chunk = os.read(r, _STDERR_MAX)
                if not chunk:
                    break
                if len(out) < _STDERR_MAX:
                    out += chunk
            _, status = os.waitpid(child, 0)
            code = os.waitstatus_to_exitcode(status)
            if failed is None and code != 0:
                said = next((ln.strip() for ln in out.decode("utf-8", "replace").splitlines() if ln.strip()),
                            f"exit status {code}")
                failed = f"{name} refused: {said[:300]}"
        return failed
    finally:
        for _, _, r in procs:
            os.close(r)


class IdMapError(Exception):
    """The id maps could not be written (the launch stops, exit 125). .path: the file, if any."""

    def __init__(self, message: str, path=None):
        super().__init__(message)
        self.path = path


def write_maps(pid: int, plan, rootless: bool) -> None:
    """The supervisor's step after the clone: `setgroups` (rootless, own ids: deny), `uid_map`,
    `gid_map` of PID `pid`, one write(2) each as the kernel wants them — or, rootless with ranges,
    through newuidmap/newgidmap. Raises IdMapError."""
    if uses_helpers(plan, rootless):
        problem = write_with_helpers(pid, plan)
        if problem:
            raise IdMapError(f"user namespace: cannot write the id maps: {problem} (the ids must be the "
                             "caller's in /etc/subuid and /etc/subgid: usermod --add-subuids/--add-subgids)")
        return

    def fmt(m):
        return "".join(f"{e.inside} {e.outside} {e.count}\n" for e in m)
    files = ((("setgroups", "deny"),) if rootless else ()) + \
        (("uid_map", fmt(plan.user.uid_map)), ("gid_map", fmt(plan.user.gid_map)))
    try:
        for name, text in files:
            fd = os.open(f"/proc/{pid}/{name}", os.O_WRONLY | os.O_CLOEXEC)
            try:
                os.write(fd, text.encode())
            finally:
                os.close(fd)
    except OSError as e:
        raise IdMapError(f"user namespace: cannot write the id maps: {e.filename}: {e.strerror}",
                         path=e.filename) from None


# --------------------------------------------------------------------------- a store's user namespace

def store_maps(uid_map, gid_map) -> tuple[tuple, tuple]:
    """The maps of the user namespace a rootless caller's store work is done in for a sandbox with
    subordinate ids (sandbox/store/idshift.py): the sandbox's own maps, so ids there are the
    sandbox's ids, plus the caller's own uid and gid at the first free inside id (unless the
    sandbox maps them already): its root there may read the caller's layers and write files owned
    by the sandbox's ids, as podman's rootless storage does. Tuples (inside, outside, count)."""
    def add(m, own):
        m = [((e.inside, e.outside, e.count) if hasattr(e, "inside") else tuple(e)) for e in m]
        if not any(o <= own < o + n for _, o, n in m):
            m.append((max((i + n for i, _, n in m), default=0), own, 1))
        return tuple(m)
    return add(uid_map, os.geteuid()), add(gid_map, os.getegid())


_RESULT_MAX = 1 << 20


def run_in_userns(uid_map, gid_map, fn) -> str:
    """fn() in a forked child of this process, in a new user namespace whose maps newuidmap and
    newgidmap write (ranges of the caller's /etc/subuid, /etc/subgid), as its root (uid and gid 0
    there, no supplementary groups, every capability of that namespace). Returns fn's result (a
    str, at most 1 MiB); raises IdMapError with one line when the maps cannot be written or fn
    raised (its message). The child is always reaped."""
    from . import _sys
    r_res, w_res = os.pipe2(os.O_CLOEXEC)
    r_go, w_go = os.pipe2(os.O_CLOEXEC)
    try:
        pid = _sys.clone_fork(_sys.CLONE_NEWUSER)
    except OSError as e:
        for fd in (r_res, w_res, r_go, w_go):
            os.close(fd)
        raise IdMapError(f"user namespace for the store: {e.strerror}") from None
    if pid == 0:                                   # the child: never returns
        code = 1
        try:
            os.close(r_res)
            os.close(w_go)
            if os.read(r_go, 1) == b"G":
                try:
                    _sys.setresgid(0, 0, 0)
                    try:
                        _sys.setgroups([])
                    except OSError:
                        pass
                    _sys.setresuid(0, 0, 0)
                    out = b"OK" + str(fn()).encode("utf-8", "surrogateescape")
                except BaseException as e:     # noqa: BLE001 - reported to the parent, one line
                    msg = getattr(e, "strerror", None) and f"{getattr(e, 'filename', '') or ''}: {e.strerror}" or str(e)
                    out = b"ER" + " ".join(str(msg).split())[:500].encode("utf-8", "replace")
                os.write(w_res, out[:_RESULT_MAX])
                code = 0
        finally:
            os._exit(code)
    os.close(w_res)
    os.close(r_go)
    data = b""
    try:
        problem = write_ranges(pid, uid_map, gid_map)
        if problem is None:
            os.write(w_go, b"G")
        os.close(w_go)
        w_go = -1
        while True:
            chunk = os.read(r_res, 65536)
            if not chunk:
                break
            if len(data) <= _RESULT_MAX:
                data += chunk
    finally:
        if w_go >= 0:
            os.close(w_go)
        os.close(r_res)
        os.waitpid(pid, 0)
    if problem is not None:
        raise IdMapError(f"user namespace for the store: cannot write the id maps: {problem}")
    if data[:2] == b"OK":
        return data[2:].decode("utf-8", "surrogateescape")
    raise IdMapError(data[2:].decode("utf-8", "replace") if data[:2] == b"ER" else
                     "user namespace for the store: the helper process ended without an answer")
