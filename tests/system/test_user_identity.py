"""The program's identity and capabilities, the way a Docker user asks for them (issue 20 items 1
and 3, capabilities 38-40): `-u UID[:GID]`, `-u name`, `--group-add`, `user.uid` with a range map,
single-id maps refused at compile time, capabilities kept for a non-root uid (ambient),
`--image` with the image config's `User`, `--security-opt no-new-privileges=false` with a seccomp
filter, and `--cap-add ALL` / PERFMON / BPF / CHECKPOINT_RESTORE — through the CLI and the API,
as root and rootless. Every run is a real sandbox on this kernel; the capability sets are read
from /proc/self/status inside (no capsh).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

import imagebuild as ib
from conftest import HOST_PYTHON, REPO, TEST_USER, state_env


def _subordinate_first(uid: int):
    """The first subordinate uid a rootless `auto` maps root to (None: the caller has fewer than
    65536 subordinate uids/gids, and `auto` maps its own id only)."""
    from policies import subids
    u, g = (subids.first_ids(subids.ranges(w, uid)) for w in ("uid", "gid"))
    return u[0][1] if u and g else None


OWN_MAP = ("version: 1\nextends: {base}\nuser:\n  uid_map: [{{inside: {i}, outside: caller, count: 1}}]\n"
           "  gid_map: [{{inside: {i}, outside: caller, count: 1}}]\n")

CAP = {"NET_BIND_SERVICE": 10, "SYS_ADMIN": 21, "PERFMON": 38, "BPF": 39, "CHECKPOINT_RESTORE": 40}
LAST_CAP = int(open("/proc/sys/kernel/cap_last_cap").read())


def status(text: str) -> dict:
    """Uid/Gid/Groups/Cap*/NoNewPrivs/Seccomp lines of /proc/self/status -> dict of str."""
    out = {}
    for line in text.splitlines():
        k, sep, v = line.partition(":")
        if sep and k in ("Uid", "Gid", "Groups", "CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb",
                         "NoNewPrivs", "Seccomp", "Seccomp_filters"):
            out[k] = v.strip()
    return out


def caps(mask_hex: str) -> set:
    m = int(mask_hex, 16)
    return {c for c in range(64) if m >> c & 1}


STATUS = ("/bin/cat", "/proc/self/status")


# --- -u UID[:GID], names, groups ------------------------------------------------------------------

def test_user_1000(runner):
    """`pysandbox run -u 1000 -- id` (exit 125 'capbset_drop: Operation not permitted' before: the
    uid was changed before the bounding set was dropped). Root: 1000 inside the auto range;
    rootless: the auto map is the caller's subordinate range (1000 inside it), or, for a caller
    without one, 1000 mapped to the caller (its only id)."""
    r = runner("run", "-u", "1000", "--", "/bin/sh", "-c", "id -u; id -g; cat /proc/self/uid_map")
    assert r.returncode == 0, r
    uid, gid, umap = r.stdout.split("\n", 2)
    assert (uid, gid) == ("1000", "1000"), r
    if runner.rootless and _subordinate_first(runner.uid) is not None:
        assert umap.split()[:3] == ["0", str(_subordinate_first(runner.uid)), "65536"], r
    elif runner.rootless:
        assert umap.split() == ["1000", str(runner.uid), "1"], r
    else:
        assert umap.split()[:3] == ["0", "1000000000", "65536"], r
    r = runner("run", "-u", "1000", "--", *STATUS)
    st = status(r.stdout)
    assert st["Uid"].split() == ["1000"] * 4 and all(caps(st[k]) == set() for k in
                                                       ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")), st


def test_user_1000_1000_default_profile(runner):
    r = runner("run", "-u", "1000:1000", "--profile", "default", "--", "/bin/sh", "-c", "id -u; id -g; id -G")
    assert r.returncode == 0, r
    assert r.stdout.split() == ["1000", "1000", "1000"], r
    st = status(runner("run", "-u", "1000:1000", "--profile", "default", "--", *STATUS).stdout)
    # default keeps Docker's default capabilities: a non-root uid has them as ambient ones
    assert caps(st["CapAmb"]) == caps(st["CapEff"]) == caps(st["CapBnd"]) != set(), st


def test_user_by_name(root_runner):
    """`-u nobody`: uid and gid from the root's /etc/passwd (root: host: the host's)."""
    r = root_runner("run", "-u", "nobody", "--", "/bin/sh", "-c", "id -u; id -g")
    assert r.returncode == 0, r
    assert r.stdout.split() == ["65534", "65534"], r
    r = root_runner("run", "-u", "no-such-user-ident", "--", "/bin/true")
    assert r.returncode == 2 and r.stderr.strip() == \
        "pysandbox: --user no-such-user-ident: no user 'no-such-user-ident' in /etc/passwd", r


def test_user_by_name_rootless(user_runner, tmp_profile):
    """Rootless, a named user is its uid: inside the caller's subordinate range (`auto` with one),
    or mapped to the caller (a map of the caller's own id: the only id it has then)."""
    r = user_runner("run", "-u", "nobody", "--", "/bin/sh", "-c", "id -u; id -g; cat /proc/self/uid_map")
    assert r.returncode == 0, r
    first = _subordinate_first(user_runner.uid)
    assert r.stdout.split() == ["65534", "65534"] + (["0", str(first), "65536"] if first is not None else
                                                     ["65534", str(user_runner.uid), "1"]), r
    own = tmp_profile(OWN_MAP.format(base="strict", i=65534), "own-nobody.yaml")
    r = user_runner("run", "--profile", own, "-u", "nobody", "--", "/bin/sh", "-c", "id -u; id -g; cat /proc/self/uid_map")
    assert r.returncode == 0, r
    assert r.stdout.split() == ["65534", "65534", "65534", str(user_runner.uid), "1"], r


def test_group_add(root_runner):
    """--group-add: supplementary groups by name and number; `-u name:group`."""
    r = root_runner("run", "-u", "nobody:adm", "--group-add", "audio", "--group-add", "1234", "--",
                    "/bin/sh", "-c", "id -u; id -g; id -G")
    assert r.returncode == 0, r
    out = r.stdout.split()
    assert out[:2] == ["65534", "4"] and set(out[2:]) == {"4", "29", "1234"}, r
    r = root_runner("run", "--group-add", "no-such-group-ident", "--", "/bin/true")
    assert r.returncode == 2 and "no group 'no-such-group-ident' in /etc/group" in r.stderr, r
    r = root_runner("run", "-u", "1000", "--", "/bin/sh", "-c", "id -G")      # none asked for: none
    assert r.returncode == 0 and r.stdout.split() == ["1000"], r


def test_group_add_rootless_is_refused(user_runner, tmp_profile):
    """Rootless with a map of its own gid only: setgroups is denied in the caller's namespace —
    refused at compile time, one line, nothing launched; a named user's memberships in /etc/group
    are simply not taken. (With a subordinate gid range --group-add works:
    tests/system/test_rootless_ranges.py::test_group_add_with_subordinate_ids.)"""
    own = tmp_profile(OWN_MAP.format(base="default", i=0), "own.yaml")
    for g in ("1234", str(user_runner.gid)):
        r = user_runner("run", "--profile", own, "--group-add", g, "--", "/bin/true")
        assert r.returncode == 2, r
        assert r.stderr == ("pysandbox: --group-add: supplementary groups need a root caller or a subordinate gid "
                            "range (gid_map: subordinate, or auto with /etc/subgid ids): a rootless caller mapping "
                            "only its own gid is denied setgroups\n"), r
    r = user_runner("run", "-u", "nobody", "--", "/bin/sh", "-c", "id -G")   # no --group-add: none, no error
    assert r.returncode == 0 and r.stdout == "65534\n", r


def test_profile_uid_1000_with_a_range_map(root_runner, tmp_profile):
    p = tmp_profile("version: 1\nextends: default\nuser:\n  uid: 1000\n  gid: 1000\n"
                    "  uid_map: [{inside: 0, outside: 300000, count: 65536}]\n"
                    "  gid_map: [{inside: 0, outside: 300000, count: 65536}]\n")
    r = root_runner("run", "--profile", p, "--", "/bin/sh", "-c", "id -u; id -g; cat /proc/self/uid_map")
    assert r.returncode == 0, r
    assert r.stdout.split() == ["1000", "1000", "0", "300000", "65536"], r


def test_single_id_maps_are_refused_at_compile_time(runner, tmp_profile):
    """A uid the namespace does not map: one line, exit 2, nothing launched (EOVERFLOW at launch
    before). Root: a map without inside 0 cannot set the sandbox up either."""
    p = tmp_profile("version: 1\nextends: strict\nuser:\n"
                    "  uid_map: [{inside: 0, outside: caller, count: 1}]\n"
                    "  gid_map: [{inside: 0, outside: caller, count: 1}]\n")
    r = runner("run", "--profile", p, "-u", "1000", "--", "/bin/true")
    assert r.returncode == 2, r
    assert r.stderr.strip() == (f"pysandbox: {p}:4:3: uid 1000 is not mapped by uid_map "
                                f"(0->{runner.uid} x1): map it, or choose another --user"), r
    r = runner("run", "--profile", p, "--", "/bin/sh", "-c", "id -u")          # the map itself works
    assert r.returncode == 0 and r.stdout == "0\n", r
    if not runner.rootless:
        p = tmp_profile("version: 1\nextends: strict\nuser:\n  uid: 1000\n  gid: 1000\n"
                        "  uid_map: [{inside: 1000, outside: 5000, count: 1}]\n"
                        "  gid_map: [{inside: 1000, outside: 5000, count: 1}]\n")
        r = runner("run", "--profile", p, "--", "/bin/true")
        assert r.returncode == 2, r
        assert r.stderr.strip() == (f"pysandbox: {p}:6:3: uid 0 is not mapped by uid_map (1000->5000 x1): the "
                                    "sandbox is set up as root of its user namespace; add an entry for inside 0"), r


# --- capabilities ---------------------------------------------------------------------------------

BIND80 = ("import socket,errno\ns=socket.socket()\ntry:\n s.bind(('127.0.0.1',80)); print('bound')\n"
          "except OSError as e: print(errno.errorcode[e.errno])")


def test_net_bind_service_as_uid_1000(runner):
    """--cap-add NET_BIND_SERVICE -u 1000: the kept capability is ambient, so uid 1000's program
    binds port 80; without it: EACCES."""
    r = runner("run", "--cap-add", "NET_BIND_SERVICE", "-u", "1000", "--", HOST_PYTHON, "-c",
               BIND80 + "\nimport os;print(os.getuid())\nprint(open('/proc/self/status').read())")
    assert r.returncode == 0, r
    lines = r.stdout.split("\n")
    assert lines[:2] == ["bound", "1000"], r
    st = status(r.stdout)
    want = {CAP["NET_BIND_SERVICE"]}
    assert all(caps(st[k]) == want for k in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")), st
    r = runner("run", "-u", "1000", "--", HOST_PYTHON, "-c", BIND80)
    assert r.returncode == 0 and r.stdout == "EACCES\n", r


@pytest.mark.parametrize("cap", ["ALL", "PERFMON", "BPF", "CHECKPOINT_RESTORE"])
def test_cap_add_up_to_the_last(runner, cap):
    """python-prctl knows capabilities up to 37: these failed with exit 125 'prctl has no attribute
    CAP_CHECKPOINT_RESTORE'. Now each is in the program's sets, and the bounding set holds nothing
    else up to the kernel's last capability."""
    r = runner("run", "--cap-add", cap, "--", *STATUS)
    assert r.returncode == 0, r
    st = status(r.stdout)
    want = set(range(LAST_CAP + 1)) if cap == "ALL" else {CAP[cap]}
    assert caps(st["CapEff"]) == caps(st["CapPrm"]) == caps(st["CapBnd"]) == want, st
    assert caps(st["CapAmb"]) == set(), st                                    # root inside: none needed
    r = runner("run", "--cap-add", cap, "-u", "1000", "--", *STATUS)          # a non-root uid: ambient
    assert r.returncode == 0, r
    st = status(r.stdout)
    assert caps(st["CapAmb"]) == caps(st["CapEff"]) == caps(st["CapBnd"]) == want, st


def test_strict_keeps_nothing_up_to_the_last(runner):
    st = status(runner("run", "--", *STATUS).stdout)
    assert all(caps(st[k]) == set() for k in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")), st


# --- no-new-privileges=false with seccomp ---------------------------------------------------------

UNSHARE = ("import ctypes,errno\nlibc=ctypes.CDLL(None,use_errno=True)\n"
           "print('ok' if libc.unshare(0x10000000)==0 else errno.errorcode[ctypes.get_errno()])\n"
           "print(open('/proc/self/status').read())")


@pytest.mark.parametrize("nnp", ["true", "false"])
def test_no_new_privileges_with_seccomp(runner, nnp):
    """exit 125 'seccomp: Permission denied' before with false. The filter is loaded while the
    program's process still holds CAP_SYS_ADMIN in the namespace (runc's order); the program's
    execve drops it (not in the bounding or inheritable set). The filter holds: unshare, which the
    strict profile denies (@namespace), is EPERM either way; NoNewPrivs is what was asked."""
    for user in ((), ("-u", "1000")):
        r = runner("run", "--security-opt", f"no-new-privileges={nnp}", *user, "--", HOST_PYTHON, "-c", UNSHARE)
        assert r.returncode == 0, r
        assert r.stdout.split("\n", 1)[0] == "EPERM", r
        st = status(r.stdout)
        assert st["NoNewPrivs"] == ("1" if nnp == "true" else "0"), st
        assert st["Seccomp"] == "2" and int(st["Seccomp_filters"]) >= 1, st
        assert all(caps(st[k]) == set() for k in ("CapPrm", "CapEff", "CapBnd", "CapAmb", "CapInh")), st
    # the legitimate use of the same filter still works
    r = runner("run", "--security-opt", f"no-new-privileges={nnp}", "--", "/bin/sh", "-c", "echo fine")
    assert r.returncode == 0 and r.stdout == "fine\n", r


# --- --image with a config User -------------------------------------------------------------------

EUID_C = r'''
#include <stdio.h>
#include <unistd.h>
int main(void) { printf("%d %d\n", (int)getuid(), (int)geteuid()); return 0; }
'''


@pytest.fixture
def user_img(runner, shared_tmp, monkeypatch):
    """(runner, state) with ident-user:test imported: busybox layers, config User "nobody", a
    setuid-root static program printing its uid and euid (/bin/suid-euid, built here with cc), and
    an image whose /etc/passwd is a symlink to the host's (ident-evil:test)."""
    os.chown(shared_tmp, runner.uid, runner.gid)
    state, work = shared_tmp / "state", shared_tmp / "work"
    work.mkdir()
    cc = shutil.which("cc")
    assert cc, "a C compiler is needed (it builds sandbox/pysandbox-init too)"
    subprocess.run([cc, "-static", "-O2", "-o", str(work / "suid-euid"), "-x", "c", "-"], input=EUID_C.encode(),
                   check=True)
    tars = ib.layers()
    extra = ib.make_tar([("bin", "dir"), ("bin/suid-euid", "file", (work / "suid-euid").read_bytes(), 0o4755)])
    orig = ib.config_for

    def config_with_user(user):
        def cfg(t):
            c = json.loads(orig(t))
            c["config"]["User"] = user
            return json.dumps(c, sort_keys=True).encode()
        return cfg
    monkeypatch.setattr(ib, "config_for", config_with_user("nobody"))
    ib.HISTORY.append("ADD suid-euid")
    try:
        ib.write_docker_save(str(work / "user.tar"), tars + [extra], tag="ident-user:test")
        monkeypatch.setattr(ib, "config_for", config_with_user("cloudsdk"))
        evil = ib.make_tar([("etc", "dir"), ("etc/passwd", "sym", "/../../../../etc/passwd")])
        ib.write_docker_save(str(work / "evil.tar"), tars + [evil], tag="ident-evil:test")
    finally:
        ib.HISTORY.pop()
    for p in (work, work / "user.tar", work / "evil.tar"):
        os.chown(p, runner.uid, runner.gid)
    env = {"PYSANDBOX_STATE_DIR": str(state)}
    for t in ("user.tar", "evil.tar"):
        r = runner("image", "import", str(work / t), env=env)
        assert r.returncode == 0, r
    return runner, env


def test_image_config_user_is_the_default(user_img):
    runner, env = user_img
    r = runner("run", "--image", "ident-user:test", "--", "/bin/sh", "-c", "id -u; id -g", env=env)
    assert r.returncode == 0, r
    assert r.stdout.split() == ["65534", "65534"], r            # the image's User "nobody", its passwd
    r = runner("run", "--image", "ident-user:test", "-u", "1000", "--", "/bin/sh", "-c", "id -u", env=env)
    assert r.returncode == 0 and r.stdout == "1000\n", r        # -u overrides it
    r = runner("run", "--image", "ident-user:test", "-u", "root", "--", "/bin/sh", "-c", "id -u", env=env)
    assert r.returncode == 0 and r.stdout == "0\n", r
    # names come from the image's /etc/passwd, not the host's
    r = runner("run", "--image", "ident-user:test", "-u", "cloudsdk", "--", "/bin/true", env=env)
    assert r.returncode == 2 and "no user 'cloudsdk' in image ident-user:test:/etc/passwd" in r.stderr, r


def test_image_passwd_symlink_stays_in_the_image(user_img):
    """An image's etc/passwd pointing at the host's is resolved inside the image (RESOLVE_IN_ROOT):
    its User "cloudsdk" (a host user only) is not found; nothing of the host's passwd is used."""
    runner, env = user_img
    r = runner("run", "--image", "ident-evil:test", "--", "/bin/true", env=env)
    assert r.returncode == 2, r
    assert r.stderr.strip() == "pysandbox: the image's User cloudsdk: no user 'cloudsdk' in image ident-evil:test:/etc/passwd", r


def test_setuid_gains_privileges_only_without_no_new_privs(user_img):
    """no-new-privileges=false promises what Docker's does: a setuid-root program (here in an
    image, on its writable overlay root, which is not nosuid) runs with euid 0. With
    no_new_privs (the default) it does not. The host's system directories are nosuid anyway.
    Rootless with subordinate ids (`auto` for a caller with them) the same: the image's files are
    root's inside (uid-shifted copies). Rootless with the caller's own id only, they belong to the
    caller, the only id mapped (here as 1000): the setuid bit names uid 1000 itself, so there is
    nothing to gain either way."""
    runner, env = user_img
    args = ("run", "--image", "ident-user:test", "--read-write", "-u", "1000", "--cap-add", "SETUID")
    r = runner(*args, "--security-opt", "no-new-privileges=false", "--", "/bin/sh", "-c",
               "stat -c %u /bin/suid-euid; /bin/suid-euid", env=env)
    assert r.returncode == 0, r
    single = runner.rootless and _subordinate_first(runner.uid) is None
    assert r.stdout == ("1000\n1000 1000\n" if single else "0\n1000 0\n"), r
    r = runner(*args, "--", "/bin/suid-euid", env=env)
    assert r.returncode == 0 and r.stdout == "1000 1000\n", r


# --- the Python fallback (no pysandbox-init) and `pysandbox exec` -----------------------------------

@pytest.mark.parametrize("nnp", [True, False])
def test_python_fallback_same_steps(nnp, monkeypatch):
    """Without pysandbox-init the program's last steps are init._exec_program's: the same order
    (bounding set before the uid change, ambient for a non-root uid, the filter loaded holding
    CAP_SYS_ADMIN when no_new_privs is off). (Root; rootless runs above with -u take this path
    anyway: a caller mapped to one id has no root in the namespace.)"""
    from policies.compiler import Overrides, compile_profile
    from sandbox import init, launcher, seccomp
    from sandbox.userdb import user_db
    monkeypatch.setattr(init, "INIT_BINARY", "/nonexistent/pysandbox-init")
    monkeypatch.setattr(init, "_INIT", [None, None])
    ov = Overrides(user="1000", cap_add=("NET_BIND_SERVICE", "BPF"), user_db=user_db,
                   security_opt=() if nnp else ("no-new-privileges=false",))
    plan = compile_profile("strict", ov).plan
    r, w = os.pipe()
    try:
        res = launcher.launch(plan, [HOST_PYTHON, "-c", BIND80 + "\n" + UNSHARE], stdout=w,
                              bpf=seccomp.build_bpf(plan.seccomp))
    finally:
        os.close(w)
    out = os.read(r, 100000).decode()
    os.close(r)
    assert res.exit_code == 0 and init._INIT[1] is None, (res, out)
    # denied by the filter (ENOSYS: no user-notification supervisor in this in-process launch;
    # without the filter a nested user namespace is allowed to uid 1000: "ok")
    assert out.split("\n")[0] == "bound" and out.split("\n")[1] in ("EPERM", "ENOSYS"), out
    st = status(out)
    want = {CAP["NET_BIND_SERVICE"], CAP["BPF"]}
    assert st["Uid"].split()[0] == "1000" and st["NoNewPrivs"] == ("1" if nnp else "0"), st
    assert all(caps(st[k]) == want for k in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")), st


def test_exec_into_a_sandbox_takes_the_same_identity(runner):
    """`pysandbox exec` (sandbox/execin.py) does the same last steps in the same order."""
    name = f"ident-exec-{os.getpid()}-{runner.uid}"
    r = runner("run", "-d", "--name", name, "-u", "1000", "--cap-add", "PERFMON", "--security-opt",
               "no-new-privileges=false", "--", "/bin/sleep", "60")
    assert r.returncode == 0, r
    try:
        ex = runner("exec", name, "--", *STATUS)
        assert ex.returncode == 0, ex
        st = status(ex.stdout)
        assert st["Uid"].split()[0] == "1000" and st["NoNewPrivs"] == "0" and st["Seccomp"] == "2", st
        assert all(caps(st[k]) == {CAP["PERFMON"]} for k in ("CapPrm", "CapEff", "CapBnd", "CapAmb")), st
    finally:
        runner("rm", "-f", name)


# --- the API --------------------------------------------------------------------------------------

API = r'''
import json, sys
from sandbox.api import Sandbox, SandboxError
out = {}
sb = Sandbox("strict", user="1000", cap_add=["NET_BIND_SERVICE", "CHECKPOINT_RESTORE"])
r = sb.run(["/bin/cat", "/proc/self/status"], text=True)
out["caps"] = [r.exit_code, r.stdout, r.message]
r = Sandbox("strict", security_opt=["no-new-privileges=false"]).run(["/bin/sh", "-c", "id -u"], text=True)
out["nnp"] = [r.exit_code, r.stdout, r.message]
r = Sandbox("strict", cap_add="ALL").run(["/bin/cat", "/proc/self/status"], text=True)
out["all"] = [r.exit_code, r.stdout, r.message]
if len(sys.argv) > 1:
    r = Sandbox("strict", user="nobody:adm", group_add=["audio"]).run(["/bin/sh", "-c", "id -u; id -g; id -G"], text=True)
    out["groups"] = [r.exit_code, r.stdout, r.message]
try:
    Sandbox("strict", user="no-such-user-ident")
    out["bad"] = None
except SandboxError as e:
    out["bad"] = str(e)
print(json.dumps(out))
'''


def _api(rootless: bool) -> dict:
    kw = {}
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)}
    if rootless:
        import pwd
        pw = pwd.getpwnam(TEST_USER)
        kw = dict(user=pw.pw_uid, group=pw.pw_gid, extra_groups=[])
        env["HOME"] = pw.pw_dir
    p = subprocess.run([sys.executable, "-c", API] + ([] if rootless else ["groups"]), capture_output=True,
                       text=True, timeout=120, cwd="/tmp", env={**env, **state_env(rootless)}, **kw)
    assert p.returncode == 0, p.stderr[-2000:]
    return json.loads(p.stdout)


@pytest.mark.parametrize("who", ["root", "rootless"])
def test_api(who, delegated_cgroups):
    out = _api(who == "rootless")
    code, text, msg = out["caps"]
    assert code == 0, (text, msg)
    st = status(text)
    want = {CAP["NET_BIND_SERVICE"], CAP["CHECKPOINT_RESTORE"]}
    assert st["Uid"].split()[0] == "1000" and caps(st["CapAmb"]) == caps(st["CapEff"]) == caps(st["CapBnd"]) == want
    assert out["nnp"][:2] == [0, "0\n"], out["nnp"]
    code, text, msg = out["all"]
    assert code == 0 and caps(status(text)["CapEff"]) == set(range(LAST_CAP + 1)), (text, msg)
    if who == "root":
        code, text, msg = out["groups"]
        assert code == 0, (text, msg)
        ids = text.split()
        assert ids[:2] == ["65534", "4"] and set(ids[2:]) == {"4", "29"}, text
    assert out["bad"] == "--user no-such-user-ident: no user 'no-such-user-ident' in /etc/passwd", out


# --- the parser of the root's passwd/group (pure: untrusted text) ----------------------------------

def test_passwd_and_group_parsing_is_bounded_and_lenient():
    from policies import users
    from policies.errors import ProfileError
    passwd = (b"# comment\nroot:x:0:0:root:/root:/bin/sh\nbroken\nbad:x:notanumber:1::/:/bin/sh\n"
              b"huge:x:99999999999:1::/:/bin/sh\n\xff\xfe:x:5:5::/:\napp:x:1234:4321::/:/bin/sh\n")
    group = b"grp:x:4321:\nextra:x:77:app,other\nnomembers:x:78\n"
    db = {"passwd": passwd, "group": group}.get
    assert users.resolve("app", (), db, "") == (1234, 4321, (77,))
    assert users.resolve("1234", ("extra", "9"), db, "") == (1234, 4321, (77, 9))
    assert users.resolve("4242", (), db, "") == (4242, 4242, ())
    for bad in ("huge", "bad", "", "a:b:c", "x" * 300, "1:", "99999999999"):
        with pytest.raises(ProfileError):
            users.resolve(bad, (), db, "")
    many = b"".join(b"g%d:x:%d:app\n" % (i, 1000 + i) for i in range(100))
    with pytest.raises(ProfileError, match="at most 64"):
        users.resolve("app", (), {"passwd": passwd, "group": many}.get, "")
    lines = b"x:x:1:1::/:\n" * (users.MAX_LINES + 10) + b"late:x:9:9::/:\n"
    with pytest.raises(ProfileError, match="no user 'late'"):          # past the line bound: not read
        users.resolve("late", (), {"passwd": lines}.get, "")


def test_userdb_reads_inside_a_directory_root(shared_tmp):
    """root: {path: DIR}: DIR/etc/passwd is read through DIR (openat2 RESOLVE_IN_ROOT): an absolute
    symlink or one climbing out with .. resolves inside DIR, never to the host's file; a FIFO is not
    read (no hang); the compiler's --user takes it."""
    from types import SimpleNamespace
    from policies.compiler import Overrides, compile_profile
    from sandbox.userdb import UserDB
    root = shared_tmp / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "real").write_bytes(b"appuser:x:4242:4343::/:/bin/sh\n")
    os.symlink("/../../../etc/real", root / "etc" / "passwd")          # inside DIR: DIR/etc/real
    os.symlink("/../../../../../etc/hostname", root / "etc" / "group")  # DIR/etc/hostname: absent
    db = UserDB(SimpleNamespace(image=None, root=str(root)))
    assert db.read("passwd") == b"appuser:x:4242:4343::/:/bin/sh\n"
    assert db.read("group") is None                                     # not the host's /etc/hostname
    os.mkfifo(root / "etc" / "fifo")
    assert db.read("fifo") is None
    prof = shared_tmp / "dirroot.yaml"
    prof.write_text(f"version: 1\nextends: strict\nfilesystem: {{root: {{path: {root}}}}}\n")
    plan = compile_profile(str(prof), Overrides(user="appuser", user_db=UserDB), caller_uid=0, caller_gid=0).plan
    assert (plan.user.uid, plan.user.gid) == (4242, 4343)
