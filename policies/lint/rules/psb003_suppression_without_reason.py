"""PSB003 suppression-without-reason: An inline `# pysandbox: ignore[...]` suppression gives no reason
(it is not honoured).
"""
from __future__ import annotations

from ..model import Rule

RULE = Rule(
    code="PSB003",
    name="suppression-without-reason",
    severity="error",
    summary="An inline `# pysandbox: ignore[...]` suppression gives no reason (it is not honoured).",
    rationale="""\
A suppression is a reviewed exception, so it must say why. `# pysandbox: ignore[CODE]` with no
text after the bracket is not honoured (the original finding stays) and is reported itself: the
bad example is reported as PSB003 and as the PSB501 it meant to hide.
""",
    also=("PSB501",),
    bad="""\
version: 1
extends: ../base.yaml
# pysandbox: ignore[PSB501]
network: host
""",
    good="""\
version: 1
extends: ../base.yaml
# pysandbox: ignore[PSB501] the integration job talks to a service on the host's loopback
network: host
""",
    fix="""\
Write why after the bracket: `# pysandbox: ignore[PSB203] the test runner needs ptrace`.
""",
    suppression='Findings about suppressions cannot themselves be suppressed (see [../lint.md](../lint.md)).',
)
