"""`pysandbox export` run by the unprivileged test user (needs root to switch users). The rest of
export is pure and tested in tests/unit/test_export.py."""
from __future__ import annotations

import json
import os

from policies import export as X


def assert_valid(cfg):
    errs = X.validate_oci(cfg)
    assert errs == [], errs


def test_cli_as_unprivileged_user(user_runner, shared_tmp):
    """Rootless: the export maps root inside as `pysandbox run` would: to the caller's subordinate
    range (rootless `auto` with one), else to the caller."""
    out = shared_tmp / "u"
    out.mkdir()
    os.chown(out, user_runner.uid, user_runner.gid)
    p = user_runner("export", "-f", "oci", "strict", "-o", str(out))
    assert p.returncode == 0, p
    cfg = json.loads((out / "config.json").read_text())
    assert_valid(cfg)
    from conftest import single_id
    from policies import subids
    want = ({"containerID": 0, "hostID": user_runner.uid, "size": 1} if single_id(user_runner) else
            {"containerID": 0, "hostID": subids.first_ids(subids.ranges("uid", user_runner.uid))[0][1], "size": 65536})
    assert cfg["linux"]["uidMappings"] == [want]
    assert os.stat(out / "config.json").st_uid == user_runner.uid
