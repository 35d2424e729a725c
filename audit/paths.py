"""The one state directory of pysandbox: where sandboxes, images, volumes, networks and the default
audit log live. Every part of pysandbox resolves it here, so two state directories never see each
other (docs/api.md, "State directory").

    $PYSANDBOX_STATE_DIR        when set (made absolute)
    /var/lib/pysandbox          as root
    $XDG_DATA_HOME/pysandbox    rootless (default ~/.local/share/pysandbox)

A leaf module that imports only the standard library: it lives in audit/ because audit/ may import
neither sandbox/ nor policies/, while sandbox/ already imports audit/ (the default audit log is in
this directory too). The plan cache is a cache, not state: it stays under XDG_CACHE_HOME.

The directory itself is 0711: the layers, containers and volumes below it are 0700, but a private
network's hosts file (networks/NET/hosts/ID, 0711 directories) must be reachable by a sandbox's
mapped root, which has no capability on the host. It is never writable by group or others, and
always owned by the caller: anything else is refused.
"""
from __future__ import annotations

import os
import stat

TYPE_CHECKING = False  # annotations only (postponed): importing typing is ~2 ms of the launch path
if TYPE_CHECKING:
    from typing import Optional

ENV = "PYSANDBOX_STATE_DIR"
ROOT_DEFAULT = "/var/lib/pysandbox"
MODE = 0o711


class StateDirError(OSError):
    """The state directory cannot be used (not ours, writable by others, cannot be created)."""

    def __str__(self) -> str:
        return self.strerror or super().__str__()


def home() -> str:
    """The caller's home directory: $HOME when it is absolute, else the password database's (a
    relative or empty HOME would put state, caches and profile directories below whatever directory
    the command runs in)."""
    h = os.environ.get("HOME")
    if h and os.path.isabs(h):
        return h
    import pwd
    try:
        return pwd.getpwuid(os.getuid()).pw_dir or "/"
    except KeyError:
        return "/"


def xdg_dir(var: str, *default: str) -> str:
    """An XDG base directory: $var when absolute (the XDG spec: relative values are ignored), else
    home()/default."""
    v = os.environ.get(var)
    return v if v and os.path.isabs(v) else os.path.join(home(), *default)


def state_dir(rootless: Optional[bool] = None) -> str:
    """The state directory for this process (see the module's docstring)."""
    env = os.environ.get(ENV)
    if env:
        return os.path.abspath(env)
    if rootless is None:
        rootless = os.geteuid() != 0
    if not rootless:
        return ROOT_DEFAULT
    return os.path.join(xdg_dir("XDG_DATA_HOME", ".local", "share"), "pysandbox")


def legacy_audit_dir(rootless: bool) -> Optional[str]:
    """Where rootless audit logs went before there was one state directory ($XDG_STATE_HOME):
    read (never written) by `pysandbox audit` when the current log does not exist yet."""
    if not rootless or os.environ.get(ENV):
        return None
    return os.path.join(xdg_dir("XDG_STATE_HOME", ".local", "state"), "pysandbox")


def ensure_state_dir(rootless: Optional[bool] = None) -> str:
    """Create the state directory (0711; its missing parents 0755) or check the existing one:
    owned by the caller and not writable by group or others, else StateDirError. A directory of
    ours that lost o+x (an old 0700 one) gets 0711 back. Returns its path."""
    d = state_dir(rootless)
    try:
        st = os.lstat(d)
    except FileNotFoundError:
        try:
            parent = os.path.dirname(d)
            if not os.path.isdir(parent):
                os.makedirs(parent, mode=0o755, exist_ok=True)
            try:
                os.mkdir(d, MODE)
                os.chmod(d, MODE)              # not left to the umask
            except FileExistsError:            # a concurrent command made it
                pass
            st = os.lstat(d)
        except OSError as e:
            raise StateDirError(e.errno, f"state directory {d}: cannot create it: {e.strerror}", d) from None
    except OSError as e:
        raise StateDirError(e.errno, f"state directory {d}: {e.strerror}", d) from None
    if not stat.S_ISDIR(st.st_mode):
        raise StateDirError(20, f"state directory {d}: not a directory (a symlink or file); refusing it", d)
    if st.st_uid != os.geteuid() or st.st_mode & 0o022:
        raise StateDirError(1, f"state directory {d}: owned by uid {st.st_uid} or writable by others "
                               f"(mode {stat.S_IMODE(st.st_mode):04o}); refusing it", d)
    if st.st_mode & MODE != MODE:
        try:
            os.chmod(d, stat.S_IMODE(st.st_mode) | MODE)
        except OSError as e:
            raise StateDirError(e.errno, f"state directory {d}: cannot make it traversable (0711): "
                                         f"{e.strerror}", d) from None
    return d
