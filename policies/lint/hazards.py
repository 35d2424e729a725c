"""What the lint rules and the exposure score both judge dangerous: capabilities, escape-class
system calls, OCI masked and read-only paths, host-sensitive paths and container-runtime sockets,
and the questions about a compiled plan built on them. Pure data and functions of a plan."""
from __future__ import annotations

from typing import Iterable

from .. import syscalls as _sc
from ..seccomp_verdict import decide

# Capabilities that let a process escape the sandbox or attack the kernel (why, severity).
DANGEROUS_CAPS: dict[str, str] = {
    "SYS_ADMIN": "mount, namespaces and most of the kernel's administration interface",
    "SYS_PTRACE": "ptrace and process_vm_* on other processes",
    "SYS_MODULE": "loading kernel modules",
    "DAC_READ_SEARCH": "open_by_handle_at: reading any file of the host by handle ('shocker')",
    "NET_ADMIN": "network configuration: interfaces, routes, nftables (large kernel attack surface)",
    "SYS_RAWIO": "iopl/ioperm and raw device I/O",
    "BPF": "loading BPF programs",
    "PERFMON": "perf_event_open and kernel address leaks",
    "SYS_BOOT": "reboot and kexec_load",
    "MAC_ADMIN": "changing the LSM (AppArmor/SELinux) policy",
    "MAC_OVERRIDE": "overriding the LSM policy",
    "SYS_TIME": "setting the host's clock",
    "SYSLOG": "reading the kernel log (kernel addresses)",
    "CHECKPOINT_RESTORE": "choosing pids and reading other processes' state",
    "AUDIT_CONTROL": "changing the kernel's audit rules",
    "LINUX_IMMUTABLE": "clearing immutable/append-only file flags",
}

# Escape-class system calls: name -> (severity, why).
ESCAPE_SYSCALLS: dict[str, tuple[str, str]] = {
    "mount": ("error", "mounts filesystems (remount, bind over the sandbox's view)"),
    "umount": ("error", "unmounts the sandbox's masks"),
    "umount2": ("error", "unmounts the sandbox's masks and read-only binds"),
    "pivot_root": ("error", "changes the root of the mount namespace"),
    "unshare": ("error", "creates namespaces: a new user namespace grants a full capability set"),
    "setns": ("error", "joins other namespaces"),
    "bpf": ("error", "loads BPF programs (verifier bugs are a common kernel exploit path)"),
    "userfaultfd": ("error", "stalls kernel page faults (a standard race-widening exploit primitive)"),
    "keyctl": ("error", "the kernel keyring is not namespaced"),
    "add_key": ("error", "the kernel keyring is not namespaced"),
    "request_key": ("error", "the kernel keyring is not namespaced"),
    "open_by_handle_at": ("error", "opens host files by handle, bypassing the mount view ('shocker')"),
    "kexec_load": ("error", "loads a new kernel"),
    "kexec_file_load": ("error", "loads a new kernel"),
    "init_module": ("error", "loads kernel modules"),
    "finit_module": ("error", "loads kernel modules"),
    "delete_module": ("error", "unloads kernel modules"),
    "perf_event_open": ("error", "kernel profiling: address leaks and a large attack surface"),
    "iopl": ("error", "raw I/O port access"),
    "ioperm": ("error", "raw I/O port access"),
    "swapon": ("error", "changes the host's swap"),
    "swapoff": ("error", "changes the host's swap"),
    "reboot": ("error", "reboots the host (or the pid namespace)"),
    "fsopen": ("error", "new mount API: creates filesystems"),
    "fsmount": ("error", "new mount API: creates mounts"),
    "fsconfig": ("error", "new mount API: configures filesystems"),
    "fspick": ("error", "new mount API: reconfigures existing mounts"),
    "move_mount": ("error", "new mount API: attaches mounts"),
    "mount_setattr": ("error", "new mount API: changes mount flags (read-only, nosuid)"),
    "lookup_dcookie": ("error", "kernel profiling interface"),
    "clone3": ("error", "creates namespaces; its flags are behind a pointer seccomp cannot inspect"),
    "ptrace": ("warning", "reads and writes other processes (safe against seccomp bypass from Linux 4.8)"),
    "process_vm_readv": ("warning", "reads other processes' memory"),
    "process_vm_writev": ("warning", "writes other processes' memory"),
    "kcmp": ("warning", "compares kernel objects of other processes (address-layout leaks)"),
    "pidfd_getfd": ("warning", "steals file descriptors of other processes"),
    "name_to_handle_at": ("warning", "file handles: the information-leak half of 'shocker'"),
    "open_tree": ("warning", "new mount API: clones mount trees"),
    "io_uring_setup": ("warning", "io_uring runs system calls seccomp cannot see"),
    "acct": ("warning", "switches host process accounting"),
    "quotactl": ("warning", "host disk quota control"),
    "syslog": ("warning", "reads the kernel log (kernel addresses)"),
}
CLONE_NEWUSER = 0x10000000

# OCI / moby default masked and read-only paths.
OCI_MASKED = ("/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
              "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi",
              "/sys/firmware", "/sys/devices/virtual/powercap")
OCI_READONLY = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")

# Host paths that must never be bound in writable; runtime sockets not even read-only
# (connect() on a unix socket ignores a read-only mount).
SENSITIVE_PATHS = ("/", "/proc", "/sys", "/dev", "/etc", "/boot", "/root", "/var/lib/docker",
                   "/var/lib/containerd", "/var/lib/kubelet", "/run/systemd", "/var/run/dbus", "/run/dbus")
SENSITIVE_PREFIXES = ("/proc/", "/sys/", "/dev/", "/etc/", "/boot/")
RUNTIME_SOCKETS = ("/var/run/docker.sock", "/run/docker.sock", "/run/containerd", "/var/run/containerd",
                   "/run/containerd/containerd.sock", "/run/podman", "/run/podman/podman.sock",
                   "/var/run/crio", "/run/crio", "/run/crio/crio.sock", "/run/buildkit")


def norm_cap(c) -> str:
    c = str(c).strip().upper()
    return c[4:] if c.startswith("CAP_") else c


def covered(path: str, by: Iterable[str]) -> bool:
    """path is one of `by` or lies below one of them."""
    p = path.rstrip("/") or "/"
    for b in by:
        b = b.rstrip("/") or "/"
        if p == b or p.startswith(b + "/") or b == "/":
            return True
    return False


def allowed_escape(seccomp) -> list[tuple[str, str, bool]]:
    """[(name, severity, conditional)] of escape-class syscalls the plan lets through."""
    out = []
    if not seccomp.enabled:
        return [(n, sev, False) for n, (sev, _) in ESCAPE_SYSCALLS.items() if _sc.is_known(n)]
    for name, (sev, _) in ESCAPE_SYSCALLS.items():
        if not _sc.is_known(name):
            continue
        if decide(seccomp, name)[0] == "allow":
            out.append((name, sev, False))
        elif any(r.name == name and r.action == "allow" for r in seccomp.rules):
            out.append((name, sev, True))
    return out


def clone_creates_namespaces(seccomp) -> bool:
    if not seccomp.enabled:
        return True
    return decide(seccomp, "clone", [CLONE_NEWUSER])[0] == "allow"


def dangerous_caps(plan) -> list[str]:
    return [c for c in plan.capabilities if c in DANGEROUS_CAPS]


def missing_paths(paths: Iterable[str], have: Iterable[str], fs) -> list[str]:
    """The PATHS not covered by HAVE (those below /proc or /sys count only when the sandbox mounts them)."""
    have = list(have)
    out = []
    for p in paths:
        if p.startswith("/proc/") and not fs.proc:
            continue
        if p.startswith("/sys/") and not fs.sys:
            continue
        if not covered(p, have):
            out.append(p)
    return out
