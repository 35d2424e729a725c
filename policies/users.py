"""`--user name[:group]` and `--group-add`: resolved against the sandbox root's /etc/passwd and
/etc/group, as Docker does. Pure: the text comes from the caller (sandbox/userdb.py reads it inside
the root); it is untrusted (an image's, a root directory's), so parsing is bounded and lenient —
a malformed line is skipped, never an error of ours.
"""
from __future__ import annotations

from typing import Callable, Optional

from .errors import ProfileError

MAX_LINES = 65536             # of /etc/passwd or /etc/group (the reader caps the bytes: 1 MiB)
MAX_GROUPS = 64               # supplementary groups (the kernel takes 65536; Docker's images never need many)
MAX_ID = 4294967294
MAX_SPEC = 256                # length of a --user or --group-add value


def _lines(text: Optional[bytes]):
    if not text:
        return
    for n, line in enumerate(text.split(b"\n")):
        if n >= MAX_LINES:
            return
        if line.startswith(b"#") or b":" not in line:
            continue
        yield line.decode("utf-8", "replace").split(":")


def _num(s: str) -> Optional[int]:
    return int(s) if s.isdigit() and len(s) <= 10 and int(s) <= MAX_ID else None


def passwd_entries(text: Optional[bytes]) -> list[tuple[str, int, int]]:
    """(name, uid, gid) of each well-formed line of a passwd file."""
    out = []
    for f in _lines(text):
        if len(f) >= 4 and f[0]:
            uid, gid = _num(f[2]), _num(f[3])
            if uid is not None and gid is not None:
                out.append((f[0], uid, gid))
    return out


def group_entries(text: Optional[bytes]) -> list[tuple[str, int, tuple[str, ...]]]:
    """(name, gid, members) of each well-formed line of a group file."""
    out = []
    for f in _lines(text):
        if len(f) >= 3 and f[0]:
            gid = _num(f[2])
            if gid is not None:
                members = tuple(m for m in (f[3].split(",") if len(f) > 3 else ()) if m)
                out.append((f[0], gid, members))
    return out


def resolve(spec: Optional[str], group_add: tuple, db: Optional[Callable[[str], Optional[bytes]]],
            where: str, label: str = "--user") -> tuple[Optional[int], Optional[int], tuple[int, ...]]:
    """(uid, gid, supplementary groups) for `--user spec` and `--group-add`, as Docker resolves them:
    a name is looked up in the root's passwd (its gid unless one is given); a number needs no entry
    (gid: the entry's when there is one, else the uid, as pysandbox did before); the user's
    supplementary groups come from the root's group file, then every --group-add (name or number).
    uid/gid None: no --user. `db(name)` returns the root's /etc/NAME (bytes, bounded) or None;
    `where` names the root in messages, `label` where spec came from. Raises ProfileError (exit 2)."""
    cache: dict = {}

    def read(name):
        if name not in cache:
            cache[name] = db(name) if db is not None else None
        return cache[name]

    uid = gid = None
    user_name = None
    groups: list[int] = []
    if spec is not None:
        if not spec or len(spec) > MAX_SPEC or spec.count(":") > 1:
            raise ProfileError(f"{label}: expected NAME|UID[:GROUP|GID], got {spec!r}")
        u, _, g = spec.partition(":")
        if not u or (":" in spec and not g):
            raise ProfileError(f"{label}: expected NAME|UID[:GROUP|GID], got {spec!r}")
        pw = passwd_entries(read("passwd"))
        if u.isdigit():
            uid = _num(u)
            if uid is None:
                raise ProfileError(f"{label}: uid {u} is out of range (0-{MAX_ID})")
            hit = next((e for e in pw if e[1] == uid), None)
        else:
            hit = next((e for e in pw if e[0] == u), None)
            if hit is None:
                raise ProfileError(f"{label} {spec}: no user {u!r} in {where}/etc/passwd")
            uid = hit[1]
        if hit is not None:
            user_name = hit[0]
        if g:
            gid = _group(g, read, where, label)
        else:
            gid = hit[2] if hit is not None else uid
        if user_name is not None:        # the user's supplementary groups (Docker: from /etc/group)
            for name, ggid, members in group_entries(read("group")):
                if user_name in members and ggid != gid and ggid not in groups:
                    groups.append(ggid)
    for g in group_add:
        if not isinstance(g, str) or not g or len(g) > MAX_SPEC:
            raise ProfileError(f"--group-add: expected a group name or GID, got {g!r}")
        n = _group(g, read, where, "--group-add")
        if n not in groups:
            groups.append(n)
    if len(groups) > MAX_GROUPS:
        raise ProfileError(f"--user/--group-add: {len(groups)} supplementary groups (at most {MAX_GROUPS})")
    return uid, gid, tuple(groups)


def _group(g: str, read, where: str, flag: str) -> int:
    if g.isdigit():
        n = _num(g)
        if n is None:
            raise ProfileError(f"{flag}: gid {g} is out of range (0-{MAX_ID})")
        return n
    hit = next((e for e in group_entries(read("group")) if e[0] == g), None)
    if hit is None:
        raise ProfileError(f"{flag}: no group {g!r} in {where}/etc/group")
    return hit[1]
