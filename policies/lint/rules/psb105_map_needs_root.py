"""PSB105 map-needs-root: An id map names a host id other than the caller's (`outside: caller`): only
root may use it.
"""
from __future__ import annotations

from ..context import Ctx
from ..model import Rule

RULE = Rule(
    code="PSB105",
    name="map-needs-root",
    severity="warning",
    summary="An id map names a host id other than the caller's (`outside: caller`): only root may use it.",
    rationale="""\
Who owns a host id: root owns them all; an unprivileged caller owns its own uid and gid (the
kernel lets it write a one-line map of its own id) and the ids of its `/etc/subuid` / `/etc/subgid`
ranges (written through `newuidmap`/`newgidmap`; see profile-format.md "Rootless id ranges"). A
profile is untrusted input, so `pysandbox run`/`explain`/the API refuse, **at compile time**, a map
that names a host id the caller does not own - `file:line:col` at the map entry, exit 2, nothing
launched. lint cannot know who will run the profile, so it warns for every explicit host id (a
number in `outside`, or a second entry) rather than guessing; `auto`,
`subordinate` (the caller's first 65536 subordinate ids, whoever it is) and
`{inside: N, outside: caller, count: 1}` never trigger it. Keep such a map only in a profile that
only root runs (and suppress the finding there, with that reason). A map that includes host id 0
is also PSB104.
""",
    bad="""\
version: 1
extends: ../base.yaml
user:
  uid_map:
    - {inside: 0, outside: 100000, count: 65536}   # expect: PSB105
""",
    good="""\
version: 1
extends: ../base.yaml
user:
  uid_map:
    - {inside: 0, outside: caller, count: 1}
  gid_map:
    - {inside: 0, outside: caller, count: 1}
""",
    fix="""\
Use `auto` (the caller's own id rootless, an unprivileged range as root), `subordinate` (the
caller's /etc/subuid range rootless) or `{inside: N, outside: caller, count: 1}`; keep explicit host
ids only for profiles that root runs.
""",
)


def check(ctx: Ctx) -> None:
    """lint cannot know who will run the profile: any explicit host id (not the `caller`
    placeholder, not `auto`) is refused at compile time for a rootless caller."""
    for key, what, i, out, cnt in ctx.id_map_entries():
        if out == "caller" and cnt == 1 and i == 0:
            continue
        shown = f"host {what} {out}" if cnt == 1 else f"host {what}s {out}+{cnt}"
        ctx.report(RULE, f"user.{key}[{i}] maps {shown}: only root may run this profile (a rootless "
                   f"caller may map only its own {what}, once, and ids of its /etc/sub{what} ranges)",
                   "use `auto` (the caller's own id rootless, an unprivileged range as root), `subordinate` "
                   "(the caller's /etc/subuid range rootless) or "
                   "`{inside: N, outside: caller, count: 1}`; keep it only for root-run profiles",
                   ("user", key, i, "outside"), ("user", key, i))
