"""The API process's side of the launch server (sandbox/server/): start it, send it a launch,
read the run's replies (sandbox/server/protocol.py). One server per state directory of the
process: a process that changes PYSANDBOX_STATE_DIR (or, rootless, XDG_DATA_HOME) launches into
the new directory through a server started there — everything a server does on the host (its
records of what each launch creates, images, containers, networks) is in the state directory it
was started with (audit/paths.py)."""
from __future__ import annotations

import os
import socket
import sys
import threading

from audit.paths import state_dir

from .. import wire
from . import protocol

# The server's module path: the standard library first (what `-I -S` leaves), then only the locations
# this package and its dependencies were imported from (module_roots) - never the caller's sys.path,
# whose entries (a script's directory, `python -m`'s working directory, PYTHONPATH) may hold a
# `json.py` or a `sandbox/` of anyone's.
BOOT = ("import sys; sys.path += {paths!r}; from sandbox.server.loop import serve; serve({fd})")
# Top-level modules the server imports (sandbox/launcher.py and what it imports; policies.plan to
# decode plans; audit for the events' schema); optional ones are skipped when not installed.
_SERVER_MODULES = ("sandbox", "policies", "audit", "prctl", "_prctl", "pyseccomp")


def module_roots(names=_SERVER_MODULES) -> list:
    """The sys.path entries the named top-level modules were imported from, derived from their
    files (an editable install's finder hook included, which `-S` would not run)."""
    import importlib
    roots = []
    for name in names:
        try:
            mod = sys.modules.get(name) or importlib.import_module(name)
        except ImportError:
            continue
        spec = getattr(mod, "__spec__", None)
        if spec is not None and spec.submodule_search_locations is not None:
            where = [os.path.dirname(p) for p in spec.submodule_search_locations]   # a package
        elif getattr(mod, "__file__", None):
            where = [os.path.dirname(mod.__file__)]                                  # a module
        else:
            where = []                                                               # built in
        roots += [os.path.realpath(w) for w in where if os.path.isabs(w)]
    return list(dict.fromkeys(roots))


def plan_key(plan, bpf) -> str:
    """The key the server keeps a plan under: a digest of its wire encoding and its filter, so that
    equal plans (e.g. api.run() called again and again) share one entry instead of piling up."""
    return wire.plan_digest(plan, bpf)


class Client:
    """The API process's handle on a launch server, started on first use (per process — a forked
    child of the API starts its own — and per state directory)."""

    _lock = threading.Lock()
    servers: dict = {}             # state directory -> its Client

    @classmethod
    def get(cls) -> "Client":
        """The server of the state directory this process has now (audit/paths.py)."""
        where = state_dir()
        with cls._lock:
            c = cls.servers.get(where)
            if c is None or c.owner != os.getpid() or c.broken or c.proc.poll() is not None:
                if c is not None and c.owner == os.getpid():
                    try:
                        c.ctl.close()      # (a server still there ends when its control socket closes)
                        c.proc.wait(5)     # gone: reaped, so the reclaimer sees its owner dead
                    except Exception:  # noqa: BLE001
                        pass
                from ..store.reclaim import reclaim_quietly
                reclaim_quietly()          # what a SIGKILLed launch server left (sandbox/store/reclaim.py)
                c = cls.servers[where] = cls(where)
            return c

    def __init__(self, where: "str | None" = None):
        import subprocess
        self.owner = os.getpid()
        self.state_dir = where           # (the server inherits the environment it is resolved from)
        self.broken = False      # the server went away (its exit may not be reapable yet): start another
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        # -I -S: no PYTHONPATH, no user site, no current directory; the standard library first,
        # then where this package and its dependencies live (module_roots), nothing of sys.path
        paths = module_roots()
        self.proc = subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", BOOT.format(paths=paths, fd=theirs.fileno())],
            pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, start_new_session=True)
        theirs.close()
        self.ctl = mine
        self.sent: set = set()
        self.names_sent = False
        import atexit
        atexit.register(self.close)

    def close(self) -> None:
        """End the server: it kills what still runs, cleans up and exits."""
        try:
            self.ctl.close()
        except OSError:
            pass
        if self.owner == os.getpid():
            try:
                self.proc.wait(10)
            except Exception:  # noqa: BLE001
                pass

    def run(self, key, plan, bpf, req: dict, stdio, on_event, names=None):
        """Start a sandbox and wait for it; returns the launcher's Result (LaunchError raised when
        the server refused or failed)."""
        from ..launcher import LaunchError, Result
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        try:
            req = dict(req, key=key)
            first = key not in self.sent
            if first:
                req["bpf"] = bpf
                if not self.names_sent and names is not None:
                    req["names"] = names
                    self.names_sent = True
            try:
                socket.send_fds(self.ctl, [wire.encode_request(req, plan if first else None)],
                                [theirs.fileno(), *stdio])
            except OSError as e:
                self.broken = True
                raise LaunchError(f"the launch server is gone: {e.strerror}") from None
            if first:
                self.sent.add(key)
            theirs.close()
            while True:
                data = protocol.recv(mine)
                if not data:
                    self.broken = True
                    raise LaunchError("the launch server ended without a result")
                try:
                    events, end = wire.decode_reply(data)
                except wire.WireError as e:
                    raise LaunchError(f"the launch server's reply: {e}") from None
                if on_event is not None:
                    for etype, fields in events:
                        on_event(etype, **fields)
                if end is None:
                    continue
                if end[0] == "error":
                    raise LaunchError(end[2], end[1])
                try:
                    return Result(**end[1])
                except TypeError as e:
                    raise LaunchError(f"the launch server's result: {e}") from None
        finally:
            theirs.close()
            mine.close()
