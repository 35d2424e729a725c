"""The sandbox's root filesystem, built in PID 1 inside its own mount namespace.

Order (read top to bottom, like bubblewrap):
  1. make every mount private (nothing propagates back to the host);
  2. a fresh tmpfs becomes the new root: the host's system directories are bind-mounted
     into it read-only (nosuid, nodev), selected /etc entries likewise, /etc/hostname and
     /etc/hosts are generated; or an image's overlay, or a given directory;
  3. fresh /proc, sysfs (read-only), a minimal /dev (null zero full random urandom tty,
     devpts, shm), all nosuid;
  4. sources of bind mounts are opened (O_PATH) while the host is still visible;
  5. pivot_root into the new root and detach the old one: the host's tree is gone;
  6. user mounts (binds through the O_PATH descriptors, tmpfs, volumes) are made at targets
     resolved *inside* the new root — a symlink cannot lead a target out of it;
  7. masked paths (tmpfs or /dev/null over them), read-only paths, and the root, /dev made read-only.
"""
from __future__ import annotations

import os
import stat

from . import _sys
from ._sys import (MS_BIND, MS_NODEV, MS_NOEXEC, MS_NOSUID, MS_PRIVATE, MS_RDONLY, MS_REC, MNT_DETACH,
                   MOUNT_ATTR_NODEV, MOUNT_ATTR_NOSUID, MOUNT_ATTR_RDONLY, MOUNT_ATTR_NOEXEC)

DEV_NODES = ("null", "zero", "full", "random", "urandom", "tty")
BASE = "/tmp"        # mount point of the new root's tmpfs, in our private mount namespace only


class SetupError(Exception):
    """A step of the root filesystem set-up failed: the launch stops (exit 125)."""


def _mkdirs(path: str, mode: int = 0o755) -> None:
    os.makedirs(path, mode=mode, exist_ok=True)


def _touch(path: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
    os.close(fd)


def _bind(src: str, dst: str, *, read_only: bool, recursive: bool = True, noexec: bool = False) -> None:
    _sys.mount(src, dst, None, MS_BIND | (MS_REC if recursive else 0))
    attrs = MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | (MOUNT_ATTR_RDONLY if read_only else 0) \
        | (MOUNT_ATTR_NOEXEC if noexec else 0)
    _sys.mount_setattr(dst, attrs, recursive=recursive)


def _copy_entry(host_path: str, new_path: str, *, read_only: bool = True) -> None:
    """Reproduce a host path in the new root: symlinks as symlinks, dirs/files as binds."""
    try:
        st = os.lstat(host_path)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(st.st_mode):
        os.symlink(os.readlink(host_path), new_path)
    elif stat.S_ISDIR(st.st_mode):
        _mkdirs(new_path)
        _bind(host_path, new_path, read_only=read_only)
    elif stat.S_ISREG(st.st_mode):
        _touch(new_path)
        _bind(host_path, new_path, read_only=read_only, recursive=False)


def _write(path: str, text: str, mode: int = 0o644) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW, mode)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def prepare(plan, *, has_netns: bool, has_pidns: bool, hosts_text: str | None = None,
            resolv_conf: bool = False, image_root=None, volume_dirs: dict | None = None,
            hosts_file: str | None = None) -> list:
    """Steps 1-4. Returns the O_PATH descriptors of bind sources, in plan.filesystem.mounts order."""
    fs = plan.filesystem
    # Every host source is captured before anything else is mounted: the tmpfs on BASE below
    # would hide sources under the host's /tmp, and pivot_root later hides them all. User bind
    # sources become detached mount trees (open_tree), attached after pivot_root at targets
    # resolved inside the new root.
    _sys.mount(None, "/", None, MS_REC | MS_PRIVATE)
    hosts_fd = os.open(hosts_file, os.O_PATH | os.O_CLOEXEC) if hosts_file else None
    fds = []
    for m in fs.mounts:
        if m.type in ("bind", "volume"):
            src = m.source if m.type == "bind" else (volume_dirs or {}).get(m.source)
            if src is None:
                raise SetupError(f"volume {m.source!r} is not available")
            try:
                st = os.stat(src)
                fds.append((src if isinstance(src, int) else _sys.open_tree(src), stat.S_ISDIR(st.st_mode)))
            except OSError as e:
                raise SetupError(f"bind source {src}: {e.strerror}") from None
        else:
            fds.append(None)
    root_fd = None
    if image_root is None and fs.root != "host":
        try:
            root_fd = os.open(fs.root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as e:
            raise SetupError(f"root directory {fs.root}: {e.strerror}") from None
    if image_root is not None:       # the image store may live under BASE: reach it before the tmpfs
        from . import overlay
        overlay.open_store(image_root)
    _sys.mount("tmpfs", BASE, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=16m")
    new = BASE
    if image_root is not None:
        from . import overlay
        overlay.mount_root(image_root, new)   # an image's layers as the root (sandbox.overlay)
    elif root_fd is not None:
        _bind(f"/proc/self/fd/{root_fd}", new, read_only=False)
        os.close(root_fd)
    else:
        for d in fs.system_dirs:
            _copy_entry(d, new + d)
        _mkdirs(new + "/etc")
        for e in fs.etc:
            _copy_entry("/etc/" + e, f"{new}/etc/{e}")
        _write(new + "/etc/hostname", plan.process.hostname + "\n")
        _write(new + "/etc/hosts", hosts_text or
               f"127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t{plan.process.hostname}\n")
        if resolv_conf and os.path.exists("/etc/resolv.conf"):
            _copy_entry("/etc/resolv.conf", new + "/etc/resolv.conf")
        for d in ("/root", "/home", "/var", "/var/tmp", "/run", "/mnt", "/opt", "/srv"):
            _mkdirs(new + d)
        os.chmod(new + "/var/tmp", 0o1777)

    # a private network's hosts file (sandbox.network): bound read-only, rewritten in place on the
    # host as peers join and leave, so the sandbox always sees its current peers by name
    if hosts_fd is not None:
        _mkdirs(new + "/etc")
        if not os.path.exists(new + "/etc/hosts"):
            _touch(new + "/etc/hosts")
        _bind(f"/proc/self/fd/{hosts_fd}", new + "/etc/hosts", read_only=True, recursive=False)
        os.close(hosts_fd)

    # /proc
    if fs.proc:
        _mkdirs(new + "/proc")
        if not has_pidns:
            raise SetupError("a fresh /proc needs the pid namespace (namespaces.pid: true)")
        _sys.mount("proc", new + "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    # /sys: sysfs can only be mounted with a network namespace of our own
    if fs.sys:
        _mkdirs(new + "/sys")
        if has_netns:
            _sys.mount("sysfs", new + "/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_RDONLY)
        else:
            _bind("/sys", new + "/sys", read_only=True, noexec=True)
    # /dev
    _mkdirs(new + "/dev")
    _sys.mount("tmpfs", new + "/dev", "tmpfs", MS_NOSUID | MS_NOEXEC, "mode=0755,size=64k")
    for n in DEV_NODES:
        if os.path.exists("/dev/" + n):
            _touch(f"{new}/dev/{n}")
            _sys.mount("/dev/" + n, f"{new}/dev/{n}", None, MS_BIND)
            _sys.mount_setattr(f"{new}/dev/{n}", MOUNT_ATTR_NOSUID | MOUNT_ATTR_NOEXEC, recursive=False)
    _mkdirs(new + "/dev/pts")
    _sys.mount("devpts", new + "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620")
    os.symlink("pts/ptmx", new + "/dev/ptmx")
    _mkdirs(new + "/dev/shm")
    _sys.mount("tmpfs", new + "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "mode=1777,size=64m")
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                         ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2")):
        os.symlink(target, f"{new}/dev/{name}")

    return fds


def pivot(plan) -> None:
    """Step 5: the new root becomes / and the host's tree is detached."""
    os.chdir(BASE)
    _sys.pivot_root(".", ".")
    _sys.umount2(".", MNT_DETACH)
    os.chdir("/")


def _resolve_inside(target: str) -> str:
    """Create the mount point `target` inside the (already pivoted) root, refusing symlinks."""
    parts = [p for p in target.split("/") if p]
    cur = "/"
    for i, p in enumerate(parts):
        nxt = os.path.join(cur, p)
        try:
            st = os.lstat(nxt)
        except FileNotFoundError:
            try:
                os.mkdir(nxt, 0o755)
            except OSError as e:
                raise SetupError(f"mount target {target}: cannot create {nxt}: {e.strerror}") from None
            st = os.lstat(nxt)
        if stat.S_ISLNK(st.st_mode):
            raise SetupError(f"mount target {target}: {nxt} is a symbolic link (refused)")
        cur = nxt
    return cur


def finish(plan, bind_fds: list) -> None:
    """Steps 6-7, after pivot_root."""
    fs = plan.filesystem
    for m, fd in zip(fs.mounts, bind_fds):
        if m.type == "tmpfs":
            target = _resolve_inside(m.target)
            opts = [f"size={m.size}" if m.size else "size=64m", f"mode={m.mode:o}" if m.mode is not None else "mode=1777"]
            _sys.mount("tmpfs", target, "tmpfs", MS_NOSUID | MS_NODEV, ",".join(opts))
        else:
            fd, is_dir = fd
            if is_dir:
                target = _resolve_inside(m.target)
            else:
                parent = _resolve_inside(os.path.dirname(m.target) or "/")
                target = os.path.join(parent, os.path.basename(m.target))
                if os.path.islink(target):
                    raise SetupError(f"mount target {m.target} is a symbolic link (refused)")
                if not os.path.exists(target):
                    _touch(target)
            _sys.move_mount_fd(fd, target)
            os.close(fd)
            _sys.mount_setattr(target, MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV
                               | (MOUNT_ATTR_RDONLY if m.read_only else 0), recursive=True)
    for p in fs.masked_paths:
        try:
            st = os.lstat(p)
        except (FileNotFoundError, NotADirectoryError):
            continue
        if stat.S_ISDIR(st.st_mode):
            _sys.mount("tmpfs", p, "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=4k,mode=0555")
        else:
            _sys.mount("/dev/null", p, None, MS_BIND)
    for p in fs.readonly_paths:
        if not os.path.exists(p):
            continue
        _sys.mount(p, p, None, MS_BIND | MS_REC)
        _sys.mount_setattr(p, MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV, recursive=True)
    _sys.mount_setattr("/dev", MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NOEXEC, recursive=False)
    if fs.read_only:
        _sys.mount_setattr("/", MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV, recursive=False)
