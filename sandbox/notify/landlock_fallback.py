"""Landlock denials recorded by the seccomp notify layer, where the kernel's own records are not
available to the run (kernel audit off, rootless, the launch server: landlock.denial_source).

1. The filter (notify_bpf: the run's own program, its ALLOW answers rewritten) additionally
   notifies the calls Landlock could deny, listed once in CALLS: opens that write, create or truncate (the flags are checked in the filter: a read-only
   open never leaves the kernel), creat, mkdir(at), mknod(at), unlink(at), rmdir, rename(at/at2),
   link(at), symlink(at), truncate, execve(at). Calls the plan itself denies keep its answer.
2. The supervisor (supervisor.Enforcing) hands such a call, which the plan allows, to Predictor:
   it reads the path arguments from the caller's memory (bounded to PATH_MAX; trusted only after
   the notification id is re-validated), resolves them in the caller's view (its root, cwd, or
   dirfd via /proc/PID/...; openat2 RESOLVE_IN_ROOT / RESOLVE_BENEATH, symlinks followed inside
   that root only, no magic links) and compares the (st_dev, st_ino) of the path and its ancestors
   with the rule paths' (Landlock's semantics: a rule is attached to an inode, the rights of any
   ancestor's rule are granted). The rule paths are landlock.rule_paths (what the ruleset was
   built from), opened in the caller's root the way build() opened them.
3. Predicted denied: the supervisor answers EACCES (Landlock's answer) and records a
   `landlock_denied` event (rate-limited, audit/throttle.py). Predicted allowed, or anything
   uncertain (a path through /proc, a ".." out of a dirfd, a vanished caller): the call continues
   and the kernel's Landlock decides. Each check here is a *necessary* condition of Landlock's
   (a right it requires), so a predicted denial is one Landlock would make too; a denial this
   prediction misses (e.g. `refer` across directories, an ELF interpreter) is still enforced by
   the kernel, only not recorded.
"""
from __future__ import annotations

import errno as _errno
import os
import stat

TYPE_CHECKING = False  # annotations only (postponed): importing typing is ~2 ms of the launch path
if TYPE_CHECKING:
    from typing import Callable, Optional

PATH_MAX = 4096
AT_FDCWD = -100
AT_REMOVEDIR = 0x200
AT_EMPTY_PATH = 0x1000
AT_SYMLINK_FOLLOW = 0x400
RENAME_EXCHANGE = 2
O_WRONLY, O_RDWR, O_CREAT, O_EXCL, O_TRUNC, O_NOFOLLOW = 0o1, 0o2, 0o100, 0o200, 0o1000, 0o400000
WRITE_FLAGS = O_WRONLY | O_RDWR | O_CREAT | O_TRUNC       # (O_TMPFILE includes O_WRONLY or O_RDWR)
MAX_DEPTH = 4096                                           # ancestors walked at most

PSEUDO_FS = frozenset({"proc", "sysfs", "cgroup", "cgroup2", "devpts", "mqueue", "bpf", "tracefs", "debugfs",
                       "securityfs", "configfs", "fusectl", "pstore", "efivarfs", "binfmt_misc", "nsfs",
                       "hugetlbfs", "autofs", "selinuxfs"})

# The notified calls, in one place: name -> (flags argument checked in the filter, or None: every
# call of the name is notified). Names this architecture lacks (open, creat, ... on arm64) are skipped.
CALLS = {
    "open": 1, "openat": 2, "openat2": None, "creat": None,
    "mkdir": None, "mkdirat": None, "mknod": None, "mknodat": None,
    "unlink": None, "unlinkat": None, "rmdir": None,
    "rename": None, "renameat": None, "renameat2": None, "link": None, "linkat": None,
    "symlink": None, "symlinkat": None, "truncate": None, "execve": None, "execveat": None,
}
NET_CALLS = {"bind": None, "connect": None}     # only where the rules handle TCP (landlock.network)
MAX_SOCKADDR = 128

# Their numbers (no libseccomp on a warm launch: the launch server and the plan cache never load it)
_NR = {
    "x86_64": {"open": 2, "openat": 257, "openat2": 437, "creat": 85, "mkdir": 83, "mkdirat": 258,
               "mknod": 133, "mknodat": 259, "unlink": 87, "unlinkat": 263, "rmdir": 84, "rename": 82,
               "renameat": 264, "renameat2": 316, "link": 86, "linkat": 265, "symlink": 88, "symlinkat": 266,
               "truncate": 76, "execve": 59, "execveat": 322, "bind": 49, "connect": 42},
    "aarch64": {"openat": 56, "openat2": 437, "mkdirat": 34, "mknodat": 33, "unlinkat": 35, "renameat": 38,
                "renameat2": 276, "linkat": 37, "symlinkat": 36, "truncate": 45, "execve": 221,
                "execveat": 281, "bind": 200, "connect": 203},
}


def numbers(filesystem: bool = True, network: bool = False) -> dict:
    """nr -> flags argument (or None) of the notified calls on this machine."""
    table = _NR.get(os.uname().machine, {})
    calls = {**(CALLS if filesystem else {}), **(NET_CALLS if network else {})}
    return {table[n]: i for n, i in calls.items() if n in table}


def name_of(nr: int, arch: int) -> Optional[str]:
    """The name of a notified call's number (the native architecture's; None for any other
    number): the supervisor names them without libseccomp (a cached launch never loads it)."""
    from .. import seccomp as sc
    if arch != sc.native_audit_arch():
        return None
    global _NAMES
    if _NAMES is None:
        _NAMES = {v: k for k, v in _NR.get(os.uname().machine, {}).items()}
    return _NAMES.get(nr)


_NAMES: Optional[dict] = None


def notify_bpf(bpf: bytes, filesystem: bool = True, network: bool = False) -> bytes:
    """The filter `bpf` (sandbox/seccomp.py's, for the run's plan) with the calls Landlock could
    deny notified wherever it allows them: each `RET ALLOW` of the program becomes a jump to a
    tail that answers USER_NOTIF for those numbers (an open only with a write, create or truncate
    flag: a read-only open never leaves the kernel) and ALLOW for the rest. Every other answer
    (the plan's denials, kills, notifications, logs) is the program's own; the supervisor keeps
    deciding with the plan itself: a notified call its plan allows is a Landlock question
    (supervisor.Enforcing). Same length plus the tail, so the program's own jumps stay valid."""
    import struct
    from .. import seccomp as sc
    nrs = numbers(filesystem, network)
    if not bpf or not nrs:
        return bpf
    ins = sc.decode_bpf(bpf)
    tail = len(ins)
    out = []
    for pc, (code, jt, jf, k) in enumerate(ins):
        if code == sc._RET_K and k == sc.RET_ALLOW:
            out.append((sc._JA, 0, 0, tail - pc - 1))
        else:
            out.append((code, jt, jf, k))
    # the tail: A = nr; per number: JEQ -> its block, else on; default ALLOW
    order = sorted(nrs)
    t = [(sc._LD_ABS, 0, 0, sc._OFF_NR)]
    checks = len(order)
    blocks: list = []                    # per number: its instructions
    for nr in order:
        i = nrs[nr]
        if i is None:
            blocks.append([(sc._RET_K, 0, 0, sc.RET_USER_NOTIF)])
        else:                            # low word of the flags & WRITE_FLAGS: 0 -> ALLOW, else NOTIFY
            blocks.append([(sc._LD_ABS, 0, 0, sc._OFF_ARGS + 8 * i), (sc._AND_K, 0, 0, WRITE_FLAGS),
                           (sc._JEQ, 0, 1, 0), (sc._RET_K, 0, 0, sc.RET_ALLOW),
                           (sc._RET_K, 0, 0, sc.RET_USER_NOTIF)])
    # layout: [LD nr] [JEQ nr_0 .. nr_n-1] [RET ALLOW] [block_0] ... ; a JEQ's jt reaches its block
    start = [checks]                     # block j is checks + (blocks before it) - j past JEQ j's next
    for bl in blocks[:-1]:
        start.append(start[-1] + len(bl))
    for j, nr in enumerate(order):
        jt = start[j] - j
        if jt > 255:
            return bpf                   # (never: a few dozen instructions) - unchanged, no fallback
        t.append((sc._JEQ, jt, 0, nr))
    t.append((sc._RET_K, 0, 0, sc.RET_ALLOW))
    for bl in blocks:
        t += bl
    prog = out + t
    if len(prog) > sc.MAX_INSNS:
        return bpf
    return b"".join(struct.pack("<HBBI", *x) for x in prog)


def notify_filter(filters, seccomp_plan, ll):
    """The run's seccomp.Filters with the Landlock fallback's calls notified (notify_bpf), handed
    to the supervisor's listener (mode "user_notif"); the same Filters when that cannot be: no
    filter, the kernel's audit records as the mode (no user notification), or a plan that denies
    the listener's hand-over (seccomp.HANDOVER_CALLS). Cached per filter (a launch server asks at
    every launch)."""
    from .. import seccomp as sc
    if not filters.program or filters.mode not in (None, "user_notif"):
        return filters
    if filters.mode is None and not all(sc.plan_allows(seccomp_plan, c) for c in sc.HANDOVER_CALLS):
        return filters
    key = (filters.program, bool(ll.filesystem), bool(ll.network))
    prog = _CACHE.get(key)
    if prog is None:
        if len(_CACHE) > 64:
            _CACHE.clear()
        prog = _CACHE[key] = notify_bpf(filters.program, bool(ll.filesystem), bool(ll.network))
    if prog == filters.program:
        return filters
    return sc.Filters(prog, "user_notif")


_CACHE: dict = {}


class Uncertain(Exception):
    """The prediction cannot be made (the kernel's Landlock decides, unrecorded)."""


def _fs_rights():
    from .. import landlock
    return landlock.FS_BIT


def _need(*names) -> int:
    bits = _fs_rights()
    return sum(bits[n] for n in names)


_MAKE = {stat.S_IFREG: "make_reg", stat.S_IFDIR: "make_dir", stat.S_IFCHR: "make_char",
         stat.S_IFBLK: "make_block", stat.S_IFIFO: "make_fifo", stat.S_IFSOCK: "make_sock",
         stat.S_IFLNK: "make_sym"}


class Predictor:
    """Landlock's answer to a notified call, predicted from the run's rule set.

    landlock_plan: plan.landlock as the ruleset was built from it (the namespace-free backend's
    confined_plan); abi: the kernel's Landlock ABI (the handled rights)."""

    def __init__(self, landlock_plan, abi: Optional[int] = None):
        from .. import _sys, landlock
        self.ll = landlock_plan
        self.abi = _sys.landlock_abi() if abi is None else abi
        self.handled = landlock.handled_fs(self.abi) if landlock_plan.filesystem else 0
        self._root = -1                      # the caller's root, during one prediction
        self._fstypes: dict = {}             # st_dev -> file system type (_pseudo)
        self._tables: dict = {}              # (dev, ino) of the caller's root -> {(dev, ino): mask}
        self.stats = {"predicted_denied": 0, "continued": 0, "uncertain": 0}

    # --- the rule table, per root ----------------------------------------------------------------
    def _table(self, pid: int) -> dict:
        from .. import _sys, landlock
        root = self._root
        st = os.fstat(root)
        key = (st.st_dev, st.st_ino)
        table = self._tables.get(key)
        if table is not None:
            return table
        table = {}

        class _Plan:
            landlock = self.ll
        def listdir(path: str):                # (carve_execute's listing, inside the caller's root)
            try:
                fd = _sys.openat2(root, path.lstrip("/") or ".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC,
                                  resolve=_sys.RESOLVE_IN_ROOT | _sys.RESOLVE_NO_MAGICLINKS)
            except OSError:
                return None
            try:
                return landlock._listdir(fd)
            finally:
                os.close(fd)
        for rule in landlock.rule_paths(_Plan, self.handled, listdir=listdir):
            try:
                fd = _sys.openat2(root, rule.path.lstrip("/") or ".", os.O_PATH | os.O_CLOEXEC,
                                  resolve=_sys.RESOLVE_IN_ROOT | _sys.RESOLVE_NO_MAGICLINKS)
            except OSError:
                continue                 # build() skipped it too (or refused the launch)
            try:
                rst = os.fstat(fd)
            finally:
                os.close(fd)
            allowed = landlock.mask(rule.access) & self.handled
            if not stat.S_ISDIR(rst.st_mode):
                allowed &= landlock.FILE_MASK
            k = (rst.st_dev, rst.st_ino)
            table[k] = table.get(k, 0) | allowed
        if len(self._tables) >= 8:
            self._tables.clear()
        self._tables[key] = table
        return table

    # --- resolving in the caller's view ----------------------------------------------------------
    def _resolve(self, pid: int, dirfd: int, path: str, follow: bool) -> tuple:
        """(an O_PATH descriptor of the path's directory, its last name, lstat of the last name or
        None when it does not exist) as the caller `pid` resolves `path` from `dirfd`: symbolic
        links followed inside the caller's root (the last one when `follow`), never out of it.
        FileNotFoundError: the directory does not exist; Uncertain: not predicted."""
        from .. import _sys
        if not path:
            raise Uncertain("empty path")
        if path.startswith("/"):
            base = os.dup(self._root)
            rel, resolve = self._proc_self(pid, path.lstrip("/")), _sys.RESOLVE_IN_ROOT
        else:
            where = "cwd" if dirfd == AT_FDCWD else f"fd/{dirfd}"
            try:
                base = os.open(f"/proc/{pid}/{where}", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            except OSError:
                raise Uncertain(f"dirfd {where}") from None
            rel, resolve = path, _sys.RESOLVE_BENEATH         # a ".." above it: uncertain
        try:
            for _ in range(40):                               # (the kernel's ELOOP bound)
                head, _sep, last = rel.rstrip("/").rpartition("/")
                if last in ("", ".", ".."):
                    raise Uncertain("no last name")
                try:
                    pfd = _sys.openat2(base, head or ".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC,
                                       resolve=resolve | _sys.RESOLVE_NO_MAGICLINKS)
                except OSError as e:
                    if e.errno == _errno.ENOENT:
                        raise FileNotFoundError(path) from None
                    raise Uncertain(os.strerror(e.errno)) from None
                try:
                    st = os.stat(last, dir_fd=pfd, follow_symlinks=False)
                except FileNotFoundError:
                    st = None
                except OSError:
                    os.close(pfd)
                    raise Uncertain("stat") from None
                if st is None or not follow or not stat.S_ISLNK(st.st_mode):
                    return pfd, last, st
                try:
                    target = os.readlink(last, dir_fd=pfd)
                except OSError:
                    os.close(pfd)
                    raise Uncertain("readlink") from None
                os.close(base)
                if target.startswith("/"):                    # from the caller's root again
                    os.close(pfd)
                    base = os.dup(self._root)
                    rel, resolve = self._proc_self(pid, target.lstrip("/")), _sys.RESOLVE_IN_ROOT
                else:                                         # from the link's directory
                    base, rel, resolve = pfd, target, _sys.RESOLVE_BENEATH
            raise Uncertain("too many links")
        finally:
            os.close(base)

    @staticmethod
    def _proc_self(pid: int, rel: str) -> str:
        """proc/self and proc/thread-self as the caller reads them (its ids in its own pid
        namespace, the one its /proc shows): /proc/self is the reader's, not this supervisor's."""
        head, sep, rest = rel.partition("/")
        if head != "proc" or not rest.startswith(("self", "thread-self")):
            return rel
        link, sep2, tail = rest.partition("/")
        if link not in ("self", "thread-self"):
            return rel
        ids = {}
        try:
            with open(f"/proc/{pid}/status", "rb") as f:
                for line in f:
                    if line.startswith((b"NStgid:", b"NSpid:")):
                        ids[line.split(b":")[0]] = int(line.split()[-1])
        except (OSError, ValueError):
            raise Uncertain("caller's ids") from None
        if b"NStgid" not in ids or b"NSpid" not in ids:
            raise Uncertain("caller's ids")
        new = f"proc/{ids[b'NStgid']}" + (f"/task/{ids[b'NSpid']}" if link == "thread-self" else "")
        return new + sep2 + tail

    def _granted(self, table: dict, fd: int) -> int:
        """The rights the rules of directory `fd` and its ancestors grant (closes fd)."""
        granted, seen = 0, None
        try:
            for _ in range(MAX_DEPTH):
                st = os.fstat(fd)
                k = (st.st_dev, st.st_ino)
                if k == seen:
                    return granted
                granted |= table.get(k, 0)
                up = os.open("..", os.O_PATH | os.O_CLOEXEC, dir_fd=fd)
                os.close(fd)
                fd, seen = up, k
        finally:
            os.close(fd)
        raise Uncertain("too deep")

    def _check(self, table, pid, dirfd, path, need: int, *, follow=None, parent=False) -> Optional[str]:
        """The rights in `need` missing on the path (parent: on its directory, for what is made or
        removed in it); None when the rules grant them all, or when the kernel answers before
        Landlock is asked (a read-only mount: EROFS; a noexec one: EACCES of its own).
        FileNotFoundError: no such path."""
        if follow is None:                 # (what is made or removed: the name itself; else its target)
            follow = not parent
        pfd, last, st = self._resolve(pid, dirfd, path, follow)
        return self._verdict(table, pid, pfd, last, st, need, parent)

    def _verdict(self, table, pid, pfd, last, st, need: int, parent: bool) -> Optional[str]:
        """_check's answer for a resolved path (closes pfd)."""
        granted = 0
        try:
            if parent:
                vfs = os.fstatvfs(pfd)
            else:
                if st is None:
                    raise FileNotFoundError(path)
                ofd = os.open(last, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=pfd)
                try:
                    ost, vfs = os.fstat(ofd), os.fstatvfs(ofd)
                finally:
                    os.close(ofd)
                granted = table.get((ost.st_dev, ost.st_ino), 0)
        except BaseException:
            os.close(pfd)
            raise
        if need & ~_need("execute") and vfs.f_flag & os.ST_RDONLY or need & _need("execute") and \
                vfs.f_flag & os.ST_NOEXEC or parent and self._pseudo(pid, os.fstat(pfd).st_dev):
            os.close(pfd)
            return None
        missing = need & self.handled & ~(granted | self._granted(table, pfd))
        if not missing:
            return None
        return ",".join(n for n, b in _fs_rights().items() if missing & b)

    def _pseudo(self, pid: int, dev: int) -> bool:
        """Whether device `dev` is a kernel pseudo file system (proc, sysfs, ...), where a name is
        made or removed by the file system's own rules (a missing name in /proc: ENOENT before
        Landlock is asked): not predicted. From the caller's /proc/PID/mountinfo, cached."""
        fstype = self._fstypes.get(dev)
        if fstype is None:
            want = f"{os.major(dev)}:{os.minor(dev)}"
            fstype = "?"
            try:
                with open(f"/proc/{pid}/mountinfo", "rb") as f:
                    for line in f.read(1 << 20).decode(errors="replace").splitlines():
                        left, _, right = line.partition(" - ")
                        fields = left.split()
                        if len(fields) > 2 and fields[2] == want and right:
                            fstype = right.split()[0]
                            break
            except OSError:
                pass
            if len(self._fstypes) >= 256:
                self._fstypes.clear()
            self._fstypes[dev] = fstype
        return fstype in PSEUDO_FS or fstype == "?"

    def _lstat_in(self, pid, dirfd, path, follow=False) -> Optional[os.stat_result]:
        try:
            pfd, _last, st = self._resolve(pid, dirfd, path, follow)
        except FileNotFoundError:
            return None
        os.close(pfd)
        return st

    # --- the calls -------------------------------------------------------------------------------
    def predict(self, pid: int, name: str, args, read: Callable[[int], Optional[str]],
                read_u64: Callable[[int], Optional[int]], read_bytes=None) -> Optional[tuple]:
        """(path, access) Landlock denies, or None (allowed or uncertain: the call continues).
        read(addr): a string from the caller's memory (bounded); read_u64(addr): a word;
        read_bytes(addr, n): n bytes. For bind/connect the "path" is "tcp port N"."""
        if name in NET_CALLS:
            return self._net(pid, name, args, read_bytes) if self.ll.network and read_bytes else None
        if not self.handled:
            return None
        try:
            self._root = os.open(f"/proc/{pid}/root", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            self.stats["uncertain"] += 1
            return None
        try:
            return self._predict(pid, name, args, read, read_u64)
        except (Uncertain, OSError):
            self.stats["uncertain"] += 1
            return None
        finally:
            os.close(self._root)
            self._root = -1

    def _predict(self, pid, name, args, read, read_u64):
        def fd(i):
            v = args[i] & 0xFFFFFFFF
            return AT_FDCWD if v == (AT_FDCWD & 0xFFFFFFFF) else v if v < 0x80000000 else None

        def s(i):
            v = read(args[i])
            if v is None:
                raise Uncertain("unreadable path")
            return v
        table = self._table(pid)
        if name in ("open", "openat", "openat2", "creat"):
            if name == "open":
                d, p, flags = AT_FDCWD, s(0), args[1]
            elif name == "openat":
                d, p, flags = fd(0), s(1), args[2]
            elif name == "openat2":
                d, p, flags = fd(0), s(1), read_u64(args[2])
            else:
                d, p, flags = AT_FDCWD, s(0), O_WRONLY | O_CREAT | O_TRUNC
            if d is None or flags is None or not flags & WRITE_FLAGS:
                return None
            try:
                pfd, last, st = self._resolve(pid, d, p, not flags & O_NOFOLLOW)
            except FileNotFoundError:
                return None                                   # no such directory: the kernel's ENOENT
            if st is None:
                if not flags & O_CREAT:
                    os.close(pfd)
                    return None                               # ENOENT: the kernel's answer
                need, parent = _need("make_reg"), True        # (made where a dangling link points)
            elif stat.S_ISREG(st.st_mode) and not (flags & O_CREAT and flags & O_EXCL):
                need = (_need("write_file") if flags & (O_WRONLY | O_RDWR) else 0) | \
                    (_need("truncate") if flags & O_TRUNC and self.abi >= 3 else 0)
                parent = False
            else:                                             # devices, fifos, dirs, a link itself, EEXIST
                os.close(pfd)
                return None
            miss = self._verdict(table, pid, pfd, last, st, need, parent)
            return (p, miss) if miss else None
        if name in ("mkdir", "mkdirat"):
            d, p = (AT_FDCWD, s(0)) if name == "mkdir" else (fd(0), s(1))
            return self._make(table, pid, d, p, "make_dir")
        if name in ("mknod", "mknodat"):
            d, p, mode = (AT_FDCWD, s(0), args[1]) if name == "mknod" else (fd(0), s(1), args[2])
            right = _MAKE.get(stat.S_IFMT(mode & 0xFFFFFFFF) or stat.S_IFREG)
            return self._make(table, pid, d, p, right) if right else None
        if name in ("symlink", "symlinkat"):
            d, p = (AT_FDCWD, s(1)) if name == "symlink" else (fd(1), s(2))
            return self._make(table, pid, d, p, "make_sym")
        if name in ("unlink", "unlinkat", "rmdir"):
            if name == "rmdir":
                d, p, right = AT_FDCWD, s(0), "remove_dir"
            else:
                d, p = (AT_FDCWD, s(0)) if name == "unlink" else (fd(0), s(1))
                right = "remove_dir" if name == "unlinkat" and args[2] & AT_REMOVEDIR else "remove_file"
            if d is None or self._lstat_in(pid, d, p) is None:
                return None                                    # ENOENT is the kernel's answer
            miss = self._check(table, pid, d, p, _need(right), parent=True)
            return (p, miss) if miss else None
        if name in ("rename", "renameat", "renameat2", "link", "linkat"):
            if name in ("rename", "link"):
                od, op, nd, np_ = AT_FDCWD, s(0), AT_FDCWD, s(1)
            else:
                od, op, nd, np_ = fd(0), s(1), fd(2), s(3)
            if od is None or nd is None or name == "renameat2" and args[4] & RENAME_EXCHANGE:
                return None
            if name == "linkat" and args[4] & (AT_EMPTY_PATH | AT_SYMLINK_FOLLOW):
                return None
            ost = self._lstat_in(pid, od, op)
            if ost is None:
                return None
            make = _MAKE.get(stat.S_IFMT(ost.st_mode))
            if make is None:
                return None
            if name.startswith("rename"):
                remove = "remove_dir" if stat.S_ISDIR(ost.st_mode) else "remove_file"
                miss = self._check(table, pid, od, op, _need(remove), parent=True)
                if miss:
                    return op, miss
            return self._make(table, pid, nd, np_, make)
        if name == "truncate":
            p = s(0)
            if self.abi < 3:
                return None
            try:
                miss = self._check(table, pid, AT_FDCWD, p, _need("truncate"))
            except FileNotFoundError:
                return None
            return (p, miss) if miss else None
        if name in ("execve", "execveat"):
            d, p = (AT_FDCWD, s(0)) if name == "execve" else (fd(0), s(1))
            if d is None or name == "execveat" and args[4] & AT_EMPTY_PATH:
                return None
            st = self._lstat_in(pid, d, p, follow=True)
            if st is None or not stat.S_ISREG(st.st_mode):
                return None
            miss = self._check(table, pid, d, p, _need("execute"))
            return (p, miss) if miss else None
        return None

    def _net(self, pid: int, name: str, args, read_bytes) -> Optional[tuple]:
        """bind/connect of a TCP socket to a port no rule lists (Landlock's TCP rights, ABI 4);
        None for any other socket, address family or an unreadable address."""
        import socket
        import struct
        from .. import _sys
        n = args[2] & 0xFFFFFFFF
        if not 4 <= n <= MAX_SOCKADDR:
            return None
        try:
            raw = read_bytes(args[1], min(n, 32))
            family, port = struct.unpack_from("=H", raw)[0], struct.unpack_from("!H", raw, 2)[0]
        except (OSError, struct.error, TypeError):
            return None
        if family not in (socket.AF_INET, socket.AF_INET6) or name == "bind" and port == 0:
            return None                    # (AF_UNSPEC disconnects; port 0: an ephemeral one)
        try:                               # a TCP socket? (Landlock handles no other protocol)
            pfd = _sys.pidfd_open(pid)
            try:
                sfd = _sys.pidfd_getfd(pfd, args[0] & 0xFFFFFFFF)
            finally:
                os.close(pfd)
            try:
                s = socket.socket(fileno=sfd)
                try:
                    kind = s.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE)
                    proto = s.getsockopt(socket.SOL_SOCKET, socket.SO_PROTOCOL)
                    fam = s.getsockopt(socket.SOL_SOCKET, socket.SO_DOMAIN)
                finally:
                    s.detach()
            finally:
                os.close(sfd)
        except OSError:
            return None
        if kind != socket.SOCK_STREAM or proto != socket.IPPROTO_TCP or fam not in (socket.AF_INET, socket.AF_INET6):
            return None
        allowed = self.ll.bind if name == "bind" else self.ll.connect
        if port in allowed:
            return None
        return f"tcp port {port}", "bind_tcp" if name == "bind" else "connect_tcp"

    def _make(self, table, pid, d, p, right):
        if d is None:
            return None
        if self._lstat_in(pid, d, p) is not None:
            return None                                        # EEXIST is the kernel's answer
        try:
            miss = self._check(table, pid, d, p, _need(right), parent=True)
        except FileNotFoundError:
            return None
        return (p, miss) if miss else None


def read_memory(tid: int):
    """(read(addr) -> str, read_u64(addr) -> int, close()) over the caller's memory."""
    from .caller import _pread, _VmRead, read_string, read_u64
    try:
        memfd = os.open(f"/proc/{tid}/mem", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:               # rootless, the sandbox's ids subordinate ones: the file is theirs
        memfd = _VmRead(tid)

    def close():
        if isinstance(memfd, int):
            os.close(memfd)

    def read_bytes(addr: int, n: int) -> bytes:
        return _pread(memfd, n, addr) if addr else b""
    return (lambda a: read_string(memfd, a, PATH_MAX), lambda a: read_u64(memfd, a), close, read_bytes)
