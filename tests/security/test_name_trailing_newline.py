"""Names that become file names, nft chain names and /etc/hosts entries must match their pattern
exactly. The validators used `re.match` with a pattern ending in `$`, which also matches before a
final newline: `run --name 'k1\n'`, `volume create 'v\n'`, `network create 'n\n'` and image names
with a trailing newline were accepted and became directory names (and /etc/hosts lines) with a
newline in them. Found in the security round's self-audit. Both sides: the name with the newline is
refused with one line (exit 2), the same name without it works."""
from __future__ import annotations

import pytest

from sandbox.store import images, overlay, state, volumes
from sandbox.network import common as network_common


@pytest.mark.parametrize("check, good", [
    (state.check_name, "k1"),
    (volumes._check, "v1"),
    (images.normalize_name, "busybox:latest"),
])
def test_validators_refuse_a_trailing_newline(check, good):
    check(good)
    for bad in (good + "\n", good + "\n\n", "\n" + good, good + "\r"):
        with pytest.raises(Exception):
            check(bad)


def test_patterns_match_whole_strings_only():
    for rx, good in ((state.NAME_RE, "k1"), (network_common.NAME_RE, "web"), (network_common.NET_NAME_RE, "net1"),
                     (overlay._ID, "abc"), (images.DIGEST_RE, "sha256:" + "0" * 64)):
        assert rx.match(good)
        assert not rx.match(good + "\n"), rx.pattern


def test_cli_refuses_names_with_a_newline(root_runner, shared_tmp):
    env = {"PYSANDBOX_STATE_DIR": str(shared_tmp / "state")}
    r = root_runner("volume", "create", "secvol\n", env=env)
    assert r.returncode == 2, r
    assert len(r.stderr.strip().splitlines()) == 1, r
    r = root_runner("run", "--rm", "--name", "secnl\n", "--profile", "strict", "--", "/bin/true", env=env)
    assert r.returncode == 2, r
    r = root_runner("volume", "create", "secvol", env=env)
    assert r.returncode == 0, r
    assert root_runner("volume", "rm", "secvol", env=env).returncode == 0
    r = root_runner("run", "--rm", "--name", "secnl", "--profile", "strict", "--", "/bin/true", env=env)
    assert r.returncode == 0, r
