"""The cgroup v2 driver (runc's `fs2`): one directory `<base>/pysandbox/<id>` in the unified
hierarchy. With no controllers (hybrid machines) it only tracks and kills."""
from __future__ import annotations

import os

TYPE_CHECKING = False  # annotations only (postponed): importing typing is ~2 ms of the launch path

from . import freezer
from .driver import Driver
from .files import (CgroupError, bfq_disks, block_device, cpu_set, errmsg, keyed, lock_dir, number, page_round,
                    read, schedulers, write, write_checked)
from .limits import NAMES, PERIOD_US
from .placement import PARENT

if TYPE_CHECKING:  # pragma: no cover
    from typing import Optional
    from policies.plan import Limits


class V2Driver(Driver):
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

    @property
    def nested(self) -> bool:
        """The parent is more than one level below the base (an engine's cgroupsPath)."""
        return os.path.dirname(self.parent) != self.base

    def _chain(self) -> list[str]:
        out = [self.parent]
        while out[-1] != self.base and len(out[-1]) > len(self.base):
            out.append(os.path.dirname(out[-1]))
        return out[::-1]

    def dir(self, c: str) -> Optional[str]:
        return self.leaf if (c in self.controllers and self.created) else None

    def _enable(self, d: str, ctl: str, flag_owner: str) -> None:
        sub = os.path.join(d, "cgroup.subtree_control")
        if ctl in (read(sub) or "").split():
            return
        try:
            write(sub, "+" + ctl)
        except OSError as e:
            raise CgroupError(flag_owner, f"cannot enable the controller in {sub}: {errmsg(e)}") from None

    def create(self, required: set[str]) -> None:
        avail = set((read(os.path.join(self.base, "cgroup.controllers")) or "").split())
        wanted = []
        for c in self.controllers:
            name = NAMES[c][1]
            if name in avail:
                wanted.append(c)
            elif c in required:
                raise CgroupError(name, f"controller not enabled in cgroup2 at {self.base}")
        self.controllers = wanted
        try:
            os.makedirs(self.parent, 0o755) if self.nested else self._mkdir(self.parent, 0o755)
        except FileExistsError:
            pass
        except OSError as e:
            raise CgroupError(NAMES[wanted[0]][1] if wanted else "cgroup2",
                              f"cannot create {self.parent}: {errmsg(e)}") from None
        for c in list(self.controllers):
            name = NAMES[c][1]
            try:
                for d in self._chain():            # the base, any intermediate cgroup, the parent
                    self._enable(d, name, name)
            except CgroupError:
                if c in required:
                    raise
                self.controllers.remove(c)
        try:
            self._mkdir(self.leaf, 0o755)
        except FileExistsError:
            raise CgroupError("cgroup2", f"cgroup {self.leaf} already exists (sandbox id in use)") from None
        except OSError as e:
            raise CgroupError(NAMES[self.controllers[0]][1] if self.controllers else "cgroup2",
                              f"cannot create {self.leaf}: {errmsg(e)}") from None
        self.created.append(self.leaf)
        try:
            self._locks.append(lock_dir(self.leaf))
        except OSError as e:
            raise CgroupError("cgroup2", f"cannot lock {self.leaf}: {errmsg(e)}") from None
        have = set((read(os.path.join(self.leaf, "cgroup.controllers")) or "").split())
        for c in list(self.controllers):
            if NAMES[c][1] not in have:
                if c in required:
                    raise CgroupError(NAMES[c][1], f"controller not available in {self.leaf}")
                self.controllers.remove(c)

    def _set(self, c: str, fname: str, value, check=None, flag: str = "") -> None:
        name = NAMES[c][1]
        if c not in self.controllers:
            raise CgroupError(name, "controller not available")
        write_checked(name, self.leaf, fname, value, check, flag)

    def apply(self, limits: "Limits") -> None:
        L = limits
        if L.memory is not None and L.memory >= 0:
            want = page_round(L.memory)
            self._set("memory", "memory.max", L.memory, lambda g: number(g) == want, "--memory")
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
                    self._set("memory", "memory.swap.max", s, lambda g: number(g) == page_round(s),
                              "--memory-swap")
            elif os.path.exists(swap):
                self._set("memory", "memory.swap.max", L.memory,
                          lambda g: number(g) == want, "--memory")
            oom_group = os.path.join(self.leaf, "memory.oom.group")
            if os.path.exists(oom_group):       # OOM kills the whole sandbox, not one task
                try:
                    write(oom_group, "1")
                except OSError:
                    pass
        if L.memory_reservation is not None:
            r = L.memory_reservation
            self._set("memory", "memory.low", "max" if r == -1 else r,
                      lambda g: number(g) == (-1 if r == -1 else page_round(r)), "--memory-reservation")
        if L.cpus is not None:
            quota = int(round(L.cpus * PERIOD_US))
            self._set("cpu", "cpu.max", f"{quota} {PERIOD_US}", flag="--cpus")
        if L.cpu_shares is not None:
            from policies.units import cpu_shares_to_weight   # lazy: ~2 ms, off the launch path unless set
            self._set("cpu", "cpu.weight", cpu_shares_to_weight(L.cpu_shares), flag="--cpu-shares")
        if L.cpuset_cpus is not None:
            want_set = cpu_set(L.cpuset_cpus)
            self._set("cpuset", "cpuset.cpus", L.cpuset_cpus,
                      lambda g: g is not None and cpu_set(g) == want_set, "--cpuset-cpus")
        if L.pids is not None:
            self._set("pids", "pids.max", "max" if L.pids <= 0 else L.pids, flag="--pids-limit")
        if L.blkio_weight is not None:
            from policies.units import blkio_weight_to_io_weight   # lazy, as above
            w = blkio_weight_to_io_weight(L.blkio_weight)
            # io.weight acts only where iocost is enabled (root io.cost.qos), io.bfq.weight only under BFQ
            iocost = "enable=1" in (read(os.path.join(os.path.dirname(self.parent), "io.cost.qos")) or "")
            choices = ([("io.weight", f"default {w}")] if iocost else []) + \
                ([("io.bfq.weight", f"default {L.blkio_weight}")] if bfq_disks() else [])
            if not choices:
                raise CgroupError("io", "--blkio-weight: neither iocost (io.cost.qos) nor the BFQ scheduler is "
                                        f"active ({schedulers()}), so a weight would have no effect")
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
                dev = block_device(rate.path, "io")
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
            write(os.path.join(self.leaf, "cgroup.procs"), str(pid))
        except OSError as e:
            name = NAMES[self.controllers[0]][1] if self.controllers else "cgroup2"
            raise CgroupError(name, f"cannot move pid {pid} into {self.leaf}: {errmsg(e)}") from None

    def populated(self) -> Optional[bool]:
        ev = keyed(read(os.path.join(self.leaf, "cgroup.events")))
        return bool(ev["populated"]) if "populated" in ev else None

    def kill(self) -> None:
        if not self.created:
            return
        freezer.cgroup_kill(self.leaf)
        freeze_file = os.path.join(self.leaf, "cgroup.freeze")
        freeze, thaw = freezer.v2_ops(freeze_file) if os.path.exists(freeze_file) else (None, None)
        freezer.kill_all(self.procs, freeze, thaw)

    def stats(self) -> dict:
        out: dict = {}
        if not self.created:
            return out
        d = self.leaf
        st = keyed(read(os.path.join(d, "cpu.stat")))      # present even without the cpu controller
        if "usage_usec" in st:
            out["cpu_usage_usec"] = st["usage_usec"]
        if "cpu" in self.controllers:
            out["nr_periods"] = st.get("nr_periods", 0)
            out["nr_throttled"] = st.get("nr_throttled", 0)
            out["throttled_usec"] = st.get("throttled_usec", 0)
        if "memory" in self.controllers:
            out["memory_limit"] = number(read(os.path.join(d, "memory.max")))
            out["memory_peak"] = number(read(os.path.join(d, "memory.peak")))
            ev = keyed(read(os.path.join(d, "memory.events")))
            out["oom_kill"] = ev.get("oom_kill", 0)
            out["memory_failcnt"] = ev.get("max", 0)
        if "pids" in self.controllers:
            out["pids_limit"] = number(read(os.path.join(d, "pids.max")))
            out["pids_max_events"] = keyed(read(os.path.join(d, "pids.events"))).get("max", 0)
            peak = number(read(os.path.join(d, "pids.peak")))
            if peak is not None:
                out["pids_peak"] = peak
        return {k: v for k, v in out.items() if v is not None}
