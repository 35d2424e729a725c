"""PSB005 suppression-unused: An inline suppression matches no finding (stale)."""
from __future__ import annotations

from ..model import Rule

RULE = Rule(
    code="PSB005",
    name="suppression-unused",
    severity="info",
    summary="An inline suppression matches no finding (stale).",
    rationale="""\
A suppression that matches no finding on its line is stale: the risk it excused is gone, or the
comment moved away from the node it was written for. Remove it so it cannot silently excuse a future
problem on that line.
""",
    bad="""\
version: 1
extends: ../base.yaml
network: none   # pysandbox: ignore[PSB501] left over from when this used the host network
""",
    good="""\
version: 1
extends: ../base.yaml
network: none
""",
    fix="""\
Remove the stale suppression (or move it to the line whose finding it means).
""",
    suppression='Findings about suppressions cannot themselves be suppressed (see [../lint.md](../lint.md)).',
)
