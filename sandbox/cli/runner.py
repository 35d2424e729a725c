"""Launch a compiled plan from the command line: foreground, `run -d`, `run -t`.

Shared by the cached fast path (sandbox/cli/__init__.py) and the click `run` command
(sandbox/cli/run.py). Kept lean on purpose: on a plan-cache hit this is the only command module
imported, so it imports no click, YAML, jsonschema or libseccomp, and the launcher and audit
session only when a run actually starts (imports inside the functions below).
"""
from __future__ import annotations

import os

from ..runout import err, report as _report, session as _session


def gc_on() -> None:
    """The garbage collector back on (the lean entry script, sandbox/entry.py, starts with it off
    while the modules load): what was imported is frozen (never scanned again, and not copied
    into the forked children's pages by a collection)."""
    import gc
    if not gc.isenabled():
        gc.freeze()
        gc.enable()


def launch(plan, bpf, argv, runopts) -> int:
    """Run the plan (argv None: the plan's own) and return the `run` command's exit code."""
    gc_on()
    if plan.backend is not None or plan.isolation != "namespaces":
        code = _ladder(plan, bpf, argv, runopts)     # the backend ladder (sandbox/launch/nsfree.py)
        if code is not None:
            return code
    if runopts.get("detach") or runopts.get("tty"):
        return _run_special(plan, bpf, argv, runopts)
    from ..launcher import LaunchError, launch as launch_plan
    sess = _session(plan, runopts)            # audit log + stderr summary + syslog
    if sess is None:
        return 125
    watch = _LandlockAudit(sess.emit, plan)
    try:
        result = launch_plan(plan, argv, bpf=bpf, name=runopts.get("name"), sandbox_id=sess.sandbox_id,
                             on_event=watch.on_event, kernel_watch=True)
    except LaunchError as e:
        err(f"pysandbox: {e}")
        watch.stop()
        sess.close()
        return e.code
    watch.stop()
    _report(plan, result.message)
    code = result.exit_code
    sess.close()
    return code


class _LandlockAudit:
    """The run's Landlock denials as audit events (sandbox/landlock.py, DenialWatch), where the
    kernel's audit is enabled: started at sandbox_start, attributed by the sandbox's pid namespace."""

    def __init__(self, emit, plan):
        self.emit, self.watch, self.plan = emit, None, plan
        self.on = plan.landlock is not None and plan.landlock.filesystem or False

    def on_event(self, type, **fields):
        out = self.emit(type, **fields)
        if type == "sandbox_start" and self.on and self.watch is None and fields.get("pid"):
            from .. import landlock
            if landlock.denial_source(self.plan, kernel_watch=True) == landlock.KERNEL:
                try:
                    self.watch = landlock.DenialWatch(self.emit, landlock.pidns_of(fields["pid"]))
                except OSError:
                    pass
        return out

    def stop(self) -> None:
        if self.watch is not None:
            self.watch.stop()


def _ladder(plan, bpf, argv, runopts):
    """The namespace-free backend when the plan accepts or forces it and gets it: its exit code;
    None: today's launch (namespaces)."""
    from ..launch import nsfree
    backend, why = nsfree.choose(plan)
    if backend == nsfree.NAMESPACES:
        return None
    if backend is None:
        err(f"pysandbox: {why}")
        return 125
    if runopts.get("detach") or runopts.get("tty"):
        err("pysandbox: run -d and -t need the namespaces backend (isolation landlock: " + why + ")")
        return 125
    sess = _session(plan, runopts)
    if sess is None:
        return 125
    try:
        from ..launcher import build_env
        return nsfree.run(plan, bpf, argv, build_env(plan), on_event=sess.emit, sandbox_id=sess.sandbox_id)
    except (nsfree.NsfreeError, OSError, ValueError) as e:
        err(f"pysandbox: isolation landlock: {e}")
        return 125
    finally:
        sess.close()


def _run_special(plan, bpf, argv, runopts) -> int:
    """`run -d` (the detached supervisor, sandbox/detached.py) and `run -t` (sandbox/execin.py)."""
    if runopts.get("detach"):
        if runopts.get("tty"):
            err("pysandbox: run: -d and -t cannot be combined (a detached sandbox has no terminal)")
            return 2
        from ..detached import run_detached
        return run_detached(plan, bpf, argv, runopts)
    from ..execin import run_tty
    return run_tty(plan, bpf, argv, runopts)


def fast_run(options: list, cmd: list):
    """`run OPTIONS -- CMD` with a valid plan-cache entry for OPTIONS -> exit code; else None."""
    from .. import plancache
    hit = plancache.load(plancache.key_for(options))
    if hit is None:
        return None
    plan, bpf, runopts = hit
    return launch(plan, bpf, cmd or None, runopts)
