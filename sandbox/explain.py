"""Human-readable rendering of a compiled plan (`pysandbox explain`)."""
from __future__ import annotations

from collections import Counter


def _size(n):
    if n is None:
        return "-"
    if n == -1:
        return "unlimited"
    for unit, div in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= div and n % div == 0:
            return f"{n // div} {unit}"
    return f"{n} B"


def render(plan) -> str:
    ns = plan.namespaces
    out = [f"profile      {plan.name}", f"sources      {' <- '.join(plan.sources)}"]
    on = [k for k in ("user", "pid", "mount", "uts", "ipc", "net", "cgroup", "time") if getattr(ns, k)]
    off = [k for k in ("user", "pid", "mount", "uts", "ipc", "net", "cgroup", "time") if not getattr(ns, k)]
    out.append(f"namespaces   new: {' '.join(on)}" + (f"   shared with host: {' '.join(off)}" if off else ""))
    u = plan.user
    maps = lambda m: ", ".join(f"{e.inside}-{e.inside + e.count - 1}->{e.outside}-{e.outside + e.count - 1}"
                               if e.count > 1 else f"{e.inside}->{e.outside}" for e in m) or "(none: host ids)"
    groups = f" groups {','.join(map(str, u.groups))}" if u.groups else ""
    out.append(f"user         uid {u.uid} gid {u.gid}{groups}; uid_map {maps(u.uid_map)}; gid_map {maps(u.gid_map)}")
    if getattr(u, "map_note", ""):
        out.append(f"             {u.map_note}")
    out.append(f"capabilities {' '.join(plan.capabilities) or 'none'}")
    out.append(f"no_new_privs {'yes' if plan.no_new_privs else 'NO'}")
    s = plan.seccomp
    if not s.enabled:
        out.append("seccomp      DISABLED (unconfined)")
    else:
        by = Counter((r.action, r.errno) for r in s.rules)
        import errno as _e
        def act(a, n):
            return f"{a}({_e.errorcode.get(n, n)})" if a == "errno" and n is not None else a
        summary = ", ".join(f"{act(a, n)}: {c}" for (a, n), c in sorted(by.items(), key=lambda x: -x[1]))
        out.append(f"seccomp      default {act(s.default_action, s.default_errno)}; {len(s.rules)} rules ({summary})")
        from policies.seccomp_verdict import fixed_verdict
        denied = sorted(n for n in {r.name for r in s.rules}
                        if (fixed_verdict(s, n) or ("allow",))[0] != "allow")
        if denied:
            out.append(f"             denied: {' '.join(denied[:40])}{' ...' if len(denied) > 40 else ''}")
        fams: dict = {}
        from policies.seccomp import socket_family_verdicts
        for fam, verdict in socket_family_verdicts(s):
            fams.setdefault(verdict, []).append(fam)
        for verdict, names in sorted(fams.items(), key=lambda x: (x[0] != "allow", -len(x[1]), x[0])):
            out.append(f"             socket families {'allowed' if verdict == 'allow' else verdict}: "
                       f"{' '.join(names)}")
        if s.skipped:
            out.append(f"             skipped (unknown to this libseccomp): {' '.join(s.skipped[:20])}"
                       f"{' ...' if len(s.skipped) > 20 else ''}")
    f = plan.filesystem
    root = f"image {f.image}" if f.image else ("host system directories " + " ".join(f.system_dirs)
                                               if f.root == "host" else f.root)
    out.append(f"root         {root}; {'read-only' if f.read_only else 'WRITABLE'}")
    for m in f.mounts:
        extra = f" size {_size(m.size)}" if m.type == "tmpfs" else f" from {m.source}"
        out.append(f"mount        {m.target}: {m.type}{extra}{' ro' if m.read_only else ' rw'}")
    if f.masked_paths:
        out.append(f"masked       {' '.join(f.masked_paths)}")
    if f.readonly_paths:
        out.append(f"read-only    {' '.join(f.readonly_paths)}")
    p = plan.process
    out.append(f"process      argv {list(p.argv)}; cwd {p.cwd}; hostname {p.hostname}"
               + (f"; timeout {p.timeout:g}s" if p.timeout else ""))
    out.append(f"environment  set {', '.join(k for k, _ in p.env_set) or '-'}; passed {', '.join(p.env_allow) or '-'}")
    if p.rlimits:
        out.append("rlimits      " + ", ".join(f"{r.name}={'unlimited' if r.soft == -1 else r.soft}:"
                                              f"{'unlimited' if r.hard == -1 else r.hard}" for r in p.rlimits))
    n = plan.network
    out.append(f"network      {n.mode}" + (f"; ports {', '.join(f'{x.host_ip}:{x.host_port}->{x.port}/{x.proto}' for x in n.ports)}" if n.ports else "")
               + (f"; egress default {n.egress_default}, {len(n.egress_allow)} allow rules" if n.egress_allow or n.egress_default == 'deny' else ""))
    if n.egress_hosts:                  # egress by domain name (sandbox/network/egress/)
        from policies.egress import rule_text
        for r in n.egress_hosts:
            out.append(f"  egress     allow[{r.index}] {rule_text(r)}: TCP through the egress proxy "
                       "(SNI/Host and the resolver's answers checked)")
    for h in n.hosts:
        out.append(f"  hosts      {h.name} -> {h.address}")
    for r in n.http:                 # intercepted HTTP(S) (docs/network.md, "Secrets")
        out.append(f"http         {r.host}: {' '.join(r.methods) or 'any method'} {' '.join(r.paths) or 'any path'}")
    for sc in n.secrets:             # names and where they go; values are never in a plan
        out.append(f"secret       {sc.name} -> {sc.header} for {', '.join(sc.hosts)} (from {sc.source.partition(':')[0]})")
    l = plan.limits
    lim = [f"memory {_size(l.memory)}" if l.memory else None, f"swap {_size(l.memory_swap)}" if l.memory_swap else None,
           f"cpus {l.cpus:g}" if l.cpus else None, f"pids {l.pids}" if l.pids else None,
           f"cpu-shares {l.cpu_shares}" if l.cpu_shares else None, f"cpuset {l.cpuset_cpus}" if l.cpuset_cpus else None,
           f"blkio-weight {l.blkio_weight}" if l.blkio_weight else None]
    out.append(f"limits       {', '.join(x for x in lim if x) or 'none'}")
    from policies.landlock import describe as _landlock_lines
    out += _landlock_lines(plan.landlock)
    out.append(_denials_line(plan))
    out.append(_backend_line(plan))
    return "\n".join(out)


def _denials_line(plan) -> str:
    """Which source records this plan's Landlock denials here (sandbox/landlock.py, denial_source)."""
    from . import landlock
    from .launch import nsfree
    if nsfree.choose(plan)[0] == nsfree.LANDLOCK:
        plan = nsfree.confined_plan(plan)
    cli = landlock.denial_source(plan, kernel_watch=True)
    text = {landlock.KERNEL: "the kernel's audit records (Landlock ABI 7, audit enabled), via kmsg",
            landlock.NOTIFY: "the seccomp notify layer (landlock_denied via user_notif: predicted from the "
                             "rules; kernel audit records are not available to this run)",
            None: "not recorded (no file system rules, or no seccomp user notification)"}[cli]
    if cli == landlock.KERNEL:
        text += "; the API's launch server: the seccomp notify layer"
    return f"             denials: {text}"


def _backend_line(plan) -> str:
    """The backend this plan gets on this machine and why (sandbox/launch/nsfree.py, choose)."""
    from .launch import nsfree
    backend, why = nsfree.choose(plan)
    return f"backend      {backend or 'REFUSED'}: {why}"
