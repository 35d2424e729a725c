"""The root filesystem's per-mount flags, as the sandboxed program sees them in /proc/self/mountinfo.

sandbox.rootfs sets the flags of the host's read-only binds with one recursive mount_setattr over
the new root (not one per bind) and those of /dev's device nodes with one over /dev; these tests pin
the result: every mount of a `strict` sandbox has exactly the flags (ro/rw, nosuid, nodev, noexec)
it must have, the set of mounts is exactly the expected one, and profiles that take the general path
(nested or overlapping entries) give the same flags and never write to the host. Real sandboxes, run
as root and as an unprivileged user.
"""
from __future__ import annotations

import os

import pytest

from policies.compiler import compile_profile

FLAGS = ("ro", "rw", "nosuid", "nodev", "noexec")
RO_BIND = {"ro", "nosuid", "nodev"}                  # the host's system directories and /etc entries
DEV_NODE = {"rw", "nosuid", "noexec"}                # writable device nodes, no nodev (they are devices)


def mounts(runner, *opts, profile="strict") -> dict:
    """mount point -> (set of per-mount flags, fstype, root within its filesystem), from inside."""
    r = runner("run", "--profile", profile, *opts, "--", "/bin/cat", "/proc/self/mountinfo")
    assert r.returncode == 0, r
    out = {}
    for line in r.stdout.splitlines():
        f = line.split()
        sep = f.index("-")
        point, root, opts_ = f[4], f[3], set(f[5].split(","))
        assert point not in out, f"{point} mounted twice: {r.stdout}"
        out[point] = (opts_ & set(FLAGS), f[sep + 1], root)
    return out


def expected_strict() -> dict:
    """What a strict sandbox's mounts must be on this host (host facts read here, on the host)."""
    fs = compile_profile("strict").plan.filesystem
    exp = {"/": {"ro", "nosuid", "nodev"},
           "/proc": {"rw", "nosuid", "nodev", "noexec"},
           "/sys": {"ro", "nosuid", "nodev", "noexec"},
           "/dev": {"ro", "nosuid", "noexec"},
           "/dev/pts": {"rw", "nosuid", "noexec"},
           "/dev/shm": {"rw", "nosuid", "nodev", "noexec"},
           "/tmp": {"rw", "nosuid", "nodev"}}
    for d in fs.system_dirs:
        if os.path.lexists(d) and not os.path.islink(d):
            exp[d] = RO_BIND
    for e in fs.etc:
        p = "/etc/" + e
        if os.path.lexists(p) and not os.path.islink(p):
            exp[p] = RO_BIND
    for n in ("null", "zero", "full", "random", "urandom", "tty"):
        if os.path.exists("/dev/" + n):
            exp["/dev/" + n] = DEV_NODE
    return exp, fs


def test_strict_every_mount_has_exactly_its_flags(runner):
    got = mounts(runner)
    exp, fs = expected_strict()
    for point, flags in exp.items():
        assert point in got, (point, sorted(got))
        assert got[point][0] == flags, (point, got[point])
    rest = {p: v for p, v in got.items() if p not in exp}
    # masked paths: an empty read-only tmpfs over directories, /dev/null over files
    for p, (flags, fstype, root) in rest.items():
        if p in fs.masked_paths:
            if fstype == "tmpfs":
                assert flags == {"ro", "nosuid", "nodev", "noexec"}, (p, flags)
            else:
                assert root == "/null" and flags == DEV_NODE, (p, flags, root)
        else:
            assert p in fs.readonly_paths, f"unexpected mount {p}: {rest[p]}"
            assert flags == {"ro", "nosuid", "nodev", "noexec"}, (p, flags)
    assert any(p in got for p in fs.masked_paths)       # at least /proc/keys or /proc/acpi exist here
    assert "/proc/sys" in got
    # nosuid everywhere; nodev everywhere but on /dev and its device-node binds (and /dev/null masks)
    for p, (flags, fstype, root) in got.items():
        assert "nosuid" in flags, p
        if "nodev" not in flags:
            assert p.startswith("/dev") or root == "/null", (p, flags)


def test_strict_flags_hold_in_practice(runner):
    """Both sides: the read-only binds refuse writes, the writable mounts take them, device nodes work."""
    r = runner.sh(
        "for p in /etc/passwd /usr/x /etc/ssl/x /x /dev/x; do "
        "  ( : > $p ) 2>/dev/null && echo \"W $p\" || echo \"R $p\"; done; "
        "echo hi > /dev/null && echo null-ok; head -c4 /dev/zero | wc -c; "
        ": > /tmp/x && echo tmp-ok; : > /dev/shm/x && echo shm-ok")
    assert r.returncode == 0, r
    out = r.stdout.split("\n")
    for p in ("/etc/passwd", "/usr/x", "/etc/ssl/x", "/x", "/dev/x"):
        assert f"R {p}" in out, r
    assert "null-ok" in out and "4" in out and "tmp-ok" in out and "shm-ok" in out, r


def test_user_binds_keep_their_flags(runner, shared_tmp):
    src = shared_tmp / "src"
    src.mkdir()
    os.chmod(src, 0o777)
    f = shared_tmp / "f.txt"
    f.write_text("x")
    os.chmod(f, 0o644)
    got = mounts(runner, "-v", f"{src}:/data", "-v", f"{src}:/srv/ro:ro", "-v", f"{f}:/etc/f.txt:ro",
                 "--tmpfs", "/scratch")
    assert got["/data"][0] == {"rw", "nosuid", "nodev"}, got["/data"]
    assert got["/srv/ro"][0] == {"ro", "nosuid", "nodev"}, got["/srv/ro"]
    assert got["/etc/f.txt"][0] == {"ro", "nosuid", "nodev"}, got["/etc/f.txt"]
    assert got["/scratch"][0] == {"rw", "nosuid", "nodev"}, got["/scratch"]
    assert got["/"][0] == {"ro", "nosuid", "nodev"}


def test_user_bind_target_through_a_symlink_is_refused(runner, shared_tmp):
    src = shared_tmp / "src"
    src.mkdir()
    os.chmod(src, 0o755)
    # /bin is a symlink (usr/bin) in the sandbox's root on a usr-merged host
    if not os.path.islink("/bin"):
        pytest.skip("host /bin is no symlink")
    r = runner("run", "--profile", "strict", "-v", f"{src}:/bin/evil", "--", "/bin/true")
    assert r.returncode == 125 and "symbolic link" in r.stderr, r


def _snapshot(path: str) -> tuple:
    st = os.lstat(path)
    return (st.st_mtime_ns, st.st_ctime_ns, tuple(sorted(os.listdir(path))))


def test_nested_and_overlapping_entries_take_the_general_way(runner, tmp_profile):
    """Entries below other entries' binds (or a copied symlink) are bound over them read-only as
    before; nothing is created on the host through a still-writable bind."""
    if not (os.path.isdir("/etc/ssl/certs") and os.path.isdir("/usr/share/doc")):
        pytest.skip("host lacks /etc/ssl/certs or /usr/share/doc")
    p = tmp_profile("""
version: 1
extends: strict
filesystem:
  system_dirs: [/usr, /bin, /lib, /lib64, /usr/share/doc, /opt/pysbx-missing/x]
  etc: [passwd, group, ld.so.cache, ssl, ssl/certs, localtime, debian_version, pysbx-missing/x]
""")
    watched = ["/etc", "/etc/ssl", "/etc/ssl/certs", "/usr", "/usr/share", "/usr/share/doc", "/opt"]
    before = {w: _snapshot(w) for w in watched if os.path.isdir(w)}
    got = mounts(runner, profile=p)
    after = {w: _snapshot(w) for w in before}
    assert before == after                                # the host's directories are untouched
    for point in ("/usr", "/usr/share/doc", "/etc/ssl", "/etc/ssl/certs", "/etc/passwd"):
        assert got[point][0] == RO_BIND, (point, got.get(point))
    assert "/opt/pysbx-missing/x" not in got and "/etc/pysbx-missing/x" not in got
    assert got["/"][0] == {"ro", "nosuid", "nodev"} and got["/tmp"][0] == {"rw", "nosuid", "nodev"}
    r = runner("run", "--profile", p, "--", "/bin/sh", "-c",
               "ls /etc/ssl/certs /usr/share/doc >/dev/null && "
               "( : > /etc/ssl/certs/x ) 2>/dev/null || echo ro-ok")
    assert r.returncode == 0 and "ro-ok" in r.stdout, r


def test_generated_etc_files_are_never_written_through_a_bind(runner, tmp_profile):
    """/etc/hostname and /etc/hosts are generated in the sandbox's own tmpfs; a profile that also
    binds the host's own (etc: [hosts, hostname]) fails closed (read-only) and the host's files are
    untouched (they are bound without flags until the one recursive mount_setattr: the generated
    files are created with O_EXCL, so an existing name is never opened for writing before it)."""
    p = tmp_profile("version: 1\nextends: strict\nfilesystem:\n  etc: [passwd, hosts, hostname, group]\n")
    before = {f: (os.stat(f).st_mtime_ns, open(f).read()) for f in ("/etc/hosts", "/etc/hostname")}
    r = runner("run", "--profile", p, "--", "/bin/true")
    assert r.returncode == 125 and "Read-only file system" in r.stderr, r
    assert {f: (os.stat(f).st_mtime_ns, open(f).read()) for f in before} == before
