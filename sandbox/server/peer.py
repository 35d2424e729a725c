"""The CLI's launch server (`pysandbox server`): is the process at the other end of a connection
exactly as confined as the server? Only then may the server start a sandbox for it — the sandbox a
process gets from the server must be the one it would have made itself. Anything else (or anything
that cannot be read) is "not here": the CLI then takes its ordinary path (docs/security.md,
"The CLI's launch server").

The peer is pinned by SO_PEERPIDFD (Linux 6.5+) and SO_PEERCRED at accept; its /proc entries are
read through the pid the pidfd names, and the pidfd is checked afterwards (a process still alive:
the pid was not reused while it was read). Compared, with the server's own: uid and gid sets (real,
effective, saved, fs), supplementary groups, the five capability sets, every namespace, the root
directory, the LSM label, the cgroup membership, and what PID 1 would inherit of it (CPU and memory-node affinity, the nice
value, the OOM score adjustment, the personality, the audit login uid); NoNewPrivs and Seccomp must be 0 on both (a
process with no_new_privs may be in a Landlock domain, which /proc does not show), and the peer
must have a single thread (the credentials and filters of another thread are not in
/proc/PID/status).
"""
from __future__ import annotations

import os
import select
import socket
import struct

SO_PEERPIDFD = getattr(socket, "SO_PEERPIDFD", 77)
_CRED = struct.Struct("3i")                      # struct ucred: pid, uid, gid
_STATUS = ("Uid", "Gid", "Groups", "CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", "NoNewPrivs",
           "Seccomp", "Seccomp_filters", "Cpus_allowed", "Mems_allowed")
# what else a PID 1 inherits from whoever clones it, and the sandbox with it: the OOM score
# adjustment, the execution domain, the audit login uid (below: the nice value, from stat)
_FILES = ("oom_score_adj", "personality", "loginuid")
MAX_READ = 1 << 16                               # any /proc file read here is far smaller


class NotHere(Exception):
    """The peer is not exactly as confined as the server (the reason, for `server status`/tests)."""


def peer_of(conn) -> tuple:
    """(pidfd, pid, uid) of an accepted connection's peer. Raises NotHere (or OSError)."""
    pid, uid, _gid = _CRED.unpack(conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CRED.size))
    pidfd = conn.getsockopt(socket.SOL_SOCKET, SO_PEERPIDFD)
    if _pidfd_pid(pidfd) != pid:
        os.close(pidfd)
        raise NotHere("the peer is gone")
    return pidfd, pid, uid


def _pidfd_pid(pidfd: int) -> int:
    with open(f"/proc/self/fdinfo/{pidfd}", "rb") as f:
        for line in f.read(MAX_READ).splitlines():
            if line.startswith(b"Pid:"):
                return int(line.split()[1])
    return -1


def _read(path: str):
    try:
        with open(path, "rb") as f:
            return f.read(MAX_READ)
    except OSError as e:
        return ("error", e.errno)


def identity(pid="self") -> dict:
    """What the comparison looks at, of one process (see the module's docstring)."""
    base = f"/proc/{pid}"
    out = {}
    status = _read(f"{base}/status")
    if isinstance(status, tuple):
        raise NotHere(f"cannot read the peer's status: errno {status[1]}")
    for line in status.splitlines():
        name, _, val = line.partition(b":")
        name = name.decode()
        if name in _STATUS or name == "Threads":
            out[name] = val.split()
    for ns in sorted(os.listdir(f"{base}/ns")):
        try:
            out["ns/" + ns] = os.readlink(f"{base}/ns/{ns}")
        except OSError as e:
            out["ns/" + ns] = ("error", e.errno)
    st = os.stat(f"{base}/root")
    out["root"] = (st.st_dev, st.st_ino)
    out["attr/current"] = _read(f"{base}/attr/current")
    out["cgroup"] = _read(f"{base}/cgroup")
    for name in _FILES:
        out[name] = _read(f"{base}/{name}")
    stat = _read(f"{base}/stat")
    out["nice"] = stat.rpartition(b")")[2].split()[16] if not isinstance(stat, tuple) else stat
    return out


def check(pidfd: int, pid: int, uid: int, mine: "dict | None" = None) -> None:
    """Raise NotHere unless the peer (pinned by pidfd) is exactly as confined as this process."""
    if uid != os.geteuid():
        raise NotHere("another user")
    if mine is None:
        mine = identity()
    try:
        theirs = identity(pid)
    except OSError as e:
        raise NotHere(f"cannot read the peer: {e.strerror}") from None
    p = select.poll()
    p.register(pidfd, select.POLLIN)
    if p.poll(0) or _pidfd_pid(pidfd) != pid:       # exited (the pid may name another process now)
        raise NotHere("the peer is gone")
    for name, want in (("NoNewPrivs", [b"0"]), ("Seccomp", [b"0"])):
        if mine.get(name) != want:
            raise NotHere(f"the server has {name} set")
        if theirs.get(name) != want:
            raise NotHere(f"the peer has {name} set")
    if theirs.get("Threads") != [b"1"]:
        raise NotHere("the peer has more than one thread")
    for name in sorted(set(mine) | set(theirs)):
        if name != "Threads" and mine.get(name) != theirs.get(name):
            raise NotHere(f"the peer's {name} differs")
