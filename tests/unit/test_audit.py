"""audit/: event model, JSON Schema, sinks, escape-technique table, reader (pure Python)."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading

import pytest

import audit
from audit import events, reader, sinks, techniques
from audit.events import Recorder, syscall_event_fields


def rec(*snks, **kw):
    return Recorder("0123456789ab", kw.get("name", "box"), kw.get("profile", "strict"), list(snks))


# --- model ------------------------------------------------------------------------

def test_envelope_and_schema_for_every_type():
    mem = sinks.MemorySink()
    r = rec(mem)
    r.emit("sandbox_start", pid=100, argv=["/bin/true"], uid=0)
    t, f = syscall_event_fields("mount", 165, [1, 2, 3, 0, 0, 0], "errno", errno=1)
    r.emit(t, pid=101, sandbox_pid=2, comm="sh", exe="/bin/sh", **f)
    t, f = syscall_event_fields("getrandom", 318, [0, 0, 0, 0, 0, 0], "errno", errno=38)
    r.emit(t, **f)
    t, f = syscall_event_fields("keyctl", 250, [0] * 6, "kill")
    r.emit(t, **f)
    t, f = syscall_event_fields("reboot_like_unknown", 999, [0] * 6, "kill")
    r.emit(t, **f)
    t, f = syscall_event_fields("openat", 257, [0] * 6, "allow", via="user_notif")
    r.emit(t, **f)
    r.emit("oom_kill", limit={"name": "memory", "value": 64 << 20, "peak": 64 << 20}, via="cgroup")
    r.emit("pids_limit", limit={"name": "pids", "value": 10, "peak": 10}, via="cgroup")
    r.emit("timeout", limit={"name": "timeout", "value": 2.0, "peak": 2.01}, via="launcher")
    r.emit("integrity_violation", path="/proc/self/mounts", message="mount leaked into the host")
    r.emit("audit_lost", message="kernel: printk limit exceeded", via="kmsg")
    r.emit("sandbox_exit", status={"exit_code": 0, "signal": None}, duration=0.25,
           peaks={"memory": 1 << 20, "pids": 3})
    r.close()
    assert [e["seq"] for e in mem.events] == list(range(1, 13))
    types = [e["type"] for e in mem.events]
    assert types == ["sandbox_start", "escape_attempt", "seccomp_denied", "escape_attempt", "seccomp_killed",
                     "seccomp_logged", "oom_kill", "pids_limit", "timeout", "integrity_violation",
                     "audit_lost", "sandbox_exit"]
    for e in mem.events:
        audit.validate(e)
        assert e["time"].endswith("Z") and e["sandbox_id"] == "0123456789ab"
        assert e["sandbox_name"] == "box" and e["profile"] == "strict"
    assert mem.events[1]["errno_name"] == "EPERM"
    assert mem.events[1]["technique_id"] == "mount"
    assert mem.events[3]["killed"] is True
    assert mem.events[2]["severity"] == "warning" and mem.events[1]["severity"] == "critical"


def test_schema_rejects_incomplete_events():
    import jsonschema
    r = rec(sinks.MemorySink())
    good = r.emit("seccomp_denied", syscall={"name": "x", "nr": 1}, action="errno", errno=1, via="user_notif")
    for broken in (dict(good, type="nope"), {k: v for k, v in good.items() if k != "syscall"},
                   {k: v for k, v in good.items() if k != "errno"}, dict(good, time="yesterday")):
        with pytest.raises(jsonschema.ValidationError):
            audit.validate(broken)
    ex = r.emit("sandbox_exit", status={"exit_code": 1}, duration=1.0)
    with pytest.raises(jsonschema.ValidationError):
        audit.validate({k: v for k, v in ex.items() if k != "duration"})


def test_unknown_type_and_envelope_clash_rejected():
    r = rec()
    with pytest.raises(events.EventError):
        r.emit("bogus")
    with pytest.raises(events.EventError):
        r.emit("timeout", seq=5, limit={"name": "t"})
    with pytest.raises(events.EventError):
        r.emit("timeout", severity="loud", limit={"name": "t"})


def test_rfc3339_roundtrip():
    t = events.rfc3339(1795393577.5)
    assert t == "2026-11-23T00:26:17.500000Z"
    assert events.parse_time(t) == 1795393577.5
    assert events.parse_time("2026-11-23T02:26:17+02:00") == 1795393577.0


def test_recorder_thread_safe_consecutive_seq(tmp_path):
    log = tmp_path / "a.jsonl"
    r = rec(sinks.JsonlSink(log))

    def worker(k):
        for i in range(500):
            r.emit("seccomp_denied", syscall={"name": f"s{k}", "nr": i}, action="errno", errno=1,
                   via="user_notif")
    ts = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    r.close()
    evs = list(reader.read_events(log))
    assert len(evs) == 4000
    assert [e["seq"] for e in evs] == list(range(1, 4001))   # file order == seq order


def test_broken_sink_is_disabled_not_fatal(capsys):
    class Bad:
        def write(self, ev):
            raise OSError(28, "No space left on device")

        def close(self):
            pass
    mem = sinks.MemorySink()
    r = rec(Bad(), mem)
    r.emit("sandbox_start")
    r.emit("sandbox_start")
    r.close()
    assert len(mem.events) == 2
    err = capsys.readouterr().err
    assert err.count("failed, disabled") == 1


# --- sinks ------------------------------------------------------------------------

def test_default_log_path(monkeypatch, tmp_path):
    """The default log lives in the one state directory (audit/paths.py)."""
    monkeypatch.delenv("PYSANDBOX_AUDIT_LOG", raising=False)
    monkeypatch.delenv("PYSANDBOX_STATE_DIR", raising=False)
    assert str(sinks.default_log_path(0)) == "/var/lib/pysandbox/audit.jsonl"
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert sinks.default_log_path(1000) == str(tmp_path / "pysandbox" / "audit.jsonl")
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("HOME", "/home/u")
    assert str(sinks.default_log_path(1000)) == "/home/u/.local/share/pysandbox/audit.jsonl"
    monkeypatch.setenv("PYSANDBOX_STATE_DIR", str(tmp_path / "sd"))
    assert sinks.default_log_path(0) == str(tmp_path / "sd" / "audit.jsonl")
    assert sinks.default_log_path(1000) == str(tmp_path / "sd" / "audit.jsonl")
    monkeypatch.setenv("PYSANDBOX_AUDIT_LOG", str(tmp_path / "x.jsonl"))
    assert sinks.default_log_path(1000) == str(tmp_path / "x.jsonl")


def test_jsonl_append_only_and_crash_safe(tmp_path):
    """Each event is in the file as soon as emit() returns: a process killed with SIGKILL
    right after emitting loses nothing; a second writer appends, never truncates."""
    log = tmp_path / "sub" / "audit.jsonl"
    code = (
        "import os, signal, sys\n"
        "from audit import Recorder, JsonlSink\n"
        f"r = Recorder('dead', 'dead', 'strict', [JsonlSink({str(log)!r})])\n"
        "for i in range(100):\n"
        "    r.emit('seccomp_denied', syscall={'name': 'mount', 'nr': 165}, action='errno', errno=1, via='user_notif')\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n")
    p = subprocess.run([sys.executable, "-c", code], cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    assert p.returncode == -9
    assert oct(os.stat(log).st_mode & 0o777) == "0o600"
    assert oct(os.stat(log.parent).st_mode & 0o777) == "0o700"
    r2 = rec(sinks.JsonlSink(log))
    r2.emit("sandbox_start")
    r2.close()
    evs = list(reader.read_events(log))
    assert len(evs) == 101 and evs[0]["sandbox_id"] == "dead" and evs[-1]["sandbox_id"] == "0123456789ab"
    assert os.open(log, os.O_RDONLY) and True
    flags = sinks.JsonlSink(log)
    import fcntl
    assert fcntl.fcntl(flags.fd, fcntl.F_GETFL) & os.O_APPEND
    flags.close()


def test_summary_line():
    buf = io.StringIO()
    s = sinks.SummarySink("/var/lib/pysandbox/audit.jsonl", stream=buf)
    r = rec(s)
    for name in ("mount", "ptrace", "mount"):
        t, f = syscall_event_fields(name, 1, [0] * 6, "errno", errno=1)
        r.emit(t, **f)
    r.close()
    assert buf.getvalue() == ("pysandbox: 3 denials (mount ×2, ptrace ×1), 3 escape attempts"
                              " — see /var/lib/pysandbox/audit.jsonl\n")
    quiet = io.StringIO()
    r = rec(sinks.SummarySink("x", stream=quiet))
    r.emit("sandbox_start")
    r.emit("sandbox_exit", status={"exit_code": 0}, duration=1.0)
    r.close()
    assert quiet.getvalue() == ""
    one = io.StringIO()
    r = rec(sinks.SummarySink(None, stream=one))
    t, f = syscall_event_fields("getrandom", 318, [0] * 6, "errno", errno=38)
    r.emit(t, **f)
    r.emit("oom_kill", limit={"name": "memory", "value": 1, "peak": 1})
    r.close()
    assert one.getvalue() == "pysandbox: 1 denial (getrandom ×1), 1 oom kill\n"


def _syslog_receiver(tmp_path):
    """A real AF_UNIX datagram socket standing in for /dev/log (the host's is never touched)."""
    import socket
    path = str(tmp_path / "log.sock")
    rx = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    rx.bind(path)
    rx.setblocking(False)
    return rx, path


def _received(rx) -> list[str]:
    out = []
    while True:
        try:
            out.append(rx.recv(65536).decode())
        except BlockingIOError:
            return out


def test_syslog_sink_sends(tmp_path):
    rx, path = _syslog_receiver(tmp_path)
    r = rec(sinks.SyslogSink(min_severity="notice", address=path))
    r.emit("sandbox_start")                       # info: below notice
    t, f = syscall_event_fields("mount", 165, [0] * 6, "errno", errno=1)
    r.emit(t, **f)
    sent = _received(rx)
    assert len(sent) == 1
    msg = sent[0]
    assert msg.startswith("<10>")                 # LOG_USER | LOG_CRIT, as syslog(3) frames it
    assert f" pysandbox[{os.getpid()}]: " in msg
    body = msg.split("]: ", 1)[1]
    assert body.startswith("sandbox=box type=escape_attempt syscall=mount action=errno technique=mount {")
    assert json.loads(body[body.index("{"):])["syscall"]["name"] == "mount"
    r.close()
    rx.close()


def test_syslog_sink_is_rate_limited_and_says_so(tmp_path):
    """A flood of events: at most the burst goes to syslog at once; the rest is counted and said
    in one message; a missing syslog socket drops (counted), never blocks or raises."""
    rx, path = _syslog_receiver(tmp_path)
    sink = sinks.SyslogSink(min_severity="warning", address=path, rate=0.001, burst=5)
    r = rec(sink)
    t, f = syscall_event_fields("mount", 165, [0] * 6, "errno", errno=1)
    for _ in range(1000):
        r.emit(t, **f)
    r.close()
    sent = _received(rx)
    assert len(sent) == 6 and sink.sent == 6 and sink.suppressed == 995
    assert all("type=escape_attempt" in m for m in sent[:5])
    assert "type=audit_suppressed syslog: 995 messages over the syslog rate limit" in sent[5]
    rx.close()
    gone = sinks.SyslogSink(address=str(tmp_path / "nobody-listens"))
    gone.write({"severity": "critical", "type": "escape_attempt", "sandbox_name": "x"})
    assert gone.sent == 0 and gone.dropped == 1
    gone.close()


# --- techniques -------------------------------------------------------------------

@pytest.mark.parametrize("name,args,tid", [
    ("mount", None, "mount"), ("umount2", [0, 2], "umount"), ("pivot_root", None, "pivot_root"),
    ("chroot", None, "chroot"), ("setns", [3, 0], "setns"), ("ptrace", [16, 1], "ptrace"),
    ("process_vm_readv", None, "process-vm"), ("process_vm_writev", None, "process-vm"),
    ("open_by_handle_at", None, "shocker"), ("name_to_handle_at", None, "shocker"),
    ("init_module", None, "kernel-module"), ("finit_module", None, "kernel-module"),
    ("delete_module", None, "kernel-module"), ("kexec_load", None, "kexec"),
    ("kexec_file_load", None, "kexec"), ("bpf", [5], "bpf"), ("perf_event_open", None, "perf"),
    ("userfaultfd", None, "userfaultfd"), ("keyctl", None, "keyring"), ("add_key", None, "keyring"),
    ("request_key", None, "keyring"),
    ("unshare", [0x10000000], "userns"), ("unshare", [0x00020000], "namespace"),
    ("clone", [0x10000000 | 17], "userns"), ("clone", [0x40000000 | 17], "namespace"),
    ("mknod", [0, 0o020666, 0x0103], "mknod"), ("mknodat", [0, 0, 0o060660, 0x0800], "mknod"),
    ("ioctl", [0, 0x5412, 0], "tiocsti"), ("ioctl", [0, 0x541C, 0], "tiocsti"),
    ("socket", [17, 3, 0], "raw-socket"), ("socket", [40, 1, 0], "vsock"),
])
def test_escape_set(name, args, tid):
    got = techniques.classify(name, args)
    assert got is not None and got[0] == tid


@pytest.mark.parametrize("name,args", [
    ("unshare", [0x00000400]),                    # CLONE_FILES: no namespace
    ("clone", [0x003D0F00 | 17]),                 # pthread_create flags
    ("clone3", None),                             # glibc probe, flags unknown
    ("mknod", [0, 0o010644, 0]),                  # FIFO
    ("mknodat", [0, 0, 0o100644, 0]),             # regular file
    ("ioctl", [0, 0x5413, 0]),                    # TIOCGWINSZ
    ("socket", [2, 1, 0]),                        # TCP
    ("getrandom", None), ("personality", [0xffffffff]),
])
def test_not_escapes(name, args):
    assert techniques.classify(name, args) is None


def test_technique_labels_and_decoding():
    assert techniques.classify("unshare", [0x10000000])[1].startswith("regain capabilities via user namespace")
    assert techniques.classify("open_by_handle_at")[1].startswith("shocker/open_by_handle_at")
    assert techniques.classify("ptrace", [16, 1])[1].startswith("host ptrace")
    assert techniques.classify("clone3", None, clone3_flags=0x10000000)[0] == "userns"
    d = techniques.decode_args("clone", [0x10000000 | 0x20000000 | 17])
    assert d == {"flags": "CLONE_NEWUSER|CLONE_NEWPID", "exit_signal": 17}
    assert techniques.decode_args("unshare", [0x10000080])["flags"] == "CLONE_NEWTIME|CLONE_NEWUSER"
    assert techniques.decode_args("ptrace", [16, 1]) == {"request": "PTRACE_ATTACH", "target_pid": 1}
    assert techniques.decode_args("ioctl", [0, 0x5412])["request"] == "TIOCSTI"
    assert techniques.decode_args("mknod", [0, 0o020666, (1 << 8) | 3]) == {"mode": "S_IFCHR|0o666",
                                                                         "dev": "1:3"}
    assert techniques.decode_args("mount", [0, 0, 0, 4096 | 16384])["flags"] == "MS_BIND|MS_REC"
    t, f = syscall_event_fields("clone3", 435, [0x7fff0000, 88], "errno", errno=38, clone3_flags=0x10000000)
    assert t == "escape_attempt" and f["syscall"]["decoded"]["flags"] == "CLONE_NEWUSER"


# --- reader -----------------------------------------------------------------------

@pytest.fixture
def log(tmp_path):
    p = tmp_path / "audit.jsonl"
    a = Recorder("aaaa11112222", "web", "strict", [sinks.JsonlSink(p)])
    b = Recorder("bbbb33334444", "db", "default", [sinks.JsonlSink(p)])
    a.emit("sandbox_start", time=1795393500.0)
    for name, ts in (("mount", 1795393501.0), ("keyctl", 1795393502.0), ("mount", 1795393503.0)):
        t, f = syscall_event_fields(name, 1, [0] * 6, "errno", errno=1)
        a.emit(t, time=ts, **f)
    t, f = syscall_event_fields("getrandom", 318, [0] * 6, "errno", errno=38)
    b.emit(t, time=1795393504.0, **f)
    b.emit("oom_kill", time=1795393505.0, limit={"name": "memory", "value": 100, "peak": 100})
    a.emit("sandbox_exit", time=1795393506.0, status={"exit_code": None, "signal": "SIGKILL"}, duration=6.0)
    with open(p, "a") as f:
        f.write('{"torn": \n')                      # a torn line is skipped, not fatal
    return p


def test_reader_filters(log):
    F = reader.Filter
    assert len(list(reader.read_events(log))) == 7
    assert [e["sandbox_name"] for e in reader.read_events(log, F(sandboxes=("db",)))] == ["db", "db"]
    assert len(list(reader.read_events(log, F(sandboxes=("aaaa",))))) == 5
    assert len(list(reader.read_events(log, F(types=("escape_attempt",))))) == 3
    assert len(list(reader.read_events(log, F(types=("denial",))))) == 4
    assert len(list(reader.read_events(log, F(syscalls=("mount",))))) == 2
    since = reader.parse_since("2026-11-23T00:25:03Z")
    assert [e["seq"] for e in reader.read_events(log, F(since=since))][:1] == [4]
    assert reader.parse_since("10m", now=1000.0) == 400.0
    with pytest.raises(reader.FilterError):
        reader.parse_since("last tuesday")
    with pytest.raises(reader.FilterError):
        F(types=("nope",))
    st = reader.ReadStats()
    list(reader.read_events(log, None, st))
    assert st.bad == 1


def test_reader_format_and_summary(log):
    lines = [reader.format_event(e) for e in reader.read_events(log)]
    assert "escape_attempt" in lines[1] and "mount(" in lines[1] and "-> EPERM" in lines[1]
    assert "[remount or bind host filesystems (mount)]" in lines[1]
    assert "memory limit 100 peak 100" in lines[5]
    assert "killed by SIGKILL  after 6.000s" in lines[6]
    s = reader.summarize(reader.read_events(log))
    assert [x.name for x in s] == ["web", "db"]
    assert dict(s[0].denials) == {"mount": 2, "keyctl": 1}
    text = reader.format_summary(s)
    assert "denials: mount ×2, keyctl ×1" in text
    assert text.splitlines()[-1] == "2 sandboxes, 4 denials (mount ×2, keyctl ×1, getrandom ×1)"
    assert s[0].to_dict()["exit"]["status"]["signal"] == "SIGKILL"


def test_follow_sees_appends(tmp_path):
    p = tmp_path / "f.jsonl"
    r = rec(sinks.JsonlSink(p))
    r.emit("sandbox_start")
    got = []
    done = threading.Event()

    at_end = threading.Event()             # follow() asks stop() once it has read to the end

    def stop():
        at_end.set()
        return done.is_set()

    def consume():
        for ev in reader.follow(p, interval=0.02, stop=stop):
            got.append(ev)
            if len(got) == 3:
                done.set()
    t = threading.Thread(target=consume)
    t.start()
    assert at_end.wait(5)
    for _ in range(3):
        r.emit("timeout", limit={"name": "timeout", "value": 1})
    t.join(5)
    done.set()
    assert [e["seq"] for e in got] == [2, 3, 4]     # from the end: the old event is skipped


def test_audit_does_not_import_sandbox_or_policies():
    code = ("import sys, audit, audit.events, audit.sinks, audit.reader, audit.techniques\n"
            "bad = [m for m in sys.modules if m.split('.')[0] in ('sandbox', 'policies')]\n"
            "assert not bad, bad\n")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def test_human_output_escapes_terminal_control_characters():
    """A path or comm chosen by the sandboxed program must not drive the admin's terminal."""
    ev = rec().build("escape_attempt", syscall={"name": "mount", "nr": 165,
                                                 "decoded": {"target": "/mnt\x1b]0;owned\x07\x1b[2J"}},
                     action="errno", errno=1, via="user_notif", technique="t", technique_id="mount",
                     pid=5, comm="evil\x1b[31m", path="/x\ny")
    line = reader.format_event(ev)
    assert "\x1b" not in line and "\x07" not in line and "\n" not in line
    assert "\\x1b]0;owned\\x07" in line and "evil\\x1b[31m" in line
