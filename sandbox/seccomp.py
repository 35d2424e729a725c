"""Seccomp: plan.Seccomp -> classic BPF bytes (libseccomp) -> kernel.

build_bpf() is the only place pysandbox uses libseccomp to generate a filter; its
output is cacheable (deterministic for one plan and one libseccomp). install() loads
those bytes through sandbox._sys.seccomp_load and never imports pyseccomp, so a
cached launch pays nothing for libseccomp.

The filter covers the native architecture only; any other architecture (x86 32-bit
int 0x80, x32 syscall numbers) is answered with KILL_PROCESS.
"""
from __future__ import annotations

import os
from typing import Iterable, Optional

ENOSYS = 38

# SECCOMP_RET_* values (for people reading the BPF) and the libseccomp op numbers.
RET_KILL_PROCESS = 0x80000000
RET_KILL_THREAD = 0x00000000
RET_TRAP = 0x00030000
RET_ERRNO = 0x00050000
RET_USER_NOTIF = 0x7FC00000
RET_LOG = 0x7FFC0000
RET_ALLOW = 0x7FFF0000
_OPS = {"ne": 1, "lt": 2, "le": 3, "eq": 4, "ge": 5, "gt": 6, "masked_eq": 7}


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


def build_bpf(s, *, notify_enosys: bool = False, timeout: float = 20.0) -> bytes:
    """Compile plan.Seccomp into a BPF program (bytes, 8 per instruction).

    With s.notify_denials, errno rules (and an errno default) become
    SECCOMP_RET_USER_NOTIF so a supervisor can record each denial and answer it with
    the rule's errno (see Decider). ENOSYS answers - unlisted syscalls and feature
    probes such as clone3 - stay plain errno unless notify_enosys is set: they are
    compatibility answers, and glibc probes clone3 at every thread start.
    Returns b"" when seccomp is disabled. Raises ValueError when libseccomp refuses.

    libseccomp runs in a forked child: libseccomp 2.5.4 can loop forever on some mixes
    of 64-bit masked comparisons, and a profile must never hang the launcher.
    """
    if not s.enabled:
        return b""
    import pyseccomp  # noqa: F401  lazy: only on a cache miss; imported before the fork
    import select
    import signal
    import time

    r, w = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:                                   # child: build, write, exit
        code = 0
        try:
            os.close(r)
            try:
                out = b"B" + _build_bpf_here(s, notify_enosys)
            except Exception as e:  # noqa: BLE001 - reported to the parent
                out, code = b"E" + str(e).encode(errors="replace"), 1
            view = memoryview(out)
            while view:
                n = os.write(w, view)
                view = view[n:]
        finally:
            os._exit(code)
    os.close(w)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([r], [], [], left)[0]:
                os.kill(pid, signal.SIGKILL)
                raise ValueError(f"seccomp: libseccomp did not finish building the filter in {timeout:g}s "
                                 "(libseccomp 2.5 can loop on some 64-bit masked_eq combinations); "
                                 "simplify the argument conditions")
            b = os.read(r, 1 << 16)
            if not b:
                break
            chunks.append(b)
    finally:
        os.close(r)
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:  # pragma: no cover - someone else reaped it
            pass
    out = b"".join(chunks)
    if out[:1] == b"E":
        raise ValueError(out[1:].decode(errors="replace"))
    bpf = out[1:]
    if out[:1] != b"B" or not bpf or len(bpf) % 8:
        raise ValueError("seccomp: libseccomp produced no usable BPF program")
    if len(bpf) // 8 > 4096:
        raise ValueError(f"seccomp: the filter has {len(bpf) // 8} instructions, the kernel allows 4096")
    return bpf


def _build_bpf_here(s, notify_enosys: bool) -> bytes:
    import pyseccomp

    def act(action, errno):
        if _notified(action, errno, s.notify_denials, notify_enosys):
            return RET_USER_NOTIF
        return _act(action, errno)

    default = act(s.default_action, s.default_errno)
    f = pyseccomp.SyscallFilter(default)
    f.set_attr(pyseccomp.Attr.ACT_BADARCH, RET_KILL_PROCESS)
    try:
        f.set_attr(pyseccomp.Attr.CTL_OPTIMIZE, 2)     # binary tree over syscall numbers
    except OSError:  # pragma: no cover - older libseccomp
        pass
    for r in s.rules:
        if act(r.action, r.errno) == default:
            continue                # libseccomp refuses rules that restate the default (EACCES)
        args = [pyseccomp.Arg(c.index, _OPS[c.op], c.mask if c.op == "masked_eq" else c.value,
                              c.value if c.op == "masked_eq" else 0) for c in r.args]
        try:
            f.add_rule_exactly(act(r.action, r.errno), r.name, *args)
        except OSError as e:
            raise ValueError(f"seccomp: libseccomp refused rule {r}: {e.strerror}") from None
    fd = os.memfd_create("pysandbox-seccomp", os.MFD_CLOEXEC)
    try:
        with open(fd, "w+b", closefd=False) as fh:
            f.export_bpf(fh)
        os.lseek(fd, 0, os.SEEK_SET)
        chunks = []
        while True:
            b = os.read(fd, 1 << 16)
            if not b:
                break
            chunks.append(b)
    finally:
        os.close(fd)
    bpf = b"".join(chunks)
    verify_bpf(s, bpf, notify_enosys)
    return bpf


def _probe_values(conds) -> list[int]:
    M64 = 0xFFFFFFFFFFFFFFFF
    vals = {0, 1, M64}
    for c in conds:
        if c.op == "masked_eq":
            m, v = c.mask, c.value
            low = m & -m
            vals.update({v, v | (~m & M64), (v ^ m) & M64, v ^ low, (v | (~m & M64)) ^ low})
        else:
            vals.update({c.value, (c.value - 1) & M64, (c.value + 1) & M64})
    return sorted(vals)


def _bpf_constants(prog) -> dict[int, set[int]]:
    """Constants the program compares each 32-bit word of seccomp_data against
    (offset of the word -> constants), from `ld [off]` followed by jumps."""
    out: dict[int, set[int]] = {}
    off = None
    for code, _jt, _jf, k in prog:
        cls = code & 0x07
        if cls == 0x00 and code & 0xE0 == 0x20:
            off = k
        elif cls == 0x05 and code & 0xF0 and off is not None:
            out.setdefault(off, set()).add(k)
        elif cls == 0x04 and code & 0xF0 == 0x50 and off is not None:   # and-mask
            out.setdefault(off, set()).add(k)
    return out


def _word_probes(consts: set[int], extra: Iterable[int]) -> list[int]:
    M = 0xFFFFFFFF
    vals = {0, 1, M, M - 1, 0x80000000, 0x7FFFFFFF}
    for k in set(consts) | set(extra):
        k &= M
        vals.update({k, (k - 1) & M, (k + 1) & M, k ^ M})
        low = k & -k
        if low:
            vals.update({k & ~low, k | (low >> 1)})
    return sorted(vals)


def _arg_probes(prog_consts: dict, conds, i: int) -> list[int]:
    """Argument values at every boundary the plan or the program draws for argument i."""
    M = 0xFFFFFFFF
    lo_extra, hi_extra = set(), set()
    for c in conds:
        for v in (c.value, c.mask):
            lo_extra.add(v & M)
            hi_extra.add(v >> 32)
    los = _word_probes(prog_consts.get(16 + 8 * i, set()), lo_extra)
    his = _word_probes(prog_consts.get(20 + 8 * i, set()), hi_extra)
    return [(h << 32) | lo for h in his for lo in los]


def verify_bpf(s, bpf: bytes, notify_enosys: bool = False, limit: int = 200000) -> None:
    """Check the generated program against the plan at the boundary values of every
    argument condition (and every named syscall once). libseccomp 2.5 builds wrong
    argument trees for some rule shapes; a wrong filter must never be loaded."""
    import itertools
    import random
    import pyseccomp
    from policies.seccomp import cond_matches

    prog = decode_bpf(bpf)
    consts = _bpf_constants(prog)

    def expected(rules, args):
        for r in rules:
            if all(cond_matches(c, args[c.index]) for c in r.args):
                return r.action, r.errno
        return s.default_action, s.default_errno

    def ret(action, errno):
        if _notified(action, errno, s.notify_denials, notify_enosys):
            return RET_USER_NOTIF
        return _act(action, errno)

    by_name: dict[str, list] = {}
    for r in s.rules:
        by_name.setdefault(r.name, []).append(r)
    rng = random.Random(0)
    budget = limit
    for name, rules in sorted(by_name.items()):
        nr = pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE, name)
        idxs = sorted({c.index for r in rules for c in r.args})
        conds = [[c for r in rules for c in r.args if c.index == i] for i in idxs]

        def combos_of(per, n):
            total = 1
            for p in per:
                total *= len(p)
            if total <= n:
                return itertools.product(*per)
            return (tuple(rng.choice(p) for p in per) for _ in range(n))

        # 1. every combination of the plan's own boundary values (x-1, x, x+1, mask variants);
        # 2. the program's 32-bit word boundaries (exhaustive for one argument, sampled for more)
        combos = itertools.chain(
            combos_of([_probe_values(cs) for cs in conds], 30000),
            combos_of([_arg_probes(consts, cs, i) for cs, i in zip(conds, idxs)], 4000))
        for combo in combos:
            args = [0] * 6
            for i, v in zip(idxs, combo):
                args[i] = v
            want = ret(*expected(rules, args))
            got = run_bpf(prog, nr, args)
            if got != want:
                shown = ", ".join(hex(a) for a in args[:max(idxs) + 1]) if idxs else ""
                raise ValueError(f"seccomp: libseccomp built a wrong filter for {name}({shown}) "
                                 f"(answers {got:#x}, the policy says {want:#x}); "
                                 f"simplify the argument conditions of {name}")
            budget -= 1
            if budget <= 0:
                return


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


class Decider:
    """For a supervisor answering notifications: syscall number + args -> the
    plan's (action, errno). Rules are disjoint, so the first match is the answer."""

    def __init__(self, s):
        import pyseccomp
        self.seccomp = s
        self.by_nr: dict[int, list] = {}
        self.names: dict[int, str] = {}
        for r in s.rules:
            nr = pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE, r.name)
            self.by_nr.setdefault(nr, []).append(r)
            self.names[nr] = r.name

    def name(self, nr: int) -> str:
        if nr not in self.names:
            import pyseccomp
            try:
                self.names[nr] = pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE, nr).decode()
            except ValueError:
                self.names[nr] = f"syscall_{nr}"
        return self.names[nr]

    def decide(self, nr: int, args: Iterable[int]) -> tuple[str, Optional[int]]:
        from policies.seccomp import cond_matches
        s = self.seccomp
        a = list(args) + [0] * 6
        for r in self.by_nr.get(nr, ()):
            if all(cond_matches(c, a[c.index]) for c in r.args):
                return (r.action, r.errno)
        return (s.default_action, s.default_errno)


# --- a classic-BPF interpreter for seccomp programs ------------------------------
# Used by tests and `explain`-style tools to ask what a generated program answers
# for (arch, nr, args) without loading it. Pure Python, no syscalls.

AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}


def native_audit_arch() -> int:
    import platform
    return AUDIT_ARCH[platform.machine()]


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
