"""Profile errors: all of them in one pass (issue 20 item 9), the hostile references that ended as
"internal error" (issue 18 item 5), and egress DNS names (issue 20 item 8).

* A profile with a schema error, unknown capabilities, bad sizes, a bad mount and an egress DNS name
  reported only the first; now `run`, `explain` and `lint` report every one, each at file:line:col,
  in file order (at most 50, then one line saying how many more; policies/errors.py). Stages that
  depend on a failed one are not run (no follow-on noise).
* `extends:` with a 300-character name (ENAMETOOLONG) and `seccomp: {import: "\\0"}` (embedded NUL)
  ended as "internal error", exit 125: now one line, exit 2.
* `egress.allow: [{to: example.com}]` was taken as a peer sandbox name that never matches (run
  exited 0, lint was silent): now refused at compile time (exit 2) and lint PSB503.
Each with the legitimate form still running. As root and as the unprivileged user.
"""
from __future__ import annotations

import os

MULTI = """version: 1
extends: strict
namespaces: {bogus: true}
capabilities:
  add: [NET_FOO, CAP_BAR]
limits:
  memory: 12 parsecs
  cpus: lots
filesystem:
  mounts:
    - {type: tmpfs, target: /a, size: huge}
network:
  mode: none
  egress:
    allow:
      - {to: example.com}
"""
EXPECT = [
    (3, 14, "namespaces: unknown key 'bogus'"),
    (5, 9, "unknown capability 'NET_FOO'"),
    (5, 18, "unknown capability 'CAP_BAR'"),
    (7, 3, "limits.memory: invalid size '12 parsecs'"),
    (8, 3, "limits.cpus: invalid CPU count 'lots'"),
    (11, 7, "invalid size 'huge'"),
    (16, 10, "network.egress.allow[0].to: 'example.com' looks like a DNS name"),
]


def test_every_error_in_one_pass_run_and_explain(runner, tmp_profile):
    p = tmp_profile(MULTI)
    for args in (("explain", "--profile", p), ("run", "--profile", p, "--", "/bin/true")):
        r = runner(*args)
        assert r.returncode == 2, r
        lines = r.stderr.strip().splitlines()
        assert len(lines) == len(EXPECT), r
        for line, (ln, col, msg) in zip(lines, EXPECT):
            assert line.startswith(f"pysandbox: {p}:{ln}:{col}: {msg}"), (line, ln, col, msg)


def test_every_error_in_one_pass_lint(runner, tmp_profile):
    p = tmp_profile(MULTI)
    r = runner("lint", p)
    assert r.returncode == 1, r
    for ln, col, msg in EXPECT:
        assert any(f"{os.path.basename(p)}:{ln}:{col}: error PSB" in x for x in r.stdout.splitlines()), (ln, col, msg, r.stdout)
    assert "7 errors" in r.stdout, r


def test_error_cap_is_50(tmp_profile):
    from policies.compiler import compile_document
    from policies.errors import ProfileErrors
    from policies.loader import load_profile
    p = tmp_profile("version: 1\nextends: strict\ncapabilities:\n  add:\n"
                    + "".join(f"    - NOPE{i}\n" for i in range(80)))
    try:
        compile_document(load_profile(p))
    except ProfileErrors as e:
        lines = e.lines()
        assert len(lines) == 51 and lines[-1].startswith("... and 30 more errors"), lines[-2:]
        assert lines[0].endswith("unknown capability 'NOPE0'") and ":5:7:" in lines[0]
    else:
        raise AssertionError("compiled")


def test_dependent_stage_not_run_after_schema_error(tmp_profile):
    """user: depends on namespaces: a broken namespaces section reports itself, not a follow-on
    user error; the capabilities, independent, are still checked."""
    from policies.compiler import compile_document
    from policies.errors import ProfileErrors
    from policies.loader import load_profile
    p = tmp_profile("version: 1\nextends: strict\nnamespaces: {user: maybe}\nuser: {uid: 5}\n"
                    "capabilities: {add: [NOPE]}\n")
    try:
        compile_document(load_profile(p))
    except ProfileErrors as e:
        msgs = [x.message for x in e.errors]
        assert len(msgs) == 2 and msgs[0].startswith("namespaces.user") and "NOPE" in msgs[1], msgs


def test_hostile_references_are_profile_errors(runner, tmp_profile):
    cases = [
        ("version: 1\nextends: " + "a" * 300 + "\n", ":2:1: extends: a path component longer than 255 bytes"),
        ('version: 1\nseccomp: {import: "\\0"}\n', ":2:11: seccomp.import: contains a NUL byte"),
        ('version: 1\nextends: "a\\0b"\n', ":2:1: extends: contains a NUL byte"),
        ("version: 1\nextends: 'no such name'\n", ":2:1: extends: 'no such name' is not a profile name"),
    ]
    for text, want in cases:
        p = tmp_profile(text)
        for args in (("explain", "--profile", p), ("run", "--profile", p, "--", "/bin/true")):
            r = runner(*args)
            assert r.returncode == 2 and "internal error" not in r.stderr, r
            assert r.stderr.strip().startswith(f"pysandbox: {p}{want}") and len(r.stderr.splitlines()) == 1, r
    r = runner("explain", "--profile", "b" * 300)
    assert r.returncode == 2 and r.stderr.strip() == \
        "pysandbox: profile reference: a path component longer than 255 bytes", r
    r = runner("lint", "b" * 300)
    assert r.returncode == 2 and "File name too long" in r.stderr and "internal" not in r.stderr, r
    ok = tmp_profile("version: 1\nextends: strict\n", "ok.yaml")
    assert runner("run", "--profile", ok, "--", "/bin/true").returncode == 0


def test_egress_dns_name_refused_ip_and_peer_names_accepted(runner, tmp_profile):
    for to in ("example.com", "api.example.com.", "localhost", "db.internal"):
        p = tmp_profile(f"version: 1\nextends: strict\nnetwork:\n  mode: none\n  egress:\n    allow:\n"
                        f"      - {{to: '{to}', ports: [443]}}\n")
        r = runner("run", "--profile", p, "--", "/bin/true")
        assert r.returncode == 2, (to, r)
        assert r.stderr.strip().startswith(f"pysandbox: {p}:7:10: network.egress.allow[0].to: {to!r} looks like "
                                           "a DNS name"), r
        assert "allow a name with `host:`" in r.stderr, r    # issue 25: names go in host: rules
        r = runner("lint", p)
        assert r.returncode == 1 and f"{os.path.basename(p)}:7:10: error PSB503" in r.stdout, r
    # legitimate: an address, a CIDR, an IPv6 address, a peer name (no dot): compiled and run
    p = tmp_profile("version: 1\nextends: strict\nnetwork:\n  mode: none\n  egress:\n    allow:\n"
                    "      - {to: 192.0.2.7, ports: [443]}\n      - {to: 10.0.0.0/8}\n"
                    "      - {to: '2001:db8::1'}\n      - {to: db, ports: [5432]}\n", "okegress.yaml")
    r = runner("explain", "--profile", p)
    assert r.returncode == 0, r
    r = runner("lint", p)
    assert "PSB503" not in r.stdout, r
    p = tmp_profile("version: 1\nextends: strict\nnetwork:\n  mode: none\n  egress:\n    allow:\n"
                    "      - {to: 192.0.2.7, ports: [443]}\n", "runegress.yaml")
    r = runner("run", "--profile", p, "--", "/bin/true")
    assert r.returncode == 0, r
