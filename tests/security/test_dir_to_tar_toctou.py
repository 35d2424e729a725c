"""Hole 10: TOCTOU in packing a directory into a tar (`image import DIR`, `commit`).

The packer walked by path (lstat, then listdir/open of the same path string): a program writing
the directory could swap a subdirectory for a symlink to a host directory between the two, and
the host directory's files went into the image. It now walks by descriptors (O_DIRECTORY|
O_NOFOLLOW openat relative to the parent's descriptor, fstat, readlinkat).

The first test is real: a sandbox (strict profile, the directory bind-mounted at /data) swaps 40
directories with symlinks to a host decoy directory as fast as it can (renameat2 RENAME_EXCHANGE,
~100k swaps/s) while the host imports the directory again and again, as root and rootless. The
sandbox cannot see the decoy; only the importer could follow the link. The second stands a racing
thread in for the sandbox (said plainly) against commit's packer of a writable layer, which in
real use only runs once the sandbox has stopped.
"""
from __future__ import annotations

import ctypes
import os
import subprocess
import tarfile
import threading
import time


from conftest import PYSANDBOX

SECRET = b"pysbx-images-toctou-host-secret-7d1c\n"

SWAP = r'''
import ctypes, os, sys, time
libc = ctypes.CDLL(None, use_errno=True)
decoy, n, secs = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
os.chdir("/data")
for i in range(n):
    os.mkdir(f"d{i}")
    with open(f"d{i}/inner", "w") as f:
        f.write("inner\n")
    os.symlink(decoy, f"d{i}.l")
open("started", "w").close()
names = [(f"d{i}".encode(), f"d{i}.l".encode()) for i in range(n)]
end, k = time.monotonic() + secs, 0
while time.monotonic() < end and not os.path.exists("/data/stop"):
    for a, b in names:
        if libc.renameat2(-100, a, -100, b, 2) != 0:      # RENAME_EXCHANGE: atomic swap
            sys.exit(f"renameat2: errno {ctypes.get_errno()}")
    k += 1
# leave every dN a directory again
for a, b in names:
    if os.path.islink(a):
        libc.renameat2(-100, a, -100, b, 2)
print("swaps", k * n)
'''


def _files_with_secret(root: str) -> list[str]:
    hits = []
    for dp, dns, fns in os.walk(root):
        for n in fns:
            p = os.path.join(dp, n)
            if os.path.isfile(p) and not os.path.islink(p):
                with open(p, "rb") as f:
                    if SECRET in f.read():
                        hits.append(p)
    return hits


def test_sandbox_swapping_dirs_for_symlinks_during_import(runner, shared_tmp):
    os.chown(shared_tmp, runner.uid, runner.gid)
    exp, decoy, state = shared_tmp / "exp", shared_tmp / "decoy", str(shared_tmp / "state")
    exp.mkdir()
    os.chmod(exp, 0o777)                 # the sandbox's (mapped) root writes it
    decoy.mkdir()
    (decoy / "secret").write_bytes(SECRET)          # readable by the importer, invisible to the sandbox
    os.chmod(decoy, 0o755)
    os.chmod(decoy / "secret", 0o644)
    (shared_tmp / "swap.py").write_text(SWAP)
    os.chmod(shared_tmp / "swap.py", 0o644)
    kw = dict(user=runner.uid, group=runner.gid, extra_groups=[]) if runner.rootless else {}
    sbx = subprocess.Popen([PYSANDBOX, "run", "--profile", "strict", "-v", f"{exp}:/data",
                            "-v", f"{shared_tmp}/swap.py:/swap.py:ro", "--",
                            "/usr/bin/python3", "/swap.py", str(decoy), "40", "60"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd="/tmp",
                           env=runner.env(), **kw)
    try:
        deadline = time.monotonic() + 30
        while not (exp / "started").exists():
            assert sbx.poll() is None, sbx.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.05)
        results = []
        for i in range(12):
            r = runner("image", "import", str(exp), f"toctou{i}", env={"PYSANDBOX_STATE_DIR": state})
            results.append(r)
        assert sbx.poll() is None, "the sandbox stopped swapping before the imports ended"
    finally:
        (exp / "stop").touch()
        out, err = sbx.communicate(timeout=60)
    assert sbx.returncode == 0 and out.startswith("swaps "), (out, err)
    assert int(out.split()[1]) > 1000, out           # it really raced (thousands of swaps during the imports; fewer under load)
    for r in results:
        # imported, or refused because the tree changed under the walk: never anything else
        assert r.returncode == 0 or (r.returncode == 2 and r.stderr.count("\n") == 1
                                     and "changed while being read" in r.stderr), r
    # the host decoy's contents never reached the store (nor anything but the tree's own files)
    assert _files_with_secret(os.path.join(state, "layers")) == []
    assert (decoy / "secret").read_bytes() == SECRET and sorted(os.listdir(decoy)) == ["secret"]
    # legitimate use: once nothing writes it, the directory imports whole
    r = runner("image", "import", str(exp), "final", env={"PYSANDBOX_STATE_DIR": state})
    assert r.returncode == 0, r
    r = runner("image", "inspect", "final", env={"PYSANDBOX_STATE_DIR": state})
    import json
    diff = json.loads(r.stdout)[0]["layers"][0]["path"]
    for i in range(40):
        d = os.path.join(diff, f"d{i}")
        assert os.path.isdir(d) and not os.path.islink(d) and open(os.path.join(d, "inner")).read() == "inner\n"
        assert os.readlink(os.path.join(diff, f"d{i}.l")) == str(decoy)      # stored as a link, not followed
    assert _files_with_secret(os.path.join(state, "layers")) == []


def test_commit_packer_racing_thread(root_runner, tmp_path):
    """A thread of this process stands in for the sandbox (commit packs a stopped sandbox's upper
    directory): it swaps directories of the 'upper' dir with symlinks to a decoy while
    containers._upper_to_tar packs it, 30 times. The decoy's file never appears in a tar."""
    from sandbox.store import containers
    from sandbox.store.images import ImageError
    upper, decoy = tmp_path / "upper", tmp_path / "decoy"
    upper.mkdir()
    decoy.mkdir()
    (decoy / "secret").write_bytes(SECRET)
    for i in range(40):
        (upper / f"d{i}").mkdir()
        (upper / f"d{i}" / "inner").write_text("inner\n")
        os.symlink(decoy, upper / f"d{i}.l")
    libc = ctypes.CDLL(None, use_errno=True)
    stop = threading.Event()
    names = [(str(upper / f"d{i}").encode(), str(upper / f"d{i}.l").encode()) for i in range(40)]

    def swap():
        while not stop.is_set():
            for a, b in names:
                libc.renameat2(-100, a, -100, b, 2)

    t = threading.Thread(target=swap)
    t.start()
    packed = refused = 0
    try:
        for k in range(30):
            tarpath = str(tmp_path / f"c{k}.tar")
            try:
                containers._upper_to_tar(str(upper), tarpath, {"id": "toctou", "rootless": False})
            except ImageError as e:
                assert "changed while being read" in str(e), e
                refused += 1
                continue
            packed += 1
            with tarfile.open(tarpath) as tf:
                for m in tf.getmembers():
                    assert not (m.name.endswith("/secret") or m.name == "secret"), m.name
                    if m.isreg():
                        assert SECRET not in tf.extractfile(m).read(), m.name
    finally:
        stop.set()
        t.join()
    assert packed + refused == 30
    # legitimate use: nothing racing, everything packed, links as links
    tarpath = str(tmp_path / "final.tar")
    for a, b in names:
        if os.path.islink(a):
            libc.renameat2(-100, a, -100, b, 2)
    containers._upper_to_tar(str(upper), tarpath, {"id": "toctou", "rootless": False})
    with tarfile.open(tarpath) as tf:
        names_in = {m.name: m for m in tf.getmembers()}
    assert all(names_in[f"d{i}/inner"].isreg() for i in range(40))
    assert all(names_in[f"d{i}.l"].issym() and names_in[f"d{i}.l"].linkname == str(decoy) for i in range(40))


def test_diff_listing_racing_thread(root_runner, tmp_path):
    """`pysandbox diff` lists a kept (or running) sandbox's writable layer. A thread stands in for
    the running sandbox, swapping its directories with symlinks to a host decoy: the decoy's
    entries are never listed."""
    import json
    from sandbox.store import containers
    from sandbox.store.images import ImageError, Store
    state, decoy = tmp_path / "state", tmp_path / "decoy"
    upper = state / "containers" / "toctoudiff" / "upper"
    upper.mkdir(parents=True)
    (state / "containers" / "toctoudiff" / "container.json").write_text(json.dumps({"id": "toctoudiff", "layers": []}))
    decoy.mkdir()
    (decoy / "secret").write_bytes(SECRET)
    for i in range(40):
        (upper / f"d{i}").mkdir()
        (upper / f"d{i}" / "inner").write_text("inner\n")
        os.symlink(decoy, upper / f"d{i}.l")
    libc = ctypes.CDLL(None, use_errno=True)
    names = [(str(upper / f"d{i}").encode(), str(upper / f"d{i}.l").encode()) for i in range(40)]
    stop = threading.Event()

    def swap():
        while not stop.is_set():
            for a, b in names:
                libc.renameat2(-100, a, -100, b, 2)

    store = Store(str(state), rootless=False)
    t = threading.Thread(target=swap)
    t.start()
    try:
        for k in range(30):
            try:
                out = containers.changes(store, "toctoudiff")
            except ImageError as e:
                assert "changed while being read" in str(e), e
                continue
            assert not [p for _, p in out if p.endswith("/secret")], out
    finally:
        stop.set()
        t.join()
    for a, b in names:
        if os.path.islink(a):
            libc.renameat2(-100, a, -100, b, 2)
    out = containers.changes(store, "toctoudiff")              # nothing racing: the whole layer, all added
    assert ("A", "/d0/inner") in out and ("A", "/d0.l") in out and len(out) == 120, out
