"""Hole 6 (first half): profiles are untrusted, but `extends:` read any file the caller could read
and its error quoted it (`extends: /etc/shadow` printed the file's lines as "unknown key"s).

Now `extends:` by path (and `seccomp.import`) resolves, symlinks followed, only inside the profile
directories: the profile's own directory and below, the profile search path, the shipped data, and
what the caller allows (`--profile-path DIR`, API `profile_path=`); only regular files of at most
1 MiB are read (a FIFO is refused without blocking); an error about a file that is not a profile
quotes nothing of it. Each case: exit 2, one line naming file:line:col, none of the file's content;
and the legitimate forms (a shipped name, a sibling, an allowed directory) still run.
Run as root and as the unprivileged user (runner fixture).
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

LEGIT = "/bin/sh", "-c", "hostname"


def _one_clean_line(r, text_of_target: str = "") -> str:
    assert r.returncode == 2, r
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r
    line = lines[0]
    assert "Traceback" not in r.stderr
    for content in filter(None, (ln.strip() for ln in text_of_target.splitlines())):
        assert content not in line, (content, line)
    return line


def _write(d: Path, name: str, text: str) -> str:
    p = d / name
    p.write_text(text)
    os.chmod(p, 0o644)
    return str(p)


def _run(runner, profile, *opts):
    return runner("run", "--profile", profile, *opts, "--", *LEGIT, timeout=30)


@pytest.mark.parametrize("target", ["/etc/shadow", "../../../../../../etc/passwd"])
def test_extends_path_outside_is_refused_without_quoting(runner, shared_tmp, target):
    p = _write(shared_tmp, "p.yaml", f"version: 1\nname: evil\nextends: {target}\n")
    r = _run(runner, p)
    line = _one_clean_line(r, Path("/etc/passwd").read_text())
    assert re.fullmatch(rf"pysandbox: {re.escape(p)}:3:1: extends '{re.escape(target)}': resolves outside "
                        r"the profile directories \(.*--profile-path DIR\)", line), line
    for key in ("root:", "daemon:", "unknown key"):
        assert key not in line


def test_symlink_in_profile_dir_pointing_out_is_refused(runner, shared_tmp):
    os.symlink("/etc/passwd", shared_tmp / "base.yaml")
    os.symlink("/etc", shared_tmp / "sub")                  # a symlinked directory too
    for ref in ("base.yaml", "sub/passwd", "./base.yaml"):
        p = _write(shared_tmp, "p.yaml", f"version: 1\nextends: {ref}\n")
        line = _one_clean_line(_run(runner, p), Path("/etc/passwd").read_text())
        assert f"{p}:2:1: extends '{ref}': resolves outside the profile directories" in line


def test_fifo_is_refused_without_blocking(runner, shared_tmp):
    fifo = shared_tmp / "fifo.yaml"
    os.mkfifo(fifo, 0o666)
    p = _write(shared_tmp, "p.yaml", "version: 1\nextends: fifo.yaml\n")
    line = _one_clean_line(_run(runner, p))                 # runner's timeout: 30 s; it answers at once
    assert f"{fifo}: not a regular file" in line
    # the top-level profile and a seccomp import likewise
    assert f"{fifo}: not a regular file" in _one_clean_line(_run(runner, str(fifo)))
    p = _write(shared_tmp, "q.yaml", "version: 1\nextends: strict\nseccomp:\n  import: fifo.yaml\n")
    assert "not a regular file" in _one_clean_line(_run(runner, p))
    # `pysandbox profiles` over a search path holding it: listed as unreadable, not a hang
    r = runner("profiles", env={"PYSANDBOX_PROFILE_PATH": str(shared_tmp)}, timeout=30)
    assert r.returncode == 0 and re.search(r"^fifo +user +\(unreadable\)", r.stdout, re.M), r


SECRET = "db_password: hunter2-topsecret\napi_token: tok-0123456789\n"


@pytest.mark.parametrize("name,body,expect", [
    ("secret.yaml", SECRET, "not a pysandbox profile: unknown top-level key"),
    ("list.yaml", "- hunter2-topsecret\n- tok-0123456789\n", "a profile must be a YAML mapping"),
    ("dup.yaml", "name: hunter2-topsecret\nname: tok-0123456789\n", "duplicate key"),
    ("tag.yaml", "name: !hunter2-topsecret x\n", "unknown tag"),
    ("bad.yaml", "name: [hunter2-topsecret\n  tok-0123456789: '\n", "invalid YAML"),
    ("date.yaml", "version: 2001-13-45\n", "safe YAML loader cannot construct"),
    ("py.yaml", "name: !!python/object:os.system hunter2-topsecret\n", "safe YAML loader cannot construct"),
    ("alias.yaml", "name: *hunter2-topsecret\n", "invalid YAML: found undefined alias"),
    ("esc.yaml", 'name: "tok-0123456789\\qhunter2-topsecret"\n', "invalid YAML: found unknown escape"),
    ("bin.yaml", "name: hunter2-topsecret\x00tok-0123456789\n", "binary data"),
    ("latin.yaml", None, "not UTF-8"),
    ("big.yaml", "# hunter2-topsecret\n" * 60000, "larger than 1048576 bytes"),
])
def test_sibling_that_is_not_a_profile_is_not_quoted(runner, shared_tmp, name, body, expect):
    if body is None:
        (shared_tmp / name).write_bytes(b"name: hunter2-topsecret \xe9\n")
        os.chmod(shared_tmp / name, 0o644)
    else:
        _write(shared_tmp, name, body)
    p = _write(shared_tmp, "p.yaml", f"version: 1\nextends: {name}\n")
    line = _one_clean_line(_run(runner, p))
    assert expect in line, line
    for secret in ("hunter2", "topsecret", "tok-", "db_password", "api_token"):
        assert secret not in line, line
    assert line.startswith(f"pysandbox: {shared_tmp / name}")     # where, never what


def test_alias_bomb_is_bounded(runner, shared_tmp):
    lol = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 9):
        lol.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]")
    p = _write(shared_tmp, "p.yaml", "name:\n  " + "\n  ".join(lol) + "\n")
    assert "more than 200000 YAML nodes" in _one_clean_line(_run(runner, p))
    deep = _write(shared_tmp, "d.yaml", "name: " + "[" * 5000 + "]" * 5000 + "\n")
    assert "nested too deeply" in _one_clean_line(_run(runner, deep))


def test_seccomp_import_outside_is_refused(runner, shared_tmp):
    p = _write(shared_tmp, "p.yaml", "version: 1\nextends: strict\nseccomp:\n  import: /etc/passwd\n")
    line = _one_clean_line(_run(runner, p), Path("/etc/passwd").read_text())
    assert f"{p}:4:3: seccomp.import: '/etc/passwd' resolves outside the profile directories" in line
    # a JSON file that is not a seccomp profile, inside: not quoted either
    _write(shared_tmp, "cfg.json", '{"db_password": "hunter2-topsecret"}')
    p = _write(shared_tmp, "q.yaml", "version: 1\nextends: strict\nseccomp:\n  import: cfg.json\n")
    line = _one_clean_line(_run(runner, p))
    assert "not a Docker/OCI seccomp profile" in line and "hunter2" not in line and "db_password" not in line


def test_legitimate_extends_still_work(runner, shared_tmp):
    # a shipped name
    p = _write(shared_tmp, "a.yaml", "version: 1\nextends: strict\nprocess: {hostname: prof-a}\n")
    r = _run(runner, p)
    assert r.returncode == 0 and r.stdout.strip() == "prof-a", r
    # a sibling, and a file below the profile's directory, by relative path
    (shared_tmp / "lib").mkdir()
    os.chmod(shared_tmp / "lib", 0o755)
    _write(shared_tmp / "lib", "base.yaml", "version: 1\nextends: strict\nprocess: {hostname: prof-base}\n")
    _write(shared_tmp, "mid.yaml", "version: 1\nextends: lib/base.yaml\n")
    p = _write(shared_tmp, "b.yaml", "version: 1\nextends: ./mid.yaml\n")
    r = _run(runner, p)
    assert r.returncode == 0 and r.stdout.strip() == "prof-base", r
    # a symlink that stays inside is fine
    os.symlink("lib/base.yaml", shared_tmp / "link.yaml")
    p = _write(shared_tmp, "c.yaml", "version: 1\nextends: link.yaml\n")
    assert _run(runner, p).stdout.strip() == "prof-base"


def test_profile_path_allows_a_directory(runner, shared_tmp):
    """`../base.yaml` (a team's profiles below a shared base) needs the caller's allowance."""
    (shared_tmp / "team").mkdir()
    os.chmod(shared_tmp / "team", 0o755)
    _write(shared_tmp, "base.yaml", "version: 1\nextends: strict\nprocess: {hostname: prof-shared}\n")
    p = _write(shared_tmp / "team", "x.yaml", "version: 1\nextends: ../base.yaml\n")
    r = _run(runner, p)
    assert r.returncode == 2 and "resolves outside the profile directories" in r.stderr, r
    r = _run(runner, p, "--profile-path", str(shared_tmp))
    assert r.returncode == 0 and r.stdout.strip() == "prof-shared", r


def test_api_refuses_and_allows_the_same(shared_tmp):
    from sandbox.api import Sandbox, SandboxError
    (shared_tmp / "team").mkdir()
    _write(shared_tmp, "base.yaml", "version: 1\nextends: strict\n")
    p = _write(shared_tmp / "team", "x.yaml", "version: 1\nextends: ../base.yaml\n")
    bad = _write(shared_tmp, "evil.yaml", "version: 1\nextends: /etc/shadow\n")
    with pytest.raises(SandboxError, match="resolves outside the profile directories"):
        Sandbox(bad)
    with pytest.raises(SandboxError, match="resolves outside"):
        Sandbox(p)
    r = Sandbox(p, profile_path=[str(shared_tmp)]).run(["/bin/echo", "api-ok"])
    assert r.exit_code == 0 and r.stdout == b"api-ok\n", r


def test_parent_planted_by_another_user_is_refused(runner, shared_tmp):
    """The profile's own directory may be shared (/tmp): a parent another local user owns, or one
    anyone can rewrite, is not the one the caller reviewed - refused; the caller's or root's works."""
    import pwd
    other = pwd.getpwnam("nobody").pw_uid
    os.chmod(shared_tmp, 0o1777)
    _write(shared_tmp, "base.yaml", "version: 1\nextends: strict\nprocess: {hostname: prof-planted}\n")
    os.chown(shared_tmp / "base.yaml", other, other)
    p = _write(shared_tmp, "p.yaml", "version: 1\nextends: base.yaml\n")
    line = _one_clean_line(_run(runner, p))
    assert f"{shared_tmp / 'base.yaml'}: a parent profile must belong to you or root" in line, line
    assert "prof-planted" not in line
    os.chown(shared_tmp / "base.yaml", 0, 0)
    os.chmod(shared_tmp / "base.yaml", 0o666)
    assert "not be writable by everyone" in _one_clean_line(_run(runner, p))
    os.chmod(shared_tmp / "base.yaml", 0o644)
    r = _run(runner, p)
    assert r.returncode == 0 and r.stdout.strip() == "prof-planted", r
    if runner.rootless:                                    # the caller's own file
        os.chown(shared_tmp / "base.yaml", runner.uid, runner.gid)
        assert _run(runner, p).stdout.strip() == "prof-planted"
