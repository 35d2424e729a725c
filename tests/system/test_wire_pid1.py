"""pysandbox-init (sandbox/pid1.c) reads its PROGRAM section of the launch wire format and refuses
anything else: another version, a bad layout, no PROGRAM section — the program never starts
(SETUP, reported on the status pipe). Runs pysandbox-init's spawn mode as a plain child process
(not PID 1 of a sandbox: it needs nothing of one to get as far as the parameters)."""
from __future__ import annotations

import os
import struct
import subprocess

import pytest

from sandbox import init
from sandbox import wire

pytestmark = pytest.mark.skipif(not os.path.exists(init.INIT_BINARY), reason="pysandbox-init not built")


def _spec(**kw):
    base = dict(new_session=False, set_ids=False, setgroups=False, nnp=True, listener=False, log=False,
                cgroupns=False, gid0=False, groups0=False, uid0=False, landlock=False, uid=os.getuid(),
                gid=os.getgid(), groups=(), rlimits=(), cwd="/", keep=0, bpf=b"", argv=("/bin/true",),
                env={"PATH": "/usr/bin:/bin"})
    return wire.ProgramSpec(**{**base, **kw})


def _spawn(params: bytes) -> str:
    """pysandbox-init spawn with `params` as its parameter file: its status pipe's report."""
    pfd = os.memfd_create("params", 0)
    os.write(pfd, params)
    status_r, status_w = os.pipe()
    try:
        p = subprocess.Popen([init.INIT_BINARY, "spawn", str(status_w), "0", str(pfd), "-1", "0", "-1", "-1",
                              "0"], pass_fds=(status_w, pfd), env={"container": "pysandbox"},
                             restore_signals=False)    # SIGPIPE ignored, as in a PID 1 forked from Python
        os.close(status_w)
        rc = p.wait(30)
        out = b""
        while chunk := os.read(status_r, 4096):
            out += chunk
        return f"{out.decode()}(exit {rc})"
    finally:
        os.close(status_r)
        os.close(pfd)


def test_a_good_program_section_runs_the_program():
    assert _spawn(wire.encode_program(_spec())) == "EXIT 0\n(exit 0)"


@pytest.mark.parametrize("mangle", ["version", "magic", "length", "no_program", "unknown_tag"])
def test_anything_else_is_refused(mangle):
    good = bytearray(wire.encode_program(_spec()))
    if mangle == "version":
        struct.pack_into("<H", good, 4, wire.VERSION + 1)
        data = bytes(good)
    elif mangle == "magic":
        data = b"XXXX" + bytes(good[4:])
    elif mangle == "length":
        data = bytes(good) + b"\0"
    elif mangle == "no_program":
        data = wire.encode([(wire.T_PLAN, b"{}")])
    else:
        data = wire.HEADER.pack(wire.MAGIC, wire.VERSION, 2, len(good) + 8) + bytes(good[wire.HEADER.size:]) \
            + wire.SECTION.pack(99, 0, 0)
    report = _spawn(data)
    assert "SETUP the program's parameters: not a launch message of this version" in report, report
    assert "EXIT 0" not in report
