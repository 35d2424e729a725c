"""The test session's own clean-up (tests/conftest.py), which CI relies on: a state directory
whose making fails half-way is removed (it used to stay in /tmp, empty), and the session's end
reports every pysbx-* name of /tmp and /var/tmp made during the session and still there, and
fails the run. (The running-sandbox side of the clean-up, `rm -f` of what a test left running in
sandboxes/: tests/system/test_session_cleanup.py.)"""
from __future__ import annotations

import os
import tempfile

import pytest

import conftest


def test_half_made_state_directory_is_removed(monkeypatch):
    made = []
    real = tempfile.mkdtemp

    def mkdtemp(*a, **kw):
        made.append(real(*a, **kw))
        return made[-1]

    def broken(*_a, **_k):
        raise OSError(5, "simulated failure after mkdtemp")
    monkeypatch.setattr(conftest.tempfile, "mkdtemp", mkdtemp)
    if os.geteuid() == 0:
        monkeypatch.setattr(conftest, "ensure_test_user", broken)
    else:
        monkeypatch.setattr(conftest.os, "chmod", broken)
    with pytest.raises(OSError, match="simulated"):
        conftest._new_state_dirs("leftover")
    assert len(made) == 1 and f"-{conftest.SESSION}-" in made[0]
    assert not os.path.exists(made[0])


class _Config:
    pass


class _Session:
    exitstatus = 0


def test_leftovers_fail_the_session_and_are_named(monkeypatch, capsys):
    monkeypatch.setattr(conftest, "TMP_GRACE", 0.0)
    monkeypatch.delenv("PYSBX_TMP_CHECK", raising=False)
    config, session = _Config(), _Session()
    config._pysbx_session = session
    config._pysbx_tmp_before = conftest._tmp_leftovers()
    d = tempfile.mkdtemp(prefix="pysbx-leftover-probe-", dir="/var/tmp")
    try:
        conftest._check_tmp_leftovers(config)
        err = capsys.readouterr().err
        assert session.exitstatus == 1
        assert f"  {d}: empty directory, uid {os.geteuid()}, mode 0700" in err, err
    finally:
        os.rmdir(d)
    session.exitstatus = 0
    config._pysbx_tmp_before = conftest._tmp_leftovers()
    conftest._check_tmp_leftovers(config)                    # nothing new: nothing said, still 0
    assert session.exitstatus == 0 and "pysbx leftovers" not in capsys.readouterr().err


def test_another_sessions_state_directories_are_not_ours():
    other = tempfile.mkdtemp(prefix="pysbx-state-test-zzzzzz-", dir="/tmp")
    mine = tempfile.mkdtemp(prefix=f"pysbx-state-test-{conftest.SESSION}-", dir="/tmp")
    try:
        names = conftest._tmp_leftovers()
        assert mine in names and other not in names
    finally:
        os.rmdir(other)
        os.rmdir(mine)
