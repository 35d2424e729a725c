"""What this kernel and this caller can enforce: `checks()`, the rows `pysandbox doctor` prints
(sandbox/cli/doctor.py) and tests call, and `kernel_version()`. Each check is real
(a probe in a throw-away child or a kernel interface read), never a guess from versions.

When a user namespace cannot be created, or is created but is of no use (Ubuntu's AppArmor
restriction), doctor says why and what to do (userns_reasons): user.max_user_namespaces=0 or its
limit reached, kernel.unprivileged_userns_clone=0, kernel.apparmor_restrict_unprivileged_userns=1,
a seccomp filter or missing capabilities of a container, too deep a nesting. It also reports the
subordinate ids range maps need and, rootless, how to delegate cgroups. See docs/install.md."""
from __future__ import annotations

import errno
import os
import sys

from . import _sys

APPARMOR_SYSCTL = "/proc/sys/kernel/apparmor_restrict_unprivileged_userns"
MAX_USERNS_SYSCTL = "/proc/sys/user/max_user_namespaces"
USERNS_CLONE_SYSCTL = "/proc/sys/kernel/unprivileged_userns_clone"
CAP_SYS_ADMIN = 21


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


def _probe_userns() -> int:
    """Create a user and a mount namespace in a throw-away child and use them (make / private:
    what every sandbox does first). 0 when that works, else the errno of the step that failed —
    creation (EPERM, ENOSPC, EUSERS, ...) or use (EACCES/EPERM: a namespace without capabilities,
    as under Ubuntu's AppArmor restriction); -1 when the child died otherwise."""
    r, w = os.pipe()
    try:
        pid = _sys.clone_fork(_sys.CLONE_NEWUSER | _sys.CLONE_NEWNS)
    except OSError as e:
        os.close(r); os.close(w)
        return e.errno or -1
    if pid == 0:
        try:
            _sys.mount(None, "/", None, _sys.MS_REC | _sys.MS_PRIVATE)
            os._exit(0)
        except OSError as e:
            os._exit(100 + min(e.errno or 0, 150))   # created, but not usable
        finally:
            os._exit(99)
    os.close(w); os.close(r)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code == 0:
        return 0
    return -(code - 100) if code > 100 else -1


def _status_field(name: str) -> str:
    for line in _read("/proc/self/status").splitlines():
        if line.startswith(name + ":"):
            return line.split(":", 1)[1].strip()
    return ""


def container_kind() -> str:
    """The container runtime this process runs under, '' when none is recognised."""
    if os.path.exists("/.dockerenv"):
        return "docker"
    if os.path.exists("/run/.containerenv"):
        return "podman"
    env = _read("/proc/1/environ")
    for item in env.split("\0"):
        if item.startswith("container="):
            return item.split("=", 1)[1] or "container"
    cg = _read("/proc/1/cgroup")
    for word in ("kubepods", "docker", "containerd", "libpod", "lxc"):
        if word in cg:
            return word
    return ""


def _cap_in(mask_hex: str, cap: int) -> bool:
    try:
        return bool(int(mask_hex, 16) >> cap & 1)
    except ValueError:
        return False


def userns_reasons(err: int, rootless: bool) -> list[str]:
    """Why a user namespace could not be created (err > 0) or used (err < 0), each reason with
    its remedy, from what the kernel reports now. Empty when nothing explains it."""
    reasons = []
    maxns = _read(MAX_USERNS_SYSCTL)
    if maxns == "0":
        reasons.append("user.max_user_namespaces is 0 (user namespaces are switched off) -> as root: "
                       "sysctl -w user.max_user_namespaces=15000, and keep it in /etc/sysctl.d/90-pysandbox.conf")
    elif err == errno.ENOSPC:
        reasons.append(f"the limit user.max_user_namespaces ({maxns or '?'}, or that of an enclosing user "
                       "namespace) is reached -> raise it (sysctl -w user.max_user_namespaces=15000) or "
                       "end processes holding user namespaces")
    if err == errno.EUSERS:
        reasons.append("user namespaces are nested 32 deep already (the kernel's limit) -> run pysandbox "
                       "from a less nested namespace")
    if rootless and _read(USERNS_CLONE_SYSCTL) == "0":
        reasons.append("kernel.unprivileged_userns_clone is 0 (unprivileged user namespaces are off) -> "
                       "as root: sysctl -w kernel.unprivileged_userns_clone=1 (in /etc/sysctl.d/ to keep it), "
                       "or run pysandbox as root")
    if rootless and _read(APPARMOR_SYSCTL) == "1":
        reasons.append(apparmor_remedy())
    seccomp_mode = _status_field("Seccomp")
    kind = container_kind()
    in_filter = seccomp_mode == "2"
    if err in (errno.EPERM, errno.ENOSYS) and in_filter:
        reasons.append("a seccomp filter on this process denies creating namespaces"
                       + (f" (inside a {kind} container)" if kind else "")
                       + " -> run the container with --security-opt seccomp=unconfined "
                         "--security-opt apparmor=unconfined (or a seccomp profile allowing unshare/clone "
                         "with CLONE_NEWUSER), or run pysandbox on the host")
    elif kind and (err != 0) and not reasons:
        reasons.append(f"inside a {kind} container without the privileges nested sandboxes need -> "
                       "run the container with --security-opt seccomp=unconfined --security-opt "
                       "apparmor=unconfined (rootless) or --privileged, or run pysandbox on the host")
    if not rootless and err and not _cap_in(_status_field("CapBnd"), CAP_SYS_ADMIN):
        reasons.append("root without CAP_SYS_ADMIN in its bounding set"
                       + (f" (a {kind} container's default)" if kind else "")
                       + " -> give the container CAP_SYS_ADMIN (--cap-add SYS_ADMIN) or run on the host")
    return reasons


def apparmor_profile() -> str:
    """The shipped AppArmor profile (package data: sandbox/data/apparmor/pysandbox)."""
    from importlib import resources
    return str(resources.files("sandbox") / "data" / "apparmor" / "pysandbox")


def apparmor_remedy() -> str:
    py = os.path.realpath(sys.executable)
    return ("AppArmor restricts unprivileged user namespaces (kernel.apparmor_restrict_unprivileged_userns=1, "
            "Ubuntu 23.10+): a namespace made by an unconfined program has no capabilities -> install the "
            f"AppArmor profile shipped in {apparmor_profile()} for this interpreter "
            f"({py}; best a venv made with --copies, so that no other Python is granted it): "
            "see docs/install.md; or run pysandbox as root")


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""


def _username() -> str:
    import pwd
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return str(os.geteuid())


def _subordinate_row(root: bool) -> tuple[str, bool, str]:
    """uid_map: subordinate (docs/profile-format.md, "Rootless id ranges"): usable by this caller?"""
    name = "subordinate ids"           # (uid_map: subordinate, docs/profile-format.md)
    if root:
        return (name, True, "root: the automatic range 1000000000-1000065535")
    from policies import subids
    from . import idmap
    try:
        # (both files name the user, by name or uid)
        have = {w: sum(n for _, n in subids.ranges(w, os.geteuid())) for w in ("uid", "gid")}
    except subids.SubidError as e:
        return (name, False, f"{e} (usermod --add-subuids/--add-subgids FIRST-LAST USER)")
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
    err = _probe_userns()
    ok = err == 0
    if ok:
        detail = "available"
    elif err > 0:
        detail = f"cannot create: {os.strerror(err)}"
    else:
        detail = f"created, but unusable (mount: {os.strerror(-err) if err != -1 else 'failed'})"
    reasons = userns_reasons(err, rootless=not root) if not ok else []
    if reasons:
        detail += "; " + "; ".join(reasons)
    rows.append(("user namespace", ok, detail))
    if not root and ok and _read(APPARMOR_SYSCTL) == "1":
        rows.append(("apparmor userns restriction", True, "on, but this interpreter may use user namespaces"))
    kind = container_kind()
    rows.append(("container", True, f"inside a {kind} container" if kind else "none recognised"))
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
        from .cgroups import doctor as cgroups_doctor
        cg = cgroups_doctor.doctor_report(rootless=not root)
        rows.extend(cg)
        if not root and any("no delegated cgroup" in d for _, ok_, d in cg if not ok_):
            rows.append(("cgroup delegation", False,
                         f"none for uid {os.geteuid()}: limits fail closed -> as root: pysandbox cgroups "
                         f"delegate {_username()} (cgroup v1; on cgroup v2 systemd's Delegate=yes for "
                         "user@.service; see docs/limits.md)"))
    except Exception as e:   # report, never hide
        rows.append(("cgroups", False, f"cannot inspect: {e}"))
    try:
        from .network import doctor as network_doctor
        rows.extend(network_doctor.doctor_report(rootless=not root))
    except Exception as e:
        rows.append(("networking", False, f"cannot inspect: {e}"))
    rows.extend(backend_rows())
    return rows


def backend_rows() -> list:
    """For each shipped profile, the backend a run of it gets here and why (sandbox/launch/nsfree.py:
    namespaces when user namespaces work; the namespace-free one only where a profile accepts it)."""
    from policies.compiler import compile_profile
    from policies.resources import shipped_profiles_dir
    from .launch import nsfree
    rows = []
    problem = nsfree.userns_problem()                # asked once for every profile
    for path in sorted(shipped_profiles_dir().glob("*.yaml")):
        try:
            plan = compile_profile(str(path)).plan
            backend, why = nsfree.choose(plan, problem=lambda: problem)
        except Exception as e:                       # noqa: BLE001 - report, never hide
            backend, why = None, f"cannot compile: {e}"
        rows.append((f"backend: {path.stem}", backend is not None, f"{backend or 'refused'}: {why}"))
    return rows
