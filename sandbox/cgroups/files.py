"""The cgroup file interface, as both drivers use it: one read(2)/write(2) per file, the parsers of
the kernel's formats, the write-and-read-back that makes a limit fail closed, the directory lock
that says "a live supervisor owns this", and the block-device facts the I/O limits need."""
from __future__ import annotations

import os
import re
import stat

TYPE_CHECKING = False  # annotations only (postponed): importing typing is ~2 ms of the launch path
if TYPE_CHECKING:
    from typing import Optional

from .. import fsutil

UNLIMITED = 1 << 62            # v1 reports "unlimited" as 9223372036854771712


class CgroupError(Exception):
    """A requested limit cannot be enforced. `str(e)` is one line: "<controller>: <why>"."""

    def __init__(self, controller: str, reason: str):
        super().__init__(f"{controller}: {reason}")
        self.controller = controller
        self.reason = reason


def read(path: str) -> Optional[str]:
    """The whole file, None when it cannot be read (os-level calls: a launch reads a dozen)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        chunks = []
        while True:
            b = os.read(fd, 65536)
            if not b:
                break
            chunks.append(b)
        return b"".join(chunks).decode(errors="replace")
    except OSError:
        return None
    finally:
        os.close(fd)


def write(path: str, value: str) -> None:
    """One write(2) per value, as the cgroup file interface expects."""
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def errmsg(e: OSError) -> str:
    return e.strerror or str(e)


def write_checked(name: str, leaf: str, fname: str, value, check=None, flag: str = "") -> None:
    """Write a limit file and read it back: a limit that does not read back is not enforced
    (fail closed). `check(text) -> bool` replaces the plain equality where the kernel rounds."""
    path = os.path.join(leaf, fname)
    what = f"{flag} " if flag else ""
    try:
        write(path, str(value))
    except FileNotFoundError:
        raise CgroupError(name, f"{what}not supported here ({fname} missing)") from None
    except OSError as e:
        raise CgroupError(name, f"{what}cannot set {fname} to {value}: {errmsg(e)}") from None
    got = read(path)
    ok = check(got) if check else (got is not None and got.strip() == str(value))
    if not ok:
        raise CgroupError(name, f"{what}{fname} reads back {(got or '').strip()!r}, "
                                f"wanted {value!r} (limit not enforced)")


def keyed(text: Optional[str]) -> dict[str, int]:
    """`key value` lines (memory.events, pids.events, cpu.stat, memory.oom_control) -> dict."""
    out: dict[str, int] = {}
    for line in (text or "").splitlines():
        k, _, v = line.partition(" ")
        try:
            out[k] = int(v.strip())
        except ValueError:
            pass
    return out


def number(text: Optional[str]) -> Optional[int]:
    """A file's one number; "max" is -1; None when unreadable."""
    if text is None:
        return None
    text = text.strip()
    if text == "max":
        return -1
    try:
        return int(text)
    except ValueError:
        return None


def procs(directory: str) -> set[int]:
    text = read(os.path.join(directory, "cgroup.procs"))
    return {int(p) for p in (text or "").split() if p.isdigit()}


def cpu_set(text: str) -> set[int]:
    """`0-2,5` -> {0, 1, 2, 5}."""
    out: set[int] = set()
    for part in text.replace("\n", "").split(","):
        part = part.strip()
        if not part:
            continue
        a, _, b = part.partition("-")
        out.update(range(int(a), int(b or a) + 1))
    return out


def page_round(n: int) -> int:
    page = os.sysconf("SC_PAGE_SIZE")
    return n // page * page


def lock_dir(path: str) -> int:
    """Open a cgroup directory and hold an exclusive flock on it: "a live supervisor owns this"."""
    return fsutil.lock(path, create=False, blocking=False)


# --------------------------------------------------------------------------- block devices

def block_device(path: str, controller: str) -> tuple[int, int]:
    try:
        st = os.stat(path)
    except OSError as e:
        raise CgroupError(controller, f"device {path}: {e.strerror}") from None
    if not stat.S_ISBLK(st.st_mode):
        raise CgroupError(controller, f"device {path}: not a block device")
    return os.major(st.st_rdev), os.minor(st.st_rdev)


def disk_schedulers() -> dict[str, str]:
    """disk name -> active I/O scheduler (the bracketed one in queue/scheduler)."""
    out = {}
    try:
        names = os.listdir("/sys/block")
    except OSError:
        return out
    for name in names:
        m = re.search(r"\[([^\]]+)\]", read(f"/sys/block/{name}/queue/scheduler") or "")
        if m and not name.startswith(("loop", "ram", "zram")):
            out[name] = m.group(1)
    return out


def bfq_disks() -> list[str]:
    return sorted(n for n, sched in disk_schedulers().items() if sched == "bfq")


def schedulers() -> str:
    return ", ".join(f"{n}: {s}" for n, s in sorted(disk_schedulers().items())) or "no disks"
