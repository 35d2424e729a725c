"""Shared helpers for the audit tests: a forked child that loads a small seccomp filter
with SECCOMP_FILTER_FLAG_NEW_LISTENER and hands the listener to the test process."""
from __future__ import annotations

import ctypes
import json
import os
import socket
import tempfile
import traceback

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long

NR = {"keyctl": 250, "add_key": 248, "mount": 165, "unshare": 272, "ptrace": 101, "bpf": 321,
      "getppid": 110, "init_module": 175, "open_by_handle_at": 304, "mkdir": 83, "mkdirat": 258}


def raw(name, *args):
    """Call a syscall by name with integer/bytes args -> (ret, errno)."""
    cargs = [ctypes.c_char_p(a) if isinstance(a, bytes) else ctypes.c_long(a) for a in args]
    ctypes.set_errno(0)
    r = libc.syscall(ctypes.c_long(NR[name]), *cargs)
    return r, (ctypes.get_errno() if r < 0 else 0)


def build_bpf(notify=(), kill=(), errno_rules=(), default=None):
    import pyseccomp as s
    f = s.SyscallFilter(default if default is not None else s.ALLOW)
    for name in notify:
        f.add_rule(s.NOTIFY, name)
    for name in kill:
        f.add_rule(s.KILL_PROCESS, name)
    for name, e in errno_rules:
        f.add_rule(s.ERRNO(e), name)
    with tempfile.TemporaryFile() as t:
        f.export_bpf(t)
        t.seek(0)
        return t.read()


def spawn(bpf: bytes, body, listener: bool = True):
    """Fork a child that loads `bpf` (no_new_privs first), sends the listener fd, then runs
    body() and writes its JSON result to a pipe. Returns (pid, listener_sock, result_fd)."""
    from sandbox import _sys
    from sandbox.notify.listener import send_listener
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        code = 0
        try:
            a.close()
            os.close(r)
            PR_SET_NO_NEW_PRIVS = 38
            libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
            flags = _sys.SECCOMP_FILTER_FLAG_NEW_LISTENER if listener else _sys.SECCOMP_FILTER_FLAG_LOG
            fd = _sys.seccomp_load(bpf, flags)
            if listener:
                send_listener(b, fd)
                os.close(fd)
            b.close()
            res = body()
            os.write(w, json.dumps(res).encode())
        except BaseException:  # noqa: BLE001
            os.write(w, json.dumps({"error": traceback.format_exc()}).encode())
            code = 99
        os._exit(code)
    b.close()
    os.close(w)
    return pid, a, r


def read_result(r: int):
    data = b""
    while True:
        chunk = os.read(r, 65536)
        if not chunk:
            break
        data += chunk
    os.close(r)
    return json.loads(data) if data else None
