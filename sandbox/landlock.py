"""Landlock: a profile's ruleset (plan.landlock, policies/landlock.py) built and checked.

`check(plan)` (launcher.preflight, and the namespace-free backend) refuses a kernel whose ABI is
below the profile's `abi` or below what its rules need. `build(plan)` runs where the program's
paths are its own (after pivot_root: init.landlock_rules; the namespace-free backend: the host's)
and returns a ruleset descriptor; the program's process enters it with landlock_restrict_self just
before it drops its privileges (init.confine; pysandbox-init: pid1.c program(), the descriptor
passed in the PROGRAM section). The ruleset always scopes abstract unix sockets as well (ABI >= 6,
what init.confine did alone before: PID 1 out of the program's reach).

Every file system right this kernel knows is handled (denied unless a rule grants it); rights a
kernel does not know are not handled there (Landlock's best effort: `abi:` refuses such kernels
instead). Raw system calls: sandbox/_sys.py.
"""
from __future__ import annotations

import os
import re
import socket
import stat
import struct
import threading

from policies import plan as P
from policies.landlock import MAX_CARVE_ENTRIES, CarveError, carve_execute

from . import _sys

FS_BIT = {name: 1 << i for i, (name, _abi) in enumerate(P.LANDLOCK_FS_RIGHTS)}
FS_ABI = dict(P.LANDLOCK_FS_RIGHTS)
FILE_MASK = sum(FS_BIT[n] for n in P.LANDLOCK_FILE_RIGHTS)
NET_BIND_TCP, NET_CONNECT_TCP = 1, 2
SCOPE_BIT = {"abstract_unix_socket": 1, "signal": 2}
RESTRICT_SELF_LOG_NEW_EXEC_ON = 2          # ABI 7: audit the denials of the program execve'd after
LOG_ABI = 7


class LandlockError(Exception):
    """A Landlock control the profile asks for cannot be enforced here (exit 125)."""


def required_abi(plan) -> int:
    ll = plan.landlock
    return 0 if ll is None else max(ll.abi, ll.needs_abi)


def check(plan, abi: "int | None" = None) -> None:
    """Refuse a kernel below the profile's Landlock ABI (one line; the launcher exits 125)."""
    need = required_abi(plan)
    have = _sys.landlock_abi() if abi is None else abi
    if need and have < need:
        ll = plan.landlock
        why = (f"the profile asks for abi {ll.abi}" if ll.abi >= ll.needs_abi
               else f"its rules need ABI {ll.needs_abi} (network: 4, scope: 6)")
        raise LandlockError(f"landlock: this kernel has {f'Landlock ABI {have}' if have else 'no Landlock'}; "
                            f"{why}")


def handled_fs(abi: int) -> int:
    return sum(bit for name, bit in FS_BIT.items() if FS_ABI[name] <= abi)


def mask(access: tuple) -> int:
    return sum(FS_BIT[a] for a in set(access))


def restrict_flags(abi: "int | None" = None) -> int:
    """landlock_restrict_self's flags: on ABI 7 the program's denials are logged (kernel audit)."""
    return RESTRICT_SELF_LOG_NEW_EXEC_ON if (_sys.landlock_abi() if abi is None else abi) >= LOG_ABI else 0


def build(plan, root: str = "") -> int:
    """The plan's ruleset as a descriptor (-1: no rules; the caller then confines itself as
    before, init.confine). Paths are opened (O_PATH, following symlinks: the program would) under
    `root` ("" : this process's root). A rule on a path that does not exist: a write or execute rule
    refuses the launch (the profile means a path we cannot show it); a read rule, or a rule derived
    from the mounts (`required` false), is skipped: it would grant nothing. Derived rules keep W^X
    where an execute rule covers a writable path (an image's `/` over /tmp): execute is granted per
    entry listed here instead (policies.landlock.carve_execute; too many entries: LandlockError)."""
    ll = plan.landlock
    if ll is None:
        return -1
    abi = _sys.landlock_abi()
    check(plan, abi)
    fs_bits = handled_fs(abi) if ll.filesystem else 0
    net_bits = NET_BIND_TCP | NET_CONNECT_TCP if ll.network else 0
    scoped = sum(SCOPE_BIT[s] for s in ll.scope)
    if abi >= _sys.LANDLOCK_SCOPE_ABI:
        scoped |= SCOPE_BIT["abstract_unix_socket"]
    if not (fs_bits or net_bits or scoped):
        return -1                              # nothing to restrict (a bare `abi:`)
    paths = rule_paths(plan, fs_bits, root)
    fd = _sys.landlock_create_ruleset(fs_bits, net_bits, scoped)
    try:
        for rule in paths:
            allowed = mask(rule.access) & fs_bits
            try:
                pfd = os.open(root + rule.path, os.O_PATH | os.O_CLOEXEC)
            except OSError as e:
                if rule.required:
                    raise LandlockError(f"landlock: {rule.path}: {e.strerror} in the sandbox (a write or "
                                        f"execute rule must name a path that exists)") from None
                continue
            try:
                if not stat.S_ISDIR(os.fstat(pfd).st_mode):
                    allowed &= FILE_MASK
                if allowed:
                    _sys.landlock_add_path(fd, allowed, pfd)
            finally:
                os.close(pfd)
        for port in ll.bind:
            _sys.landlock_add_port(fd, NET_BIND_TCP, port)
        for port in ll.connect:
            _sys.landlock_add_port(fd, NET_CONNECT_TCP, port)
    except BaseException:
        os.close(fd)
        raise
    return fd


def rule_paths(plan, fs_bits: int, root: str = "", listdir=None) -> tuple:
    """The path rules build() adds to the ruleset (derived rules carved for W^X), also what the
    notify-layer fallback predicts Landlock's answers from (sandbox/notify/landlock_fallback.py,
    with a `listdir(path)` of its own that stays inside the program's root)."""
    ll = plan.landlock
    paths = ll.paths
    if ll.derived and fs_bits:
        try:
            paths = carve_execute(paths, listdir or (lambda p: _listdir(root + p)))
        except CarveError as e:
            raise LandlockError(str(e)) from None
    return paths


def _listdir(path) -> "list | None":
    """The names of a directory's entries that are not symbolic links (carve_execute), at most
    MAX_CARVE_ENTRIES + 1 of them; None when `path` (or a directory descriptor) is not a
    directory (or is gone)."""
    names = []
    try:
        with os.scandir(path) as it:
            for e in it:
                if not e.is_symlink():
                    names.append(e.name)
                if len(names) > MAX_CARVE_ENTRIES:
                    break
    except (NotADirectoryError, FileNotFoundError):
        return None
    return names


def build_recorded(plan: dict) -> int:
    """build() for a recorded sandbox's plan (its state's JSON: `pysandbox exec`, after joining its
    mount namespace, so that the paths are the sandbox's)."""
    ll = plan.get("landlock")
    if not ll:
        return -1
    paths = tuple(P.LandlockPath(p["path"], tuple(p["access"]), bool(p.get("required", True)))
                  for p in ll.get("paths") or ())
    rec = P.Landlock(abi=int(ll.get("abi", 1)), needs_abi=int(ll.get("needs_abi", 1)),
                     filesystem=bool(ll.get("filesystem")), paths=paths, derived=bool(ll.get("derived")),
                     network=bool(ll.get("network")), bind=tuple(ll.get("bind") or ()),
                     connect=tuple(ll.get("connect") or ()), scope=tuple(ll.get("scope") or ()))
    return build(_Recorded(rec))


class _Recorded:
    """(what build() reads of a plan)"""
    def __init__(self, landlock):
        self.landlock = landlock


def enter(fd: int) -> None:
    """The calling thread enters the ruleset `fd` (closed)."""
    try:
        _sys.landlock_restrict_self(fd, restrict_flags())
    finally:
        os.close(fd)


# --- Landlock denials in the audit log ----------------------------------------------------------
# Linux 6.15+ (ABI 7) reports a denial through the audit subsystem, only while audit is enabled:
# `type=1423` (AUDIT_LANDLOCK_ACCESS: domain, blockers, path or port) and, at a domain's first
# denial, `type=1424` (AUDIT_LANDLOCK_DOMAIN: the domain's creator, pid=). Without auditd they
# are printed to the kernel log (/dev/kmsg), where DenialWatch reads them and attributes a domain
# to the sandbox by its creator's pid (docs/security.md, "Landlock denials in the audit log").
AUDIT_GET, AUDIT_LANDLOCK_ACCESS, AUDIT_LANDLOCK_DOMAIN = 1000, 1423, 1424
_RECORD = re.compile(r"audit: type=(1423|1424) audit\([^)]*\): (.*)$")
_FIELD = re.compile(r"(\w+)=(\"[^\"]*\"|\S+)")
LINGER = 0.3                           # seconds DenialWatch.stop waits for kauditd's last records
MAX_DENIALS = 1000                     # per run: the rest are counted, not kept (bounded memory)


_AUDIT_ENABLED: "bool | None" = None
NLMSG_ERROR = 2


def audit_enabled() -> bool:
    """Whether the kernel's audit subsystem is enabled (AUDIT_GET over NETLINK_AUDIT; needs
    CAP_AUDIT_CONTROL: False for anyone else, who could not read its records in kmsg either).
    The kernel's refusal (an NLMSG_ERROR, EPERM for a rootless caller) is the answer: it used to
    be skipped and the call waited out its timeout (1 s a launch). Asked once per process."""
    global _AUDIT_ENABLED
    if _AUDIT_ENABLED is None:
        _AUDIT_ENABLED = _ask_audit()
    return _AUDIT_ENABLED


def _ask_audit() -> bool:
    try:
        with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 9) as s:
            s.settimeout(1)
            s.bind((0, 0))
            s.send(struct.pack("=IHHII", 16, AUDIT_GET, 1, 1, 0))      # NLM_F_REQUEST
            for _ in range(4):
                d = s.recv(8192)
                if len(d) < 16:
                    return False
                kind = struct.unpack_from("=H", d, 4)[0]
                if kind == AUDIT_GET and len(d) >= 24:
                    return struct.unpack_from("=I", d, 20)[0] != 0
                if kind == NLMSG_ERROR and (len(d) < 20 or struct.unpack_from("=i", d, 16)[0] != 0):
                    return False                                   # refused (an ack, error 0, is not the answer)
    except OSError:
        pass
    return False


def _unquote(v: str) -> str:
    if len(v) >= 2 and v[0] == v[-1] == '"':
        return v[1:-1]
    if len(v) % 2 == 0 and len(v) >= 2 and all(c in "0123456789ABCDEF" for c in v):
        return bytes.fromhex(v).decode(errors="replace")     # audit's encoding of unusual strings
    return v


def parse_record(line: str) -> "tuple[int, dict] | None":
    """A /dev/kmsg line -> (1423 or 1424, its fields), None for anything else."""
    m = _RECORD.search(line)
    if not m:
        return None
    return int(m.group(1)), {k: _unquote(v) for k, v in _FIELD.findall(m.group(2)[:4096])}


def denial_event(fields: dict, pid: int) -> dict:
    """A 1423 record's fields -> the keyword arguments of a `landlock_denied` audit event."""
    access = [b for b in fields.get("blockers", "").split(",") if b]
    where = fields.get("path") or (f"tcp port {fields['dest']}" if "dest" in fields else
                                   f"tcp port {fields['src']}" if "src" in fields else "")
    detail = {k: v for k, v in fields.items() if k not in ("blockers", "path")}
    return dict(path=fields.get("path"), errno=13, via="kmsg", pid=pid, detail={"access": access, **detail},
                message=f"landlock denied {' '.join(access) or 'access'}" + (f" on {where}" if where else ""))


class DenialWatch:
    """Reads /dev/kmsg from now on in a thread of its own; a 1423 record whose domain was created by
    a process `match_pid(pid)` accepts becomes on_event("landlock_denied", ...). stop() drains
    and ends it. Bounded: MAX_DENIALS events, records of at most 4 KiB."""

    def __init__(self, on_event, match_pid):
        self.on_event, self.match_pid = on_event, match_pid
        self.fd = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        os.lseek(self.fd, 0, os.SEEK_END)
        self.domains: dict = {}            # domain -> creator pid (ours) or None
        self.pending: dict = {}            # domain -> [fields] seen before its 1424 record
        self.count = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="landlock-audit", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self._drain()

    def _drain(self) -> None:
        while True:
            try:
                line = os.read(self.fd, 8192).decode(errors="replace")
            except BlockingIOError:
                return
            except OSError as e:
                if e.errno == 32:          # EPIPE: records overwritten meanwhile; go on
                    continue
                return
            if not line:
                return
            rec = parse_record(line.rstrip("\n"))
            if rec is not None:
                self._record(*rec)

    def _record(self, kind: int, fields: dict) -> None:
        dom = fields.get("domain")
        if not dom:
            return
        if kind == AUDIT_LANDLOCK_DOMAIN:
            if fields.get("status") == "allocated" and dom not in self.domains:
                try:
                    pid = int(fields.get("pid", ""))
                except ValueError:
                    pid = 0
                self.domains[dom] = pid if pid and self.match_pid(pid) else None
                for f in self.pending.pop(dom, ()):
                    self._emit(dom, f)
            return
        if dom in self.domains:
            self._emit(dom, fields)
        elif len(self.pending) < 64:
            seen = self.pending.setdefault(dom, [])
            if len(seen) < 16:
                seen.append(fields)

    def _emit(self, dom: str, fields: dict) -> None:
        pid = self.domains.get(dom)
        if pid is None or self.count >= MAX_DENIALS:
            return
        self.count += 1
        try:
            self.on_event("landlock_denied", **denial_event(fields, pid))
        except Exception:                  # noqa: BLE001 - the audit must never end the run
            pass

    def stop(self, linger: float = LINGER) -> None:
        """kauditd prints the records after the denial, asynchronously: they may come after the
        program's end, hence the linger (only where audit is enabled: no cost elsewhere)."""
        self._stop.wait(linger)
        self._stop.set()
        self._thread.join(2)
        self._drain()
        os.close(self.fd)


def pidns_of(pid: int):
    """A matcher: processes in the pid namespace `pid` is in (the sandbox's, from its PID 1)."""
    try:
        want = os.stat(f"/proc/{pid}/ns/pid").st_ino
    except OSError:
        return lambda p: False

    def match(p: int) -> bool:
        try:
            return os.stat(f"/proc/{p}/ns/pid").st_ino == want
        except OSError:
            return False
    return match


# --- which source records a run's Landlock denials: the one decision point ----------------------
KERNEL, NOTIFY = "kernel", "notify"


def denial_source(plan, *, kernel_watch: bool) -> "str | None":
    """How the run's Landlock denials reach its audit log: KERNEL (the kernel's own records, read
    by DenialWatch: Landlock ABI 7, audit enabled, and a caller that watches them: the CLI's
    foreground run, kernel_watch=True), NOTIFY (the seccomp notify layer predicts and records them:
    sandbox/notify/landlock_fallback.py), None (no file system or TCP rules: nothing to record;
    or no seccomp user notification and no kernel records)."""
    ll = plan.landlock
    if ll is None or not (ll.filesystem or ll.network):
        return None
    from . import seccomp
    if not plan.seccomp.enabled or not seccomp.user_notif_available():
        return KERNEL if kernel_watch and _sys.landlock_abi() >= LOG_ABI and audit_enabled() else None
    if kernel_watch and _sys.landlock_abi() >= LOG_ABI and audit_enabled():
        return KERNEL
    return NOTIFY
