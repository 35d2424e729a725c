"""Exposure score of a compiled plan: 0.0 (tight) .. 10.0 (no isolation), like `systemd-analyze security`.

Each check has a weight and a badness in 0..1. The exposure is min(10, 10 * sum(weight * badness) / 40);
a row's share (shown in the breakdown) is its part of that sum, so the rows add up to the total
(scaled down together when the total is capped at 10).
The score reads only the plan: inline suppressions hide findings, they never change the exposure.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field

from .. import syscalls as _sc
from ..seccomp_verdict import decide
from . import hazards as H

LEVELS = ((2.0, "OK"), (5.0, "MEDIUM"), (8.0, "EXPOSED"), (10.01, "UNSAFE"))
# A weighted badness of NORMALIZER points is an exposure of 10 (the weights add up to ~96: a profile
# need not fail everything to be unsafe; one open door such as host networking already costs 2.0).
NORMALIZER = 40.0


@dataclass(frozen=True)
class Row:
    name: str
    description: str     # what the plan does, one line
    weight: int
    badness: float       # 0..1
    share: float = 0.0   # contribution to the exposure (0..10)

    @property
    def ok(self) -> bool:
        return self.badness == 0


@dataclass(frozen=True)
class Exposure:
    score: float
    level: str
    rows: tuple = field(default_factory=tuple)

    def to_dict(self) -> dict:
        return {"exposure": self.score, "level": self.level,
                "breakdown": [{"name": r.name, "description": r.description, "weight": r.weight,
                               "badness": round(r.badness, 3), "exposure": round(r.share, 2)} for r in self.rows]}


def level_of(score: float) -> str:
    for limit, name in LEVELS:
        if score < limit:
            return name
    return "UNSAFE"


@functools.lru_cache(maxsize=1)
def native_syscalls() -> tuple:
    return tuple(sorted(n for n in _sc.reference_names() if _sc.is_known(n)))


def _allowed_count(seccomp) -> int:
    if not seccomp.enabled:
        return len(native_syscalls())
    cond = {r.name for r in seccomp.rules if r.action == "allow"}
    return sum(1 for n in native_syscalls() if n in cond or decide(seccomp, n)[0] == "allow")


def exposure(plan) -> Exposure:
    rows = []

    def add(name, weight, badness, desc):
        rows.append((name, desc, weight, max(0.0, min(1.0, float(badness)))))

    ns, user = plan.namespaces, plan.user
    if not ns.user:
        add("UserNamespace", 16, 1.0 if user.uid == 0 else 0.5,
            "no user namespace: " + ("uid 0 is real root" if user.uid == 0 else f"runs as host uid {user.uid}"))
    elif any(e.outside <= 0 < e.outside + e.count for e in user.uid_map):
        add("UserNamespace", 16, 0.6, "user namespace maps host root into the sandbox")
    else:
        add("UserNamespace", 16, 0.0, "own user namespace, host root not mapped")

    bad = H.dangerous_caps(plan)
    if bad:
        add("Capabilities", 16, 1.0, f"dangerous capabilities kept: {' '.join(bad)}")
    else:
        n = len(plan.capabilities)
        add("Capabilities", 16, 0.0 if n == 0 else min(0.05 + 0.25 * n / 14, 0.5),
            f"{len(plan.capabilities)} capabilities kept" + (f": {' '.join(plan.capabilities)}"
                                                             if 0 < len(plan.capabilities) <= 4 else ""))
    add("NoNewPrivileges", 6, 0.0 if plan.no_new_privs else 1.0,
        "no_new_privs set" if plan.no_new_privs else "no_new_privs off: setuid binaries gain privileges")

    s = plan.seccomp
    if not s.enabled:
        add("SeccompFilter", 10, 1.0, "seccomp disabled")
    elif s.default_action == "allow":
        add("SeccompFilter", 10, 0.9, "seccomp default allow (deny list)")
    elif s.default_action == "log":
        add("SeccompFilter", 10, 0.8, "seccomp default log")
    else:
        add("SeccompFilter", 10, 0.0, f"seccomp default {s.default_action} (allow list)")
    esc = H.allowed_escape(s)
    weight = {"error": 1.0, "warning": 0.4, "info": 0.1}
    total = sum(weight[sev] for sev, _ in H.ESCAPE_SYSCALLS.values())
    got = sum(weight[sev] * (0.5 if cond else 1.0) for _, sev, cond in esc)
    if H.clone_creates_namespaces(s):
        got += 1.0
    add("EscapeSyscalls", 10, min(1.0, 3 * got / total),
        f"{len(esc)} escape-class syscalls allowed" + (f": {' '.join(n for n, _, _ in esc[:3])}"
                                                       f"{' ...' if len(esc) > 3 else ''}" if esc else "")
        + ("; namespace-creating clone" if H.clone_creates_namespaces(s) else ""))
    n_all = len(native_syscalls()) or 1
    allowed = _allowed_count(s)
    add("SyscallSurface", 5, allowed / n_all, f"{allowed} of {n_all} system calls allowed")

    net = plan.network.mode
    add("Network", 8, 1.0 if net == "host" else 0.0 if net == "none" else 0.3,
        {"host": "host network", "none": "no network (own loopback only)"}.get(net, f"network {net}"))
    for name, w in (("pid", 4), ("ipc", 2), ("uts", 1), ("cgroup", 1)):
        on = getattr(ns, name)
        add(f"{name.upper() if name != 'cgroup' else 'Cgroup'}Namespace", w, 0.0 if on else 1.0,
            f"own {name} namespace" if on else f"{name} namespace shared with the host")

    fs = plan.filesystem
    add("ReadOnlyRoot", 5, 0.0 if fs.read_only else 1.0,
        "read-only root" if fs.read_only else "writable root")
    worst, what = 0.0, "no host-sensitive binds"
    for m in fs.mounts:
        if m.type != "bind" or not m.source:
            continue
        src = m.source
        if any(H.covered(sock, [src]) for sock in H.RUNTIME_SOCKETS):
            b = 1.0
        elif src in H.SENSITIVE_PATHS or src.startswith(H.SENSITIVE_PREFIXES):
            b = 0.4 if m.read_only else 1.0
        else:
            b = 0.0 if m.read_only else 0.2
        if b > worst:
            worst, what = b, f"{'read-only' if m.read_only else 'writable'} bind of {src}"
    add("HostMounts", 10, worst, what)
    miss = H.missing_paths(H.OCI_MASKED, fs.masked_paths, fs)
    add("MaskedPaths", 3, len(miss) / len(H.OCI_MASKED),
        f"{len(miss)} OCI default masked paths missing" if miss else "OCI default masked paths masked")
    miss = H.missing_paths(H.OCI_READONLY, list(fs.readonly_paths) + list(fs.masked_paths), fs)
    add("ReadonlyPaths", 2, len(miss) / len(H.OCI_READONLY),
        f"{len(miss)} OCI default read-only paths missing" if miss else "OCI default read-only paths read-only")

    lim = plan.limits
    add("MemoryLimit", 3, 0.0 if lim.memory is not None else 1.0,
        "memory limited" if lim.memory is not None else "no memory limit")
    add("PidsLimit", 3, 0.0 if lim.pids is not None else 1.0,
        f"pids limited to {lim.pids}" if lim.pids is not None else "no pids limit")
    add("CPULimit", 1, 0.0 if (lim.cpus or lim.cpu_shares or lim.cpuset_cpus) else 1.0,
        "CPU limited" if (lim.cpus or lim.cpu_shares or lim.cpuset_cpus) else "no CPU limit")

    raw = sum(10.0 * w * b / NORMALIZER for _, _, w, b in rows)
    scale = 10.0 / raw if raw > 10.0 else 1.0          # capped at 10: shares still add up
    out = tuple(Row(n, d, w, b, 10.0 * w * b / NORMALIZER * scale) for n, d, w, b in rows)
    score = round(min(10.0, sum(r.share for r in out)), 1)
    return Exposure(score=score, level=level_of(score), rows=out)
