"""audit/'s syslog sink against a real /dev/log (root: a private mount namespace). The rest of
audit/ is pure and tested in tests/unit/test_audit.py."""
from __future__ import annotations

import json
import os

import pytest

from audit import sinks
from audit.events import Recorder, syscall_event_fields


def rec(*snks, **kw):
    return Recorder("0123456789ab", kw.get("name", "box"), kw.get("profile", "strict"), list(snks))


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root for a private mount namespace")
def test_syslog_sink_for_real_in_a_private_mount_namespace():
    """A real syslog(3) datagram: a forked child gets its own mount namespace with a tmpfs on
    /dev (the host's /dev is untouched), binds a unix datagram socket at /dev/log, and logs."""
    import socket as _socket
    from sandbox import _sys
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            _sys.unshare(_sys.CLONE_NEWNS)
            _sys.mount(None, "/", None, _sys.MS_REC | _sys.MS_PRIVATE)
            _sys.mount("tmpfs", "/dev", "tmpfs", 0, "size=1m")
            srv = _socket.socket(_socket.AF_UNIX, _socket.SOCK_DGRAM)
            srv.bind("/dev/log")
            srv.settimeout(5)
            rr = rec(sinks.SyslogSink(min_severity="warning"))
            rr.emit("sandbox_start")
            t, f = syscall_event_fields("ptrace", 101, [16, 1, 0, 0, 0, 0], "errno", errno=1)
            rr.emit(t, **f)
            data = srv.recv(65536).decode()
            os.write(w, data.encode())
            os._exit(0)
        except BaseException as e:  # noqa: BLE001
            os.write(w, f"ERROR {e!r}".encode())
            os._exit(1)
    os.close(w)
    out = b""
    while chunk := os.read(r, 65536):
        out += chunk
    os.close(r)
    os.waitpid(pid, 0)
    msg = out.decode()
    assert msg.startswith("<10>"), msg            # LOG_USER(8) | LOG_CRIT(2): escape attempts are critical
    assert "pysandbox[" in msg and "type=escape_attempt syscall=ptrace action=errno technique=ptrace" in msg
    assert json.loads(msg[msg.index("{"):].rstrip("\x00\n"))["syscall"]["decoded"]["request"] == "PTRACE_ATTACH"
