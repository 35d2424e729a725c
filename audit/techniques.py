"""Escape techniques: which denied system calls are attempts to leave the sandbox, and how.

`classify(name, args)` -> (technique_id, label) or None. Arguments are used where
they decide the matter: clone/unshare flags (only namespace creation is an escape
attempt), mknod mode (only device nodes), ioctl request (TIOCSTI, TIOCLINUX),
ptrace request, socket family, personality. `decode_args(name, args)` gives the
human-readable decoding that goes into the event's `syscall.decoded`.

Labels name the technique as incident responders know it (e.g. "shocker/open_by_handle_at",
"regain capabilities via user namespace"). Pure Python, no kernel access.
"""
from __future__ import annotations

from typing import Optional, Sequence

# --- constants (include/uapi/linux/*.h; identical on x86_64 and aarch64) ---------
CLONE_FLAGS = {
    0x00000080: "CLONE_NEWTIME",
    0x00000100: "CLONE_VM",
    0x00000200: "CLONE_FS",
    0x00000400: "CLONE_FILES",
    0x00000800: "CLONE_SIGHAND",
    0x00001000: "CLONE_PIDFD",
    0x00002000: "CLONE_PTRACE",
    0x00004000: "CLONE_VFORK",
    0x00008000: "CLONE_PARENT",
    0x00010000: "CLONE_THREAD",
    0x00020000: "CLONE_NEWNS",
    0x00040000: "CLONE_SYSVSEM",
    0x00080000: "CLONE_SETTLS",
    0x00100000: "CLONE_PARENT_SETTID",
    0x00200000: "CLONE_CHILD_CLEARTID",
    0x00800000: "CLONE_UNTRACED",
    0x01000000: "CLONE_CHILD_SETTID",
    0x02000000: "CLONE_NEWCGROUP",
    0x04000000: "CLONE_NEWUTS",
    0x08000000: "CLONE_NEWIPC",
    0x10000000: "CLONE_NEWUSER",
    0x20000000: "CLONE_NEWPID",
    0x40000000: "CLONE_NEWNET",
    0x80000000: "CLONE_IO",
}
CLONE_NEWUSER = 0x10000000
NS_FLAGS = 0x00000080 | 0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000 | 0x20000000 | 0x40000000

S_IFMT = 0o170000
S_IFCHR = 0o020000
S_IFBLK = 0o060000
S_IFIFO = 0o010000
S_IFSOCK = 0o140000
S_IFREG = 0o100000

TIOCSTI = 0x5412
TIOCLINUX = 0x541C
IOCTL_NAMES = {TIOCSTI: "TIOCSTI", TIOCLINUX: "TIOCLINUX", 0x5413: "TIOCGWINSZ", 0x5401: "TCGETS",
               0x5402: "TCSETS", 0x540E: "TIOCSCTTY", 0x5421: "FIONBIO", 0x541B: "FIONREAD"}

PTRACE_REQUESTS = {0: "PTRACE_TRACEME", 1: "PTRACE_PEEKTEXT", 2: "PTRACE_PEEKDATA", 3: "PTRACE_PEEKUSER",
                   4: "PTRACE_POKETEXT", 5: "PTRACE_POKEDATA", 6: "PTRACE_POKEUSER", 7: "PTRACE_CONT",
                   8: "PTRACE_KILL", 9: "PTRACE_SINGLESTEP", 12: "PTRACE_GETREGS", 13: "PTRACE_SETREGS",
                   16: "PTRACE_ATTACH", 17: "PTRACE_DETACH", 24: "PTRACE_SYSCALL",
                   0x4200: "PTRACE_SETOPTIONS", 0x4206: "PTRACE_SEIZE", 0x4207: "PTRACE_INTERRUPT"}

MOUNT_FLAGS = {1: "MS_RDONLY", 2: "MS_NOSUID", 4: "MS_NODEV", 8: "MS_NOEXEC", 16: "MS_SYNCHRONOUS",
               32: "MS_REMOUNT", 64: "MS_MANDLOCK", 128: "MS_DIRSYNC", 1024: "MS_NOATIME",
               2048: "MS_NODIRATIME", 4096: "MS_BIND", 8192: "MS_MOVE", 16384: "MS_REC",
               32768: "MS_SILENT", 1 << 17: "MS_UNBINDABLE", 1 << 18: "MS_PRIVATE",
               1 << 19: "MS_SLAVE", 1 << 20: "MS_SHARED", 1 << 24: "MS_STRICTATIME"}

BPF_CMDS = {0: "BPF_MAP_CREATE", 1: "BPF_MAP_LOOKUP_ELEM", 2: "BPF_MAP_UPDATE_ELEM", 5: "BPF_PROG_LOAD",
            8: "BPF_PROG_ATTACH", 18: "BPF_BTF_LOAD", 28: "BPF_LINK_CREATE"}

KEYCTL_CMDS = {0: "KEYCTL_GET_KEYRING_ID", 1: "KEYCTL_JOIN_SESSION_KEYRING", 2: "KEYCTL_UPDATE",
               6: "KEYCTL_CLEAR", 11: "KEYCTL_READ", 20: "KEYCTL_SEARCH"}

# linux/socket.h (every family of 6.18), so a denied socket() names its family in the record
AF_NAMES = {0: "AF_UNSPEC", 1: "AF_UNIX", 2: "AF_INET", 3: "AF_AX25", 4: "AF_IPX", 5: "AF_APPLETALK",
            6: "AF_NETROM", 7: "AF_BRIDGE", 8: "AF_ATMPVC", 9: "AF_X25", 10: "AF_INET6", 11: "AF_ROSE",
            12: "AF_DECnet", 13: "AF_NETBEUI", 14: "AF_SECURITY", 15: "AF_KEY", 16: "AF_NETLINK",
            17: "AF_PACKET", 18: "AF_ASH", 19: "AF_ECONET", 20: "AF_ATMSVC", 21: "AF_RDS", 22: "AF_SNA",
            23: "AF_IRDA", 24: "AF_PPPOX", 25: "AF_WANPIPE", 26: "AF_LLC", 27: "AF_IB", 28: "AF_MPLS",
            29: "AF_CAN", 30: "AF_TIPC", 31: "AF_BLUETOOTH", 32: "AF_IUCV", 33: "AF_RXRPC", 34: "AF_ISDN",
            35: "AF_PHONET", 36: "AF_IEEE802154", 37: "AF_CAIF", 38: "AF_ALG", 39: "AF_NFC", 40: "AF_VSOCK",
            41: "AF_KCM", 42: "AF_QIPCRTR", 43: "AF_SMC", 44: "AF_XDP", 45: "AF_MCTP"}
SOCK_RAW = 3
SOCK_TYPE_MASK = 0xF

# Syscalls whose denial is always an escape attempt: name -> (technique id, label).
_ALWAYS: dict[str, tuple[str, str]] = {
    "mount": ("mount", "remount or bind host filesystems (mount)"),
    "umount": ("umount", "uncover host paths by unmounting (umount)"),
    "umount2": ("umount", "uncover host paths by unmounting (umount2)"),
    "pivot_root": ("pivot_root", "change the root filesystem (pivot_root)"),
    "chroot": ("chroot", "chroot breakout"),
    "move_mount": ("mount-api", "attach mounts via the new mount API (move_mount)"),
    "open_tree": ("mount-api", "clone host mounts via the new mount API (open_tree)"),
    "fsopen": ("mount-api", "create a filesystem context (fsopen)"),
    "fsmount": ("mount-api", "create a mount via the new mount API (fsmount)"),
    "fsconfig": ("mount-api", "configure a filesystem context (fsconfig)"),
    "fspick": ("mount-api", "reconfigure a mounted filesystem (fspick)"),
    "mount_setattr": ("mount-api", "change mount attributes, e.g. drop read-only (mount_setattr)"),
    "setns": ("setns", "join another namespace (setns)"),
    "ptrace": ("ptrace", "host ptrace: attach to or inject code into another process"),
    "process_vm_readv": ("process-vm", "read another process's memory (process_vm_readv)"),
    "process_vm_writev": ("process-vm", "write another process's memory (process_vm_writev)"),
    "pidfd_getfd": ("pidfd-getfd", "steal a file descriptor from another process (pidfd_getfd)"),
    "kcmp": ("kcmp", "probe another process's kernel objects (kcmp)"),
    "open_by_handle_at": ("shocker", "shocker/open_by_handle_at: open host files by handle"),
    "name_to_handle_at": ("shocker", "shocker/name_to_handle_at: forge file handles"),
    "init_module": ("kernel-module", "load a kernel module (init_module)"),
    "finit_module": ("kernel-module", "load a kernel module (finit_module)"),
    "delete_module": ("kernel-module", "unload a kernel module (delete_module)"),
    "kexec_load": ("kexec", "replace the running kernel (kexec_load)"),
    "kexec_file_load": ("kexec", "replace the running kernel (kexec_file_load)"),
    "bpf": ("bpf", "load eBPF into the kernel (bpf)"),
    "perf_event_open": ("perf", "kernel attack surface / side channel via perf_event_open"),
    "userfaultfd": ("userfaultfd", "userfaultfd: stall the kernel to win exploit races"),
    "keyctl": ("keyring", "kernel keyring access (keyctl): read or plant host keys"),
    "add_key": ("keyring", "kernel keyring access (add_key)"),
    "request_key": ("keyring", "kernel keyring access (request_key)"),
    "iopl": ("raw-io", "raw port I/O (iopl)"),
    "ioperm": ("raw-io", "raw port I/O (ioperm)"),
    "io_uring_setup": ("io_uring", "io_uring: syscalls outside seccomp's view, kernel attack surface"),
    "swapon": ("swap", "swap to an attacker file (swapon)"),
    "swapoff": ("swap", "swapoff"),
    "reboot": ("reboot", "reboot or halt the host (reboot)"),
    "syslog": ("syslog", "read the kernel log for addresses (syslog)"),
    "lookup_dcookie": ("dcookie", "lookup_dcookie"),
    "quotactl": ("quotactl", "quotactl on host filesystems"),
    "nfsservctl": ("nfsservctl", "nfsservctl"),
    "acct": ("acct", "process accounting to a host file (acct)"),
    "settimeofday": ("clock", "change the host clock (settimeofday)"),
    "clock_settime": ("clock", "change the host clock (clock_settime)"),
    "clock_adjtime": ("clock", "change the host clock (clock_adjtime)"),
    "adjtimex": ("clock", "change the host clock (adjtimex)"),
    "uselib": ("obsolete", "obsolete loader call (uselib)"),
    "vhangup": ("tty", "hang up the host terminal (vhangup)"),
}

ESCAPE_SET = frozenset(_ALWAYS) | frozenset({"unshare", "clone", "clone3", "mknod", "mknodat", "ioctl",
                                             "socket", "personality"})


def _arg(args: Optional[Sequence[int]], i: int) -> Optional[int]:
    if args is None or i >= len(args):
        return None
    return int(args[i]) & 0xFFFFFFFFFFFFFFFF


def flag_names(value: int, table: dict[int, str]) -> list[str]:
    names, rest = [], value
    for bit, name in table.items():
        if value & bit:
            names.append(name)
            rest &= ~bit
    if rest:
        names.append(hex(rest))
    return names


def _ns_technique(flags: int, call: str) -> Optional[tuple[str, str]]:
    if not flags & NS_FLAGS:
        return None
    if flags & CLONE_NEWUSER:
        return ("userns", f"regain capabilities via user namespace ({call} CLONE_NEWUSER)")
    names = [n for n in flag_names(flags & NS_FLAGS, CLONE_FLAGS)]
    return ("namespace", f"create new namespaces ({call} {'|'.join(names)})")


def classify(name: str, args: Optional[Sequence[int]] = None, *,
             clone3_flags: Optional[int] = None) -> Optional[tuple[str, str]]:
    """Denied call -> (technique_id, label) when it is an escape attempt, else None.

    Where the deciding argument is unknown (args None: e.g. the kmsg fallback, or
    clone3 whose flags live in memory), clone/unshare/mknod/ioctl are classified
    conservatively: unshare and mknod as escapes, clone3/ioctl/socket not.
    """
    if name in _ALWAYS:
        return _ALWAYS[name]
    if name == "unshare":
        fl = _arg(args, 0)
        if fl is None:
            return ("namespace", "create new namespaces (unshare)")
        return _ns_technique(fl, "unshare")
    if name == "clone":
        fl = _arg(args, 0)
        return _ns_technique(fl & 0xFFFFFF00, "clone") if fl is not None else None
    if name == "clone3":
        # Flags live in struct clone_args in the caller's memory: the supervisor passes
        # them as clone3_flags when it could read them; glibc probes clone3 on every
        # thread start, so an unreadable clone3 is not called an escape.
        return _ns_technique(clone3_flags, "clone3") if clone3_flags is not None else None
    if name in ("mknod", "mknodat"):
        mode = _arg(args, 1 if name == "mknod" else 2)
        if mode is None:
            return ("mknod", f"create device nodes ({name})")
        kind = mode & S_IFMT
        if kind == S_IFCHR:
            return ("mknod", f"create a character device to reach host hardware ({name} S_IFCHR)")
        if kind == S_IFBLK:
            return ("mknod", f"create a block device to read host disks ({name} S_IFBLK)")
        return None
    if name == "ioctl":
        req = _arg(args, 1)
        if req is None:
            return None
        req &= 0xFFFFFFFF
        if req == TIOCSTI:
            return ("tiocsti", "inject keystrokes into the controlling terminal (ioctl TIOCSTI)")
        if req == TIOCLINUX:
            return ("tiocsti", "inject input via the Linux console (ioctl TIOCLINUX)")
        return None
    if name == "socket":
        fam, typ = _arg(args, 0), _arg(args, 1)
        if fam == 40:
            return ("vsock", "reach the hypervisor host over vsock (socket AF_VSOCK)")
        if fam == 17 or (fam in (2, 10) and typ is not None and typ & SOCK_TYPE_MASK == SOCK_RAW):
            return ("raw-socket", "raw network access: spoof or sniff (raw socket)")
        return None
    if name == "personality":
        return None
    return None


# String arguments worth reading from the caller's memory (index list per syscall).
STRING_ARGS: dict[str, tuple[int, ...]] = {
    "mount": (0, 1, 2), "umount": (0,), "umount2": (0,), "chroot": (0,), "pivot_root": (0, 1),
    "mknod": (0,), "mknodat": (1,), "name_to_handle_at": (1,), "open_tree": (1,), "fsopen": (0,),
    "swapon": (0,), "swapoff": (0,), "acct": (0,), "open": (0,), "openat": (1,), "execve": (0,),
    "unlink": (0,), "unlinkat": (1,), "mkdir": (0,), "mkdirat": (1,), "rmdir": (0,),
    "chmod": (0,), "fchmodat": (1,), "chown": (0,), "lchown": (0,), "fchownat": (1,),
    "symlink": (0, 1), "symlinkat": (0, 2), "link": (0, 1), "linkat": (1, 3), "rename": (0, 1),
    "renameat": (1, 3), "renameat2": (1, 3), "truncate": (0,), "setxattr": (0, 1),
    "request_key": (0, 1), "add_key": (0, 1), "delete_module": (0,), "sethostname": (0,),
}
# Names for the string/fd arguments read from the caller (default: argN / fdN).
ARG_NAMES: dict[str, dict[int, str]] = {
    "mount": {0: "source", 1: "target", 2: "fstype"}, "pivot_root": {0: "new_root", 1: "put_old"},
    "umount2": {0: "target"}, "umount": {0: "target"}, "chroot": {0: "path"}, "mknod": {0: "path"},
    "mknodat": {1: "path"}, "name_to_handle_at": {1: "path"}, "open_tree": {1: "path"},
    "fsopen": {0: "fstype"}, "openat": {1: "path"}, "open": {0: "path"}, "execve": {0: "path"},
    "add_key": {0: "type", 1: "description"}, "request_key": {0: "type", 1: "description"},
    "delete_module": {0: "module"}, "sethostname": {0: "name"},
}
# Which string argument is "the path" of the event, per syscall.
PATH_ARG = {"mount": 1, "umount": 0, "umount2": 0, "chroot": 0, "pivot_root": 0, "mknod": 0,
            "mknodat": 1, "name_to_handle_at": 1, "open_tree": 1, "swapon": 0, "swapoff": 0, "acct": 0,
            "open": 0, "openat": 1, "execve": 0, "unlink": 0, "unlinkat": 1, "mkdir": 0, "mkdirat": 1,
            "rmdir": 0, "chmod": 0, "fchmodat": 1, "chown": 0, "lchown": 0, "fchownat": 1,
            "truncate": 0, "setxattr": 0, "symlink": 1, "link": 1, "rename": 0}
# Arguments that are file descriptors: resolved via /proc/PID/fd/N by the supervisor.
FD_ARGS: dict[str, tuple[int, ...]] = {"finit_module": (0,), "open_by_handle_at": (0,), "setns": (0,),
                                       "ioctl": (0,), "fchdir": (0,), "kexec_file_load": (0, 1)}


def decode_args(name: str, args: Optional[Sequence[int]]) -> dict:
    """Human-readable decoding of the arguments that matter (flags, requests, modes)."""
    out: dict[str, object] = {}
    if args is None:
        return out
    a0, a1 = _arg(args, 0), _arg(args, 1)
    if name == "unshare" and a0 is not None:
        out["flags"] = "|".join(flag_names(a0 & 0xFFFFFFFF, CLONE_FLAGS)) or "0"
    elif name == "clone" and a0 is not None:
        # the low byte of clone's flags is the exit signal (CSIGNAL), not CLONE_NEWTIME
        out["flags"] = "|".join(flag_names(a0 & 0xFFFFFF00, CLONE_FLAGS)) or "0"
        if a0 & 0xFF:
            out["exit_signal"] = a0 & 0xFF
    elif name == "mount":
        fl = _arg(args, 3)
        if fl is not None:
            out["flags"] = "|".join(flag_names(fl & 0xFFFFFFFF, MOUNT_FLAGS)) or "0"
    elif name in ("mknod", "mknodat"):
        mode = _arg(args, 1 if name == "mknod" else 2)
        if mode is not None:
            kind = {S_IFCHR: "S_IFCHR", S_IFBLK: "S_IFBLK", S_IFIFO: "S_IFIFO", S_IFSOCK: "S_IFSOCK",
                    S_IFREG: "S_IFREG", 0: "S_IFREG"}.get(mode & S_IFMT, oct(mode & S_IFMT))
            out["mode"] = f"{kind}|{oct(mode & 0o7777)}"
            dev = _arg(args, 2 if name == "mknod" else 3)
            if dev is not None and (mode & S_IFMT) in (S_IFCHR, S_IFBLK):
                out["dev"] = f"{(dev >> 8) & 0xfff}:{(dev & 0xff) | ((dev >> 12) & 0xfff00)}"
    elif name == "ioctl" and a1 is not None:
        out["request"] = IOCTL_NAMES.get(a1 & 0xFFFFFFFF, hex(a1 & 0xFFFFFFFF))
    elif name == "ptrace" and a0 is not None:
        out["request"] = PTRACE_REQUESTS.get(a0, str(a0))
        if a1 is not None:
            out["target_pid"] = a1 & 0xFFFFFFFF
    elif name == "bpf" and a0 is not None:
        out["cmd"] = BPF_CMDS.get(a0 & 0xFFFFFFFF, str(a0))
    elif name == "keyctl" and a0 is not None:
        out["cmd"] = KEYCTL_CMDS.get(a0 & 0xFFFFFFFF, str(a0))
    elif name in ("socket", "socketpair") and a0 is not None:
        out["family"] = AF_NAMES.get(a0 & 0xFFFFFFFF, str(a0))
        if a1 is not None:
            out["type"] = {1: "SOCK_STREAM", 2: "SOCK_DGRAM", 3: "SOCK_RAW", 5: "SOCK_SEQPACKET"}.get(
                a1 & SOCK_TYPE_MASK, str(a1 & SOCK_TYPE_MASK))
    elif name == "personality" and a0 is not None:
        out["persona"] = hex(a0 & 0xFFFFFFFF)
    elif name in ("kill", "tkill", "tgkill") and a0 is not None:
        out["target_pid"] = a0 & 0xFFFFFFFF
    return out
