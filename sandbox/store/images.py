"""Image layer store: content-addressed layers, safe import, image records.

Layout of the state directory (audit/paths.py; its rules: docs/api.md, "State directory")::

    layers/<sha256 hex>/diff         the extracted layer (an overlay lower directory)
    layers/<sha256 hex>/layer.json   {digest, size, files, created}
    images.json                      {"images": {"name:tag": record}}   (replaced atomically)
    build-cache.json                 `pysandbox build`'s step cache (read_build_cache; its layers are referenced)
    containers/<id>/                 per-sandbox upper/work dirs (store/overlay.py)
    volumes/<name>/_data             named volumes (store/volumes.py)
    tmp/                             staging area for imports (same filesystem: rename is atomic)
    .lock                            flock: one writer at a time

A layer is addressed by the sha256 of its *uncompressed* tar stream (the OCI ``diff_id``).
An image record lists its layers bottom first, a ``history`` (created, created_by, empty_layer)
and the image config subset we use (Env, Cmd, Entrypoint, WorkingDir, User).

Extraction (store/extract.py; import, store/archive.py) never trusts the archive: member names are normalised and refused when absolute
or containing ``..``; every parent directory is opened relative to the layer root with
O_NOFOLLOW, so a symlink planted by the archive can never redirect a later write; device nodes
are refused (or skipped on request); claimed sizes are checked against the space left before a
byte is written; OCI whiteouts become overlay whiteouts (char 0:0 device, ``overlay.opaque``
xattr). Everything is extracted into ``tmp/`` and renamed into place only when every layer of
the import succeeded, so a corrupt or malicious archive leaves the store as it was. Tar headers,
member counts, names, sizes, decompressed bytes and metadata JSON are bounded before anything is
allocated (``store/tarsafe.py``, ``--limit``); directories are packed by descriptors
(``archive.tree_to_tar``, ``treewalk.walk_tree``). Each extracted layer is sealed (``tree_seal``: inode and change time of every
entry) and checked before every launch (``Store.check_layer``).
"""
from __future__ import annotations

import contextlib
import errno
import importlib
import json
import os
import re
import stat
import time

TYPE_CHECKING = False  # annotations only (postponed): importing typing is ~2 ms of the launch path
if TYPE_CHECKING:
    from typing import Iterable, Optional

from audit import paths as _paths

from .. import fsutil


class LazyModule:
    """A module imported on first use, then put in place of this stand-in in the namespace given:
    `run --image` needs none of the archive/compression code (the store's modules use it)."""

    def __init__(self, name: str, namespace: dict):
        self._name, self._ns = name, namespace

    def __getattr__(self, attr):
        mod = importlib.import_module(self._name)
        self._ns[self._name] = mod
        return getattr(mod, attr)


hashlib = LazyModule("hashlib", globals())


# an opaque directory of a layer (overlay's own marks: user.* rootless, trusted.* as root)
OPAQUE_XATTRS = ("user.overlay.opaque", "trusted.overlay.opaque")


class ImageError(Exception):
    """One-line error about images, layers, volumes or containers (CLI: exit 125 at launch, 2 for bad input)."""



_HEX64 = re.compile(r"^[0-9a-f]{64}\Z")
DIGEST_RE = re.compile(r"^sha256:([0-9a-f]{64})\Z")
_NAME = re.compile(r"^[a-z0-9]([a-z0-9._/-]{0,200}[a-z0-9])?(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?\Z")


def normalize_name(name: str) -> str:
    """'busybox' -> 'busybox:latest'. Raises ImageError on an invalid name."""
    if not isinstance(name, str) or not _NAME.match(name) or ".." in name or "//" in name:
        raise ImageError(f"invalid image name {name!r} (lowercase letters, digits, . _ - /, optional :tag)")
    last = name.rsplit("/", 1)[-1]
    return name if ":" in last else name + ":latest"


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def human_size(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.3g}{unit}"
        n /= 1000
    return str(n)


# --------------------------------------------------------------------------- the store

class Store:
    """The on-disk layer/image store. Writers hold the exclusive lock (``with store.locked():``)."""

    def __init__(self, root: Optional[str] = None, *, rootless: Optional[bool] = None):
        if rootless is None:
            rootless = os.geteuid() != 0
        self.rootless = rootless
        self.root = root or _paths.state_dir(rootless)
        self.layers = os.path.join(self.root, "layers")
        self.containers = os.path.join(self.root, "containers")
        self.volumes = os.path.join(self.root, "volumes")
        self.tmp = os.path.join(self.root, "tmp")
        self.index = os.path.join(self.root, "images.json")
        self._lock_fd: Optional[int] = None
        self._lock_depth = 0

    def ensure(self) -> None:
        try:
            # The store's root is 0711 (audit/paths.py): a private network's hosts file below it must be
            # reachable by a sandbox's mapped root; it is never listable or writable by others.
            if os.path.abspath(self.root) == _paths.state_dir(self.rootless):
                _paths.ensure_state_dir(self.rootless)
            else:
                os.makedirs(self.root, mode=0o711, exist_ok=True)
            for d in (self.layers, self.containers, self.volumes, self.tmp):
                os.makedirs(d, mode=0o700, exist_ok=True)
            # Private: layers hold setuid binaries of images and containers/volumes files written
            # by sandboxes; no local user may reach them. (Sandboxes whose root is an unprivileged
            # host uid get the layers, writable layer and volumes as detached mount trees.)
            for d in (self.layers, self.containers, self.volumes, self.tmp):
                if stat.S_IMODE(os.stat(d).st_mode) != 0o700:
                    os.chmod(d, 0o700)
        except _paths.StateDirError as e:
            raise ImageError(str(e)) from None
        except OSError as e:
            raise ImageError(f"cannot create image store {e.filename or self.root}: {e.strerror}") from None

    @contextlib.contextmanager
    def locked(self, shared: bool = False):
        self.ensure()
        if self._lock_depth:
            self._lock_depth += 1
            try:
                yield self
            finally:
                self._lock_depth -= 1
            return
        fd = fsutil.lock(os.path.join(self.root, ".lock"), shared=shared)
        try:
            self._lock_fd, self._lock_depth = fd, 1
            yield self
        finally:
            self._lock_fd, self._lock_depth = None, 0
            os.close(fd)

    # ---- images.json
    def read_index(self) -> dict:
        try:
            with open(self.index, "rb") as f:
                data = json.load(f)
        except FileNotFoundError:
            return {"images": {}}
        except (OSError, ValueError) as e:
            raise ImageError(f"image index {self.index} is unreadable: {e}") from None
        data.setdefault("images", {})
        return data

    def write_index(self, data: dict) -> None:
        fsutil.atomic_write_json(self.index, data, indent=1, sort_keys=True)

    def images(self) -> dict:
        return self.read_index()["images"]

    def resolve(self, ref: str) -> tuple[str, dict]:
        """name[:tag] or an image id prefix (>= 4 hex chars) -> (name, record)."""
        images = self.images()
        if not isinstance(ref, str) or not ref:
            raise ImageError("empty image name")
        with contextlib.suppress(ImageError):
            n = normalize_name(ref)
            if n in images:
                return n, images[n]
        if ref.startswith(BUILD_REF):                 # an intermediate state of `pysandbox build`
            st = read_build_cache(self)["states"].get(ref[len(BUILD_REF):])
            if isinstance(st, dict) and isinstance(st.get("layers"), list):
                return ref, {"id": ref[len(BUILD_REF):], "layers": st["layers"], "history": [], "config": {}}
            raise ImageError(f"no such build state: {ref}")
        h = ref[7:] if ref.startswith("sha256:") else ref
        if re.fullmatch(r"[0-9a-f]{4,64}", h):
            hits = [(n, r) for n, r in images.items() if r["id"].split(":", 1)[1].startswith(h)]
            if len({r["id"] for _, r in hits}) == 1:
                return sorted(hits)[0]
            if hits:
                raise ImageError(f"image id prefix {ref!r} is ambiguous")
        raise ImageError(f"no such image: {ref} (see `pysandbox image ls`)")

    # ---- layers
    def layer_dir(self, digest: str) -> str:
        m = DIGEST_RE.match(digest)
        if not m:
            raise ImageError(f"invalid layer digest {digest!r}")
        return os.path.join(self.layers, m.group(1))

    def layer_diff(self, digest: str) -> str:
        return os.path.join(self.layer_dir(digest), "diff")

    def has_layer(self, digest: str) -> bool:
        return os.path.isfile(os.path.join(self.layer_dir(digest), "layer.json"))

    def layer_info(self, digest: str) -> dict:
        try:
            with open(os.path.join(self.layer_dir(digest), "layer.json")) as f:
                return json.load(f)
        except (OSError, ValueError):
            raise ImageError(f"layer {digest[:19]} is missing from the store {self.root} "
                             f"(store damaged? re-import the image)") from None

    def check_layer(self, digest: str) -> dict:
        """A layer about to be used: its record names this digest and its tree is exactly as it was
        extracted -- sealed at import (tree_seal: every entry's inode and change time, which any
        write, chmod, chown, rename, link or unlink updates and no unprivileged process can set
        back). Raises ImageError (the launch stops) otherwise. Costs one lstat per entry."""
        info = self.layer_info(digest)
        short = digest[:19]
        if info.get("digest") != digest:
            raise ImageError(f"layer {short} in the store {self.root} records the digest "
                             f"{str(info.get('digest'))[:19]}: the store is damaged (re-import the image)")
        try:
            seal = tree_seal(self.layer_diff(digest))
        except OSError as e:
            raise ImageError(f"layer {short} in the store {self.root} is unreadable ({one_line(e)}): "
                             f"re-import the image") from None
        if info.get("seal") is None:         # stored by a version without seals: sealed on first use
            info["seal"] = seal
            with contextlib.suppress(OSError):
                fsutil.atomic_write_json(os.path.join(self.layer_dir(digest), "layer.json"), info, mode=0o644,
                                         fsync=False, sort_keys=True)
        elif info["seal"] != seal:
            raise ImageError(f"layer {short} in the store {self.root} was modified after it was imported "
                             f"(its files no longer match its digest): remove the image and import it again")
        return info

    def image_size(self, rec: dict) -> int:
        return sum(self.layer_info(d).get("size", 0) for d in rec["layers"])

    # ---- garbage collection
    def referenced_layers(self) -> set[str]:
        refs = set()
        for rec in self.images().values():
            refs.update(rec["layers"])
        for st in read_build_cache(self)["states"].values():   # `pysandbox build`'s cache
            refs.update(st.get("layers") or ())
        with contextlib.suppress(FileNotFoundError):
            for cid in os.listdir(self.containers):
                with contextlib.suppress(OSError, ValueError):
                    with open(os.path.join(self.containers, cid, "container.json")) as f:
                        refs.update(json.load(f).get("layers", []))
        return refs

    def gc(self) -> list[str]:
        """Remove layers no image and no container references. Returns removed digests."""
        removed = []
        with self.locked():
            refs = self.referenced_layers()
            with contextlib.suppress(FileNotFoundError):
                for h in os.listdir(self.layers):
                    if _HEX64.match(h) and f"sha256:{h}" not in refs:
                        rmtree(os.path.join(self.layers, h))
                        removed.append(f"sha256:{h}")
            with contextlib.suppress(FileNotFoundError):
                for t in os.listdir(self.tmp):   # stale staging dirs of crashed imports
                    rmtree(os.path.join(self.tmp, t))
        return removed

    def remove_image(self, ref: str) -> tuple[str, list[str]]:
        with self.locked():
            name, _ = self.resolve(ref)
            idx = self.read_index()
            del idx["images"][name]
            self.write_index(idx)
            return name, self.gc()

    def tag(self, src: str, dst: str) -> str:
        with self.locked():
            _, rec = self.resolve(src)
            dst = normalize_name(dst)
            idx = self.read_index()
            idx["images"][dst] = dict(rec, name=dst)
            self.write_index(idx)
            return dst


def tree_seal(root: str) -> str:
    """sha256 over (name, inode, change time, mode, size) of `root` and every entry below it, walked
    by descriptors in name order. The kernel updates an inode's change time on every change to
    its data or metadata, and a replaced entry has a new inode: a layer whose seal is unchanged
    is the tree extracted (and digest-checked) at import. Directories the caller cannot list
    (mode 000, rootless) are sealed by their own inode and change time."""
    from .treewalk import TreeChanged, walk_tree
    h = hashlib.sha256()
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        h.update(b"%d %d %o\n" % (st.st_ino, st.st_ctime_ns, st.st_mode))
        for e in walk_tree(fd, max_entries=None, max_depth=None, open_files=False, unreadable_dirs=True):
            arc = e.arc.encode("utf-8", "surrogateescape")          # os.fsencode, without its call
            if e.unreadable:
                h.update(b"/%s\0unreadable\n" % arc)
            else:
                est = e.st
                h.update(b"/%s\0%d %d %o %d\n" % (arc, est.st_ino, est.st_ctime_ns, est.st_mode, est.st_size))
    except TreeChanged as e:
        raise OSError(errno.ESTALE, str(e), root) from None
    finally:
        os.close(fd)
    return "sha256:" + h.hexdigest()


def seal_new(diff: str, what: str) -> str:
    try:
        return tree_seal(diff)
    except OSError as e:
        raise ImageError(f"{what}: cannot seal the extracted layer ({one_line(e)})") from None


def rmtree(path: str) -> None:
    """Remove a tree, also one with unwritable directories (overlay work dirs, 0555 dirs in layers),
    best effort (an entry that cannot be removed is left). The trees are often written by a
    sandbox (its writable layer, a volume): no symlink is ever followed (every step relative to a
    directory descriptor opened O_NOFOLLOW; '..' checked against the directory it must be), and no
    recursion — a program can nest directories deeper than Python's recursion limit (shutil.rmtree
    then failed, the writable layer stayed, and every later image launch of the store failed while
    reclaiming it). One descriptor open at a time, whatever the depth."""
    try:
        if not stat.S_ISDIR(os.lstat(path).st_mode):
            os.unlink(path)
            return
        parent = os.path.dirname(os.path.abspath(path)) or "/"
        name = os.path.basename(os.path.abspath(path))
        fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return
    # one level per directory on the way down: (its name, the (dev, ino) of its parent, names left)
    levels: list = []
    try:
        fd = _rm_descend(fd, name, levels)
        while fd >= 0 and levels:
            names = levels[-1][2]
            if names is None:
                try:
                    names = levels[-1][2] = os.listdir(fd)
                except OSError:
                    names = levels[-1][2] = []
            if names:
                n = names.pop()
                try:
                    st = os.stat(n, dir_fd=fd, follow_symlinks=False)
                except OSError:
                    continue
                if stat.S_ISDIR(st.st_mode):
                    fd = _rm_descend(fd, n, levels)
                    continue
                if not _rm_retry(lambda: os.unlink(n, dir_fd=fd), fd):
                    continue
            else:                              # empty now (or what is left cannot go): up, rmdir
                name, pid, _ = levels.pop()
                try:
                    up = os.open("..", os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
                except OSError:
                    up = -1
                os.close(fd)
                fd = up
                if fd < 0:
                    break
                st = os.fstat(fd)
                if (st.st_dev, st.st_ino) != pid:            # moved meanwhile: stop, touch nothing else
                    break
                _rm_retry(lambda: os.rmdir(name, dir_fd=fd), fd)
    finally:
        if fd >= 0:
            os.close(fd)


def _rm_descend(fd: int, name: str, levels: list) -> int:
    """Open the directory `name` in `fd` (never a symlink; made searchable if it is not) and go
    into it; stays at fd when it cannot be opened. Returns the current directory's descriptor."""
    st = os.fstat(fd)
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        child = os.open(name, flags, dir_fd=fd)
    except PermissionError:
        try:
            sub = os.open(name, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            try:
                os.chmod(f"/proc/self/fd/{sub}", 0o700)
            finally:
                os.close(sub)
            child = os.open(name, flags, dir_fd=fd)
        except OSError:
            return fd
    except OSError:
        return fd
    os.close(fd)
    levels.append([name, (st.st_dev, st.st_ino), None])
    return child


def _rm_retry(op, fd: int) -> bool:
    """op() in the directory fd; on EACCES/EPERM make fd writable (0700) and try once more."""
    try:
        op()
        return True
    except FileNotFoundError:
        return True
    except PermissionError:
        try:
            os.fchmod(fd, 0o700)
            op()
            return True
        except OSError:
            return False
    except OSError:
        return False


def one_line(e: BaseException) -> str:
    msg = getattr(e, "strerror", None) or str(e) or type(e).__name__
    return " ".join(str(msg).split())[:200]


def add_image_record(store: Store, name: str, record: dict) -> None:
    with store.locked():
        idx = store.read_index()
        idx["images"][name] = dict(record, name=name)
        store.write_index(idx)


def iter_images(store: Store) -> Iterable[tuple[str, dict]]:
    return sorted(store.images().items())


# --------------------------------------------------------------------------- the build cache

BUILD_REF = "build-state@"          # Store.resolve: an intermediate state of `pysandbox build`
BUILD_CACHE = "build-cache.json"    # {"version": 1, "steps": {key: state id}, "states": {id: state}}


def read_build_cache(store: Store) -> dict:
    """The build cache of the store: `steps` (cache key of a RUN/COPY/ADD -> the state after it)
    and `states` ({layers, config, history}). A missing or unreadable file is an empty cache."""
    try:
        with open(os.path.join(store.root, BUILD_CACHE), "rb") as f:
            data = json.load(f)
        if isinstance(data, dict) and isinstance(data.get("steps"), dict) and isinstance(data.get("states"), dict):
            return data
    except (OSError, ValueError):
        pass
    return {"version": 1, "steps": {}, "states": {}}


def write_build_cache(store: Store, data: dict) -> None:
    fsutil.atomic_write_json(os.path.join(store.root, BUILD_CACHE), data, sort_keys=True)


def prune_build_cache(store: Store) -> int:
    """Forget every cached build step (their layers go with the next gc). Returns the count."""
    with store.locked():
        n = len(read_build_cache(store)["steps"])
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(store.root, BUILD_CACHE))
    return n
