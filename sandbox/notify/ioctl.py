"""The kernel's seccomp user-notification interface (linux/seccomp.h): receive a notification,
check that it is still valid, answer it. Fixed buffers, no state."""
from __future__ import annotations

import errno as _errno
import fcntl
import struct

TYPE_CHECKING = False  # annotations only (postponed): importing typing is ~2 ms of the launch path
if TYPE_CHECKING:
    from typing import Optional

from policies.plan import dataclass            # shared methods, none compiled by exec at import

# struct seccomp_notif { __u64 id; __u32 pid; __u32 flags; struct seccomp_data data; }
# struct seccomp_data  { int nr; __u32 arch; __u64 instruction_pointer; __u64 args[6]; }
NOTIF = struct.Struct("=QIIiIQ6Q")          # 80 bytes
# struct seccomp_notif_resp { __u64 id; __s64 val; __s32 error; __u32 flags; }
NOTIF_RESP = struct.Struct("=QqiI")         # 24 bytes
_U64 = struct.Struct("=Q")


def _IOC(d: int, t: int, nr: int, size: int) -> int:
    return (d << 30) | (size << 16) | (t << 8) | nr


_IOC_WRITE, _IOC_READ = 1, 2
SECCOMP_IOCTL_NOTIF_RECV = _IOC(_IOC_READ | _IOC_WRITE, ord("!"), 0, NOTIF.size)       # 0xc0502100
SECCOMP_IOCTL_NOTIF_SEND = _IOC(_IOC_READ | _IOC_WRITE, ord("!"), 1, NOTIF_RESP.size)  # 0xc0182101
SECCOMP_IOCTL_NOTIF_ID_VALID = _IOC(_IOC_WRITE, ord("!"), 2, 8)                       # 0x40082102
SECCOMP_USER_NOTIF_FLAG_CONTINUE = 1    # used by the learn-mode supervisor ONLY (notif_send_continue)


@dataclass(frozen=True)
class Notification:
    """One seccomp user notification (struct seccomp_notif)."""
    id: int
    pid: int              # thread id, in the supervisor's pid namespace
    flags: int
    nr: int
    arch: int
    ip: int
    args: tuple


def notif_recv(fd: int, buf: bytearray) -> Optional[Notification]:
    """One pending notification, or None when it vanished (caller killed meanwhile)."""
    buf[:] = bytes(NOTIF.size)     # the kernel insists on a zeroed struct
    try:
        fcntl.ioctl(fd, SECCOMP_IOCTL_NOTIF_RECV, buf, True)
    except OSError as e:
        if e.errno in (_errno.ENOENT, _errno.EINTR, _errno.EAGAIN):
            return None
        raise
    nid, pid, flags, nr, arch, ip, *args = NOTIF.unpack(buf)
    return Notification(nid, pid, flags, nr, arch, ip, tuple(args))


def notif_id_valid(fd: int, nid: int) -> bool:
    try:
        fcntl.ioctl(fd, SECCOMP_IOCTL_NOTIF_ID_VALID, bytearray(_U64.pack(nid)), True)
        return True
    except OSError as e:
        if e.errno == _errno.ENOENT:
            return False
        raise


def notif_send_errno(fd: int, nid: int, err: int) -> bool:
    """Answer a notified call with -err (err > 0). The call does not run. False if the
    caller is gone."""
    if err <= 0:
        err = _errno.EPERM     # a denial always fails; never "success without running"
    return _send(fd, NOTIF_RESP.pack(nid, 0, -err, 0))


def notif_send_continue(fd: int, nid: int) -> bool:
    """Let a notified call run (SECCOMP_USER_NOTIF_FLAG_CONTINUE). Learn mode, and the Landlock
    fallback's calls the plan allows (Landlock, not the notifier, is their control:
    supervisor.Enforcing.landlock_call); never the answer to a call the plan denies. False if the
    caller is gone."""
    return _send(fd, NOTIF_RESP.pack(nid, 0, 0, SECCOMP_USER_NOTIF_FLAG_CONTINUE))


def _send(fd: int, payload: bytes) -> bool:
    try:
        fcntl.ioctl(fd, SECCOMP_IOCTL_NOTIF_SEND, bytearray(payload), True)
        return True
    except OSError as e:
        if e.errno in (_errno.ENOENT, _errno.EINPROGRESS):
            return False
        raise
