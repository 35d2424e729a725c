"""`pysandbox doctor`'s cgroup rows: every limit probed by really creating a cgroup with that one
limit (the same code path as `run`) and removing it again; how a sandbox is killed; rlimits."""
from __future__ import annotations

import os
import resource
import stat
from typing import Optional

from policies.plan import DeviceRate, Limits

from . import placement
from .files import CgroupError, read
from .layout import MOUNTINFO, detect
from .manager import create_for_sandbox


def probe_disk() -> Optional[str]:
    """A whole block device node to probe per-device limits with (never written to)."""
    try:
        names = sorted(os.listdir("/sys/block"))
    except OSError:
        return None
    for name in names:
        if name.startswith(("loop", "ram", "zram", "dm-", "md", "sr")):
            continue
        dev = read(f"/sys/block/{name}/dev")
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


def has_cap(bit: int) -> bool:
    for line in (read("/proc/self/status") or "").splitlines():
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
    rows: list[tuple[str, bool, str]] = []
    try:
        layout = detect()
    except OSError as e:
        return [("cgroups", False, f"cannot read {MOUNTINFO}: {e.strerror}")]
    rows.append(("cgroup layout", layout.mode != "none", layout.describe()))
    cpus = sorted(os.sched_getaffinity(0))
    disk = probe_disk()
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
    v2_base = placement.v2_base(layout, rootless)
    freezer = layout.v1_map.get("freezer")
    freezer_ok = bool(freezer) and (not rootless
                                    or os.access(os.path.join(freezer, placement.parent_name(True)), os.W_OK))
    if v2_base:
        rows.append(("kill-all", True, f"cgroup2 cgroup.kill under {v2_base}"))
    elif freezer_ok:
        rows.append(("kill-all", True, "cgroup v1 freezer + SIGKILL"))
    else:
        rows.append(("kill-all", False, "no usable cgroup2 or v1 freezer: only the pid namespace's PID 1 "
                                        "is killed (which takes the sandbox with it)"))
    sys_resource = has_cap(24)
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        hard_txt = "unlimited" if hard == resource.RLIM_INFINITY else str(hard)
    except Exception:  # pragma: no cover
        hard_txt = "?"
    rows.append(("ulimit", True,
                 "setrlimit in the sandbox" + ("" if sys_resource else
                                               f"; without CAP_SYS_RESOURCE hard limits can only be lowered "
                                               f"(nofile hard {hard_txt})")))
    return rows
