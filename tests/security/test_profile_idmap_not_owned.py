"""Hole 6 (second half): a profile run by an unprivileged user could name id maps of host ids the
user does not own; only the launch (preflight) stopped it, after the whole compilation and with
no location in the profile.

Now the compiler refuses it: who owns a host id - root all of them, a rootless caller only its own
uid/gid (one id, one entry) and, since issue 20 item 2, the ids of its /etc/subuid, /etc/subgid
ranges (tests/system/test_rootless_ranges.py; the "range" case here exceeds pysbx-test's by one id) - checked at compile time,
`file:line:col` at the offending map entry, exit 2, nothing launched (no sandbox process, no audit
`start` event). The caller's own id still works rootless; root may map any range. lint, which
cannot know the caller, warns with PSB105 for any explicit host id.
"""
from __future__ import annotations

import json
import os
import pwd
import re

import pytest

from conftest import TEST_USER


def _other_uid(me: int) -> int:
    """A host uid that is neither root nor the caller (a real account's, e.g. nobody)."""
    for name in ("nobody", "daemon", "bin"):
        try:
            uid = pwd.getpwnam(name).pw_uid
        except KeyError:
            continue
        if uid not in (0, me):
            return uid
    return 4242


MAPS = {
    "root": "user:\n  uid_map:\n    - {{inside: 0, outside: 0, count: 1}}\n",
    "other": "user:\n  uid_map:\n    - {{inside: 0, outside: {other}, count: 1}}\n",
    "range": "user:\n  uid_map:\n    - {{inside: 0, outside: caller, count: 1}}\n    - {{inside: 1, outside: 100000, count: 65537}}\n",
    "gid": "user:\n  gid_map:\n    - {{inside: 0, outside: 0, count: 1}}\n",
}


@pytest.mark.parametrize("kind", sorted(MAPS))
def test_rootless_map_of_ids_not_owned_is_refused_at_compile_time(user_runner, tmp_profile, shared_tmp, kind):
    me = user_runner.uid
    body = "version: 1\nextends: strict\n" + MAPS[kind].format(other=_other_uid(me))
    p = tmp_profile(body, f"map-{kind}.yaml")
    log = shared_tmp / "audit.jsonl"
    os.chmod(shared_tmp, 0o777)
    marker = shared_tmp / "ran"
    r = user_runner("run", "--profile", p, "--audit-log", str(log), "--", "/bin/sh", "-c", f"touch {marker}")
    assert r.returncode == 2, r
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r
    line_no = 6 if kind == "range" else 5
    assert re.match(rf"pysandbox: {re.escape(p)}:{line_no}:7: user\.(u|g)id_map\[\d\]: ", lines[0]), lines[0]
    assert "need root" in lines[0] or "only once" in lines[0], lines[0]
    assert not marker.exists()                                   # nothing ran
    events = [json.loads(x) for x in log.read_text().splitlines()] if log.exists() else []
    assert not [e for e in events if e.get("type") == "start"], events    # nothing launched
    # explain (no launch at all) says the same
    r2 = user_runner("explain", "--profile", p)
    assert r2.returncode == 2 and r2.stderr.strip() == lines[0], r2


def test_rootless_own_id_still_works(user_runner, tmp_profile):
    me, mg = user_runner.uid, user_runner.gid
    p = tmp_profile("version: 1\nextends: strict\nuser:\n  uid: caller\n  gid: caller\n"
                    f"  uid_map:\n    - {{inside: {me}, outside: caller, count: 1}}\n"
                    f"  gid_map:\n    - {{inside: {mg}, outside: {mg}, count: 1}}\n", "own.yaml")
    r = user_runner("run", "--profile", p, "--", "/bin/sh", "-c", "id -u; cat /proc/self/uid_map")
    assert r.returncode == 0, r
    out = r.stdout.split()
    assert out[0] == str(user_runner.uid)
    assert out[1:4] == [str(user_runner.uid), str(user_runner.uid), "1"]
    # `outside: caller` mapped to root inside, and auto
    p = tmp_profile("version: 1\nextends: strict\nuser:\n  uid_map:\n    - {inside: 0, outside: caller, count: 1}\n",
                    "own0.yaml")
    assert user_runner("run", "--profile", p, "--", "/bin/sh", "-c", "id -u").stdout.strip() == "0"
    assert user_runner("run", "--profile", "strict", "--", "/bin/true").returncode == 0


def test_root_may_map_any_range(root_runner, tmp_profile):
    other = _other_uid(0)
    p = tmp_profile("version: 1\nextends: strict\nuser:\n  uid_map:\n"
                    f"    - {{inside: 0, outside: {other}, count: 1}}\n"
                    "    - {inside: 1, outside: 1100000000, count: 1000}\n", "rootmap.yaml")
    r = root_runner("run", "--profile", p, "--", "/bin/cat", "/proc/self/uid_map")
    assert r.returncode == 0, r
    rows = [ln.split() for ln in r.stdout.splitlines()]
    assert ["0", str(other), "1"] in rows and ["1", "1100000000", "1000"] in rows


def test_api_refuses_the_same_rootless(tmp_profile):
    """The API compiles for the calling process: as root the map is accepted; compiled for an
    unprivileged caller (the compiler's caller_uid), refused with the location."""
    from policies.compiler import compile_profile
    from policies.errors import ProfileError
    me = pwd.getpwnam(TEST_USER).pw_uid if os.geteuid() == 0 else os.geteuid()
    p = tmp_profile("version: 1\nextends: strict\nuser:\n  uid_map:\n    - {inside: 0, outside: 0, count: 1}\n",
                    "api.yaml")
    with pytest.raises(ProfileError) as ei:
        compile_profile(p, caller_uid=me, caller_gid=me)
    assert ei.value.exit_code == 2 and (ei.value.location.line, ei.value.location.col) == (5, 7)
    assert compile_profile(p, caller_uid=0, caller_gid=0).plan.user.uid_map[0].outside == 0


def test_lint_warns_psb105(tmp_path):
    from policies.lint import lint_paths
    from pathlib import Path
    fix = Path(__file__).resolve().parent.parent / "lint_fixtures"
    r = lint_paths([str(fix / "PSB105" / "bad.yaml")], profile_path=[str(fix)])
    hits = [f for f in r.findings if f.code == "PSB105"]
    assert hits and hits[0].severity == "warning" and hits[0].line == 5
    assert not [f for f in r.findings if f.code == "PSB001"]     # a warning, not a compile error
    r = lint_paths([str(fix / "PSB105" / "good.yaml")], profile_path=[str(fix)])
    assert not [f for f in r.findings if f.code in ("PSB105", "PSB001")]
