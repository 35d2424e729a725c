"""Load YAML profiles with `extends:` inheritance, keeping file:line:column for every node.

A profile is loaded into plain Python data (dicts, lists, scalars) plus a *provenance*
table: for each node path (a tuple such as ("seccomp", "allow", 3)) the Location of the
YAML node that introduced it. After `extends:` merging, a node's location is the one of
the file that last set it, so errors and lint findings point at the right file.

Merge rules (child over parent):
  * mappings merge key by key, recursively;
  * scalars replace;
  * a plain list replaces the parent's list;
  * `!extend [a, b]` appends to the parent's list (items already present are not repeated);
  * `!remove [a, b]` removes those items from the parent's list.
Paths named in PATH_KEYS are made absolute relative to the file that wrote them.

Profiles are untrusted input (a profile's author is not the caller). So:
  * a file is read only when it is a regular file of at most MAX_PROFILE_BYTES (a FIFO or device is
    never opened for blocking reads), as UTF-8 text without NUL bytes, into at most MAX_NODES nodes
    (aliases included: no "billion laughs");
  * `extends:` by path, and `seccomp.import`, resolve (realpath, symlinks followed) only inside the
    trusted roots: the profile search path (PYSANDBOX_PROFILE_PATH, the user's, /etc, shipped), the
    shipped data directory, the directory of the profile being loaded (the one the caller named)
    and below, and the directories the caller allows (`--profile-path DIR`, API `profile_path=`);
    `extends:` by name goes through the search path only;
  * an error about a file that is not a valid profile quotes nothing of it: no line text, no key
    name, no value (only its path, a line:column and our own words). A file is taken for a profile
    once it is a YAML mapping whose top-level keys are all profile keys.
"""
from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from .errors import Location, ProfileError
from .resources import builtin_import, shipped_profiles_dir

SHIPPED_DIR = shipped_profiles_dir()     # package data in a wheel; profiles/ in the work tree
SHIPPED_DATA_DIR = Path(__file__).resolve().parent / "data"
MAX_DEPTH = 16
MAX_PROFILE_BYTES = 1 << 20          # a profile (or imported seccomp JSON) larger than this is refused
MAX_NODES = 200_000                  # YAML nodes after alias expansion
MAX_NESTING = 64                     # mappings/lists inside each other (a real profile needs < 10)
# the top-level keys of profile format v1 (schema/profile.schema.json's properties)
PROFILE_KEYS = ("version", "name", "description", "extends", "namespaces", "user", "capabilities",
                "no_new_privs", "seccomp", "filesystem", "process", "network", "limits", "landlock",
                "isolation")

# (path pattern) whose string values are filesystem paths relative to the declaring file, or
# `builtin:NAME` for a file shipped in policies/data/ (policies/resources.py).
PATH_KEYS = {("seccomp", "import")}


def user_profile_dirs() -> list[Path]:
    dirs = []
    env = os.environ.get("PYSANDBOX_PROFILE_PATH")
    if env:
        dirs += [Path(p) for p in env.split(":") if p]
    cfg = os.environ.get("XDG_CONFIG_HOME")
    if not (cfg and os.path.isabs(cfg)):       # relative: ignored (XDG), never below the current directory
        home = os.environ.get("HOME", "")
        if not os.path.isabs(home):
            import pwd
            try:
                home = pwd.getpwuid(os.getuid()).pw_dir
            except KeyError:
                home = "/"
        cfg = os.path.join(home, ".config")
    dirs.append(Path(cfg) / "pysandbox" / "profiles")
    dirs.append(Path("/etc/pysandbox/profiles"))
    return dirs


def profile_dirs() -> list[Path]:
    return user_profile_dirs() + [SHIPPED_DIR]


def trusted_roots(allow=(), top: Optional[Path] = None) -> list[str]:
    """Directories (realpath) an `extends:` path or a `seccomp.import` may resolve into."""
    dirs = list(profile_dirs()) + [SHIPPED_DATA_DIR] + [Path(a) for a in allow]
    if top is not None:
        dirs.append(Path(top))
    return list(dict.fromkeys(os.path.realpath(d) for d in dirs))


def _inside(path: str, roots) -> bool:
    return any(path == r or path.startswith(r.rstrip("/") + "/") for r in roots)


def read_bounded(path, what: str = "profile", limit: int = MAX_PROFILE_BYTES, roots=None,
                 owned: bool = False) -> str:
    """The text of a regular file of at most `limit` bytes. Never blocks on a FIFO (opened
    non-blocking, refused by fstat before any read); errors name the file, never its content.
    With `roots`: the file opened must be inside them (checked on the descriptor, so a directory
    swapped for a symlink after the path was resolved is caught). With `owned`: it must belong to
    the caller or root and not be writable by everyone (a parent profile another local user
    planted or can rewrite - in /tmp, say - is not the one the caller reviewed)."""
    file = str(path)
    try:
        fd = os.open(file, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise ProfileError(f"cannot read {what}: no such file", file=file) from None
    except OSError as e:
        raise ProfileError(f"cannot read {what}: {e.strerror}", file=file) from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise ProfileError(f"is a directory, not a {what} file", file=file)
        if not stat.S_ISREG(st.st_mode):
            raise ProfileError(f"not a regular file: a {what} must be one", file=file)
        if st.st_size > limit:
            raise ProfileError(f"larger than {limit} bytes: not a {what}", file=file)
        if owned and (st.st_uid not in (0, os.geteuid()) or st.st_mode & 0o002):
            raise ProfileError(f"a parent {what} must belong to you or root and not be writable by "
                               f"everyone (owner uid {st.st_uid}, mode {stat.S_IMODE(st.st_mode):04o})", file=file)
        if roots is not None:
            try:
                real = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                real = os.path.realpath(file)       # no /proc: the resolved path was checked already
            if not _inside(real, roots):
                raise ProfileError(f"resolves outside the profile directories", file=file)
        chunks, n = [], 0
        while True:
            b = os.read(fd, 65536)
            if not b:
                break
            n += len(b)
            if n > limit:
                raise ProfileError(f"larger than {limit} bytes: not a {what}", file=file)
            chunks.append(b)
    except OSError as e:
        raise ProfileError(f"cannot read {what}: {e.strerror}", file=file) from None
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if b"\0" in data:
        raise ProfileError(f"binary data (NUL bytes): not a {what}", file=file)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ProfileError(f"not UTF-8 text: not a {what}", file=file) from None


def _redact(problem: str) -> str:
    """A YAML parser message without anything quoted from the input (characters, anchors, tags)."""
    def keep(m):        # the grammar's own words ('<stream end>', ',', ']') are not the input's
        return m.group(0) if re.fullmatch(r"'(<[a-z ]+>|[,\]\[}{:?-])'", m.group(0)) else ""
    out = re.sub(r"""'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*"|#x[0-9a-fA-F]+""", keep, problem or "")
    return " ".join(out.split()).replace(" ,", ",") or "syntax error"


PATH_MAX = 4096
NAME_MAX = 255
_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]{0,127}")


def check_path_value(value, what: str, loc: Optional[Location] = None, file: Optional[str] = None) -> None:
    """A path or profile reference from a profile or the command line: refused (a ProfileError at
    `loc`) when the kernel could not take it (a NUL byte, a name or path too long) - checked here so
    that it is a profile error, not an OSError/ValueError from deep in a lookup."""
    if not isinstance(value, str) or not value:
        raise ProfileError(f"{what}: expected a non-empty string", loc, file)
    if "\0" in value:
        raise ProfileError(f"{what}: contains a NUL byte", loc, file)
    try:
        raw = value.encode("utf-8")
    except UnicodeEncodeError:
        raise ProfileError(f"{what}: not valid UTF-8 text", loc, file) from None
    if len(raw) >= PATH_MAX:
        raise ProfileError(f"{what}: longer than {PATH_MAX - 1} bytes", loc, file)
    if any(len(part) > NAME_MAX for part in raw.split(b"/")):
        raise ProfileError(f"{what}: a path component longer than {NAME_MAX} bytes", loc, file)


def is_path_ref(ref: str) -> bool:
    return "/" in ref or ref.endswith((".yaml", ".yml"))


def resolve_profile(ref: str, relative_to: Optional[Path] = None, probed: Optional[list] = None) -> Path:
    """A profile reference -> file. Names are looked up in the user dirs, then the shipped dir;
    the candidates looked at before the one found are appended to `probed` (one appearing later
    would change the answer: the plan cache depends on their absence)."""
    check_path_value(ref, "profile reference")
    if is_path_ref(ref):
        p = Path(ref)
        if not p.is_absolute() and relative_to is not None:
            p = relative_to / p
        return p.resolve() if p.exists() else p
    if not _NAME_RE.fullmatch(ref):
        raise ProfileError(f"{ref!r} is not a profile name (letters, digits, '_', '.', '+', '-'; at most "
                           "128; a path needs a '/' or a .yaml suffix)")
    for d in profile_dirs():
        for ext in (".yaml", ".yml"):
            p = d / f"{ref}{ext}"
            try:
                found = p.is_file()
            except OSError:             # a search-path directory that cannot be read: not there
                found = False
            if found:
                return p.resolve()
            if probed is not None:
                probed.append(str(p))
    raise FileNotFoundError(ref)


class Tagged(list):
    """A list written with !extend or !remove."""
    tag = ""


class Extend(Tagged):
    tag = "!extend"


class Remove(Tagged):
    tag = "!remove"


@dataclass
class Document:
    """A loaded (and possibly merged) profile."""
    data: dict
    locations: dict = field(default_factory=dict)     # path tuple -> Location
    files: list = field(default_factory=list)          # most derived first
    probed: list = field(default_factory=list)         # absent files a name lookup looked at first

    def locate(self, path) -> Optional[Location]:
        path = tuple(path)
        while path:
            loc = self.locations.get(path)
            if loc is not None:
                return loc
            path = path[:-1]
        return self.locations.get(())


def _yaml():
    import yaml
    return yaml


class _Budget:
    __slots__ = ("left",)

    def __init__(self, n: int):
        self.left = n


def _construct(node, file: str, path: tuple, locs: dict, budget: Optional[_Budget] = None):
    yaml = _yaml()
    loc = Location(file, node.start_mark.line + 1, node.start_mark.column + 1)
    if budget is None:
        budget = _Budget(MAX_NODES)
    budget.left -= 1
    if budget.left < 0:
        raise ProfileError(f"more than {MAX_NODES} YAML nodes (aliases expanded): not a profile", loc)
    locs[path] = loc
    if len(path) > MAX_NESTING and not isinstance(node, yaml.ScalarNode):
        raise ProfileError(f"nested too deeply (more than {MAX_NESTING} levels): not a profile", loc)
    if isinstance(node, yaml.MappingNode):
        out: dict = {}
        for knode, vnode in node.value:
            if not isinstance(knode, yaml.ScalarNode):
                raise ProfileError("mapping keys must be plain strings",
                                   Location(file, knode.start_mark.line + 1, knode.start_mark.column + 1))
            key = knode.value
            if key == "<<":
                raise ProfileError("YAML merge keys (<<) are not supported; use extends:",
                                   Location(file, knode.start_mark.line + 1, knode.start_mark.column + 1))
            if key in out:
                first = locs.get(path + (key,))
                raise ProfileError("duplicate key" + (f" (first at line {first.line}, column {first.col})"
                                                      if first else ""),
                                   Location(file, knode.start_mark.line + 1, knode.start_mark.column + 1))
            out[key] = _construct(vnode, file, path + (key,), locs, budget)
            # a mapping entry is located at its key (where a reader looks for it)
            locs[path + (key,)] = Location(file, knode.start_mark.line + 1, knode.start_mark.column + 1)
        return out
    if isinstance(node, yaml.SequenceNode):
        items = [_construct(v, file, path + (i,), locs, budget) for i, v in enumerate(node.value)]
        if node.tag == "!extend":
            return Extend(items)
        if node.tag == "!remove":
            return Remove(items)
        if node.tag not in ("tag:yaml.org,2002:seq",):
            raise ProfileError("unknown tag on a list (known: !extend, !remove)", loc)
        return items
    # scalar
    if node.tag.startswith("!"):
        raise ProfileError("unknown tag (known on lists: !extend, !remove)", loc)
    if node.tag == "tag:yaml.org,2002:str":
        return node.value                      # most scalars: no constructor needed
    loader = _scalar_loader()
    try:
        value = loader.construct_object(node, deep=True)
    except (yaml.YAMLError, ValueError, TypeError, OverflowError):
        raise ProfileError("a value the safe YAML loader cannot construct (an impossible date or number, "
                           "an unsupported tag)", loc) from None
    finally:
        loader.constructed_objects.clear()
    return value


_SCALAR_LOADER = None


def _composer():
    """libyaml's parser and composer when PyYAML has them (C: linear and ~10x faster than the pure
    Python one; its scanner refuses nesting deeper than 1000 itself), else the Python one."""
    yaml = _yaml()
    return getattr(yaml, "CSafeLoader", None) or yaml.SafeLoader


def _scalar_loader():
    global _SCALAR_LOADER
    if _SCALAR_LOADER is None:
        yaml = _yaml()
        _SCALAR_LOADER = yaml.SafeLoader("")
    return _SCALAR_LOADER


def load_file(path: Path, roots=None, parent: bool = False) -> Document:
    """Parse one YAML file (no extends resolution). With `roots`, a `seccomp.import` path must
    resolve inside them. `parent`: reached through `extends:` (see read_bounded's `owned`)."""
    yaml = _yaml()
    file = str(path)
    # the installation's own profiles are as trusted as its code (whoever installed it)
    shipped = _inside(os.path.realpath(path), (os.path.realpath(SHIPPED_DIR),))
    text = read_bounded(path, roots=roots, owned=parent and not shipped)
    _scalar_loader()
    import gc
    gc_was = gc.isenabled()
    gc.disable()            # the node tree has no cycles: collections during its build only cost time
    try:
        node = yaml.compose(text, Loader=_composer())
        if node is None:
            raise ProfileError("empty profile", Location(file, 1, 1))
        locs: dict = {}
        data = _construct(node, file, (), locs)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        msg = f"invalid YAML: {_redact(e.problem or e.context)}"
        if "nesting depth" in (e.problem or ""):        # libyaml's own bound (1000 levels)
            msg = f"nested too deeply (more than {MAX_NESTING} levels): not a profile"
        if mark is not None:
            raise ProfileError(msg, Location(file, mark.line + 1, mark.column + 1)) from None
        raise ProfileError(msg, file=file) from None
    except yaml.YAMLError as e:
        pos = getattr(e, "position", None)          # ReaderError: a character YAML does not allow
        raise ProfileError("invalid YAML: a character YAML does not allow"
                           + (f" at offset {pos}" if isinstance(pos, int) else ""), file=file) from None
    except RecursionError:
        raise ProfileError("nested too deeply: not a profile", file=file) from None
    finally:
        if gc_was:
            gc.enable()
    if not isinstance(data, dict):
        raise ProfileError("a profile must be a YAML mapping", locs[()])
    for key in data:
        if key not in PROFILE_KEYS:
            # say where, never what: the file may be anything but a profile
            import difflib
            near = difflib.get_close_matches(str(key), PROFILE_KEYS, n=1)
            hint = f"; did you mean {near[0]!r}?" if near else ""
            raise ProfileError(f"not a pysandbox profile: unknown top-level key{hint} (known: "
                               f"{', '.join(sorted(PROFILE_KEYS))})", locs.get((key,), locs[()]))
    _builtin_imports(data, locs)
    _absolutize(data, Path(path).resolve().parent, (), locs, roots)
    return Document(data, locs, [file])


def _absolutize(data: Any, base: Path, path: tuple, locs: dict, roots=None) -> None:
    if isinstance(data, dict):
        for k, v in data.items():
            p = path + (k,)
            if p in PATH_KEYS and isinstance(v, str) and v:
                check_path_value(v, ".".join(p), locs.get(p))
                full = os.path.realpath(os.path.join(base, v))
                if roots is not None and not _inside(full, roots):
                    raise ProfileError(f"{'.'.join(p)}: {v!r} resolves outside the profile directories "
                                       "(allow a directory with --profile-path DIR)", locs.get(p))
                data[k] = full if not os.path.isabs(v) or roots is not None else v
            else:
                _absolutize(v, base, p, locs, roots)


def _clean(value):
    """Strip merge tags from values that had nothing to merge with."""
    if isinstance(value, Remove):
        return []
    if isinstance(value, Extend):
        return [_clean(v) for v in value]
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def _copy_locs(value, src: tuple, dst: tuple, locs: dict, out: dict) -> None:
    """The locations of `value` (the node at `src` in `locs`) and everything below it, placed at
    `dst` in `out`. Walks the value, not the table: linear in the size of the subtree (a scan of
    the whole table per key made merging quadratic)."""
    loc = locs.get(src)
    if loc is not None:
        out[dst] = loc
    if isinstance(value, dict):
        for k, v in value.items():
            _copy_locs(v, src + (k,), dst + (k,), locs, out)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _copy_locs(v, src + (i,), dst + (i,), locs, out)


def _item_key(item):
    """A hashable stand-in for a list item, equal exactly when the items are equal (for !extend and
    !remove: a set lookup instead of a scan of the list per item)."""
    if isinstance(item, dict):
        return ("d", tuple(sorted(((repr(k), _item_key(v)) for k, v in item.items()))))
    if isinstance(item, list):
        return ("l", tuple(_item_key(v) for v in item))
    if item is None:
        return ("s", None)
    if isinstance(item, (bool, int, float)):
        return ("n", item)           # True == 1 == 1.0, as the list's `in` had it
    return ("o", type(item).__name__, repr(item))


def _merge(parent, child, path: tuple, plocs: dict, clocs: dict, out_locs: dict):
    """Merge child over parent; fills out_locs for the merged node at `path`."""
    if isinstance(child, dict) and isinstance(parent, dict):
        merged = {}
        if path in clocs:
            out_locs[path] = clocs[path]
        elif path in plocs:
            out_locs[path] = plocs[path]
        for k in parent.keys() | child.keys():
            p = path + (k,)
            if k in child and k in parent:
                merged[k] = _merge(parent[k], child[k], p, plocs, clocs, out_locs)
            elif k in child:
                merged[k] = _clean(child[k])
                _copy_locs(child[k], p, p, clocs, out_locs)
            else:
                merged[k] = parent[k]
                _copy_locs(parent[k], p, p, plocs, out_locs)
        # keep a stable key order: parent's order, then the child's new keys
        ordered = {k: merged[k] for k in list(parent.keys()) + [k for k in child if k not in parent]}
        return ordered
    if isinstance(child, Extend) and isinstance(parent, list):
        result = list(parent)
        _copy_locs(parent, path, path, plocs, out_locs)
        have = {_item_key(x) for x in result}
        for i, item in enumerate(child):
            k = _item_key(item)
            if k not in have:
                have.add(k)
                _copy_locs(item, path + (i,), path + (len(result),), clocs, out_locs)
                result.append(_clean(item))
        out_locs[path] = clocs.get(path, plocs.get(path))
        return result
    if isinstance(child, Remove) and isinstance(parent, list):
        result = []
        gone = {_item_key(x) for x in child}
        for i, item in enumerate(parent):
            if _item_key(item) not in gone:
                _copy_locs(item, path + (i,), path + (len(result),), plocs, out_locs)
                result.append(item)
        out_locs[path] = clocs.get(path, plocs.get(path))
        return result
    # replace
    _copy_locs(child, path, path, clocs, out_locs)
    return _clean(child)


def load_profile(ref: str, *, relative_to: Optional[Path] = None, allow=()) -> Document:
    """Load a profile by name or path, resolving `extends:` (multi-level, cycle-checked).
    `allow`: further directories `extends:` paths and `seccomp.import` may resolve into."""
    probed: list = []
    try:
        path = resolve_profile(ref, relative_to, probed)
    except FileNotFoundError:
        where = ", ".join(str(d) for d in profile_dirs())
        raise ProfileError(f"unknown profile {ref!r} (looked in {where})") from None
    roots = trusted_roots(allow, Path(os.path.realpath(path)).parent)
    doc = _load_chain(path, [], roots, probed)
    doc.probed = list(dict.fromkeys(probed))
    return doc


def _load_chain(path: Path, stack: list, roots: list, probed: list) -> Document:
    key = os.path.realpath(path)
    if key in stack:
        chain = " -> ".join(stack[stack.index(key):] + [key])
        raise ProfileError(f"extends cycle: {chain}", file=stack[-1])
    if len(stack) >= MAX_DEPTH:
        raise ProfileError(f"extends chain deeper than {MAX_DEPTH}", file=str(path))
    doc = load_file(Path(path), roots, parent=bool(stack))
    parent_ref = doc.data.pop("extends", None)
    if parent_ref is None:
        doc.data = _clean(doc.data)
        return doc
    ext_loc = doc.locations.get(("extends",))
    if not isinstance(parent_ref, str) or not parent_ref:
        raise ProfileError("extends must be a profile name or a path", ext_loc)
    check_path_value(parent_ref, "extends", ext_loc)
    if is_path_ref(parent_ref):
        parent_path = Path(os.path.realpath(os.path.join(os.path.dirname(key), parent_ref)))
        if not _inside(str(parent_path), roots):
            raise ProfileError(f"extends {parent_ref!r}: resolves outside the profile directories (the "
                               "profile's own directory, the profile search path; allow another with "
                               "--profile-path DIR)", ext_loc)
        if not parent_path.exists():
            raise ProfileError(f"extends missing file {parent_ref!r}", ext_loc)
    else:
        try:
            parent_path = resolve_profile(parent_ref, probed=probed)
        except FileNotFoundError:
            raise ProfileError(f"extends unknown profile {parent_ref!r}", ext_loc) from None
        except ProfileError as e:
            raise ProfileError(f"extends: {e.message}", ext_loc) from None
    seen = stack + [key]
    if os.path.realpath(parent_path) in seen:          # named at the `extends:` that closes the cycle
        chain = " -> ".join(seen[seen.index(os.path.realpath(parent_path)):] + [os.path.realpath(parent_path)])
        raise ProfileError(f"extends cycle: {chain}", ext_loc)
    parent = _load_chain(parent_path, seen, roots, probed)
    out_locs: dict = {}
    child_locs = {p: l for p, l in doc.locations.items() if p != ("extends",)}
    merged = _merge(parent.data, doc.data, (), parent.locations, child_locs, out_locs)
    out_locs[()] = doc.locations[()]
    out_locs[("extends",)] = ext_loc
    return Document(merged, out_locs, [str(path)] + parent.files)


def _builtin_imports(data: dict, locs: dict) -> None:
    """`seccomp.import: builtin:NAME` -> the absolute path of the shipped policies/data/NAME.json
    (policies/resources.py), before relative paths are made absolute."""
    for p in PATH_KEYS:
        parent = data
        for k in p[:-1]:
            parent = parent.get(k) if isinstance(parent, dict) else None
        v = parent.get(p[-1]) if isinstance(parent, dict) else None
        if isinstance(v, str):
            try:
                builtin = builtin_import(v)
            except ValueError as e:
                raise ProfileError(f"{'.'.join(p)}: {e}", locs.get(p)) from None
            if builtin is not None:
                parent[p[-1]] = str(builtin)
