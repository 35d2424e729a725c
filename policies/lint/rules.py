"""The security rules of `pysandbox lint`.

Every rule reads the *compiled* plan (what the sandbox will really do, after `extends:`,
imports and group expansion) to decide, and the merged document (`Document.locate`) to
point at the YAML node that introduced the problem - in whichever file of the `extends`
chain wrote it. Rules are pure functions `check(ctx) -> None` that call `ctx.report(...)`.
"""
from __future__ import annotations

import os
from typing import Callable, Iterable, Optional

from .. import syscalls as _sc
from ..errors import Location
from ..plan import ArgCond
from . import model as M

# ---------------------------------------------------------------------------------------
# Knowledge shared with the score
# ---------------------------------------------------------------------------------------

# Capabilities that let a process escape the sandbox or attack the kernel (why, severity).
DANGEROUS_CAPS: dict[str, str] = {
    "SYS_ADMIN": "mount, namespaces and most of the kernel's administration interface",
    "SYS_PTRACE": "ptrace and process_vm_* on other processes",
    "SYS_MODULE": "loading kernel modules",
    "DAC_READ_SEARCH": "open_by_handle_at: reading any file of the host by handle ('shocker')",
    "NET_ADMIN": "network configuration: interfaces, routes, nftables (large kernel attack surface)",
    "SYS_RAWIO": "iopl/ioperm and raw device I/O",
    "BPF": "loading BPF programs",
    "PERFMON": "perf_event_open and kernel address leaks",
    "SYS_BOOT": "reboot and kexec_load",
    "MAC_ADMIN": "changing the LSM (AppArmor/SELinux) policy",
    "MAC_OVERRIDE": "overriding the LSM policy",
    "SYS_TIME": "setting the host's clock",
    "SYSLOG": "reading the kernel log (kernel addresses)",
    "CHECKPOINT_RESTORE": "choosing pids and reading other processes' state",
    "AUDIT_CONTROL": "changing the kernel's audit rules",
    "LINUX_IMMUTABLE": "clearing immutable/append-only file flags",
}

# Escape-class system calls: name -> (severity, why).
ESCAPE_SYSCALLS: dict[str, tuple[str, str]] = {
    "mount": ("error", "mounts filesystems (remount, bind over the sandbox's view)"),
    "umount": ("error", "unmounts the sandbox's masks"),
    "umount2": ("error", "unmounts the sandbox's masks and read-only binds"),
    "pivot_root": ("error", "changes the root of the mount namespace"),
    "unshare": ("error", "creates namespaces: a new user namespace grants a full capability set"),
    "setns": ("error", "joins other namespaces"),
    "bpf": ("error", "loads BPF programs (verifier bugs are a common kernel exploit path)"),
    "userfaultfd": ("error", "stalls kernel page faults (a standard race-widening exploit primitive)"),
    "keyctl": ("error", "the kernel keyring is not namespaced"),
    "add_key": ("error", "the kernel keyring is not namespaced"),
    "request_key": ("error", "the kernel keyring is not namespaced"),
    "open_by_handle_at": ("error", "opens host files by handle, bypassing the mount view ('shocker')"),
    "kexec_load": ("error", "loads a new kernel"),
    "kexec_file_load": ("error", "loads a new kernel"),
    "init_module": ("error", "loads kernel modules"),
    "finit_module": ("error", "loads kernel modules"),
    "delete_module": ("error", "unloads kernel modules"),
    "perf_event_open": ("error", "kernel profiling: address leaks and a large attack surface"),
    "iopl": ("error", "raw I/O port access"),
    "ioperm": ("error", "raw I/O port access"),
    "swapon": ("error", "changes the host's swap"),
    "swapoff": ("error", "changes the host's swap"),
    "reboot": ("error", "reboots the host (or the pid namespace)"),
    "fsopen": ("error", "new mount API: creates filesystems"),
    "fsmount": ("error", "new mount API: creates mounts"),
    "fsconfig": ("error", "new mount API: configures filesystems"),
    "fspick": ("error", "new mount API: reconfigures existing mounts"),
    "move_mount": ("error", "new mount API: attaches mounts"),
    "mount_setattr": ("error", "new mount API: changes mount flags (read-only, nosuid)"),
    "lookup_dcookie": ("error", "kernel profiling interface"),
    "clone3": ("error", "creates namespaces; its flags are behind a pointer seccomp cannot inspect"),
    "ptrace": ("warning", "reads and writes other processes (safe against seccomp bypass from Linux 4.8)"),
    "process_vm_readv": ("warning", "reads other processes' memory"),
    "process_vm_writev": ("warning", "writes other processes' memory"),
    "kcmp": ("warning", "compares kernel objects of other processes (address-layout leaks)"),
    "pidfd_getfd": ("warning", "steals file descriptors of other processes"),
    "name_to_handle_at": ("warning", "file handles: the information-leak half of 'shocker'"),
    "open_tree": ("warning", "new mount API: clones mount trees"),
    "io_uring_setup": ("warning", "io_uring runs system calls seccomp cannot see"),
    "acct": ("warning", "switches host process accounting"),
    "quotactl": ("warning", "host disk quota control"),
    "syslog": ("warning", "reads the kernel log (kernel addresses)"),
}
CLONE_NEWUSER = 0x10000000
CLONE_NS_FLAGS = 0x7E020000      # NEWNS|NEWCGROUP|NEWUTS|NEWIPC|NEWUSER|NEWPID|NEWNET

# OCI / moby default masked and read-only paths.
OCI_MASKED = ("/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
              "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi",
              "/sys/firmware", "/sys/devices/virtual/powercap")
OCI_READONLY = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")

# Host paths that must never be bound in writable; runtime sockets not even read-only
# (connect() on a unix socket ignores a read-only mount).
SENSITIVE_PATHS = ("/", "/proc", "/sys", "/dev", "/etc", "/boot", "/root", "/var/lib/docker",
                   "/var/lib/containerd", "/var/lib/kubelet", "/run/systemd", "/var/run/dbus", "/run/dbus")
SENSITIVE_PREFIXES = ("/proc/", "/sys/", "/dev/", "/etc/", "/boot/")
RUNTIME_SOCKETS = ("/var/run/docker.sock", "/run/docker.sock", "/run/containerd", "/var/run/containerd",
                   "/run/containerd/containerd.sock", "/run/podman", "/run/podman/podman.sock",
                   "/var/run/crio", "/run/crio", "/run/crio/crio.sock", "/run/buildkit")


def _norm_cap(c) -> str:
    c = str(c).strip().upper()
    return c[4:] if c.startswith("CAP_") else c


def covered(path: str, by: Iterable[str]) -> bool:
    """path is one of `by` or lies below one of them."""
    p = path.rstrip("/") or "/"
    for b in by:
        b = b.rstrip("/") or "/"
        if p == b or p.startswith(b + "/") or b == "/":
            return True
    return False


def allowed_escape(seccomp) -> list[tuple[str, str, bool]]:
    """[(name, severity, conditional)] of escape-class syscalls the plan lets through."""
    from ..seccomp_verdict import decide
    out = []
    if not seccomp.enabled:
        return [(n, sev, False) for n, (sev, _) in ESCAPE_SYSCALLS.items() if _sc.is_known(n)]
    for name, (sev, _) in ESCAPE_SYSCALLS.items():
        if not _sc.is_known(name):
            continue
        if decide(seccomp, name)[0] == "allow":
            out.append((name, sev, False))
        elif any(r.name == name and r.action == "allow" for r in seccomp.rules):
            out.append((name, sev, True))
    return out


def clone_creates_namespaces(seccomp) -> bool:
    from ..seccomp_verdict import decide
    if not seccomp.enabled:
        return True
    return decide(seccomp, "clone", [CLONE_NEWUSER])[0] == "allow"


def dangerous_caps(plan) -> list[str]:
    return [c for c in plan.capabilities if c in DANGEROUS_CAPS]


# ---------------------------------------------------------------------------------------
# Context
# ---------------------------------------------------------------------------------------

class Ctx:
    def __init__(self, doc, plan, profile_file: str):
        self.doc = doc
        self.plan = plan
        self.profile = profile_file
        self.findings: list[M.Finding] = []
        d = doc.data if doc is not None else {}
        self.sec = d.get("seccomp") if isinstance(d.get("seccomp"), dict) else None

    def loc(self, *paths) -> Location:
        """The first of the paths that exists in the document (each falls back to its parents)."""
        for p in paths:
            if p is None:
                continue
            p = tuple(p)
            if p in self.doc.locations:
                return self.doc.locations[p]
        for p in paths:
            if p is not None:
                loc = self.doc.locate(p)
                if loc is not None:
                    return loc
        return self.doc.locate(()) or Location(self.profile, 1, 1)

    def has(self, path) -> bool:
        return tuple(path) in self.doc.locations

    def report(self, rule: M.Rule, message: str, hint: str, *paths, severity: Optional[str] = None,
               location: Optional[Location] = None):
        loc = location or self.loc(*paths)
        self.findings.append(M.Finding(code=rule.code, severity=severity or rule.severity, message=message,
                                       hint=hint, file=loc.file, line=loc.line, col=loc.col,
                                       profile=self.profile))

    # --- seccomp source lookup -----------------------------------------------------------
    def seccomp_items(self, which: str):
        """Yield (index, item_path, names: [(name, name_path, via_group)], args) of seccomp.allow/deny."""
        if not self.sec:
            return
        items = self.sec.get(which) or []
        if not isinstance(items, list):
            return
        groups = _sc.groups()
        for i, item in enumerate(items):
            base = ("seccomp", which, i)
            if isinstance(item, str):
                raw, paths, args = [item], [base], None
            elif isinstance(item, dict):
                raw = item.get("names") or []
                if isinstance(raw, str):
                    raw = [raw]
                paths = [base + ("names", j) for j in range(len(raw))]
                args = item.get("args")
            else:
                continue
            names = []
            for n, p in zip(raw, paths):
                if not isinstance(n, str):
                    continue
                if n.startswith("@"):
                    names.extend((m, p, True) for m in groups.get(n, ()))
                else:
                    names.append((n, p, False))
            yield i, base, names, args

    def allow_source(self, name: str):
        """Path of the node that lets `name` through: explicit allow, group allow, import, default."""
        group_hit = None
        for _, base, names, args in self.seccomp_items("allow"):
            for n, p, via_group in names:
                if n == name:
                    if not via_group:
                        return p
                    group_hit = group_hit or p
        if group_hit:
            return group_hit
        if self.sec and "import" in self.sec:
            return ("seccomp", "import")
        if self.sec and "default_action" in self.sec:
            return ("seccomp", "default_action")
        return ("seccomp",)


Check = Callable[[Ctx], None]
CHECKS: list[Check] = []        # need the compiled plan
DOC_CHECKS: list[Check] = []    # need only the document: run even when the profile does not compile


def check(fn: Check) -> Check:
    CHECKS.append(fn)
    return fn


def doc_check(fn: Check) -> Check:
    DOC_CHECKS.append(fn)
    return fn


# ---------------------------------------------------------------------------------------
# 1xx privileges
# ---------------------------------------------------------------------------------------

@check
def dangerous_capabilities(ctx: Ctx):
    plan = ctx.plan
    bad = set(dangerous_caps(plan))
    if not bad:
        return
    caps_d = ctx.doc.data.get("capabilities")
    reported = set()
    if isinstance(caps_d, dict):
        for i, c in enumerate(caps_d.get("add") or []):
            n = _norm_cap(c)
            grants = bad if n == "ALL" else ({n} & bad)
            grants -= reported
            if not grants:
                continue
            reported |= grants
            names = ", ".join(sorted(grants))
            why = "; ".join(f"{g}: {DANGEROUS_CAPS[g]}" for g in sorted(grants))
            ctx.report(M.PSB101, f"capabilit{'ies' if len(grants) > 1 else 'y'} {names} granted ({why})",
                       "remove it from capabilities.add and grant the narrow capability the program needs",
                       ("capabilities", "add", i))
    rest = bad - reported
    if rest:
        names = ", ".join(sorted(rest))
        drop = caps_d.get("drop") if isinstance(caps_d, dict) else None
        why = "capabilities.drop does not drop ALL" if isinstance(caps_d, dict) else "kept by the profile"
        ctx.report(M.PSB101, f"capabilities {names} kept ({why})",
                   "start from `drop: [ALL]` and add back only what the program needs",
                   ("capabilities", "drop") if drop is not None else ("capabilities",))


@check
def no_new_privs(ctx: Ctx):
    if ctx.plan.no_new_privs:
        return
    ctx.report(M.PSB102, "no_new_privs is off: setuid and file-capability binaries can gain privileges",
               "set `no_new_privs: true`", ("no_new_privs",))


@check
def real_root(ctx: Ctx):
    plan = ctx.plan
    if plan.namespaces.user or plan.user.uid != 0:
        return
    ctx.report(M.PSB103, "runs as uid 0 without a user namespace: real host root when root starts it",
               "set `namespaces: {user: true}` (uid 0 inside maps to an unprivileged host range) "
               "or run as a non-zero user.uid", ("namespaces", "user"), ("user", "uid"), ("namespaces",))


@check
def maps_host_root(ctx: Ctx):
    if not ctx.plan.namespaces.user:
        return
    user = ctx.doc.data.get("user")
    if not isinstance(user, dict):
        return
    for key in ("uid_map", "gid_map"):
        m = user.get(key)
        if not isinstance(m, list):
            continue
        for i, e in enumerate(m):
            if not isinstance(e, dict):
                continue
            out, cnt = e.get("outside"), e.get("count", 1)
            if isinstance(out, int) and isinstance(cnt, int) and out <= 0 < out + cnt:
                what = "uid" if key == "uid_map" else "gid"
                ctx.report(M.PSB104, f"user.{key} maps host {what} 0 (root) into the sandbox",
                           "map an unprivileged host range (e.g. `auto`, or outside: 100000+)",
                           ("user", key, i, "outside"), ("user", key, i))


@check
def map_needs_root(ctx: Ctx):
    """lint cannot know who will run the profile: any explicit host id (not the `caller`
    placeholder, not `auto`) is refused at compile time for a rootless caller."""
    if not ctx.plan.namespaces.user:
        return
    user = ctx.doc.data.get("user")
    if not isinstance(user, dict):
        return
    for key in ("uid_map", "gid_map"):
        m = user.get(key)
        if not isinstance(m, list):
            continue
        what = "uid" if key == "uid_map" else "gid"
        for i, e in enumerate(m):
            if not isinstance(e, dict):
                continue
            out, cnt = e.get("outside"), e.get("count", 1)
            if out == "caller" and cnt == 1 and i == 0:
                continue
            shown = f"host {what} {out}" if cnt == 1 else f"host {what}s {out}+{cnt}"
            ctx.report(M.PSB105, f"user.{key}[{i}] maps {shown}: only root may run this profile (a rootless "
                       f"caller may map only its own {what}, once, and ids of its /etc/sub{what} ranges)",
                       "use `auto` (the caller's own id rootless, an unprivileged range as root), `subordinate` "
                       "(the caller's /etc/subuid range rootless) or "
                       "`{inside: N, outside: caller, count: 1}`; keep it only for root-run profiles",
                       ("user", key, i, "outside"), ("user", key, i))


# ---------------------------------------------------------------------------------------
# 2xx seccomp
# ---------------------------------------------------------------------------------------

def _sec_path(ctx: Ctx, key: str):
    return ("seccomp", key) if ctx.has(("seccomp", key)) else (
        ("seccomp", "import") if ctx.has(("seccomp", "import")) else ("seccomp",))


@check
def seccomp_disabled(ctx: Ctx):
    if ctx.plan.seccomp.enabled:
        return
    ctx.report(M.PSB201, "seccomp is disabled: the whole kernel system-call surface is reachable",
               "remove `enabled: false` (or --security-opt seccomp=unconfined) and allow-list what the program needs",
               ("seccomp", "enabled"), ("seccomp",))


@check
def seccomp_default_allow(ctx: Ctx):
    s = ctx.plan.seccomp
    if not s.enabled or s.default_action not in ("allow", "log"):
        return
    sev = "error" if s.default_action == "allow" else "warning"
    ctx.report(M.PSB202, f"seccomp default_action is {s.default_action}: every system call no rule names is "
               f"{'allowed' if s.default_action == 'allow' else 'allowed (only logged)'}",
               "use `default_action: errno` with `default_errno: ENOSYS` and an allow list",
               _sec_path(ctx, "default_action"), severity=sev)


@check
def escape_syscalls(ctx: Ctx):
    s = ctx.plan.seccomp
    if not s.enabled:
        return                      # PSB201 says it all
    if s.default_action in ("allow", "log"):
        hits = allowed_escape(s)
        if hits:
            names = ", ".join(n for n, _, _ in hits)
            ctx.report(M.PSB203, f"escape-class system calls reachable through the default action: {names}",
                       "deny them (seccomp.deny: ['@mount', '@module', '@namespace', ...]) or switch to an allow list",
                       _sec_path(ctx, "default_action"))
        return
    groups: dict[tuple, list] = {}
    for name, sev, conditional in allowed_escape(s):
        if conditional:
            sev = "warning" if sev == "error" else "info"
        path = ctx.allow_source(name)
        groups.setdefault((path, sev, conditional), []).append(name)
    if clone_creates_namespaces(s):
        groups.setdefault((ctx.allow_source("clone"), "error", False), []).append("clone(CLONE_NEW*)")
    for (path, sev, conditional), names in groups.items():
        first = names[0]
        why = ESCAPE_SYSCALLS[first][1] if first in ESCAPE_SYSCALLS else \
            "creates namespaces: a new user namespace grants a full capability set"
        cond = " for some arguments" if conditional else ""
        more = f" (+{len(names) - 1} more)" if len(names) > 1 else ""
        listed = ", ".join(names)
        node = ctx.doc.data
        try:
            for k in path:
                node = node[k]
        except (KeyError, IndexError, TypeError):
            node = None
        if isinstance(node, str) and node.startswith("@"):
            hint = f"{node} brings {listed} in: add {'them' if len(names) > 1 else 'it'} to seccomp.deny"
        elif path[-1] == "import":
            hint = f"the imported file allows {listed}: add {'them' if len(names) > 1 else 'it'} to seccomp.deny"
        else:
            hint = f"remove {listed} from seccomp.allow (or deny {'them' if len(names) > 1 else 'it'})"
        if "clone(CLONE_NEW*)" in names:
            hint += ("; allow clone only without namespace flags: {names: [clone], args: [{index: 0, op: "
                     "masked_eq, mask: 0x7e020000, value: 0}]} and deny clone3 with ENOSYS")
        ctx.report(M.PSB203, f"escape-class system call{'s' if len(names) > 1 else ''} allowed{cond}: {listed} "
                   f"- {first}: {why}{more}", hint, path, severity=sev)


@check
def default_errno_eperm(ctx: Ctx):
    s = ctx.plan.seccomp
    if not s.enabled or s.default_action != "errno" or s.default_errno != 1:
        return
    from ..seccomp_verdict import decide
    clone3 = decide(s, "clone3") if _sc.is_known("clone3") else ("errno", 38)
    handled = clone3 == ("errno", 38)
    sev = "info" if handled else "warning"
    extra = " (clone3 is answered ENOSYS explicitly)" if handled else \
        " - glibc then fails clone3/openat2/faccessat2 instead of falling back"
    ctx.report(M.PSB204, f"unknown system calls fail with EPERM{extra}",
               "use `default_errno: ENOSYS` and keep EPERM for the listed denies (deny_errno)",
               _sec_path(ctx, "default_errno"), severity=sev)


@check
def allow_deny_conflict(ctx: Ctx):
    s = ctx.plan.seccomp
    if not s.enabled:
        return
    from ..seccomp_verdict import decide
    deny_src: dict[str, tuple] = {}
    for _, base, names, args in ctx.seccomp_items("deny"):
        if args:
            continue
        for n, p, _g in names:
            deny_src.setdefault(n, p)
    for _, base, names, args in ctx.seccomp_items("allow"):
        if args:
            continue
        for n, p, via_group in names:
            if via_group or n not in deny_src or not _sc.is_known(n):
                continue
            action, err = decide(s, n)
            if action == "allow":
                continue
            dl = ctx.loc(deny_src[n])
            ctx.report(M.PSB205, f"{n} is allowed here but also denied at {dl.file}:{dl.line}:{dl.col}; "
                       f"the deny wins ({action}{'(' + _sc.errno_name(err) + ')' if err is not None else ''})",
                       f"remove {n} from one of the lists (to carve it out of a denied group, allow it "
                       "with an argument condition)", p)


def _conds(args) -> Optional[list[ArgCond]]:
    from ..seccomp import parse_int
    out = []
    try:
        for a in args or []:
            op = a["op"]
            mask = parse_int(a["mask"], "mask") if op == "masked_eq" else 0
            out.append(ArgCond(int(a["index"]), op, parse_int(a["value"], "value"), mask))
    except (KeyError, TypeError, ValueError):
        return None
    return out


@check
def never_matches(ctx: Ctx):
    if not ctx.plan.seccomp.enabled:
        return
    from ..seccomp import conditions_by_index      # None: the conditions cannot all hold
    for which in ("allow", "deny"):
        for i, base, names, args in ctx.seccomp_items(which):
            if not args:
                continue
            conds = _conds(args)
            if conds is None or conditions_by_index(conds) is not None:
                continue
            shown = ", ".join(sorted({n for n, _, _ in names})[:6])
            ctx.report(M.PSB206, f"seccomp.{which}[{i}] ({shown}) can never match: its argument "
                       "conditions contradict each other", "fix the conditions (a masked_eq value must lie "
                       "inside its mask; two conditions on one argument must overlap)", base + ("args",), base)


@doc_check
def syscall_not_on_arch(ctx: Ctx):
    arch = _sc.machine()
    for which in ("allow", "deny"):
        for i, base, names, args in ctx.seccomp_items(which):
            for n, p, via_group in names:
                if via_group:
                    continue
                kind = _sc.classify(n)
                if kind == "foreign":
                    ctx.report(M.PSB207, f"system call {n!r} does not exist on {arch} (or this libseccomp) "
                               "and is skipped", f"remove {n} or replace it with the {arch} equivalent", p)
                elif kind == "unknown":
                    ctx.report(M.PSB207, f"unknown system call {n!r}: no architecture has it",
                               "check the spelling (see `pysandbox explain` for the compiled list)",
                               p, severity="error")


@check
def no_effect(ctx: Ctx):
    s = ctx.plan.seccomp
    if not s.enabled:
        return
    if s.default_action == "allow":
        for i, base, names, args in ctx.seccomp_items("allow"):
            ctx.report(M.PSB208, f"seccomp.allow[{i}] has no effect: the default action already allows",
                       "remove it, or make the default deny", base)
    sec = ctx.sec or {}
    if s.default_action == "errno" and "import" not in sec:   # a deny may override an imported allow
        deny_action = sec.get("deny_action", "errno")
        try:
            deny_errno = _sc.errno_number(sec.get("deny_errno", "EPERM"))
        except ValueError:
            deny_errno = None
        for i, base, names, args in ctx.seccomp_items("deny"):
            item = sec["deny"][i]
            action = item.get("action", deny_action) if isinstance(item, dict) else deny_action
            try:
                err = _sc.errno_number(item["errno"]) if isinstance(item, dict) and "errno" in item else deny_errno
            except ValueError:
                continue
            if action == "errno" and err == s.default_errno and not args and not ctx.plan.seccomp.notify_denials:
                # only when nothing else lets these names through: then the rule restates the default
                explicit = [n for n, _, g in names if not g]
                if explicit and not any(n2 == n for n in explicit for _, _, nm, _ in ctx.seccomp_items("allow")
                                        for n2, _, _ in nm):
                    ctx.report(M.PSB208, f"seccomp.deny[{i}] ({', '.join(explicit[:6])}) restates the default "
                               f"action errno({_sc.errno_name(err)})", "remove it (or give it another errno/action)",
                               base, severity="info")
    for which in ("allow", "deny"):
        seen: dict[str, tuple] = {}
        for i, base, names, args in ctx.seccomp_items(which):
            if args:
                continue
            for n, p, via_group in names:
                if via_group:
                    continue
                if n in seen:
                    first = ctx.loc(seen[n])
                    ctx.report(M.PSB208, f"{n} is listed twice in seccomp.{which} (first at {first.line}:{first.col})",
                               "remove the repetition", p)
                else:
                    seen[n] = p


# ---------------------------------------------------------------------------------------
# 3xx filesystem
# ---------------------------------------------------------------------------------------

@check
def writable_root(ctx: Ctx):
    fs = ctx.plan.filesystem
    if fs.read_only:
        return
    host_dir = fs.root != "host" and not fs.image
    ctx.report(M.PSB301, "the root filesystem is writable" + (f": writes go to the host directory {fs.root}"
                                                             if host_dir else ""),
               "set `filesystem: {read_only: true}` and give the program tmpfs or volume mounts where it writes",
               ("filesystem", "read_only"), ("filesystem",), severity="error" if host_dir else None)


@check
def sensitive_bind(ctx: Ctx):
    fs_d = ctx.doc.data.get("filesystem")
    mounts = fs_d.get("mounts") if isinstance(fs_d, dict) else None
    if not isinstance(mounts, list):
        return
    for i, m in enumerate(mounts):
        if not isinstance(m, dict) or m.get("type") != "bind" or not isinstance(m.get("source"), str):
            continue
        src = os.path.normpath(m["source"]) if m["source"] != "/" else "/"
        ro = m.get("read_only", True)
        path = ("filesystem", "mounts", i, "source")
        sockets = [s for s in RUNTIME_SOCKETS if covered(s, [src])]
        if sockets:
            ctx.report(M.PSB302, f"bind of {src} exposes the container runtime socket {sockets[0]} "
                       "(control of it is root on the host, read-only or not)",
                       "never bind a container-runtime socket or its directory into a sandbox", path)
            continue
        if src in SENSITIVE_PATHS or src.startswith(SENSITIVE_PREFIXES):
            if ro:
                ctx.report(M.PSB302, f"read-only bind of host-sensitive path {src}",
                           "bind only the files the program needs", path, severity="warning")
            else:
                ctx.report(M.PSB302, f"writable bind of host-sensitive path {src}",
                           "bind it read-only (`read_only: true`) or, better, only the files the program needs",
                           ("filesystem", "mounts", i, "read_only"), path)


def _missing(paths: Iterable[str], have: Iterable[str], fs) -> list[str]:
    have = list(have)
    out = []
    for p in paths:
        if p.startswith("/proc/") and not fs.proc:
            continue
        if p.startswith("/sys/") and not fs.sys:
            continue
        if not covered(p, have):
            out.append(p)
    return out


@check
def masked_paths(ctx: Ctx):
    fs = ctx.plan.filesystem
    miss = _missing(OCI_MASKED, fs.masked_paths, fs)
    if miss:
        ctx.report(M.PSB303, f"OCI default masked path{'s' if len(miss) > 1 else ''} not masked: {', '.join(miss)}",
                   "keep the OCI defaults in filesystem.masked_paths (append with `!extend`, never `!remove` them)",
                   ("filesystem", "masked_paths"), ("filesystem",))


@check
def readonly_paths(ctx: Ctx):
    fs = ctx.plan.filesystem
    miss = _missing(OCI_READONLY, list(fs.readonly_paths) + list(fs.masked_paths), fs)
    if miss:
        ctx.report(M.PSB304, f"OCI default read-only path{'s' if len(miss) > 1 else ''} not read-only: "
                   f"{', '.join(miss)}",
                   "keep the OCI defaults in filesystem.readonly_paths",
                   ("filesystem", "readonly_paths"), ("filesystem",))


# ---------------------------------------------------------------------------------------
# 4xx resources
# ---------------------------------------------------------------------------------------

@check
def memory_limit(ctx: Ctx):
    if ctx.plan.limits.memory is None:
        ctx.report(M.PSB401, "no memory limit: the program can exhaust the host's memory",
                   "set `limits: {memory: 512m}` (or run with --memory)", ("limits",))


@check
def pids_limit(ctx: Ctx):
    if ctx.plan.limits.pids is None:
        ctx.report(M.PSB402, "no pids limit: a fork bomb can exhaust the host's process table",
                   "set `limits: {pids: 256}` (or run with --pids-limit)", ("limits",))


# ---------------------------------------------------------------------------------------
# 5xx network and namespaces
# ---------------------------------------------------------------------------------------

@check
def network_host(ctx: Ctx):
    if ctx.plan.network.mode != "host":
        return
    ctx.report(M.PSB501, "network host: the sandbox shares the host's interfaces, ports and abstract unix sockets",
               "use `network: none`, or a named network with published ports and egress rules",
               ("network", "mode"), ("network",))


@check
def shared_namespaces(ctx: Ctx):
    ns = ctx.plan.namespaces
    for name, why, sev in (("pid", "host processes are visible and signalable", "error"),
                           ("ipc", "host System V IPC and POSIX message queues are shared", None),
                           ("uts", "the sandbox can change the host's hostname", None),
                           ("cgroup", "the host's cgroup tree is visible", None)):
        if not getattr(ns, name):
            ctx.report(M.PSB502, f"namespaces.{name} is off: {why}", f"set `namespaces: {{{name}: true}}`",
                       ("namespaces", name), ("namespaces",), severity=sev)


@doc_check
def egress_dns_name(ctx: Ctx):
    """PSB503: reported on the document (the compiler refuses such a profile, so there is no plan)."""
    from ..compiler import DNS_EGRESS_HINT, egress_dns_name as is_dns
    net = ctx.doc.data.get("network")
    eg = net.get("egress") if isinstance(net, dict) else None
    allow = eg.get("allow") if isinstance(eg, dict) else None
    if not isinstance(allow, list):
        return
    for i, r in enumerate(allow):
        if isinstance(r, dict) and is_dns(r.get("to")):
            ctx.report(M.PSB503, f"egress to {r['to']!r}: a DNS name, not a sandbox peer or an IP/CIDR "
                       "(as a peer name it would never match; the profile is refused)", DNS_EGRESS_HINT,
                       ("network", "egress", "allow", i, "to"))
