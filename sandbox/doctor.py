"""`pysandbox doctor`: what this kernel and this caller can enforce. Each check is real
(a probe in a throw-away child or a kernel interface read), never a guess from versions."""
from __future__ import annotations

import os

from . import _sys


def kernel_version():
    """(major, minor) of the running kernel, None when its release string is not numeric (the
    compiler and lint rules use it for version-dependent syscalls)."""
    rel = os.uname().release.split("-")[0].split(".")
    try:
        return tuple(int(x) for x in rel[:2])
    except ValueError:
        return None


def _probe(flags: int) -> tuple[bool, str]:
    """Try to create namespaces in a throw-away child."""
    r, w = os.pipe()
    try:
        pid = _sys.clone_fork(flags)
    except OSError as e:
        os.close(r); os.close(w)
        return False, e.strerror
    if pid == 0:
        os._exit(0)
    os.close(w); os.close(r)
    os.waitpid(pid, 0)
    return True, ""


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""


def _subordinate_row(root: bool) -> tuple[str, bool, str]:
    """uid_map: subordinate (docs/profile-format.md, "Rootless id ranges"): usable by this caller?"""
    name = "subordinate ids (uid_map: subordinate)"
    if root:
        return (name, True, "root: the automatic range 1000000000-1000065535")
    from policies import subids
    from . import idmap
    try:
        # (both files name the user, by name or uid)
        have = {w: sum(n for _, n in subids.ranges(w, os.geteuid())) for w in ("uid", "gid")}
    except subids.SubidError as e:
        return (name, False, str(e))
    problem = idmap.helper_problem()
    short = [f"{subids.FILES[w]} holds {have[w]}" for w in ("uid", "gid") if have[w] < subids.WANT]
    if problem or short:
        return (name, False, "; ".join(short + ([problem] if problem else [])) +
                f" (needs {subids.WANT}: usermod --add-subuids/--add-subgids FIRST-LAST USER)")
    return (name, True, f"{have['uid']} uids, {have['gid']} gids (newuidmap/newgidmap)")


def checks() -> list[tuple[str, bool, str]]:
    rows = []
    root = os.geteuid() == 0
    rows.append(("caller", True, "root" if root else f"unprivileged (uid {os.geteuid()})"))
    rows.append(("kernel", True, os.uname().release))
    ok, why = _probe(_sys.CLONE_NEWUSER)
    rows.append(("user namespace", ok, "available" if ok else f"cannot create: {why}"))
    base = _sys.CLONE_NEWUSER if (ok or not root) else 0
    for name, flag in (("pid namespace", _sys.CLONE_NEWPID), ("mount namespace", _sys.CLONE_NEWNS),
                       ("network namespace", _sys.CLONE_NEWNET), ("uts namespace", _sys.CLONE_NEWUTS),
                       ("ipc namespace", _sys.CLONE_NEWIPC), ("cgroup namespace", _sys.CLONE_NEWCGROUP)):
        ok2, why2 = _probe(base | flag)
        rows.append((name, ok2, "available" if ok2 else f"cannot create: {why2}"))
    rows.append(("time namespace", os.path.exists("/proc/self/ns/time"), "available" if os.path.exists("/proc/self/ns/time") else "not in this kernel"))
    actions = _read("/proc/sys/kernel/seccomp/actions_avail")
    rows.append(("seccomp filter", bool(actions), f"actions: {actions}" if actions else "not available"))
    rows.append(("seccomp user notification", "user_notif" in actions,
                 "available (audit records each denial exactly)" if "user_notif" in actions else "missing: audit falls back to kernel log"))
    rows.append(("no_new_privs", True, "available"))
    abi = _sys.landlock_abi()                # the kernel's answer (securityfs may not be mounted)
    scoped = abi >= _sys.LANDLOCK_SCOPE_ABI
    rows.append(("landlock", scoped,
                 f"ABI {abi}: the program is kept out of PID 1's reach whatever its capabilities" if scoped else
                 (f"ABI {abi}" if abi else "not available") + ": profiles granting SYS_PTRACE are refused "
                 "(PID 1 would be reachable; needs ABI 6, Linux 6.12)"))
    rows.append(_subordinate_row(root))
    rows.append(("mount_setattr (recursive read-only binds)", True, "kernel >= 5.12" ))
    fs = _read("/proc/filesystems")
    rows.append(("overlayfs", "overlay" in fs, "available" if "overlay" in fs else "not available"))
    try:
        from . import cgroups
        rows.extend(cgroups.doctor_report(rootless=not root))
    except Exception as e:   # report, never hide
        rows.append(("cgroups", False, f"cannot inspect: {e}"))
    try:
        from . import network
        rows.extend(network.doctor_report(rootless=not root))
    except Exception as e:
        rows.append(("networking", False, f"cannot inspect: {e}"))
    return rows
