"""policies.landlock.carve_execute (pure): execute never reaches a write-only path beneath it."""
from __future__ import annotations

import pytest

from policies import plan as P
from policies.landlock import MAX_CARVE_ENTRIES, CarveError, carve_execute, derive_from_mounts

R, W, X = P.LANDLOCK_READ, P.LANDLOCK_WRITE, P.LANDLOCK_EXECUTE
TREE = {"/": ["bin", "dev", "etc", "tmp", "opt"], "/dev": ["null", "shm", "pts"], "/bin": ["sh"],
        "/opt": ["app"], "/opt/app": ["data", "run.sh"]}


def rules(paths) -> dict:
    return {p.path: set(p.access) for p in paths}


def test_image_root_carved_around_tmp_and_dev():
    fs = P.Filesystem(root="/img", image="busybox:test", mounts=(P.Mount(type="tmpfs", target="/tmp"),))
    got = rules(carve_execute(derive_from_mounts(fs), TREE.get))
    assert got["/"] == set(R)                       # read kept, execute gone from the root itself
    for p in ("/bin", "/etc", "/opt"):
        assert got[p] == set(X), p
    assert "execute" not in got["/tmp"] and "execute" not in got["/dev"] and "execute" not in got["/dev/shm"]
    assert not any(k.startswith("/dev/") and "execute" in v for k, v in got.items())


def test_nested_writable_path_recursed_into():
    paths = (P.LandlockPath("/", R + X, False), P.LandlockPath("/opt/app/data", W, False))
    got = rules(carve_execute(paths, TREE.get))
    assert got == {"/": set(R), "/bin": set(X), "/dev": set(X), "/etc": set(X), "/tmp": set(X),
                   "/opt/app/run.sh": set(X), "/opt/app/data": set(W)}


def test_nothing_to_carve_unchanged():
    paths = (P.LandlockPath("/usr", R + X, False), P.LandlockPath("/tmp", W, False))
    assert carve_execute(paths, lambda p: pytest.fail("listed " + p)) == paths


def test_bounded():
    paths = (P.LandlockPath("/", R + X, False), P.LandlockPath("/tmp", W, False))
    with pytest.raises(CarveError, match="more than"):
        carve_execute(paths, lambda p: [f"e{i}" for i in range(MAX_CARVE_ENTRIES + 1)])


def test_odd_names_and_non_directories_skipped():
    paths = (P.LandlockPath("/", R + X, False), P.LandlockPath("/tmp", W, False))
    got = rules(carve_execute(paths, {"/": ["a/b", "..", "", "ok", "tmp"]}.get))
    assert got == {"/": set(R), "/ok": set(X), "/tmp": set(W)}
