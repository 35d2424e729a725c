"""Seccomp: plan.Seccomp -> classic BPF bytes (our own emitter) -> kernel.

filters() decides, once per launch, the filter a run's program loads and how its denials reach
the supervisor (a listener, the kernel's audit records, or not at all); exec_filters() the two a
detached sandbox keeps for `pysandbox exec`. build_bpf() emits a filter itself - no libseccomp -
and its output is cacheable (deterministic for one plan). install() loads those bytes through
sandbox._sys.seccomp_load.

The program, in the order the kernel runs it:
  1. the architecture: anything but the native one (x86 32-bit int 0x80) -> KILL_PROCESS;
  2. the syscall number: a binary search over ranges of numbers with one answer each; on
     x86_64 the x32 numbers (0x40000000 and up, except -1) -> KILL_PROCESS, as libseccomp did.
     The search is weighted: numbers with argument rules sit near the root (the kernel's action
     cache skips the program for numbers it always allows, so those are what the program runs for);
  3. a syscall with argument rules: its rules in the plan's order, the first whose conditions
     all hold answers (policies.seccomp_verdict.rule_for: the plan's verdict), else the default;
     a run of disjoint one-interval rules on one argument word (ioctl's request blocks) is one
     binary search over that word (being disjoint, their order cannot change the answer).
Each 64-bit comparison is two 32-bit ones (high word, then low word).
"""
from __future__ import annotations

import functools
from dataclasses import replace

TYPE_CHECKING = False  # annotations only (postponed): importing typing is ~2 ms of the launch path
if TYPE_CHECKING:
    from typing import Iterable, Optional

from policies.plan import dataclass            # shared methods, none compiled by exec at import

ENOSYS = 38

# SECCOMP_RET_* values
RET_ACTION_FULL = 0xFFFF0000
RET_DATA = 0x0000FFFF
RET_KILL_PROCESS = 0x80000000
RET_KILL_THREAD = 0x00000000
RET_TRAP = 0x00030000
RET_ERRNO = 0x00050000
RET_USER_NOTIF = 0x7FC00000
RET_LOG = 0x7FFC0000
RET_ALLOW = 0x7FFF0000

MAX_INSNS = 4096                 # BPF_MAXINSNS
ARGS_WEIGHT = 8                  # see build_bpf: argument-checked numbers nearer the search's root
X32_SYSCALL_BIT = 0x40000000
M32 = 0xFFFFFFFF


def _act(action: str, errno: Optional[int]) -> int:
    if action == "allow":
        return RET_ALLOW
    if action == "errno":
        return RET_ERRNO | ((errno if errno is not None else 1) & 0xFFFF)
    if action == "kill":
        return RET_KILL_PROCESS
    if action == "trap":
        return RET_TRAP
    if action == "log":
        return RET_LOG
    if action == "notify":
        return RET_USER_NOTIF
    raise ValueError(f"seccomp: unknown action {action!r}")


def _notified(action: str, errno: Optional[int], notify_denials: bool, notify_enosys: bool) -> bool:
    if action == "notify":
        return True
    return notify_denials and action == "errno" and (errno != ENOSYS or notify_enosys)


def needs_listener(s, *, notify_enosys: bool = False) -> bool:
    """True when the filter has user-notification rules (install with listener=True)."""
    if not s.enabled:
        return False
    if _notified(s.default_action, s.default_errno, s.notify_denials, notify_enosys):
        return True
    return any(_notified(r.action, r.errno, s.notify_denials, notify_enosys) for r in s.rules)


# --- the filters of a run -----------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def user_notif_available() -> bool:
    """Does this kernel offer seccomp user notification (SECCOMP_RET_USER_NOTIF)? (Read once per
    process: asked at every audited launch.)"""
    try:
        with open("/proc/sys/kernel/seccomp/actions_avail") as f:
            return "user_notif" in f.read().split()
    except OSError:
        return False


class FilterError(ValueError):
    """A plan whose denials cannot be supervised as it asks (one line)."""


@dataclass(frozen=True)
class Filters:
    """What one run loads, decided by filters().

    program: the program's filter (None: seccomp off).
    mode:    how its denials reach the supervisor (sandbox/notify/): "user_notif" - the program
             loads it with SECCOMP_FILTER_FLAG_NEW_LISTENER and hands the listener over;
             "kmsg" - the kernel's audit records (/dev/kmsg); None - they are not recorded.
    log:     load with SECCOMP_FILTER_FLAG_LOG (the kmsg fallback: every denial audit-logged)."""
    program: Optional[bytes]
    mode: Optional[str] = None
    log: bool = False


# The program hands its listener over with sendmsg and closes it, *after* its filter is loaded.
HANDOVER_CALLS = ("sendmsg", "close")

_PER_PLAN: dict = {}     # id(seccomp plan) -> (plan, {question: answer}): plans are frozen


def _per_plan(s, question, compute):
    """A fact about a (frozen, immutable) seccomp plan, computed once per plan object: a launch
    server asks the same questions of the same plan at every launch."""
    entry = _PER_PLAN.get(id(s))
    if entry is None or entry[0] is not s:
        if len(_PER_PLAN) > 256:
            _PER_PLAN.clear()
        entry = _PER_PLAN[id(s)] = (s, {})
    facts = entry[1]
    if question not in facts:
        facts[question] = compute()
    return facts[question]


def plan_allows(s, name: str) -> bool:
    """Does the plan allow `name` for every argument? (unconditional allow rule, or no rule
    and an allowing default)."""
    def compute() -> bool:
        from policies.seccomp_verdict import fixed_verdict
        v = fixed_verdict(s, name)
        return v is not None and v[0] in ("allow", "log")
    return _per_plan(s, ("allows", name), compute)


def _has_kill(s) -> bool:
    return _per_plan(s, "has_kill", lambda: s.default_action == "kill" or any(r.action == "kill" for r in s.rules))


def _kill_as_notify(s):
    rules = tuple(replace(r, action="notify", errno=None) if r.action == "kill" else r for r in s.rules)
    return replace(s, rules=rules, default_action="notify" if s.default_action == "kill" else s.default_action)


def plain_bpf(s) -> bytes:
    """The plan's filter without notification of denials (plain errno/kill actions): what the
    kmsg fallback loads, and a detached sandbox's `exec` without a supervisor."""
    return _per_plan(s, "bpf_plain", lambda: build_bpf(replace(s, notify_denials=False)))


def filters(s, bpf: Optional[bytes] = None, *, audit: bool, learn: bool = False) -> Filters:
    """The filter a run's program loads and how its denials reach the supervisor: decided here,
    once per launch, by the supervisor's side (launcher.Launch.context).

    s:     plan.Seccomp. bpf: build_bpf(s) when the caller has it (a cached plan's, the API's,
           learn mode's own); built here when None (ValueError as build_bpf's).
    audit: the run records its denials (an audit sink); without it the program's filter is bpf.
    learn: learn mode (`pysandbox learn`): s is the learn filter's plan, every call it notifies
           goes to the learn supervisor.
    With audit, when the plan notifies denials (or in learn mode):
      user notification available: the program hands its listener over; a plan that would deny
        that hand-over (HANDOVER_CALLS) raises FilterError; kill rules become notify actions -
        recorded first, then the supervisor kills the sandbox (its plan still says kill);
      else (learn mode: OSError ENOSYS): plain errno/kill actions, loaded with
        SECCOMP_FILTER_FLAG_LOG; the kernel's audit records are read (mode "kmsg")."""
    if not s.enabled:
        return Filters(None)
    program = build_bpf(s) if bpf is None else bpf
    if not audit or not program or not learn and not needs_listener(s):
        return Filters(program)
    if user_notif_available():
        # denied through notification, the hand-over would make the program wait for a supervisor
        # that waits for the listener: refused up front
        for call in HANDOVER_CALLS:
            if not plan_allows(s, call):
                raise FilterError(f"notify_denials needs {call} allowed (the program hands its "
                                  f"seccomp listener to the supervisor with it)")
        if not learn and _has_kill(s):
            # kill rules are recorded first, then the sandbox is killed: they must reach the
            # supervisor (as notify); the supervisor's plan still says kill
            program = _per_plan(s, "bpf_kill_as_notify", lambda: build_bpf(_kill_as_notify(s)))
        return Filters(program, "user_notif")
    if learn:
        import errno
        raise OSError(errno.ENOSYS, "learn mode needs seccomp user notification")
    return Filters(plain_bpf(s), "kmsg", log=True)


def exec_filters(s, bpf: Optional[bytes]) -> tuple[bytes, bytes]:
    """The two filters a detached sandbox (`run -d`) keeps for `pysandbox exec`: (plain, notify).
    plain: the sandbox's own rules with plain errno/kill actions (notify actions need a listener;
    with none attached the kernel would answer ENOSYS instead). notify: the filter an exec'd
    command loads when its denials can be recorded (the run's own under audit, kill rules
    delivered as notifications first), b"" when they cannot."""
    plain = bpf if not s.notify_denials and bpf else plain_bpf(s)
    if not s.notify_denials or not bpf or not user_notif_available():
        return plain, b""
    try:
        f = filters(s, bpf, audit=True)
    except (OSError, ValueError):
        return plain, b""
    return plain, f.program if f.mode == "user_notif" and f.program else b""


# --- the emitter ------------------------------------------------------------------------------
# classic BPF opcodes (linux/bpf_common.h)
_LD_ABS = 0x20          # BPF_LD | BPF_W | BPF_ABS
_AND_K = 0x54           # BPF_ALU | BPF_AND | BPF_K
_JA = 0x05
_JEQ, _JGT, _JGE = 0x15, 0x25, 0x35
_RET_K = 0x06
_OFF_NR, _OFF_ARCH, _OFF_ARGS = 0, 4, 16


class _Asm:
    """Instructions with symbolic jump targets (labels); assemble() lays them out, adding a
    `ja` trampoline after a conditional jump whose target is more than 255 away."""

    def __init__(self):
        self.ins: list = []          # [code, k, jt_label, jf_label] or ("label", n)
        self.n = 0

    def label(self) -> int:
        self.n += 1
        return self.n

    def place(self, label: int) -> None:
        self.ins.append(("label", label))

    def op(self, code: int, k: int = 0) -> None:
        self.ins.append([code, k, None, None])

    def jump(self, code: int, k: int, jt: int, jf: int) -> None:
        self.ins.append([code, k, jt, jf])

    def ja(self, target: int) -> None:
        self.ins.append([_JA, 0, target, None])

    def ret(self, value: int) -> None:
        self.ins.append([_RET_K, value, None, None])

    def assemble(self) -> bytes:
        import struct
        far: set = set()                 # (instruction index, side) that go through a trampoline
        while True:
            pos, where, i = {}, [], 0
            for n, x in enumerate(self.ins):
                if x[0] == "label":
                    pos[x[1]] = i
                    where.append(None)
                    continue
                where.append(i)
                i += 1 + ((n, 0) in far) + ((n, 1) in far)
            more = set()
            for n, x in enumerate(self.ins):
                if x[0] == "label" or x[0] == _JA or x[2] is None:
                    continue
                for side in (0, 1):
                    if (n, side) not in far and pos[x[2 + side]] - where[n] - 1 > 255:
                        more.add((n, side))
            if not more:
                break
            far |= more
        out = []
        for n, x in enumerate(self.ins):
            if x[0] == "label":
                continue
            code, k, jt, jf = x
            at = where[n]
            if code == _JA:
                out.append(struct.pack("<HBBI", _JA, 0, 0, pos[jt] - at - 1))
            elif jt is None:
                out.append(struct.pack("<HBBI", code, 0, 0, k))
            else:
                tramp = [s for s in (0, 1) if (n, s) in far]
                offs = []
                for side, target in ((0, jt), (1, jf)):
                    if (n, side) in far:
                        offs.append(tramp.index(side))        # its trampoline, right after
                    else:
                        offs.append(pos[target] - at - 1)
                out.append(struct.pack("<HBBI", code, offs[0], offs[1], k))
                for j, side in enumerate(tramp):
                    target = jt if side == 0 else jf
                    out.append(struct.pack("<HBBI", _JA, 0, 0, pos[target] - (at + 1 + j) - 1))
        return b"".join(out)


def _emit_cond(a: _Asm, c, ok: int, fail: int) -> None:
    """Jump to `ok` when the 64-bit comparison c holds for its argument, else to `fail`."""
    lo, hi = _OFF_ARGS + 8 * c.index, _OFF_ARGS + 8 * c.index + 4
    v = c.value
    vh, vl = v >> 32, v & M32
    if c.op == "masked_eq":
        if v & ~c.mask:
            a.ja(fail)                   # a value bit outside the mask: never equal
            return
        words = [(off, m, w) for off, m, w in ((hi, c.mask >> 32, vh), (lo, c.mask & M32, vl)) if m]
        if not words:
            a.ja(ok)
            return
        for j, (off, m, w) in enumerate(words):
            nxt = ok if j == len(words) - 1 else a.label()
            a.op(_LD_ABS, off)
            if m != M32:
                a.op(_AND_K, m)
            a.jump(_JEQ, w, nxt, fail)
            if nxt != ok:
                a.place(nxt)
        return
    cont = a.label()
    a.op(_LD_ABS, hi)
    if c.op in ("eq", "ne"):
        equal, unequal = (ok, fail) if c.op == "eq" else (fail, ok)
        a.jump(_JEQ, vh, cont, unequal)
        a.place(cont)
        a.op(_LD_ABS, lo)
        a.jump(_JEQ, vl, equal, unequal)
        return
    above, below = (ok, fail) if c.op in ("gt", "ge") else (fail, ok)
    eqw = a.label()
    a.jump(_JGT, vh, above, eqw)         # high word above: decided
    a.place(eqw)
    a.jump(_JEQ, vh, cont, below)        # high word below: decided
    a.place(cont)
    a.op(_LD_ABS, lo)
    if c.op in ("gt", "le"):
        a.jump(_JGT, vl, above, below)
    else:                                # ge, lt: low word >= vl
        a.jump(_JGE, vl, above, below)


def _interval(c):
    """(index, high word or None, first, last) when condition c holds exactly when args[index]'s
    low 32-bit word is in [first, last] (and its high word equals `high`, None: any); else None.
    An eq, or a masked_eq whose mask keeps the high word whole or not at all and clears only
    low bits of the low word (the compiler's aligned blocks: ioctl requests, personality)."""
    if c.op == "eq":
        return c.index, c.value >> 32, c.value & M32, c.value & M32
    if c.op != "masked_eq" or c.value & ~c.mask:
        return None
    mh, ml = c.mask >> 32, c.mask & M32
    if mh not in (0, M32):
        return None
    free = ~ml & M32
    if free & (free + 1):                # the cleared bits are not the lowest ones
        return None
    return c.index, (c.value >> 32 if mh else None), c.value & M32, (c.value & M32) | free


MIN_RUN = 4


def _run_at(rules, i: int):
    """The longest run of rules from i that are each one disjoint interval (_interval) of the same
    argument word: those can be decided by a binary search rather than one after the other (being
    disjoint, at most one of them matches: their order cannot change the answer). -> (count,
    index, high, [(first, last, rule)]) or None when shorter than MIN_RUN."""
    run, key = [], None
    for r in rules[i:]:
        iv = _interval(r.args[0]) if len(r.args) == 1 else None
        if iv is None or (key is not None and iv[:2] != key):
            break
        key = iv[:2]
        run.append((iv[2], iv[3], r))
    while len(run) >= MIN_RUN:
        ordered = sorted(run, key=lambda x: x[0])
        if all(b[0] > a_[1] for a_, b in zip(ordered, ordered[1:])):
            return len(run), key[0], key[1], ordered
        run.pop()                        # overlapping: a shorter run, or none
    return None


def _emit_rules(a: _Asm, rules, ret, default: int) -> None:
    """One syscall's argument rules, first match in order, else the default. A run of disjoint
    single-interval rules on one argument word (_run_at) is one binary search over that word."""
    i = 0
    while i < len(rules):
        run = _run_at(rules, i)
        if run is not None:
            count, index, high, ordered = run
            nxt = a.label()
            if high is not None:
                cont = a.label()
                a.op(_LD_ABS, _OFF_ARGS + 8 * index + 4)
                a.jump(_JEQ, high, cont, nxt)
                a.place(cont)
            a.op(_LD_ABS, _OFF_ARGS + 8 * index)
            segs, at = [], 0
            for first, last, r in ordered:
                if first > at:
                    segs.append((at, ("next",)))
                segs.append((first, ("ret", ret(r.action, r.errno))))
                at = last + 1
            if at <= M32:
                segs.append((at, ("next",)))
            merged: list = []
            for first, leaf in segs:
                if not (merged and merged[-1][1] == leaf):
                    merged.append((first, leaf))

            def leaf_at(leaf):
                if leaf[0] == "ret":
                    a.ret(leaf[1])
                else:
                    a.ja(nxt)
            _search(a, merged, [1] * len(merged), leaf_at)
            a.place(nxt)
            i += count
            continue
        r = rules[i]
        nxt = a.label()
        for c in r.args:
            ok = a.label()
            _emit_cond(a, c, ok, nxt)
            a.place(ok)
        a.ret(ret(r.action, r.errno))
        a.place(nxt)
        i += 1
    a.ret(default)


def _search(a: _Asm, ranges: list, weights: list, leaf_at) -> None:
    """A binary search over ranges [(first value, leaf)] (sorted, covering 0..2^32-1) of the value
    in A: each split with JGE where the weights on both sides are closest (equal weights: the
    middle), so that heavy leaves sit near the root; leaf_at(leaf) emits a leaf."""
    prefix = [0]
    for w in weights:
        prefix.append(prefix[-1] + w)

    def go(lo: int, hi: int) -> None:
        if hi - lo == 1:
            leaf_at(ranges[lo][1])
            return
        total = prefix[hi] + prefix[lo]
        mid = min(range(lo + 1, hi), key=lambda m: (abs(2 * prefix[m] - total), abs(2 * m - lo - hi)))
        left, right = a.label(), a.label()
        a.jump(_JGE, ranges[mid][0], right, left)
        a.place(left)
        go(lo, mid)
        a.place(right)
        go(mid, hi)
    go(0, len(ranges))


def _ranges(leaves: dict, default: int, x32: bool) -> list:
    """Syscall numbers 0..2^32-1 as [(first number, leaf)]: a leaf is ("ret", value) or
    ("args", rules); neighbouring numbers with one return value share a range."""
    cuts = dict(leaves)
    if x32:
        cuts[X32_SYSCALL_BIT] = ("ret", RET_KILL_PROCESS)
        cuts[M32] = ("ret", default)                      # -1: as libseccomp, not killed
    out: list = []
    nxt = 0
    for nr in sorted(cuts):
        if x32 and X32_SYSCALL_BIT < nr < M32:
            continue
        if nr > nxt:
            out.append((nxt, ("ret", default)))
        out.append((nr, cuts[nr]))
        nxt = (M32 if nr == X32_SYSCALL_BIT else nr + 1)
    if nxt <= M32 and (not out or out[-1][0] != M32):
        out.append((nxt, ("ret", default)))
    merged: list = []
    for first, leaf in out:
        if merged and leaf[0] == "ret" and merged[-1][1] == leaf:
            continue
        merged.append((first, leaf))
    return merged


def build_bpf(s, *, notify_enosys: bool = False) -> bytes:
    """Compile plan.Seccomp into a BPF program (bytes, 8 per instruction).

    With s.notify_denials, errno rules (and an errno default) become SECCOMP_RET_USER_NOTIF so
    a supervisor can record each denial and answer it with the rule's errno (sandbox/notify/).
    ENOSYS answers - unlisted syscalls and feature probes such as clone3 - stay plain errno
    unless notify_enosys is set: they are compatibility answers, and glibc probes clone3 at
    every thread start. Returns b"" when seccomp is disabled. Raises ValueError for a syscall
    this machine has no number for, or a program over the kernel's 4096 instructions."""
    if not s.enabled:
        return b""
    from policies import syscalls as _names      # lazy: name -> number only on a cache miss

    def ret(action, errno):
        if _notified(action, errno, s.notify_denials, notify_enosys):
            return RET_USER_NOTIF
        return _act(action, errno)

    default = ret(s.default_action, s.default_errno)
    native = native_audit_arch()
    x32 = native == AUDIT_ARCH["x86_64"]
    by_nr: dict[int, list] = {}
    for r in s.rules:
        nr = _names.resolve(r.name)
        if nr is None or nr < 0 or (x32 and nr >= X32_SYSCALL_BIT):
            raise ValueError(f"seccomp: no syscall number for {r.name!r} on this machine")
        by_nr.setdefault(nr, []).append(r)
    leaves = {}
    for nr, rules in by_nr.items():
        cut = next((i for i, r in enumerate(rules) if not r.args), None)
        if cut is not None:
            rules = rules[:cut + 1]              # after an unconditional rule nothing is reached
        while rules and ret(rules[-1].action, rules[-1].errno) == default:
            rules = rules[:-1]                   # answers what the default answers
        if not rules:
            continue
        leaves[nr] = ("ret", ret(rules[0].action, rules[0].errno)) if not rules[0].args else ("args", rules)
    ranges = _ranges(leaves, default, x32)

    a = _Asm()
    kill = a.label()
    go = a.label()
    a.op(_LD_ABS, _OFF_ARCH)
    a.jump(_JEQ, native, go, kill)
    a.place(go)
    a.op(_LD_ABS, _OFF_NR)
    blocks: list = []

    def leaf_at(leaf) -> None:
        if leaf[0] == "ret":
            a.ret(leaf[1])
        else:
            target = a.label()
            blocks.append((target, leaf[1]))
            a.ja(target)
    # the kernel (5.11+) skips the filter for a number it always allows whatever the arguments
    # (its seccomp action cache): the program runs for argument-checked and denied calls only, so
    # those with argument rules are placed near the root (a weight of ARGS_WEIGHT against 1)
    _search(a, ranges, [ARGS_WEIGHT if leaf[0] == "args" else 1 for _, leaf in ranges], leaf_at)
    for target, rules in blocks:
        a.place(target)
        _emit_rules(a, rules, ret, default)
    a.place(kill)
    a.ret(RET_KILL_PROCESS)
    bpf = a.assemble()
    if len(bpf) // 8 > MAX_INSNS:
        raise ValueError(f"seccomp: the filter has {len(bpf) // 8} instructions, the kernel allows {MAX_INSNS}")
    return bpf


def install(bpf: bytes, *, listener: bool = False, log: bool = False) -> Optional[int]:
    """Load a BPF program into the calling thread (call after no_new_privs, just
    before execve). Returns the user-notification listener fd when listener=True,
    else None. Raises OSError (EACCES: neither no_new_privs nor CAP_SYS_ADMIN).
    log=True adds SECCOMP_FILTER_FLAG_LOG (every non-allow action is audit-logged)."""
    if not bpf:
        return None
    from . import _sys
    flags = 0
    if listener:
        flags |= _sys.SECCOMP_FILTER_FLAG_NEW_LISTENER
    if log:
        flags |= _sys.SECCOMP_FILTER_FLAG_LOG
    res = _sys.seccomp_load(bpf, flags)
    return res if listener else None


# --- a classic-BPF interpreter for seccomp programs ------------------------------
# Used by tests and `explain`-style tools to ask what a generated program answers
# for (arch, nr, args) without loading it. Pure Python, no syscalls.

AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}


def native_audit_arch() -> int:
    import os                        # platform.machine() is os.uname().machine; importing platform is ~4 ms
    return AUDIT_ARCH[os.uname().machine]


def decode_bpf(bpf: bytes) -> list[tuple[int, int, int, int]]:
    import struct
    return [struct.unpack_from("<HBBI", bpf, i) for i in range(0, len(bpf), 8)]


def run_bpf(bpf, nr: int, args: Iterable[int] = (), arch: Optional[int] = None,
            ip: int = 0) -> int:
    """Evaluate a seccomp BPF program (bytes, or decode_bpf() output); returns the
    SECCOMP_RET_* value the kernel would act on."""
    import struct
    prog = decode_bpf(bpf) if isinstance(bpf, (bytes, bytearray)) else bpf
    a6 = (list(args) + [0] * 6)[:6]
    data = struct.pack("<iIQ6Q", nr, native_audit_arch() if arch is None else arch, ip,
                       *[x & 0xFFFFFFFFFFFFFFFF for x in a6])
    A = X = 0
    mem = [0] * 16
    pc = 0
    M = 0xFFFFFFFF
    for _ in range(100000):
        code, jt, jf, k = prog[pc]
        cls = code & 0x07
        if cls == 0x00:                                   # BPF_LD
            mode, size = code & 0xE0, code & 0x18
            if mode == 0x20 and size == 0x00:             # ABS, W
                A = struct.unpack_from("<I", data, k)[0]
            elif mode == 0x00:                            # IMM
                A = k
            elif mode == 0x60:                            # MEM
                A = mem[k]
            elif mode == 0x80:                            # LEN
                A = len(data)
            else:
                raise ValueError(f"bpf: unsupported ld {code:#x}")
        elif cls == 0x01:                                 # BPF_LDX
            mode = code & 0xE0
            X = k if mode == 0x00 else mem[k] if mode == 0x60 else len(data)
        elif cls == 0x02:                                 # BPF_ST
            mem[k] = A
        elif cls == 0x03:                                 # BPF_STX
            mem[k] = X
        elif cls == 0x04:                                 # BPF_ALU
            op, src = code & 0xF0, (X if code & 0x08 else k)
            if op == 0x00:
                A = (A + src) & M
            elif op == 0x10:
                A = (A - src) & M
            elif op == 0x20:
                A = (A * src) & M
            elif op == 0x30:
                A = A // src
            elif op == 0x40:
                A = A | src
            elif op == 0x50:
                A = A & src
            elif op == 0x60:
                A = (A << src) & M
            elif op == 0x70:
                A = A >> src
            elif op == 0x80:
                A = (-A) & M
            elif op == 0xA0:
                A = A ^ src
            else:
                raise ValueError(f"bpf: unsupported alu {code:#x}")
        elif cls == 0x05:                                 # BPF_JMP
            op, src = code & 0xF0, (X if code & 0x08 else k)
            if op == 0x00:
                pc += k
            else:
                cond = {0x10: A == src, 0x20: A > src, 0x30: A >= src, 0x40: (A & src) != 0}[op]
                pc += jt if cond else jf
        elif cls == 0x06:                                 # BPF_RET
            return k if (code & 0x18) == 0x00 else A
        elif cls == 0x07:                                 # BPF_MISC
            if code & 0xF8 == 0x00:
                X = A
            else:
                A = X
        pc += 1
    raise ValueError("bpf: program did not terminate")
