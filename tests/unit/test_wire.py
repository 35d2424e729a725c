"""sandbox/wire.py: the one encoding of the launch context (no root, no kernel)."""
from __future__ import annotations

import struct

import pytest

from policies import plan as P
from sandbox import wire


def _plan():
    return P.Plan(name="t", sources=("/x.yaml",),
                  user=P.User(uid=1, gid=2, uid_map=(P.IdMapEntry(0, 1000, 1),), groups=(5, 6)),
                  capabilities=("CHOWN",),
                  seccomp=P.Seccomp(rules=(P.SyscallRule("read", "allow", args=(P.ArgCond(0, "eq", 3),)),)),
                  filesystem=P.Filesystem(mounts=(P.Mount("tmpfs", "/tmp", size=1 << 20),)),
                  process=P.Process(argv=("a", "b"), env_set=(("K", "V"),), timeout=1.5,
                                    rlimits=(P.Rlimit("nofile", 10, 20),)))


def test_plan_round_trip_keeps_every_type():
    plan = _plan()
    assert wire.decode_plan(wire.encode_plan(plan)) == plan


def test_request_round_trip():
    req = {"argv": ["x", "y"], "env": (("A", "1"),), "timeout": None, "names": {(1, 2): "read"},
           "bpf": b"\x01" * 8, "audit": True}
    got, plan = wire.decode_request(wire.encode_request(req, _plan()))
    assert got == req and type(got["argv"]) is list and plan == _plan()
    assert wire.decode_request(wire.encode_request(req)) == (req, None)


def test_context_round_trip_and_pid1_prefix():
    ctx = wire.LaunchContext(_plan(), ("a",), {"PATH": "/bin"}, b"\0" * 16, False, 10, 11, 12, 13,
                             volume_dirs={"v": 14}, bind_srcs=(None, (15, True, True)), stdio=(16, None, 17),
                             cg_fds=(18, 19), cg_v2_fd=20, nofile=(100, 200), seccomp_log=True)
    fds = [10, 13, 16, 17, 18, 19, 20, 14, 15]
    data = wire.encode_context(ctx, "key", fds, (True, False, True), built=True, with_plan=False)
    n, go_r, status_w, i0, i1, i2, cg_first, cg_count, cg_v2, soft, hard, flags = \
        wire.decode_pid1(data[:wire.PID1_PREFIX])
    assert (n, go_r, status_w, i0, i1, i2, cg_first, cg_count, cg_v2) == (len(data), 0, 1, 2, -1, 3, 4, 2, 6)
    assert (soft, hard) == (100, 200)
    assert flags == wire.F_LINGER | wire.F_GID0 | wire.F_UID0 | wire.F_NOFILE | wire.F_BUILT
    got, key, wanted = wire.decode_context(data)
    assert key == "key" and wanted == fds and got.plan is None
    assert got.go_w is None and got.status_r is None
    assert (got.argv, got.env, got.bpf, got.bind_srcs, got.stdio, got.volume_dirs) == \
        (ctx.argv, ctx.env, ctx.bpf, ctx.bind_srcs, ctx.stdio, ctx.volume_dirs)
    got, _, _ = wire.decode_context(wire.encode_context(ctx, "key", fds, (False,) * 3, False, with_plan=True))
    assert got.plan == ctx.plan


def test_version_and_magic_are_checked():
    data = bytearray(wire.encode_plan(_plan()))
    struct.pack_into("<H", data, 4, wire.VERSION + 1)
    with pytest.raises(wire.WireError, match="version"):
        wire.decode_plan(bytes(data))
    with pytest.raises(wire.WireError):
        wire.decode_plan(b"XXXX" + bytes(data[4:]))


def test_bounds_fail_closed():
    good = wire.encode_plan(_plan())
    with pytest.raises(wire.WireError):                      # shorter than its header says
        wire.decode(good[:-1])
    with pytest.raises(wire.WireError):                      # a section longer than the message
        wire.decode(wire.HEADER.pack(wire.MAGIC, wire.VERSION, 1, 20) + wire.SECTION.pack(4, 0, 100))
    with pytest.raises(wire.WireError):                      # an unknown tag
        wire.decode(wire.encode([(99, b"")]))
    with pytest.raises(wire.WireError):                      # a tag twice
        wire.decode(wire.encode([(4, b"1"), (4, b"1")]))
    with pytest.raises(wire.WireError):                      # too many sections
        wire.encode([(4, b"")] * (wire.MAX_SECTIONS + 1))
    with pytest.raises(wire.WireError):                      # header says more than the limit
        wire.check_header(wire.HEADER.pack(wire.MAGIC, wire.VERSION, 0, wire.MAX_MESSAGE + 1))
    with pytest.raises(wire.WireError):                      # a filter that is not whole instructions
        wire.decode_context(wire.encode(list(wire.decode(wire.encode_context(
            wire.LaunchContext(_plan(), ("a",), {}, None, False, 3, None, None, 4), "k", [3, 4], (False,) * 3,
            False, with_plan=False)).items()) + [(wire.T_BPF, b"\0" * 7)]))
    deep = b"[" * (wire.MAX_DEPTH + 2) + b"]" * (wire.MAX_DEPTH + 2)
    with pytest.raises(wire.WireError):
        wire.from_value(deep)


def test_only_the_launch_classes_are_built():
    bad = b'{"c":"Popen","f":[["args",["sh"]]]}'
    with pytest.raises(wire.WireError, match="not one of the launch's"):
        wire.from_value(bad)
    with pytest.raises(wire.WireError):                      # a field the class does not have
        wire.from_value(b'{"c":"Namespaces","f":[["evil",1]]}')
    with pytest.raises(wire.WireError):
        wire.value(object())
    with pytest.raises(wire.WireError):                      # a plan section holding something else
        wire.decode_plan(wire.encode([(wire.T_PLAN, wire.value({"d": 1}))]))


def _spec(**kw):
    base = dict(new_session=False, set_ids=False, setgroups=False, nnp=False, listener=False, log=False,
                cgroupns=False, gid0=False, groups0=False, uid0=False, landlock=False, uid=0, gid=0, groups=(),
                rlimits=(), cwd="/", keep=0, bpf=b"", argv=("a",), env={})
    return wire.ProgramSpec(**{**base, **kw})


def test_program_section_layout():
    data = wire.encode_program(_spec(nnp=True, uid=1, gid=2, groups=(7,), rlimits=((7, 10, -1, "nofile"),),
                                     keep=1 << 3, bpf=b"\0" * 8, argv=("sh",), env={"A": "b"}))
    s = wire.decode(data)
    assert list(s) == [wire.T_PROGRAM]
    p = bytes(s[wire.T_PROGRAM])
    assert p[:20] == struct.pack("<5I", wire.P_NNP | wire.P_KEYRING, 1, 2, 1, 7)
    assert p.endswith(struct.pack("<I", 1) + struct.pack("<I", 3) + b"A=b" + struct.pack("<iI", -1, 0))   # no Landlock ruleset
    with pytest.raises(ValueError):
        wire.encode_program(_spec(argv=("a\0b",)))
    with pytest.raises(wire.WireError):
        wire.encode_program(_spec(bpf=b"\0" * 3))


# --- the launch server's replies (server -> API) and the plan's key -------------------------------

def test_reply_round_trip_events_result_error():
    events = (("seccomp_denied", {"syscall": {"name": "mount", "args": [1, 2]}, "count": 3}),
              ("sandbox_exit", {"status": {"exit_code": 0, "signal": None}, "duration": 0.5}))
    result = {"exit_code": 1, "status": 256, "signal": None, "timed_out": False, "message": "m",
              "duration": 0.25, "sandbox_id": "ab", "events": [{"type": "x"}]}
    got, end = wire.decode_reply(wire.encode_reply(events, result))
    assert got == events and end == ("result", result)
    assert type(got[0][1]["syscall"]["args"]) is list and type(end[1]["events"]) is list
    assert wire.decode_reply(wire.encode_reply(events[:1])) == (events[:1], None)
    assert wire.decode_reply(wire.encode_reply(error=(125, "no"))) == ((), ("error", 125, "no"))
    assert wire.decode_reply(wire.encode_reply((), error=(125, "no")))[1] == ("error", 125, "no")


def test_reply_refuses_what_is_not_a_reply():
    bad = [wire.encode([(wire.T_EVENT, wire.value([("t", {})]))]),              # a list, not pairs
           wire.encode([(wire.T_EVENT, wire.value((("t", "not a dict"),)))]),
           wire.encode([(wire.T_RESULT, wire.value({"result": 1}))]),
           wire.encode([(wire.T_RESULT, wire.value({"error": ("125", "x")}))]),
           wire.encode([(wire.T_RESULT, wire.value({"result": {}, "error": (1, "x")}))]),
           wire.encode([(wire.T_RESULT, wire.value({"result": {1: 2}}))]),
           wire.encode([(wire.T_RESULT, wire.value({"c": "Plan", "f": []}))]),   # a class is refused
           b"\x80\x04K\x01."]                                                    # a pickle
    for data in bad:
        with pytest.raises(wire.WireError):
            wire.decode_reply(data)
    with pytest.raises(wire.WireError):
        wire.encode_reply([("t", {"x": object()})])                              # only wire values


def test_plan_digest_is_of_the_wire_encoding():
    import dataclasses
    import hashlib
    plan, bpf = _plan(), b"\x06\x00\x00\x00\x00\x00\xff\x7f"
    assert wire.plan_digest(plan, bpf) == wire.plan_digest(_plan(), bytes(bpf))       # equal plans, one key
    assert wire.plan_digest(plan, bpf) != wire.plan_digest(plan, None)
    assert wire.plan_digest(plan, bpf) != wire.plan_digest(dataclasses.replace(plan, name="u"), bpf)
    expect = hashlib.sha256(wire.encode([(wire.T_PLAN, wire.value(plan)), (wire.T_BPF, bpf)])).hexdigest()[:24]
    assert wire.plan_digest(plan, bpf) == expect
