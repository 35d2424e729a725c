"""A user's sweep from outside the work tree (issue: sweep): broken input and odd environments that
ended in a traceback, an "internal error", a hang or files in the wrong place. Each is now one line
with a documented exit code (2 bad input, 125 cannot be set up), and the legitimate form still works.
As root and as the unprivileged test user (`runner`).

* stdio closed by the caller (`<&-`, `>&-`, `2>&-`): `pysandbox --help >&-` and `run ... >&-` ended
  in `AttributeError: 'NoneType' object has no attribute 'flush'` (exit 1); a closed descriptor is
  now /dev/null for pysandbox and the program (sandbox/cli/__init__.py, _stdio_open), so no file
  pysandbox opens later can take its number and reach the program as its stdin/stdout.
* `--timeout nan|inf|1e400` and a profile's `process.timeout: .nan|.inf` ended as "internal error"
  (exit 125): now exit 2 at the flag / file:line:col. A timeout beyond poll(2)'s ~24.8 days
  (`--timeout 3000000`) crashed the wait (OverflowError, exit 125): the wait now goes in steps.
* `network.ports: [{...}]` with a missing or unknown key: "internal error: KeyError" -> exit 2.
* `extends:` cycle: the message had no line:col -> the `extends:` that closes the cycle.
* `--security-opt seccomp=/dev/zero` said "file not found" -> "not a regular file".
* `--audit-log FIFO` with no reader blocked for ever (as root): now exit 125, one line, at once.
* A relative `HOME` (rootless): the state directory and the plan cache were made below the current
  directory -> the password database's home is used (audit/paths.py `home`).
"""
from __future__ import annotations

import os
import shutil
import subprocess

from conftest import PYSANDBOX


def _sh(runner, script: str, *args, env=None, cwd="/tmp", timeout=60):
    """`/bin/sh -c SCRIPT sh PYSANDBOX ARGS...` as the runner's user (the script closes descriptors)."""
    kw = dict(user=runner.uid, group=runner.gid, extra_groups=[]) if runner.rootless else {}
    if runner.rootless:
        runner("--version")                       # (delegated cgroups re-created if a test removed them)
    p = subprocess.run(["/bin/sh", "-c", script, "sh", PYSANDBOX, *args], capture_output=True, text=True,
                       env=runner.env(env), cwd=cwd, timeout=timeout, **kw)
    assert "Traceback" not in p.stderr, p.stderr
    return p


def test_closed_stdio_is_dev_null_for_pysandbox_and_the_program(runner):
    probe = ("for i in 0 1 2; do x=$(readlink /proc/$$/fd/$i) || x=closed; echo \"$i:$x\" >&3; done; "
             "echo out; echo err >&2")
    # stdout closed: no traceback, exit 0; the program's descriptor 1 is /dev/null
    p = _sh(runner, 'exec "$@" >&-', "run", "--", "/bin/sh", "-c", probe.replace(">&3", ">&2"))
    assert p.returncode == 0, p
    assert "1:/dev/null" in p.stderr and "err" in p.stderr, p
    # stdin closed: the program's stdin is /dev/null (not closed, not a descriptor of pysandbox's)
    p = _sh(runner, 'exec "$@" <&-', "run", "--", "/bin/sh", "-c", probe.replace(">&3", ""))
    assert p.returncode == 0 and "0:/dev/null" in p.stdout and "out" in p.stdout, p
    # stderr closed: the program's output still arrives, pysandbox exits with the program's status
    p = _sh(runner, 'exec "$@" 2>&-', "run", "--", "/bin/sh", "-c", "echo out; echo err >&2; exit 3")
    assert p.returncode == 3 and p.stdout == "out\n", p
    # every descriptor closed, and commands that are not `run`
    for args in (("--help",), ("profiles",), ("run", "--", "/bin/true")):
        p = _sh(runner, 'exec "$@" <&- >&- 2>&-', *args)
        assert p.returncode == 0, (args, p)
    p = _sh(runner, 'exec "$@" >&-', "run", "--profile", "no-such-profile", "--", "/bin/true")
    assert p.returncode == 2 and p.stderr.startswith("pysandbox: unknown profile"), p


def test_timeout_not_finite_is_a_usage_error(runner, tmp_profile):
    for t in ("nan", "inf", "-inf", "1e400"):
        r = runner("run", "--timeout", t, "--", "/bin/true")
        assert r.returncode == 2, (t, r)
        assert r.stderr.strip().splitlines() == [f"pysandbox: --timeout {float(t)!r}: must be a finite "
                                                 "number of seconds > 0"], (t, r)
    for value in (".nan", ".inf"):
        p = tmp_profile(f"version: 1\nextends: strict\nprocess:\n  timeout: {value}\n")
        r = runner("run", "--profile", p, "--", "/bin/true")
        assert r.returncode == 2, r
        assert r.stderr.strip() == f"pysandbox: {p}:4:3: process.timeout: must be a finite number of seconds > 0", r


def test_timeout_beyond_poll_range_runs(runner):
    """3 000 000 s is past poll(2)'s int of milliseconds (~24.8 days): the wait goes in steps."""
    r = runner("run", "--timeout", "3000000", "--", "/bin/sh", "-c", "echo ran")
    assert r.returncode == 0 and r.stdout == "ran\n", r
    r = runner("run", "--timeout", "0.3", "--", "/bin/sleep", "5")    # and a short one still expires
    assert r.returncode == 124, r


def test_port_mapping_with_bad_keys_is_a_profile_error(runner, tmp_profile):
    for ports, col in (("[{host_port: 8080}]", 11), ("[{host: 8080, port: 80}]", 11),
                       ("[{host_port: 99999, port: 80}]", 11), ("[{host_port: 8080, port: 80, proto: sctp}]", 11)):
        p = tmp_profile(f"version: 1\nextends: strict\nnetwork:\n  mode: pasta\n  ports: {ports}\n")
        r = runner("explain", "--profile", p)
        assert r.returncode == 2, (ports, r)
        assert r.stderr.startswith(f"pysandbox: {p}:5:{col}: a port mapping is {{host_port: 1-65535"), (ports, r)
        assert len(r.stderr.strip().splitlines()) == 1, r
    p = tmp_profile("version: 1\nextends: strict\nnetwork:\n  mode: pasta\n"
                    "  ports: [{host_port: 8080, port: 80, proto: udp}]\n")
    r = runner("explain", "--profile", p, "--json")
    assert r.returncode == 0 and '"host_port": 8080' in r.stdout, r


def test_security_opt_seccomp_not_a_regular_file_says_so(runner):
    r = runner("run", "--security-opt", "seccomp=/dev/null", "--", "/bin/true")
    assert r.returncode == 2 and r.stderr == "pysandbox: --security-opt seccomp=/dev/null: not a regular file\n", r
    r = runner("run", "--security-opt", "seccomp=/no/such.json", "--", "/bin/true")
    assert r.returncode == 2 and r.stderr == "pysandbox: --security-opt seccomp=/no/such.json: file not found\n", r


def test_extends_cycle_names_the_extends_line(runner, shared_tmp):
    for name, parent in (("a.yaml", "./b.yaml"), ("b.yaml", "./a.yaml")):
        (shared_tmp / name).write_text(f"version: 1\nname: {name[0]}\nextends: {parent}\n")
        os.chmod(shared_tmp / name, 0o644)
    r = runner("run", "--profile", str(shared_tmp / "a.yaml"), "--", "/bin/true")
    assert r.returncode == 2, r
    assert r.stderr.startswith(f"pysandbox: {shared_tmp}/b.yaml:3:1: extends cycle: "), r


def test_audit_log_fifo_without_reader_does_not_hang(runner, shared_tmp):
    fifo = shared_tmp / "log.fifo"
    os.mkfifo(fifo, 0o666)
    os.chown(fifo, runner.uid, runner.gid)
    r = runner("run", "--audit-log", str(fifo), "--", "/bin/true", timeout=30)
    assert r.returncode == 125, r
    assert r.stderr.strip() == f"pysandbox: audit log {fifo}: a FIFO nobody reads (or a device without its driver)", r
    log = shared_tmp / "log.jsonl"                     # a regular file still works
    os.chown(shared_tmp, runner.uid, runner.gid)
    r = runner("run", "--audit-log", str(log), "--", "/bin/true")
    assert r.returncode == 0 and '"sandbox_exit"' in log.read_text(), r


def test_relative_home_puts_nothing_below_the_current_directory(user_runner, shared_tmp):
    """HOME=relative as the unprivileged user, run from a directory it owns: the state directory
    and plan cache are its password-database home's (what a relative HOME would have put in cwd)."""
    os.chown(shared_tmp, user_runner.uid, user_runner.gid)
    home = user_runner.home
    p = _sh(user_runner, 'exec "$@"', "run", "--", "/bin/true", cwd=str(shared_tmp),
            env={"HOME": "relative", "PYSANDBOX_STATE_DIR": None})
    try:
        assert p.returncode == 0, p
        assert not (shared_tmp / "relative").exists(), list(shared_tmp.iterdir())
        assert os.path.isdir(os.path.join(home, ".local", "share", "pysandbox")), p
    finally:
        shutil.rmtree(shared_tmp / "relative", ignore_errors=True)


def test_api_timeout_beyond_poll_range_keeps_the_launch_server(root_runner):
    """The API's launch server computed poll(2)'s timeout from the deadline: a Sandbox with
    timeout=3000000 ended the server (OverflowError), and with it every sandbox of the process."""
    from sandbox.api import Sandbox
    long = Sandbox("strict", timeout=3000000)
    r = long.run(["/bin/sh", "-c", "echo ran"], text=True)
    assert r.exit_code == 0 and r.stdout == "ran\n", r
    sb = Sandbox("strict")
    r = sb.run(["/bin/true"], timeout=3e6)                                   # run()'s own timeout too
    assert r.exit_code == 0, r
    r = sb.run(["/bin/sleep", "5"], timeout=0.3)                             # the same server, still serving
    assert r.exit_code == 124 and r.timed_out, r


def test_audit_show_of_a_log_that_is_not_ours(runner, shared_tmp):
    """`audit show|summary --log FILE`: records of another shape ended as "internal error:
    TypeError" (exit 125); a FIFO blocked for ever; /dev/zero was read into memory until the OOM
    killer came. Now: malformed records are skipped (the good ones shown), anything but a regular
    file is refused at once (exit 1, one line)."""
    log = shared_tmp / "other.jsonl"
    log.write_text('{"type": "sandbox_start", "sandbox_id": "ok1", "time": "2026-01-01T00:00:00Z"}\n'
                   '{"time": 5, "type": {"a": 1}, "seq": "x", "severity": 7}\n'
                   '{"syscall": {"name": "mount", "args": ["x"]}, "type": "seccomp_denied"}\n'
                   'not json\n[1, 2]\n' + "a" * (2 << 20) + "\n")
    os.chmod(log, 0o644)
    for cmd in ("show", "summary"):
        r = runner("audit", cmd, "--log", str(log))
        assert r.returncode == 0 and "ok1" in r.stdout and r.stderr == "", (cmd, r)
    fifo = shared_tmp / "log.fifo"
    os.mkfifo(fifo, 0o644)
    for path in (str(fifo), "/dev/zero"):
        for args in (("show",), ("summary",), ("tail", "--no-follow"), ("tail", "-n", "1")):
            r = runner("audit", *args, "--log", path, timeout=30)
            assert r.returncode == 1, (path, args, r)
            assert r.stderr == f"pysandbox: {path}: not a regular file: not an audit log\n", (path, args, r)


def test_image_import_of_a_fifo_or_device_does_not_hang(runner, shared_tmp):
    fifo = shared_tmp / "image.fifo"
    os.mkfifo(fifo, 0o644)
    for path in (str(fifo), "/dev/zero"):
        r = runner("image", "import", path, "x:1", timeout=30)
        assert r.returncode == 2, (path, r)
        assert r.stderr == f"pysandbox: {path}: not a regular file or a directory: not an image\n", (path, r)


def test_lint_output_to_a_fifo_nobody_reads_does_not_hang(runner, shared_tmp, tmp_profile):
    p = tmp_profile("version: 1\nextends: strict\n")
    fifo = shared_tmp / "report.fifo"
    os.mkfifo(fifo, 0o666)
    os.chown(fifo, runner.uid, runner.gid)
    r = runner("lint", "-o", str(fifo), p, timeout=30)
    assert r.returncode == 2 and r.stderr == f"pysandbox: cannot write {fifo}: a FIFO nobody reads\n", r
    out = shared_tmp / "report.txt"                    # a file still works
    os.chown(shared_tmp, runner.uid, runner.gid)
    r = runner("lint", "-o", str(out), p)
    assert r.returncode == 0 and "EXPOSURE" in out.read_text(), r


def test_pids_limit_above_the_kernel_maximum_is_a_usage_error(runner, tmp_profile):
    """--pids-limit 99999999999999999999 reached the cgroup write (ERANGE, exit 125): bad input is 2."""
    r = runner("run", "--pids-limit", "99999999999999999999", "--", "/bin/true")
    assert r.returncode == 2 and r.stderr == ("pysandbox: --pids-limit must be at most 4194304 "
                                              "(the kernel's PID_MAX_LIMIT)\n"), r
    p = tmp_profile("version: 1\nextends: strict\nlimits:\n  pids: 5000000\n")
    r = runner("run", "--profile", p, "--", "/bin/true")
    assert r.returncode == 2 and r.stderr.startswith(f"pysandbox: {p}:4:3: limits.pids must be at most 4194304"), r
    r = runner("run", "--pids-limit", "4194304", "--", "/bin/true")
    assert r.returncode == 0, r


def test_cpus_out_of_range_says_the_range(runner):
    """--cpus 1e9 said "(must be > 0)" of a positive number: the message gives the range."""
    for v in ("1e9", "-1", "nan"):
        r = runner("run", "--cpus", v, "--", "/bin/true")
        assert r.returncode == 2 and r.stderr == f"pysandbox: --cpus: invalid CPU count {v!r} (must be > 0 and at most 4096)\n", r


def test_learn_checks_its_output_directory_before_running(runner, shared_tmp):
    """learn -o /nonexistent/x.yaml ran the command, then failed writing (exit 125): refused first."""
    log = shared_tmp / "learn.jsonl"                  # written from the launch on: never, here
    os.chmod(shared_tmp, 0o777)
    r = runner("learn", "-o", "/nonexistent/x.yaml", "--audit-log", str(log), "--", "/bin/true")
    assert r.returncode == 2, r
    assert r.stderr == "pysandbox learn: /nonexistent/x.yaml: cannot write there (/nonexistent: no such directory)\n", r
    assert not log.exists()


def test_closed_stdio_runtime_entry(tmp_path):
    """The OCI runtime's Python entry (pysandbox-runtime-py, what the C front falls back to) alike:
    stdout closed, a failing command still says why in one line, no traceback (before: an
    AttributeError at sys.stdout.flush)."""
    from conftest import VENV_BIN
    rt = str(VENV_BIN / "pysandbox-runtime-py")
    p = subprocess.run(["/bin/sh", "-c", 'exec "$@" >&-', "sh", rt, "--root", str(tmp_path / "rt"), "state", "nope"],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 1 and p.stderr == "pysandbox-runtime: container nope does not exist\n", p


def test_api_worker_reader_gone():
    """`python -m sandbox.api` (the pytest plugin's as-user worker) whose reader went away: exit 1,
    nothing on stderr (before: a BrokenPipeError traceback)."""
    from conftest import PYTHON
    p = subprocess.run(["/bin/sh", "-c", '"$0" -m sandbox.api | head -c0', PYTHON], input='{"argv": ["/bin/true"]}',
                       capture_output=True, text=True, timeout=60, cwd="/tmp")
    assert p.stderr == "", p


def test_unusable_state_directory_is_one_line(runner, shared_tmp):
    """A state directory the caller cannot use, under a profile whose launch records its resources
    there (strict: cgroup limits): one line naming it, exit 125 (before: the audit's warning about
    its log in that directory first, then the error); nothing is run."""
    d = shared_tmp / "state"
    d.mkdir(mode=0o777)
    os.chmod(d, 0o777)                          # writable by others: refused for root and rootless alike
    p = _sh(runner, 'exec "$@"', "run", "--profile", "strict", "--", "/bin/echo", "ran",
            env={"PYSANDBOX_STATE_DIR": str(d)})
    assert p.returncode == 125 and p.stdout == "" and p.stderr.count("\n") == 1, p
    assert p.stderr.startswith("pysandbox: state: cannot record the sandbox's resources") and str(d) in p.stderr, p
