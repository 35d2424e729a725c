"""Landlock denials -> `landlock_denied` audit events (sandbox/landlock.py, DenialWatch).

Simulated input, said so: the kernel logs Landlock denials only while the machine's audit
subsystem is enabled, a machine-wide switch (it also sends every other process's audit records
to the kernel log, whose printk rate limit they then share) that tests on a shared machine must
not flip. The lines below are the records this kernel (6.18, ABI 7) printed for a strict sandbox
when audit was enabled by hand (docs/security.md, "Landlock denials in the audit log"); the
watcher's reading of /dev/kmsg itself is the same code as with live records."""
from __future__ import annotations

from sandbox import landlock

ACCESS = ('6,1702,24362454701,-;audit: type=1423 audit(1796670166.687:1702): domain=1d30304ed '
          'blockers=fs.execute path="/tmp/t" dev="tmpfs" ino=2')
DOMAIN = ('6,1703,24362454708,-;audit: type=1424 audit(1796670166.687:1702): domain=1d30304ed '
          'status=allocated mode=enforcing pid=27152 uid=1000000000 '
          'exe=2F6D656D66643A707973616E64626F782D696E6974202864656C6574656429 comm="pysandbox-init"')
NET = 'audit: type=1423 audit(1:2): domain=1d30304ed blockers=net.connect_tcp daddr=127.0.0.1 dest=40412'
OTHER = 'audit: type=1423 audit(1:3): domain=99 blockers=fs.read_file path="/etc/shadow" dev="vda" ino=1'
OTHER_DOMAIN = 'audit: type=1424 audit(1:3): domain=99 status=allocated mode=enforcing pid=5 uid=0 comm="cat"'


def watch(match):
    w = object.__new__(landlock.DenialWatch)          # no /dev/kmsg, no thread: the records only
    got = []
    w.on_event, w.match_pid = (lambda t, **f: got.append((t, f))), match
    w.domains, w.pending, w.count = {}, {}, 0
    return w, got


def test_parse_record():
    kind, f = landlock.parse_record(DOMAIN)
    assert kind == 1424 and f["pid"] == "27152" and f["exe"] == "/memfd:pysandbox-init (deleted)"
    assert landlock.parse_record("6,1,2,-;audit: type=1326 audit(1:2): pid=1 sig=0") is None


def test_denials_of_our_domain_become_events_in_either_order():
    w, got = watch(lambda pid: pid == 27152)
    for line in (ACCESS, DOMAIN, NET, OTHER, OTHER_DOMAIN):     # 1423 may come before its 1424
        w._record(*landlock.parse_record(line))
    assert [(t, f["path"], f["detail"]["access"], f["pid"]) for t, f in got] == [
        ("landlock_denied", "/tmp/t", ["fs.execute"], 27152),
        ("landlock_denied", None, ["net.connect_tcp"], 27152)]
    assert got[0][1]["message"] == "landlock denied fs.execute on /tmp/t" and got[0][1]["errno"] == 13
    assert got[1][1]["message"] == "landlock denied net.connect_tcp on tcp port 40412"


def test_bounded():
    w, got = watch(lambda pid: True)
    w._record(*landlock.parse_record(DOMAIN))
    for _ in range(landlock.MAX_DENIALS + 10):
        w._record(*landlock.parse_record(ACCESS))
    assert len(got) == landlock.MAX_DENIALS
    for i in range(200):                               # domains never claimed: pending is bounded
        w._record(1423, {"domain": f"x{i}"})
    assert len(w.pending) <= 64


def test_the_event_validates_against_the_audit_schema():
    from audit.events import Recorder
    ev = Recorder("abcdef012345", "n", "strict").build("landlock_denied", **landlock.denial_event(
        landlock.parse_record(ACCESS)[1], 27152))
    assert ev["type"] == "landlock_denied" and ev["errno_name"] == "EACCES"
