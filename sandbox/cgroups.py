"""Resource limits through cgroups: one driver per cgroup version behind one small interface.

Model: runc's `fs` (v1) / `fs2` (v2) split.

* `detect()` reads /proc/self/mountinfo and returns a `Layout`: which controllers have their own
  cgroup v1 hierarchy, and where the cgroup2 (unified) hierarchy is mounted. Modes: `v1`, `v2`,
  `hybrid` (v1 controllers plus a cgroup2 mount, as on this machine), `none`.
* Each controller the limits need is served by the hierarchy it is bound to: a controller that has
  a v1 hierarchy is driven by `V1Driver` (one directory per hierarchy), otherwise by `V2Driver` when
  the controller is enabled in cgroup2. A controller can be bound to only one hierarchy at a time, so
  this choice is unambiguous. On a hybrid machine the sandbox is also placed in a controller-less
  cgroup2 directory (the way systemd's hybrid mode tracks services): that gives the atomic
  `cgroup.kill` and the `cgroup.events` "populated" flag even though the controllers live in v1.
* Fail closed: every requested limit is written and read back; a limit that cannot be enforced
  (controller not mounted or not enabled, not writable for this caller, rootless without a delegated
  cgroup, value refused by the kernel) raises `CgroupError`, whose text is one line naming the
  controller. Controllers that were not asked for (pids, memory, cpuacct, freezer for statistics and
  killing) are used when available and skipped silently otherwise.
* Placement: `<hierarchy root>/pysandbox/<sandbox id>` as root. Rootless: v1 only under an
  administrator-delegated `<hierarchy root>/pysandbox-user-<uid>/sandboxes` that the caller can write
  (below a root-owned parent with finite limits: `delegate()`); v2 only under
  the topmost cgroup of the caller's own that is delegated to it (owned by the caller, writable
  `cgroup.procs`). Nothing else is ever touched.
* Liveness: the supervisor holds a `flock` on every leaf directory it created for as long as the
  sandbox lives. `reclaim_stale()` removes leaf directories under pysandbox's own parents that are
  unlocked (their supervisor is gone, e.g. SIGKILLed) and hold no processes.

Units follow Docker: `--memory-swap` is memory+swap (-1 unlimited; unset = twice --memory where swap
is accounted), `--cpus` is quota/period with a 100 ms period, `--cpu-shares` is v1 shares (v2 weight
= 1 + (shares-2)*9999/262142), `--blkio-weight` 10..1000.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import signal
import stat
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:  # pragma: no cover
    from policies.plan import Limits

PARENT = "pysandbox"            # pysandbox's own parent cgroup in every hierarchy (root)
PERIOD_US = 100_000             # Docker's CFS period for --cpus
MOUNTINFO = "/proc/self/mountinfo"
_UNLIMITED = 1 << 62            # v1 reports "unlimited" as 9223372036854771712
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}\Z")

# Controllers known to cgroup v1 (a `cgroup` mount's super options name the ones it carries).
_V1_KNOWN = frozenset({"cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "net_cls",
                       "net_prio", "blkio", "perf_event", "hugetlb", "pids", "rdma", "misc"})

# Logical controller -> (v1 name, v2 name). "io" is "blkio" in v1.
_NAMES = {"memory": ("memory", "memory"), "cpu": ("cpu", "cpu"), "cpuset": ("cpuset", "cpuset"),
          "pids": ("pids", "pids"), "io": ("blkio", "io")}

# Limits field -> (logical controller, Docker flag) — used for error messages and doctor.
_FIELDS = {
    "memory": ("memory", "--memory"),
    "memory_swap": ("memory", "--memory-swap"),
    "memory_reservation": ("memory", "--memory-reservation"),
    "cpus": ("cpu", "--cpus"),
    "cpu_shares": ("cpu", "--cpu-shares"),
    "cpuset_cpus": ("cpuset", "--cpuset-cpus"),
    "pids": ("pids", "--pids-limit"),
    "blkio_weight": ("io", "--blkio-weight"),
    "device_read_bps": ("io", "--device-read-bps"),
    "device_write_bps": ("io", "--device-write-bps"),
    "device_read_iops": ("io", "--device-read-iops"),
    "device_write_iops": ("io", "--device-write-iops"),
}


class CgroupError(Exception):
    """A requested limit cannot be enforced. `str(e)` is one line: "<controller>: <why>"."""

    def __init__(self, controller: str, reason: str):
        super().__init__(f"{controller}: {reason}")
        self.controller = controller
        self.reason = reason


# --------------------------------------------------------------------------- layout detection

def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as \\ooo."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


@dataclass(frozen=True)
class Layout:
    v1: tuple[tuple[str, str], ...] = ()     # (controller, mount point); co-mounted ones share it
    unified: Optional[str] = None            # cgroup2 mount point

    @property
    def v1_map(self) -> dict[str, str]:
        return dict(self.v1)

    @property
    def mode(self) -> str:
        if self.v1 and self.unified:
            return "hybrid"
        if self.v1:
            return "v1"
        if self.unified:
            return "v2"
        return "none"

    def unified_controllers(self) -> frozenset[str]:
        """Controllers bound to cgroup2 (its root's `cgroup.controllers`)."""
        if not self.unified:
            return frozenset()
        text = _read(os.path.join(self.unified, "cgroup.controllers"))
        return frozenset(text.split()) if text is not None else frozenset()

    def describe(self) -> str:
        parts = [self.mode]
        if self.v1:
            parts.append("v1 controllers " + ",".join(sorted(c for c, _ in self.v1)))
        if self.unified:
            ctl = " ".join(sorted(self.unified_controllers())) or "none"
            parts.append(f"cgroup2 at {self.unified} (controllers: {ctl})")
        return "; ".join(parts)


def parse_mountinfo(text: str) -> Layout:
    """The cgroup layout described by a /proc/<pid>/mountinfo text.

    When a hierarchy is mounted more than once, the first mount of its root ("/") wins, else the
    first mount seen.
    """
    v1: dict[str, tuple[str, str]] = {}      # controller -> (mount point, root)
    unified: Optional[tuple[str, str]] = None
    for line in text.splitlines():
        parts = line.split()
        try:
            sep = parts.index("-", 6)
        except ValueError:
            continue
        if len(parts) < sep + 3:
            continue
        fstype, root, mnt = parts[sep + 1], _unescape(parts[3]), _unescape(parts[4])
        superopts = parts[sep + 3].split(",") if len(parts) > sep + 3 else []
        if fstype == "cgroup":
            for c in superopts:
                if c in _V1_KNOWN and (c not in v1 or (v1[c][1] != "/" and root == "/")):
                    v1[c] = (mnt, root)
        elif fstype == "cgroup2":
            if unified is None or (unified[1] != "/" and root == "/"):
                unified = (mnt, root)
    return Layout(v1=tuple(sorted((c, m) for c, (m, _) in v1.items())),
                  unified=unified[0] if unified else None)


_LAYOUT: list = [None, None]                 # (mountinfo text, its Layout): parsed once per change


def detect(mountinfo: str = MOUNTINFO) -> Layout:
    """The cgroup layout of our mount namespace (read every time, parsed again only when the
    mount table changed: a launch server asks once per sandbox)."""
    text = _read(mountinfo)
    if text is None:
        with open(mountinfo) as f:           # the error, as before
            text = f.read()
    if _LAYOUT[0] != text:
        _LAYOUT[:] = [text, parse_mountinfo(text)]
    return _LAYOUT[1]


# --------------------------------------------------------------------------- small file helpers

def _read(path: str) -> Optional[str]:
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


def _write(path: str, value: str) -> None:
    """One write(2) per value, as the cgroup file interface expects."""
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def _keyed(text: Optional[str]) -> dict[str, int]:
    """`key value` lines (memory.events, pids.events, cpu.stat, memory.oom_control) -> dict."""
    out: dict[str, int] = {}
    for line in (text or "").splitlines():
        k, _, v = line.partition(" ")
        try:
            out[k] = int(v.strip())
        except ValueError:
            pass
    return out


def _int(text: Optional[str]) -> Optional[int]:
    if text is None:
        return None
    text = text.strip()
    if text == "max":
        return -1
    try:
        return int(text)
    except ValueError:
        return None


def _procs(directory: str) -> set[int]:
    text = _read(os.path.join(directory, "cgroup.procs"))
    return {int(p) for p in (text or "").split() if p.isdigit()}


def _cpu_set(text: str) -> set[int]:
    """`0-2,5` -> {0, 1, 2, 5}."""
    out: set[int] = set()
    for part in text.replace("\n", "").split(","):
        part = part.strip()
        if not part:
            continue
        a, _, b = part.partition("-")
        out.update(range(int(a), int(b or a) + 1))
    return out


def _page_round(n: int) -> int:
    page = os.sysconf("SC_PAGE_SIZE")
    return n // page * page


def _block_device(path: str, controller: str) -> tuple[int, int]:
    try:
        st = os.stat(path)
    except OSError as e:
        raise CgroupError(controller, f"device {path}: {e.strerror}") from None
    if not stat.S_ISBLK(st.st_mode):
        raise CgroupError(controller, f"device {path}: not a block device")
    return os.major(st.st_rdev), os.minor(st.st_rdev)


def _disk_schedulers() -> dict[str, str]:
    """disk name -> active I/O scheduler (the bracketed one in queue/scheduler)."""
    out = {}
    try:
        names = os.listdir("/sys/block")
    except OSError:
        return out
    for name in names:
        m = re.search(r"\[([^\]]+)\]", _read(f"/sys/block/{name}/queue/scheduler") or "")
        if m and not name.startswith(("loop", "ram", "zram")):
            out[name] = m.group(1)
    return out


def _bfq_disks() -> list[str]:
    return sorted(n for n, sched in _disk_schedulers().items() if sched == "bfq")


def _schedulers() -> str:
    return ", ".join(f"{n}: {s}" for n, s in sorted(_disk_schedulers().items())) or "no disks"


def _fmt_bytes(n: Optional[int]) -> str:
    if n is None:
        return "?"
    if n < 0 or n >= _UNLIMITED:
        return "unlimited"
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            v = n / size
            return f"{v:.0f} {unit}" if abs(v - round(v)) < 0.05 else f"{v:.1f} {unit}"
    return f"{n} B"


def _lock_dir(path: str) -> int:
    """Open a cgroup directory and hold an exclusive flock on it: "a live supervisor owns this"."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise
    return fd


def _errmsg(e: OSError) -> str:
    return e.strerror or str(e)


# --------------------------------------------------------------------------- drivers

class _Driver:
    """What both drivers provide. `controllers` are logical names (memory cpu cpuset pids io)."""

    version = 0
    # The only two directory operations; tests of the v2 file logic against a simulated tree (a plain
    # directory cannot create interface files by itself) replace them with ones that do.
    _mkdir = staticmethod(os.mkdir)
    _rmdir = staticmethod(os.rmdir)

    def __init__(self, sandbox_id: str, controllers: list[str]):
        self.sandbox_id = sandbox_id
        self.controllers = list(controllers)
        self._locks: list[int] = []
        self.created: list[str] = []          # leaf directories this object created

    # -- life cycle

    @staticmethod
    def _write_checked(name: str, leaf: str, fname: str, value, check=None, flag: str = "") -> None:
        """Write a limit file and read it back: a limit that does not read back is not enforced
        (fail closed). `check(text) -> bool` replaces the plain equality where the kernel rounds."""
        path = os.path.join(leaf, fname)
        what = f"{flag} " if flag else ""
        try:
            _write(path, str(value))
        except FileNotFoundError:
            raise CgroupError(name, f"{what}not supported here ({fname} missing)") from None
        except OSError as e:
            raise CgroupError(name, f"{what}cannot set {fname} to {value}: {_errmsg(e)}") from None
        got = _read(path)
        ok = check(got) if check else (got is not None and got.strip() == str(value))
        if not ok:
            raise CgroupError(name, f"{what}{fname} reads back {(got or '').strip()!r}, "
                                    f"wanted {value!r} (limit not enforced)")
    def create(self, required: set[str]) -> None: raise NotImplementedError
    def apply(self, limits: "Limits") -> None: raise NotImplementedError
    def add_pid(self, pid: int) -> None: raise NotImplementedError
    def stats(self) -> dict: raise NotImplementedError
    def kill(self) -> None: raise NotImplementedError

    def procs(self) -> set[int]:
        out: set[int] = set()
        for d in self.created:
            out |= _procs(d)
        return out

    def release_locks(self) -> None:
        for fd in self._locks:
            try:
                os.close(fd)
            except OSError:
                pass
        self._locks = []

    def remove(self, timeout: float = 3.0) -> list[str]:
        """rmdir every leaf (killing stragglers); returns the directories that could not be removed."""
        left = []
        deadline = time.monotonic() + timeout
        for d in reversed(self.created):
            delay = 0.005
            while True:
                try:
                    self._rmdir(d)
                    break
                except FileNotFoundError:
                    break
                except OSError as e:
                    if e.errno != errno.EBUSY or time.monotonic() > deadline:
                        left.append(d)
                        break
                    if _procs(d):
                        self.kill()
                    time.sleep(delay)      # exiting tasks leave the cgroup when they are reaped
                    delay = min(delay * 2, 0.1)
        self.release_locks()
        return left

    @staticmethod
    def _signal_loop(list_procs, freeze=None, thaw=None, timeout: float = 5.0) -> None:
        """SIGKILL every process until the cgroup is empty (freezing first, so a fork bomb cannot
        outrun the loop, where a freezer is available)."""
        deadline = time.monotonic() + timeout
        delay = 0.002
        while time.monotonic() < deadline:
            pids = list_procs()
            if not pids:
                return
            if freeze:
                freeze()
                pids = list_procs()
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
            if thaw:
                thaw()
            time.sleep(delay)
            delay = min(delay * 2, 0.05)


class V1Driver(_Driver):
    """cgroup v1: a directory in every hierarchy that carries one of the controllers.

    Files: memory.limit_in_bytes, memory.memsw.limit_in_bytes, memory.soft_limit_in_bytes,
    cpu.cfs_period_us, cpu.cfs_quota_us, cpu.shares, cpuset.cpus/mems, pids.max,
    blkio.weight (or blkio.bfq.weight), blkio.throttle.{read,write}_{bps,iops}_device; events from
    memory.oom_control, memory.max_usage_in_bytes, memory.failcnt, pids.events, cpu.stat,
    cpuacct.usage. Killing uses the freezer hierarchy when there is one.
    """

    version = 1

    def __init__(self, sandbox_id: str, controllers: list[str], mounts: dict[str, str],
                 parent_name: str, rootless: bool):
        super().__init__(sandbox_id, controllers)
        self.parent_name = parent_name
        self.rootless = rootless
        self.mounts = {c: mounts[self.v1name(c)] for c in controllers}   # logical -> mount point
        self.dirs: dict[str, str] = {}                                    # logical -> leaf dir

    @staticmethod
    def v1name(c: str) -> str:
        return _NAMES[c][0] if c in _NAMES else c

    def dir(self, c: str) -> Optional[str]:
        return self.dirs.get(c)

    def create(self, required: set[str]) -> None:
        by_mount: dict[str, str] = {}
        for c in self.controllers:
            mount = self.mounts[c]
            if mount in by_mount:                  # co-mounted with a controller already done
                self.dirs[c] = by_mount[mount]
                continue
            name = self.v1name(c)
            try:
                leaf = self._create_one(c, mount)
            except CgroupError:
                if c in required:
                    raise
                continue                            # optional controller: statistics only
            by_mount[mount] = leaf
            self.dirs[c] = leaf
            if name == "memory":
                self._check_hierarchy(leaf)

    def _create_one(self, c: str, mount: str) -> str:
        name = self.v1name(c)
        parent = os.path.join(mount, self.parent_name)
        if self.rootless:
            if not os.path.isdir(parent) or not os.access(parent, os.W_OK | os.X_OK):
                raise CgroupError(name, "controller not available for this user (no delegated cgroup: "
                                        f"{parent} must exist and be writable by uid {os.geteuid()}; "
                                        "as root: pysandbox cgroups delegate USER)")
        else:
            try:
                self._mkdir(parent, 0o755)
            except FileExistsError:
                pass
            except OSError as e:
                raise CgroupError(name, f"cannot create {parent}: {_errmsg(e)}") from None
        if name == "cpuset":
            self._cpuset_inherit(parent, os.path.dirname(parent))
        leaf = os.path.join(parent, self.sandbox_id)
        try:
            self._mkdir(leaf, 0o755)
        except FileExistsError:
            raise CgroupError(name, f"cgroup {leaf} already exists (sandbox id in use)") from None
        except OSError as e:
            raise CgroupError(name, f"cannot create {leaf}: {_errmsg(e)}") from None
        self.created.append(leaf)
        try:
            self._locks.append(_lock_dir(leaf))
        except OSError as e:
            raise CgroupError(name, f"cannot lock {leaf}: {_errmsg(e)}") from None
        if name == "cpuset":
            self._cpuset_inherit(leaf, parent)
        return leaf

    @staticmethod
    def _cpuset_inherit(d: str, parent: str) -> None:
        """A new v1 cpuset has empty cpus/mems (no task can join it): copy the parent's."""
        for f in ("cpuset.mems", "cpuset.cpus"):
            cur = (_read(os.path.join(d, f)) or "").strip()
            if cur:
                continue
            val = (_read(os.path.join(parent, f)) or "").strip()
            try:
                _write(os.path.join(d, f), val)
            except OSError as e:
                raise CgroupError("cpuset", f"cannot initialise {d}/{f}: {_errmsg(e)}") from None

    @staticmethod
    def _check_hierarchy(leaf: str) -> None:
        """v1 memory: with use_hierarchy=0 (kernels before 6.0 allowed it) a child cgroup's usage is
        not charged to its parent, so a limit would not cover sub-cgroups. Require 1."""
        f = os.path.join(leaf, "memory.use_hierarchy")
        if (_read(f) or "1").strip() == "1":
            return
        try:
            _write(f, "1")
        except OSError:
            pass
        if (_read(f) or "").strip() != "1":
            raise CgroupError("memory", f"memory.use_hierarchy is 0 in {leaf} and cannot be set to 1 "
                                        "(limits would not cover child cgroups)")

    def _set(self, c: str, fname: str, value, check=None, flag: str = "") -> None:
        name = self.v1name(c)
        leaf = self.dirs.get(c)
        if leaf is None:
            raise CgroupError(name, "controller not available")
        self._write_checked(name, leaf, fname, value, check, flag)

    def apply(self, limits: "Limits") -> None:
        L = limits
        # memory ------------------------------------------------------------------------
        if L.memory is not None and L.memory >= 0:
            want = _page_round(L.memory)
            self._set("memory", "memory.limit_in_bytes", L.memory,
                      lambda g: _int(g) == want, "--memory")
            memsw = os.path.join(self.dirs["memory"], "memory.memsw.limit_in_bytes")
            if L.memory_swap is not None:
                if not os.path.exists(memsw):
                    raise CgroupError("memory", "--memory-swap: swap accounting not available "
                                                "(no memory.memsw.limit_in_bytes; boot with swapaccount=1)")
                if L.memory_swap == -1:
                    self._set("memory", "memory.memsw.limit_in_bytes", -1,
                              lambda g: (_int(g) or 0) >= _UNLIMITED, "--memory-swap")
                else:
                    ws = _page_round(L.memory_swap)
                    self._set("memory", "memory.memsw.limit_in_bytes", L.memory_swap,
                              lambda g: _int(g) == ws, "--memory-swap")
            elif os.path.exists(memsw):
                # Docker: --memory without --memory-swap allows as much swap as memory.
                ws = _page_round(2 * L.memory)
                self._set("memory", "memory.memsw.limit_in_bytes", 2 * L.memory,
                          lambda g: _int(g) == ws, "--memory")
        if L.memory_reservation is not None:
            want_r = _page_round(L.memory_reservation)
            self._set("memory", "memory.soft_limit_in_bytes", L.memory_reservation,
                      lambda g: _int(g) == want_r or (L.memory_reservation == -1 and (_int(g) or 0) >= _UNLIMITED),
                      "--memory-reservation")
        # cpu ---------------------------------------------------------------------------
        if L.cpus is not None:
            quota = int(round(L.cpus * PERIOD_US))
            self._set("cpu", "cpu.cfs_period_us", PERIOD_US, flag="--cpus")
            self._set("cpu", "cpu.cfs_quota_us", quota, flag="--cpus")
        if L.cpu_shares is not None:
            self._set("cpu", "cpu.shares", L.cpu_shares, flag="--cpu-shares")
        # cpuset ------------------------------------------------------------------------
        if L.cpuset_cpus is not None:
            want_set = _cpu_set(L.cpuset_cpus)
            allowed = (_read(os.path.join(os.path.dirname(self.dirs.get("cpuset", "/")), "cpuset.cpus")) or "").strip()
            try:
                self._set("cpuset", "cpuset.cpus", L.cpuset_cpus,
                          lambda g: g is not None and _cpu_set(g) == want_set, "--cpuset-cpus")
            except CgroupError as e:
                raise CgroupError("cpuset", f"{e.reason} (allowed CPUs: {allowed or '?'})") from None
        # pids --------------------------------------------------------------------------
        if L.pids is not None:
            val = "max" if L.pids <= 0 else str(L.pids)
            self._set("pids", "pids.max", val, flag="--pids-limit")
        # blkio -------------------------------------------------------------------------
        if L.blkio_weight is not None:
            leaf = self.dirs.get("io")
            if not _bfq_disks():
                raise CgroupError("blkio", "--blkio-weight: no disk uses the BFQ I/O scheduler "
                                           f"({_schedulers()}), so a proportional weight would have no effect")
            for fname in ("blkio.weight", "blkio.bfq.weight"):
                if leaf and os.path.exists(os.path.join(leaf, fname)):
                    self._set("io", fname, L.blkio_weight,
                              lambda g: g is not None and str(L.blkio_weight) in g.split(), "--blkio-weight")
                    break
            else:
                raise CgroupError("blkio", "--blkio-weight: proportional I/O weight not available (no "
                                           "blkio.weight or blkio.bfq.weight: the disks' I/O scheduler is "
                                           "not CFQ/BFQ)")
        for field_name, fname in (("device_read_bps", "blkio.throttle.read_bps_device"),
                                  ("device_write_bps", "blkio.throttle.write_bps_device"),
                                  ("device_read_iops", "blkio.throttle.read_iops_device"),
                                  ("device_write_iops", "blkio.throttle.write_iops_device")):
            flag = _FIELDS[field_name][1]
            for rate in getattr(L, field_name):
                major, minor = _block_device(rate.path, "blkio")
                line = f"{major}:{minor} {rate.rate}"
                self._set("io", fname, line, lambda g, line=line: g is not None and line in g.splitlines(),
                          flag)

    def add_pid(self, pid: int) -> None:
        seen = set()
        for c, leaf in self.dirs.items():
            if leaf in seen:
                continue
            seen.add(leaf)
            try:
                _write(os.path.join(leaf, "cgroup.procs"), str(pid))
            except OSError as e:
                raise CgroupError(self.v1name(c), f"cannot move pid {pid} into {leaf}: {_errmsg(e)}") from None

    def _freezer(self) -> Optional[str]:
        return self.dirs.get("freezer")

    def kill(self) -> None:
        fz = self._freezer()
        freeze = thaw = None
        if fz:
            state = os.path.join(fz, "freezer.state")

            def freeze():
                try:
                    _write(state, "FROZEN")
                except OSError:
                    return
                end = time.monotonic() + 1.0
                while time.monotonic() < end and (_read(state) or "").strip() == "FREEZING":
                    time.sleep(0.002)

            def thaw():
                try:
                    _write(state, "THAWED")
                except OSError:
                    pass
        self._signal_loop(self.procs, freeze, thaw)

    def stats(self) -> dict:
        out: dict = {}
        mem = self.dirs.get("memory")
        if mem:
            out["memory_limit"] = _int(_read(os.path.join(mem, "memory.limit_in_bytes")))
            out["memory_peak"] = _int(_read(os.path.join(mem, "memory.max_usage_in_bytes")))
            out["memory_failcnt"] = _int(_read(os.path.join(mem, "memory.failcnt")))
            oc = _keyed(_read(os.path.join(mem, "memory.oom_control")))
            if "oom_kill" in oc:
                out["oom_kill"] = oc["oom_kill"]
        pids = self.dirs.get("pids")
        if pids:
            out["pids_limit"] = _int(_read(os.path.join(pids, "pids.max")))
            out["pids_max_events"] = _keyed(_read(os.path.join(pids, "pids.events"))).get("max", 0)
            peak = _int(_read(os.path.join(pids, "pids.peak")))
            if peak is not None:
                out["pids_peak"] = peak
        cpu = self.dirs.get("cpu")
        if cpu:
            st = _keyed(_read(os.path.join(cpu, "cpu.stat")))
            out["nr_periods"] = st.get("nr_periods", 0)
            out["nr_throttled"] = st.get("nr_throttled", 0)
            out["throttled_usec"] = st.get("throttled_time", 0) // 1000
        acct = self.dirs.get("cpuacct")
        if acct:
            usage = _int(_read(os.path.join(acct, "cpuacct.usage")))
            if usage is not None:
                out["cpu_usage_usec"] = usage // 1000
        return {k: v for k, v in out.items() if v is not None}


class V2Driver(_Driver):
    """cgroup v2 (unified): one directory `<base>/pysandbox/<id>`.

    Files: memory.max, memory.swap.max, memory.low, memory.oom.group, cpu.max, cpu.weight,
    cpuset.cpus, pids.max, io.weight (or io.bfq.weight), io.max; events from memory.events,
    memory.peak, pids.events, pids.peak, cpu.stat; cgroup.kill and cgroup.events for killing and the
    populated flag. With no controllers (hybrid machines) it only tracks and kills.
    """

    version = 2

    def __init__(self, sandbox_id: str, controllers: list[str], base: str, parent_name: str = PARENT,
                 rootless: bool = False):
        super().__init__(sandbox_id, controllers)
        self.base = base                                  # hierarchy root or delegated cgroup
        self.parent = os.path.join(base, parent_name)
        self.leaf = os.path.join(self.parent, sandbox_id)
        self.rootless = rootless

    def dir(self, c: str) -> Optional[str]:
        return self.leaf if (c in self.controllers and self.created) else None

    def _enable(self, d: str, ctl: str, flag_owner: str) -> None:
        sub = os.path.join(d, "cgroup.subtree_control")
        if ctl in (_read(sub) or "").split():
            return
        try:
            _write(sub, "+" + ctl)
        except OSError as e:
            raise CgroupError(flag_owner, f"cannot enable the controller in {sub}: {_errmsg(e)}") from None

    def create(self, required: set[str]) -> None:
        avail = set((_read(os.path.join(self.base, "cgroup.controllers")) or "").split())
        wanted = []
        for c in self.controllers:
            name = _NAMES[c][1]
            if name in avail:
                wanted.append(c)
            elif c in required:
                raise CgroupError(name, f"controller not enabled in cgroup2 at {self.base}")
        self.controllers = wanted
        try:
            self._mkdir(self.parent, 0o755)
        except FileExistsError:
            pass
        except OSError as e:
            raise CgroupError(_NAMES[wanted[0]][1] if wanted else "cgroup2",
                              f"cannot create {self.parent}: {_errmsg(e)}") from None
        for c in list(self.controllers):
            name = _NAMES[c][1]
            try:
                self._enable(self.base, name, name)
                self._enable(self.parent, name, name)
            except CgroupError:
                if c in required:
                    raise
                self.controllers.remove(c)
        try:
            self._mkdir(self.leaf, 0o755)
        except FileExistsError:
            raise CgroupError("cgroup2", f"cgroup {self.leaf} already exists (sandbox id in use)") from None
        except OSError as e:
            raise CgroupError(_NAMES[self.controllers[0]][1] if self.controllers else "cgroup2",
                              f"cannot create {self.leaf}: {_errmsg(e)}") from None
        self.created.append(self.leaf)
        try:
            self._locks.append(_lock_dir(self.leaf))
        except OSError as e:
            raise CgroupError("cgroup2", f"cannot lock {self.leaf}: {_errmsg(e)}") from None
        have = set((_read(os.path.join(self.leaf, "cgroup.controllers")) or "").split())
        for c in list(self.controllers):
            if _NAMES[c][1] not in have:
                if c in required:
                    raise CgroupError(_NAMES[c][1], f"controller not available in {self.leaf}")
                self.controllers.remove(c)

    def _set(self, c: str, fname: str, value, check=None, flag: str = "") -> None:
        name = _NAMES[c][1]
        if c not in self.controllers:
            raise CgroupError(name, "controller not available")
        self._write_checked(name, self.leaf, fname, value, check, flag)

    def apply(self, limits: "Limits") -> None:
        L = limits
        if L.memory is not None and L.memory >= 0:
            want = _page_round(L.memory)
            self._set("memory", "memory.max", L.memory, lambda g: _int(g) == want, "--memory")
            swap = os.path.join(self.leaf, "memory.swap.max")
            if L.memory_swap is not None:
                if not os.path.exists(swap):
                    raise CgroupError("memory", "--memory-swap: swap accounting not available "
                                                "(no memory.swap.max)")
                if L.memory_swap == -1:
                    self._set("memory", "memory.swap.max", "max", flag="--memory-swap")
                else:
                    if L.memory_swap < L.memory:
                        raise CgroupError("memory", "--memory-swap must be at least --memory")
                    s = L.memory_swap - L.memory
                    self._set("memory", "memory.swap.max", s, lambda g: _int(g) == _page_round(s),
                              "--memory-swap")
            elif os.path.exists(swap):
                self._set("memory", "memory.swap.max", L.memory,
                          lambda g: _int(g) == want, "--memory")
            oom_group = os.path.join(self.leaf, "memory.oom.group")
            if os.path.exists(oom_group):       # OOM kills the whole sandbox, not one task
                try:
                    _write(oom_group, "1")
                except OSError:
                    pass
        if L.memory_reservation is not None:
            r = L.memory_reservation
            self._set("memory", "memory.low", "max" if r == -1 else r,
                      lambda g: _int(g) == (-1 if r == -1 else _page_round(r)), "--memory-reservation")
        if L.cpus is not None:
            quota = int(round(L.cpus * PERIOD_US))
            self._set("cpu", "cpu.max", f"{quota} {PERIOD_US}", flag="--cpus")
        if L.cpu_shares is not None:
            from policies.units import cpu_shares_to_weight
            self._set("cpu", "cpu.weight", cpu_shares_to_weight(L.cpu_shares), flag="--cpu-shares")
        if L.cpuset_cpus is not None:
            want_set = _cpu_set(L.cpuset_cpus)
            self._set("cpuset", "cpuset.cpus", L.cpuset_cpus,
                      lambda g: g is not None and _cpu_set(g) == want_set, "--cpuset-cpus")
        if L.pids is not None:
            self._set("pids", "pids.max", "max" if L.pids <= 0 else L.pids, flag="--pids-limit")
        if L.blkio_weight is not None:
            from policies.units import blkio_weight_to_io_weight
            w = blkio_weight_to_io_weight(L.blkio_weight)
            # io.weight acts only where iocost is enabled (root io.cost.qos), io.bfq.weight only under BFQ
            iocost = "enable=1" in (_read(os.path.join(os.path.dirname(self.parent), "io.cost.qos")) or "")
            choices = ([("io.weight", f"default {w}")] if iocost else []) + \
                ([("io.bfq.weight", f"default {L.blkio_weight}")] if _bfq_disks() else [])
            if not choices:
                raise CgroupError("io", "--blkio-weight: neither iocost (io.cost.qos) nor the BFQ scheduler is "
                                        f"active ({_schedulers()}), so a weight would have no effect")
            for fname, val in choices:
                if os.path.exists(os.path.join(self.leaf, fname)):
                    self._set("io", fname, val,
                              lambda g, v=val: g is not None and v in g.splitlines(), "--blkio-weight")
                    break
            else:
                raise CgroupError("io", "--blkio-weight: proportional I/O weight not available "
                                        "(no io.weight or io.bfq.weight)")
        per_dev: dict[tuple[int, int], list[str]] = {}
        for field_name, key in (("device_read_bps", "rbps"), ("device_write_bps", "wbps"),
                                ("device_read_iops", "riops"), ("device_write_iops", "wiops")):
            for rate in getattr(L, field_name):
                dev = _block_device(rate.path, "io")
                per_dev.setdefault(dev, []).append(f"{key}={rate.rate}")
        for (major, minor), settings in per_dev.items():
            line = f"{major}:{minor} " + " ".join(settings)

            def check(g, major=major, minor=minor, settings=settings):
                for ln in (g or "").splitlines():
                    if ln.startswith(f"{major}:{minor} "):
                        return all(s in ln.split() for s in settings)
                return False
            self._set("io", "io.max", line, check, "--device-*-bps/iops")

    def add_pid(self, pid: int) -> None:
        try:
            _write(os.path.join(self.leaf, "cgroup.procs"), str(pid))
        except OSError as e:
            name = _NAMES[self.controllers[0]][1] if self.controllers else "cgroup2"
            raise CgroupError(name, f"cannot move pid {pid} into {self.leaf}: {_errmsg(e)}") from None

    def populated(self) -> Optional[bool]:
        ev = _keyed(_read(os.path.join(self.leaf, "cgroup.events")))
        return bool(ev["populated"]) if "populated" in ev else None

    def kill(self) -> None:
        if not self.created:
            return
        kill_file = os.path.join(self.leaf, "cgroup.kill")
        if os.path.exists(kill_file):
            try:
                _write(kill_file, "1")
            except OSError:
                pass
        freeze_file = os.path.join(self.leaf, "cgroup.freeze")
        freeze = thaw = None
        if os.path.exists(freeze_file):
            def freeze():
                try:
                    _write(freeze_file, "1")
                except OSError:
                    pass

            def thaw():
                try:
                    _write(freeze_file, "0")
                except OSError:
                    pass
        self._signal_loop(self.procs, freeze, thaw)

    def stats(self) -> dict:
        out: dict = {}
        if not self.created:
            return out
        d = self.leaf
        st = _keyed(_read(os.path.join(d, "cpu.stat")))      # present even without the cpu controller
        if "usage_usec" in st:
            out["cpu_usage_usec"] = st["usage_usec"]
        if "cpu" in self.controllers:
            out["nr_periods"] = st.get("nr_periods", 0)
            out["nr_throttled"] = st.get("nr_throttled", 0)
            out["throttled_usec"] = st.get("throttled_usec", 0)
        if "memory" in self.controllers:
            out["memory_limit"] = _int(_read(os.path.join(d, "memory.max")))
            out["memory_peak"] = _int(_read(os.path.join(d, "memory.peak")))
            ev = _keyed(_read(os.path.join(d, "memory.events")))
            out["oom_kill"] = ev.get("oom_kill", 0)
            out["memory_failcnt"] = ev.get("max", 0)
        if "pids" in self.controllers:
            out["pids_limit"] = _int(_read(os.path.join(d, "pids.max")))
            out["pids_max_events"] = _keyed(_read(os.path.join(d, "pids.events"))).get("max", 0)
            peak = _int(_read(os.path.join(d, "pids.peak")))
            if peak is not None:
                out["pids_peak"] = peak
        return {k: v for k, v in out.items() if v is not None}


# --------------------------------------------------------------------------- the sandbox's cgroup

class Cgroup:
    """The cgroups of one sandbox (one or two drivers). Created by `create_for_sandbox`."""

    def __init__(self, sandbox_id: str, limits: "Limits", drivers: list[_Driver], layout: Layout):
        self.sandbox_id = sandbox_id
        self.limits = limits
        self.drivers = drivers
        self.layout = layout
        self._events: Optional[list[dict]] = None

    @property
    def paths(self) -> list[str]:
        return [d for drv in self.drivers for d in drv.created]

    def backend(self, controller: str) -> Optional[str]:
        """`"v1 <dir>"` / `"v2 <dir>"` for a logical controller, None when not used."""
        for drv in self.drivers:
            d = drv.dir(controller)
            if d:
                return f"v{drv.version} {d}"
        return None

    def add_pid(self, pid: int) -> None:
        for drv in self.drivers:
            if not (drv.version == 1 and self._child_joins or drv.version == 2 and self._child_clones_into):
                drv.add_pid(pid)

    _child_joins = False
    _child_clones_into = False

    def v2_fd(self) -> Optional[int]:
        """A descriptor of the cgroup2 leaf (None without one) for the sandbox's PID 1 to fork the
        program straight into it (clone3 CLONE_INTO_CGROUP), after which add_pid() leaves the v2
        driver alone: PID 1 itself stays where it was in cgroup2 (its v1 cgroups carry the limits),
        its program and all it starts are in the leaf (cgroup.kill, cgroup.events). Moving a pid
        through cgroup.procs would cost the launch an RCU grace period."""
        for drv in self.drivers:
            if drv.version == 2 and drv.created:
                try:
                    fd = os.open(drv.leaf, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
                except OSError as e:
                    raise CgroupError("cgroup2", f"cannot open {drv.leaf}: {_errmsg(e)}") from None
                self._child_clones_into = True
                return fd
        return None

    def join_fds(self) -> list[int]:
        """Write-only descriptors of each v1 leaf's `tasks` file, for the sandbox's first process to
        join by itself (`write(fd, "0")` before it forks anything: sandbox/init.py), after which add_pid()
        leaves the v1 drivers alone.

        Why: a pid written to cgroup.procs (or another task's tid to `tasks`) makes the kernel take
        the global cgroup_threadgroup_rwsem for writing, which waits for an RCU grace period —
        milliseconds, during which a launcher serving many sandboxes could do nothing else. A
        single-threaded task moving itself ("0" to `tasks`) needs no threadgroup lock
        (kernel/cgroup/cgroup.c, cgroup_procs_write_start). Permission is checked against the
        opener's credentials, ours. v2 has no such file for processes: the parent moves it."""
        fds: list[int] = []
        try:
            for drv in self.drivers:
                if drv.version != 1:
                    continue
                for leaf in dict.fromkeys(drv.dirs.values()):
                    fds.append(os.open(os.path.join(leaf, "tasks"), os.O_WRONLY | os.O_CLOEXEC))
        except OSError as e:
            for fd in fds:
                os.close(fd)
            raise CgroupError("cgroup", f"cannot open a tasks file: {_errmsg(e)}") from None
        self._child_joins = bool(fds)
        return fds

    def fds(self) -> list[int]:
        """The supervisor's lock descriptors (O_CLOEXEC). A child that does not exec (the sandbox's
        PID 1) may close its inherited copies; the supervisor's copy keeps the lock."""
        return [fd for drv in self.drivers for fd in drv._locks]

    def procs(self) -> set[int]:
        out: set[int] = set()
        for drv in self.drivers:
            out |= drv.procs()
        return out

    def kill(self) -> None:
        # cgroup2 first where it is there: cgroup.kill is atomic, even against a fork bomb.
        for drv in sorted(self.drivers, key=lambda d: -d.version):
            drv.kill()

    def _stats(self) -> dict:
        merged: dict = {}
        # v1 figures come from the controllers that enforce the limits; v2 fills in the rest
        for drv in sorted(self.drivers, key=lambda d: d.version):
            for k, v in drv.stats().items():
                merged.setdefault(k, v)
        return merged

    def finish(self, pidns_reaped: bool = False) -> list[dict]:
        """After the sandbox exited: kill leftovers, read events and peaks, remove every directory.
        Idempotent (a second call returns the same events). pidns_reaped: the sandbox's pid
        namespace init has been reaped, so the kernel has already ended every process of it (no
        leftovers to look for; a directory that stays busy is still emptied by remove())."""
        if self._events is not None:
            return self._events
        try:
            if not pidns_reaped and self.procs():
                self.kill()
        except OSError:
            pass
        s = self._stats()
        events: list[dict] = []
        L = self.limits
        if s.get("oom_kill", 0) > 0:
            events.append({"type": "oom_kill", "limit": "memory",
                           "value": L.memory if L.memory is not None else s.get("memory_limit"),
                           "peak": s.get("memory_peak"), "count": s["oom_kill"]})
        if s.get("pids_max_events", 0) > 0:
            events.append({"type": "pids_limit", "limit": "pids",
                           "value": L.pids if L.pids is not None else s.get("pids_limit"),
                           "count": s["pids_max_events"]})
        if L.cpus is not None and s.get("nr_throttled", 0) > 0:
            events.append({"type": "cpu_throttled", "limit": "cpus", "value": L.cpus,
                           "nr_throttled": s["nr_throttled"], "throttled_usec": s.get("throttled_usec", 0)})
        res = {"type": "resources"}
        for k in ("memory_peak", "memory_failcnt", "cpu_usage_usec", "nr_periods", "nr_throttled",
                  "throttled_usec", "pids_peak"):
            if k in s:
                res[k] = s[k]
        events.append(res)
        left = []
        for drv in self.drivers:
            left += drv.remove()
        if left:
            events.append({"type": "cgroup_cleanup_failed", "paths": left})
        self._events = events
        return events

    def __repr__(self) -> str:  # pragma: no cover
        return f"Cgroup({self.sandbox_id!r}, {self.paths!r})"


# --------------------------------------------------------------------------- construction

def _requested(limits: "Limits") -> dict[str, list[str]]:
    """logical controller -> the Docker flags that need it."""
    out: dict[str, list[str]] = {}
    for fname, (ctl, flag) in _FIELDS.items():
        v = getattr(limits, fname)
        if v not in (None, ()):
            out.setdefault(ctl, []).append(flag)
    return out


def _only(limits: "Limits", controllers: list[str]) -> "Limits":
    """`limits` with every field whose controller is not in `controllers` cleared."""
    import dataclasses
    clear = {f: (() if isinstance(getattr(limits, f), tuple) else None)
             for f, (ctl, _flag) in _FIELDS.items() if ctl not in controllers}
    return dataclasses.replace(limits, **clear)


def _own_v2_cgroup() -> Optional[str]:
    text = _read("/proc/self/cgroup") or ""
    for line in text.splitlines():
        if line.startswith("0::"):
            return line[3:]
    return None


def delegated_v2_base(layout: Layout) -> Optional[str]:
    """Rootless cgroup2: the topmost cgroup on the caller's own path that is delegated to it (owned
    by the caller, `cgroup.procs` and `cgroup.subtree_control` writable). None when there is none."""
    if not layout.unified:
        return None
    own = _own_v2_cgroup()
    if own is None:
        return None
    uid = os.geteuid()
    path = os.path.normpath(os.path.join(layout.unified, own.lstrip("/")))
    best = None
    while path.startswith(layout.unified) and path != layout.unified:
        try:
            st = os.stat(path)
        except OSError:
            break
        ok = (st.st_uid == uid and os.access(path, os.W_OK | os.X_OK)
              and os.access(os.path.join(path, "cgroup.procs"), os.W_OK)
              and os.access(os.path.join(path, "cgroup.subtree_control"), os.W_OK))
        if not ok:
            break
        best = path
        path = os.path.dirname(path)
    return best


def _parent_name(rootless: bool) -> str:
    """Relative to each hierarchy's root: root's sandboxes under `pysandbox`, a rootless caller's
    under the subtree `delegate()` gave it (below a root-owned parent with finite limits)."""
    return delegated_subtree(os.geteuid()) if rootless else PARENT


def create_for_sandbox(sandbox_id: str, limits: "Limits", *, rootless: bool,
                       layout: Optional[Layout] = None, parent: Optional[str] = None) -> Optional[Cgroup]:
    """Create the sandbox's cgroup(s) and write every requested limit (read back; fail closed).

    Returns None when `limits` asks for nothing. Raises `CgroupError` when a requested limit cannot
    be enforced; raises ValueError for an invalid sandbox id. `parent` replaces the parent's name
    (`pysandbox` / `pysandbox-user-<uid>/sandboxes`) — for tests that need a parent of their own.
    """
    if not limits.any():
        return None
    if not _ID_RE.match(sandbox_id):
        raise ValueError(f"invalid sandbox id {sandbox_id!r}")
    layout = layout or detect()
    requested = _requested(limits)
    if limits.memory_swap is not None:
        if limits.memory is None:
            raise CgroupError("memory", "--memory-swap needs --memory too")
        if limits.memory_swap != -1 and limits.memory_swap < limits.memory:
            raise CgroupError("memory", "--memory-swap (memory+swap) must be at least --memory")
    if limits.cpus is not None and int(round(limits.cpus * PERIOD_US)) < 1000:
        raise CgroupError("cpu", "--cpus below 0.01 cannot be enforced (CFS quota minimum 1 ms)")

    v1map = layout.v1_map
    if parent is not None and not _ID_RE.match(parent):
        raise ValueError(f"invalid parent name {parent!r}")
    parent_name = parent or _parent_name(rootless)
    v2_base = None
    v2_avail: frozenset[str] = frozenset()
    if layout.unified:
        v2_base = delegated_v2_base(layout) if rootless else layout.unified
        if v2_base:
            v2_avail = frozenset((_read(os.path.join(v2_base, "cgroup.controllers")) or "").split())

    v1_ctl: list[str] = []
    v2_ctl: list[str] = []
    required = set(requested)
    for ctl in ("memory", "pids", "cpu", "cpuset", "io"):
        v1name, v2name = _NAMES[ctl]
        needed = ctl in required
        if not needed and ctl not in ("memory", "pids"):
            continue
        if v1name in v1map:
            v1_ctl.append(ctl)
        elif v2name in v2_avail:
            v2_ctl.append(ctl)
        elif needed:
            flags = ", ".join(requested[ctl])
            if rootless and layout.unified and not v2_base and not v1map:
                raise CgroupError(v2name, f"controller not available for this user (no delegated cgroup; "
                                          f"needed for {flags})")
            where = []
            if layout.unified:
                where.append(f"not enabled in cgroup2 at {v2_base or layout.unified}")
            if layout.v1 or not layout.unified:
                where.append("no cgroup v1 hierarchy")
            raise CgroupError(v1name if not layout.unified or layout.v1 else v2name,
                              f"controller not available ({', '.join(where)}; needed for {flags})")
    if v1_ctl and not v2_base:
        # statistics and freeze-then-kill; a cgroup2 directory (hybrid) gives both already (its
        # cpu.stat, its atomic cgroup.kill): two directories fewer to create and remove per sandbox
        for extra in ("cpuacct", "freezer"):
            if extra in v1map:
                v1_ctl.append(extra)

    drivers: list[_Driver] = []
    try:
        if v1_ctl:
            drv = V1Driver(sandbox_id, v1_ctl, v1map, parent_name, rootless)
            drivers.append(drv)
            drv.create(required)
            drv.apply(_only(limits, v1_ctl))
        if v2_base:
            drv2 = V2Driver(sandbox_id, v2_ctl, v2_base, parent or PARENT, rootless)
            try:
                drv2.create(required)
                drivers.append(drv2)
            except CgroupError:
                drv2.remove(timeout=0)
                if v2_ctl and set(v2_ctl) & required:
                    raise
            else:
                drv2.apply(_only(limits, v2_ctl))
    except BaseException:
        for drv in drivers:
            drv.remove(timeout=1.0)
        raise
    return Cgroup(sandbox_id, limits, drivers, layout)


# --------------------------------------------------------------------------- reporting

def summary_line(events: list[dict]) -> Optional[str]:
    """One line for stderr when a limit was hit, else None."""
    parts = []
    for ev in events:
        if ev.get("type") == "oom_kill":
            parts.append(f"killed by OOM (limit {_fmt_bytes(ev.get('value'))}, "
                         f"peak {_fmt_bytes(ev.get('peak'))})")
        elif ev.get("type") == "pids_limit":
            n = ev.get("count", 0)
            parts.append(f"pids limit {ev.get('value')} reached ({n} fork{'s' if n != 1 else ''} refused)")
    if not parts:
        return None
    return "pysandbox: " + "; ".join(parts)


def _populated_tree(path: str) -> bool:
    for root, dirs, _files in os.walk(path):
        if _procs(root):
            return True
    return False


def _remove_tree(path: str) -> bool:
    for root, dirs, _files in os.walk(path, topdown=False):
        try:
            os.rmdir(root)
        except FileNotFoundError:
            pass
        except OSError:
            return False
    return True


def _parents(layout: Layout, rootless: bool) -> list[str]:
    out = []
    name = _parent_name(rootless)
    for mount in dict.fromkeys(m for _, m in layout.v1):
        out.append(os.path.join(mount, name))
    if layout.unified:
        base = delegated_v2_base(layout) if rootless else layout.unified
        if base:
            out.append(os.path.join(base, PARENT))
    return out


def remove_leftover(sandbox_id: str, *, rootless: Optional[bool] = None, layout: Optional[Layout] = None,
                    timeout: float = 3.0) -> list[str]:
    """The leaves of ONE sandbox whose supervisor is known dead (sandbox/reclaim.py): SIGKILL what is
    still in them (PID 1 dies of PDEATHSIG, but maybe not yet), then remove them. Only
    `<pysandbox's parent>/<sandbox_id>` is looked at. Returns problems (empty: nothing left)."""
    if not _ID_RE.match(sandbox_id or ""):
        return []
    if rootless is None:
        rootless = os.geteuid() != 0
    try:
        layout = layout or detect()
    except OSError:
        return []
    problems = []
    for parent in _parents(layout, rootless):
        path = os.path.join(parent, sandbox_id)
        deadline = time.monotonic() + timeout
        while os.path.isdir(path) and not _remove_tree(path):
            if time.monotonic() > deadline:
                problems.append(f"cgroup {path}: still busy")
                break
            if os.path.exists(os.path.join(path, "freezer.state")):
                try:
                    _write(os.path.join(path, "freezer.state"), "THAWED")   # a frozen task takes no SIGKILL
                except OSError:
                    pass
            killfile = os.path.join(path, "cgroup.kill")
            if os.path.exists(killfile):
                try:
                    _write(killfile, "1")
                except OSError:
                    pass
            for root, _dirs, _files in os.walk(path):
                for pid in _procs(root):
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except (ProcessLookupError, PermissionError):
                        pass
            time.sleep(0.01)
    return problems


def reclaim_stale(min_age: float = 2.0, *, rootless: Optional[bool] = None,
                  layout: Optional[Layout] = None) -> list[str]:
    """Remove sandbox cgroups under pysandbox's own parents whose supervisor is gone (no flock held)
    and that hold no processes. Never looks outside those parents. Returns the removed paths."""
    if rootless is None:
        rootless = os.geteuid() != 0
    try:
        layout = layout or detect()
    except OSError:
        return []
    removed = []
    now = time.time()
    for parent in _parents(layout, rootless):
        try:
            entries = list(os.scandir(parent))
        except OSError:
            continue
        for ent in entries:
            if not ent.is_dir(follow_symlinks=False) or not _ID_RE.match(ent.name):
                continue
            try:
                if now - ent.stat(follow_symlinks=False).st_mtime < min_age:
                    continue                      # may be being set up right now
                fd = _lock_dir(ent.path)
            except OSError:
                continue                          # locked: its supervisor is alive
            try:
                if not _populated_tree(ent.path) and _remove_tree(ent.path):
                    removed.append(ent.path)
            finally:
                os.close(fd)
    return removed


def _probe_disk() -> Optional[str]:
    """A whole block device node to probe per-device limits with (never written to)."""
    try:
        names = sorted(os.listdir("/sys/block"))
    except OSError:
        return None
    for name in names:
        if name.startswith(("loop", "ram", "zram", "dm-", "md", "sr")):
            continue
        dev = _read(f"/sys/block/{name}/dev")
        if not dev:
            continue
        path = f"/dev/{name}"
        try:
            st = os.stat(path)
        except OSError:
            continue
        if stat.S_ISBLK(st.st_mode):
            return path
    return None


def _has_cap(bit: int) -> bool:
    for line in (_read("/proc/self/status") or "").splitlines():
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) >> bit & 1)
    return False


_DOCTOR_FILES = {
    "memory": ("memory.limit_in_bytes", "memory.max"),
    "memory-swap": ("memory.memsw.limit_in_bytes", "memory.swap.max"),
    "memory-reservation": ("memory.soft_limit_in_bytes", "memory.low"),
    "cpus": ("cpu.cfs_quota_us", "cpu.max"),
    "cpu-shares": ("cpu.shares", "cpu.weight"),
    "cpuset-cpus": ("cpuset.cpus", "cpuset.cpus"),
    "pids-limit": ("pids.max", "pids.max"),
    "blkio-weight": ("blkio.bfq.weight", "io.weight"),
    "device-read-bps": ("blkio.throttle.read_bps_device", "io.max"),
    "device-write-bps": ("blkio.throttle.write_bps_device", "io.max"),
    "device-read-iops": ("blkio.throttle.read_iops_device", "io.max"),
    "device-write-iops": ("blkio.throttle.write_iops_device", "io.max"),
}


def doctor_report(rootless: bool) -> list[tuple[str, bool, str]]:
    """(control, enforceable, reason) for every limit, found by really creating a probe cgroup with
    that one limit (the same code path as `run`) and removing it again."""
    from policies.plan import DeviceRate, Limits

    rows: list[tuple[str, bool, str]] = []
    try:
        layout = detect()
    except OSError as e:
        return [("cgroups", False, f"cannot read {MOUNTINFO}: {e.strerror}")]
    rows.append(("cgroup layout", layout.mode != "none", layout.describe()))
    cpus = sorted(os.sched_getaffinity(0))
    disk = _probe_disk()
    probes: list[tuple[str, Optional[Limits], str]] = [
        ("memory", Limits(memory=64 << 20), "memory"),
        ("memory-swap", Limits(memory=64 << 20, memory_swap=128 << 20), "memory"),
        ("memory-reservation", Limits(memory_reservation=32 << 20), "memory"),
        ("cpus", Limits(cpus=0.5), "cpu"),
        ("cpu-shares", Limits(cpu_shares=512), "cpu"),
        ("cpuset-cpus", Limits(cpuset_cpus=str(cpus[0])), "cpuset"),
        ("pids-limit", Limits(pids=64), "pids"),
        ("blkio-weight", Limits(blkio_weight=500), "io"),
    ]
    for flag, field_name in (("device-read-bps", "device_read_bps"), ("device-write-bps", "device_write_bps"),
                             ("device-read-iops", "device_read_iops"),
                             ("device-write-iops", "device_write_iops")):
        probes.append((flag, Limits(**{field_name: (DeviceRate(disk, 1 << 20),)}) if disk else None, "io"))
    for i, (control, limits, ctl) in enumerate(probes):
        if limits is None:
            rows.append((control, False, "no block device found to probe"))
            continue
        try:
            cg = create_for_sandbox(f"doctor-{os.getpid()}-{i}", limits, rootless=rootless, layout=layout)
        except CgroupError as e:
            rows.append((control, False, str(e)))
            continue
        except OSError as e:
            rows.append((control, False, f"{ctl}: {e.strerror}"))
            continue
        try:
            where = cg.backend(ctl) if cg else None
        finally:
            if cg:
                cg.finish()
        if where:
            version, path = where.split(" ", 1)
            f1, f2 = _DOCTOR_FILES.get(control, ("", ""))
            fname = f1 if version == "v1" else f2
            rows.append((control, True, f"cgroup {version} {fname} under {os.path.dirname(path)}".replace("  ", " ")))
        else:
            rows.append((control, True, "ok"))
    # killing everything at exit
    v2_base = (delegated_v2_base(layout) if rootless else layout.unified) if layout.unified else None
    freezer = layout.v1_map.get("freezer")
    freezer_ok = bool(freezer) and (not rootless or os.access(os.path.join(freezer, _parent_name(True)), os.W_OK))
    if v2_base:
        rows.append(("kill-all", True, f"cgroup2 cgroup.kill under {v2_base}"))
    elif freezer_ok:
        rows.append(("kill-all", True, "cgroup v1 freezer + SIGKILL"))
    else:
        rows.append(("kill-all", False, "no usable cgroup2 or v1 freezer: only the pid namespace's PID 1 "
                                        "is killed (which takes the sandbox with it)"))
    sys_resource = _has_cap(24)
    try:
        import resource
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        hard_txt = "unlimited" if hard == resource.RLIM_INFINITY else str(hard)
    except Exception:  # pragma: no cover
        hard_txt = "?"
    rows.append(("ulimit", True,
                 "setrlimit in the sandbox" + ("" if sys_resource else
                                               f"; without CAP_SYS_RESOURCE hard limits can only be lowered "
                                               f"(nofile hard {hard_txt})")))
    return rows


# --------------------------------------------------------------------------- delegation (root only)

_DELEGATE_V1 = ("memory", "pids", "cpu", "cpuacct", "cpuset", "blkio", "freezer")
DELEGATE_PREFIX = f"{PARENT}-user-"      # <hierarchy>/pysandbox-user-<uid>: root's, with the user's limits
DELEGATE_SUBTREE = "sandboxes"           # .../pysandbox-user-<uid>/sandboxes: the user's own subtree
DELEGATE_PIDS = 4096                     # documented defaults (docs/limits.md, "Rootless")
DELEGATE_CPU_SHARES = 1024


def delegated_parent(uid: int) -> str:
    """The root-owned, limited parent of uid's delegated subtree (relative to a hierarchy root)."""
    return f"{DELEGATE_PREFIX}{uid}"


def delegated_subtree(uid: int) -> str:
    """uid's own subtree (relative to a hierarchy root): rootless sandboxes' cgroups go below it."""
    return f"{delegated_parent(uid)}/{DELEGATE_SUBTREE}"


def delegate_defaults() -> dict:
    """The limits `delegate` sets when none is given: half the machine's memory, as much swap again,
    4096 tasks, cpu.shares 1024 (one host task's weight at the hierarchy's root)."""
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2
    mem = _page_round(mem)
    return {"memory": mem, "memory_swap": 2 * mem, "pids": DELEGATE_PIDS, "cpu_shares": DELEGATE_CPU_SHARES}


def _delegate_limits(d: str, name: str, lim: dict) -> None:
    """Write (and read back) the per-user limits into the root-owned parent `d` of hierarchy `name`."""
    chk = _Driver._write_checked
    if name == "memory":
        mem, memsw = lim["memory"], lim["memory_swap"]
        want = _page_round(mem)
        memsw_file = os.path.join(d, "memory.memsw.limit_in_bytes")
        has_memsw = os.path.exists(memsw_file)
        # v1 keeps memory <= memory+swap at every step: raise memsw first when it grows
        if has_memsw and (_int(_read(memsw_file)) or 0) < mem:
            chk("memory", d, "memory.memsw.limit_in_bytes", memsw, lambda g: _int(g) == _page_round(memsw))
        chk("memory", d, "memory.limit_in_bytes", mem, lambda g: _int(g) == want)
        if has_memsw:
            chk("memory", d, "memory.memsw.limit_in_bytes", memsw, lambda g: _int(g) == _page_round(memsw))
        V1Driver._check_hierarchy(d)
    elif name == "pids":
        chk("pids", d, "pids.max", lim["pids"])
    if os.path.exists(os.path.join(d, "cpu.shares")):
        chk("cpu", d, "cpu.shares", lim["cpu_shares"])


def delegate(uid: int, gid: int, layout: Optional[Layout] = None, *, memory: Optional[int] = None,
             memory_swap: Optional[int] = None, pids: Optional[int] = None,
             cpu_shares: Optional[int] = None) -> list[str]:
    """As root: give uid a subtree of its own in every cgroup v1 hierarchy, below a parent with finite
    limits that only root can change, so that rootless `run` can enforce limits:

        <hierarchy>/pysandbox-user-<uid>/            root:root 0755; memory.limit_in_bytes (+memsw),
                                                     pids.max, cpu.shares set here (defaults:
                                                     delegate_defaults())
        <hierarchy>/pysandbox-user-<uid>/sandboxes/  owned by uid (directory, cgroup.procs, tasks)

    The user creates sandbox cgroups below `sandboxes` and may set any limit there, but v1 limits
    are hierarchical: whatever a child says, the parent's memory, memsw and pids limits bound the
    whole subtree, and the parent's cpu.shares is its weight against the rest of the machine. The
    parent's files are root's (0644): the user cannot raise them. Idempotent: run again, it reuses
    the directories and sets the limits given (or the defaults). cgroup2 is delegated by systemd
    instead (`Delegate=yes`), which puts the caller inside its subtree. Returns the user's
    subtrees."""
    if os.geteuid() != 0:
        raise CgroupError("cgroups", "delegation needs root")
    if uid == 0:
        raise CgroupError("cgroups", "root needs no delegation")
    layout = layout or detect()
    v1 = layout.v1_map
    mounts = list(dict.fromkeys(v1[c] for c in _DELEGATE_V1 if c in v1))
    if not mounts:
        raise CgroupError("cgroups", "no cgroup v1 hierarchy to delegate (cgroup2: delegate with systemd, "
                                     "e.g. systemd-run --user --scope -p Delegate=yes)")
    lim = delegate_defaults()
    for k, v in (("memory", memory), ("memory_swap", memory_swap), ("pids", pids), ("cpu_shares", cpu_shares)):
        if v is not None:
            lim[k] = v
    if memory is not None and memory_swap is None:
        lim["memory_swap"] = 2 * memory
    if lim["memory"] < (6 << 20) or lim["memory_swap"] < lim["memory"] or lim["pids"] < 1 \
            or not (2 <= lim["cpu_shares"] <= 262144):
        raise CgroupError("cgroups", "delegate: memory must be at least 6 MiB, memory+swap at least memory, "
                                     "pids at least 1, cpu-shares 2..262144 (the limits must be finite)")
    out = []
    for mount in mounts:
        names = [c for c, m in layout.v1 if m == mount]
        name = "memory" if "memory" in names else "pids" if "pids" in names else os.path.basename(mount)
        top = os.path.join(mount, delegated_parent(uid))
        sub = os.path.join(mount, delegated_subtree(uid))
        for d in (top, sub):
            try:
                os.mkdir(d, 0o755)
            except FileExistsError:
                pass
            except OSError as e:
                raise CgroupError(name, f"cannot create {d}: {_errmsg(e)}") from None
        st = os.lstat(top)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != 0:
            # a parent the user could own would be a parent whose limits the user could change
            raise CgroupError(name, f"{top} is not root's directory; remove it and delegate again")
        os.chmod(top, 0o755)
        if os.path.exists(os.path.join(top, "cpuset.cpus")):
            V1Driver._cpuset_inherit(top, mount)
            V1Driver._cpuset_inherit(sub, top)
        _delegate_limits(top, name, lim)
        for f in ("", "cgroup.procs", "tasks"):
            os.chown(os.path.join(sub, f) if f else sub, uid, gid)
        out.append(sub)
    return out


def undelegate(uid: int, layout: Optional[Layout] = None) -> list[str]:
    """Remove uid's delegated subtrees and their parents (and any empty sandbox cgroups left below
    them); also the unlimited `<hierarchy>/pysandbox-<uid>` an older pysandbox delegated."""
    if os.geteuid() != 0:
        raise CgroupError("cgroups", "undelegation needs root")
    layout = layout or detect()
    out = []
    for mount in dict.fromkeys(m for _, m in layout.v1):
        for d in (os.path.join(mount, delegated_parent(uid)), os.path.join(mount, f"{PARENT}-{uid}")):
            if os.path.isdir(d) and not os.path.islink(d):
                if _populated_tree(d):
                    raise CgroupError(os.path.basename(mount), f"{d} still holds processes")
                if not _remove_tree(d):
                    raise CgroupError(os.path.basename(mount), f"cannot remove {d}")
                out.append(d)
    return out


def list_sandboxes(rootless: Optional[bool] = None, layout: Optional[Layout] = None) -> dict[str, list[str]]:
    """sandbox id -> its cgroup directories, under pysandbox's own parents."""
    if rootless is None:
        rootless = os.geteuid() != 0
    layout = layout or detect()
    out: dict[str, list[str]] = {}
    for parent in _parents(layout, rootless):
        try:
            for ent in os.scandir(parent):
                if ent.is_dir(follow_symlinks=False) and _ID_RE.match(ent.name):
                    out.setdefault(ent.name, []).append(ent.path)
        except OSError:
            continue
    return out


# --------------------------------------------------------------------------- pause / unpause

def _freeze_files(paths, sandbox_id: str) -> list[tuple[str, str]]:
    """[(kind, file)] of a sandbox's freezer controls: cgroup2 `cgroup.freeze` of its leaf, the v1
    freezer hierarchy's `freezer.state`. Only leaves named after the sandbox (its own)."""
    out = []
    for p in paths or ():
        if not isinstance(p, str) or os.path.basename(p) != sandbox_id or not _ID_RE.match(sandbox_id or ""):
            continue
        if os.path.exists(os.path.join(p, "cgroup.freeze")):
            out.append(("v2", os.path.join(p, "cgroup.freeze")))
        elif os.path.exists(os.path.join(p, "freezer.state")):
            out.append(("v1", os.path.join(p, "freezer.state")))
    return out


def can_freeze(paths, sandbox_id: str) -> bool:
    return bool(_freeze_files(paths, sandbox_id))


def is_frozen(paths, sandbox_id: str) -> bool:
    """Whether the sandbox's cgroup is frozen (or freezing): v2 `cgroup.freeze` 1, v1 not THAWED."""
    for kind, f in _freeze_files(paths, sandbox_id):
        v = (_read(f) or "").strip()
        if (kind == "v2" and v == "1") or (kind == "v1" and v in ("FROZEN", "FREEZING")):
            return True
    return False


def set_frozen(paths, sandbox_id: str, frozen: bool, timeout: float = 5.0) -> None:
    """Freeze (or thaw) every process of the sandbox's cgroup and wait until the kernel says it is
    done (v2 `cgroup.events` "frozen 1", v1 `freezer.state` FROZEN). CgroupError when the sandbox has
    no freezer (no cgroup: its profile sets no limits) or it does not complete in time."""
    files = _freeze_files(paths, sandbox_id)
    if not files:
        raise CgroupError("freezer", "the sandbox has no cgroup with a freezer (a profile without limits "
                                     "gets no cgroup); cannot pause it")
    for kind, f in files:
        try:
            _write(f, ("1" if frozen else "0") if kind == "v2" else ("FROZEN" if frozen else "THAWED"))
        except OSError as e:
            raise CgroupError("freezer", f"cannot write {f}: {_errmsg(e)}") from None
    deadline = time.monotonic() + timeout
    for kind, f in files:
        while True:
            if kind == "v2":
                done = _keyed(_read(os.path.join(os.path.dirname(f), "cgroup.events"))).get("frozen") == int(frozen)
            else:
                done = (_read(f) or "").strip() == ("FROZEN" if frozen else "THAWED")
            if done:
                break
            if time.monotonic() > deadline:
                raise CgroupError("freezer", f"{f}: not {'frozen' if frozen else 'thawed'} after {timeout:g}s")
            if kind == "v1" and frozen:
                with contextlib.suppress(OSError):
                    _write(f, "FROZEN")        # v1: FREEZING is retried by writing FROZEN again
            time.sleep(0.005)
