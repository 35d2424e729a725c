"""The one rule "a gid map holds a subordinate range" (policies/subids.py, holds_range): newgidmap
then leaves `setgroups` at `allow`, supplementary groups can be set and the caller's are dropped.
It used to be written three times (sandbox/idmap.ranged, sandbox/execin._gid_range on the plan as
stored, policies/compiler._ranged); now the compiler, the launcher's preflight, PID 1
(init.setgroups_allowed) and `exec` (execin._spec, the stored form normalised by
execin._stored_map) all answer through it. No kernel: plans and maps only."""
from __future__ import annotations

import dataclasses
import json

import pytest

from policies import subids
from policies.plan import IdMapEntry, Namespaces, Plan, User

CALLER = (IdMapEntry(0, 1001, 1),)
SUBORDINATE = (IdMapEntry(0, 100000, 65536),)
ONE_SUBORDINATE = (IdMapEntry(0, 100000, 1),)
TWO_SINGLE = (IdMapEntry(0, 1001, 1), IdMapEntry(1, 100000, 1))
CASES = [((), False), (CALLER, False), (ONE_SUBORDINATE, False), (SUBORDINATE, True), (TWO_SINGLE, True)]


@pytest.mark.parametrize("gid_map,expected", CASES)
def test_the_rule(gid_map, expected):
    assert subids.holds_range(gid_map) is expected
    assert subids.holds_range(list(gid_map)) is expected


def _plan(gid_map) -> Plan:
    return Plan("t", (), namespaces=Namespaces(user=True), user=User(uid_map=gid_map[:1] or CALLER, gid_map=gid_map))


@pytest.mark.parametrize("gid_map,expected", CASES)
def test_pid1_and_exec_answer_with_it(gid_map, expected):
    """PID 1 from the plan, `exec` from the plan as stored (JSON of plan.to_dict(), and the older
    list form): the same answer as the rule's; root may always call setgroups."""
    from sandbox import execin, init
    plan = _plan(gid_map)
    assert init.setgroups_allowed(plan, rootless=True) is expected
    assert init.setgroups_allowed(plan, rootless=False) is True
    stored = json.loads(json.dumps(plan.to_dict()))
    assert execin._stored_map(stored["user"]["gid_map"]) == gid_map
    assert execin._stored_map([[e.inside, e.outside, e.count] for e in gid_map]) == gid_map
    assert execin._stored_map(None) == ()
    spec = execin._spec(stored, ["/bin/true"], {}, "/", b"", True, False)
    assert spec.setgroups is expected


def test_one_copy():
    """The three old copies are gone (a new one would be a fourth rule to keep in step)."""
    from sandbox import execin, idmap
    from policies import compiler
    assert not hasattr(idmap, "ranged") and not hasattr(execin, "_gid_range") and not hasattr(compiler, "_ranged")
    assert dataclasses.is_dataclass(IdMapEntry)
