"""Hole (found 2026-12-07): the API's launch server builds the next sandbox ahead for the same plan
(a "built spare"), and a rootless spare with subordinate ids had its id maps written by newuidmap
when it was made. Ranges the administrator withdrew from /etc/subuid and /etc/subgid in between
(up to BUILT_FRESH, 1 s) were therefore still used by the next launch: a program ran with a map
no longer granted. Now the template checks, before it hands a built spare out, that the plan's
ranges are still the caller's (idmap.still_granted); if not, the spare is dropped and the launch's
own newuidmap decides (refused: exit 125, the same line as without a spare).

Real: the test user's ranges are withdrawn from the real files (and restored byte for byte); the
spare is waited for (a child of the launch server in a user namespace with the 65536-id map)."""
from __future__ import annotations

import os
import subprocess
import textwrap
from pathlib import Path

import pytest

from conftest import TEST_USER, VENV_BIN, SubidBackup, ensure_test_user, state_env

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (the test user, /etc/subuid)")

SUBFILES = ("/etc/subuid", "/etc/subgid")
PROFILE = "version: 1\nextends: strict\nuser:\n  uid_map: subordinate\n  gid_map: subordinate\n"

SCRIPT = textwrap.dedent("""
    import os, sys, time
    from sandbox.api import Sandbox
    sb = Sandbox(sys.argv[1])
    print(sb.run(["/bin/true"]).exit_code, flush=True)

    def children(pid):
        out = []
        for t in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{t}/children") as f:
                out += [int(c) for c in f.read().split()]
        return out

    def spare():
        for server in children(os.getpid()):
            for c in children(server):
                try:
                    with open(f"/proc/{c}/uid_map") as f:
                        m = f.read().split()
                except OSError:
                    continue
                if len(m) == 3 and m[2] == "65536":
                    return c
        return None

    deadline = time.monotonic() + 10
    while spare() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    print("spare" if spare() else "no spare", flush=True)
    sys.stdin.readline()                        # the test withdraws the ranges meanwhile
    r = sb.run(["/bin/true"])
    print(r.exit_code, r.message, flush=True)
""")


def _test_user_lines_removed(text: str, names: set) -> str:
    return "".join(ln for ln in text.splitlines(keepends=True) if ln.split(":", 1)[0] not in names)


def test_built_spare_is_not_used_after_the_ranges_were_withdrawn(user_runner, tmp_profile, shared_tmp):
    pw = ensure_test_user()
    backup = SubidBackup()

    try:
        for p in SUBFILES:                       # 65536 ids for the test user (as test_rootless_ranges)
            text = Path(p).read_text()
            if not any(ln.split(":", 1)[0] in (TEST_USER, str(pw.pw_uid)) for ln in text.splitlines()):
                with open(p, "a") as f:
                    f.write(("" if text.endswith("\n") or not text else "\n") + f"{TEST_USER}:3000000000:65536\n")
        prof = tmp_profile(PROFILE, "spare-withdrawn.yaml")
        os.chmod(shared_tmp, 0o755)
        proc = subprocess.Popen([str(VENV_BIN / "python"), "-c", SCRIPT, prof], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, user=pw.pw_uid,
                                group=pw.pw_gid, extra_groups=[], cwd="/tmp",
                                env={"PATH": "/usr/bin:/bin", "HOME": pw.pw_dir, **state_env(True)})
        try:
            assert proc.stdout.readline().strip() == "0"
            assert proc.stdout.readline().strip() == "spare"     # built ahead, maps written
            for p in SUBFILES:                   # withdrawn, at once (within the spare's 1 s)
                Path(p).write_text(_test_user_lines_removed(Path(p).read_text(), {TEST_USER, str(pw.pw_uid)}))
            out, err = proc.communicate("go\n", timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    finally:
        backup.restore()
    assert proc.returncode == 0, err
    code, _, message = out.strip().partition(" ")
    assert code == "125", out                    # not 0: the spare's old map was not used
    assert "newuidmap refused" in message and "/etc/subuid" in message, out
