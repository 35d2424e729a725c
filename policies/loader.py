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
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from .errors import Location, ProfileError
from .resources import builtin_import, shipped_profiles_dir

SHIPPED_DIR = shipped_profiles_dir()     # package data in a wheel; profiles/ in the work tree
MAX_DEPTH = 16

# (path pattern) whose string values are filesystem paths relative to the declaring file, or
# `builtin:NAME` for a file shipped in policies/data/ (policies/resources.py).
PATH_KEYS = {("seccomp", "import")}


def user_profile_dirs() -> list[Path]:
    dirs = []
    env = os.environ.get("PYSANDBOX_PROFILE_PATH")
    if env:
        dirs += [Path(p) for p in env.split(":") if p]
    cfg = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    dirs.append(Path(cfg) / "pysandbox" / "profiles")
    dirs.append(Path("/etc/pysandbox/profiles"))
    return dirs


def profile_dirs() -> list[Path]:
    return user_profile_dirs() + [SHIPPED_DIR]


def is_path_ref(ref: str) -> bool:
    return "/" in ref or ref.endswith((".yaml", ".yml"))


def resolve_profile(ref: str, relative_to: Optional[Path] = None) -> Path:
    """A profile reference -> file. Names are looked up in the user dirs, then the shipped dir."""
    if is_path_ref(ref):
        p = Path(ref)
        if not p.is_absolute() and relative_to is not None:
            p = relative_to / p
        return p.resolve() if p.exists() else p
    for d in profile_dirs():
        for ext in (".yaml", ".yml"):
            p = d / f"{ref}{ext}"
            if p.is_file():
                return p.resolve()
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


def _construct(node, file: str, path: tuple, locs: dict):
    yaml = _yaml()
    loc = Location(file, node.start_mark.line + 1, node.start_mark.column + 1)
    locs[path] = loc
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
                raise ProfileError(f"duplicate key {key!r}",
                                   Location(file, knode.start_mark.line + 1, knode.start_mark.column + 1))
            out[key] = _construct(vnode, file, path + (key,), locs)
            # a mapping entry is located at its key (where a reader looks for it)
            locs[path + (key,)] = Location(file, knode.start_mark.line + 1, knode.start_mark.column + 1)
        return out
    if isinstance(node, yaml.SequenceNode):
        items = [_construct(v, file, path + (i,), locs) for i, v in enumerate(node.value)]
        if node.tag == "!extend":
            return Extend(items)
        if node.tag == "!remove":
            return Remove(items)
        if node.tag not in ("tag:yaml.org,2002:seq",):
            raise ProfileError(f"unknown tag {node.tag} (known: !extend, !remove)", loc)
        return items
    # scalar
    if node.tag.startswith("!"):
        raise ProfileError(f"unknown tag {node.tag} (known on lists: !extend, !remove)", loc)
    loader = _scalar_loader()
    value = loader.construct_object(node, deep=True)
    loader.constructed_objects.clear()
    return value


_SCALAR_LOADER = None


def _scalar_loader():
    global _SCALAR_LOADER
    if _SCALAR_LOADER is None:
        yaml = _yaml()
        _SCALAR_LOADER = yaml.SafeLoader("")
    return _SCALAR_LOADER


def load_file(path: Path) -> Document:
    """Parse one YAML file (no extends resolution)."""
    yaml = _yaml()
    file = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ProfileError("profile file not found", file=file) from None
    except IsADirectoryError:
        raise ProfileError("is a directory, not a profile file", file=file) from None
    except (OSError, UnicodeDecodeError) as e:
        raise ProfileError(f"cannot read profile: {getattr(e, 'strerror', None) or e}", file=file) from None
    _scalar_loader()
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        msg = f"invalid YAML: {e.problem or e.context}"
        if mark is not None:
            raise ProfileError(msg, Location(file, mark.line + 1, mark.column + 1)) from None
        raise ProfileError(msg, file=file) from None
    except yaml.YAMLError as e:
        raise ProfileError(f"invalid YAML: {e}", file=file) from None
    locs: dict = {}
    if node is None:
        raise ProfileError("empty profile", Location(file, 1, 1))
    data = _construct(node, file, (), locs)
    if not isinstance(data, dict):
        raise ProfileError("a profile must be a YAML mapping", locs[()])
    _builtin_imports(data, locs)
    _absolutize(data, Path(path).resolve().parent, ())
    return Document(data, locs, [file])


def _absolutize(data: Any, base: Path, path: tuple) -> None:
    if isinstance(data, dict):
        for k, v in data.items():
            p = path + (k,)
            if p in PATH_KEYS and isinstance(v, str) and v and not os.path.isabs(v):
                data[k] = str((base / v).resolve())
            else:
                _absolutize(v, base, p)


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


def _shift_locs(locs: dict, src_prefix: tuple, dst_prefix: tuple, offset: int = 0) -> dict:
    out = {}
    n = len(src_prefix)
    for p, loc in locs.items():
        if p[:n] == src_prefix:
            rest = p[n:]
            if offset and rest and isinstance(rest[0], int):
                rest = (rest[0] + offset,) + rest[1:]
            out[dst_prefix + rest] = loc
    return out


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
                out_locs.update(_shift_locs(clocs, p, p))
            else:
                merged[k] = parent[k]
                out_locs.update(_shift_locs(plocs, p, p))
        # keep a stable key order: parent's order, then the child's new keys
        ordered = {k: merged[k] for k in list(parent.keys()) + [k for k in child if k not in parent]}
        return ordered
    if isinstance(child, Extend) and isinstance(parent, list):
        result = list(parent)
        out_locs.update(_shift_locs(plocs, path, path))
        for i, item in enumerate(child):
            if item not in result:
                out_locs.update(_shift_locs(clocs, path + (i,), path + (len(result),)))
                result.append(_clean(item))
        out_locs[path] = clocs.get(path, plocs.get(path))
        return result
    if isinstance(child, Remove) and isinstance(parent, list):
        result = []
        for i, item in enumerate(parent):
            if item not in child:
                out_locs.update(_shift_locs(plocs, path + (i,), path + (len(result),)))
                result.append(item)
        out_locs[path] = clocs.get(path, plocs.get(path))
        return result
    # replace
    out_locs.update(_shift_locs(clocs, path, path))
    return _clean(child)


def load_profile(ref: str, *, relative_to: Optional[Path] = None) -> Document:
    """Load a profile by name or path, resolving `extends:` (multi-level, cycle-checked)."""
    try:
        path = resolve_profile(ref, relative_to)
    except FileNotFoundError:
        where = ", ".join(str(d) for d in profile_dirs())
        raise ProfileError(f"unknown profile {ref!r} (looked in {where})") from None
    return _load_chain(path, [])


def _load_chain(path: Path, stack: list) -> Document:
    key = str(Path(path).resolve()) if Path(path).exists() else str(path)
    if key in stack:
        chain = " -> ".join(stack[stack.index(key):] + [key])
        raise ProfileError(f"extends cycle: {chain}", file=stack[-1])
    if len(stack) >= MAX_DEPTH:
        raise ProfileError(f"extends chain deeper than {MAX_DEPTH}", file=str(path))
    doc = load_file(Path(path))
    parent_ref = doc.data.pop("extends", None)
    if parent_ref is None:
        doc.data = _clean(doc.data)
        return doc
    ext_loc = doc.locations.get(("extends",))
    if not isinstance(parent_ref, str) or not parent_ref:
        raise ProfileError("extends must be a profile name or a path", ext_loc)
    try:
        parent_path = resolve_profile(parent_ref, Path(path).resolve().parent)
    except FileNotFoundError:
        raise ProfileError(f"extends unknown profile {parent_ref!r}", ext_loc) from None
    if not Path(parent_path).exists():
        raise ProfileError(f"extends missing file {parent_ref!r}", ext_loc)
    parent = _load_chain(parent_path, stack + [key])
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
