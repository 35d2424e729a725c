"""The CLI's launch server (`pysandbox server`, loop.serve(listen_fd=...)): a run sent by
`pysandbox run` (sandbox/server/lean.py), done as the CLI's own cached path would do it — the
plan-cache lookup with the caller's key, the audit session with the stderr summary on the caller's
stderr, the launcher's messages there too — or refused as "not here" (NotHere), and the CLI does
it itself. What the server does on the caller's behalf is what the caller would have done with the
same inputs: it serves only a caller exactly as confined as itself (peer.py, checked by the loop),
of the same installation, with the same umask and rlimits, and the same values of every variable
that decides the cache, the state directory or the audit (HOME, XDG_*, PYSANDBOX_*)."""
from __future__ import annotations

import os
import sys

from . import lean


class NotHere(Exception):
    """This run is not served here: the caller launches it itself (nothing was started)."""


def _decides(name: str) -> bool:
    """An environment variable the server reads on the caller's behalf (plancache.key_for and
    cache_dir, audit.paths, audit.sinks and session)."""
    return name == "HOME" or name.startswith(("XDG_", "PYSANDBOX_")) and name != lean.DEBUG


def _code_files() -> dict:
    """The source files of this server's loaded modules of the package, with their signatures."""
    out = {}
    for m in list(sys.modules.values()):
        f = getattr(m, "__file__", None)
        if f and f.startswith(lean.INSTALL + os.sep):
            try:
                st = os.stat(f)
                out[f] = (st.st_mtime_ns, st.st_size, st.st_ino)
            except OSError:
                out[f] = None
    return out


_LOADED: dict = {}


def loaded() -> None:
    """At the server's start, after its imports: what later requests compare the files with."""
    _LOADED.clear()
    _LOADED.update(_code_files())


def _code_changed() -> bool:
    for f, sig in _LOADED.items():
        try:
            st = os.stat(f)
            now = (st.st_mtime_ns, st.st_size, st.st_ino)
        except OSError:
            now = None
        if now != sig:
            return True
    return False


def accept(f: dict, umask: int, limits: tuple) -> tuple:
    """The cached plan for this run (plan, bpf, runopts, key), as the caller's own lookup would find
    it; NotHere when the run is not served here."""
    if f["install"] != lean.INSTALL:
        raise NotHere("another installation")
    if _code_changed():
        raise NotHere("the server's code changed since it started")
    if f["umask"] != umask or f["rlimits"] != limits:
        raise NotHere("another umask or other rlimits")
    theirs = {k: v for k, v in f["environ"].items() if _decides(k)}
    if theirs != {k: v for k, v in os.environ.items() if _decides(k)}:
        raise NotHere("another HOME, XDG_* or PYSANDBOX_* environment")
    from .. import plancache
    hit = plancache.load(plancache.key_for(f["options"], cwd=f["cwd"]))
    if hit is None:
        raise NotHere("no cached plan")
    plan, bpf, runopts = hit
    if runopts.get("detach") or runopts.get("tty"):
        raise NotHere("-d or -t")
    why = refusal(plan)
    if why:
        raise NotHere(why)
    # the key the template keeps the plan under (its spares are built for it): stored with the entry
    # when it was compiled (a digest here would cost ~4 ms a run). Trusting it is trusting the entry,
    # as the caller's own cached path does (plancache: the caller's, not writable by others)
    key = runopts.get("server_key")
    if not key:
        from . import client
        key = client.plan_key(plan, bpf)
    return plan, bpf, runopts, key


def refusal(plan) -> "str | None":
    """Why the server does not make this plan's run as the CLI would, or None."""
    from .. import launcher
    if plan.backend is not None or plan.isolation != "namespaces" or launcher.needs_network(plan) \
            or launcher.needs_image(plan):
        return "a run the server does not make (network, image, volume or backend)"
    if plan.landlock is not None and plan.landlock.filesystem:
        from .. import landlock                # the kernel's Landlock records are read by the CLI
        if landlock.denial_source(plan, kernel_watch=True) == landlock.KERNEL:   # itself
            return "Landlock denials from the kernel's audit (the CLI's own watch)"
    return None


def stderr_of(fd: int):
    """A text stream on (a copy of) the caller's stderr, as its own sys.stderr would write."""
    return open(os.dup(fd), "w", encoding="utf-8", errors="backslashreplace", closefd=True)
