"""OCI hooks (config.json `hooks`): each one run with the container's state JSON on stdin, its
args (args[0] is argv[0]), its env (only that), bounded by its timeout (else DEFAULT_TIMEOUT)."""
from __future__ import annotations

import json

DEFAULT_TIMEOUT = 60


class HookError(Exception):
    """A hook failed or timed out: one line naming it."""


def run(kind: str, hooks: dict, state: "dict | bytes", preexec=None) -> None:
    """Run hooks[kind] in order; the first failure raises HookError. preexec: called in each hook's
    process before its execve (createContainer: the container's namespaces, monitor.join_ns_of)."""
    import subprocess            # here: `create` without hooks never needs it (~2 ms of imports); PID 1's
    #                              startContainer hooks: imported before pivot_root (monitor._start_container_hooks)
    data = state if isinstance(state, bytes) else json.dumps(state).encode()
    for i, h in enumerate(hooks.get(kind) or ()):
        args = h["args"] or [h["path"]]
        try:
            r = subprocess.run(args, executable=h["path"], input=data, env=dict(e.split("=", 1) for e in h["env"]
                                                                                   if "=" in e),
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               timeout=h["timeout"] or DEFAULT_TIMEOUT, close_fds=True, preexec_fn=preexec)
        except subprocess.TimeoutExpired:
            raise HookError(f"hooks.{kind}[{i}] {h['path']}: timed out") from None
        except (OSError, subprocess.SubprocessError) as e:
            raise HookError(f"hooks.{kind}[{i}] {h['path']}: {getattr(e, 'strerror', None) or e}") from None
        if r.returncode != 0:
            why = r.stderr.decode(errors="replace").strip().splitlines()[-1:] or [""]
            raise HookError(f"hooks.{kind}[{i}] {h['path']}: exit status {r.returncode} {why[0][:200]}".rstrip())
