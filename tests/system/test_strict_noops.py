"""Issue 20, item 14: under `strict`, calls the capability model governs are answered by the kernel.

`strict` used to deny the chown family, the setuid family, setgroups and capset in seccomp
(`@privileged`, EPERM), which broke ordinary programs' own tests: `chown(f, -1, -1)`,
`setreuid(-1, -1)`, `setresuid` to the current ids, `posix_spawn` with `resetids`, and
`fchown(bad fd)` answered EPERM where the kernel says EBADF. Now seccomp lets these calls reach the
kernel; `strict` keeps no capability, so the kernel itself refuses every real change (EPERM - or
EINVAL rootless with the caller's own id only mapped, where any other id does not exist) and lets
the no-ops through. Both sides are shown here, as root and rootless, through `pysandbox run`.
The audit cannot see a capability check (no seccomp event): shown too (docs/audit.md).
"""
from __future__ import annotations

import json
import os
import textwrap

from audit import reader

PROBE = textwrap.dedent("""
    import ctypes, errno, json, os, sys
    libc = ctypes.CDLL(None, use_errno=True)
    out = {}
    def t(name, fn):
        try:
            fn()
            out[name] = "ok"
        except OSError as e:
            out[name] = errno.errorcode[e.errno]
    def check(r):
        if r != 0:
            e = ctypes.get_errno()
            raise OSError(e, os.strerror(e))
    def capset(eff, perm):
        hdr = (ctypes.c_uint32 * 2)(0x20080522, 0)          # _LINUX_CAPABILITY_VERSION_3, self
        data = (ctypes.c_uint32 * 6)(eff, perm, 0, 0, 0, 0)
        check(libc.capset(hdr, data))
    open("/tmp/f", "w").close()
    uid, gid = os.getuid(), os.getgid()
    # no-ops and the caller's own ids: the kernel lets them through
    t("chown_nochange", lambda: os.chown("/tmp/f", -1, -1))
    t("chown_own_uid", lambda: os.chown("/tmp/f", uid, -1))
    t("chown_own_root", lambda: os.chown("/tmp/f", uid, gid))
    t("lchown_nochange", lambda: os.lchown("/tmp/f", -1, -1))
    t("fchownat_own", lambda: os.chown("f", uid, gid, dir_fd=os.open("/tmp", os.O_RDONLY)))
    t("fchown_badfd", lambda: os.fchown(999, uid, gid))
    t("setreuid_nochange", lambda: os.setreuid(-1, -1))
    t("setresuid_current", lambda: os.setresuid(uid, uid, uid))
    t("setresgid_current", lambda: os.setresgid(gid, gid, gid))
    t("setuid_current", lambda: os.setuid(uid))
    t("setfsuid_current", lambda: libc.setfsuid(uid))
    t("capset_same", lambda: capset(0, 0))
    def spawn():
        pid = os.posix_spawn(sys.executable, [sys.executable, "-c", "pass"], os.environ, resetids=True)
        st = os.waitpid(pid, 0)[1]
        if st != 0:
            raise OSError(errno.ECHILD, "child status %d" % st)
    t("posix_spawn_resetids", spawn)
    # real changes: refused by the kernel (no capability in strict)
    t("chown_other_uid", lambda: os.chown("/tmp/f", 1000, -1))
    t("setuid_other", lambda: os.setuid(1000))
    t("setgroups", lambda: os.setgroups([]))
    t("capset_raise", lambda: capset(1, 1))              # CAP_CHOWN into permitted + effective
    # the rest of @privileged stays a seccomp denial
    t("sethostname", lambda: check(libc.sethostname(b"x", 1)))
    print(json.dumps(out))
""")

NOOPS = ("chown_nochange", "chown_own_uid", "chown_own_root", "lchown_nochange", "fchownat_own",
         "setreuid_nochange", "setresuid_current", "setresgid_current", "setuid_current",
         "setfsuid_current", "capset_same", "posix_spawn_resetids")


def _probe(runner, *opts):
    r = runner.py(PROBE, *opts)
    assert r.returncode == 0, r
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_noops_pass_and_real_changes_are_refused_by_the_kernel(runner, shared_tmp):
    log = shared_tmp / "noops-audit.jsonl"
    os.chown(shared_tmp, runner.uid, runner.gid)
    got = _probe(runner, "--audit-log", str(log))
    for name in NOOPS:
        assert got[name] == "ok", (name, got)
    assert got["fchown_badfd"] == "EBADF", got                  # was EPERM from seccomp
    # a real change: EPERM (no CAP_CHOWN/CAP_SETUID/CAP_SETGID/CAP_SETPCAP); rootless mapping only
    # the caller's own id (no subordinate ids), uid 1000 does not exist in the sandbox and the
    # kernel says EINVAL (with a subordinate range - rootless `auto` - as root)
    from conftest import single_id
    other = "EINVAL" if single_id(runner) else "EPERM"
    assert got["chown_other_uid"] == other, got
    assert got["setuid_other"] == other, got
    assert got["setgroups"] == "EPERM", got
    assert got["capset_raise"] == "EPERM", got
    assert got["sethostname"] == "EPERM", got                   # still seccomp's answer
    # the kernel's capability refusals are invisible to seccomp's audit; the seccomp denial is there
    evs = [e for e in reader.read_events(log) if "syscall" in e]
    names = {e["syscall"]["name"] for e in evs}
    assert "sethostname" in names, evs
    assert not names & {"chown", "fchown", "fchownat", "lchown", "setuid", "setresuid", "setreuid",
                        "setresgid", "setgroups", "capset", "setfsuid"}, names


def test_the_capability_still_decides(root_runner):
    """With --cap-add CHOWN the same chown to another mapped id works (root: 65536 ids mapped)."""
    script = "touch /tmp/f && chown 1000:1000 /tmp/f && stat -c %u /tmp/f"
    denied = root_runner.sh(script)
    assert denied.returncode != 0 and "Operation not permitted" in denied.stderr, denied
    allowed = root_runner.sh(script, "--cap-add", "CHOWN")
    assert allowed.returncode == 0 and allowed.stdout.strip() == "1000", allowed
