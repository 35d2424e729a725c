"""Syscall names, systemd-style @groups and errno names for the seccomp policy.

Pure lookups: group data comes from `policies/data/systemd-syscall-groups.json`
(systemd's SystemCallFilter= table, recursively expanded), name -> number
resolution comes from libseccomp's own table for the native architecture
(`pyseccomp.resolve_syscall`, a library lookup, no syscall). pyseccomp is only
imported when a name has to be resolved.

A syscall name is one of:
  * native    - libseccomp knows it and it exists on this architecture;
  * foreign   - a real syscall that does not exist here (`chown32`, `_llseek` on
                x86_64) or that this libseccomp is too old to know (`mseal` on
                libseccomp 2.5.4); skipped and reported in Seccomp.skipped;
  * unknown   - a typo: not in libseccomp and not in any reference table.
"""
from __future__ import annotations

import errno as _errno
import functools
import json
import os
import platform
from typing import Iterable, Optional

_DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
SYSTEMD_GROUPS_FILE = os.path.join(_DATA, "systemd-syscall-groups.json")
DOCKER_DEFAULT_FILE = os.path.join(_DATA, "docker-default-seccomp.json")

# Groups of our own, next to systemd's. Documented in docs/seccomp.md.
PROJECT_GROUPS: dict[str, tuple[str, ...]] = {
    # namespace creation / joining (clone with CLONE_NEW* flags is argument-filtered separately)
    "@namespace": ("setns", "unshare"),
    # io_uring: its own submission path that seccomp cannot see into; Docker dropped it too
    "@io-uring": ("io_uring_enter", "io_uring_register", "io_uring_setup"),
    # reading/writing/inspecting another process (Docker ties these to CAP_SYS_PTRACE)
    "@process-access": ("kcmp", "pidfd_getfd", "process_madvise", "process_vm_readv",
                        "process_vm_writev", "ptrace"),
    # file handles: the "shocker" escape (open_by_handle_at) and its info-leak twin
    "@file-handle": ("name_to_handle_at", "open_by_handle_at"),
    # the new mount API pieces not in systemd's @mount
    "@mount-api": ("fsconfig", "fsmount", "fsopen", "fspick", "mount_setattr", "move_mount",
                   "open_tree", "open_tree_attr"),
}

# Architecture token used by Docker's "arches" (Go GOARCH names) for the native arch.
_GOARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "riscv64": "riscv64",
           "s390x": "s390x", "ppc64le": "ppc64le", "loongarch64": "loong64"}
_SCMP_ARCH = {"x86_64": "SCMP_ARCH_X86_64", "aarch64": "SCMP_ARCH_AARCH64"}


def machine() -> str:
    return platform.machine()


def native_arch_names() -> frozenset[str]:
    """Names by which seccomp JSON files may refer to the native architecture."""
    m = machine()
    names = {m}
    if m in _GOARCH:
        names.add(_GOARCH[m])
    if m in _SCMP_ARCH:
        names.add(_SCMP_ARCH[m])
    return frozenset(names)


@functools.lru_cache(maxsize=1)
def _systemd() -> dict:
    with open(SYSTEMD_GROUPS_FILE, encoding="utf-8") as f:
        return json.load(f)


@functools.lru_cache(maxsize=1)
def groups() -> dict[str, tuple[str, ...]]:
    """Every @group -> sorted member names (systemd's expanded table + ours)."""
    data = _systemd()
    out = {g: tuple(sorted(set(v))) for g, v in data["groups_expanded"].items()}
    for g, v in PROJECT_GROUPS.items():
        out[g] = tuple(sorted(set(v)))
    return out


def group_names() -> list[str]:
    return sorted(groups())


def is_group(name: str) -> bool:
    return isinstance(name, str) and name.startswith("@")


def expand(names: Iterable[str]) -> list[str]:
    """Expand @groups; returns sorted unique syscall names. Unknown group -> KeyError."""
    table = groups()
    out: set[str] = set()
    for n in names:
        if is_group(n):
            if n not in table:
                raise KeyError(n)
            out.update(table[n])
        else:
            out.add(n)
    return sorted(out)


@functools.lru_cache(maxsize=1)
def reference_names() -> frozenset[str]:
    """Every syscall name found in the shipped reference tables (all architectures)."""
    data = _systemd()
    names: set[str] = set()
    for table in (data.get("groups_expanded", {}), data.get("debian12_systemd_252", {}).get("groups_expanded", {})):
        for members in table.values():
            names.update(m for m in members if not m.startswith("@"))
    for members in PROJECT_GROUPS.values():
        names.update(members)
    try:
        with open(DOCKER_DEFAULT_FILE, encoding="utf-8") as f:
            for entry in json.load(f).get("syscalls", []):
                names.update(entry.get("names") or [])
    except (OSError, ValueError):  # pragma: no cover - shipped file
        pass
    return frozenset(names)


@functools.lru_cache(maxsize=None)
def resolve(name: str) -> Optional[int]:
    """The native syscall number, or None when the name is not a syscall here."""
    import pyseccomp  # lazy: only policy compilation needs libseccomp's table
    nr = pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE, name)
    return nr if nr >= 0 else None


@functools.lru_cache(maxsize=None)
def _scmp_knows(name: str) -> bool:
    """libseccomp knows the name for some architecture (pseudo numbers are < -1)."""
    import pyseccomp
    return pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE, name) != -1


def is_known(name: str) -> bool:
    """True when the name is a syscall of the native architecture that libseccomp can filter."""
    return resolve(name) is not None


def classify(name: str) -> str:
    """'native', 'foreign' (real but not filterable here) or 'unknown' (no such syscall)."""
    if resolve(name) is not None:
        return "native"
    if _scmp_knows(name) or name in reference_names():
        return "foreign"
    return "unknown"


_NAMES: dict[tuple[Optional[int], int], Optional[str]] = {}    # (arch, nr) -> name, bounded
_NAMES_MAX = 4096


def syscall_name(nr: int, arch: Optional[int] = None) -> Optional[str]:
    """Number -> name (for reports and audit events), None when unknown (a hole in the table, a
    foreign architecture's number libseccomp does not know). arch: an AUDIT_ARCH_* value (what a
    seccomp notification or a kernel audit record carries); None: the native architecture.
    Answers are cached (bounded by the syscall tables); a process that must not load libseccomp
    is given the table first (syscall_table in another process, then seed_syscall_names)."""
    key = (arch, nr)
    if key in _NAMES:
        return _NAMES[key]
    try:
        import pyseccomp
        name: Optional[str] = pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE if arch is None else arch,
                                                        nr).decode()
    except Exception:  # noqa: BLE001 - unknown number, foreign arch
        name = None
    if len(_NAMES) < _NAMES_MAX:
        _NAMES[key] = name
    return name


def syscall_table(arch: Optional[int] = None, top: int = 1024) -> dict:
    """{(arch, nr): name} for every syscall number below `top` of `arch` (None: the native one,
    keyed by its AUDIT_ARCH_* value, as notifications name it), from libseccomp: for
    seed_syscall_names in a process that must not load libseccomp (the API's launch server)."""
    import pyseccomp
    arch = pyseccomp.system_arch() if arch is None else arch
    out = {}
    for nr in range(top):
        try:
            out[(arch, nr)] = pyseccomp.resolve_syscall(arch, nr).decode()
        except Exception:  # noqa: BLE001 - a hole in the table
            continue
    return out


def seed_syscall_names(table: dict) -> None:
    """syscall_name answers from `table` (syscall_table's) without libseccomp."""
    _NAMES.update(table)


# --- errno ----------------------------------------------------------------------

MAX_ERRNO = 4095


def errno_number(value) -> int:
    """'EPERM' / 'eperm' / 1 / '1' -> 1. Raises ValueError for anything else."""
    if isinstance(value, bool):
        raise ValueError(f"bad errno {value!r}")
    if isinstance(value, int):
        n = value
    elif isinstance(value, str):
        v = value.strip()
        if v.isdigit():
            n = int(v)
        else:
            n = getattr(_errno, v.upper(), None)
            if not isinstance(n, int) or not v.upper().startswith("E"):
                raise ValueError(f"unknown errno name {value!r}")
    else:
        raise ValueError(f"bad errno {value!r}")
    if not 0 <= n <= MAX_ERRNO:
        raise ValueError(f"errno {n} out of range 0..{MAX_ERRNO}")
    return n


def errno_name(n: Optional[int]) -> str:
    if n is None:
        return "-"
    return _errno.errorcode.get(n, str(n))


# --- capabilities (Docker's mapping of capabilities to syscalls) -----------------

DOCKER_DEFAULT_CAPS = frozenset({
    "CHOWN", "DAC_OVERRIDE", "FSETID", "FOWNER", "MKNOD", "NET_RAW", "SETGID", "SETUID",
    "SETFCAP", "SETPCAP", "NET_BIND_SERVICE", "SYS_CHROOT", "KILL", "AUDIT_WRITE",
})


def cap_name(c: str) -> str:
    """'cap_sys_admin' / 'SYS_ADMIN' / 'CAP_SYS_ADMIN' -> 'SYS_ADMIN'."""
    c = c.strip().upper()
    return c[4:] if c.startswith("CAP_") else c


# --- socket address families (linux/socket.h) and netlink protocols (linux/netlink.h) ---

SOCKET_FAMILIES: dict[str, int] = {
    "AF_UNSPEC": 0, "AF_UNIX": 1, "AF_INET": 2, "AF_AX25": 3, "AF_IPX": 4, "AF_APPLETALK": 5,
    "AF_NETROM": 6, "AF_BRIDGE": 7, "AF_ATMPVC": 8, "AF_X25": 9, "AF_INET6": 10, "AF_ROSE": 11,
    "AF_DECnet": 12, "AF_NETBEUI": 13, "AF_SECURITY": 14, "AF_KEY": 15, "AF_NETLINK": 16,
    "AF_PACKET": 17, "AF_ASH": 18, "AF_ECONET": 19, "AF_ATMSVC": 20, "AF_RDS": 21, "AF_SNA": 22,
    "AF_IRDA": 23, "AF_PPPOX": 24, "AF_WANPIPE": 25, "AF_LLC": 26, "AF_IB": 27, "AF_MPLS": 28,
    "AF_CAN": 29, "AF_TIPC": 30, "AF_BLUETOOTH": 31, "AF_IUCV": 32, "AF_RXRPC": 33, "AF_ISDN": 34,
    "AF_PHONET": 35, "AF_IEEE802154": 36, "AF_CAIF": 37, "AF_ALG": 38, "AF_NFC": 39, "AF_VSOCK": 40,
    "AF_KCM": 41, "AF_QIPCRTR": 42, "AF_SMC": 43, "AF_XDP": 44, "AF_MCTP": 45,
}
# One past the last family the kernel knows (6.18): socket() answers EAFNOSUPPORT from here on.
AF_MAX = 46
SOCKET_FAMILY_NAMES: dict[int, str] = {v: k for k, v in SOCKET_FAMILIES.items()}

NETLINK_PROTOCOLS: dict[str, int] = {
    "NETLINK_ROUTE": 0, "NETLINK_UNUSED": 1, "NETLINK_USERSOCK": 2, "NETLINK_FIREWALL": 3,
    "NETLINK_SOCK_DIAG": 4, "NETLINK_NFLOG": 5, "NETLINK_XFRM": 6, "NETLINK_SELINUX": 7,
    "NETLINK_ISCSI": 8, "NETLINK_AUDIT": 9, "NETLINK_FIB_LOOKUP": 10, "NETLINK_CONNECTOR": 11,
    "NETLINK_NETFILTER": 12, "NETLINK_IP6_FW": 13, "NETLINK_DNRTMSG": 14,
    "NETLINK_KOBJECT_UEVENT": 15, "NETLINK_GENERIC": 16, "NETLINK_SCSITRANSPORT": 18,
    "NETLINK_ECRYPTFS": 19, "NETLINK_RDMA": 20, "NETLINK_CRYPTO": 21, "NETLINK_SMC": 22,
}
# netlink_create() refuses protocols from MAX_LINKS on.
NETLINK_MAX_LINKS = 32
NETLINK_PROTOCOL_NAMES: dict[int, str] = {v: k for k, v in NETLINK_PROTOCOLS.items()}


def socket_family(value) -> int:
    """'AF_UNIX' / 'af_unix' / 'UNIX' / 'PF_UNIX' / 1 -> 1. Raises ValueError otherwise."""
    if isinstance(value, bool):
        raise ValueError(f"bad socket family {value!r}")
    if isinstance(value, int):
        if not 0 <= value < AF_MAX:
            raise ValueError(f"socket family {value} out of range 0..{AF_MAX - 1}")
        return value
    if isinstance(value, str):
        v = value.strip()
        up = v.upper()
        if up.startswith("PF_"):
            up = "AF_" + up[3:]
        elif not up.startswith("AF_"):
            up = "AF_" + up
        for name, n in SOCKET_FAMILIES.items():
            if name.upper() == up:
                return n
    raise ValueError(f"unknown socket family {value!r}")


def netlink_protocol(value) -> int:
    """'NETLINK_ROUTE' / 'route' / 0 -> 0. Raises ValueError otherwise."""
    if isinstance(value, bool):
        raise ValueError(f"bad netlink protocol {value!r}")
    if isinstance(value, int):
        if not 0 <= value < NETLINK_MAX_LINKS:
            raise ValueError(f"netlink protocol {value} out of range 0..{NETLINK_MAX_LINKS - 1}")
        return value
    if isinstance(value, str):
        up = value.strip().upper()
        if not up.startswith("NETLINK_"):
            up = "NETLINK_" + up
        if up in NETLINK_PROTOCOLS:
            return NETLINK_PROTOCOLS[up]
    raise ValueError(f"unknown netlink protocol {value!r}")
