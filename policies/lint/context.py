"""The context a lint rule runs in (`Ctx`) and the document lookups rules share: where a node is,
which seccomp.allow / deny item names a system call, the entries of the id maps."""
from __future__ import annotations

from typing import Callable, Optional

from .. import syscalls as _sc
from ..errors import Location
from .model import Finding, Rule


class Ctx:
    """What a rule sees: the merged document (and its node locations), the compiled plan (None for
    a document rule), the profile file; `report` records a finding at a node."""

    def __init__(self, doc, plan, profile_file: str):
        self.doc = doc
        self.plan = plan
        self.profile = profile_file
        self.findings: list[Finding] = []
        d = doc.data if doc is not None else {}
        self.sec = d.get("seccomp") if isinstance(d.get("seccomp"), dict) else None

    def loc(self, *paths) -> Location:
        """The first of the paths that exists in the document (each falls back to its parents)."""
        for p in paths:
            if p is None:
                continue
            p = tuple(p)
            if p in self.doc.locations:
                return self.doc.locations[p]
        for p in paths:
            if p is not None:
                loc = self.doc.locate(p)
                if loc is not None:
                    return loc
        return self.doc.locate(()) or Location(self.profile, 1, 1)

    def has(self, path) -> bool:
        return tuple(path) in self.doc.locations

    def report(self, rule: Rule, message: str, hint: str, *paths, severity: Optional[str] = None,
               location: Optional[Location] = None):
        loc = location or self.loc(*paths)
        self.findings.append(Finding(code=rule.code, severity=severity or rule.severity, message=message,
                                       hint=hint, file=loc.file, line=loc.line, col=loc.col,
                                       profile=self.profile))

    # --- seccomp source lookup -----------------------------------------------------------
    def seccomp_items(self, which: str):
        """Yield (index, item_path, names: [(name, name_path, via_group)], args) of seccomp.allow/deny."""
        if not self.sec:
            return
        items = self.sec.get(which) or []
        if not isinstance(items, list):
            return
        groups = _sc.groups()
        for i, item in enumerate(items):
            base = ("seccomp", which, i)
            if isinstance(item, str):
                raw, paths, args = [item], [base], None
            elif isinstance(item, dict):
                raw = item.get("names") or []
                if isinstance(raw, str):
                    raw = [raw]
                paths = [base + ("names", j) for j in range(len(raw))]
                args = item.get("args")
            else:
                continue
            names = []
            for n, p in zip(raw, paths):
                if not isinstance(n, str):
                    continue
                if n.startswith("@"):
                    names.extend((m, p, True) for m in groups.get(n, ()))
                else:
                    names.append((n, p, False))
            yield i, base, names, args

    def allow_source(self, name: str):
        """Path of the node that lets `name` through: explicit allow, group allow, import, default."""
        group_hit = None
        for _, base, names, args in self.seccomp_items("allow"):
            for n, p, via_group in names:
                if n == name:
                    if not via_group:
                        return p
                    group_hit = group_hit or p
        if group_hit:
            return group_hit
        if self.sec and "import" in self.sec:
            return ("seccomp", "import")
        if self.sec and "default_action" in self.sec:
            return ("seccomp", "default_action")
        return ("seccomp",)

    def sec_path(self, key: str) -> tuple:
        """seccomp.KEY when the document writes it, else the import that brought it, else seccomp."""
        return ("seccomp", key) if self.has(("seccomp", key)) else (
            ("seccomp", "import") if self.has(("seccomp", "import")) else ("seccomp",))

    # --- user namespace id maps ----------------------------------------------------------
    def id_map_entries(self):
        """Yield (key, what, index, outside, count) of every entry of user.uid_map / gid_map the
        document writes as a mapping (key uid_map/gid_map, what uid/gid), when the plan has a user
        namespace."""
        if not self.plan.namespaces.user:
            return
        user = self.doc.data.get("user")
        if not isinstance(user, dict):
            return
        for key in ("uid_map", "gid_map"):
            m = user.get(key)
            if not isinstance(m, list):
                continue
            what = "uid" if key == "uid_map" else "gid"
            for i, e in enumerate(m):
                if isinstance(e, dict):
                    yield key, what, i, e.get("outside"), e.get("count", 1)


Check = Callable[[Ctx], None]
