"""Issue 18 item 2: the writable overlay layer had no size limit (`run --image X --read-write` wrote
3 GiB into the host's store, containers/<id>/upper on the root file system).

Now the upper and work directories are a tmpfs of `--storage-opt size=` / `filesystem.storage.size`
(default 2 GiB) mounted by the sandbox's PID 1 in its own namespaces: the kernel refuses writes
beyond the limit (ENOSPC) and the run goes on; a full layer is recorded (`limit_exceeded`, limit
`storage`); `--keep` copies the upper directory out after the run, so `diff`/`commit` work as before;
a size that cannot be enforced is refused (exit 125). Root (mapped range, strict) and rootless.
Nothing is simulated here.
"""
from __future__ import annotations

import json
import os
import re
import subprocess

import pytest

import imagebuild as ib
from imagebuild import cli, sh

MiB = 1 << 20




def du(path: str) -> int:
    """Bytes allocated on disk below path (what the layer costs the host's file system)."""
    total = 0
    for dp, dns, fns in os.walk(path):
        for n in dns + fns:
            total += os.lstat(os.path.join(dp, n)).st_blocks * 512
    return total


def kept_id(r) -> str:
    m = re.search(r"kept the writable layer of (\S+)", r.stderr)
    assert m, r
    return m.group(1)


def audit_events(runner, state, name):
    path = os.path.join(state, "audit.jsonl")      # the default log is in the state directory (audit/paths.py)
    with open(path) as f:
        return [e for e in map(json.loads, f) if e.get("sandbox_name") == name]


def test_writes_beyond_the_limit_get_enospc_and_the_host_store_stays_small(img):
    runner, state, _ = img
    name = f"ovsize-full-{os.getpid()}-{runner.uid}"
    before = du(state)
    # the attack: 100 MiB into a layer limited to 20 MiB; the run goes on after the failed write
    r = sh(img, "dd if=/dev/zero of=/big bs=1M count=100; echo dd=$?; busybox df -k / | tail -1; "
                "cat /etc/motd", "--read-write", "--keep", "--storage-opt", "size=20m", "--name", name)
    assert r.returncode == 0, r
    assert "No space left on device" in r.stderr and "dd=1" in r.stdout, r
    size_kib = int(r.stdout.split("\n")[1].split()[1])
    assert 19 * 1024 <= size_kib <= 21 * 1024, r                # the root's file system is the 20 MiB layer
    assert r.stdout.endswith(ib.MOTD.decode()), r                # the run went on
    # the host's store grew by at most the limit (the kept layer), not 100 MiB
    cid = kept_id(r)
    # (rootless with subordinate ids, the first run also made the layers' uid-shifted copies,
    # <state>/userns: the image's size, not the sandbox's writes)
    grown = du(state) - before - (du(os.path.join(state, "userns")) if os.path.isdir(os.path.join(state, "userns"))
                                  else 0)
    assert grown <= 21 * MiB, (grown, r)
    assert du(os.path.join(state, "containers", cid)) <= 21 * MiB
    # the full layer was recorded once, as a storage limit
    ev = [e for e in audit_events(runner, state, name) if e["type"] == "limit_exceeded"]
    assert len(ev) == 1 and ev[0]["limit"]["name"] == "storage" and ev[0]["limit"]["value"] == 20 * MiB, ev
    assert "pysandbox: 1 limit exceeded" in r.stderr, r
    # without --keep nothing of the layer is left on the host; space freed is writable again
    r = sh(img, "dd if=/dev/zero of=/big bs=1M count=100 2>/dev/null; echo dd=$?; rm /big; "
                "echo after > /etc/after && cat /etc/after", "--read-write", "--storage-opt", "size=20m")
    assert r.returncode == 0 and r.stdout == "dd=1\nafter\n", r
    assert os.listdir(os.path.join(state, "containers")) == [cid]


def test_default_limit_and_profile_key(img, tmp_profile):
    """No flag: the documented default (2 GiB) is in force, never an unlimited layer; the profile
    key sets it; the flag overrides the profile."""
    r = sh(img, "busybox df -k / | tail -1", "--read-write")
    assert r.returncode == 0 and int(r.stdout.split()[1]) == 2 * 1024 * 1024, r
    prof = tmp_profile('extends: strict\nfilesystem:\n  root: {image: "busybox:test"}\n  read_only: false\n'
                       '  storage: {size: 30m}\n')
    r = cli(img, "run", "--profile", prof, "--", "/bin/sh", "-c",
            "busybox df -k / | tail -1; dd if=/dev/zero of=/f bs=1M count=40 2>/dev/null; echo dd=$?")
    assert r.returncode == 0 and int(r.stdout.split()[1]) == 30 * 1024 and r.stdout.endswith("dd=1\n"), r
    r = cli(img, "run", "--profile", prof, "--storage-opt", "size=40m", "--", "/bin/sh", "-c",
            "busybox df -k / | tail -1")
    assert r.returncode == 0 and int(r.stdout.split()[1]) == 40 * 1024, r
    # files, not only bytes, are bounded: one inode per 4 KiB of the limit
    r = sh(img, "i=0; while [ $i -lt 2000 ]; do touch /f$i 2>/dev/null || break; i=$((i+1)); done; echo $i",
           "--read-write", "--storage-opt", "size=4m")
    assert r.returncode == 0 and int(r.stdout) < 1100, r


def test_keep_diff_commit_still_work(img):
    runner, state, _ = img
    r = sh(img, "echo new > /etc/motd; rm /etc/layer2; mkdir -p /opt/x/y && echo deep > /opt/x/y/f; "
                "ln /opt/x/y/f /opt/x/hard; ln -s ../etc/motd /lnk; "
                "rm -r /usr/share/data && mkdir /usr/share/data && echo only > /usr/share/data/only",
           "--read-write", "--keep", "--storage-opt", "size=10m")
    assert r.returncode == 0, r
    cid = kept_id(r)
    d = cli(img, "diff", cid)
    assert d.returncode == 0, d
    lines = set(d.stdout.splitlines())
    for want in ("C /etc/motd", "D /etc/layer2", "A /opt/x/y/f", "A /opt/x/hard", "A /lnk",
                 "A /usr/share/data/only", "D /usr/share/data/c"):
        assert want in lines, (want, d)
    upper = os.path.join(state, "containers", cid, "upper")
    st = os.stat(os.path.join(upper, "opt/x/y/f"))
    assert st.st_nlink == 2                                      # the hard link stayed one inode
    wh = os.lstat(os.path.join(upper, "etc/layer2"))
    assert wh.st_rdev == 0 and (wh.st_mode & 0o170000) == 0o020000   # the whiteout stayed a whiteout
    c = cli(img, "commit", cid, "ovsize:committed")
    assert c.returncode == 0, c
    r = cli(img, "run", "--profile", "strict", "--image", "ovsize:committed", "--", "/bin/sh", "-c",
            "cat /etc/motd /opt/x/hard /lnk; ls /usr/share/data; test -e /etc/layer2 || echo gone; "
            "stat -c '%u %h' /opt/x/y/f")
    assert r.returncode == 0 and r.stdout.split() == ["new", "deep", "new", "only", "gone", "0", "2"], r


def test_unenforceable_or_meaningless_requests_fail_closed(img):
    runner, state, _ = img
    # larger than this machine's memory and swap: a tmpfs would not stop the program at the limit
    r = sh(img, "echo ran", "--read-write", "--storage-opt", "size=100t")
    assert r.returncode == 125 and r.stdout == "", r
    assert len(r.stderr.strip().splitlines()) == 1 and "cannot be enforced" in r.stderr, r
    assert os.listdir(os.path.join(state, "containers")) == []   # nothing left on the host
    for bad, what in (("size=0", "positive"), ("size=lots", "invalid size"), ("quota=1g", "unknown option")):
        r = sh(img, "echo ran", "--read-write", "--storage-opt", bad)
        assert r.returncode == 2 and what in r.stderr and r.stdout == "", r
    r = runner("run", "--profile", "strict", "--storage-opt", "size=1g", "--", "/bin/true")
    assert r.returncode == 2 and "needs --image" in r.stderr, r
    # the legitimate use next to it
    r = sh(img, "echo ran", "--read-write", "--storage-opt", "size=1g")
    assert r.returncode == 0 and r.stdout == "ran\n", r


def test_the_layer_is_charged_to_the_sandbox_memory(img):
    """The layer is memory: on this v1 kernel tmpfs pages are charged to the writer's memory cgroup,
    so under --memory a layer larger than the memory limit ends in the OOM killer, not in the
    host's memory."""
    r = sh(img, "dd if=/dev/zero of=/big bs=1M count=100 2>/dev/null; echo dd=$?", "--read-write",
           "--storage-opt", "size=200m", "--memory", "48m")
    assert r.stdout == "dd=137\n" and "killed by OOM" in r.stderr, r      # the writer, by the OOM killer
    r = sh(img, "dd if=/dev/zero of=/big bs=1M count=20 2>/dev/null; echo dd=$?", "--read-write",
           "--storage-opt", "size=200m", "--memory", "48m")
    assert r.returncode == 0 and r.stdout == "dd=0\n", r


def test_python_api_launch_server_limits_the_layer(root_runner, shared_tmp):
    """The Python API launches through its launch server (PID 1 cloned by a template process that
    re-creates the descriptors): the layer's tmpfs and its descriptor travel that way too."""
    import sys
    state = shared_tmp / "state"
    ib.write_docker_save(str(shared_tmp / "save.tar"))
    env = dict(os.environ, PYSANDBOX_STATE_DIR=str(state))
    r = root_runner("image", "import", str(shared_tmp / "save.tar"), env={"PYSANDBOX_STATE_DIR": str(state)})
    assert r.returncode == 0, r
    code = ("from sandbox.api import Sandbox\n"
            "sb = Sandbox('strict', image='busybox:test', read_only=False, storage_opt='size=20m')\n"
            "for i in range(2):\n"
            "    r = sb.run(['/bin/sh', '-c', 'dd if=/dev/zero of=/big bs=1M count=50 2>/dev/null; echo dd=$?; "
            "rm /big; echo ok > /ok && cat /ok'])\n"
            "    print(r.exit_code, r.stdout.decode().split(), [e['limit']['name'] for e in r.events "
            "if e.get('type') == 'limit_exceeded'])\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 0 and p.stdout == "0 ['dd=1', 'ok'] []\n" * 2, p
    assert os.listdir(state / "containers") == []
