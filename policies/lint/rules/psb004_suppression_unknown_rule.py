"""PSB004 suppression-unknown-rule: An inline suppression names a rule code that does not exist."""
from __future__ import annotations

from ..model import Rule

RULE = Rule(
    code="PSB004",
    name="suppression-unknown-rule",
    severity="warning",
    summary="An inline suppression names a rule code that does not exist.",
    rationale="""\
A suppression that names a code no rule has (a typo such as `PSB2O3`) silences nothing and hides
the intent. Use the codes from `pysandbox lint --list-rules`.
""",
    bad="""\
version: 1
extends: ../base.yaml
network: host   # pysandbox: ignore[PSB501, PSB999] host loopback service
""",
    good="""\
version: 1
extends: ../base.yaml
network: host   # pysandbox: ignore[PSB501] host loopback service
""",
    fix="""\
Use a code from `pysandbox lint --list-rules`, or remove the code from the suppression.
""",
    suppression='Findings about suppressions cannot themselves be suppressed (see [../lint.md](../lint.md)).',
)
