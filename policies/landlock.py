"""The profile's `landlock:` and `isolation:` sections -> plan.Landlock, plan.isolation (pure).

    landlock:
      abi: 4                        # minimum ABI; the launch is refused (exit 125) below it
      filesystem:                   # or `from_mounts`: derived from the filesystem plan (strict)
        read: [/usr, /etc/ssl]      # read_file + read_dir
        write: [/tmp]               # read + write_file, truncate, remove_*, make_* (no devices), refer, ioctl_dev
        execute: [/usr/bin]         # execute
      network: {bind: [], connect: [443]}       # ABI >= 4: TCP only
      scope: [abstract_unix_socket, signal]     # ABI >= 6

Paths are inside the sandbox's root (the namespace-free backend: the host's). A Landlock rule
covers the whole tree beneath its path. The mapping of the words to access rights is in
policies/plan.py (LANDLOCK_*); docs/profile-format.md explains it.
"""
from __future__ import annotations

import posixpath

from . import plan as P
from .errors import ProfileError

RIGHTS_ABI = dict(P.LANDLOCK_FS_RIGHTS)
SCOPE_ABI = dict(P.LANDLOCK_SCOPES)
DEV_ACCESS = P.LANDLOCK_READ + ("write_file", "truncate", "ioctl_dev")   # /dev: null, tty, pts; no new nodes


def compile_landlock(section, fs: "P.Filesystem", loc) -> "P.Landlock | None":
    """The `landlock:` mapping (schema-checked) -> P.Landlock; None without the section."""
    if section is None:
        return None
    abi = section.get("abi", 1)
    needs = 1
    paths: list = []
    derived = False
    fsec = section.get("filesystem")
    if fsec == "from_mounts":
        paths, derived = list(derive_from_mounts(fs)), True
    elif fsec is not None:
        for word, access in (("read", P.LANDLOCK_READ), ("write", P.LANDLOCK_WRITE),
                             ("execute", P.LANDLOCK_EXECUTE)):
            for i, raw in enumerate(fsec.get(word, ())):
                paths.append(P.LandlockPath(_path(raw, ("landlock", "filesystem", word, i), loc), access,
                                            required=word != "read"))
    net = section.get("network")
    if net is not None:
        needs = max(needs, P.LANDLOCK_NET_ABI)
    scope = tuple(dict.fromkeys(section.get("scope", ())))
    for s in scope:
        needs = max(needs, SCOPE_ABI[s])
    return P.Landlock(abi=abi, needs_abi=needs, filesystem=fsec is not None, paths=_merge(paths),
                      derived=derived, network=net is not None,
                      bind=tuple(sorted(set((net or {}).get("bind", ())))),
                      connect=tuple(sorted(set((net or {}).get("connect", ())))), scope=scope)


def compile_isolation(section, override, loc) -> tuple:
    """-> (the lightest backend the profile accepts, the backend --isolation forces or None)."""
    minimum = (section or {}).get("minimum", "namespaces")
    if override not in (None, "namespaces", "landlock"):
        raise ProfileError(f"--isolation {override!r}: expected namespaces or landlock")
    return minimum, override


def _path(raw: str, where: tuple, loc) -> str:
    if "\0" in raw or not raw.startswith("/"):
        raise ProfileError(f"{'.'.join(map(str, where))}: {raw!r} is not an absolute path", loc(where))
    return posixpath.normpath(raw).replace("//", "/")


def _merge(paths: list) -> tuple:
    """One rule per path, its rights the union of every word naming it (Landlock does the same),
    in the order paths first appear."""
    out: dict = {}
    req: dict = {}
    for p in paths:
        have = out.setdefault(p.path, [])
        for a in p.access:
            if a not in have:
                have.append(a)
        req[p.path] = req.get(p.path, False) or p.required
    return tuple(P.LandlockPath(k, tuple(v), req[k]) for k, v in out.items())


HOST_DEV_NODES = ("null", "zero", "full", "random", "urandom", "tty")   # sandbox/rootfs.py's DEV_NODES


def derive_from_mounts(fs: "P.Filesystem", host: bool = False) -> tuple:
    """strict's rules (`filesystem: from_mounts`): what the mount plan makes readable is read, what it
    makes writable is write (never execute: W^X), directories it binds read-only from the host are
    read + execute; nothing else. `/` itself: list directories only (its files are the container
    interface in /run and empty mount points). An image's or a `root:` directory's tree is read +
    execute (and write when the root is writable): coarser, documented; its execute never reaches
    the writable mounts beneath it (carve_execute, at launch: sandbox/landlock.py build).
    host: the paths are the host's (the namespace-free backend, sandbox/launch/nsfree.py): no /run
    (the host's holds its sockets), and of /dev only the nodes a sandbox's /dev has, and /dev/pts."""
    R, W, X = P.LANDLOCK_READ, P.LANDLOCK_WRITE, P.LANDLOCK_EXECUTE
    out = []
    if fs.root == "host" and not fs.image:
        if not host:                   # (the host's /: nothing, not even a listing)
            out.append(P.LandlockPath("/", ("read_dir",) if fs.read_only else W, False))
        for d in fs.system_dirs:
            out.append(P.LandlockPath(d, R + X, False))
        for e in fs.etc + ("hostname", "hosts", "resolv.conf"):
            out.append(P.LandlockPath("/etc/" + e, R, False))
        if not host:
            out.append(P.LandlockPath("/run", R, False))
    else:
        out.append(P.LandlockPath("/", R + X + (() if fs.read_only else W), False))
    if fs.proc:
        out.append(P.LandlockPath("/proc", R, False))
    if fs.sys:
        out.append(P.LandlockPath("/sys", R, False))
    if host:
        out += [P.LandlockPath(f"/dev/{n}", DEV_ACCESS, False) for n in HOST_DEV_NODES + ("pts",)]
    else:
        out.append(P.LandlockPath("/dev", DEV_ACCESS, False))
    out.append(P.LandlockPath("/dev/shm", W, False))
    for m in fs.mounts:
        out.append(P.LandlockPath(m.target, R + X if m.read_only else W, False))
    return _merge(out)


MAX_CARVE_ENTRIES = 8192       # directory entries carve_execute may list in all (a hostile image's root)


class CarveError(ValueError):
    """carve_execute could not keep W^X within its bounds (the launch is refused)."""


def carve_execute(paths: tuple, listdir) -> tuple:
    """W^X where Landlock's rights add up down a path: an execute rule covering a write-only rule's
    path beneath it (an image's or a `root:` directory's `/` over the /tmp tmpfs, a system directory
    over a writable bind inside it) would make that writable path executable. Such a rule keeps its
    other rights; execute is granted instead on each entry of its directory except the writable
    path, recursing only into the entries that lead to one. `listdir(path)` -> the names of the
    directory's entries that are not symbolic links (their targets get the rules of where they
    lead), None when it is not a directory; what it lists is bounded by MAX_CARVE_ENTRIES
    (CarveError beyond). Pure: the caller lists the sandbox's paths (sandbox/landlock.py)."""
    holes = _holes(paths)
    budget = [MAX_CARVE_ENTRIES]
    out = []
    for p in paths:
        inside = [h for h in holes if h != p.path and beneath(h, p.path)]
        if "execute" not in p.access or not inside:
            out.append(p)
            continue
        rest = tuple(a for a in p.access if a != "execute")
        if rest:
            out.append(P.LandlockPath(p.path, rest, p.required))
        out += _carve(p.path, inside, listdir, budget)
    return _merge(out)


_WRITE_ONLY = set(P.LANDLOCK_WRITE) - set(P.LANDLOCK_READ)


def _holes(paths: tuple) -> list:
    """The paths that are writable and not executable."""
    return [p.path for p in paths if set(p.access) & _WRITE_ONLY and "execute" not in p.access]


def carved(paths: tuple) -> list:
    """The execute rules carve_execute splits (those covering a writable, not executable path)."""
    holes = _holes(paths)
    return [p.path for p in paths if "execute" in p.access
            and any(h != p.path and beneath(h, p.path) for h in holes)]


def _carve(path: str, holes: list, listdir, budget: list) -> list:
    names = listdir(path)
    if names is None:
        return []
    budget[0] -= len(names)
    if budget[0] < 0:
        raise CarveError(f"landlock: more than {MAX_CARVE_ENTRIES} entries to list under {path} "
                         f"to keep its writable paths from executing")
    out = []
    for name in sorted(names):
        if "/" in name or name in (".", "..", "") or "\0" in name:
            continue
        child = path.rstrip("/") + "/" + name
        if child in holes:
            continue
        inner = [h for h in holes if beneath(h, child)]
        if inner:
            out += _carve(child, inner, listdir, budget)
        else:
            out.append(P.LandlockPath(child, P.LANDLOCK_EXECUTE, False))
    return out


def beneath(p: str, q: str) -> bool:
    """Whether path p is q or inside q (a Landlock rule on q covers p)."""
    return p == q or q == "/" or p.startswith(q.rstrip("/") + "/")


def rights_needing(access: tuple) -> int:
    """The ABI the newest of these rights needs."""
    return max((RIGHTS_ABI[a] for a in access), default=1)


def _words(access: tuple) -> str:
    """Rights -> the profile's words (write includes read), then any right they do not cover."""
    have = set(access)
    words = [w for w, acc in (("write", P.LANDLOCK_WRITE), ("read", P.LANDLOCK_READ),
                              ("execute", P.LANDLOCK_EXECUTE)) if set(acc) <= have]
    if "write" in words:
        words.remove("read")
    covered = set().union(*(dict(write=P.LANDLOCK_WRITE, read=P.LANDLOCK_READ, execute=P.LANDLOCK_EXECUTE)[w]
                            for w in words)) if words else set()
    return "+".join(words + [a for a in access if a not in covered])


def describe(ll: "P.Landlock | None") -> list:
    """Lines for `pysandbox explain` (sandbox/explain.py)."""
    if ll is None:
        return ["landlock     no rules (the program's own domain scopes abstract unix sockets only)"]
    out = [f"landlock     abi >= {max(ll.abi, ll.needs_abi)}"
           + (f" (the profile asks {ll.abi}, the rules need {ll.needs_abi})" if ll.abi != ll.needs_abi else "")
           + ("; file system: derived from the mounts" if ll.derived else "")]
    if ll.filesystem:
        groups: dict = {}
        for p in ll.paths:
            groups.setdefault((_words(p.access), p.required), []).append(p.path)
        for (words, required), paths in groups.items():
            out.append(f"             {words}{'' if required else ' (where present)'}: {' '.join(paths)}")
        if not ll.paths:
            out.append("             file system: nothing allowed")
        if ll.derived and carved(ll.paths):
            out.append(f"             execute beneath {' '.join(carved(ll.paths))}: granted at launch per entry, "
                       f"never on the writable paths in it (W^X)")
    else:
        out.append("             file system: not handled")
    if ll.network:
        out.append(f"             tcp bind: {' '.join(map(str, ll.bind)) or 'none'}; "
                   f"tcp connect: {' '.join(map(str, ll.connect)) or 'none'}")
    out.append(f"             scope: {' '.join(ll.scope or ('abstract_unix_socket',))}")
    return out
