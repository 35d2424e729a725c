"""The one of each helper (issue 21): sandbox/fsutil.py (atomic write, lock), sandbox/procid.py
(process identity), sandbox/store/treewalk.py (the descriptor walk the layer seal and the tar packer
share). No root, no kernel features beyond plain files and /proc."""
from __future__ import annotations

import errno
import json
import os
import stat
import subprocess
import sys

import pytest

from sandbox import fsutil, procid
from sandbox.store import images, treewalk


# --------------------------------------------------------------------------- atomic write

def test_atomic_write_replaces_and_leaves_no_temp_file(tmp_path):
    p = tmp_path / "f.json"
    fsutil.atomic_write_json(p, {"a": 1}, indent=1)
    fsutil.atomic_write(p, b"second")
    assert p.read_bytes() == b"second"
    assert os.listdir(tmp_path) == ["f.json"]
    assert stat.S_IMODE(os.stat(p).st_mode) == 0o600            # the default: private


def test_atomic_write_mode_is_explicit_not_the_umask(tmp_path):
    old = os.umask(0o077)
    try:
        fsutil.atomic_write(tmp_path / "pub", "x", mode=0o644)
        fsutil.atomic_write(tmp_path / "asked", "x", mode=None)      # open()'s: 0666 less the umask
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "pub").st_mode) == 0o644
    assert stat.S_IMODE(os.stat(tmp_path / "asked").st_mode) == 0o600


def test_atomic_write_failure_keeps_the_old_content(tmp_path):
    p = tmp_path / "f.json"
    fsutil.atomic_write_json(p, {"old": True})
    with pytest.raises(TypeError):
        fsutil.atomic_write_json(p, {"bad": object()})                 # fails before anything is written
    with pytest.raises(TypeError):
        fsutil.atomic_write(p, 42)                                     # fails while writing the temp file
    assert json.loads(p.read_text()) == {"old": True}
    assert os.listdir(tmp_path) == ["f.json"]


def test_atomic_write_never_follows_a_planted_temp_name(tmp_path):
    """The temp file is created O_EXCL|O_NOFOLLOW: a symlink at a guessed name is no way out."""
    (tmp_path / "target").write_text("keep")
    fsutil.atomic_write(tmp_path / "f", "new")
    assert (tmp_path / "target").read_text() == "keep" and (tmp_path / "f").read_text() == "new"


# --------------------------------------------------------------------------- lock

def test_lock_is_exclusive_and_released_with_the_descriptor(tmp_path):
    p = tmp_path / "lock"
    with fsutil.locked(p) as fd:
        assert fd >= 0
        code = f"import sys; sys.path[:0] = {sys.path!r}\nfrom sandbox import fsutil\n" \
               f"try:\n    fsutil.lock({str(p)!r}, blocking=False)\nexcept BlockingIOError:\n    print('held')"
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
        assert out.stdout == "held\n", out
    fd = fsutil.lock(p, blocking=False)                                 # free again
    os.close(fd)


def test_shared_locks_coexist_and_exclude_an_exclusive_one(tmp_path):
    p = tmp_path / "alive"
    a = fsutil.lock(p, shared=True)
    try:
        b = fsutil.lock(p, shared=True, create=False)   # (another open file description: flock is per open)
        os.close(b)
        code = f"import sys; sys.path[:0] = {sys.path!r}\nfrom sandbox import fsutil\n" \
               f"try:\n    fsutil.lock({str(p)!r}, create=False, blocking=False)\nexcept BlockingIOError:\n    print('alive')"
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
        assert out.stdout == "alive\n", out
    finally:
        os.close(a)


def test_lock_without_create_refuses_a_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        fsutil.lock(tmp_path / "none", create=False)
    assert not (tmp_path / "none").exists()


# --------------------------------------------------------------------------- process identity

def test_identity_is_pid_and_start_time():
    me = os.getpid()
    start = procid.start_time(me)
    assert isinstance(start, int) and start > 0
    assert procid.same_process(me, start) and procid.running(me, start) and procid.running(me)
    assert not procid.same_process(me, start + 1)                      # the pid, but another process
    assert not procid.running(me, start + 1)
    assert not procid.same_process(me, None) and not procid.same_process(None, start)
    assert not procid.running(None) and not procid.running("1")


def test_a_gone_or_zombie_process_is_not_running():
    p = subprocess.Popen(["/bin/true"])
    start = None
    for _ in range(2000):                                               # a zombie until it is waited for
        fields = procid._stat_fields(p.pid)
        if fields and fields[0] == b"Z":
            start = procid.start_time(p.pid)
            break
        os.sched_yield()
    assert start is not None
    assert procid.same_process(p.pid, start)                           # still the same pid + start time
    assert not procid.running(p.pid, start)                            # but a zombie holds nothing
    p.wait()
    assert procid.start_time(p.pid) is None or procid.start_time(p.pid) != start
    assert not procid.same_process(p.pid, start)


def test_open_pidfd_names_the_recorded_process_only():
    me = os.getpid()
    start = procid.start_time(me)
    fd = procid.open_pidfd(me, start)
    if fd is None:
        pytest.skip("no pidfd_open on this kernel")
    os.close(fd)
    assert procid.open_pidfd(me, start + 1) is None
    assert procid.open_pidfd(None, start) is None


# --------------------------------------------------------------------------- the walk and the seal

def _tree(root):
    os.makedirs(root / "a" / "b" / "c")
    os.makedirs(root / "z")
    (root / "a" / "f").write_text("x")
    (root / "a" / "b" / "g").write_text("y")
    os.symlink("/etc", root / "a" / "l")
    os.mkfifo(root / "z" / "fifo")
    with open(os.path.join(os.fsencode(root), b"n\xff"), "w"):
        pass
    (root / "n\u00e9").write_text("")


def test_walk_is_by_directory_in_byte_order(tmp_path):
    _tree(tmp_path)
    arcs = [e.arc for e in treewalk.walk_tree(str(tmp_path), open_files=False)]
    assert arcs == ["a", "n\u00e9", os.fsdecode(b"n\xff"), "z",          # é is c3 a9 < ff
                    "a/b", "a/f", "a/l", "a/b/c", "a/b/g", "z/fifo"]


def test_walk_opens_what_it_yields_and_reads_links(tmp_path):
    _tree(tmp_path)
    seen = {}
    for e in treewalk.walk_tree(str(tmp_path)):
        if stat.S_ISREG(e.st.st_mode) or stat.S_ISDIR(e.st.st_mode):
            assert e.fd >= 0 and os.fstat(e.fd).st_ino == e.st.st_ino
        seen[e.arc] = e
    assert seen["a/l"].link == "/etc" and seen["z/fifo"].fd == -1


def test_walk_limits(tmp_path):
    _tree(tmp_path)
    with pytest.raises(treewalk.TreeTooLarge, match="more than 3 entries"):
        list(treewalk.walk_tree(str(tmp_path), max_entries=3))
    with pytest.raises(treewalk.TreeTooLarge, match="deeper than 2 directories"):
        list(treewalk.walk_tree(str(tmp_path), max_depth=2))


def test_walk_refuses_a_directory_swapped_after_listing(tmp_path):
    """A directory replaced (another inode) between its listing and its descent: TreeChanged."""
    _tree(tmp_path)
    it = treewalk.walk_tree(str(tmp_path), open_files=False)
    for e in it:
        if e.arc == "z":                                   # the root's listing is done: swap a/ now
            os.rename(tmp_path / "a", tmp_path / "a.old")
            os.makedirs(tmp_path / "a")
            break
    with pytest.raises(treewalk.TreeChanged):
        list(it)


def test_walk_never_follows_a_directory_swapped_for_a_symlink(tmp_path):
    _tree(tmp_path)
    it = treewalk.walk_tree(str(tmp_path), open_files=False)
    for e in it:
        if e.arc == "z":
            os.rename(tmp_path / "a", tmp_path / "a.old")
            os.symlink("/etc", tmp_path / "a")
            break
    with pytest.raises(treewalk.TreeChanged):
        list(it)


def test_seal_changes_with_any_change_and_only_then(tmp_path):
    _tree(tmp_path)
    s1 = images.tree_seal(str(tmp_path))
    assert images.tree_seal(str(tmp_path)) == s1 and s1.startswith("sha256:")
    os.chmod(tmp_path / "a" / "b" / "g", 0o600)
    s2 = images.tree_seal(str(tmp_path))
    assert s2 != s1
    (tmp_path / "a" / "b" / "c" / "new").write_text("")
    assert images.tree_seal(str(tmp_path)) != s2


def test_seal_of_an_unreadable_directory(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root reads a mode-000 directory")
    _tree(tmp_path)
    os.chmod(tmp_path / "a" / "b", 0)
    try:
        s1 = images.tree_seal(str(tmp_path))                           # sealed by its own inode and ctime
        assert s1 == images.tree_seal(str(tmp_path))
    finally:
        os.chmod(tmp_path / "a" / "b", 0o755)


def test_seal_of_a_vanishing_root_is_an_oserror(tmp_path):
    with pytest.raises(OSError) as e:
        images.tree_seal(str(tmp_path / "none"))
    assert e.value.errno == errno.ENOENT


def test_read_json_object_is_bounded_and_an_object(tmp_path):
    """fsutil.read_json_object, the one bounded reader of the JSON files stores and callers hand
    us (runtime state and config.json, a layer's owners.json): the limit, not JSON, not an object."""
    from sandbox.fsutil import read_json_object
    p = tmp_path / "f.json"
    p.write_text('{"a": [1, 2]}')
    assert read_json_object(p, 100) == {"a": [1, 2]}
    for text, why in (('{"a": "' + "x" * 200 + '"}', "larger than 100 bytes"), ("{nope", "not JSON"),
                      ("[1]", "not a JSON object"), ("[" * 50 + "]" * 50, "not a JSON object")):
        p.write_text(text)
        with pytest.raises(ValueError, match=why):
            read_json_object(p, 100)
    with pytest.raises(FileNotFoundError):
        read_json_object(tmp_path / "missing", 100)
