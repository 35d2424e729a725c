"""A recorded sandbox (named, detached: `run -d`, sandbox/detached.py) as the commands that act
on it read it: its state and its status — what `ps`, `exec`, `pause` and the rest decide on.
Apart from detached.py, so that `exec` (sandbox/execin.py) reads it without importing the
detached supervisor (no import cycle)."""
from __future__ import annotations

from .store import state

# In a sandbox's state directory: the supervisor's socket on which `exec` hands it the command's
# seccomp listener (detached._ExecAudit), so that the command's denials are recorded too
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
    from .cgroups import freezer                  # (only for a running sandbox with cgroups)
    return freezer.is_frozen(st.get("cgroups"), st.get("id") or "")


def load(ref: str) -> tuple[str, dict, str]:
    """A sandbox by name or id prefix: (its name, its state, its status)."""
    name = state.resolve(ref)
    st = state.read(name)
    return name, st, status_of(st, name)
