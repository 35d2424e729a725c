"""Subordinate id ranges (/etc/subuid, /etc/subgid): which host ids a rootless caller owns
besides its own, as shadow's newuidmap/newgidmap read them (an entry's owner is a user name or a
numeric uid; `owner:first:count`, one a line; `#` comments).

Pure: reads the two files (bounded), makes no other system call; the kernel-side use of the
ranges (the setuid helpers) is in sandbox/idmap.py.
"""
from __future__ import annotations

import pwd

TYPE_CHECKING = False  # annotations only (postponed): importing typing is ~2 ms of the launch path
if TYPE_CHECKING:
    from typing import Optional

FILES = {"uid": "/etc/subuid", "gid": "/etc/subgid"}
MAX_BYTES = 1 << 20            # a larger file is not read (refused: treated as no ranges, said so)
MAX_ID = 4294967295            # ids are 32 bits; (uid_t)-1 is never valid
WANT = 65536                   # what `subordinate` maps: inside 0-65535, as podman's rootless default


class SubidError(Exception):
    """The file cannot be used (unreadable, too large). One line."""


def parse(text: str) -> list[tuple[str, int, int]]:
    """`owner:first:count` lines -> [(owner, first, count)], malformed lines skipped (as shadow does)."""
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(":")
        if len(parts) != 3 or not parts[0]:
            continue
        try:
            first, count = int(parts[1], 10), int(parts[2], 10)
        except ValueError:
            continue
        if first < 0 or count <= 0 or first + count - 1 > MAX_ID - 1:
            continue
        out.append((parts[0], first, count))
    return out


def user_name(uid: int) -> Optional[str]:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return None


def ranges(what: str, uid: int, *, path: Optional[str] = None) -> list[tuple[int, int]]:
    """The caller's (first, count) ranges of host ids of kind `what` ("uid"/"gid"), in file order
    (entries naming the user or its numeric uid). No file: []."""
    path = path or FILES[what]
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_BYTES + 1)
    except FileNotFoundError:
        return []
    except OSError as e:
        raise SubidError(f"{path}: {e.strerror}") from None
    if len(data) > MAX_BYTES:
        raise SubidError(f"{path}: larger than {MAX_BYTES} bytes; not read")
    owners = {str(uid)}
    name = user_name(uid)
    if name:
        owners.add(name)
    return [(first, count) for owner, first, count in parse(data.decode("utf-8", "replace"))
            if owner in owners]


def no_new_privs() -> bool:
    """Whether this process runs with no_new_privs (/proc/self/status): the setuid newuidmap and
    newgidmap then gain nothing and cannot write ranges for it."""
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f.read(65536).splitlines():
                if line.startswith(b"NoNewPrivs:"):
                    return line.split()[1:] == [b"1"]
    except (OSError, IndexError):
        pass
    return False


def owns(rs: list[tuple[int, int]], first: int, count: int) -> bool:
    """Whether [first, first+count) lies inside one of the ranges (as newuidmap checks it)."""
    return any(a <= first and first + count <= a + n for a, n in rs)


def first_ids(rs: list[tuple[int, int]], want: int = WANT) -> list[tuple[int, int, int]]:
    """(inside, outside, count) entries giving inside 0..want-1 the first `want` ids of the ranges
    (in file order, overlaps skipped); [] when the ranges hold fewer."""
    out, inside, taken = [], 0, []
    for a, n in rs:
        for b, m in taken:                    # skip what an earlier line gave already
            if a < b + m and b < a + n:
                break
        else:
            take = min(n, want - inside)
            out.append((inside, a, take))
            taken.append((a, n))
            inside += take
            if inside == want:
                return out
    return []


def holds_range(gid_map) -> bool:
    """A gid map holding a subordinate range (as far as the plan tells: more than one id; entries
    with `.count`, policies.plan.IdMapEntry): newgidmap then leaves `setgroups` at `allow`, so
    supplementary groups can be set and the sandbox drops the caller's (sandbox/idmap.py). The one
    copy: the compiler (--group-add), the launcher's preflight, PID 1 (init.setgroups_allowed, from
    the plan alone: the caller's gid is not known there any more) and `exec` (the plan as stored,
    normalised where execin reads it). A map of one subordinate gid (count 1) is not seen as a
    range: setgroups is not called and the caller's groups stay, as with `auto` - never a failed
    launch."""
    return len(gid_map) > 1 or any(e.count > 1 for e in gid_map)
