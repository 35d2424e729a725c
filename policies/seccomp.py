"""Compile the `seccomp:` section of a profile into `plan.Seccomp` (pure).

Input (already shape-checked by the JSON Schema)::

    seccomp:
      enabled: true
      default_action: errno        # allow | errno | kill | log | trap
      default_errno: ENOSYS
      import: /abs/docker.json     # optional Docker/OCI seccomp JSON: the base rule set
      allow: ["@default", read, {names: [personality], args: [{index: 0, op: eq, value: 0}]}]
      deny:  ["@mount", {names: [ptrace], action: kill}, ...]
      deny_action: errno           # errno | kill | log | trap
      deny_errno: EPERM
      socket_families: {allow: [AF_UNIX, {family: AF_NETLINK, protocols: [NETLINK_ROUTE]}]}

Who decides a call (first match wins, for one syscall and one argument vector):
  1. the section's own allow/deny rules beat the imported rule set;
  2. the more specific rule (more argument conditions) beats the less specific one;
  3. at equal specificity a deny beats an allow;
  4. among denies the harsher action wins (kill > trap > errno/notify > log);
  5. then the later rule wins.
  Calls no rule matches get default_action.

A deny that reaches a syscall only through an @group is lifted when the plan keeps
the capability that governs that syscall (CAP_LIFTS: chown family <- CHOWN, setuid
family <- SETUID, setgid family <- SETGID, capset <- SETPCAP). An explicitly named
deny is never lifted.

The plan keeps, per syscall, rules in the order they are tried: the first whose conditions all
hold decides (policies/seccomp_verdict.py: the one verdict every consumer uses - the BPF
emitter in sandbox/seccomp.py emits exactly this first-match order, the notification
supervisor answers with it, `explain` and `learn` read it). When it can, the compiler resolves a
syscall's overlapping rules into disjoint single-comparison rules (a decision tree over the
arguments in ascending index order, each level split into intervals and bit-cubes of 64-bit
values) - then the order does not matter, the plan reads the same whatever order the profile
listed its rules in, and the rules are what libseccomp / an OCI runtime can hold (export). A
syscall whose rules that resolution cannot hold within its bounds (MAX_RULES, MAX_PIECES) keeps
its rules in priority order instead: still exact, still enforced, only not exportable.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Callable, Iterable, Optional

from . import syscalls as _sc
from .errors import Location, ProfileError
from .plan import ArgCond, Seccomp, SyscallRule
from .seccomp_verdict import MAX64, decide

OPS = ("eq", "ne", "lt", "le", "gt", "ge", "masked_eq")
DEFAULT_ACTIONS = ("allow", "errno", "kill", "log", "trap")
DENY_ACTIONS = ("errno", "kill", "log", "trap", "notify")
SEVERITY = {"kill": 4, "trap": 3, "errno": 2, "notify": 2, "log": 1, "allow": 0}

SECTION_KEYS = {"enabled", "default_action", "default_errno", "import", "allow", "deny",
                "deny_action", "deny_errno", "notify_denials", "socket_families",
                "audit_rate", "audit_burst"}
SOCKET_KEYS = {"allow", "deny", "errno", "comment"}
FAMILY_KEYS = {"family", "protocols", "capability", "comment"}
# The calls whose first argument is an address family (x86_64 has no socketcall).
SOCKET_CALLS = ("socket", "socketpair")
AUDIT_RATE_MAX = 1000        # the same bounds as audit/throttle.py (policies never imports audit)
AUDIT_BURST_MAX = 10000
ALLOW_KEYS = {"names", "args", "comment"}
DENY_KEYS = {"names", "action", "errno", "args", "comment"}
ARG_KEYS = {"index", "op", "value", "mask"}

# Capability-checked syscalls of @privileged whose group deny is lifted when the plan
# keeps the capability (the kernel's own capability check then decides).
CAP_LIFTS: dict[str, tuple[str, ...]] = {
    "CHOWN": ("chown", "chown32", "fchown", "fchown32", "fchownat", "lchown", "lchown32"),
    "SETUID": ("setfsuid", "setfsuid32", "setresuid", "setresuid32", "setreuid", "setreuid32",
               "setuid", "setuid32"),
    "SETGID": ("setfsgid", "setfsgid32", "setgid", "setgid32", "setgroups", "setgroups32",
               "setregid", "setregid32", "setresgid", "setresgid32"),
    "SETPCAP": ("capset",),
}

Locate = Callable[[tuple], Optional[Location]]


# =====================================================================================
# Sets of 64-bit argument values. An atom is
#   ("I", lo, hi)   the interval lo..hi
#   ("C", mask, v)  the cube {x : x & mask == v}
#   ("NE", v)       everything but v (only produced when merging sibling pieces)
# A condition on one argument is a union (list) of atoms.
# =====================================================================================

FULL = ("I", 0, MAX64)


def _norm(a):
    if a[0] == "C":
        m, v = a[1], a[2]
        if m == 0:
            return FULL
        if m == MAX64:
            return ("I", v, v)
    return a


def _prefix_cubes(lo: int, hi: int) -> list:
    """Split lo..hi into aligned blocks, each a cube (like CIDR prefixes)."""
    out = []
    while lo <= hi:
        size = 1 << 64 if lo == 0 else lo & -lo
        while lo + size - 1 > hi:
            size >>= 1
        out.append(_norm(("C", MAX64 ^ (size - 1), lo)))
        lo += size
    return out


def _is_full(a) -> bool:
    return a == FULL


def _atom_subset(a, b) -> bool:
    """a is a subset of b (False when unsure: only used for pruning)."""
    if _is_full(b):
        return True
    if a[0] == "I" and b[0] == "I":
        return b[1] <= a[1] and a[2] <= b[2]
    if a[0] == "C" and b[0] == "C":
        return (b[1] & ~a[1]) == 0 and (a[2] & b[1]) == b[2]
    if a[0] == "I" and b[0] == "C":
        if a[1] == a[2]:
            return (a[1] & b[1]) == b[2]
        return all(_atom_subset(c, b) for c in _prefix_cubes(a[1], a[2]))
    # a cube inside an interval: its smallest and largest members
    return b[1] <= a[2] and (a[2] | (MAX64 ^ a[1])) <= b[2]


def _atom_and(a, b) -> list:
    if _is_full(a):
        return [b]
    if _is_full(b):
        return [a]
    if a[0] == "I" and b[0] == "I":
        lo, hi = max(a[1], b[1]), min(a[2], b[2])
        return [("I", lo, hi)] if lo <= hi else []
    if a[0] == "C" and b[0] == "C":
        if (a[2] ^ b[2]) & a[1] & b[1]:
            return []
        return [_norm(("C", a[1] | b[1], a[2] | b[2]))]
    i, c = (a, b) if a[0] == "I" else (b, a)
    if i[1] == i[2]:
        return [i] if (i[1] & c[1]) == c[2] else []
    if _atom_subset(c, i):
        return [c]
    out = []
    for p in _prefix_cubes(i[1], i[2]):
        out.extend(_atom_and(p, c))
    return out


def _atom_not(a) -> list:
    if a[0] == "I":
        out = []
        if a[1] > 0:
            out.append(("I", 0, a[1] - 1))
        if a[2] < MAX64:
            out.append(("I", a[2] + 1, MAX64))
        return out
    m, v = a[1], a[2]
    out = []
    for bit in range(63, -1, -1):          # some masked bit differs from v
        b = 1 << bit
        if m & b:
            out.append(_norm(("C", b, (~v) & b)))
    return out


class TooComplex(Exception):
    """One syscall's argument conditions need more disjoint single-comparison rules (what
    libseccomp can hold) than MAX_RULES / MAX_PIECES allow: its rules stay in priority order."""


MAX_RULES = 128
MAX_PIECES = 1024


def _cond_atoms(c: ArgCond) -> list:
    """The values of one comparison, as a union of atoms."""
    v = c.value
    if c.op == "eq":
        return [("I", v, v)]
    if c.op == "ne":
        return _atom_not(("I", v, v))
    if c.op == "lt":
        return [("I", 0, v - 1)] if v > 0 else []
    if c.op == "le":
        return [("I", 0, v)]
    if c.op == "gt":
        return [("I", v + 1, MAX64)] if v < MAX64 else []
    if c.op == "ge":
        return [("I", v, MAX64)]
    if c.op == "masked_eq":
        return [] if v & ~c.mask & MAX64 else [_norm(("C", c.mask, v))]
    raise ValueError(c.op)


def _union_and(u1: list, u2: list) -> list:
    return [x for a in u1 for b in u2 for x in _atom_and(a, b)]


def conditions_by_index(conds: Iterable[ArgCond]) -> Optional[dict]:
    """{index: union of atoms} (AND of the comparisons per index); None if unsatisfiable."""
    out: dict[int, list] = {}
    for c in conds:
        u = _cond_atoms(c)
        out[c.index] = _union_and(out[c.index], u) if c.index in out else u
        if not out[c.index]:
            return None
    return {i: u for i, u in out.items() if FULL not in u}


def _expressible(a) -> bool:
    """One libseccomp comparison can say it."""
    if a[0] != "I":
        return True
    return a[1] == a[2] or a[1] == 0 or a[2] == MAX64


def _cube(a) -> tuple[int, int]:
    if a[0] == "C":
        return a[1], a[2]
    assert a[1] == a[2]
    return MAX64, a[1]


def _partition(unions: list[list]) -> list:
    """Disjoint single-comparison pieces covering all 64-bit values, each piece inside or
    outside every atom of every union."""
    atoms = {a for u in unions for a in u}
    if all(a[0] == "I" for a in atoms):
        cuts = {0}
        for a in atoms:
            cuts.add(a[1])
            if a[2] < MAX64:
                cuts.add(a[2] + 1)
        cuts = sorted(cuts) + [MAX64 + 1]
        pieces = []
        for lo, nxt in zip(cuts, cuts[1:]):
            p = ("I", lo, nxt - 1)
            pieces.extend([p] if _expressible(p) else _prefix_cubes(lo, nxt - 1))
        return pieces
    cubes: list[tuple[int, int]] = []
    for a in atoms:
        if a[0] == "C" or a[1] == a[2]:
            cubes.append(_cube(a))
        else:
            cubes.extend(_cube(p) for p in _prefix_cubes(a[1], a[2]))
    # Least specific cubes first: a 64-bit value carved out of the whole space first leaves 64
    # pieces behind it, each then split again by a low-32-bit mask (>128 rules for a masked_eq
    # socket rule beside exact families); carved out of the mask's few pieces it costs little.
    pieces = [(0, 0)]
    for am, av in sorted(set(cubes), key=lambda c: (bin(c[0]).count("1"), c)):
        new = []
        for xm, xv in pieces:
            if (xv ^ av) & xm & am:
                new.append((xm, xv))
                continue
            new.append((xm | am, xv | (av & am)))
            fixed = 0
            for bit in range(63, -1, -1):
                b = 1 << bit
                if am & b and not xm & b:
                    new.append((xm | fixed | b, (xv | (av & fixed) | (~av & b)) & (xm | fixed | b)))
                    fixed |= b
        pieces = new
        if len(pieces) > MAX_PIECES:
            raise TooComplex()
    return [_norm(("C", m, v)) for m, v in pieces]


def _cube_complement(c) -> list:
    """Disjoint cubes covering everything outside cube c."""
    m, v = c[1], c[2]
    out, fixed = [], 0
    for bit in range(63, -1, -1):
        b = 1 << bit
        if m & b:
            out.append(_norm(("C", fixed | b, (v & fixed) | (~v & b))))
            fixed |= b
    return out


def _inside(piece, union: list) -> bool:
    return any(_atom_subset(piece, a) for a in union)


def _merge_pieces(pieces: list) -> list:
    """Union of sibling pieces that lead to the same decision, in as few comparisons as possible."""
    ints = sorted(p for p in pieces if p[0] == "I")
    cubes = {_cube(p) for p in pieces if p[0] == "C"}
    out = []
    # adjacent intervals whose union is still one comparison
    run: list = []
    def flush():
        if not run:
            return
        lo, hi = run[0][1], run[-1][2]
        m = ("I", lo, hi)
        if len(run) > 1 and _expressible(m):
            out.append(m)
        else:
            out.extend(run)
    for p in ints:
        if run and run[-1][2] + 1 == p[1]:
            run.append(p)
        else:
            flush()
            run = [p]
    flush()
    # x != v: everything but one point
    lows = [p for p in out if p[0] == "I" and p[1] == 0 and p[2] < MAX64]
    highs = [p for p in out if p[0] == "I" and p[2] == MAX64 and p[1] > 0]
    for lo in lows:
        for hi in highs:
            if lo[2] + 2 == hi[1] and lo in out and hi in out:
                out.remove(lo)
                out.remove(hi)
                out.append(("NE", lo[2] + 1))
    # cubes differing in one fixed bit merge (Quine-McCluskey step)
    changed = True
    while changed:
        changed = False
        for (m1, v1), (m2, v2) in itertools.combinations(sorted(cubes), 2):
            d = v1 ^ v2
            if m1 == m2 and d and d & (d - 1) == 0 and d & m1:
                cubes -= {(m1, v1), (m2, v2)}
                cubes.add((m1 & ~d, v1 & ~d))
                changed = True
                break
    out.extend(_norm(("C", m, v)) for m, v in sorted(cubes))
    return out


def _tree(entries: list, default_key: tuple, budget: list):
    """Decision tree: ("L", key) or ("S", index, ((piece, child), ...)).
    entries: [(key, {index: union})] strongest first; the first whose conditions all hold decides."""
    if not entries:
        return ("L", default_key)
    if not entries[0][1]:
        return ("L", entries[0][0])
    idx = min(i for _, conds in entries for i in conds)
    unions = [conds[idx] for _, conds in entries if idx in conds]
    children = []
    for piece in _partition(unions):
        sub = []
        for key, conds in entries:
            if idx in conds:
                if not _inside(piece, conds[idx]):
                    continue
                conds = {i: u for i, u in conds.items() if i != idx}
            sub.append((key, conds))
            if not conds:
                break                    # unconditional here: shadows the rest
        children.append((piece, _tree(sub, default_key, budget)))
        budget[0] -= 1
        if budget[0] < 0:
            raise TooComplex()
    groups: dict = {}
    for piece, child in children:
        groups.setdefault(child, []).append(piece)
    if len(groups) == 1:
        return next(iter(groups))
    per = {child: _merge_pieces(pieces) for child, pieces in groups.items()}
    if len(per) == 2:                    # one side a single cube: the other is its complement
        (c1, p1), (c2, p2) = per.items()
        for (ca, pa), (cb, pb) in (((c1, p1), (c2, p2)), ((c2, p2), (c1, p1))):
            if len(pa) == 1 and pa[0][0] == "C":
                alt = _cube_complement(pa[0])
                if len(alt) < len(pb):
                    per[cb] = alt
    merged = []
    for child, pieces in per.items():
        merged.extend((p, child) for p in pieces)
    merged.sort(key=lambda pc: repr(pc[0]))
    return ("S", idx, tuple(merged))


def _piece_cond(i: int, p) -> Optional[ArgCond]:
    if p[0] == "NE":
        return ArgCond(i, "ne", p[1])
    if p[0] == "C":
        return ArgCond(i, "masked_eq", p[2], p[1])
    lo, hi = p[1], p[2]
    if lo == 0 and hi == MAX64:
        return None
    if lo == hi:
        return ArgCond(i, "eq", lo)
    if lo == 0:
        return ArgCond(i, "le", hi)
    if hi == MAX64:
        return ArgCond(i, "ge", lo)
    raise AssertionError(f"interval {p} is not one comparison")


def _emit(name: str, node, default_key: tuple, path: tuple, out: list) -> None:
    if node[0] == "L":
        key = node[1]
        if key != default_key:
            out.append(SyscallRule(name=name, action=key[0], errno=key[1], args=path))
        return
    _, idx, children = node
    for piece, child in children:
        c = _piece_cond(idx, piece)
        _emit(name, child, default_key, path + ((c,) if c else ()), out)


# =====================================================================================
# Rule resolution
# =====================================================================================

@dataclass
class Entry:
    """One source rule for one syscall, before resolution."""
    name: str
    action: str
    errno: Optional[int]
    args: tuple[ArgCond, ...]
    layer: int            # 0 imported, 1 the section's own
    order: int            # position in the source, later wins ties
    via_group: bool = False
    src: tuple = ()       # where it was written, under seccomp: (("deny", 3), ("socket_families",), ...)

    def key(self):
        return (self.layer, len(self.args), self.action != "allow", SEVERITY[self.action], self.order)


def resolve_entries(entries: list[Entry], default_action: str, default_errno: Optional[int]) -> list[SyscallRule]:
    """Prioritised, possibly overlapping rules -> the plan's rules (first match decides).

    Per syscall a decision tree is built over the arguments in ascending index order (the
    order libseccomp's own tree uses) and one disjoint rule emitted per leaf that differs from
    the default, sorted. A syscall whose tree goes over MAX_RULES leaves (or the bounds of its
    construction) keeps its rules in priority order instead (`_by_priority`): both read the
    same under first-match, so nothing is refused for a libseccomp limit."""
    by_name: dict[str, list[Entry]] = {}
    for e in entries:
        by_name.setdefault(e.name, []).append(e)
    default_key = (default_action, default_errno if default_action == "errno" else None)
    out: list[SyscallRule] = []
    for name in sorted(by_name):
        prepared = _prepare(by_name[name])
        rules = _resolve_one(name, prepared, default_key)
        out.extend(sort_rules(rules) if rules is not None else _by_priority(name, prepared, default_key))
    return out


def _prepare(es: list[Entry]) -> list[tuple]:
    """One syscall's rules strongest first as [(verdict key, {index: union})], up to the first
    unconditional one (nothing weaker matters); rules that can never match left out."""
    prepared = []
    for e in sorted(es, key=Entry.key, reverse=True):
        conds = conditions_by_index(e.args)
        if conds is None:
            continue                 # can never match
        prepared.append(((e.action, e.errno if e.action in ("errno", "notify") else None), conds, e.args))
        if not conds:
            break                    # unconditional: nothing weaker matters
    return prepared


def _resolve_one(name: str, prepared: list[tuple], default_key: tuple) -> Optional[list[SyscallRule]]:
    """One syscall's disjoint rules, or None when they need more than MAX_RULES of them."""
    try:
        tree = _tree([(k, conds) for k, conds, _ in prepared], default_key, [4 * MAX_RULES])
        rules: list[SyscallRule] = []
        _emit(name, tree, default_key, (), rules)
    except TooComplex:
        return None
    return rules if len(rules) <= MAX_RULES else None


def _by_priority(name: str, prepared: list[tuple], default_key: tuple) -> list[SyscallRule]:
    """One syscall's rules as written, strongest first (first match decides); the rules at the
    end that answer what the default answers anyway are dropped."""
    rules = [SyscallRule(name=name, action=k[0], errno=k[1], args=args) for k, _, args in prepared]
    while rules and (rules[-1].action, rules[-1].errno) == default_key:
        rules.pop()
    return rules


def disjoint(rules: list[SyscallRule]) -> bool:
    """No two of one syscall's rules match the same arguments (so their order does not matter
    and libseccomp / an OCI runtime evaluates them as the plan does)."""
    conds = [conditions_by_index(r.args) for r in rules]
    for (i, a), (j, b) in itertools.combinations(enumerate(conds), 2):
        if a is None or b is None:
            continue
        if not any(k in b and not _union_and(a[k], b[k]) for k in a):
            return False
    return True


def sort_rules(rules: Iterable[SyscallRule]) -> list[SyscallRule]:
    def k(r: SyscallRule):
        return (r.name, r.action, -1 if r.errno is None else r.errno,
                tuple((c.index, OPS.index(c.op), c.value, c.mask) for c in r.args))
    return sorted(set(rules), key=k)


def parse_int(v, what: str) -> int:
    """An argument value: int or string ('0x7e020000', '40', '-100'); 64-bit two's complement."""
    if isinstance(v, bool):
        raise ValueError(f"{what}: expected an integer, got {v!r}")
    if isinstance(v, str):
        try:
            v = int(v.strip().replace("_", ""), 0)
        except ValueError:
            raise ValueError(f"{what}: not an integer: {v!r}") from None
    if not isinstance(v, int):
        raise ValueError(f"{what}: expected an integer, got {v!r}")
    if not -(1 << 63) <= v <= MAX64:
        raise ValueError(f"{what}: {v} does not fit in 64 bits")
    return v & MAX64


class _Ctx:
    def __init__(self, locate: Optional[Locate], root: tuple = ("seccomp",)):
        self._locate = locate
        self.root = root

    def loc(self, *path) -> Optional[Location]:
        if self._locate is None:
            return None
        p = self.root + tuple(path)
        while p:
            try:
                loc = self._locate(p)
            except Exception:  # noqa: BLE001 - a locator must never hide the real error
                loc = None
            if loc is not None:
                return loc
            p = p[:-1]
        return None

    def fail(self, msg: str, *path):
        raise ProfileError(msg, self.loc(*path))


def _errno(ctx: _Ctx, value, *path) -> int:
    try:
        return _sc.errno_number(value)
    except ValueError as e:
        ctx.fail(f"seccomp: {e}", *path)


def _args(ctx: _Ctx, raw, *path) -> tuple[ArgCond, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        ctx.fail("seccomp: 'args' must be a list of {index, op, value[, mask]}", *path)
    out = []
    seen = set()
    for j, a in enumerate(raw):
        p = path + (j,)
        if not isinstance(a, dict):
            ctx.fail("seccomp: an argument condition must be a mapping {index, op, value[, mask]}", *p)
        extra = set(a) - ARG_KEYS
        if extra:
            ctx.fail(f"seccomp: unknown key {sorted(extra)[0]!r} in argument condition", *p, sorted(extra)[0])
        idx = a.get("index")
        if isinstance(idx, bool) or not isinstance(idx, int) or not 0 <= idx <= 5:
            ctx.fail(f"seccomp: argument index must be 0..5, got {idx!r}", *p, "index")
        op = a.get("op")
        if op not in OPS:
            ctx.fail(f"seccomp: unknown comparison op {op!r} (expected one of {', '.join(OPS)})", *p, "op")
        if "value" not in a:
            ctx.fail("seccomp: argument condition needs a 'value'", *p)
        try:
            value = parse_int(a["value"], "value")
        except ValueError as e:
            ctx.fail(f"seccomp: {e}", *p, "value")
        mask = 0
        if op == "masked_eq":
            if "mask" not in a:
                ctx.fail("seccomp: masked_eq needs a 'mask'", *p)
            try:
                mask = parse_int(a["mask"], "mask")
            except ValueError as e:
                ctx.fail(f"seccomp: {e}", *p, "mask")
        elif "mask" in a:
            ctx.fail(f"seccomp: 'mask' is only valid with op masked_eq, not {op}", *p, "mask")
        if idx in seen:
            # AND of two comparisons on one argument: fine for us (the algebra splits it)
            pass
        seen.add(idx)
        out.append(ArgCond(idx, op, value, mask))
    return tuple(out)


def _names(ctx: _Ctx, item, skipped: set, *path) -> list[tuple[str, bool]]:
    """Names (with @groups expanded) of one list item: [(name, via_group)]."""
    if isinstance(item, str):
        raw, base = [item], path
    else:
        raw = item.get("names")
        if isinstance(raw, str):
            raw = [raw]
        if not isinstance(raw, list) or not raw:
            ctx.fail("seccomp: 'names' must be a non-empty list of syscall names or @groups", *path, "names")
        base = path + ("names",)
    out = []
    for j, n in enumerate(raw):
        p = base if isinstance(item, str) else base + (j,)
        if not isinstance(n, str) or not n:
            ctx.fail(f"seccomp: syscall name must be a string, got {n!r}", *p)
        if _sc.is_group(n):
            table = _sc.groups()
            if n not in table:
                ctx.fail(f"seccomp: unknown syscall group {n!r} (known: {', '.join(sorted(table))})", *p)
            for m in table[n]:
                if _sc.is_known(m):
                    out.append((m, True))
                else:
                    skipped.add(m)
        else:
            kind = _sc.classify(n)
            if kind == "unknown":
                ctx.fail(f"seccomp: unknown syscall {n!r}", *p)
            if kind == "foreign":
                skipped.add(n)
            else:
                out.append((n, False))
    return out


def compile_seccomp(section: Optional[dict], *, capabilities: Iterable[str] = frozenset(),
                    locate: Optional[Locate] = None, kernel: Optional[tuple[int, int]] = None,
                    root: tuple = ("seccomp",)) -> Seccomp:
    """Compile a profile's `seccomp:` mapping into plan.Seccomp.

    capabilities: capabilities the program keeps (names with or without CAP_);
      used by the Docker import (includes/excludes) and by CAP_LIFTS.
    locate(path_tuple) -> Location | None, e.g. locate(("seccomp", "allow", 3)).
    kernel: (major, minor) of the running kernel for Docker `minKernel`; None means
      unknown, and then minKernel-gated rules are left out (the stricter reading).
    A missing section (None) compiles Docker's default profile, as `docker run` does.
    """
    from . import docker_seccomp  # local: avoids an import cycle

    ctx = _Ctx(locate, root)
    caps = frozenset(_sc.cap_name(c) for c in capabilities)
    if section is None:
        section = {"import": _sc.DOCKER_DEFAULT_FILE}
    if not isinstance(section, dict):
        ctx.fail("seccomp: the section must be a mapping")
    extra = set(section) - SECTION_KEYS
    if extra:
        k = sorted(extra)[0]
        ctx.fail(f"seccomp: unknown key {k!r}", k)

    enabled = section.get("enabled", True)
    if not isinstance(enabled, bool):
        ctx.fail("seccomp: 'enabled' must be true or false", "enabled")
    notify = section.get("notify_denials", False)
    if not isinstance(notify, bool):
        ctx.fail("seccomp: 'notify_denials' must be true or false", "notify_denials")
    rate = section.get("audit_rate")
    if rate is not None and (isinstance(rate, bool) or not isinstance(rate, (int, float))
                             or not 0.1 <= rate <= AUDIT_RATE_MAX):
        ctx.fail(f"seccomp: 'audit_rate' must be a number of records per second from 0.1 to {AUDIT_RATE_MAX}",
                 "audit_rate")
    burst = section.get("audit_burst")
    if burst is not None and (isinstance(burst, bool) or not isinstance(burst, int)
                              or not 1 <= burst <= AUDIT_BURST_MAX):
        ctx.fail(f"seccomp: 'audit_burst' must be a whole number of records from 1 to {AUDIT_BURST_MAX}",
                 "audit_burst")
    audit_limits = {"audit_rate": None if rate is None else float(rate), "audit_burst": burst}
    if not enabled:
        return Seccomp(enabled=False, default_action="allow", default_errno=None, rules=(),
                       skipped=(), notify_denials=False)

    skipped: set[str] = set()
    entries: list[Entry] = []
    default_action, default_errno = "errno", 38

    # 1. the imported base set
    if section.get("import") is not None:
        path = section["import"]
        if not isinstance(path, str) or not path:
            ctx.fail("seccomp: 'import' must be a file path", "import")
        imp = docker_seccomp.import_file(path, capabilities=caps, kernel=kernel, location=ctx.loc("import"))
        default_action, default_errno = imp.default_action, imp.default_errno
        skipped.update(imp.skipped)
        for i, r in enumerate(imp.rules):
            entries.append(Entry(r.name, r.action, r.errno, r.args, layer=0, order=i, src=("import",)))

    # 2. the section's defaults
    if "default_action" in section:
        default_action = section["default_action"]
        if default_action not in DEFAULT_ACTIONS:
            ctx.fail(f"seccomp: default_action must be one of {', '.join(DEFAULT_ACTIONS)}, got {default_action!r}",
                     "default_action")
        if default_action == "errno" and "default_errno" not in section and default_errno is None:
            default_errno = 38
    if "default_errno" in section:
        default_errno = _errno(ctx, section["default_errno"], "default_errno")
    if default_action != "errno":
        default_errno = None
    elif default_errno is None:
        default_errno = 38

    deny_action = section.get("deny_action", "errno")
    if deny_action not in DENY_ACTIONS:
        ctx.fail(f"seccomp: deny_action must be one of errno, kill, log, trap, got {deny_action!r}", "deny_action")
    deny_errno = _errno(ctx, section.get("deny_errno", "EPERM"), "deny_errno")

    order = len(entries)

    # 3a. socket families (added before the allow/deny lists: a list rule wins a tie with them)
    fam = section.get("socket_families")
    if fam is not None:
        for name, action, err, args in socket_family_rules(ctx, fam, caps):
            order += 1
            entries.append(Entry(name, action, err, args, layer=1, order=order, src=("socket_families",)))

    lifted = set()
    for cap, names in CAP_LIFTS.items():
        if cap in caps:
            lifted.update(names)

    # 3. allow list
    allow = section.get("allow") or []
    if not isinstance(allow, list):
        ctx.fail("seccomp: 'allow' must be a list", "allow")
    for i, item in enumerate(allow):
        if isinstance(item, dict):
            extra = set(item) - ALLOW_KEYS
            if extra:
                k = sorted(extra)[0]
                ctx.fail(f"seccomp: unknown key {k!r} in an allow rule (allowed: names, args)", "allow", i, k)
            args = _args(ctx, item.get("args"), "allow", i, "args")
        elif isinstance(item, str):
            args = ()
        else:
            ctx.fail("seccomp: an allow item must be a syscall name, an @group or {names, args}", "allow", i)
        for name, via_group in _names(ctx, item, skipped, "allow", i):
            order += 1
            entries.append(Entry(name, "allow", None, args, layer=1, order=order, via_group=via_group,
                                 src=("allow", i)))

    # 4. deny list
    deny = section.get("deny") or []
    if not isinstance(deny, list):
        ctx.fail("seccomp: 'deny' must be a list", "deny")
    for i, item in enumerate(deny):
        action, err, args = deny_action, deny_errno, ()
        if isinstance(item, dict):
            extra = set(item) - DENY_KEYS
            if extra:
                k = sorted(extra)[0]
                ctx.fail(f"seccomp: unknown key {k!r} in a deny rule (allowed: names, action, errno, args)",
                         "deny", i, k)
            if "action" in item:
                action = item["action"]
                if action not in DENY_ACTIONS:
                    ctx.fail(f"seccomp: a deny action must be one of errno, kill, log, trap, got {action!r}",
                             "deny", i, "action")
            if "errno" in item:
                if action not in ("errno", "notify"):
                    ctx.fail(f"seccomp: 'errno' given for action {action}", "deny", i, "errno")
                err = _errno(ctx, item["errno"], "deny", i, "errno")
            args = _args(ctx, item.get("args"), "deny", i, "args")
        elif not isinstance(item, str):
            ctx.fail("seccomp: a deny item must be a syscall name, an @group or {names, action, errno, args}",
                     "deny", i)
        e = err if action in ("errno", "notify") else None
        for name, via_group in _names(ctx, item, skipped, "deny", i):
            if via_group and name in lifted:
                continue
            order += 1
            entries.append(Entry(name, action, e, args, layer=1, order=order, via_group=via_group,
                                 src=("deny", i)))

    rules = resolve_entries(entries, default_action, default_errno)
    return Seccomp(enabled=True, default_action=default_action, default_errno=default_errno,
                   rules=tuple(rules), skipped=tuple(sorted(skipped)), notify_denials=notify,
                   **audit_limits)


# =====================================================================================
# Socket address families
# =====================================================================================

def socket_family_rules(ctx: "_Ctx", section, caps: frozenset) -> list[tuple]:
    """`socket_families:` -> [(syscall, action, errno, args)] for socket and socketpair.

    allow: [families]  every other family is denied (an unconditional deny on both calls,
                       beaten by one exact-match allow per family: arg0 == family);
    deny:  [families]  exactly these are denied, and with them every value from AF_MAX on:
                       the kernel knows no such family, and a value with any of the high 32
                       bits set is one the kernel reads as its low 32 bits (socket's domain is
                       an int) - so no denied family can be passed as 0x1000000xx.
    A family is `AF_NAME` or {family, protocols: [NETLINK_...] (AF_NETLINK: arg2), capability:
    CAP} - a family with `capability` counts as allowed only when the plan keeps it. Allowed
    values are exact 64-bit matches: a family with high bits set never matches an allow rule.
    Every rule compares one or two arguments with `eq`/`ge`: the allowed fast path is a
    handful of comparisons, and extending the list adds one rule per family (no products)."""
    path = ("socket_families",)
    if not isinstance(section, dict):
        ctx.fail("seccomp: 'socket_families' must be a mapping {allow: [...]} or {deny: [...]}", *path)
    extra = set(section) - SOCKET_KEYS
    if extra:
        k = sorted(extra)[0]
        ctx.fail(f"seccomp: unknown key {k!r} in socket_families (allowed: allow, deny, errno)", *path, k)
    modes = [k for k in ("allow", "deny") if section.get(k) is not None]
    if not modes:
        return []
    if len(modes) > 1:
        ctx.fail("seccomp: socket_families takes either 'allow' (an allow-list) or 'deny', not both",
                 *path, "deny")
    mode = modes[0]
    err = _errno(ctx, section.get("errno", "EAFNOSUPPORT"), *path, "errno")
    items = section[mode]
    if not isinstance(items, list):
        ctx.fail(f"seccomp: socket_families.{mode} must be a list of families", *path, mode)
    chosen: dict[int, Optional[tuple]] = {}          # family -> protocols (None: any)
    for i, item in enumerate(items):
        p = path + (mode, i)
        protocols, cap = None, None
        if isinstance(item, dict):
            extra = set(item) - FAMILY_KEYS
            if extra:
                k = sorted(extra)[0]
                ctx.fail(f"seccomp: unknown key {k!r} in a socket family (allowed: family, protocols, "
                         "capability)", *p, k)
            if "family" not in item:
                ctx.fail("seccomp: a socket family mapping needs 'family'", *p)
            value = item["family"]
            fp = p + ("family",)
            if item.get("protocols") is not None:
                raw = item["protocols"]
                if not isinstance(raw, list) or not raw:
                    ctx.fail("seccomp: 'protocols' must be a non-empty list of NETLINK_* protocols",
                             *p, "protocols")
                protocols = []
                for j, pr in enumerate(raw):
                    try:
                        protocols.append(_sc.netlink_protocol(pr))
                    except ValueError as e:
                        ctx.fail(f"seccomp: {e}", *p, "protocols", j)
            if item.get("capability") is not None:
                c = item["capability"]
                from .plan import CAPABILITIES
                if not isinstance(c, str) or _sc.cap_name(c) not in CAPABILITIES:
                    ctx.fail(f"seccomp: unknown capability {c!r}", *p, "capability")
                cap = _sc.cap_name(c)
        else:
            value, fp = item, p
        try:
            f = _sc.socket_family(value)
        except ValueError as e:
            ctx.fail(f"seccomp: {e}", *fp)
        if protocols is not None and f != _sc.SOCKET_FAMILIES["AF_NETLINK"]:
            ctx.fail("seccomp: 'protocols' is only understood for AF_NETLINK", *p, "protocols")
        # "allowed only with CAP": an allow item without the cap is left out (denied); a deny
        # item with the cap is left out (allowed)
        if cap is not None and (cap in caps) != (mode == "allow"):
            continue
        if protocols is None or (f in chosen and chosen[f] is None):
            chosen[f] = None                       # the whole family
        else:
            chosen[f] = tuple(sorted(set(chosen.get(f, ()) + tuple(protocols))))
    out: list[tuple] = []
    for name in SOCKET_CALLS:
        if mode == "allow":
            out.append((name, "errno", err, ()))
        else:
            out.append((name, "errno", err, (ArgCond(0, "ge", _sc.AF_MAX),)))
        for f, protos in sorted(chosen.items(), key=lambda x: x[0]):
            fam = ArgCond(0, "eq", f)
            if protos is None:
                out.append((name, "allow" if mode == "allow" else "errno",
                            None if mode == "allow" else err, (fam,)))
                continue
            for pr in protos:
                out.append((name, "allow" if mode == "allow" else "errno",
                            None if mode == "allow" else err, (fam, ArgCond(2, "eq", pr))))
            if mode == "allow":        # the family's other protocols
                out.append((name, "errno", err, (fam,)))
            else:                      # protocols the kernel reads differently (high bits)
                out.append((name, "errno", err, (fam, ArgCond(2, "ge", _sc.NETLINK_MAX_LINKS))))
    return out


def socket_family_verdicts(s: Seccomp) -> list[tuple[str, str]]:
    """What the plan answers socket(family, SOCK_STREAM, 0) for every family the kernel knows
    (AF_NETLINK per protocol when they differ): [(family name, verdict)], for `explain`."""
    out = []
    for f in range(_sc.AF_MAX):
        name = _sc.SOCKET_FAMILY_NAMES.get(f, str(f))
        if f == _sc.SOCKET_FAMILIES["AF_NETLINK"]:
            per = {pr: _verdict(decide(s, "socket", (f, 3, pr))) for pr in range(_sc.NETLINK_MAX_LINKS)}
            if len(set(per.values())) > 1:
                allowed = [p for p, v in per.items() if v == "allow"]
                if allowed:
                    out.append((name + "(" + ",".join(_sc.NETLINK_PROTOCOL_NAMES.get(p, str(p))
                                                      for p in allowed) + ")", "allow"))
                    out.append((name + "(other protocols)",
                                next(v for v in per.values() if v != "allow")))
                    continue
        out.append((name, _verdict(decide(s, "socket", (f, 1, 0)))))
    return out


def _verdict(d: tuple) -> str:
    a, e = d
    return f"{a}({_sc.errno_name(e)})" if e is not None else a


def describe_rule(r: SyscallRule) -> str:
    act = r.action if r.errno is None else f"{r.action}({_sc.errno_name(r.errno)})"
    conds = []
    for c in r.args:
        if c.op == "masked_eq":
            conds.append(f"arg{c.index} & {c.mask:#x} == {c.value:#x}")
        else:
            sym = {"eq": "==", "ne": "!=", "lt": "<", "le": "<=", "gt": ">", "ge": ">="}[c.op]
            conds.append(f"arg{c.index} {sym} {c.value:#x}")
    return f"{r.name}{'(' + ' && '.join(conds) + ')' if conds else ''} -> {act}"
