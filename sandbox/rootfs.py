"""The sandbox's root filesystem, built inside its own mount namespace by the program's process
(PID 1's first child, sandbox/init.py).

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

A root we did not make (an image's overlay, a `root:` directory; after pivot_root, any root) is
untrusted: every path in it (/etc/hosts, the /proc /sys /dev mount points, mount targets, masked
and read-only paths) is resolved inside it by descriptor (sandbox/inroot.py) and every mount is made
on that descriptor (move_mount MOVE_MOUNT_T_EMPTY_PATH; fresh file systems with fsmount), never on a
path looked up again by name. Mount points refuse symlinks; the hosts file, masked and read-only
paths follow them inside the root; /proc magic links are refused everywhere.

Cost (the API's warm launch is meant to be as fast as bubblewrap's): the mounts themselves are what
they must be, but their flags are set in bulk — one recursive mount_setattr over the whole tree of
read-only binds (_FreshRoot.seal) and one over /dev's device nodes instead of one per mount — and
the fresh tmpfs's mount points are made with plain mkdir/mknod, without exist checks (_FreshRoot
says why that is safe). tests/system/test_rootfs_flags.py pins every mount's flags.
"""
from __future__ import annotations

import errno
import os
import stat

from . import _sys, inroot
from .interface import ENGINE, containerenv
from ._sys import (MS_BIND, MS_NODEV, MS_NOSUID, MS_PRIVATE, MS_REC, MNT_DETACH,
                   MOUNT_ATTR_NODEV, MOUNT_ATTR_NOSUID, MOUNT_ATTR_RDONLY, MOUNT_ATTR_NOEXEC)

DEV_NODES = ("null", "zero", "full", "random", "urandom", "tty")
# the empty directories of a `root: host` tree (var/tmp: mode 1777)
FIXED_DIRS = ("root", "home", "var", "var/tmp", "run", "mnt", "opt", "srv")


# The container interface of systemd and podman (issue 20 item 15): programs and checkers
# (systemd-detect-virt -c, toolbox, …) detect the sandbox. `container=pysandbox` is in PID 1's and
# the program's environment (sandbox/init.py, launcher.build_env); /run/host/container-manager
# (systemd's) and /run/.containerenv (podman's) are files of the root we build (`root: host`), mode
# 0444, written into its tmpfs (no mount). An image's root and a read-only `root:` directory get the
# same files on a top layer of the sandbox's own (sandbox/store/mountpoints.py), never in the image
# or the directory (docs/profile-format.md).
def default_hosts(hostname: str) -> str:
    """/etc/hosts of a sandbox without a network of its own."""
    return f"127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t{hostname}\n"


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


_RO_ATTRS = MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV
_MISSING = (errno.ENOENT, errno.ENOTDIR, errno.ELOOP, errno.EACCES)   # what os.path.exists() calls absent


class _FreshRoot:
    """Builds the host-root sandbox's tree in its fresh, empty tmpfs (BASE) with as few system calls
    as the result allows; the mounts made, their order and their flags are the same as one _bind()
    per entry would give.

    * The host's read-only binds (system directories, /etc entries, the hosts file) are mounted
      without flags; seal() then sets read-only, nosuid, nodev on the whole tree with one recursive
      mount_setattr and clears read-only again on the tmpfs root alone (made read-only, if the profile
      says so, at the very end of finish() as before): two system calls instead of one per bind.
      Nothing that must stay writable or keep other flags (/proc, /sys, /dev and its nodes, /tmp,
      user mounts) is mounted before the seal.
    * Until the seal, those binds are writable views of the host: so a mount point is only ever
      created with a plain mkdir/mknod/symlink (no exist checks: the tmpfs is fresh) inside a
      directory that this launch itself made in the tmpfs (`made`), never below a bind and never
      through a symlink (paths with '.', '..' or '//' are not taken apart here). Anything else (a
      nested or duplicate entry, an entry below a copied symlink, an existing name) seals first and
      takes the general way from then on (exist checks, flags per bind), as before this class.
    """
    __slots__ = ("base", "made", "pending")

    def __init__(self, base: str):
        self.base = base
        self.made: set | None = {""}      # relative directories made by this launch in the tmpfs
        self.pending = False              # binds mounted since the last seal (still writable)

    def seal(self) -> None:
        if self.pending:
            _sys.mount_setattr(self.base, _RO_ATTRS, recursive=True)
            _sys.mount_setattr(self.base, 0, MOUNT_ATTR_RDONLY, recursive=False)
            self.pending = False

    def _general(self) -> None:
        self.seal()
        self.made = None

    def _place(self, rel: str) -> str | None:
        """The absolute path for `rel` if its parent directories are (made) ours, else None."""
        made = self.made
        if made is None:
            return None
        parts = rel.split("/")
        if "" in parts or "." in parts or ".." in parts:
            self._general()
            return None
        for i in range(1, len(parts)):
            d = "/".join(parts[:i])
            if d not in made:
                try:
                    os.mkdir(f"{self.base}/{d}", 0o755)
                except FileExistsError:
                    self._general()
                    return None
                made.add(d)
        return f"{self.base}/{rel}"

    def mkdir(self, rel: str) -> None:
        """A plain directory of the new root (mode 0755), made by us."""
        path = self._place(rel)
        if path is not None:
            try:
                os.mkdir(path, 0o755)
                self.made.add(rel)
                return
            except FileExistsError:
                self._general()
        _mkdirs(f"{self.base}/{rel}")

    def entry(self, host_path: str, rel: str) -> None:
        """_copy_entry(host_path, BASE/rel) with the binds' flags left to seal()."""
        try:
            st = os.lstat(host_path)
        except FileNotFoundError:
            return                        # (before _place: no parent directories for a missing entry)
        path = self._place(rel)
        if path is None:
            return _copy_entry(host_path, f"{self.base}/{rel}")
        mode = st.st_mode
        try:
            if stat.S_ISLNK(mode):
                os.symlink(os.readlink(host_path), path)
            elif stat.S_ISDIR(mode):
                os.mkdir(path, 0o755)
                _sys.mount(host_path, path, None, MS_BIND | MS_REC)
                self.pending = True
            elif stat.S_ISREG(mode):
                os.mknod(path, stat.S_IFREG | 0o644)
                _sys.mount(host_path, path, None, MS_BIND)
                self.pending = True
        except FileExistsError:
            self._general()
            _copy_entry(host_path, path)

    def write(self, rel: str, text: str, mode: int = 0o644) -> None:
        """_write(BASE/rel, text) for a file that must be new: O_EXCL, in a directory of ours. An
        existing name (an entry's bind, a link) seals first and is written the general way, which
        then fails as it always did (read-only): never through a still-writable bind."""
        made = self.made
        if made is not None and rel.rpartition("/")[0] in made:
            try:
                fd = os.open(f"{self.base}/{rel}", os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
                             | os.O_NOFOLLOW, mode)
            except FileExistsError:
                pass
            else:
                try:
                    os.write(fd, text.encode())
                finally:
                    os.close(fd)
                return
        self._general()
        _write(f"{self.base}/{rel}", text, mode)

    def bind_file(self, src: str, rel: str) -> None:
        """A read-only bind of a file onto BASE/rel: while `made` is kept, write() made that file
        itself (O_EXCL, in a directory of ours)."""
        path = f"{self.base}/{rel}"
        if self.made is not None and rel.rpartition("/")[0] in self.made:
            _sys.mount(src, path, None, MS_BIND)
            self.pending = True
        else:
            self._general()
            _bind_file_at(src, path)


def _bind_file_at(src: str, path: str) -> None:
    """A read-only bind of a file onto path, its directories and mount point made as needed."""
    _mkdirs(os.path.dirname(path))
    if not os.path.exists(path):
        _touch(path)
    _bind(src, path, read_only=True, recursive=False)


def _write(path: str, text: str, mode: int = 0o644) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW, mode)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def _bind_source(m, src, sys_admin: bool) -> tuple:
    """The detached tree to bind for `m`, from the supervisor's descriptor `src` = (fd, is_dir,
    is_tree), which the caller opened with its own credentials (launcher.open_bind_sources): the
    caller's access decided what may be bound. A descriptor of the host's mount namespace cannot
    be cloned here (the kernel refuses, EINVAL), so the source is cloned by name in this mount
    namespace — a copy of the host's, whose mounts the kernel locked (the program cannot unmount
    a submount to see what it covers, nor clear a read-only flag the host set) — and must be the
    object the caller opened (device and inode), else the launch stops. When the sandbox's root
    cannot reach it (a root caller binding /root/x: the mapped root is an unprivileged host uid),
    the supervisor's own tree is used instead (root callers only); its mounts are not locked, so
    a program that keeps CAP_SYS_ADMIN is refused then (fail closed)."""
    if src is None:
        raise SetupError(f"bind source {m.source}: not opened by the supervisor")
    fd, is_dir, is_tree = src
    want = os.fstat(fd)
    try:
        tree = _sys.open_tree(m.source)
    except OSError as e:
        if not is_tree or e.errno not in (errno.EACCES, errno.EPERM):
            raise SetupError(f"bind source {m.source}: {e.strerror} (in the sandbox's mount namespace)") from None
        if sys_admin:
            raise SetupError(f"bind source {m.source}: only the caller can reach it and its mounts cannot be "
                             f"locked; refused while the program keeps CAP_SYS_ADMIN") from None
        return os.dup(fd), is_dir
    got = os.fstat(tree)
    if (got.st_dev, got.st_ino) != (want.st_dev, want.st_ino):
        os.close(tree)
        raise SetupError(f"bind source {m.source}: replaced while the sandbox was set up")
    return tree, is_dir


def prepare(plan, *, has_netns: bool, has_pidns: bool, hosts_text: str | None = None,
            resolv_conf: bool = False, image_root=None, volume_dirs: dict | None = None,
            hosts_file: str | None = None, bind_srcs: tuple = (), sys_admin: bool = False,
            rootless: bool = False, ca_bundle: str | None = None) -> list:
    """Steps 1-4. Returns the detached trees of bind and volume sources, in plan.filesystem.mounts
    order. bind_srcs: the supervisor's descriptors of the bind sources (launcher.open_bind_sources);
    sys_admin: the program keeps CAP_SYS_ADMIN (see _bind_source)."""
    fs = plan.filesystem
    # Every host source is captured before anything else is mounted: the tmpfs on BASE below
    # would hide sources under the host's /tmp, and pivot_root later hides them all. User bind
    # sources become detached mount trees (open_tree), attached after pivot_root at targets
    # resolved inside the new root.
    _sys.mount(None, "/", None, MS_REC | MS_PRIVATE)
    hosts_fd = os.open(hosts_file, os.O_PATH | os.O_CLOEXEC) if hosts_file else None
    fds = []
    for i, m in enumerate(fs.mounts):
        if m.type == "bind":
            fds.append(_bind_source(m, bind_srcs[i] if i < len(bind_srcs) else None, sys_admin))
        elif m.type == "volume":
            src = (volume_dirs or {}).get(m.source)
            if src is None:
                raise SetupError(f"volume {m.source!r} is not available")
            try:
                st = os.stat(src)
                fds.append((src if isinstance(src, int) else _sys.open_tree(src), stat.S_ISDIR(st.st_mode)))
            except OSError as e:
                raise SetupError(f"volume {m.source}: {e.strerror}") from None
        else:
            fds.append(None)
    root_fd = None
    if image_root is None and fs.root != "host":
        try:
            root_fd = os.open(fs.root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as e:
            raise SetupError(f"root directory {fs.root}: {e.strerror}") from None
    if image_root is not None or (root_fd is not None and fs.read_only):
        # imported before the tmpfs covers BASE (/tmp): the package itself may live below it (a
        # checkout or a venv under /tmp), and its files are out of reach from then on
        from .store import overlay
    if image_root is not None:       # the image store may live under BASE: reach it before the tmpfs
        overlay.open_store(image_root)
    _sys.mount("tmpfs", BASE, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=16m")
    new = BASE
    ca_fd = _stage_ca_bundle(new, ca_bundle) if ca_bundle else None   # before a root covers the tmpfs
    tree = None                       # the fresh tmpfs root of `root: host` (_FreshRoot)
    if image_root is not None:
        overlay.mount_root(image_root, new)   # an image's layers as the root (sandbox.store.overlay)
    elif root_fd is not None:
        if fs.read_only:              # the container interface files on a top layer (sandbox.store)
            overlay.mount_dir_root(root_fd, new, with_ca_mountpoint(fs) if ca_bundle else fs, rootless=rootless)
        else:                         # writable: the directory itself (nothing can be added to it)
            _bind(f"/proc/self/fd/{root_fd}", new, read_only=False)
        os.close(root_fd)
    else:
        tree = _FreshRoot(new)
        for d in fs.system_dirs:
            tree.entry(d, d[1:])
        tree.mkdir("etc")
        for e in fs.etc:
            tree.entry("/etc/" + e, "etc/" + e)
        tree.write("etc/hostname", plan.process.hostname + "\n")
        tree.write("etc/hosts", hosts_text or default_hosts(plan.process.hostname))
        if resolv_conf and os.path.exists("/etc/resolv.conf"):
            tree.entry("/etc/resolv.conf", "etc/resolv.conf")
        for d in FIXED_DIRS:
            tree.mkdir(d)
        os.chmod(new + "/var/tmp", 0o1777)
        tree.write("run/.containerenv", containerenv(rootless=rootless), 0o444)
        tree.mkdir("run/host")
        tree.write("run/host/container-manager", ENGINE + "\n", 0o444)
        os.chmod(new + "/run/host", 0o555)

    # Inside a root we did not make (an image, a `root:` directory), every path is resolved in it
    # by descriptor (sandbox.inroot): an image's `etc -> /host/dir` must not make us create
    # /host/dir/hosts, nor `proc -> ../../..` lead a mount out of it.
    rfd = None if tree is not None else inroot.open_root(new)
    try:
        # a private network's hosts file (sandbox.network): bound read-only, rewritten in place on
        # the host as peers join and leave, so the sandbox always sees its current peers by name
        if hosts_fd is not None:
            if tree is not None:              # /etc/hosts was written above
                tree.bind_file(f"/proc/self/fd/{hosts_fd}", "etc/hosts")
            else:                             # where the program will read it: followed inside the root
                at = _inside(rfd, "/etc/hosts", "file", True)
                _attach(_sys.open_tree(hosts_fd, recursive=False), at, _RO_ATTRS, recursive=False)
            os.close(hosts_fd)
        if tree is not None:
            tree.seal()                       # before anything that must stay writable is mounted
        if ca_fd is not None:                 # the sandbox's trust store (egress interception)
            _bind_ca_bundle(ca_fd, new, rfd)

        def point(rel: str) -> int:           # a mount point: made by us, or resolved (no symlinks)
            if tree is not None:
                tree.mkdir(rel)
                return os.open(f"{new}/{rel}", os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
            return _inside(rfd, "/" + rel, "dir", False)

        # /proc
        if fs.proc:
            if not has_pidns:
                raise SetupError("a fresh /proc needs the pid namespace (namespaces.pid: true)")
            at = point("proc")
            _attach(_sys.fsmount("proc", (), MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | MOUNT_ATTR_NOEXEC), at)
        # /sys: sysfs can only be mounted with a network namespace of our own
        if fs.sys:
            at = point("sys")
            if has_netns:
                _attach(_sys.fsmount("sysfs", (("ro", None),), _RO_ATTRS | MOUNT_ATTR_NOEXEC), at)
            else:
                _attach(_sys.open_tree("/sys"), at, _RO_ATTRS | MOUNT_ATTR_NOEXEC)
        _make_dev(point("dev"))
    finally:
        if rfd is not None:
            os.close(rfd)
    return fds


_DEV: list = []          # the descriptor of this sandbox's /dev (its root), from prepare to finish


# The CA bundle paths of the common distributions (Debian/Ubuntu first: SSL_CERT_FILE names it and
# it is made when missing; the others are bound over where the root has them) - sandbox/network/egress/ca.py
CA_BUNDLE_PATHS = ("/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt",
                   "/etc/ssl/ca-bundle.pem", "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",
                   "/etc/ssl/cert.pem")
_CA_STAGED = ".pysandbox-ca-bundle.pem"


def with_ca_mountpoint(fs):
    """`fs` with the CA bundle's mount point for a root we did not make: store/mountpoints makes it
    in the sandbox's top layer when the root lacks it (a read-only image or `root:` directory)."""
    from dataclasses import replace
    from policies.plan import Mount
    return replace(fs, mounts=tuple(fs.mounts) + (Mount(type="file", target=CA_BUNDLE_PATHS[0]),))


def _stage_ca_bundle(base: str, text: str) -> int:
    """The bundle (host CAs + the sandbox's CA; no key) as a read-only file of the fresh tmpfs on
    BASE, written before an image or directory root covers it: O_PATH descriptor."""
    fd = os.open(f"{base}/{_CA_STAGED}", os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o444)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)
    return os.open(f"{base}/{_CA_STAGED}", os.O_PATH | os.O_CLOEXEC | os.O_NOFOLLOW)


def _bind_ca_bundle(ca_fd: int, base: str, rfd: int | None) -> None:
    """Bind the staged bundle read-only over the root's CA bundle paths, resolved inside the root
    (the first one made when missing, the others where they exist); the staged name is removed."""
    own = rfd is None
    root = inroot.open_root(base) if own else rfd
    try:
        for i, path in enumerate(CA_BUNDLE_PATHS):
            try:
                at = _inside(root, path, "file" if i == 0 else None, True, "CA bundle")
            except (FileNotFoundError, NotADirectoryError):
                continue
            if not stat.S_ISREG(os.fstat(at).st_mode):
                os.close(at)
                continue
            _attach(_sys.open_tree(ca_fd, recursive=False), at, _RO_ATTRS, recursive=False)
    finally:
        os.close(ca_fd)
        if own:                               # a root: host tree (an image or directory root covers it)
            os.close(root)
            os.unlink(f"{base}/{_CA_STAGED}")


def _attach(tree: int, at: int, attrs: int | None = None, recursive: bool = True) -> None:
    """Attach the detached mount `tree` (open_tree/fsmount) on the object `at` refers to, its
    attributes set first (before it is reachable); both descriptors closed."""
    try:
        if attrs is not None:
            _sys.mount_setattr(tree, attrs, recursive=recursive)
        _sys.move_mount_fd(tree, at)
    finally:
        os.close(tree)
        os.close(at)


def _inside(rfd: int, path: str, create: str | None, follow: bool, what: str = "mount point") -> int:
    try:
        return inroot.resolve(rfd, path, follow=follow, create=create, what=what)
    except inroot.InRootError as e:
        raise SetupError(str(e)) from None


def _make_dev(at: int) -> None:
    """A fresh tmpfs on `at` with null zero full random urandom tty (binds of the host's), devpts
    with its own ptmx, shm and the fd links; everything made relative to the tmpfs's own root
    descriptor. The device nodes' binds get nosuid, noexec in one recursive mount_setattr over /dev
    (which has both already) before devpts and /dev/shm (mounted with both, and nodev) are added."""
    dev = _sys.fsmount("tmpfs", (("mode", "0755"), ("size", "64k")), MOUNT_ATTR_NOSUID | MOUNT_ATTR_NOEXEC)
    try:
        _sys.move_mount_fd(dev, at)
    finally:
        os.close(at)
    _DEV.append(dev)
    nodes = False
    for n in DEV_NODES:
        os.mknod(n, stat.S_IFREG | 0o644, dir_fd=dev)
        try:
            tree = _sys.open_tree("/dev/" + n, recursive=False)
        except OSError as e:
            if e.errno not in _MISSING:   # the host lacks this node: skipped, as always
                raise
            os.unlink(n, dir_fd=dev)
            continue
        _attach(tree, os.open(n, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dev))
        nodes = True
    if nodes:
        _sys.mount_setattr(dev, MOUNT_ATTR_NOSUID | MOUNT_ATTR_NOEXEC, recursive=True)
    os.mkdir("pts", 0o755, dir_fd=dev)
    _attach(_sys.fsmount("devpts", (("newinstance", None), ("ptmxmode", "0666"), ("mode", "0620")),
                         MOUNT_ATTR_NOSUID | MOUNT_ATTR_NOEXEC),
            os.open("pts", os.O_PATH | os.O_NOFOLLOW | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=dev))
    os.symlink("pts/ptmx", "ptmx", dir_fd=dev)
    os.mkdir("shm", 0o755, dir_fd=dev)
    _attach(_sys.fsmount("tmpfs", (("mode", "1777"), ("size", "64m")),
                         MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | MOUNT_ATTR_NOEXEC),
            os.open("shm", os.O_PATH | os.O_NOFOLLOW | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=dev))
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                         ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2")):
        os.symlink(target, name, dir_fd=dev)


def pivot(plan) -> None:
    """Step 5: the new root becomes / and the host's tree is detached."""
    os.chdir(BASE)
    _sys.pivot_root(".", ".")
    _sys.umount2(".", MNT_DETACH)
    os.chdir("/")


def finish(plan, bind_fds: list) -> None:
    """Steps 6-7, after pivot_root. Every path is resolved inside the new root by descriptor
    (sandbox.inroot) and mounted on as that descriptor: user mount targets refuse symlinks (the
    target is a mount point, as runc and bubblewrap require), masked and read-only paths follow
    them inside the root (what the program would open by that name); magic links never."""
    fs = plan.filesystem
    root = inroot.open_root("/")
    try:
        for m, fd in zip(fs.mounts, bind_fds):
            if m.type == "tmpfs":
                at = _inside(root, m.target, "dir", False, "mount target")
                opts = (("size", str(m.size) if m.size else "64m"), ("mode", f"{m.mode:o}" if m.mode is not None else "1777"))
                _attach(_sys.fsmount("tmpfs", opts, MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV
                                     | (MOUNT_ATTR_NOEXEC if m.noexec else 0)
                                     | (MOUNT_ATTR_RDONLY if m.read_only else 0)), at)
            else:
                fd, is_dir = fd
                try:
                    at = _inside(root, m.target, "dir" if is_dir else "file", False, "mount target")
                except BaseException:
                    os.close(fd)
                    raise
                _attach(fd, at, MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | (MOUNT_ATTR_RDONLY if m.read_only else 0)
                        | (MOUNT_ATTR_NOEXEC if m.noexec else 0))
        for p in fs.masked_paths:
            try:
                at = _inside(root, p, None, True, "masked path")
            except (FileNotFoundError, NotADirectoryError):
                continue
            if stat.S_ISDIR(os.fstat(at).st_mode):
                tree = _sys.fsmount("tmpfs", (("size", "4k"), ("mode", "0555"), ("ro", None)),
                                    MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | MOUNT_ATTR_NOEXEC)
                _attach(tree, at)
            else:
                _attach(_sys.open_tree("/dev/null", recursive=False), at)
        for p in fs.readonly_paths:
            try:
                at = _inside(root, p, None, True, "read-only path")
            except OSError as e:
                if e.errno in _MISSING:    # absent (as os.path.exists() would say): nothing to protect
                    continue
                raise
            try:
                tree = _sys.open_tree(at)
            except BaseException:
                os.close(at)
                raise
            _attach(tree, at, MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV)
    finally:
        os.close(root)
    while _DEV:
        dev = _DEV.pop()
        try:
            _sys.mount_setattr(dev, MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NOEXEC, recursive=False)
        finally:
            os.close(dev)
    if fs.read_only:
        _sys.mount_setattr("/", MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV, recursive=False)
