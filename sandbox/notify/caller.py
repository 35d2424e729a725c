"""Reading the caller of a notified call: its identity (/proc/TID), the strings, descriptors and
clone3 flags it passed (/proc/TID/mem, /proc/TID/fd), best effort; and the audit event's fields
(audit.events.syscall_event_fields). What is read here is trusted only after the notification id
is re-validated (supervisor.Supervisor.describe)."""
from __future__ import annotations

import os
import struct

TYPE_CHECKING = False  # annotations only (postponed): importing typing is ~2 ms of the launch path
if TYPE_CHECKING:
    from typing import Any, Optional

AUDIT_ARCH_NAMES = {0xC000003E: "x86_64", 0x40000003: "x86", 0xC00000B7: "aarch64", 0x40000028: "arm"}

MAX_STRING = 4096
_U64 = struct.Struct("=Q")


def proc_identity(tid: int) -> dict:
    """pid (tgid), tid, sandbox_pid, comm, exe of a host thread id. Missing pieces omitted."""
    out: dict[str, Any] = {"tid": tid}
    base = f"/proc/{tid}"
    try:
        with open(f"{base}/status", "rb") as f:
            for line in f:
                if line.startswith(b"Tgid:"):
                    out["pid"] = int(line.split()[1])
                elif line.startswith(b"NStgid:"):      # the process (not thread) id inside
                    out["sandbox_pid"] = int(line.split()[-1])
    except (OSError, ValueError, IndexError):
        pass
    try:
        with open(f"{base}/comm", "rb") as f:
            out["comm"] = f.read().rstrip(b"\n").decode(errors="replace")
    except OSError:
        pass
    try:
        out["exe"] = os.readlink(f"{base}/exe")
    except OSError:
        pass
    out.setdefault("pid", tid)
    return out


class _VmRead:
    """In place of a /proc/TID/mem descriptor for read_string/read_u64: process_vm_readv (the
    ptrace check only), when the file is not the reader's to open."""

    def __init__(self, tid: int):
        self.tid = tid

    def pread(self, n: int, addr: int) -> bytes:
        from .. import _sys
        return _sys.process_vm_read(self.tid, addr, n)


def _pread(memfd, n: int, addr: int) -> bytes:
    return memfd.pread(n, addr) if isinstance(memfd, _VmRead) else os.pread(memfd, n, addr)


def read_string(memfd: int, addr: int, limit: int = MAX_STRING) -> Optional[str]:
    """A NUL-terminated string from another process's memory (page by page)."""
    if not addr:
        return None
    out = bytearray()
    while len(out) < limit:
        chunk = min(4096 - (addr % 4096), limit - len(out))
        try:
            data = _pread(memfd, chunk, addr)
        except OSError:
            break
        if not data:
            break
        i = data.find(b"\0")
        if i >= 0:
            out += data[:i]
            return out.decode(errors="replace")
        out += data
        addr += len(data)
    return out.decode(errors="replace") if out else None


def read_u64(memfd: int, addr: int) -> Optional[int]:
    if not addr:
        return None
    try:
        data = _pread(memfd, 8, addr)
    except OSError:
        return None
    return _U64.unpack(data)[0] if len(data) == 8 else None


def read_arguments(tid: int, name: Optional[str], args) -> dict:
    """Strings, fd targets and clone3 flags the caller passed (best effort)."""
    from audit.techniques import ARG_NAMES, FD_ARGS, PATH_ARG, STRING_ARGS
    names = ARG_NAMES.get(name or "", {})
    out: dict[str, Any] = {}
    decoded: dict[str, Any] = {}
    idx = STRING_ARGS.get(name or "", ())
    if idx or name == "clone3":
        try:
            memfd = os.open(f"/proc/{tid}/mem", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:           # rootless, the sandbox's ids subordinate ones: the file is theirs
            memfd = _VmRead(tid)
        if memfd is not None:
            try:
                for i in idx:
                    s = read_string(memfd, args[i])
                    if s is not None:
                        decoded[names.get(i, f"arg{i}")] = s
                if name == "clone3":
                    fl = read_u64(memfd, args[0])
                    if fl is not None:
                        out["clone3_flags"] = fl
            finally:
                if isinstance(memfd, int):
                    os.close(memfd)
    for i in FD_ARGS.get(name or "", ()):
        fd = args[i] & 0xFFFFFFFF
        if fd >= 0x80000000:           # AT_FDCWD and other negatives
            continue
        try:
            decoded[f"fd{i}" if i not in names else names[i]] = os.readlink(f"/proc/{tid}/fd/{fd}")
        except OSError:
            pass
    pi = PATH_ARG.get(name or "")
    key = names.get(pi, f"arg{pi}") if pi is not None else None
    if key is not None and key in decoded:
        out["path"] = decoded[key]
    if decoded:
        out["decoded"] = decoded
    return out


def event_fields(name, n, info: dict, action: str, err: Optional[int], via: str, **more):
    """(event type, fields) of notification n (ioctl.Notification) answered `action`; info: what
    proc_identity and read_arguments found (its clone3_flags and decoded entries are taken)."""
    from audit.events import syscall_event_fields
    clone3_flags = info.pop("clone3_flags", None)
    decoded = info.pop("decoded", None)
    return syscall_event_fields(name, n.nr, n.args, action, errno=err, via=via,
                                arch=AUDIT_ARCH_NAMES.get(n.arch, hex(n.arch)), decoded=decoded,
                                clone3_flags=clone3_flags, **info, **more)
