"""A recorded sandbox (named, detached: `run -d`, sandbox/lifecycle.py) as the commands that act
on it read it: its state and its status — what `ps`, `exec`, `pause` and the rest decide on.
Apart from lifecycle.py, so that `exec` (sandbox/execin.py) reads it without importing the
lifecycle's supervisor and commands (no import cycle)."""
from __future__ import annotations

from . import state

# In a sandbox's state directory: the supervisor's socket on which `exec` hands it the command's
# seccomp listener (lifecycle._ExecAudit), so that the command's denials are recorded too
EXEC_AUDIT_SOCKET = "audit.sock"


def status_of(st: dict, name: str) -> str:
    s = st.get("status")
    if s in ("running", "starting", "created"):
        if not state.is_alive(name):
            return "dead"
        if s == "running" and st.get("cgroups") and frozen(st):
            return "paused"                       # read from the kernel's freezer, never stored
        return s
    return s or "unknown"


def frozen(st: dict) -> bool:
    from . import cgroups                         # (only for a running sandbox with cgroups)
    return cgroups.is_frozen(st.get("cgroups"), st.get("id") or "")


def load(ref: str) -> tuple[str, dict, str]:
    """A sandbox by name or id prefix: (its name, its state, its status)."""
    name = state.resolve(ref)
    st = state.read(name)
    return name, st, status_of(st, name)
