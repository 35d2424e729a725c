"""pysandbox installed as a user installs it, used from a directory that is not the project's (issue 19).

Two layouts, each exercised from /tmp (never the work tree), as root and as the unprivileged test user:
  * wheel: `pip wheel` of a copy of the tracked files (so nothing untracked - such as the work tree's
    prebuilt sandbox/pysandbox-init - can slip in), installed into a fresh venv in a temp directory;
  * editable: the project's own `.venv` (`make setup`: `pip install -e .`).
What runs: `run --profile strict` (a legitimate command works, a namespace escape is denied),
`lint` of the shipped profiles, `--version`, `completion bash` (through a real bash), the Python API
(a denied mount with its audit event, a working command) and a small foreign project whose test file
uses the `pysandbox` pytest fixture. Plus the wheel's content (platform tag, pysandbox-init, profiles,
rule docs, schemas, AppArmor profile) and the build hook's errors for a missing compiler / headers.

Nothing is mocked. One part is simulated, and says so: the "missing libc headers" build error is
provoked with `cc -nostdinc` (the headers are installed on this machine).

The wheel and its venv are built once per session (pip's cache makes the rebuild cheap; the build
backend comes from PyPI through pip's isolated build).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import zipfile
from pathlib import Path

import pytest

from conftest import REPO, TEST_USER, ensure_test_user, state_env

EDITABLE_BIN = Path(sys.executable).parent          # the project's .venv/bin
SYSTEM_PYTHON = "/usr/bin/python3"
PREFIX = "pysbx-install-"
HOST_PY = "/usr/bin/python3"                 # the host's python, run inside the sandboxes

# a probe run inside the sandbox by the host's python: a raw syscall's errno name
PROBE = textwrap.dedent(r'''
    import ctypes, errno
    libc = ctypes.CDLL(None, use_errno=True)
    def sc(nr, *a):
        r = libc.syscall(ctypes.c_long(nr), *[ctypes.c_long(x) for x in a])
        return "ok" if r >= 0 else errno.errorcode[ctypes.get_errno()]
''')

FOREIGN_TEST = ('"""A project that is not pysandbox, testing its confinement with the plugin\'s fixture."""\n'
                f"PROBE = {PROBE!r}\n" + textwrap.dedent('''

    def test_mount_is_denied_and_recorded(pysandbox):
        r = pysandbox.py(PROBE + "print(sc(165, 0, 0, 0, 0, 0))")      # mount(2)
        assert r.exit_code == 0 and r.stdout.strip() == "EPERM", r
        assert r.denied("mount"), r


    def test_legitimate_command_works(pysandbox):
        r = pysandbox.sh("echo hello; id -u")
        assert r.exit_code == 0 and r.stdout.split()[0] == "hello", r
'''))

API_SCRIPT = textwrap.dedent('''
    import json, sys
    from sandbox.api import Sandbox
    sb = Sandbox(profile="strict")
    ok = sb.run(["/bin/sh", "-c", "echo api-ok"], text=True)
    denied = sb.run(["/usr/bin/python3", "-c", sys.argv[1] + "print(sc(165, 0, 0, 0, 0, 0))"], text=True)
    print(json.dumps({"ok": [ok.exit_code, ok.stdout, ok.message],
                      "denied": [denied.exit_code, denied.stdout, denied.message,
                                 [e.get("syscall", {}).get("name") for e in denied.events]]}))
''')


def _shared_dir(tag: str) -> Path:
    d = Path(tempfile.mkdtemp(prefix=PREFIX + tag + "-", dir="/tmp"))
    os.chmod(d, 0o755)
    return d


def _copy_tracked(dst: Path) -> None:
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    for rel in filter(None, files.decode().split("\0")):
        src = REPO / rel
        if not src.is_file():               # deleted in the work tree, not yet committed
            continue
        out = dst / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, out)


@pytest.fixture(scope="session")
def source_copy():
    d = _shared_dir("src")
    _copy_tracked(d / "pysandbox")
    yield d / "pysandbox"
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def wheel(source_copy):
    out = _shared_dir("whl")
    p = subprocess.run([str(EDITABLE_BIN / "pip"), "wheel", "-q", "--disable-pip-version-check", "--no-deps",
                        "-w", str(out), str(source_copy)], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    wheels = list(out.glob("pysandbox-*.whl"))
    assert len(wheels) == 1, wheels
    yield wheels[0]
    shutil.rmtree(out, ignore_errors=True)


@pytest.fixture(scope="session")
def wheel_venv(wheel):
    """A fresh venv outside the work tree with the wheel (and pytest, for the foreign project)."""
    d = _shared_dir("venv")
    venv = d / "venv"
    subprocess.run([SYSTEM_PYTHON, "-m", "venv", str(venv)], check=True, timeout=120)
    p = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check",
                        str(wheel), "pytest"], capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stdout + p.stderr
    yield venv / "bin"
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(params=["wheel", "editable"])
def layout(request):
    """The bin directory of a pysandbox installation."""
    if request.param == "wheel":
        return request.getfixturevalue("wheel_venv")
    return EDITABLE_BIN


@pytest.fixture(params=["root", "rootless"])
def as_user(request):
    """Run a command from /tmp, as root or as the unprivileged test user (with cgroups delegated:
    the shipped profiles set limits, which fail closed without them)."""
    if os.geteuid() != 0:
        pytest.skip("needs root (to create the unprivileged test user)")
    if request.param == "root":
        ident, home = {}, "/root"
    else:
        request.getfixturevalue("delegated_cgroups")
        pw = ensure_test_user()
        ident, home = dict(user=pw.pw_uid, group=pw.pw_gid, extra_groups=[]), pw.pw_dir

    def run(argv, cwd="/tmp", env=None, timeout=300):
        e = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8",
             "HOME": home, "PYTHONDONTWRITEBYTECODE": "1"}
        if ident:
            e["USER"] = TEST_USER
        e.update(state_env(bool(ident)))
        e.update(env or {})
        p = subprocess.run(argv, capture_output=True, text=True, cwd=cwd, env=e, timeout=timeout, **ident)
        assert "Traceback" not in p.stderr, p.stderr
        return p
    run.rootless = bool(ident)
    return run


# --- the wheel itself ----------------------------------------------------------------------

def test_wheel_is_platform_specific_and_carries_everything(wheel):
    assert wheel.name.endswith(("-py3-none-linux_x86_64.whl", "-py3-none-linux_aarch64.whl")), wheel.name
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        info = z.getinfo("sandbox/pysandbox-init")
        head = z.read("sandbox/pysandbox-init")[:4]
        wheel_meta = z.read(next(n for n in names if n.endswith(".dist-info/WHEEL"))).decode()
    assert head == b"\x7fELF" and (info.external_attr >> 16) & 0o111, "pysandbox-init: an executable ELF"
    assert "Root-Is-Purelib: false" in wheel_meta
    for f in ("policies/profiles/strict.yaml", "policies/profiles/default.yaml",
              "policies/profiles/docker-default.yaml", "policies/lint/rules/PSB101.md",
              "policies/schema/profile.schema.json", "policies/schema/sarif-2.1.0.json",
              "policies/data/docker-default-seccomp.json", "audit/schema/event.schema.json",
              "sandbox/data/apparmor/pysandbox"):
        assert f in names, f
    # nothing of the work tree but the packages: no tests, no sources of the binary
    assert not any(n.startswith(("tests/", "profiles/", "docs/")) or n.endswith("pid1.c") for n in names)


def test_runtime_entry_is_the_c_front_end(layout, wheel):
    """pysandbox-runtime is the C front end (a script of the wheel, the work tree's copy in the
    editable venv), falling back to pysandbox-runtime-py beside it for what it does not handle."""
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        (script,) = [n for n in names if n.endswith(".data/scripts/pysandbox-runtime")]
        assert z.read(script)[:4] == b"\x7fELF"
        (script,) = [n for n in names if n.endswith(".data/scripts/pysandbox")]     # sandbox/cli/front.c
        assert z.read(script)[:4] == b"\x7fELF"
    assert not any(n.endswith(("front.c", "pysandbox-runtime-front", "pysandbox-front")) for n in names)
    with open(layout / "pysandbox-runtime", "rb") as f:
        assert f.read(4) == b"\x7fELF"
    p = subprocess.run([str(layout / "pysandbox-runtime"), "--version"], capture_output=True, text=True,
                       cwd="/tmp", timeout=60)
    assert p.returncode == 0 and p.stdout.startswith("pysandbox-runtime version"), p.stderr


def test_wheel_venv_finds_package_data_not_the_work_tree(wheel_venv):
    code = ("from policies.resources import shipped_profiles_dir, rule_docs_dir; import sandbox.init as i;"
            "print(shipped_profiles_dir()); print(rule_docs_dir()); print(i.INIT_BINARY)")
    p = subprocess.run([str(wheel_venv / "python"), "-c", code], capture_output=True, text=True, cwd="/tmp")
    assert p.returncode == 0, p.stderr
    site = str(wheel_venv.parent / "lib")
    for line in p.stdout.split():
        assert line.startswith(site) and str(REPO) not in line, p.stdout
        assert os.path.exists(line), line


# --- the CLI, from another directory ----------------------------------------------------------

def test_cli_run_strict(layout, as_user):
    ok = as_user([str(layout / "pysandbox"), "run", "--profile", "strict", "--", "id", "-u"])
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip().isdigit()
    # the other side: strict denies creating namespaces inside (errno from seccomp, not a crash)
    bad = as_user([str(layout / "pysandbox"), "run", "--profile", "strict", "--", HOST_PY, "-c",
                   PROBE + "print(sc(272, 0x10000000))"])                 # unshare(CLONE_NEWUSER)
    assert bad.returncode == 0 and bad.stdout.strip() == "EPERM", (bad.stdout, bad.stderr)


def test_directory_root_with_the_package_below_tmp(layout, as_user, shared_tmp, tmp_profile):
    """The package below /tmp (the wheel's venv here; a checkout there, as in CI): the new root's
    tmpfs covers /tmp in PID 1's mount namespace, so every module a root needs must be imported
    before it. A read-only `root:` directory failed with "cannot import name 'overlay'" (found by CI
    from a clone under /tmp); the work tree's own tests never saw it."""
    root = shared_tmp / "dirroot"
    (root / "bin").mkdir(parents=True)
    shutil.copy("/bin/busybox", root / "bin" / "busybox")
    os.symlink("busybox", root / "bin" / "sh")
    os.symlink("busybox", root / "bin" / "cat")
    os.chmod(root, 0o755)
    os.chmod(root / "bin", 0o755)
    prof = tmp_profile(f"extends: strict\nfilesystem:\n  root: {{path: {root}}}\n")
    ok = as_user([str(layout / "pysandbox"), "run", "--profile", prof, "--", "/bin/cat", "/run/.containerenv"])
    assert ok.returncode == 0 and ok.stdout.startswith('engine="pysandbox-'), (ok.stdout, ok.stderr)
    # the other side: the root stays read-only
    bad = as_user([str(layout / "pysandbox"), "run", "--profile", prof, "--", "/bin/sh", "-c", "echo x > /bin/x"])
    assert bad.returncode != 0 and "Read-only file system" in bad.stderr, (bad.stdout, bad.stderr)
    assert sorted(os.listdir(root / "bin")) == ["busybox", "cat", "sh"]


def test_cli_docker_default_imports_builtin_seccomp(layout, as_user):
    """docker-default's `import: builtin:docker-default-seccomp` resolves in this layout."""
    p = as_user([str(layout / "pysandbox"), "run", "--profile", "docker-default", "--", HOST_PY, "-c",
                 PROBE + "print(sc(165, 0, 0, 0, 0, 0), sc(39))"])        # mount, getpid
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["EPERM", "ok"], p.stdout


def test_cli_lint_shipped_profiles(layout, as_user):
    where = subprocess.run([str(layout / "python"), "-c",
                            "from policies.resources import shipped_profiles_dir as d; print(d())"],
                           capture_output=True, text=True, cwd="/tmp", check=True).stdout.strip()
    p = as_user([str(layout / "pysandbox"), "lint", "--format", "sarif", where])
    assert p.returncode == 0, p.stderr
    sarif = json.loads(p.stdout)
    rules = sarif["runs"][0]["tool"]["driver"]["rules"]
    # the rule documents are found (package data or docs/rules): SARIF carries their help text
    assert all(r.get("help", {}).get("markdown") for r in rules), [r["id"] for r in rules if not r.get("help")]
    # and a profile with an error fails from here too
    bad = as_user([str(layout / "pysandbox"), "lint", "/nonexistent-profile-dir"])
    assert bad.returncode == 2 and "nonexistent" in bad.stderr


def test_cli_version_and_completion(layout, as_user):
    v = as_user([str(layout / "pysandbox"), "--version"])
    assert v.returncode == 0 and v.stdout.startswith("pysandbox, version 0.1.0"), v
    script = as_user([str(layout / "pysandbox"), "completion", "bash"])
    assert script.returncode == 0 and "_PYSANDBOX_COMPLETE" in script.stdout
    # the script through a real bash: subcommands and profile names complete
    drive = ('source <(pysandbox completion bash)\n'
             'COMPREPLY=(); COMP_WORDS=(pysandbox li); COMP_CWORD=1; _pysandbox_completion pysandbox; '
             'echo "${COMPREPLY[@]}"\n'
             'COMPREPLY=(); COMP_WORDS=(pysandbox run --profile st); COMP_CWORD=3; _pysandbox_completion pysandbox; '
             'echo "${COMPREPLY[@]}"\n')
    b = as_user(["/bin/bash", "-c", drive], env={"PATH": f"{layout}:/usr/bin:/bin"})
    assert b.stdout.splitlines() == ["lint", "strict"], (b.stdout, b.stderr)
    for shell in ("zsh", "fish"):
        s = as_user([str(layout / "pysandbox"), "completion", shell])
        assert s.returncode == 0 and "_PYSANDBOX_COMPLETE" in s.stdout
    bad = as_user([str(layout / "pysandbox"), "completion", "tcsh"])
    assert bad.returncode == 2 and "tcsh" in bad.stderr


# --- the Python API and the pytest plugin, from another directory -----------------------------

def test_api_from_another_directory(layout, as_user):
    p = as_user([str(layout / "python"), "-c", API_SCRIPT, PROBE])
    assert p.returncode == 0, p.stderr
    d = json.loads(p.stdout.strip().splitlines()[-1])
    assert d["ok"][:2] == [0, "api-ok\n"], d
    code, out, _msg, syscalls = d["denied"]
    assert code == 0 and out.strip() == "EPERM" and "mount" in syscalls, d


def test_foreign_project_uses_the_plugin(layout, as_user):
    proj = _shared_dir("proj")
    try:
        (proj / "test_confined.py").write_text(FOREIGN_TEST)
        (proj / "pytest.ini").write_text("[pytest]\npysandbox_profile = strict\n")
        for f in proj.iterdir():
            os.chmod(f, 0o644)
        p = as_user([str(layout / "python"), "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "pysandbox"],
                    cwd=str(proj))
        # `-p pysandbox` is redundant with the entry point, and proves it is the installed plugin
        assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-2000:]
        assert "2 passed" in p.stdout, p.stdout
    finally:
        shutil.rmtree(proj, ignore_errors=True)


# --- the build hook's errors ----------------------------------------------------------------

@pytest.mark.parametrize("cc,says", [
    ("/nonexistent/cc", "no C compiler ('/nonexistent/cc' not found)"),
    # simulated: the headers exist here; an empty --sysroot makes the compiler see none (as
    # without libc6-dev: "fatal error: errno.h: No such file or directory")
    ("cc --sysroot=/nonexistent-pysbx-sysroot", "C headers are missing"),
])
def test_build_without_compiler_or_headers_fails_clearly(source_copy, wheel, tmp_path, cc, says):
    p = subprocess.run([str(EDITABLE_BIN / "pip"), "wheel", "--disable-pip-version-check", "--no-deps",
                        "-w", str(tmp_path), str(source_copy)], capture_output=True, text=True, timeout=600,
                       env={**os.environ, "CC": cc})
    out = p.stdout + p.stderr
    assert p.returncode != 0
    assert says in out and "cannot build pysandbox-init" in out, out[-3000:]
    assert not list(tmp_path.glob("*.whl"))                  # never a wheel without the binary
    # the other side: the same tree with the real compiler gave the session's wheel, binary inside
    with zipfile.ZipFile(wheel) as z:
        assert z.read("sandbox/pysandbox-init")[:4] == b"\x7fELF"


def test_build_sdist_then_wheel(wheel_venv, source_copy, tmp_path):
    """`python -m build` (the PyPA front end: an sdist first, the wheel built from it) - so the
    sdist carries pid1.c, the profiles, the rule docs and the AppArmor profile (MANIFEST.in)."""
    p = subprocess.run([str(wheel_venv / "pip"), "install", "-q", "--disable-pip-version-check", "build"],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    p = subprocess.run([str(wheel_venv / "python"), "-m", "build", "-o", str(tmp_path), str(source_copy)],
                       capture_output=True, text=True, timeout=900, cwd="/tmp")
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "SetuptoolsDeprecationWarning" not in p.stdout + p.stderr, "the build uses deprecated metadata"
    import tarfile
    (sdist,) = tmp_path.glob("pysandbox-*.tar.gz")
    with tarfile.open(sdist) as t:
        names = {n.split("/", 1)[1] for n in t.getnames() if "/" in n}
    for f in ("sandbox/pid1.c", "setup.py", "profiles/strict.yaml", "docs/rules/PSB101.md",
              "sandbox/data/apparmor/pysandbox"):
        assert f in names, f
    (whl,) = tmp_path.glob("pysandbox-*-py3-none-linux_*.whl")
    with zipfile.ZipFile(whl) as z:
        names = set(z.namelist())
    assert {"sandbox/pysandbox-init", "policies/profiles/strict.yaml", "policies/lint/rules/PSB101.md"} <= names


def test_lean_entry_script_in_a_wheel_venv(wheel_venv):
    """`python -m sandbox.entry BIN` (what `make setup` does for .venv) is right for a wheel's venv
    too: only its site-packages on the module path, nothing of the work tree; it runs."""
    script = wheel_venv / "pysandbox-py"                # (pysandbox: the C front end, kept)
    saved = script.read_bytes()
    try:
        p = subprocess.run([str(wheel_venv / "python"), "-m", "sandbox.entry", str(wheel_venv)],
                           capture_output=True, text=True, cwd="/tmp", timeout=60)
        assert p.returncode == 0, p.stderr
        text = script.read_text()
        assert text.startswith(f"#!{wheel_venv / 'python'} -IS\n"), text
        assert str(REPO) not in text and str(wheel_venv.parent / "lib") in text, text
        r = subprocess.run([str(script), "run", "--profile", "strict", "--", "id", "-u"],
                           capture_output=True, text=True, cwd="/tmp", timeout=120)
        assert r.returncode == 0 and r.stdout.strip() == "0", r.stderr
        assert (wheel_venv / "pysandbox").read_bytes()[:4] == b"\x7fELF"
        assert (wheel_venv / "pysandbox.install").read_text().endswith("/site-packages\n")    # lean.INSTALL
    finally:
        script.write_bytes(saved)
        (wheel_venv / "pysandbox.install").unlink(missing_ok=True)
