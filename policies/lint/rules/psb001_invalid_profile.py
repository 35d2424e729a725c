"""PSB001 invalid-profile: The profile is not valid YAML, fails the profile schema, or does not compile."""
from __future__ import annotations

from ..model import Rule

RULE = Rule(
    code="PSB001",
    name="invalid-profile",
    severity="error",
    summary="The profile is not valid YAML, fails the profile schema, or does not compile.",
    rationale="""\
The file must be a profile pysandbox can run: valid YAML, every key and value allowed by the
profile schema (`policies/schema/profile.schema.json`), and compilable (known capabilities, mapped
uids, parseable sizes, ...). `pysandbox run` refuses such a profile with exit 2; lint reports every
schema violation at once, each at its node, instead of only the first.
""",
    bad="""\
version: 1
extends: ../base.yaml
capabilites: {drop: [ALL]}   # expect: PSB001
""",
    good="""\
version: 1
extends: ../base.yaml
capabilities: {drop: [ALL]}
""",
    fix="""\
Fix the node the finding points at so that the profile matches the schema and compiles; `pysandbox
explain` shows the compiled result.
""",
)
