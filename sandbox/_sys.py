"""The one place where pysandbox calls the kernel through ctypes.

Only syscalls that Python 3.11's standard library lacks live here: unshare, setns,
clone (fork with namespace flags), mount, umount2, pivot_root, mount_setattr,
close_range flags, seccomp, pidfd_open/pidfd_send_signal, Landlock, keyctl (session keyrings).
Everything raises OSError with the errno and a short context, like the os module does.
x86_64 syscall numbers are used where glibc has no wrapper.
"""
from __future__ import annotations

import ctypes
import errno
import os

_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long

_MACHINE = os.uname().machine
if _MACHINE == "x86_64":
    NR = {"pivot_root": 155, "seccomp": 317, "mount_setattr": 442, "close_range": 436,
          "pidfd_open": 434, "pidfd_send_signal": 424, "clone": 56, "open_tree": 428,
          "move_mount": 429, "rt_sigaction": 13, "landlock_create_ruleset": 444,
          "landlock_restrict_self": 446}
elif _MACHINE == "aarch64":
    NR = {"pivot_root": 41, "seccomp": 277, "mount_setattr": 442, "close_range": 436,
          "pidfd_open": 434, "pidfd_send_signal": 424, "clone": 220, "open_tree": 428,
          "move_mount": 429, "rt_sigaction": 134, "landlock_create_ruleset": 444,
          "landlock_restrict_self": 446}
else:  # pragma: no cover - other architectures are not supported yet
    raise ImportError(f"pysandbox: unsupported architecture {_MACHINE}")

# clone/unshare flags
CLONE_NEWTIME = 0x00000080
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
SIGCHLD = 17

# mount flags
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_BIND = 4096
MS_MOVE = 8192
MS_REC = 16384
MS_SILENT = 32768
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
MS_STRICTATIME = 1 << 24
MNT_DETACH = 2

# mount_setattr
AT_RECURSIVE = 0x8000
MOUNT_ATTR_RDONLY = 0x1
MOUNT_ATTR_NOSUID = 0x2
MOUNT_ATTR_NODEV = 0x4
MOUNT_ATTR_NOEXEC = 0x8

# seccomp
SECCOMP_SET_MODE_FILTER = 1
SECCOMP_FILTER_FLAG_TSYNC = 1
SECCOMP_FILTER_FLAG_LOG = 2
SECCOMP_FILTER_FLAG_NEW_LISTENER = 1 << 3

CLOSE_RANGE_CLOEXEC = 1 << 2


def _check(res: int, what: str) -> int:
    if res < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return res


def _b(path):
    if path is None:
        return None
    return os.fsencode(path)


def unshare(flags: int) -> None:
    _check(_libc.unshare(ctypes.c_int(flags)), "unshare")


def setns(fd: int, nstype: int = 0) -> None:
    _check(_libc.setns(ctypes.c_int(fd), ctypes.c_int(nstype)), "setns")


def mount(source, target, fstype, flags: int = 0, data: str | None = None) -> None:
    res = _libc.mount(_b(source), _b(target), _b(fstype), ctypes.c_ulong(flags),
                      _b(data) if data is not None else None)
    if res < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {source or fstype} on {target}: {os.strerror(err)}")


def umount2(target, flags: int = 0) -> None:
    res = _libc.umount2(_b(target), ctypes.c_int(flags))
    if res < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"umount {target}: {os.strerror(err)}")


def pivot_root(new_root, put_old) -> None:
    _check(_syscall(ctypes.c_long(NR["pivot_root"]), _b(new_root), _b(put_old)), "pivot_root")


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


def mount_setattr(path, attr_set: int, attr_clr: int = 0, recursive: bool = True,
                  dirfd: int = -100) -> None:
    """Set mount attributes (read-only, nosuid, ...) on a mount and, with recursive, all below it.
    path: a path, or a descriptor (the mount it refers to: a detached tree, a mount's root)."""
    attr = _MountAttr(attr_set, attr_clr, 0, 0)
    flags = AT_RECURSIVE if recursive else 0
    if isinstance(path, int):
        dirfd, path, flags = path, "", flags | AT_EMPTY_PATH
    res = _syscall(ctypes.c_long(NR["mount_setattr"]), ctypes.c_int(dirfd), _b(path),
                   ctypes.c_uint(flags), ctypes.byref(attr), ctypes.c_size_t(ctypes.sizeof(attr)))
    if res < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount_setattr {path}: {os.strerror(err)}")


def close_all_but(keep) -> None:
    """Close every descriptor above 2 except those in keep (None entries ignored; close_range(2)
    under os.closerange). Only in processes that never return to the code that owned them (PID 1,
    the program, a command entering a sandbox)."""
    low = 3
    for fd in sorted(k for k in keep if k is not None and k >= 3):
        if fd > low:
            os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, 0x7FFFFFFF)


class _KSigaction(ctypes.Structure):          # the kernel's struct sigaction (x86_64, aarch64)
    _fields_ = [("handler", ctypes.c_void_p), ("flags", ctypes.c_ulong), ("restorer", ctypes.c_void_p),
                ("mask", ctypes.c_uint64)]


def default_signals() -> None:
    """Every ignored signal back to its default disposition, just before a sandboxed program's
    execve (ignored ones stay ignored across it): the Python interpreter ignores SIGPIPE and
    SIGXFSZ, the launch server SIGINT, and a caller may have ignored any — even the C library's
    own 32 and 33, which Python's signal module cannot reach (hence rt_sigaction itself). A
    program must not inherit that (`yes | head` would not end, RLIMIT_FSIZE would not stop it).
    pysandbox-init's spawn mode does the same in C."""
    old, dfl = _KSigaction(), _KSigaction()
    nr = ctypes.c_long(NR["rt_sigaction"])
    for sig in range(1, 65):
        if sig in (9, 19):                     # SIGKILL, SIGSTOP
            continue
        if _syscall(nr, ctypes.c_int(sig), None, ctypes.byref(old), ctypes.c_size_t(8)) == 0 and old.handler == 1:
            _syscall(nr, ctypes.c_int(sig), ctypes.byref(dfl), None, ctypes.c_size_t(8))


def close_range_cloexec(first: int = 3) -> None:
    """Mark every descriptor >= first close-on-exec (CVE-2024-21626 class: no fd leaks into the sandbox)."""
    _check(_syscall(ctypes.c_long(NR["close_range"]), ctypes.c_uint(first), ctypes.c_uint(0xFFFFFFFF),
                    ctypes.c_uint(CLOSE_RANGE_CLOEXEC)), "close_range")


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def seccomp_load(bpf: bytes, flags: int = 0) -> int:
    """Load a classic-BPF seccomp program (as exported by libseccomp). Returns the
    listener fd with SECCOMP_FILTER_FLAG_NEW_LISTENER, else 0."""
    if len(bpf) % 8:
        raise ValueError("seccomp program length is not a multiple of 8")
    buf = ctypes.create_string_buffer(bpf, len(bpf))
    prog = _SockFprog(len(bpf) // 8, ctypes.cast(buf, ctypes.c_void_p))
    return _check(_syscall(ctypes.c_long(NR["seccomp"]), ctypes.c_uint(SECCOMP_SET_MODE_FILTER),
                           ctypes.c_uint(flags), ctypes.byref(prog)), "seccomp")


def pidfd_open(pid: int) -> int:
    return _check(_syscall(ctypes.c_long(NR["pidfd_open"]), ctypes.c_int(pid), ctypes.c_uint(0)), "pidfd_open")


def pidfd_send_signal(pidfd: int, sig: int) -> None:
    _check(_syscall(ctypes.c_long(NR["pidfd_send_signal"]), ctypes.c_int(pidfd), ctypes.c_int(sig),
                    None, ctypes.c_uint(0)), "pidfd_send_signal")


NR_PIDFD_GETFD = 438                     # (the same number on every architecture)


def pidfd_getfd(pidfd: int, target_fd: int) -> int:
    """A duplicate of another process's descriptor (the caller must be allowed to ptrace it)."""
    return _check(_syscall(ctypes.c_long(NR_PIDFD_GETFD), ctypes.c_int(pidfd), ctypes.c_int(target_fd),
                           ctypes.c_uint(0)), "pidfd_getfd")


# --- fork with namespace flags --------------------------------------------------
# os.fork() cannot pass CLONE_NEW* flags. We call the raw clone syscall with a NULL
# stack (fork semantics) and run CPython's own before/after-fork hooks around it,
# exactly as os.fork() does, so the interpreter state in the child stays sound.
_pyapi = ctypes.pythonapi
_pyapi.PyOS_BeforeFork.restype = None
_pyapi.PyOS_AfterFork_Parent.restype = None
_pyapi.PyOS_AfterFork_Child.restype = None
# clone through a PyDLL handle: the GIL stays held across the call. (A CDLL call releases it; with
# other threads running, the child would then wait forever for a GIL owned by a thread it lacks.)
_syscall_gil = ctypes.PyDLL(None, use_errno=True).syscall
_syscall_gil.restype = ctypes.c_long


def _forked(syscall, *args) -> int:
    """A fork-like raw syscall with CPython's own before/after-fork hooks around it (as os.fork)."""
    _pyapi.PyOS_BeforeFork()
    pid = _syscall_gil(*args)
    if pid == 0:
        _pyapi.PyOS_AfterFork_Child()
        return 0
    err = ctypes.get_errno()
    _pyapi.PyOS_AfterFork_Parent()
    if pid < 0:
        raise OSError(err, f"{syscall}: {os.strerror(err)}")
    return pid


def clone_fork(flags: int) -> int:
    """fork() into new namespaces. Returns 0 in the child, the child's pid in the parent.
    (A NULL stack means fork semantics; the argument order that differs between x86_64 and
    aarch64 only concerns the tid/tls arguments, all NULL here.)"""
    return _forked("clone", ctypes.c_long(NR["clone"]), ctypes.c_ulong(flags | SIGCHLD), None, None, None, None)


# clone3 (same number on x86_64 and aarch64) for CLONE_INTO_CGROUP: the child starts in a cgroup2
# directory given by descriptor — no migration afterwards, so none of the cgroup_threadgroup_rwsem
# write lock (an RCU grace period) that writing a pid to cgroup.procs costs.
NR_CLONE3 = 435
CLONE_INTO_CGROUP = 0x200000000


class _CloneArgs(ctypes.Structure):
    _fields_ = [(name, ctypes.c_uint64) for name in
                ("flags", "pidfd", "child_tid", "parent_tid", "exit_signal", "stack", "stack_size", "tls",
                 "set_tid", "set_tid_size", "cgroup")]


def clone3_fork(flags: int, cgroup_fd: int | None, pid: int | None = None) -> int:
    """fork() (with namespace flags) straight into the cgroup2 directory `cgroup_fd` (None: where the
    caller is), as process `pid` of the caller's pid namespace when given (set_tid: needs
    CAP_SYS_ADMIN over that namespace; EEXIST when taken). Like clone_fork."""
    args = _CloneArgs(flags=flags | (CLONE_INTO_CGROUP if cgroup_fd is not None else 0), exit_signal=SIGCHLD,
                      cgroup=cgroup_fd if cgroup_fd is not None else 0)
    tid = None
    if pid is not None:
        tid = (ctypes.c_int * 1)(pid)
        args.set_tid = ctypes.addressof(tid)
        args.set_tid_size = 1
    return _forked("clone3", ctypes.c_long(NR_CLONE3), ctypes.byref(args), ctypes.c_size_t(ctypes.sizeof(args)))


# --- prctl options python-prctl lacks -------------------------------------------
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_RAISE = 2
PR_CAP_AMBIENT_CLEAR_ALL = 4
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]


def ambient_clear() -> None:
    _check(_libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0), "prctl(PR_CAP_AMBIENT_CLEAR_ALL)")


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


def cap_permitted() -> int:
    """The calling thread's permitted capabilities as one mask (capget, version 3)."""
    hdr, data = _CapHeader(0x20080522, 0), (ctypes.c_uint32 * 6)()     # 2 x (effective, permitted, inheritable)
    _check(_libc.capget(ctypes.byref(hdr), data), "capget")
    return data[1] | data[4] << 32


def capget() -> tuple[int, int, int]:
    """The calling thread's (permitted, effective, inheritable) sets as 64-bit masks."""
    hdr, data = _CapHeader(0x20080522, 0), (ctypes.c_uint32 * 6)()
    _check(_libc.capget(ctypes.byref(hdr), data), "capget")
    return (data[1] | data[4] << 32, data[0] | data[3] << 32, data[2] | data[5] << 32)


def ambient_raise(cap: int) -> None:
    _check(_libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, cap, 0, 0), "prctl(PR_CAP_AMBIENT_RAISE)")


# --- capability sets, raw (python-prctl knows capabilities only up to 37; Linux 6.x has 40) ---
PR_CAPBSET_DROP = 24
PR_SET_KEEPCAPS = 8
_LAST_CAP: list = []


def cap_last_cap() -> int:
    """The kernel's last capability (/proc/sys/kernel/cap_last_cap; read once per process, before
    any pivot_root: the launcher calls it on import of sandbox.capabilities)."""
    if not _LAST_CAP:
        try:
            with open("/proc/sys/kernel/cap_last_cap", "rb") as f:
                _LAST_CAP.append(int(f.read(16)))
        except (OSError, ValueError):
            _LAST_CAP.append(40)
    return _LAST_CAP[0]


def capbset_drop(cap: int) -> None:
    _check(_libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0), "capbset_drop")


def set_keepcaps(on: bool) -> None:
    _check(_libc.prctl(PR_SET_KEEPCAPS, 1 if on else 0, 0, 0, 0), "prctl(PR_SET_KEEPCAPS)")


def capset(permitted: int, effective: int, inheritable: int) -> None:
    """The calling thread's permitted/effective/inheritable sets, as 64-bit masks (capset, v3)."""
    hdr, data = _CapHeader(0x20080522, 0), (ctypes.c_uint32 * 6)()
    for i in range(2):
        data[3 * i] = effective >> (32 * i) & 0xFFFFFFFF
        data[3 * i + 1] = permitted >> (32 * i) & 0xFFFFFFFF
        data[3 * i + 2] = inheritable >> (32 * i) & 0xFFFFFFFF
    _check(_libc.capset(ctypes.byref(hdr), data), "capset")


# --- openat2 (RESOLVE_IN_ROOT: resolve a path as if dirfd were "/", symlinks included) -----
NR_OPENAT2 = 437                    # same number on x86_64 and aarch64
O_PATH = 0o10000000
RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
RESOLVE_IN_ROOT = 0x10


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


OPENAT2_TRIES = 256


def openat2(dirfd: int, path, flags: int, mode: int = 0, resolve: int = 0) -> int:
    """openat2(2): returns an fd; OSError(errno) on failure (EXDEV/ELOOP for resolve violations).

    With RESOLVE_IN_ROOT or RESOLVE_BENEATH the kernel fails a walk through ".." with EAGAIN when a
    rename or a mount happened *anywhere on the machine* meanwhile (it cannot then prove ".." stayed
    inside the root; openat2(2) says: retry). Another sandbox starting is enough, so the call is
    retried, at most OPENAT2_TRIES times; past that the EAGAIN is an error like any other."""
    how = _OpenHow(flags | os.O_CLOEXEC, mode, resolve)
    bpath, size = _b(path), ctypes.c_size_t(ctypes.sizeof(how))
    for _ in range(OPENAT2_TRIES):
        res = _syscall(ctypes.c_long(NR_OPENAT2), ctypes.c_int(dirfd), bpath, ctypes.byref(how), size)
        if res >= 0:
            return res
        err = ctypes.get_errno()
        if err != errno.EAGAIN or not resolve & (RESOLVE_IN_ROOT | RESOLVE_BENEATH):
            break
    if err == errno.EAGAIN:
        raise OSError(err, f"openat2 {path}: renames or mounts elsewhere on the machine kept "
                           f"interrupting the walk ({OPENAT2_TRIES} tries)")
    raise OSError(err, f"openat2 {path}: {os.strerror(err)}")


# --- new mount API (detached mount trees) ----------------------------------------
OPEN_TREE_CLONE = 1
OPEN_TREE_CLOEXEC = os.O_CLOEXEC
AT_EMPTY_PATH = 0x1000
MOVE_MOUNT_F_EMPTY_PATH = 0x4
MOVE_MOUNT_T_EMPTY_PATH = 0x40
# fsopen/fsconfig/fsmount: same numbers on x86_64 and aarch64
NR_FSOPEN, NR_FSCONFIG, NR_FSMOUNT = 430, 431, 432
FSOPEN_CLOEXEC = 1
FSCONFIG_SET_FLAG, FSCONFIG_SET_STRING, FSCONFIG_CMD_CREATE = 0, 1, 6
FSMOUNT_CLOEXEC = 1


def open_tree(path, recursive: bool = True) -> int:
    """A detached clone of the mount tree at path, or at what the descriptor `path` refers to
    (attach it later with move_mount)."""
    flags = OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | (AT_RECURSIVE if recursive else 0)
    dirfd = -100
    if isinstance(path, int):
        dirfd, path, flags = path, "", flags | AT_EMPTY_PATH
    res = _syscall(ctypes.c_long(NR["open_tree"]), ctypes.c_int(dirfd), _b(path), ctypes.c_uint(flags))
    if res < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"open_tree {path}: {os.strerror(err)}")
    return res


def move_mount_fd(fd: int, target) -> None:
    """Attach a detached mount tree (from open_tree or fsmount) at target: a path, or a descriptor
    (O_PATH) of exactly the object to mount on — nothing is looked up again by name."""
    flags, dirfd = MOVE_MOUNT_F_EMPTY_PATH, -100
    if isinstance(target, int):
        dirfd, target, flags = target, "", flags | MOVE_MOUNT_T_EMPTY_PATH
    res = _syscall(ctypes.c_long(NR["move_mount"]), ctypes.c_int(fd), b"", ctypes.c_int(dirfd), _b(target),
                   ctypes.c_uint(flags))
    if res < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"move_mount onto {target}: {os.strerror(err)}")


def fsmount(fstype: str, options=(), attrs: int = 0) -> int:
    """A new, detached mount of a fresh `fstype` file system (fsopen, fsconfig, fsmount): options
    are (key, value) pairs, value None for a flag ("ro" also makes the superblock read-only, as
    mount(2)'s MS_RDONLY does); attrs MOUNT_ATTR_*. Attach it with move_mount_fd."""
    fs = _check(_syscall(ctypes.c_long(NR_FSOPEN), _b(fstype), ctypes.c_uint(FSOPEN_CLOEXEC)), f"fsopen {fstype}")
    try:
        for key, value in options:
            cmd = FSCONFIG_SET_FLAG if value is None else FSCONFIG_SET_STRING
            _check(_syscall(ctypes.c_long(NR_FSCONFIG), ctypes.c_int(fs), ctypes.c_uint(cmd), _b(key),
                            _b(value), ctypes.c_int(0)), f"fsconfig {fstype} {key}")
        _check(_syscall(ctypes.c_long(NR_FSCONFIG), ctypes.c_int(fs), ctypes.c_uint(FSCONFIG_CMD_CREATE), None,
                        None, ctypes.c_int(0)), f"mount {fstype}")
        return _check(_syscall(ctypes.c_long(NR_FSMOUNT), ctypes.c_int(fs), ctypes.c_uint(FSMOUNT_CLOEXEC),
                               ctypes.c_uint(attrs)), f"fsmount {fstype}")
    finally:
        os.close(fs)


# --- credentials of the calling thread only -------------------------------------------
# After clone_fork in a multi-threaded process, glibc still believes the parent's other threads
# exist; its setresuid/setresgid/setgroups signal every thread (setxid broadcast) and wait for
# them forever. The child is single-threaded in fact: the raw syscalls are exact there.
_NR_CRED = {"x86_64": {"setgroups": 116, "setresuid": 117, "setresgid": 119},
            "aarch64": {"setgroups": 159, "setresuid": 147, "setresgid": 149}}[_MACHINE]


def setresuid(r: int, e: int, s: int) -> None:
    _check(_syscall(ctypes.c_long(_NR_CRED["setresuid"]), ctypes.c_uint(r), ctypes.c_uint(e), ctypes.c_uint(s)),
           "setresuid")


def setresgid(r: int, e: int, s: int) -> None:
    _check(_syscall(ctypes.c_long(_NR_CRED["setresgid"]), ctypes.c_uint(r), ctypes.c_uint(e), ctypes.c_uint(s)),
           "setresgid")


def setgroups(groups) -> None:
    arr = (ctypes.c_uint * max(1, len(groups)))(*groups)
    _check(_syscall(ctypes.c_long(_NR_CRED["setgroups"]), ctypes.c_size_t(len(groups)), arr), "setgroups")


# --- idmapped mounts (sandbox.store.overlay: image layers seen through the sandbox's uid map) -----
MOUNT_ATTR_IDMAP = 0x00100000


def mount_setattr_idmap(fd: int, userns_fd: int) -> None:
    """Make the detached mount tree `fd` (from open_tree) idmapped through the user namespace `userns_fd`."""
    attr = _MountAttr(MOUNT_ATTR_IDMAP, 0, 0, userns_fd)
    res = _syscall(ctypes.c_long(NR["mount_setattr"]), ctypes.c_int(fd), b"", ctypes.c_uint(AT_EMPTY_PATH),
                   ctypes.byref(attr), ctypes.c_size_t(ctypes.sizeof(attr)))
    if res < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount_setattr idmap: {os.strerror(err)}")


# --- Landlock: PID 1 out of the program's reach (sandbox/pid1.c, landlock_confine) -----------
LANDLOCK_CREATE_RULESET_VERSION = 1
LANDLOCK_SCOPE_ABSTRACT_UNIX_SOCKET = 1
LANDLOCK_SCOPE_ABI = 6                      # the first ABI with `scoped` rulesets (Linux 6.12)
_LANDLOCK_ABI: list = []


class _LandlockRulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64),
                ("scoped", ctypes.c_uint64)]


def landlock_abi() -> int:
    """The kernel's Landlock ABI version (0: none, or disabled at boot); asked once per process."""
    if not _LANDLOCK_ABI:
        v = _syscall(ctypes.c_long(NR["landlock_create_ruleset"]), None, ctypes.c_size_t(0),
                     ctypes.c_uint(LANDLOCK_CREATE_RULESET_VERSION))
        _LANDLOCK_ABI.append(max(0, v))
    return _LANDLOCK_ABI[0]


def landlock_confine() -> None:
    """Put the calling process (thread: call it single-threaded) into a Landlock domain of its own
    that handles no file system or network access and scopes abstract unix sockets only: from
    then on it cannot ptrace, open /proc/PID/mem of, process_vm_* or pidfd_getfd any process
    outside that domain (PID 1), whatever capabilities it holds. pysandbox-init's
    landlock_confine does the same in C (the reasons are written there). Needs no_new_privs or
    CAP_SYS_ADMIN in the current user namespace."""
    attr = _LandlockRulesetAttr(0, 0, LANDLOCK_SCOPE_ABSTRACT_UNIX_SOCKET)
    fd = _check(_syscall(ctypes.c_long(NR["landlock_create_ruleset"]), ctypes.byref(attr),
                         ctypes.c_size_t(ctypes.sizeof(attr)), ctypes.c_uint(0)), "landlock_create_ruleset")
    try:
        _check(_syscall(ctypes.c_long(NR["landlock_restrict_self"]), ctypes.c_int(fd), ctypes.c_uint(0)),
               "landlock_restrict_self")
    finally:
        os.close(fd)


# --- process_vm_readv: another process's memory without /proc/PID/mem ------------------------------
class _IoVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


_libc.process_vm_readv.argtypes = [ctypes.c_int, ctypes.POINTER(_IoVec), ctypes.c_ulong, ctypes.POINTER(_IoVec),
                                   ctypes.c_ulong, ctypes.c_ulong]
_libc.process_vm_readv.restype = ctypes.c_ssize_t


def process_vm_read(pid: int, addr: int, n: int) -> bytes:
    """Up to n bytes at addr in process pid (a ptrace access check only: a rootless caller reads a
    sandbox whose ids are subordinate ids - its user namespace's owner - where /proc/PID/mem, a
    file of those ids, is closed to it). Raises OSError."""
    buf = ctypes.create_string_buffer(n)
    local, remote = _IoVec(ctypes.cast(buf, ctypes.c_void_p), n), _IoVec(addr, n)
    got = _libc.process_vm_readv(pid, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)
    if got < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return buf.raw[:got]


# --- Landlock rulesets of a profile (sandbox/landlock.py builds them) --------------------------
NR_LANDLOCK_ADD_RULE = 445                  # x86_64 and aarch64 alike (the generic table)
LANDLOCK_RULE_PATH_BENEATH, LANDLOCK_RULE_NET_PORT = 1, 2


class _LandlockPathBeneath(ctypes.Structure):
    _pack_ = 1                              # __attribute__((packed)) in linux/landlock.h
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


class _LandlockNetPort(ctypes.Structure):
    _fields_ = [("allowed_access", ctypes.c_uint64), ("port", ctypes.c_uint64)]


def landlock_create_ruleset(handled_fs: int, handled_net: int, scoped: int) -> int:
    """A new ruleset (close-on-exec descriptor) handling these access rights and scopes."""
    attr = _LandlockRulesetAttr(handled_fs, handled_net, scoped)
    return _check(_syscall(ctypes.c_long(NR["landlock_create_ruleset"]), ctypes.byref(attr),
                           ctypes.c_size_t(ctypes.sizeof(attr)), ctypes.c_uint(0)), "landlock_create_ruleset")


def landlock_add_path(ruleset: int, allowed: int, parent_fd: int) -> None:
    attr = _LandlockPathBeneath(allowed, parent_fd)
    _check(_syscall(ctypes.c_long(NR_LANDLOCK_ADD_RULE), ctypes.c_int(ruleset),
                    ctypes.c_int(LANDLOCK_RULE_PATH_BENEATH), ctypes.byref(attr), ctypes.c_uint(0)),
           "landlock_add_rule")


def landlock_add_port(ruleset: int, allowed: int, port: int) -> None:
    attr = _LandlockNetPort(allowed, port)
    _check(_syscall(ctypes.c_long(NR_LANDLOCK_ADD_RULE), ctypes.c_int(ruleset),
                    ctypes.c_int(LANDLOCK_RULE_NET_PORT), ctypes.byref(attr), ctypes.c_uint(0)),
           "landlock_add_rule")


def landlock_restrict_self(ruleset: int, flags: int = 0) -> None:
    """The calling thread enters the ruleset's domain (no_new_privs or CAP_SYS_ADMIN needed)."""
    _check(_syscall(ctypes.c_long(NR["landlock_restrict_self"]), ctypes.c_int(ruleset), ctypes.c_uint(flags)),
           "landlock_restrict_self")


# --- session keyrings: a container's own (sandbox/runtime/monitor.py, execproc.py; runc's default) ---

NR_KEYCTL = {"x86_64": 250, "aarch64": 219}[_MACHINE]
KEYCTL_GET_KEYRING_ID = 0
KEYCTL_JOIN_SESSION_KEYRING = 1
KEY_SPEC_SESSION_KEYRING = -3


def join_session_keyring(name: str | None = None) -> int:
    """keyctl(KEYCTL_JOIN_SESSION_KEYRING): a new anonymous session keyring (name None), or the
    named one; inherited by the children from then on. Returns its serial."""
    return _check(_syscall(ctypes.c_long(NR_KEYCTL), ctypes.c_int(KEYCTL_JOIN_SESSION_KEYRING),
                           _b(name) if name is not None else None), "keyctl(JOIN_SESSION_KEYRING)")


def session_keyring() -> int:
    """The serial of the caller's session keyring (created if it has none)."""
    return _check(_syscall(ctypes.c_long(NR_KEYCTL), ctypes.c_int(KEYCTL_GET_KEYRING_ID),
                           ctypes.c_int(KEY_SPEC_SESSION_KEYRING), ctypes.c_int(1)), "keyctl(GET_KEYRING_ID)")
