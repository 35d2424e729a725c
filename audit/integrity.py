"""Integrity checks after a sandbox exited -> `integrity_violation` events.

    snap = integrity.Snapshot.take(pid1_host_pid, ro_paths=[...], mount_prefixes=["/tmp"])   # at start
    ... sandbox runs and ends ...
    for fields in integrity.check(snap, cgroup_paths=[...]):                                  # after exit
        recorder.emit("integrity_violation", **fields)

Checks:
* processes: no process may remain in any namespace of the sandbox (pid, user, mnt, net, ipc,
  uts, cgroup) that differs from the launcher's own — that would be a process of the sandbox
  still alive outside it. The namespaces are held open from the snapshot to the check, so their
  inode numbers cannot be reused by sandboxes started meanwhile (no false reports under load);
* mounts: no mount appeared in the launcher's (host) mount namespace under the paths the
  sandbox mounts on (propagation leak). A new host mount is the sandbox's only if it came from
  there: it (or the mount it receives from) is in a peer group that the sandbox's own mount
  namespace has (`sandbox_mounts`: that namespace's mountinfo, read by the caller). A mount made
  on the host meanwhile, outside the sandbox's namespaces (another engine's, an administrator's),
  is in none of them: not reported;
* cgroups: the sandbox's cgroup directories are gone;
* read-only sources: read-only bind sources and image layer directories are unchanged
  (inode, size, mtime, ctime, mode of up to MAX_ENTRIES entries recorded at start).

Reads /proc and stats files only; never writes anything. Pure of `sandbox`/`policies`.
"""
from __future__ import annotations

import os
import select
import threading
import time
from dataclasses import dataclass, field

TYPE_CHECKING = False  # annotations only (postponed): importing typing is ~2 ms of the launch path
if TYPE_CHECKING:
    from typing import Callable, Iterable, Optional

NAMESPACES = ("pid", "user", "mnt", "net", "ipc", "uts", "cgroup")
MAX_ENTRIES = 5000


def _ns_ids(pid: int | str) -> dict:
    out = {}
    for ns in NAMESPACES:
        try:
            out[ns] = os.readlink(f"/proc/{pid}/ns/{ns}")
        except OSError:
            pass
    return out


def _mounts() -> dict:
    """mount id -> (mount point, fstype, source, peer groups) of the caller's mount namespace
    (peer groups: the `shared:N` and `master:N` of its optional fields, a frozenset of N)."""
    out = {}
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                parts = line.split()
                if len(parts) < 10:
                    continue
                try:
                    sep = parts.index("-")
                except ValueError:
                    continue
                out[parts[0]] = (parts[4].replace("\\040", " "), parts[sep + 1], parts[sep + 2],
                                 frozenset(_groups(parts[6:sep], ("shared", "master"))))
    except OSError:
        pass
    return out


def _groups(fields, kinds) -> set:
    """The peer group numbers of mountinfo optional fields (`shared:N`, `master:N`) of KINDS."""
    out = set()
    for f in fields:
        kind, _, n = f.partition(":")
        if kind in kinds and n.isdigit():
            out.add(int(n))
    return out


MOUNTINFO_MAX = 4 << 20


def shared_groups(mountinfo: str) -> set:
    """The peer groups (`shared:N`) of a mount table in /proc/PID/mountinfo form, at most
    MOUNTINFO_MAX characters of it: where a mount made in that namespace propagates to."""
    out: set = set()
    for line in mountinfo[:MOUNTINFO_MAX].splitlines():
        parts = line.split()
        if "-" in parts:
            out |= _groups(parts[6:parts.index("-")], ("shared",))
    return out


class _MountWatch:
    """The caller's mount table, parsed again only when the kernel says it changed: an open
    /proc/self/mountinfo reports POLLPRI|POLLERR after a mount or unmount in its namespace
    (proc(5)). One per process and mount namespace: the poll state belongs to the open file."""
    __slots__ = ("key", "fd", "poller", "table")

    def __init__(self, key: tuple):
        self.key = key
        self.fd = os.open("/proc/self/mountinfo", os.O_RDONLY | os.O_CLOEXEC)
        self.poller = select.poll()
        self.poller.register(self.fd, select.POLLPRI)
        self.table = _mounts()                # read after the open: no change is missed

    def current(self) -> dict:
        if self.poller.poll(0):               # changed since the last look: read it again
            self.table = _mounts()
        return self.table


_WATCH: list = [None]
_WATCH_LOCK = threading.Lock()                # take() and check() may run on different threads


def _mount_table() -> dict:
    """The caller's mount table (mount id -> ...), the same dict object while nothing changed."""
    try:
        key = (os.getpid(), os.readlink("/proc/self/ns/mnt"))
    except OSError:
        return _mounts()
    with _WATCH_LOCK:
        return _watched(key)


def _watched(key: tuple) -> dict:
    w = _WATCH[0]
    if w is None or w.key != key:
        if w is not None and w.key[0] == key[0]:
            os.close(w.fd)                    # ours, for a namespace we left (a fork's copy stays open)
        try:
            w = _WATCH[0] = _MountWatch(key)
        except OSError:
            _WATCH[0] = None
            return _mounts()
    return w.current()


def fingerprint(root: str, limit: int = MAX_ENTRIES) -> dict:
    """path -> (ino, size, mtime_ns, ctime_ns, mode) for root and up to `limit` entries below
    (breadth first, symlinks not followed)."""
    out: dict = {}
    try:
        st = os.lstat(root)
    except OSError:
        return out
    out[root] = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_mode)
    if not os.path.isdir(root) or os.path.islink(root):
        return out
    queue = [root]
    while queue and len(out) < limit:
        d = queue.pop(0)
        try:
            with os.scandir(d) as it:
                for e in it:
                    if len(out) >= limit:
                        break
                    try:
                        s = e.stat(follow_symlinks=False)
                    except OSError:
                        continue
                    out[e.path] = (s.st_ino, s.st_size, s.st_mtime_ns, s.st_ctime_ns, s.st_mode)
                    if e.is_dir(follow_symlinks=False):
                        queue.append(e.path)
        except OSError:
            continue
    return out


@dataclass
class Snapshot:
    """The host-side view of a sandbox taken at launch (its namespaces and mounts)."""
    pid: int
    own_ns: dict
    sandbox_ns: dict                      # only the namespaces that differ from ours
    mounts: dict
    mount_prefixes: tuple
    ro: dict = field(default_factory=dict)     # root -> fingerprint
    taken: float = 0.0                         # time.monotonic() at take()
    start_ticks: int = -1                      # PID 1's start time (clock ticks after boot), -1 unknown
    # One open descriptor per namespace of the sandbox, held from take() until check() is done
    # (or close()): a namespace's inode number is reused by the kernel as soon as the namespace
    # is freed, so without them a namespace of a sandbox started after this one ended could carry
    # the same "mnt:[N]" and its processes be reported as this sandbox's leftovers.
    ns_fds: dict = field(default_factory=dict)

    @classmethod
    def take(cls, pid: int, *, ro_paths: Iterable[str] = (), mount_prefixes: Iterable[str] = ()) -> "Snapshot":
        own = _ns_ids("self")
        fds, sb = _hold_namespaces(pid, own)
        ticks = _start_ticks(pid)
        return cls(pid, own, sb, _mount_table(), tuple(p.rstrip("/") or "/" for p in mount_prefixes),
                   {p: fingerprint(p) for p in ro_paths}, time.monotonic(), -1 if ticks is None else ticks,
                   fds)

    def close(self) -> None:
        """Let go of the sandbox's namespaces (check() does this when it is done)."""
        fds, self.ns_fds = self.ns_fds, {}
        for fd in fds.values():
            try:
                os.close(fd)
            except OSError:
                pass

    def __del__(self):
        self.close()


def _hold_namespaces(pid: int, own: dict) -> tuple[dict, dict]:
    """Open the namespaces of `pid` that differ from ours -> ({ns: fd}, {ns: "mnt:[inode]"}): the
    inode is taken from the held descriptor, so it names that namespace for as long as it is open."""
    fds: dict = {}
    ids: dict = {}
    for ns in NAMESPACES:
        try:
            fd = os.open(f"/proc/{pid}/ns/{ns}", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            continue
        link = f"{ns}:[{os.fstat(fd).st_ino}]"
        if own.get(ns) == link:
            os.close(fd)
            continue
        fds[ns], ids[ns] = fd, link
    return fds, ids


WRAP_SAFE = 5.0


def _start_ticks(pid):
    """A process's start time in clock ticks after boot (/proc/PID/stat field 22); None when
    there is no such process, -1 when it cannot be read."""
    try:                                  # os-level calls: this runs for many processes per check
        fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY | os.O_CLOEXEC)
    except (FileNotFoundError, ProcessLookupError):
        return None
    except OSError:
        return -1
    try:
        data = os.read(fd, 4096)
        return int(data[data.rindex(b")") + 2:].split(None, 20)[19])
    except (OSError, ValueError, IndexError):
        return -1
    finally:
        os.close(fd)


PROBE_MAX = 256


def _tgid(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("Tgid:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return pid


def _last_pid() -> int:
    """The last pid handed out in our pid namespace (-1 when unknown: scan everything)."""
    try:
        with open("/proc/sys/kernel/ns_last_pid") as f:
            return int(f.read())
    except (OSError, ValueError):
        return -1


def _under(path: str, prefixes: tuple) -> bool:
    return any(path == p or path.startswith(p + "/") or p == "/" for p in prefixes)


def check(snap: Snapshot, *, cgroup_paths: Iterable[str] = (), skip_pids: Iterable[int] = (),
          sandbox_mounts: Callable[[dict], Optional[str]] | None = None) -> list[dict]:
    """-> a list of field dicts for `integrity_violation` events (empty when all is well). Lets go
    of the snapshot's namespaces when done.
    sandbox_mounts(ns_fds): the mount table (mountinfo text) of the sandbox's mount namespace,
    held as ns_fds["mnt"] (its user namespace as ns_fds["user"], if any); None when it cannot be
    read. Called only when a mount appeared on the host under the watched paths. Without it (or
    when it answers None) every such mount is reported, as it may be the sandbox's."""
    try:
        return _check(snap, cgroup_paths, skip_pids, sandbox_mounts)
    finally:
        snap.close()


def _theirs(snap: Snapshot, sandbox_mounts) -> Optional[set]:
    """The peer groups of the sandbox's own mount namespace; None: unknown (every new host mount
    may be the sandbox's: it shares ours, or its table could not be read)."""
    if sandbox_mounts is None or "mnt" not in snap.ns_fds:
        return None
    try:
        text = sandbox_mounts(snap.ns_fds)
    except Exception:  # noqa: BLE001 - unknown: reported as before
        return None
    return None if text is None else shared_groups(text)


def _check(snap: Snapshot, cgroup_paths: Iterable[str], skip_pids: Iterable[int], sandbox_mounts=None) -> list[dict]:
    found: list[dict] = []
    # 1. processes still in one of the sandbox's namespaces
    if snap.sandbox_ns:
        wanted = {v: k for k, v in snap.sandbox_ns.items()}
        skip = {os.getpid(), *skip_pids}
        # Any process of the sandbox was created after its PID 1 and before now, so while pid
        # numbers have not wrapped around since, its pid lies between PID 1's and the last pid
        # handed out: only those are looked at (the scan runs after every sandbox; with many
        # running, reading every process's links costs). A full wrap takes the whole pid space
        # of forks: a sandbox older than WRAP_SAFE seconds gets a full scan.
        last = _last_pid()
        newer_only = bool(snap.taken) and time.monotonic() - snap.taken < WRAP_SAFE and last >= snap.pid
        probe = newer_only and last - snap.pid < PROBE_MAX
        if probe:                             # a few pids: ask for each (a thread id answers too)
            entries = [str(p) for p in range(snap.pid, last + 1)]
        else:
            try:
                entries = [e for e in os.listdir("/proc") if e.isdigit()]
            except OSError:
                entries = []
        for e in entries:
            pid = int(e)
            if pid in skip or newer_only and not snap.pid <= pid <= last:
                continue
            if newer_only and snap.start_ticks >= 0:
                st = _start_ticks(e)
                if st is None or 0 <= st < snap.start_ticks:
                    continue                  # gone, or started before PID 1: one read instead of 7 links
            for ns in NAMESPACES:
                if ns not in snap.sandbox_ns:
                    continue
                try:
                    link = os.readlink(f"/proc/{e}/ns/{ns}")
                except OSError:
                    continue
                if link in wanted:
                    if probe and _tgid(pid) != pid:
                        break                 # a thread: its process is reported under its own pid
                    comm = ""
                    try:
                        with open(f"/proc/{e}/comm") as f:
                            comm = f.read().strip()
                    except OSError:
                        pass
                    found.append({"message": f"process {pid} ({comm}) still alive in the sandbox's "
                                             f"{ns} namespace after exit",
                                  "pid": pid, "comm": comm or None,
                                  "detail": {"check": "process", "namespace": ns, "ns": link}})
                    break
    # 2. mounts leaked into our mount namespace
    now = _mount_table() if snap.mount_prefixes else None
    if now is not None and now is not snap.mounts:          # (the same table: nothing mounted since)
        new = [(mid, m) for mid, m in now.items() if mid not in snap.mounts and _under(m[0], snap.mount_prefixes)]
        theirs = _theirs(snap, sandbox_mounts) if new else None
        for mid, (mp, fstype, src, groups) in new:
            if theirs is not None and not groups & theirs:
                continue                      # not from the sandbox's namespace: made on the host
            found.append({"message": f"mount leaked into the host mount namespace: {fstype} {src} on {mp}",
                          "path": mp, "detail": {"check": "mount", "fstype": fstype, "source": src,
                                                 "mount_id": int(mid),
                                                 "peer_groups": sorted(groups & theirs) if theirs else None}})
    # 3. cgroups left behind
    for p in cgroup_paths:
        if p and os.path.exists(p):
            found.append({"message": f"cgroup left behind: {p}", "path": p, "detail": {"check": "cgroup"}})
    # 4. read-only sources changed
    for root, before in snap.ro.items():
        after = fingerprint(root)
        changed = [p for p, v in before.items() if after.get(p) != v]
        added = [p for p in after if p not in before] if len(before) < MAX_ENTRIES else []
        if changed or added:
            paths = (changed + added)[:20]
            found.append({"message": f"read-only source changed while the sandbox ran: {root} "
                                     f"({len(changed)} changed/removed, {len(added)} added)",
                          "path": root, "detail": {"check": "read_only", "paths": paths}})
    return found
