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
    """Rootless: the export maps root inside to the caller (as `pysandbox run` would)."""
    out = shared_tmp / "u"
    out.mkdir()
    os.chown(out, user_runner.uid, user_runner.gid)
    p = user_runner("export", "-f", "oci", "strict", "-o", str(out))
    assert p.returncode == 0, p
    cfg = json.loads((out / "config.json").read_text())
    assert_valid(cfg)
    assert cfg["linux"]["uidMappings"] == [{"containerID": 0, "hostID": user_runner.uid, "size": 1}]
    assert os.stat(out / "config.json").st_uid == user_runner.uid
