"""pysandbox-runtime, without a sandbox: PID 1's wait status read from a pidfd once its parent
reaped it (sandbox/runtime/monitor.py pidfd_exit_status, what the monitor uses when the engine's
subreaper reaps PID 1), and config.json's namespaces joined by path that bundle.translate refuses
before any namespace is touched (fail closed, `config.json: FIELD: ...`)."""
import os
import time

import pytest

from sandbox.runtime import bundle as B
from sandbox.runtime import monitor


def test_pidfd_exit_status_after_the_reaper_collected_it():
    if not monitor.exit_info_supported():
        pytest.skip("this kernel has no PIDFD_INFO_EXIT (Linux 6.15): the monitor gives its own pid")
    pid = os.fork()
    if pid == 0:
        time.sleep(0.05)
        os._exit(7)
    fd = os.pidfd_open(pid)
    try:
        assert monitor.pidfd_exit_status(fd) is None          # running
        os.waitpid(pid, 0)
        assert monitor.pidfd_exit_status(fd) == 7 << 8          # a wait status, as waitpid's
    finally:
        os.close(fd)


def _cfg(namespaces, **linux):
    return {"ociVersion": "1.0.2", "root": {"path": "/"}, "process": {"args": ["/bin/true"], "cwd": "/"},
            "linux": dict(namespaces=namespaces, **linux)}


@pytest.mark.parametrize("namespaces, linux, field", [
    ([{"type": "mount", "path": "/proc/self/ns/mnt"}, {"type": "pid"}], {"maskedPaths": ["/proc/kcore"]},
     "linux.maskedPaths: cannot be applied in a mount namespace joined by path"),
    ([{"type": "mount", "path": "/proc/self/ns/mnt"}], {"readonlyPaths": ["/proc/sys"]},
     "linux.readonlyPaths: cannot be applied"),
    ([{"type": "mount"}, {"type": "pid", "path": "/proc/self/ns/pid"}, {"type": "user", "path": "/proc/self/ns/user"}],
     {}, "linux.namespaces: joining a pid namespace together with a user or mount namespace"),
    ([{"type": "mount"}, {"type": "cgroup", "path": "/proc/self/ns/cgroup"}], {},
     "linux.namespaces[1].path: joining a cgroup namespace is not supported"),
])
def test_joins_refused(namespaces, linux, field):
    with pytest.raises(B.BundleError) as e:
        B.translate(_cfg(namespaces, **linux), "/tmp")
    assert str(e.value).startswith("config.json: ") and field in str(e.value)


def test_joined_mount_namespace_refuses_mounts():
    cfg = _cfg([{"type": "mount", "path": "/proc/self/ns/mnt"}])
    cfg["mounts"] = [{"destination": "/tmp", "type": "tmpfs", "source": "tmpfs"}]
    with pytest.raises(B.BundleError, match="config.json: mounts: cannot be applied in a mount namespace joined"):
        B.translate(cfg, "/tmp")
