"""linux.cgroupsPath -> the leaf's path below each hierarchy's root (sandbox/cgroups/placement.py,
engine_path): pure path arithmetic, no cgroup touched."""
import pytest

from sandbox.cgroups.placement import engine_path


def test_absolute_path_is_below_each_hierarchy_root():
    assert engine_path("/libpod_parent/libpod-0123abc") == "libpod_parent/libpod-0123abc"
    assert engine_path("/kubepods/burstable/pod-1/ctr") == "kubepods/burstable/pod-1/ctr"


def test_relative_path_is_below_pysandbox_parent():
    assert engine_path("mine/ctr") == "pysandbox/mine/ctr"


@pytest.mark.parametrize("p", ["/../../etc", "../../../x", "/a/../../../b"])
def test_dotdot_cannot_leave_the_hierarchy_root(p):
    out = engine_path(p)
    assert ".." not in out.split("/") and not out.startswith("/")


@pytest.mark.parametrize("p", ["machine.slice:libpod:x", "/", "..", "/a/b c", "/" + "a/" * 20 + "b"])
def test_refused(p):
    with pytest.raises(ValueError):
        engine_path(p)
