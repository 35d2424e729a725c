"""Build hooks of pysandbox's setuptools backend (the metadata is in pyproject.toml).

* `pysandbox-init` (sandbox/pid1.c, PID 1's last stage) is compiled, static and -O2, into the
  package at build time: into the wheel (`pip install .`, `pip wheel .`, `python -m build`), or next
  to sandbox/pid1.c in the work tree for an editable install (`pip install -e .`, `make setup`).
* pysandbox-runtime's C front end (sandbox/runtime/front.c) likewise: into the wheel's scripts as
  `pysandbox-runtime` (the Python CLI, its fallback, is the console script `pysandbox-runtime-py`),
  or next to its source for an editable install, where sandbox/entry.py copies it into the venv.
  `pysandbox`'s C front end (sandbox/cli/front.c: a run sent to the launch server) likewise, as the
  script `pysandbox` beside the console script `pysandbox-py` it falls back to.
  A missing C compiler, missing libc headers or a missing static libc is a build error that says
  which and what to install: a wheel without the binary is never made.
* The shipped profiles (profiles/) and the lint-rule documents (docs/rules/) stay where they are in
  the work tree (their one source of truth) and are copied into the wheel as package data,
  `policies/profiles/` and `policies/lint/rules/`; policies/resources.py finds them in both layouts.
* The wheel holds a native executable, so it is tagged for the platform (py3-none-<platform>): it
  needs no particular CPython ABI, only Linux on this architecture.
"""
from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys

from setuptools import setup
from setuptools.command.build_py import build_py as _build_py
from setuptools.dist import Distribution

try:                                        # setuptools >= 70.1 carries bdist_wheel itself
    from setuptools.command.bdist_wheel import bdist_wheel as _bdist_wheel
except ImportError:                         # older setuptools: the `wheel` project's
    try:
        from wheel.bdist_wheel import bdist_wheel as _bdist_wheel
    except ImportError:
        _bdist_wheel = None

_build_scripts = Distribution().get_command_class("build_scripts")
_install_scripts = Distribution().get_command_class("install_scripts")

try:
    from setuptools.errors import CompileError
except ImportError:                         # pragma: no cover
    CompileError = RuntimeError

HERE = os.path.dirname(os.path.abspath(__file__))
PID1_SOURCE = os.path.join("sandbox", "pid1.c")
INIT_NAME = "pysandbox-init"
FRONT_SOURCE = os.path.join("sandbox", "runtime", "front.c")
FRONT_NAME = "pysandbox-runtime-front"       # in the work tree; `pysandbox-runtime` among scripts
CLI_FRONT_SOURCE = os.path.join("sandbox", "cli", "front.c")
CLI_FRONT_NAME = "pysandbox-front"           # in the work tree; `pysandbox` among scripts
# (script name, source, work-tree name): the C front ends installed as scripts
FRONTS = (("pysandbox-runtime", FRONT_SOURCE, FRONT_NAME), ("pysandbox", CLI_FRONT_SOURCE, CLI_FRONT_NAME))
CFLAGS = ["-O2", "-Wall", "-Wextra", "-static", "-s"]
# (work-tree directory, package directory in the wheel, file suffix)
DATA_TREES = (("profiles", os.path.join("policies", "profiles"), (".yaml", ".yml")),
              (os.path.join("docs", "rules"), os.path.join("policies", "lint", "rules"), (".md",)))


def _why(stderr: str) -> str:
    """One line naming what is missing, from the compiler's complaint."""
    if "cannot find -lc" in stderr or "cannot find crt" in stderr or "crt1.o" in stderr:
        return ("the static C library (libc.a) is missing: install the C library's development "
                "package (Debian/Ubuntu: apt-get install libc6-dev; Alpine: apk add musl-dev)")
    if ("No such file or directory" in stderr and ".h" in stderr) or "no include path" in stderr:
        line = next((ln for ln in stderr.splitlines() if "error" in ln), stderr.strip()[:200])
        return (f"C headers are missing ({line.strip()}): install the C library's and the kernel's "
                "headers (Debian/Ubuntu: apt-get install libc6-dev linux-libc-dev)")
    return "the compiler failed:\n" + stderr.strip()[-2000:]


def compile_init(out_path: str, source: str = PID1_SOURCE, name: str = INIT_NAME) -> None:
    """Compile sandbox/pid1.c (or source) to OUT_PATH (static, stripped) or raise CompileError saying why."""
    cc = shlex.split(os.environ.get("CC") or "cc")
    if not shutil.which(cc[0]):
        raise CompileError(f"pysandbox: cannot build {name}: no C compiler ({cc[0]!r} not found); "
                           "install one (Debian/Ubuntu: apt-get install gcc libc6-dev) or set CC")
    os.makedirs(os.path.dirname(out_path) or ".", exist_ok=True)
    tmp = out_path + ".tmp"
    cmd = cc + CFLAGS + ["-o", tmp, os.path.join(HERE, source)]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise CompileError(f"pysandbox: cannot build {name} ({' '.join(cmd)}): {_why(p.stderr)}")
    os.chmod(tmp, 0o755)
    os.replace(tmp, out_path)


def _stale(target: str, source: str) -> bool:
    try:
        return os.stat(target).st_mtime < os.stat(source).st_mtime
    except OSError:
        return True


class build_py(_build_py):
    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            # the work tree is the package: the binary goes next to its source, where
            # sandbox/init.py looks for it (as `make sandbox/pysandbox-init` does)
            target = os.path.join(HERE, "sandbox", INIT_NAME)
            if _stale(target, os.path.join(HERE, PID1_SOURCE)):
                compile_init(target)
            for _, source, name in FRONTS:
                front = os.path.join(HERE, os.path.dirname(source), name)
                if _stale(front, os.path.join(HERE, source)):
                    compile_init(front, source, name)
            return
        compile_init(os.path.join(self.build_lib, "sandbox", INIT_NAME))
        for src, dst, suffixes in DATA_TREES:
            src_root = os.path.join(HERE, src)
            for dirpath, dirnames, filenames in os.walk(src_root):
                dirnames.sort()
                rel = os.path.relpath(dirpath, src_root)
                for name in sorted(filenames):
                    if name.endswith(suffixes):
                        out_dir = os.path.normpath(os.path.join(self.build_lib, dst, rel))
                        os.makedirs(out_dir, exist_ok=True)
                        self.copy_file(os.path.join(dirpath, name), os.path.join(out_dir, name))


class build_scripts(_build_scripts):
    """The C front end, compiled as the script `pysandbox-runtime` (a native executable: pip
    installs it as it is, beside the console script `pysandbox-runtime-py` it falls back to)."""
    def finalize_options(self):
        super().finalize_options()
        self.scripts = self.scripts or []   # none listed: the one script is compiled by run()

    def get_source_files(self):             # (the sdist carries front.c through MANIFEST.in)
        return list(self.scripts)

    def run(self):
        super().run()
        for script, source, name in FRONTS:
            compile_init(os.path.join(self.build_dir, script), source, name)


class install_scripts(_install_scripts):
    """setuptools copies built scripts only when setup() lists some: the front end's, always."""
    def run(self):
        super().run()
        if not self.skip_build:
            self.run_command("build_scripts")
        self.mkpath(self.install_dir)
        for script, _, _ in FRONTS:
            src, dst = (os.path.join(d, script) for d in (self.build_dir, self.install_dir))
            self.copy_file(src, dst)
            os.chmod(dst, 0o755)
            self.outfiles.append(dst)


class BinaryDistribution(Distribution):
    """A native executable inside: installed to platlib, the wheel's root is not pure."""
    def has_ext_modules(self):
        return True

    def has_scripts(self):                  # build_scripts makes one (the runtime's front end)
        return True


cmdclass = {"build_py": build_py, "build_scripts": build_scripts, "install_scripts": install_scripts}

if _bdist_wheel is not None:
    class bdist_wheel(_bdist_wheel):
        def get_tag(self):
            _, _, plat = super().get_tag()
            return "py3", "none", plat          # any CPython >= 3.11; only the platform matters

    cmdclass["bdist_wheel"] = bdist_wheel

setup(cmdclass=cmdclass, distclass=BinaryDistribution)
