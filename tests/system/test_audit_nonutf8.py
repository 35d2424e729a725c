"""Issue 18 item 4: one non-UTF-8 byte in argv switched the JSONL audit sink off for the whole run
("'utf-8' codec can't encode character '\\udcff'", a warning) while the summary still said
"see FILE". Now no input can make an event unwritable: strings with bytes that are not UTF-8 are
written escaped (`\\xNN`, a literal backslash doubled) and the event lists them in `escaped`; and a
log that does fail is reported as an error line instead of "see FILE" (docs/audit.md).
As root and as the unprivileged user.
"""
from __future__ import annotations

import json
import os

from audit.sinks import to_json

SCRIPT = b": \xff; mount -t tmpfs x /mnt 2>/dev/null; exit 3"


def _records(path):
    with open(path, "rb") as f:
        raw = f.read()
    raw.decode("utf-8")                       # the log is valid UTF-8 throughout
    return [json.loads(line) for line in raw.splitlines()]


def test_non_utf8_argv_and_env_are_recorded_escaped(runner, shared_tmp):
    os.chmod(shared_tmp, 0o1777)
    log = shared_tmp / "audit.jsonl"
    r = runner("run", "--profile", "strict", "--audit-log", str(log), "-e", os.fsdecode(b"V=\xfe\xfd"),
               "--", "/bin/sh", "-c", os.fsdecode(SCRIPT))
    assert r.returncode == 3, r
    assert "failed, disabled" not in r.stderr and "error: audit log" not in r.stderr, r
    assert f"see {log}" in r.stderr, r                         # the summary points at a log that has it
    recs = _records(log)
    types = [e["type"] for e in recs]
    assert types[0] == "sandbox_start" and "escape_attempt" in types and types[-1] == "sandbox_exit", types
    start = recs[0]
    assert start["argv"][2].startswith(": \\xff; mount"), start["argv"]
    assert start["escaped"] == ["argv.2"], start
    # decoding the documented escaping gives back the program's bytes
    dec = start["argv"][2].encode().decode("unicode_escape").encode("latin-1")
    assert dec == SCRIPT
    assert [e["seq"] for e in recs] == list(range(1, len(recs) + 1))      # nothing lost


def test_legitimate_utf8_unchanged(runner, shared_tmp):
    os.chmod(shared_tmp, 0o1777)
    log = shared_tmp / "audit.jsonl"
    r = runner("run", "--profile", "strict", "--audit-log", str(log), "--", "/bin/sh", "-c", ": é\\x; exit 0")
    assert r.returncode == 0, r
    start = _records(log)[0]
    assert start["argv"][2] == ": é\\x; exit 0" and "escaped" not in start, start


def test_a_failing_log_is_an_error_line_not_see_file(runner):
    """/dev/full takes the open and fails every write (ENOSPC): the run goes on, the summary is an
    error line naming the log and the first event not written - never "see /dev/full"."""
    r = runner("run", "--profile", "strict", "--audit-log", "/dev/full", "--", "/bin/sh", "-c",
               "mount -t tmpfs x /mnt 2>/dev/null; exit 3")
    assert r.returncode == 3, r
    assert "see /dev/full" not in r.stderr, r
    assert "error: audit log /dev/full failed: [Errno 28] No space left on device (event #1 and later not written)" \
        in r.stderr, r
    assert "1 escape attempt" in r.stderr, r
    # even when nothing else is noteworthy, the failure is said
    r = runner("run", "--profile", "strict", "--audit-log", "/dev/full", "--", "/bin/true")
    assert r.returncode == 0 and "error: audit log /dev/full failed" in r.stderr, r


def test_to_json_always_utf8():
    s = os.fsdecode(b"a\x80\\b")
    ev = {"argv": [s], "env": {os.fsdecode(b"K\xff"): s}, "n": 1, "obj": object()}
    text = to_json(ev)
    text.encode("utf-8")
    back = json.loads(text)
    assert back["argv"] == ["a\\x80\\\\b"] and back["escaped"] == ["argv.0", "env.K\\xff"], back
    assert back["env"] == {"K\\xff": "a\\x80\\\\b"}
