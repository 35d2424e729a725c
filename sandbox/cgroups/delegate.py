"""Cgroup v1 delegation (root only): a subtree of its own for a user in every hierarchy, below a
root-owned parent with finite limits, so that rootless `run` can enforce limits
(`pysandbox cgroups delegate|undelegate`, docs/limits.md "Rootless"). cgroup2 is delegated by
systemd instead (`Delegate=yes`)."""
from __future__ import annotations

import os
import stat
from typing import Optional

from .files import CgroupError, errmsg, number, page_round, read, write_checked
from .layout import Layout, detect
from .leftover import remove_tree, tree_procs
from .placement import PARENT, delegated_parent, delegated_subtree
from .v1 import check_hierarchy, cpuset_inherit

_DELEGATE_V1 = ("memory", "pids", "cpu", "cpuacct", "cpuset", "blkio", "freezer")
DELEGATE_PIDS = 4096                     # documented defaults (docs/limits.md, "Rootless")
DELEGATE_CPU_SHARES = 1024


def delegate_defaults() -> dict:
    """The limits `delegate` sets when none is given: half the machine's memory, as much swap again,
    4096 tasks, cpu.shares 1024 (one host task's weight at the hierarchy's root)."""
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2
    mem = page_round(mem)
    return {"memory": mem, "memory_swap": 2 * mem, "pids": DELEGATE_PIDS, "cpu_shares": DELEGATE_CPU_SHARES}


def _delegate_limits(d: str, name: str, lim: dict) -> None:
    """Write (and read back) the per-user limits into the root-owned parent `d` of hierarchy `name`."""
    chk = write_checked
    if name == "memory":
        mem, memsw = lim["memory"], lim["memory_swap"]
        want = page_round(mem)
        memsw_file = os.path.join(d, "memory.memsw.limit_in_bytes")
        has_memsw = os.path.exists(memsw_file)
        # v1 keeps memory <= memory+swap at every step: raise memsw first when it grows
        if has_memsw and (number(read(memsw_file)) or 0) < mem:
            chk("memory", d, "memory.memsw.limit_in_bytes", memsw, lambda g: number(g) == page_round(memsw))
        chk("memory", d, "memory.limit_in_bytes", mem, lambda g: number(g) == want)
        if has_memsw:
            chk("memory", d, "memory.memsw.limit_in_bytes", memsw, lambda g: number(g) == page_round(memsw))
        check_hierarchy(d)
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
                raise CgroupError(name, f"cannot create {d}: {errmsg(e)}") from None
        st = os.lstat(top)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != 0:
            # a parent the user could own would be a parent whose limits the user could change
            raise CgroupError(name, f"{top} is not root's directory; remove it and delegate again")
        os.chmod(top, 0o755)
        if os.path.exists(os.path.join(top, "cpuset.cpus")):
            cpuset_inherit(top, mount)
            cpuset_inherit(sub, top)
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
                if tree_procs(d):
                    raise CgroupError(os.path.basename(mount), f"{d} still holds processes")
                if not remove_tree(d):
                    raise CgroupError(os.path.basename(mount), f"cannot remove {d}")
                out.append(d)
    return out
