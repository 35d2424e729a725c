"""PSB002 extends-missing: `extends:` names a profile or file that does not exist."""
from __future__ import annotations

from ..model import Rule

RULE = Rule(
    code="PSB002",
    name="extends-missing",
    severity="error",
    summary="`extends:` names a profile or file that does not exist.",
    rationale="""\
`extends:` must name an existing profile: a name found in the user profile directories
(`$PYSANDBOX_PROFILE_PATH`, `~/.config/pysandbox/profiles`, `/etc/pysandbox/profiles`) or the shipped
ones, or a path relative to the extending file. A typo here means the profile cannot be loaded at
all, so none of the parent's protections apply.
""",
    bad="""\
version: 1
extends: ../no-such-profile.yaml   # expect: PSB002
""",
    good="""\
version: 1
extends: ../base.yaml
""",
    fix="""\
Fix the name or path in `extends:`: names are looked up in the user profile directories, then the
shipped ones; a path is relative to the profile's own file.
""",
)
