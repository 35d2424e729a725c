"""The fallback where seccomp user notification is unavailable: deny rules stay
SECCOMP_RET_ERRNO/KILL in the filter (loaded with SECCOMP_FILTER_FLAG_LOG: seccomp.filters, mode
"kmsg") and the kernel's audit records (`type=1326` on /dev/kmsg) of the sandbox's pids are
recorded. Those records carry no arguments and the kernel rate-limits them; events say
"via": "kmsg". Imported only when this fallback is used."""
from __future__ import annotations

import errno as _errno
import os
import re
import select
import threading
from typing import TYPE_CHECKING, Any, Callable, Optional

from policies.syscalls import syscall_name

from .. import seccomp as _sc
from .caller import AUDIT_ARCH_NAMES
from .decision import errno_without_args
from .supervisor import Handle, Supervisor, throttle_for

if TYPE_CHECKING:
    from .supervisor import OnEvent

_KMSG_RE = re.compile(r"audit: type=1326 .*?\bpid=(\d+)\b.*?\bcomm=(\"[^\"]*\"|\S+).*?"
                      r"\bexe=(\"[^\"]*\"|\S+).*?\bsig=(\d+)\b.*?\barch=([0-9a-f]+)\b.*?"
                      r"\bsyscall=(\d+)\b.*?\bcode=0x([0-9a-f]+)")
_LOST_RE = re.compile(r"audit: (printk limit exceeded|audit_lost=(\d+))")


def parse_kmsg_record(line: str) -> Optional[dict]:
    """A /dev/kmsg line with an AUDIT_SECCOMP (type=1326) record -> its fields."""
    m = _KMSG_RE.search(line)
    if not m:
        return None

    def unq(s: str) -> str:
        if s.startswith('"') and s.endswith('"'):
            return s[1:-1]
        try:                            # audit hex-encodes values with spaces/quotes
            return bytes.fromhex(s).decode(errors="replace")
        except ValueError:
            return s
    code = int(m.group(7), 16)
    return {"pid": int(m.group(1)), "comm": unq(m.group(2)), "exe": unq(m.group(3)),
            "sig": int(m.group(4)), "arch": int(m.group(5), 16), "nr": int(m.group(6)), "code": code}


def code_action(code: int) -> tuple[str, Optional[int]]:
    """A record's seccomp return value (code=0x...) -> (action, errno)."""
    act = code & _sc.RET_ACTION_FULL
    if act in (_sc.RET_KILL_PROCESS, _sc.RET_KILL_THREAD):
        return "kill", None
    if act == _sc.RET_ERRNO:
        return "errno", code & _sc.RET_DATA
    if act == _sc.RET_TRAP:
        return "trap", None
    if act == _sc.RET_LOG:
        return "log", None
    if act == _sc.RET_USER_NOTIF:
        return "notify", _errno.ENOSYS
    if act == _sc.RET_ALLOW:
        return "allow", None
    return "errno", None


def pidns_matcher(root_pid: int) -> Callable[[int], bool]:
    """match(pid): is host pid `pid` in the pid namespace of `root_pid` (the sandbox's pid 1
    or its program)? Pids once matched are remembered (a killed process has no /proc)."""
    try:
        ns = os.stat(f"/proc/{root_pid}/ns/pid").st_ino
    except OSError:
        ns = None
    known = {root_pid}

    def match(pid: int) -> bool:
        if pid in known:
            return True
        if ns is None:
            return False
        try:
            if os.stat(f"/proc/{pid}/ns/pid").st_ino == ns:
                if len(known) < 65536:
                    known.add(pid)
                return True
        except OSError:
            pass
        # gone from its namespaces already (exited: a zombie has no namespace links): its parent
        # tells — PID 1 keeps dead children unreaped for a moment in this mode (sandbox/init.py)
        try:
            with open(f"/proc/{pid}/status") as f:
                ppid = next((int(line.split()[1]) for line in f if line.startswith("PPid:")), 0)
        except (OSError, ValueError):
            return False
        if ppid and (ppid in known or ppid != pid and match(ppid)):
            if len(known) < 65536:
                known.add(pid)
            return True
        return False
    match.known = known  # type: ignore[attr-defined]
    return match


class Kmsg:
    via = "kmsg"

    def __init__(self, seccomp_plan, on_event: OnEvent, match_pid: Callable[[int], bool],
                 kmsg_path: str = "/dev/kmsg", throttle=None):
        self.throttle = throttle
        self.plan = seccomp_plan
        self.on_event = on_event
        self.match = match_pid
        self.stats = {"received": 0, "matched": 0, "lost_notices": 0, "record_errors": 0}
        # Open before the sandbox starts and skip what is already there.
        self.fd = os.open(kmsg_path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        os.lseek(self.fd, 0, os.SEEK_END)
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._stopping = False
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="pysandbox-kmsg", daemon=True)

    thread = property(lambda self: self._thread)
    request_stop = Supervisor.request_stop

    def close(self) -> None:
        Supervisor.close(self)  # type: ignore[arg-type]

    def _run(self) -> None:
        poller = select.poll()
        poller.register(self.fd, select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        try:
            while True:
                ready = dict(poller.poll(None if not self._stopping else 0))
                if ready.get(self.fd, 0) & select.POLLIN:
                    self._drain()
                    continue
                if self._stopping:
                    self._drain()
                    break
                if self._wake_r in ready:
                    self._stopping = True
        except Exception as e:  # noqa: BLE001
            self.stats["error"] = f"{type(e).__name__}: {e}"
        finally:
            if self.throttle is not None:
                for etype, fields in self.throttle.finish():
                    self._record(etype, fields)

    def _drain(self) -> None:
        while True:
            try:
                rec = os.read(self.fd, 8192)
            except BlockingIOError:
                return
            except OSError as e:
                if e.errno == _errno.EPIPE:      # overwritten in the ring buffer: go on
                    continue
                raise
            if not rec:
                return
            self._line(rec.decode(errors="replace"))

    def _line(self, line: str) -> None:
        self.stats["received"] += 1
        msg = line.split(";", 1)[-1]
        r = parse_kmsg_record(msg)
        if r is None:
            lm = _LOST_RE.search(msg)
            if lm:
                self.stats["lost_notices"] += 1
                self._record("audit_lost", {"via": "kmsg", "message": f"kernel: {lm.group(0)}"})
            return
        if not self.match(r["pid"]):
            return
        self.stats["matched"] += 1
        action, _ = code_action(r["code"])
        name = syscall_name(r["nr"], r["arch"])
        err = None
        if action == "errno":
            # The kernel logs the action without its data: the errno comes from the plan
            # (arguments are unknown here, so the first deny rule for the name decides).
            err = errno_without_args(self.plan, name)
        from audit.events import syscall_event_fields
        etype, fields = syscall_event_fields(
            name, r["nr"], None, action, errno=err, via="kmsg",
            arch=AUDIT_ARCH_NAMES.get(r["arch"], hex(r["arch"])), pid=r["pid"], comm=r["comm"],
            exe=r["exe"], rule=None)
        thr = self.throttle
        if thr is not None:
            if not thr.admit(etype, fields):
                return
            for t, f in thr.due():
                self._record(t, f)
        self._record(etype, fields)

    def _record(self, etype: str, fields: dict) -> None:
        try:
            self.on_event(etype, **fields)
        except Exception:  # noqa: BLE001
            self.stats["record_errors"] += 1


def start_kmsg(seccomp_plan, on_event: OnEvent, match_pid: Callable[[int], bool],
               kmsg_path: str = "/dev/kmsg", throttle: Any = None) -> Handle:
    """Fallback recorder: kernel audit records (type=1326) of the sandbox's pids.
    Open it BEFORE the sandbox runs (records before the open are skipped). Needs read
    access to /dev/kmsg (root, or kernel.dmesg_restrict=0). Raises OSError otherwise."""
    sup = Kmsg(seccomp_plan, on_event, match_pid, kmsg_path,
               throttle=throttle_for(seccomp_plan) if throttle is None else (throttle or None))
    sup.thread.start()
    return Handle(sup)
