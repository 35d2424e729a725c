"""PSB601 landlock-write-execute: A Landlock rule lets the program both write and execute the same path."""
from __future__ import annotations

import posixpath

from ...landlock import beneath as _beneath
from ..context import Ctx
from ..model import Rule

RULE = Rule(
    code="PSB601",
    name="landlock-write-execute",
    severity="warning",
    summary="A Landlock rule lets the program both write and execute the same path.",
    rationale="""\
A path the program may write and execute lets it drop a binary (or a script, or a library for
`LD_PRELOAD`) and run it: whatever it downloaded or unpacked runs with no further step, which is the
first thing an exploit needs. Keeping writable paths non-executable (W^X) forces an attacker through
the interpreters the profile already allows. A Landlock rule covers the whole tree beneath its path,
so `write: [/opt]` with `execute: [/opt/bin]` is reported too.
""",
    bad="""\
version: 1
extends: ../base.yaml
landlock:
  filesystem:
    read: [/usr, /lib]
    write: [/tmp]
    execute: [/usr/bin, /tmp]   # expect: PSB601
""",
    good="""\
version: 1
extends: ../base.yaml
landlock:
  filesystem:
    read: [/usr, /lib]
    write: [/tmp]
    execute: [/usr/bin]
""",
    fix="""\
Keep execute rules on read-only directories (the system directories, a read-only bind of the
program's own tree); install what must run before the sandbox starts.
""",
)


def check(ctx: Ctx) -> None:
    ll = ctx.plan.landlock
    fsec = ((ctx.doc.data.get("landlock") or {}).get("filesystem"))
    if ll is None or not isinstance(fsec, dict):
        return
    writes = [r.path for r in ll.paths if "write_file" in r.access]
    for i, raw in enumerate(fsec.get("execute") or ()):
        x = posixpath.normpath(raw) if isinstance(raw, str) else ""
        w = next((w for w in writes if _beneath(x, w) or _beneath(w, x)), None)
        if w is not None:
            ctx.report(RULE, f"landlock: {x} is executable and {'writable' if w == x else f'{w} writable'}: "
                       "the program can write a binary there and run it",
                       "keep writable paths out of execute (W^X)", ("landlock", "filesystem", "execute", i))
