"""Where the project's own files are, in every layout pysandbox runs from.

    wheel (pip install .)        site-packages/policies/profiles/, policies/lint/rules/ (package
                                 data, copied there by setup.py's build hook)
    editable install, work tree  profiles/ and docs/rules/ beside the packages (their one source
                                 of truth; an editable install imports the packages from the tree)

Both are located from the `policies` package itself (importlib.resources), never from the current
directory. Pure: no syscalls, reads nothing but the file system.
"""
from __future__ import annotations

import re
from functools import lru_cache
from importlib import resources
from pathlib import Path

_BUILTIN = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
BUILTIN_PREFIX = "builtin:"


def _package_dir(package: str) -> Path:
    # a regular package on the file system (wheel, editable, work tree): a real directory
    return Path(str(resources.files(package)))


def _packaged_or_tree(packaged: Path, in_tree: str, holds: str = "*") -> Path:
    """PACKAGED when it exists and holds files matching HOLDS (a wheel); else IN_TREE under the project's work tree, but only when
    the packages are imported from a work tree (its pyproject.toml and sandbox/pid1.c beside them,
    which no wheel has): a site-packages directory never lends its top-level `profiles/` or
    `docs/` of another distribution's."""
    if packaged.is_dir() and any(packaged.glob(holds)):
        return packaged
    top = _package_dir("policies").parent
    if (top / "pyproject.toml").is_file() and (top / "sandbox" / "pid1.c").is_file():
        return top / in_tree
    return packaged


@lru_cache(maxsize=None)
def shipped_profiles_dir() -> Path:
    """The directory of the shipped profiles (strict, default, docker-default, examples/)."""
    return _packaged_or_tree(_package_dir("policies") / "profiles", "profiles")


@lru_cache(maxsize=None)
def rule_docs_dir() -> Path:
    """The directory of the lint rules' documents (PSB001.md, ...). policies/lint/rules/ is also the
    package of the rule modules: only a wheel's holds the documents."""
    return _packaged_or_tree(_package_dir("policies") / "lint" / "rules", "docs/rules", "PSB*.md")


def data_file(name: str) -> Path:
    """policies/data/NAME (shipped JSON such as Docker's default seccomp profile)."""
    return _package_dir("policies") / "data" / name


def builtin_import(value: str):
    """`seccomp.import: builtin:NAME` -> the path of the shipped policies/data/NAME.json (a form
    that resolves the same from the work tree, an editable install and a wheel); None when VALUE
    is not of that form; ValueError for a malformed or unknown NAME (never a path outside data/)."""
    if not value.startswith(BUILTIN_PREFIX):
        return None
    name = value[len(BUILTIN_PREFIX):]
    if not _BUILTIN.fullmatch(name) or ".." in name:
        raise ValueError(f"{value!r}: a builtin name is [a-z0-9._-], e.g. builtin:docker-default-seccomp")
    p = data_file(name + ".json")
    if not p.is_file():
        known = sorted(f.stem for f in (_package_dir("policies") / "data").glob("*.json"))
        raise ValueError(f"{value!r}: no such builtin (known: {', '.join(known)})")
    return p
