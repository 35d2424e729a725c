"""steps.build_landlock: the Landlock rules of a RUN step under `build` (no kernel needed)."""
from __future__ import annotations

from policies import plan as P
from policies.compiler import Overrides, compile_profile
from sandbox.builder.steps import build_landlock


def _rules(ll):
    return {p.path: set(p.access) for p in ll.paths}


def test_root_not_executable_top_dirs_are():
    ll = P.Landlock(filesystem=True, derived=True, paths=(
            P.LandlockPath("/", P.LANDLOCK_READ + P.LANDLOCK_EXECUTE + P.LANDLOCK_WRITE, False),
            P.LandlockPath("/dev/shm", P.LANDLOCK_WRITE, False)))
    out = _rules(build_landlock(ll, ["bin", "usr", "tmp", "dev", "proc", "sys", "run", "var", "opt"],
                                ["lib", "tmp", "cache"], "/srv/app"))
    assert "execute" not in out["/"] and "write_file" in out["/"]
    for p in ("/bin", "/usr", "/opt", "/var/lib", "/var/cache", "/srv/app"):
        assert "execute" in out[p], p
    for p in ("/tmp", "/dev", "/proc", "/sys", "/run", "/var", "/var/tmp"):
        assert p not in out, p
    assert "execute" not in out["/dev/shm"]


def test_explicit_rules_kept():
    ll = P.Landlock(filesystem=True, derived=False, paths=(P.LandlockPath("/", P.LANDLOCK_EXECUTE),))
    assert build_landlock(ll, ["bin"], [], None) is ll
    assert build_landlock(None, ["bin"], [], None) is None


def test_build_profile_derives_from_mounts():
    ll = compile_profile("build", Overrides(argv=("true",))).plan.landlock
    assert ll is not None and ll.filesystem and ll.derived
