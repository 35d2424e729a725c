"""PSB602 landlock-wider-than-mounts: A Landlock rule grants more than the mount plan gives that path."""
from __future__ import annotations

from ...landlock import beneath as _beneath
from ..context import Ctx
from ..model import Rule

RULE = Rule(
    code="PSB602",
    name="landlock-wider-than-mounts",
    severity="warning",
    summary="A Landlock rule grants more than the mount plan gives that path.",
    rationale="""\
Landlock is the second wall: the mounts decide what the sandbox contains and whether it is
writable, Landlock what the program may do there. A write rule on a path the mount plan keeps
read-only (or does not mount at all) does nothing today, but it is a rule written for a different
mount plan: the day that path becomes writable (a bind added, `read_only: false`), the second wall
will not hold. Landlock rules should be the mount plan's own, no wider (`filesystem: from_mounts`
derives them). Checked for the host root (`root: host`); an image's or a directory's tree is not
known before the launch.
""",
    bad="""\
version: 1
extends: ../base.yaml
landlock:
  filesystem:
    read: [/usr, /lib]
    write: [/tmp, /var]   # expect: PSB602
""",
    good="""\
version: 1
extends: ../base.yaml
landlock:
  filesystem:
    read: [/usr, /lib]
    write: [/tmp]
""",
    fix="""\
Grant write only beneath writable mounts (`tmpfs`, a bind or volume without `read_only`), or use
`filesystem: from_mounts`.
""",
)


def check(ctx: Ctx) -> None:
    fs, ll = ctx.plan.filesystem, ctx.plan.landlock
    fsec = ((ctx.doc.data.get("landlock") or {}).get("filesystem"))
    if ll is None or not isinstance(fsec, dict) or fs.root != "host" or fs.image:
        return
    writable = [m.target for m in fs.mounts if not m.read_only] + ["/dev/shm"] + ([] if fs.read_only else ["/"])
    for i, raw in enumerate(fsec.get("write") or ()):
        path = "/" + raw.strip("/") if raw != "/" else "/"
        if not any(_beneath(path, w) for w in writable):
            ctx.report(RULE, f"landlock: write on {path}, which the mount plan does not make writable",
                       "grant write only beneath writable mounts", ("landlock", "filesystem", "write", i))
