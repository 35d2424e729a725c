"""The cgroup v1 driver (runc's `fs`): a directory in every hierarchy that carries one of the
sandbox's controllers."""
from __future__ import annotations

import os

TYPE_CHECKING = False  # annotations only (postponed): importing typing is ~2 ms of the launch path

from . import freezer
from .driver import Driver
from .files import (UNLIMITED, CgroupError, bfq_disks, block_device, cpu_set, errmsg, keyed, lock_dir,
                    number, page_round, read, schedulers, write, write_checked)
from .limits import FIELDS, NAMES, PERIOD_US

if TYPE_CHECKING:  # pragma: no cover
    from typing import Optional
    from policies.plan import Limits


def v1name(c: str) -> str:
    """A logical controller's v1 name ("io" is "blkio")."""
    return NAMES[c][0] if c in NAMES else c


def cpuset_inherit(d: str, parent: str) -> None:
    """A new v1 cpuset has empty cpus/mems (no task can join it): copy the parent's."""
    for f in ("cpuset.mems", "cpuset.cpus"):
        cur = (read(os.path.join(d, f)) or "").strip()
        if cur:
            continue
        val = (read(os.path.join(parent, f)) or "").strip()
        try:
            write(os.path.join(d, f), val)
        except OSError as e:
            raise CgroupError("cpuset", f"cannot initialise {d}/{f}: {errmsg(e)}") from None


def check_hierarchy(leaf: str) -> None:
    """v1 memory: with use_hierarchy=0 (kernels before 6.0 allowed it) a child cgroup's usage is
    not charged to its parent, so a limit would not cover sub-cgroups. Require 1."""
    f = os.path.join(leaf, "memory.use_hierarchy")
    if (read(f) or "1").strip() == "1":
        return
    try:
        write(f, "1")
    except OSError:
        pass
    if (read(f) or "").strip() != "1":
        raise CgroupError("memory", f"memory.use_hierarchy is 0 in {leaf} and cannot be set to 1 "
                                    "(limits would not cover child cgroups)")


class V1Driver(Driver):
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
        self.mounts = {c: mounts[v1name(c)] for c in controllers}        # logical -> mount point
        self.dirs: dict[str, str] = {}                                    # logical -> leaf dir

    def dir(self, c: str) -> Optional[str]:
        return self.dirs.get(c)

    def create(self, required: set[str]) -> None:
        by_mount: dict[str, str] = {}
        for c in self.controllers:
            mount = self.mounts[c]
            if mount in by_mount:                  # co-mounted with a controller already done
                self.dirs[c] = by_mount[mount]
                continue
            name = v1name(c)
            try:
                leaf = self._create_one(c, mount)
            except CgroupError:
                if c in required:
                    raise
                continue                            # optional controller: statistics only
            by_mount[mount] = leaf
            self.dirs[c] = leaf
            if name == "memory":
                check_hierarchy(leaf)

    def _create_one(self, c: str, mount: str) -> str:
        name = v1name(c)
        parent = os.path.join(mount, self.parent_name)
        if self.rootless:
            if not os.path.isdir(parent) or not os.access(parent, os.W_OK | os.X_OK):
                raise CgroupError(name, "controller not available for this user (no delegated cgroup: "
                                        f"{parent} must exist and be writable by uid {os.geteuid()}; "
                                        "as root: pysandbox cgroups delegate USER)")
        else:
            try:
                (os.makedirs if "/" in self.parent_name else self._mkdir)(parent, 0o755)   # (an engine's path)
            except FileExistsError:
                pass
            except OSError as e:
                raise CgroupError(name, f"cannot create {parent}: {errmsg(e)}") from None
        if name == "cpuset":
            cpuset_inherit(parent, os.path.dirname(parent))
        leaf = os.path.join(parent, self.sandbox_id)
        try:
            self._mkdir(leaf, 0o755)
        except FileExistsError:
            raise CgroupError(name, f"cgroup {leaf} already exists (sandbox id in use)") from None
        except OSError as e:
            raise CgroupError(name, f"cannot create {leaf}: {errmsg(e)}") from None
        self.created.append(leaf)
        try:
            self._locks.append(lock_dir(leaf))
        except OSError as e:
            raise CgroupError(name, f"cannot lock {leaf}: {errmsg(e)}") from None
        if name == "cpuset":
            cpuset_inherit(leaf, parent)
        return leaf

    def _set(self, c: str, fname: str, value, check=None, flag: str = "") -> None:
        name = v1name(c)
        leaf = self.dirs.get(c)
        if leaf is None:
            raise CgroupError(name, "controller not available")
        write_checked(name, leaf, fname, value, check, flag)

    def apply(self, limits: "Limits") -> None:
        L = limits
        # memory ------------------------------------------------------------------------
        if L.memory is not None and L.memory >= 0:
            want = page_round(L.memory)
            self._set("memory", "memory.limit_in_bytes", L.memory,
                      lambda g: number(g) == want, "--memory")
            memsw = os.path.join(self.dirs["memory"], "memory.memsw.limit_in_bytes")
            if L.memory_swap is not None:
                if not os.path.exists(memsw):
                    raise CgroupError("memory", "--memory-swap: swap accounting not available "
                                                "(no memory.memsw.limit_in_bytes; boot with swapaccount=1)")
                if L.memory_swap == -1:
                    self._set("memory", "memory.memsw.limit_in_bytes", -1,
                              lambda g: (number(g) or 0) >= UNLIMITED, "--memory-swap")
                else:
                    ws = page_round(L.memory_swap)
                    self._set("memory", "memory.memsw.limit_in_bytes", L.memory_swap,
                              lambda g: number(g) == ws, "--memory-swap")
            elif os.path.exists(memsw):
                # Docker: --memory without --memory-swap allows as much swap as memory.
                ws = page_round(2 * L.memory)
                self._set("memory", "memory.memsw.limit_in_bytes", 2 * L.memory,
                          lambda g: number(g) == ws, "--memory")
        if L.memory_reservation is not None:
            want_r = page_round(L.memory_reservation)
            self._set("memory", "memory.soft_limit_in_bytes", L.memory_reservation,
                      lambda g: number(g) == want_r or (L.memory_reservation == -1
                                                        and (number(g) or 0) >= UNLIMITED),
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
            want_set = cpu_set(L.cpuset_cpus)
            allowed = (read(os.path.join(os.path.dirname(self.dirs.get("cpuset", "/")), "cpuset.cpus")) or "").strip()
            try:
                self._set("cpuset", "cpuset.cpus", L.cpuset_cpus,
                          lambda g: g is not None and cpu_set(g) == want_set, "--cpuset-cpus")
            except CgroupError as e:
                raise CgroupError("cpuset", f"{e.reason} (allowed CPUs: {allowed or '?'})") from None
        # pids --------------------------------------------------------------------------
        if L.pids is not None:
            val = "max" if L.pids <= 0 else str(L.pids)
            self._set("pids", "pids.max", val, flag="--pids-limit")
        # blkio -------------------------------------------------------------------------
        if L.blkio_weight is not None:
            leaf = self.dirs.get("io")
            if not bfq_disks():
                raise CgroupError("blkio", "--blkio-weight: no disk uses the BFQ I/O scheduler "
                                           f"({schedulers()}), so a proportional weight would have no effect")
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
            flag = FIELDS[field_name][1]
            for rate in getattr(L, field_name):
                major, minor = block_device(rate.path, "blkio")
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
                write(os.path.join(leaf, "cgroup.procs"), str(pid))
            except OSError as e:
                raise CgroupError(v1name(c), f"cannot move pid {pid} into {leaf}: {errmsg(e)}") from None

    def leaves(self) -> list[str]:
        """Each hierarchy's leaf once (co-mounted controllers share one)."""
        return list(dict.fromkeys(self.dirs.values()))

    def kill(self) -> None:
        fz = self.dirs.get("freezer")
        freeze, thaw = freezer.v1_ops(os.path.join(fz, "freezer.state")) if fz else (None, None)
        freezer.kill_all(self.procs, freeze, thaw)

    def stats(self) -> dict:
        out: dict = {}
        mem = self.dirs.get("memory")
        if mem:
            out["memory_limit"] = number(read(os.path.join(mem, "memory.limit_in_bytes")))
            out["memory_peak"] = number(read(os.path.join(mem, "memory.max_usage_in_bytes")))
            out["memory_failcnt"] = number(read(os.path.join(mem, "memory.failcnt")))
            oc = keyed(read(os.path.join(mem, "memory.oom_control")))
            if "oom_kill" in oc:
                out["oom_kill"] = oc["oom_kill"]
        pids = self.dirs.get("pids")
        if pids:
            out["pids_limit"] = number(read(os.path.join(pids, "pids.max")))
            out["pids_max_events"] = keyed(read(os.path.join(pids, "pids.events"))).get("max", 0)
            peak = number(read(os.path.join(pids, "pids.peak")))
            if peak is not None:
                out["pids_peak"] = peak
        cpu = self.dirs.get("cpu")
        if cpu:
            st = keyed(read(os.path.join(cpu, "cpu.stat")))
            out["nr_periods"] = st.get("nr_periods", 0)
            out["nr_throttled"] = st.get("nr_throttled", 0)
            out["throttled_usec"] = st.get("throttled_time", 0) // 1000
        acct = self.dirs.get("cpuacct")
        if acct:
            usage = number(read(os.path.join(acct, "cpuacct.usage")))
            if usage is not None:
                out["cpu_usage_usec"] = usage // 1000
        return {k: v for k, v in out.items() if v is not None}
