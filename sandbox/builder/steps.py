"""The two kinds of build step that make a layer.

RUN: the command runs through the normal launcher (sandbox.launcher, the same audit session as
`pysandbox run`) under the shipped `build` profile, on an overlay of the state's layers with a kept
writable layer; that layer's upper directory -- and only it -- becomes the new content-addressed
layer (store.containers.layer_of: overlay whiteouts -> `.wh.NAME`, opaque -> `.wh..wh..opq`).

COPY/ADD: the sources (resolved in the build context or a stage's layers, symlinks never followed
out of them) are written straight into a layer tar whose paths are the destination resolved inside
the stage's layers (store.archive.add_layer_from_tar: the same safe extractor as every import).
"""
from __future__ import annotations

import hashlib
import io
import os
import stat
import tarfile
import tempfile
from dataclasses import dataclass
from typing import Optional

from ..store.images import ImageError, Store
from .view import View, ViewError


class StepError(Exception):
    def __init__(self, msg: str, code: int = 1):
        super().__init__(msg)
        self.code = code


# --------------------------------------------------------------------------- RUN

NOEXEC_TOP = frozenset({"tmp", "dev", "proc", "sys", "run"})    # scratch and kernel trees: never executable
NOEXEC_VAR = frozenset({"tmp"})                                   # /var/tmp
MAX_EXEC_DIRS = 4096                                              # entries of / (and /var) a step's rules list


def build_landlock(ll, top: list, var: list, workdir: Optional[str]):
    """The Landlock rules of one RUN step (docs/images.md, "W^X in builds"): the profile's rules
    derived from its mounts, except that the image's root is read + write but *not* executable as
    a whole; execute (with read) is granted on each directory at the top of the stage's root
    (`top`: its real directories, symlinks are covered through their targets) but /tmp, /dev,
    /proc, /sys and /run, on /var's directories but /var/tmp, and on the WORKDIR. A build runs
    what it builds and installs where programs live (/usr, /opt, /srv/app, ...); a binary dropped
    in /tmp, /var/tmp or /dev/shm does not run. (Landlock rights add up down a path: an execute
    right on / could not be taken back below it, hence one rule per directory.)"""
    from dataclasses import replace
    from policies import plan as P
    if ll is None or not ll.filesystem or not ll.derived:
        return ll                  # a profile of explicit rules (or none): as written
    X = P.LANDLOCK_READ + P.LANDLOCK_EXECUTE
    paths = []
    for p in ll.paths:
        if p.path == "/":
            p = P.LandlockPath("/", tuple(a for a in p.access if a != "execute"), p.required)
        paths.append(p)
    for n in top:
        if n not in NOEXEC_TOP and n != "var":
            paths.append(P.LandlockPath("/" + n, X, False))
    for n in var:
        if n not in NOEXEC_VAR:
            paths.append(P.LandlockPath("/var/" + n, X, False))
    if workdir and workdir != "/":
        paths.append(P.LandlockPath(workdir, X, False))
    from policies.landlock import _merge
    return replace(ll, paths=_merge(paths))


def exec_dirs(view: View) -> tuple[list, list]:
    """(the real directories at the top of the view's root, those of its /var) for build_landlock."""
    def dirs(parts):
        out = []
        names = view.listdir(parts) if view.entry(parts) else []
        if len(names) > MAX_EXEC_DIRS:
            raise StepError(f"/{'/'.join(parts)}: more than {MAX_EXEC_DIRS} entries (one Landlock rule each)", 2)
        for n in names:
            hit = view.entry(parts + (n,))
            if hit is not None and stat.S_ISDIR(hit[1].st_mode):
                out.append(n)
        return out
    top = dirs(())
    return top, dirs(("var",)) if "var" in top else []


def run_step(store: Store, state_ref: str, argv: list, env: dict, workdir: Optional[str], user: Optional[str],
             network: Optional[str], what: str, *, quiet: bool = False, profile: str = "build",
             exec_paths: Optional[tuple] = None) -> Optional[dict]:
    """Run argv in a sandbox on the state's layers; returns the new layer's info, or None when the
    command changed nothing. Raises StepError (non-zero exit: code 1; the launch failed: its code).
    exec_paths: exec_dirs() of the state (the step's Landlock rules, build_landlock)."""
    from policies.compiler import Overrides, compile_profile
    from policies.errors import ProfileError
    from .. import seccomp
    from ..launcher import LaunchError, launch
    from ..userdb import user_db
    from ..store.containers import layer_of
    from audit.session import open_session
    ov = Overrides(argv=tuple(argv), image=state_ref, read_only=False, keep=True,
                   env=tuple(f"{k}={v}" for k, v in env.items()), workdir=workdir or None, user=user or None,
                   network=network, user_db=user_db)
    try:
        plan = compile_profile(profile, ov).plan
    except (ProfileError, ValueError) as e:
        raise StepError(f"{what}: {e}", 2) from None
    if exec_paths is not None:
        from dataclasses import replace
        plan = replace(plan, landlock=build_landlock(plan.landlock, *exec_paths, workdir))
    bpf = seccomp.build_bpf(plan.seccomp) if plan.seccomp.enabled else None
    sid = os.urandom(6).hex()
    try:
        sess = open_session(sid, None, plan.name)
    except OSError as e:
        raise StepError(f"{what}: audit log: {e.strerror or e}", 125) from None
    null = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    out = None
    try:
        if quiet:
            out = tempfile.TemporaryFile(dir=store.tmp)
        fd_out = out.fileno() if out else None
        try:
            result = launch(plan, None, bpf=bpf, sandbox_id=sid, on_event=sess.emit, stdin=null,
                            stdout=fd_out, stderr=fd_out)
        except LaunchError as e:
            _discard(store, sid)
            raise StepError(f"{what}: {e}", e.code) from None
        except BaseException:                 # interrupted (^C): the step's kept layer goes too
            _discard(store, sid)
            raise
        if result.exit_code != 0:
            _discard(store, sid)
            if out:
                out.seek(0)
                os.write(2, out.read(64 * 1024))
            raise StepError(f"{what}: the command exited with {result.exit_code}", 1)
    finally:
        os.close(null)
        if out:
            out.close()
        sess.close()
    try:
        info = layer_of(store, sid, what)
    except ImageError as e:
        raise StepError(str(e), 1) from None
    return info if info.get("files", 1) else None


def _discard(store: Store, sid: str) -> None:
    from ..store.containers import remove_container
    try:
        remove_container(store, sid)
    except ImageError:
        pass


# --------------------------------------------------------------------------- COPY / ADD

@dataclass
class Item:
    dest: tuple            # components below the image root
    layer: str = ""        # where the source is ("" for a directory made for the destination)
    src: tuple = ()
    st: Optional[os.stat_result] = None
    link: Optional[str] = None
    sha: Optional[str] = None      # of a regular file's bytes, when the cache key was made


def plan_copy(src_view: View, sources: list[str], dest: str, dest_view: View, ignore, *, from_context: bool,
              workdir: str, where: str, max_entries: int = 1_000_000) -> list[Item]:
    """The entries a COPY writes (Docker's rules: several sources or a trailing '/' -> a directory;
    a source directory's *contents* are copied; a file onto an existing directory goes into it)."""
    if not dest.startswith("/"):
        dest = os.path.join(workdir or "/", dest)
    dest_is_dir = dest.endswith("/") or dest.endswith("/.") or len(sources) > 1
    expanded: list[tuple] = []
    for s in sources:
        hits = _glob(src_view, s, ignore if from_context else None)
        if not hits:
            raise StepError(f"{where}: {s}: no such file or directory in the "
                            f"{'build context' if from_context else 'stage'}"
                            f"{' (or excluded by .dockerignore)' if from_context and ignore.rules else ''}", 2)
        expanded.extend(hits)
    if len(expanded) > 1:
        dest_is_dir = True
    try:
        droot = dest_view.resolve(dest)
    except ViewError as e:
        raise StepError(f"{where}: destination {dest}: {e}", 2) from None
    hit = dest_view.entry(droot)
    if hit and stat.S_ISDIR(hit[1].st_mode):
        dest_is_dir = True
    items: list[Item] = []
    for parts in expanded:
        _, st = src_view.entry(parts)
        isdir = stat.S_ISDIR(st.st_mode)
        for p, lay, est in src_view.walk(parts, max_entries):
            rel = "/".join(p)
            if from_context and p != parts and ignore.excluded(rel):
                continue
            if isdir:
                d = droot + p[len(parts):]
                if not d:
                    continue                      # the image's root itself
            else:
                d = droot + (parts[-1],) if dest_is_dir and parts else droot
            m = est.st_mode
            if not (stat.S_ISREG(m) or stat.S_ISDIR(m) or stat.S_ISLNK(m)):
                if stat.S_ISSOCK(m) or (not from_context and stat.S_ISCHR(m) and est.st_rdev == 0):
                    continue
                raise StepError(f"{where}: {rel}: only files, directories and symlinks can be copied", 2)
            link = os.readlink(os.path.join(lay, *p)) if stat.S_ISLNK(m) else None
            items.append(Item(d, lay, p, est, link))
            if len(items) > max_entries:
                raise StepError(f"{where}: more than {max_entries} entries to copy", 2)
    return items


def _glob(view: View, pattern: str, ignore) -> list[tuple]:
    import fnmatch
    comps = [c for c in pattern.split("/") if c and c != "."]
    if not any(ch in pattern for ch in "*?["):
        try:
            parts = view.resolve(pattern)
        except ViewError:
            return []
        if view.entry(parts) is None:
            return []
        if ignore is not None and parts and ignore.excluded("/".join(parts)) and not _has_included_child(view, parts, ignore):
            return []
        return [parts]
    cur: list[tuple] = [()]
    for comp in comps:
        nxt = []
        for base in cur:
            if comp == "..":
                nxt.append(base[:-1])
                continue
            if not any(ch in comp for ch in "*?["):
                cand = [comp]
            else:
                hit = view.entry(base)
                if not hit or not stat.S_ISDIR(hit[1].st_mode):
                    continue
                cand = [n for n in view.listdir(base) if fnmatch.fnmatchcase(n, comp)]
            for n in cand:
                try:
                    p = view.resolve("/".join(base + (n,)))
                except ViewError:
                    continue
                if view.entry(p) is not None:
                    nxt.append(p)
        cur = nxt[:100_000]
    return [p for p in cur if ignore is None or not ignore.excluded("/".join(p))]


def _has_included_child(view: View, parts: tuple, ignore) -> bool:
    if not ignore.has_exceptions:
        return False
    for p, _, _ in view.walk(parts, 100_000):
        if not ignore.excluded("/".join(p)):
            return True
    return False


def items_digest(items: list[Item], src_view: View) -> str:
    """The content digest of what a COPY reads: every destination, type, mode, size, link target and
    the sha256 of every file's bytes (read by descriptor, O_NOFOLLOW on every component)."""
    h = hashlib.sha256()
    for it in items:
        st = it.st
        h.update(("/".join(it.dest) + "\0%o\0%d\0" % (st.st_mode, st.st_size if stat.S_ISREG(st.st_mode) else 0)).encode(
            "utf-8", "surrogateescape"))
        if it.link is not None:
            h.update(it.link.encode("utf-8", "surrogateescape") + b"\0")
        elif stat.S_ISREG(st.st_mode):
            it.sha = _file_sha(src_view, it)
            h.update(it.sha.encode() + b"\n")
    return "sha256:" + h.hexdigest()


def _file_sha(view: View, it: Item) -> str:
    fd = view.open(it.layer, it.src)
    try:
        fh = hashlib.sha256()
        with io.FileIO(fd, "rb", closefd=False) as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                fh.update(chunk)
        return fh.hexdigest()
    finally:
        os.close(fd)


def copy_layer(store: Store, items: list[Item], src_view: View, dest_view: View, *, chown: Optional[tuple],
               chmod: Optional[int], what: str, archives: tuple = ()) -> dict:
    """Write the items (and the parents of their destinations, with the attributes they have in
    the stage) into a layer tar and add it to the store. Caller holds the store lock.
    archives: (Item, destination directory parts) of local archives ADD extracts (add_archive)."""
    from ..store.archive import add_layer_from_tar
    from ..store.extract import read_owners
    rootless, owners_of = os.geteuid() != 0, {}

    def recorded(layer: str) -> dict:        # a rootless layer's owners inside (owners.json, by layer)
        if layer not in owners_of:
            owners_of[layer] = read_owners(os.path.dirname(layer.rstrip("/")))
        return owners_of[layer]
    fd, tarpath = tempfile.mkstemp(prefix="copy.", suffix=".tar", dir=store.tmp)
    try:
        with os.fdopen(fd, "wb") as out, tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tf:
            done: set = set()
            for it in list(items) + [Item(root + ("\0",)) for _, root in archives]:
                for i in range(1, len(it.dest)):
                    parent = it.dest[:i]
                    if parent in done:
                        continue
                    done.add(parent)
                    ti = tarfile.TarInfo("/".join(parent))
                    ti.type = tarfile.DIRTYPE
                    hit = dest_view.entry(parent)
                    if hit and stat.S_ISDIR(hit[1].st_mode):
                        pst = hit[1]
                        ti.mode, ti.uid, ti.gid, ti.mtime = stat.S_IMODE(pst.st_mode), pst.st_uid, pst.st_gid, int(pst.st_mtime)
                        if rootless:        # on disk the caller's: the owner inside is recorded with the layer
                            ti.uid, ti.gid = recorded(hit[0]).get("/".join(parent), (0, 0))
                    else:
                        ti.mode, ti.uid, ti.gid, ti.mtime = 0o755, 0, 0, 0
                        if chown:
                            ti.uid, ti.gid = chown
                    tf.addfile(ti)
                if it.dest in done or it.st is None:
                    continue
                done.add(it.dest)
                st = it.st
                ti = tarfile.TarInfo("/".join(it.dest))
                ti.mode = stat.S_IMODE(st.st_mode)
                ti.uid, ti.gid = chown if chown else (0, 0)
                ti.mtime = int(st.st_mtime)
                if it.link is not None:
                    ti.type, ti.linkname, ti.mode = tarfile.SYMTYPE, it.link, 0o777
                    tf.addfile(ti)
                elif stat.S_ISDIR(st.st_mode):
                    ti.type = tarfile.DIRTYPE
                    if chmod is not None:
                        ti.mode = chmod
                    tf.addfile(ti)
                else:
                    if chmod is not None:
                        ti.mode = chmod
                    ffd = src_view.open(it.layer, it.src)
                    try:
                        ti.size = os.fstat(ffd).st_size
                        with io.FileIO(ffd, "rb", closefd=False) as f:
                            hf = _Hashing(f)
                            tf.addfile(ti, hf)
                        if it.sha is not None and hf.h.hexdigest() != it.sha:
                            raise StepError(f"{what}: /{'/'.join(it.src)} changed while being read (retry)")
                    except OSError as e:
                        raise StepError(f"{what}: /{'/'.join(it.src)}: {e} (changed while being read?)") from None
                    finally:
                        os.close(ffd)
            for it, root in archives:
                add_archive(tf, src_view, it, root, chown=chown, what=what)
        try:
            return add_layer_from_tar(tarpath, store, what)
        except ImageError as e:
            if archives:               # e.g. a member written through a symlink the archive made
                raise StepError(str(e), 2) from None
            raise
    except (OSError, ViewError) as e:
        raise StepError(f"{what}: {getattr(e, 'strerror', None) or e}") from None
    finally:
        try:
            os.unlink(tarpath)
        except OSError:
            pass


# --------------------------------------------------------------------------- ADD of a local archive

def is_archive(view: View, it: Item) -> bool:
    """Docker's test, by content: a gzip, bzip2 or xz stream, or a tar (ustar magic)."""
    if it.st is None or not stat.S_ISREG(it.st.st_mode) or it.link is not None:
        return False
    fd = view.open(it.layer, it.src)
    try:
        head = os.pread(fd, 512, 0)
    finally:
        os.close(fd)
    return (head[:2] == b"\x1f\x8b" or head[:3] == b"BZh" or head[:6] == b"\xfd7zXZ\x00"
            or (len(head) == 512 and head[257:262] == b"ustar"))


def _archive_parts(name: str, where: str) -> tuple:
    """A member's name -> its components below the extraction directory (a leading '/' is dropped,
    as tar does); '..', NUL and whiteout names are refused."""
    if "\0" in name:
        raise StepError(f"{where}: NUL byte in a member's name", 2)
    parts = tuple(p for p in name.split("/") if p not in ("", "."))
    if ".." in parts:
        raise StepError(f"{where}: {name!r}: '..' in a member's path (path traversal)", 2)
    if parts and parts[-1].startswith(".wh."):
        raise StepError(f"{where}: {name!r}: an overlay whiteout name in an archive", 2)
    return parts


def add_archive(tf, view: View, it: Item, root: tuple, *, chown: Optional[tuple], what: str) -> None:
    """ADD of a local archive (tar, gzip/bzip2/xz): its members written into the layer tar `tf`
    below `root`, through the store's hostile-tar readers (store/tarsafe.py bounds: headers,
    members, names, depth, sizes, decompressed bytes and ratio; xz memory). Refused (exit 2): '..'
    or whiteout names, device nodes, hard links out of the archive, anything not a valid archive.
    The layer tar then goes through the import's extractor (add_layer_from_tar), which refuses a
    member written through a symlink. Owners as in the archive (--chown: those)."""
    from ..store import tarsafe
    from ..store.extract import decompress_error, open_decompressed
    src = "/".join(it.src)
    where = f"{what} {src}"
    limits = tarsafe.DEFAULT_LIMITS
    fd = view.open(it.layer, it.src)
    seen: set = set()
    try:
        with io.FileIO(fd, "rb", closefd=False) as f:
            raw = _HashingRaw(f)
            dec, craw = open_decompressed(io.BufferedReader(raw, 1 << 16), where, count=True)
            limited = tarsafe.LimitedReader(dec, limits.stream_bytes(), ratio=limits.ratio,
                                            compressed=(lambda: craw.n) if craw else None)
            with tarsafe.open_tar(io.BufferedReader(limited, 1 << 16), "r|", limits) as stf:
                for ti in tarsafe.members(stf):
                    parts = _archive_parts(ti.name, where)
                    if ti.ischr() or ti.isblk():
                        raise StepError(f"{where}: {ti.name!r}: device node not allowed in an image", 2)
                    if not (ti.isreg() or ti.isdir() or ti.issym() or ti.islnk() or ti.isfifo()):
                        raise StepError(f"{where}: {ti.name!r}: unsupported member type {ti.type!r}", 2)
                    if not parts:
                        if not ti.isdir():
                            raise StepError(f"{where}: {ti.name!r}: an empty name", 2)
                        continue             # the archive's "./": the destination keeps its attributes
                    out = tarfile.TarInfo("/".join(root + parts))
                    out.type, out.mode, out.mtime = ti.type, ti.mode & 0o7777, ti.mtime
                    out.uid, out.gid = chown if chown else (ti.uid, ti.gid)
                    if ti.islnk():
                        target = _archive_parts(ti.linkname, where)
                        if target not in seen:
                            raise StepError(f"{where}: {ti.name!r}: hard link to {ti.linkname!r}, "
                                            f"not earlier in the archive", 2)
                        out.linkname = "/".join(root + target)
                    elif ti.issym():
                        out.linkname = ti.linkname        # resolved inside the image, as any symlink
                    if ti.isreg():
                        out.size = ti.size
                        tf.addfile(out, stf.extractfile(ti))
                    else:
                        tf.addfile(out)
                    seen.add(parts)
            while raw.read(1 << 20):          # the rest (padding, trailing bytes): all of the cache key's bytes
                pass
            if it.sha is not None and raw.h.hexdigest() != it.sha:
                raise StepError(f"{where}: changed while being read (retry)")
    except StepError:
        raise
    except ImageError as e:
        raise StepError(str(e), 2) from None
    except tarsafe.TarLimitError as e:
        raise StepError(f"{where}: {e}", 2) from None
    except tarfile.TarError as e:
        raise StepError(f"{where}: not a valid tar archive ({' '.join(str(e).split())})", 2) from None
    except (EOFError, ValueError, OSError) as e:
        import lzma
        import zlib
        if isinstance(e, (EOFError, zlib.error, lzma.LZMAError)) or "gzip" in str(e).lower() or "bz" in str(e).lower():
            raise StepError(decompress_error(where, " ".join(str(e).split())), 2) from None
        raise
    finally:
        os.close(fd)


class _HashingRaw(io.RawIOBase):
    """A raw reader that hashes what it reads (an ADDed archive: its bytes are the cache key's)."""

    def __init__(self, f):
        self.f, self.h = f, hashlib.sha256()

    def readable(self):
        return True

    def readinto(self, b):
        n = self.f.readinto(b)
        if n:
            self.h.update(memoryview(b)[:n])
        return n


class _Hashing:
    """A reader that hashes what it reads: the bytes written into the layer are the bytes of the key."""

    def __init__(self, f):
        self.f, self.h = f, hashlib.sha256()

    def read(self, n=-1):
        b = self.f.read(n)
        self.h.update(b)
        return b


def mkdir_layer(store: Store, parts: tuple, dest_view: View, what: str) -> dict:
    """A layer holding just the directory `parts` and its parents (WORKDIR of a missing directory)."""
    it = Item(parts, st=os.stat_result((stat.S_IFDIR | 0o755, 0, 0, 0, 0, 0, 0, 0, 0, 0)))
    return copy_layer(store, [it], View([]), dest_view, chown=None, chmod=None, what=what)
