"""The Python API: compile a profile once, launch many sandboxes from it.

    from sandbox.api import Sandbox
    sb = Sandbox("strict", cap_add=["NET_BIND_SERVICE"], memory="256m")   # YAML, schema, libseccomp: here, once
    r = sb.run(["/bin/sh", "-c", "id"], input=b"", timeout=5)          # no compilation work per run
    r.exit_code, r.stdout, r.stderr, r.events, r.denied("mount")
    r = await sb.run_async(["/bin/true"])                               # asyncio: runs in a worker thread

Thread safety: `Sandbox` is immutable after construction (a frozen plan and BPF bytes); `run` keeps
all per-run state local (its own memfds for stdin/stdout/stderr, its own socket to the launch
server, its own audit recorder), so any number of threads may call it at once. The sandboxes are
started and supervised by the process's launch server (sandbox/server/: one lean process per
state directory, its own poll loop, deadlines included), never cloned from the caller's
(possibly multi-threaded) process.

Output is captured in memory files (memfd), not pipes: no reader thread per run and no deadlock
however much the program writes; the pages are charged to the sandbox's memory cgroup.
See docs/api.md.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Sequence, Union

from policies.compiler import Overrides, compile_profile

from . import launcher as _launcher
from .doctor import kernel_version as _kernel_version
from .server import client as _server

DENIAL_TYPES = ("seccomp_denied", "seccomp_killed", "escape_attempt")
MEMORY_EVENTS = 10000      # audit events a RunResult keeps at most (a flood is coalesced before that, docs/audit.md)

# keyword -> Overrides field; tuple-valued fields accept a str or any iterable
_TUPLE_FIELDS = {"cap_add", "cap_drop", "volumes", "tmpfs", "env", "ports", "device_read_bps",
                 "device_write_bps", "device_read_iops", "device_write_iops", "ulimits", "security_opt",
                 "profile_path", "group_add", "storage_opt"}
_SCALAR_FIELDS = {"read_only", "workdir", "hostname", "network", "timeout", "memory", "memory_swap",
                  "memory_reservation", "cpus", "cpu_shares", "cpuset_cpus", "pids_limit", "blkio_weight",
                  "image", "keep", "user", "argv"}
_ALIASES = {"volume": "volumes", "port": "ports", "publish": "ports", "ulimit": "ulimits", "net": "network",
            "cwd": "workdir"}


class SandboxError(Exception):
    """Raised by RunResult.check() and by Sandbox() for an unusable profile or override."""


@dataclass
class RunResult:
    exit_code: int
    stdout: Union[bytes, str] = b""
    stderr: Union[bytes, str] = b""
    events: list = field(default_factory=list)     # audit events of this run (docs/audit.md schema)
    events_dropped: int = 0                         # events not kept in `events` (MEMORY_EVENTS bound)
    duration: float = 0.0
    timed_out: bool = False
    signal: Optional[int] = None
    message: Optional[str] = None                   # the launcher's own one-line outcome, if any
    sandbox_id: str = ""
    argv: tuple = ()

    @property
    def returncode(self) -> int:                    # subprocess-style alias
        return self.exit_code

    @property
    def ok(self) -> bool:
        return self.exit_code == 0

    @property
    def denials(self) -> list[dict]:
        """seccomp_denied / seccomp_killed / escape_attempt events of this run."""
        return [e for e in self.events if e.get("type") in DENIAL_TYPES]

    def denied(self, syscall: Optional[str] = None) -> bool:
        """True when the sandbox denied `syscall` (any syscall when None) during this run.

        Needs the audit path: the profile's seccomp must record denials (`seccomp.notify_denials:
        true`, as in `strict`; or the /dev/kmsg fallback) and the Sandbox must have audit=True
        (the default). Capability checks the kernel refuses (EPERM without CAP_X) are not syscall
        denials and are not reported here: assert on the exit code/output for those."""
        for e in self.denials:
            if syscall is None or (e.get("syscall") or {}).get("name") == syscall:
                return True
        return False

    def events_of(self, type: str) -> list[dict]:
        return [e for e in self.events if e.get("type") == type]

    def check(self) -> "RunResult":
        if self.exit_code != 0:
            raise SandboxError(f"sandboxed {list(self.argv)!r} exited with {self.exit_code}"
                               + (f": {self.message}" if self.message else ""))
        return self

    def __repr__(self) -> str:
        def cut(b):
            return b[-300:] if b else b
        return (f"RunResult(exit_code={self.exit_code}, stdout={cut(self.stdout)!r}, stderr={cut(self.stderr)!r}, "
                f"denials={[(e.get('syscall') or {}).get('name') for e in self.denials]}, message={self.message!r})")


def _overrides(kw: Mapping[str, Any]) -> Overrides:
    fields = {}
    for key, value in kw.items():
        key = _ALIASES.get(key, key)
        if key in _TUPLE_FIELDS:
            if value is None:
                value = ()
            elif isinstance(value, (str, bytes)):
                value = (value,)
            elif isinstance(value, Mapping) and key == "env":
                value = tuple(f"{k}={v}" for k, v in value.items())
            try:
                value = tuple(value)
            except TypeError:
                raise TypeError(f"Sandbox(): {key} must be a str or a list of str, not "
                                f"{type(value).__name__}") from None
        elif key not in _SCALAR_FIELDS:
            raise TypeError(f"Sandbox(): unknown override {key!r}")
        elif key in _INT_FIELDS and value is not None:
            value = _int_override(key, value)
        fields[key] = value
    from .userdb import user_db
    return Overrides(**fields, user_db=user_db)


_INT_FIELDS = {"pids_limit", "cpu_shares", "blkio_weight"}


def _int_override(key: str, value: Any) -> int:
    """An integer flag's value as the CLI would take it (an int, or a str of one); else the CLI's
    one line, as a ProfileError (Sandbox() raises it as SandboxError)."""
    from policies.errors import ProfileError
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    try:
        if isinstance(value, str):
            return int(value)
    except ValueError:
        pass
    raise ProfileError(f"--{key.replace('_', '-')}: {value!r:.40} is not a valid integer")


def _check_run_args(argv: Any, input: Any, timeout: Any, env: Any) -> None:
    """run()'s own arguments, checked before anything is launched (as subprocess does)."""
    import math
    if isinstance(argv, (str, bytes)):
        raise TypeError("Sandbox.run(): argv must be a list of str (the program and its arguments), "
                        f"not a single {type(argv).__name__}")
    if input is not None and not isinstance(input, (str, bytes, bytearray, memoryview)):
        raise TypeError(f"Sandbox.run(): input must be bytes or str, not {type(input).__name__}")
    if timeout is not None:
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
            raise TypeError(f"Sandbox.run(): timeout must be a number of seconds, not {type(timeout).__name__}")
        if not (math.isfinite(timeout) and timeout > 0):
            raise ValueError(f"Sandbox.run(): timeout must be a finite number of seconds > 0, not {timeout!r}")
    if env is not None and not isinstance(env, Mapping):
        raise TypeError(f"Sandbox.run(): env must be a mapping of names to values, not {type(env).__name__}")


def _check_strings(argv: tuple, env: Optional[Mapping[str, str]]) -> None:
    """Bad arguments are the caller's error, raised before anything is launched (as subprocess
    does): no kernel interface takes a string with a NUL byte, nor a variable name with '='.
    An empty argv runs the profile's own `process.argv`."""
    for a in argv:
        if not isinstance(a, str):
            raise TypeError(f"Sandbox.run(): argv items must be str, not {type(a).__name__}")
        if "\0" in a:
            raise ValueError(f"Sandbox.run(): embedded null byte in argv item {a!r}")
    for k, v in (env or {}).items():
        if "\0" in str(k) or "\0" in str(v) or "=" in str(k) or not str(k):
            raise ValueError(f"Sandbox.run(): bad environment variable {str(k)!r} "
                             "(empty, '=' in the name or a NUL byte)")


class Sandbox:
    """A compiled profile (plan + seccomp BPF), launched any number of times."""

    def __init__(self, profile: str = "strict", *, audit: bool = True, name: Optional[str] = None,
                 audit_log: Optional[str] = None, **overrides: Any):
        from policies.errors import ProfileError
        try:
            compiled = compile_profile(profile, _overrides(overrides), kernel=_kernel_version())
        except ProfileError as e:
            raise SandboxError(str(e)) from None
        self._init(compiled.plan, None, audit=audit, name=name, audit_log=audit_log)

    @classmethod
    def from_plan(cls, plan, bpf: Optional[bytes] = None, *, audit: bool = True, name: Optional[str] = None,
                  audit_log: Optional[str] = None) -> "Sandbox":
        """From an already compiled Plan (and, optionally, its BPF)."""
        self = cls.__new__(cls)
        self._init(plan, bpf, audit=audit, name=name, audit_log=audit_log)
        return self

    def _init(self, plan, bpf, *, audit, name, audit_log) -> None:
        if plan.seccomp.enabled and bpf is None:
            from .seccomp import build_bpf
            try:
                bpf = build_bpf(plan.seccomp)
            except ValueError as e:
                raise SandboxError(str(e)) from None
        if audit and audit_log:                          # as the CLI's --audit-log: unusable, refused here
            from audit.sinks import JsonlSink
            try:
                JsonlSink(audit_log).close()
            except OSError as e:
                raise SandboxError(f"audit log {audit_log}: {e.strerror or e}") from None
        self.plan = plan
        self.bpf = bpf
        self.audit = audit
        self.name = name
        self.audit_log = audit_log
        # the launch server keeps the plan under this key: derived from the content (a digest of
        # its wire encoding), so that equal plans share one entry instead of piling up
        self._key = _server.plan_key(plan, bpf)
        self._names = None
        if audit and plan.seccomp.enabled and plan.seccomp.notify_denials:
            try:                                         # the launch server names denied syscalls
                self._names = _syscall_table()           # from this table, without libseccomp
            except Exception:  # noqa: BLE001 - it falls back to libseccomp
                pass
        from audit import session as _s  # noqa: F401  warm import, not per run

    @property
    def profile(self) -> str:
        return self.plan.name

    def run(self, argv: Sequence[str], *, input: Union[bytes, str, None] = None, timeout: Optional[float] = None,
            env: Optional[Mapping[str, str]] = None, text: bool = False, check: bool = False) -> RunResult:
        """Run argv in a fresh sandbox; blocks until it ended. Returns a RunResult.

        input: bytes/str for the program's stdin (else /dev/null); timeout: seconds, the whole
        sandbox is killed after it (exit 124, timed_out=True); env: extra variables on top of the
        profile's; text: decode stdout/stderr as UTF-8; check: raise SandboxError unless exit 0."""
        plan = self.plan
        _check_run_args(argv, input, timeout, env)
        argv = tuple(argv)
        _check_strings(argv, env)
        sid = os.urandom(6).hex()
        fds = []
        try:
            if input is None:
                stdin = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
            else:
                stdin = os.memfd_create("pysandbox-stdin", os.MFD_CLOEXEC)
                data = input.encode() if isinstance(input, str) else bytes(input)
                view = memoryview(data)
                while view:
                    view = view[os.write(stdin, view):]
                os.lseek(stdin, 0, os.SEEK_SET)
            fds.append(stdin)
            out = os.memfd_create("pysandbox-stdout", os.MFD_CLOEXEC)
            fds.append(out)
            err = os.memfd_create("pysandbox-stderr", os.MFD_CLOEXEC)
            fds.append(err)
            recorder = sink = None
            on_event = None
            if self.audit:
                from audit.events import Recorder
                from audit.session import Session
                from audit.sinks import JsonlSink, MemorySink, log_limits
                sink = MemorySink(limit=MEMORY_EVENTS)      # bounded: first half kept, newest half a ring
                sinks = [sink]
                if self.audit_log:
                    max_bytes, keep = log_limits()
                    sinks.append(JsonlSink(self.audit_log, max_bytes=max_bytes, keep=keep))
                recorder = Recorder(sid, self.name or sid, plan.name, sinks)
                on_event = Session(recorder, self.audit_log).emit
            req = {"argv": argv, "sandbox_id": sid, "name": self.name, "audit": self.audit,
                   "timeout": None if timeout is None else float(timeout),
                   "env": tuple((str(k), str(v)) for k, v in env.items()) if env else ()}
            try:
                res = _server.Client.get().run(self._key, plan, self.bpf, req, (stdin, out, err), on_event,
                                               names=self._names)
            except _launcher.LaunchError as e:
                res = _launcher.Result(exit_code=e.code, message=f"pysandbox: {e}", sandbox_id=sid)
            finally:
                if recorder is not None:
                    recorder.close()
            o, e_ = _read_memfd(out), _read_memfd(err)
        finally:
            for fd in fds:
                os.close(fd)
        if text:
            o, e_ = o.decode(errors="replace"), e_.decode(errors="replace")
        events = list(sink.events) if sink is not None else list(res.events)
        result = RunResult(exit_code=res.exit_code, stdout=o, stderr=e_, events=events,
                           events_dropped=sink.dropped if sink is not None else 0,
                           duration=res.duration, timed_out=res.timed_out, signal=res.signal,
                           message=res.message, sandbox_id=sid, argv=argv)
        if check:
            result.check()
        return result

    async def run_async(self, argv: Sequence[str], **kw) -> RunResult:
        """`run` for asyncio: the blocking launch runs in the loop's default executor."""
        import asyncio
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, lambda: self.run(argv, **kw))

    def __repr__(self) -> str:
        return f"Sandbox(profile={self.plan.name!r}, sources={list(self.plan.sources)!r})"


_TABLE = None


def _syscall_table() -> dict:
    global _TABLE
    if _TABLE is None:
        from policies.syscalls import syscall_table
        _TABLE = syscall_table()
    return _TABLE


def _read_memfd(fd: int) -> bytes:
    os.lseek(fd, 0, os.SEEK_SET)
    chunks = []
    while True:
        b = os.read(fd, 1 << 20)
        if not b:
            break
        chunks.append(b)
    return b"".join(chunks)


def run(argv: Sequence[str], profile: str = "strict", *, input=None, timeout=None, text=False,
        **overrides) -> RunResult:
    """One-shot convenience: compile and run (use Sandbox to compile once and run many times)."""
    return Sandbox(profile, **overrides).run(argv, input=input, timeout=timeout, text=text)


# --- worker: one run described as JSON on stdin, result as JSON on stdout -------------------
# Used by the pytest plugin to run the same API as another (unprivileged) user:
#   python -m sandbox.api < {"profile": "strict", "overrides": {...}, "argv": [...], "input": b64|null,
#                            "timeout": N|null}

def _worker() -> int:
    import base64
    import json
    import sys
    try:
        req = json.loads(sys.stdin.read(16 << 20))
        if not isinstance(req, dict) or not isinstance(req.get("overrides") or {}, dict) \
                or not isinstance(req.get("argv"), list):
            raise TypeError("a request is a JSON object with an argv list (and profile, overrides, input, "
                            "timeout, env)")
        sb = Sandbox(req.get("profile") or "strict", **(req.get("overrides") or {}))
        inp = req.get("input")
        r = sb.run(req["argv"], input=base64.b64decode(inp) if inp is not None else None,
                   timeout=req.get("timeout"), env=req.get("env"))
        out = {"exit_code": r.exit_code, "stdout": base64.b64encode(r.stdout).decode(),
               "stderr": base64.b64encode(r.stderr).decode(), "events": r.events, "duration": r.duration,
               "timed_out": r.timed_out, "signal": r.signal, "message": r.message, "sandbox_id": r.sandbox_id}
    except (SandboxError, TypeError, ValueError) as e:       # (a JSON or base64 error is a ValueError)
        out = {"error": f"{type(e).__name__}: {e}" if not isinstance(e, SandboxError) else str(e)}
    try:
        json.dump(out, sys.stdout, default=str)
        sys.stdout.flush()
    except BrokenPipeError:                  # the reader went away: nobody to tell, no traceback
        import os
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(_worker())
