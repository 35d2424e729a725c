"""Issue 20 item 2: rootless id ranges through newuidmap/newgidmap.

How it failed: a rootless caller could map only its own id; a profile mapping a range (even the
caller's own /etc/subuid range, as podman does) was refused - "ranges need root" at launch, later
"host uid 100000-165535 is not yours" at compile time - so rootless sandboxes had one id and their
root was the caller itself.

Now `uid_map: subordinate` / `gid_map: subordinate` map inside 0-65535 to the caller's first 65536
subordinate ids (written by the setuid helpers of the uidmap package), and explicit entries inside
the caller's ranges are accepted. Shown here, as the unprivileged test user (pysbx-test, whose
range useradd gave it - the fixture adds one for the session if missing and restores the files
byte for byte): `id`, the maps (65536 ids), root inside is not the caller (a file it writes in a
bind-mounted directory is owned by the subordinate id on the host; the caller's own 0600 file is
not readable to it, but is with a map of the caller's own ids), chown to uid 1000 inside works, the API (launch server,
spares built ahead), and the refusals: a user without subordinate ids (a throw-away user made
with SUB_UID_COUNT=0), ids outside the range, ranges removed after the plan was cached (the
helper refuses at launch: exit 125). Image roots and named volumes with subordinate ids, and
rootless `auto` (which now maps the caller's subordinate ids): tests/system/test_rootless_subordinate.py.
Nothing is simulated.
"""
from __future__ import annotations

import os
import pwd
import re
import subprocess
import textwrap
from pathlib import Path

import pytest

from conftest import PYSANDBOX, TEST_USER, VENV_BIN, SubidBackup, ensure_test_user, state_env

SUBFILES = ("/etc/subuid", "/etc/subgid")
NOSUB_USER = "pysbx-idm-nosub"        # throw-away user of this file (no subordinate ids)

SUB_PROFILE = "version: 1\nextends: {base}\nuser:\n  uid_map: subordinate\n  gid_map: subordinate\n"
# the caller's own uid and gid only: what a rootless `auto` mapped before it took the caller's
# subordinate ids (and still does for a caller without them)
OWN_PROFILE = ("version: 1\nextends: {base}\nuser:\n  uid_map: [{{inside: 0, outside: caller, count: 1}}]\n"
               "  gid_map: [{{inside: 0, outside: caller, count: 1}}]\n")


def _ranges(path: str, name: str, uid: int) -> list[tuple[int, int]]:
    out = []
    for line in Path(path).read_text().splitlines():
        parts = line.strip().split(":")
        if len(parts) == 3 and parts[0] in (name, str(uid)):
            out.append((int(parts[1]), int(parts[2])))
    return out


_Backup = SubidBackup


@pytest.fixture(scope="module")
def subids(user_runner):
    """pysbx-test's first subordinate uid and gid (>= 65536 ids each); lines added if missing."""
    if os.geteuid() != 0:
        pytest.skip("needs root (test users, /etc/subuid)")
    pw = ensure_test_user()
    backup = _Backup()
    added = False
    for p in SUBFILES:
        if sum(n for _, n in _ranges(p, TEST_USER, pw.pw_uid)) < 65536:
            nl = "" if Path(p).read_bytes().endswith(b"\n") or not Path(p).read_bytes() else "\n"
            with open(p, "a") as f:                 # a range no one else has here
                f.write(f"{nl}{TEST_USER}:3000000000:65536\n")
            added = True
    try:
        yield (_ranges(SUBFILES[0], TEST_USER, pw.pw_uid)[0][0], _ranges(SUBFILES[1], TEST_USER, pw.pw_uid)[0][0])
    finally:
        if added:
            backup.restore()


@pytest.fixture
def sub_dir(shared_tmp):
    """A bind source the sandbox's root (a subordinate id: "other" on the host) may write to."""
    d = shared_tmp / "w"
    d.mkdir()
    os.chmod(shared_tmp, 0o755)
    os.chmod(d, 0o1777)
    return d


def test_cli_subordinate_ids(user_runner, subids, tmp_profile, sub_dir):
    su, sg = subids
    p = tmp_profile(SUB_PROFILE.format(base="strict"), "sub-strict.yaml")
    r = user_runner("run", "--profile", p, "-v", f"{sub_dir}:/w", "--", "/bin/sh", "-c",
                    "id -u; id -g; cat /proc/self/uid_map /proc/self/gid_map /proc/self/setgroups; "
                    "grep '^Groups' /proc/self/status; touch /w/made")
    assert r.returncode == 0, r
    lines = r.stdout.splitlines()
    assert lines[:2] == ["0", "0"], r
    assert lines[2].split() == ["0", str(su), "65536"], r          # 65536 ids: root inside is su
    assert lines[3].split() == ["0", str(sg), "65536"], r
    assert lines[4] == "allow", r                                  # newgidmap: a subordinate range
    assert lines[5].split() == ["Groups:"], r                      # the caller's groups dropped
    st = os.stat(sub_dir / "made")
    assert (st.st_uid, st.st_gid) == (su, sg)                      # not the caller's file
    assert st.st_uid != user_runner.uid


def test_root_inside_is_not_the_caller(user_runner, subids, tmp_profile, sub_dir):
    """The caller's own 0600 file: unreadable to the sandbox's root with subordinate ids (EACCES:
    the caller's uid is not mapped, root inside is "other") - with `subordinate` and with `auto`
    (strict, rootless: the caller's subordinate ids now); readable with a map of the caller's own
    ids (root = caller)."""
    secret = sub_dir / "secret"
    secret.write_text("caller only\n")
    os.chown(secret, user_runner.uid, user_runner.gid)
    os.chmod(secret, 0o600)
    p = tmp_profile(SUB_PROFILE.format(base="strict"), "sub-strict.yaml")
    script = "stat -c '%u %g' /w/secret; cat /w/secret; echo rc=$?"
    r = user_runner("run", "--profile", p, "-v", f"{sub_dir}:/w", "--", "/bin/sh", "-c", script)
    assert "Permission denied" in r.stderr and "rc=1" in r.stdout, r
    assert r.stdout.splitlines()[0] == "65534 65534", r            # the caller's file: nobody inside
    r = user_runner("run", "--profile", "strict", "-v", f"{sub_dir}:/w", "--", "/bin/sh", "-c", script)
    assert "Permission denied" in r.stderr and "rc=1" in r.stdout, r
    own = tmp_profile(OWN_PROFILE.format(base="strict"), "own-strict.yaml")
    r = user_runner("run", "--profile", own, "-v", f"{sub_dir}:/w", "--", "/bin/sh", "-c", script)
    assert "caller only" in r.stdout and "rc=0" in r.stdout, r


def test_chown_to_uid_1000_inside(user_runner, subids, tmp_profile, sub_dir):
    su, sg = subids
    p = tmp_profile(SUB_PROFILE.format(base="default"), "sub-default.yaml")
    r = user_runner("run", "--profile", p, "-v", f"{sub_dir}:/w", "--", "/bin/sh", "-c",
                    "touch /w/f && chown 1000:1000 /w/f && stat -c '%u %g' /w/f && "
                    "chown 70000 /w/f; echo rc=$?")
    assert r.stdout.splitlines()[0] == "1000 1000", r
    st = os.stat(sub_dir / "f")
    assert (st.st_uid, st.st_gid) == (su + 1000, sg + 1000)
    assert "rc=1" in r.stdout and "Invalid argument" in r.stderr, r     # 70000: not mapped (EINVAL)


def test_explicit_range_that_used_to_be_refused(user_runner, subids, tmp_profile):
    """The podman layout, written out: 0 -> the caller, 1-65535 -> subordinate ids. Refused before
    ("ranges need root" / "is not yours"); one id more than the range still is (exit 2). (The
    gid map: the caller's own gid only, so newgidmap denies setgroups.)"""
    su, _ = subids
    body = ("version: 1\nextends: strict\nuser:\n  uid_map:\n    - {{inside: 0, outside: caller, count: 1}}\n"
            "    - {{inside: 1, outside: {su}, count: {n}}}\n  gid_map: [{{inside: 0, outside: caller, count: 1}}]\n")
    p = tmp_profile(body.format(su=su, n=65535), "podman.yaml")
    r = user_runner("run", "--profile", p, "--", "/bin/cat", "/proc/self/uid_map", "/proc/self/setgroups")
    assert r.returncode == 0, r
    rows = [ln.split() for ln in r.stdout.splitlines()]
    assert rows[:2] == [["0", str(user_runner.uid), "1"], ["1", str(su), "65535"]], r
    assert rows[2] == ["deny"], r       # gid_map: own gid only: newgidmap denies setgroups
    p = tmp_profile(body.format(su=su, n=65537), "toomany.yaml")
    r = user_runner("run", "--profile", p, "--", "/bin/true")
    assert r.returncode == 2, r
    assert re.fullmatch(rf"pysandbox: {re.escape(p)}:6:7: user\.uid_map\[1\]: host uid {su}-{su + 65536} is not "
                        r"yours: .*/etc/subuid \(\d+-\d+\); other ids need root", r.stderr.strip()), r


def test_root_caller_subordinate_is_the_automatic_range(root_runner, tmp_profile):
    p = tmp_profile(SUB_PROFILE.format(base="strict"), "sub-root.yaml")
    r = root_runner("run", "--profile", p, "--", "/bin/cat", "/proc/self/uid_map")
    assert r.returncode == 0 and r.stdout.split() == ["0", "1000000000", "65536"], r


API_SCRIPT = textwrap.dedent("""
    import json, os, sys, time
    from sandbox.api import Sandbox
    from sandbox.server.client import Client

    def built_spares(server):   # the server's children that pivoted into a built root (as tests/system/test_api.py)
        found = []
        for k in open(f"/proc/{server}/task/{server}/children").read().split():
            try:
                with open(f"/proc/{k}/root/etc/hostname") as f:
                    if f.read() == "sandbox\\n":
                        found.append(int(k))
            except PermissionError:     # a built spare is no longer dumpable: the refusal is the sign
                found.append(int(k))
            except OSError:
                pass
        return found

    sb = Sandbox(sys.argv[1])
    cmd = ["/bin/sh", "-c", "id -u; cat /proc/self/uid_map /proc/self/gid_map /proc/self/setgroups"]
    runs = [sb.run(cmd, text=True)]
    server = Client.get().proc.pid
    spares = []
    for _ in range(300):          # the template cloned a spare, wrote its maps (the helpers), built its root
        spares = built_spares(server)
        if spares:
            break
        time.sleep(0.01)
    runs += [sb.run(cmd, text=True) for _ in range(3)]
    used = bool(spares) and not os.path.exists(f"/proc/{spares[0]}")
    print(json.dumps({"out": [(r.exit_code, r.stdout.split(), r.stderr) for r in runs], "spares": spares,
                      "used": used}))
""")


def test_api_launch_server_and_spares(user_runner, subids, tmp_profile, shared_tmp):
    """sandbox.api as the unprivileged user: the launch server writes the maps of a fresh PID 1
    (Launch.start), and its template those of the spares it builds ahead; the launch takes one."""
    import json
    su, sg = subids
    os.chmod(shared_tmp, 0o755)
    p = tmp_profile(SUB_PROFILE.format(base="strict"), "sub-api.yaml")
    script = shared_tmp / "api.py"
    script.write_text(API_SCRIPT)
    os.chmod(script, 0o644)
    r = subprocess.run([str(VENV_BIN / "python"), str(script), p], capture_output=True, text=True, timeout=120,
                       user=user_runner.uid, group=user_runner.gid, extra_groups=[], cwd="/tmp",
                       env={"PATH": "/usr/bin:/bin", "HOME": user_runner.home, **state_env(True)})
    assert r.returncode == 0, r
    out = json.loads(r.stdout)
    want = ["0", "0", str(su), "65536", "0", str(sg), "65536", "allow"]
    assert [o[:2] for o in out["out"]] == [[0, want]] * 4, out
    assert out["spares"] and out["used"], out          # a spare (maps by the template) served a launch
    # the refusal through the API: the same profile compiled for a caller without ranges
    from policies.compiler import compile_profile
    from policies.errors import ProfileError
    with pytest.raises(ProfileError) as ei:
        compile_profile(p, caller_uid=4242, caller_gid=4242)
    assert "/etc/subuid" in str(ei.value) and "usermod --add-subuids" in str(ei.value)


@pytest.fixture
def nosub_user():
    """A throw-away user with no subordinate ids (useradd -K SUB_UID_COUNT=0); removed afterwards,
    /etc/subuid and /etc/subgid restored byte for byte."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    backup = _Backup()
    try:
        pwd.getpwnam(NOSUB_USER)
        subprocess.run(["userdel", NOSUB_USER], check=False, capture_output=True)
    except KeyError:
        pass
    subprocess.run(["useradd", "-M", "-N", "-d", "/nonexistent", "-s", "/usr/sbin/nologin",
                    "-K", "SUB_UID_COUNT=0", "-K", "SUB_GID_COUNT=0", NOSUB_USER], check=True, capture_output=True)
    try:
        pw = pwd.getpwnam(NOSUB_USER)
        for f in SUBFILES:
            assert not _ranges(f, NOSUB_USER, pw.pw_uid), f
        yield pw
    finally:
        subprocess.run(["userdel", NOSUB_USER], check=False, capture_output=True)
        backup.restore()


def test_no_subordinate_ids_is_refused(nosub_user, tmp_profile, shared_tmp):
    pw = nosub_user
    os.chmod(shared_tmp, 0o755)
    p = tmp_profile(SUB_PROFILE.format(base="strict"), "nosub.yaml")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(shared_tmp), "LANG": "C.UTF-8"}
    kw = dict(user=pw.pw_uid, group=pw.pw_gid, extra_groups=[], cwd="/tmp", env=env, capture_output=True,
              text=True, timeout=60)
    marker = shared_tmp / "ran"
    os.chmod(shared_tmp, 0o777)
    r = subprocess.run([PYSANDBOX, "run", "--profile", p, "--", "/bin/sh", "-c", f"touch {marker}"], **kw)
    assert r.returncode == 2, r
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r
    assert lines[0] == (f"pysandbox: {p}:4:3: user.uid_map: subordinate: user {NOSUB_USER} has no subordinate "
                        f"uids in /etc/subuid (needs 65536); an administrator adds them: usermod --add-subuids "
                        f"FIRST-LAST {NOSUB_USER} (e.g. 100000-165535, a range no other user has)"), r
    assert not marker.exists()
    # the API, as that user: Sandbox(profile) raises SandboxError with the same line, nothing runs
    api = ("import sys\nfrom sandbox.api import Sandbox\ntry:\n    Sandbox(sys.argv[1]).run(['/bin/true'])\n"
           "except Exception as e:\n    print(type(e).__name__, getattr(e, 'exit_code', None), e)\n")
    r = subprocess.run([str(VENV_BIN / "python"), "-c", api, p], **kw)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r
    assert r.stdout.strip() == "SandboxError None " + lines[0][len("pysandbox: "):], r
    from policies.compiler import compile_profile
    from policies.errors import ProfileError
    with pytest.raises(ProfileError) as ei:
        compile_profile(p, caller_uid=pw.pw_uid, caller_gid=pw.pw_gid)
    assert ei.value.exit_code == 2 and "/etc/subuid" in str(ei.value) and "usermod --add-subuids" in str(ei.value)
    # the legitimate side: the same user's `auto` profile compiles (its own id only)
    ok = compile_profile("strict", caller_uid=pw.pw_uid, caller_gid=pw.pw_gid).plan.user.uid_map
    assert [(e.inside, e.outside, e.count) for e in ok] == [(0, pw.pw_uid, 1)]


def _without_test_user_ranges():
    for f in SUBFILES:
        kept = [ln for ln in Path(f).read_text().splitlines(keepends=True) if not ln.startswith(TEST_USER + ":")]
        Path(f).write_text("".join(kept))


def test_ranges_gone_after_the_plan_was_cached(user_runner, subids, tmp_profile):
    """The CLI's cached plan depends on /etc/subuid and /etc/subgid: ranges withdrawn by the
    administrator after a run are seen by the next run (exit 2, the compile-time line), not
    hidden behind a cached plan; back, it runs again."""
    p = tmp_profile(SUB_PROFILE.format(base="strict"), "sub-cached.yaml")
    assert user_runner("run", "--profile", p, "--", "/bin/true").returncode == 0
    assert user_runner("run", "--profile", p, "--", "/bin/true").returncode == 0    # (cached)
    backup = _Backup()
    try:
        _without_test_user_ranges()
        r = user_runner("run", "--profile", p, "--", "/bin/true")
    finally:
        backup.restore()
    assert r.returncode == 2, r
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and "has no subordinate uids in /etc/subuid" in lines[0], r
    assert user_runner("run", "--profile", p, "--", "/bin/true").returncode == 0   # ranges back: works


WITHDRAWN = textwrap.dedent("""
    import sys
    from sandbox.api import Sandbox
    sb = Sandbox(sys.argv[1])                      # compiled now, while the ranges exist
    print(sb.run(["/bin/true"]).exit_code, flush=True)
    sys.stdin.readline()                           # the test withdraws the ranges meanwhile
    r = sb.run(["/bin/true"])
    print(r.exit_code, r.message, flush=True)
""")


def test_ranges_withdrawn_under_a_compiled_plan_fail_closed(user_runner, subids, tmp_profile, shared_tmp):
    """A plan compiled while the caller had the ranges (an API Sandbox, compiled once), launched
    after they were withdrawn: newuidmap itself refuses - exit 125, one line quoting it and naming
    /etc/subuid - and nothing runs with a map the administrator no longer grants."""
    p = tmp_profile(SUB_PROFILE.format(base="strict"), "sub-withdrawn.yaml")
    os.chmod(shared_tmp, 0o755)
    proc = subprocess.Popen([str(VENV_BIN / "python"), "-c", WITHDRAWN, p], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, user=user_runner.uid,
                            group=user_runner.gid, extra_groups=[], cwd="/tmp",
                            env={"PATH": "/usr/bin:/bin", "HOME": user_runner.home, **state_env(True)})
    backup = _Backup()
    try:
        assert proc.stdout.readline().strip() == "0"
        _without_test_user_ranges()
        out, err = proc.communicate("go\n", timeout=60)
    finally:
        backup.restore()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    code, _, message = out.strip().partition(" ")
    assert code == "125", out
    assert message.startswith("pysandbox: user namespace: cannot write the id maps: newuidmap refused: "
                              "newuidmap: uid range [0-65536) -> "), out
    assert "/etc/subuid" in message and "usermod --add-subuids" in message and "\n" not in message, out


def test_pty_with_subordinate_ids(user_runner, subids, tmp_profile):
    """`run -t`: the sandbox's own devpts; its pty belongs to root inside (a subordinate id), and
    the program has it as its terminal. (A real terminal from script(1), no simulation.)"""
    import shutil
    if not shutil.which("script"):
        pytest.fail("script(1) (bsdutils) is needed for a terminal")
    p = tmp_profile(SUB_PROFILE.format(base="strict"), "sub-tty.yaml")
    cmd = f"{PYSANDBOX} run -t --profile {p} -- /bin/sh -c 'tty; stat -c \"%u %g\" $(tty); id -u'"
    r = subprocess.run(["script", "-qec", cmd, "/dev/null"], capture_output=True, text=True, timeout=60,
                       user=user_runner.uid, group=user_runner.gid, extra_groups=[], cwd="/tmp",
                       env={"PATH": "/usr/bin:/bin", "HOME": user_runner.home, "TERM": "dumb", **state_env(True)})
    out = [ln.strip() for ln in r.stdout.splitlines() if ln.strip()]
    assert r.returncode == 0 and out[-3].startswith("/dev/pts/") and out[-2:] == ["0 0", "0"], r


def test_lint_subordinate_is_no_finding(tmp_profile):
    """lint has no real caller: `subordinate` compiles without reading /etc/subuid (a machine
    without ranges must not make a valid profile a PSB001 error), and is not PSB105."""
    from policies.lint import lint_paths
    p = tmp_profile(SUB_PROFILE.format(base="strict"), "sub-lint.yaml")
    r = lint_paths([p])
    assert not [f for f in r.findings if f.code in ("PSB001", "PSB105")], r.findings


def _as_user_with_group(user_runner, args, group: int) -> subprocess.CompletedProcess:
    """pysandbox ARGS as pysbx-test with one supplementary host group (the runner gives none)."""
    return subprocess.run([PYSANDBOX, *args], capture_output=True, text=True, timeout=60, user=user_runner.uid,
                          group=user_runner.gid, extra_groups=[group], cwd="/tmp",
                          env={"PATH": "/usr/bin:/bin", "HOME": user_runner.home, "LANG": "C.UTF-8", **state_env(True)})


def test_callers_supplementary_groups_dropped_run_and_exec(user_runner, subids, tmp_profile):
    """With the caller's own ids only, its host groups stay with the program (setgroups denied:
    they show as 65534); with subordinate ids (`subordinate`, and rootless `auto` now) newgidmap leaves setgroups at allow and the program and a
    `pysandbox exec` command have none (a subordinate root keeping the caller's groups would still
    reach the caller's group-shared files)."""
    import grp
    group = grp.getgrnam("users").gr_gid if "users" in {g.gr_name for g in grp.getgrall()} else 100
    show = ["--", "/bin/sh", "-c", "grep '^Groups' /proc/self/status"]
    own = tmp_profile(OWN_PROFILE.format(base="strict"), "own-groups.yaml")
    r = _as_user_with_group(user_runner, ["run", "--profile", own, *show], group)
    assert r.returncode == 0 and r.stdout.split() == ["Groups:", "65534"], r        # before: kept
    r = _as_user_with_group(user_runner, ["run", "--profile", "strict", *show], group)
    assert r.returncode == 0 and r.stdout.split() == ["Groups:"], r                 # auto: subordinate
    p = tmp_profile(SUB_PROFILE.format(base="strict"), "sub-groups.yaml")
    r = _as_user_with_group(user_runner, ["run", "--profile", p, *show], group)
    assert r.returncode == 0 and r.stdout.split() == ["Groups:"], r
    name = f"pysbx-idm-ex-{os.getpid()}"
    r = _as_user_with_group(user_runner, ["run", "-d", "--name", name, "--profile", p, "--", "/bin/sleep", "60"],
                            group)
    assert r.returncode == 0, r
    try:
        r = _as_user_with_group(user_runner, ["exec", name, *show[1:]], group)
        assert r.returncode == 0 and r.stdout.split() == ["Groups:"], r
        r = _as_user_with_group(user_runner, ["exec", name, "/bin/cat", "/proc/self/uid_map"], group)
        assert r.stdout.split()[:2] == ["0", str(subids[0])], r
    finally:
        _as_user_with_group(user_runner, ["rm", "-f", name], group)


def test_group_add_with_subordinate_ids(user_runner, subids, tmp_profile):
    """--group-add for a rootless caller whose gid map holds its subordinate range (`subordinate`,
    and rootless `auto`): newgidmap left setgroups at allow, so the program has exactly the groups
    asked for (ids inside the namespace: the caller's subordinate gids on the host, none of its own
    host groups). An id outside the range is still refused (exit 2), and so is --group-add with
    the caller's own gid only mapped (setgroups denied: test_user_identity.py)."""
    p = tmp_profile(SUB_PROFILE.format(base="strict"), "sub-group-add.yaml")
    for prof in (p, "strict"):
        r = user_runner("run", "--profile", prof, "--group-add", "1234", "--group-add", "100", "--",
                        "/bin/sh", "-c", "grep '^Groups' /proc/self/status; cat /proc/self/setgroups")
        assert r.returncode == 0, r
        lines = r.stdout.splitlines()
        assert sorted(lines[0].split()[1:]) == ["100", "1234"] and lines[1] == "allow", r
    r = user_runner("run", "--profile", p, "--group-add", "70000", "--", "/bin/true")
    assert r.returncode == 2 and "gid 70000 is not mapped by gid_map (0->" in r.stderr, r
    own = tmp_profile(OWN_PROFILE.format(base="strict"), "own-group-add.yaml")
    r = user_runner("run", "--profile", own, "--group-add", "1234", "--", "/bin/true")
    assert r.returncode == 2 and "--group-add: supplementary groups need a root caller or a subordinate gid range" \
        in r.stderr, r


def test_subgid_ranges_are_found_by_the_users_name_not_its_gid(user_runner, subids, tmp_profile):
    """/etc/subgid names the user (by name or uid), as /etc/subuid does: a caller whose gid differs
    from its uid still gets its subordinate gids (the API compiles for any caller_uid/gid)."""
    from policies.compiler import compile_profile
    p = tmp_profile(SUB_PROFILE.format(base="strict"), "sub-gid.yaml")
    plan = compile_profile(p, caller_uid=user_runner.uid, caller_gid=4242).plan
    assert [(e.inside, e.outside, e.count) for e in plan.user.gid_map] == [(0, subids[1], 65536)]


def test_doctor_reports_subordinate_ids(user_runner, subids):
    r = user_runner("doctor")
    line = next(ln for ln in r.stdout.splitlines() if "subordinate ids" in ln)
    assert line.startswith("ok ") and "65536 uids, 65536 gids" in line, r


def test_delegated_cgroup_limits_hold_with_subordinate_ids(user_runner, subids, tmp_profile):
    """The caller's delegated cgroup subtree belongs to the caller, not to the sandbox's root (a
    subordinate id): PID 1 joins through descriptors the supervisor opened, so limits still apply.
    A fork beyond --pids-limit is refused (and reported); under the limit the same runs."""
    p = tmp_profile(SUB_PROFILE.format(base="strict"), "sub-pids.yaml")
    forks = "for i in 1 2 3 4 5 6 7 8 9 10; do sleep 1 & done; wait; id -u"
    r = user_runner("run", "--profile", p, "--pids-limit", "6", "--", "/bin/sh", "-c", forks)
    assert "Cannot fork" in r.stderr and "pids limit 6 reached" in r.stderr, r
    r = user_runner("run", "--profile", p, "--pids-limit", "64", "--", "/bin/sh", "-c", forks)
    assert r.returncode == 0 and r.stdout.strip() == "0" and "Cannot fork" not in r.stderr, r
