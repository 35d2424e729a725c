"""Hole 5: tar header bombs. `image import` must refuse an archive that would make it hold or
write unbounded amounts, with one line, exit 2, bounded memory and nothing left in the store.

Python's tarfile reads a whole PAX extended header / GNU long name into memory before looking at
it, keeps every member (with its PAX headers), accumulates global PAX headers, walks backwards on
a negative size and follows sparse maps of any length. The bombs below are built here, small on
disk (gzip/bzip2) and huge once expanded. Each import runs as root and as the unprivileged user
through the real CLI; its peak RSS is measured with getrusage(RUSAGE_CHILDREN) in a wrapper
process whose only child is the import.
"""
from __future__ import annotations

import bz2
import io
import json
import os
import shutil
import subprocess
import tempfile
import tarfile
import zlib

import pytest

import imagebuild as ib
from conftest import PYSANDBOX

MiB = 1 << 20
RSS_BOUND_KB = 100 * 1024          # peak RSS of a refused import (a bare import is ~30 MB)

_WRAP = ("import resource, subprocess, sys\n"
         "p = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
         "sys.stdout.write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) + '\\n' + p.stdout)\n"
         "sys.stderr.write(p.stderr)\n"
         "sys.exit(p.returncode)\n")


def import_measured(runner, state, path, *args):
    """(returncode, stdout, stderr, peak RSS in KiB) of `pysandbox image import ARGS PATH bomb`."""
    kw = dict(user=runner.uid, group=runner.gid, extra_groups=[]) if runner.rootless else {}
    p = subprocess.run(["/usr/bin/python3", "-c", _WRAP, PYSANDBOX, "image", "import", *args, path, "bomb"],
                       capture_output=True, text=True, timeout=300, cwd="/tmp",
                       env=runner.env({"PYSANDBOX_STATE_DIR": state}), **kw)
    rss, _, out = p.stdout.partition("\n")
    return p.returncode, out, p.stderr, int(rss)


def store_is_empty(state: str) -> bool:
    if os.path.exists(os.path.join(state, "images.json")):
        return False
    for d in ("layers", "tmp", "containers"):
        p = os.path.join(state, d)
        if os.path.isdir(p) and os.listdir(p):
            return False
    return True


# --------------------------------------------------------------------------- raw tar pieces

def hdr(name: str, typ: bytes, size: int, fmt=tarfile.USTAR_FORMAT) -> bytes:
    ti = tarfile.TarInfo(name)
    ti.type, ti.size, ti.mode, ti.mtime = typ, size, 0o644, 1700000000
    return ti.tobuf(format=fmt)


def pad(n: int) -> bytes:
    return b"\0" * (-n % 512)


def pax_record(key: bytes, value_len: int) -> tuple[bytes, int]:
    """(prefix up to the value, total record length) of a PAX record whose value is value_len bytes."""
    body = len(key) + value_len + 3             # ' ' '=' '\n'
    n = body + 1
    while len(str(n)) + body != n:
        n = len(str(n)) + body
    return b"%d %s=" % (n, key), n


def big_ext(typ: bytes, key: bytes, value_len: int, fill: bytes = b"a"):
    """An extended header (PAX x/g with one record of value_len bytes, or GNU L/K of value_len
    bytes), streamed in 1 MiB chunks."""
    if typ in (tarfile.XHDTYPE, tarfile.XGLTYPE):
        prefix, total = pax_record(key, value_len)
        yield hdr("././@PaxHeader", typ, total)
        yield prefix
        tail = b"\n"
    else:
        total = value_len
        yield hdr("././@LongLink", typ, total, tarfile.GNU_FORMAT)
        prefix, tail = b"", b""
    left = value_len
    while left:
        n = min(left, MiB)
        yield fill * n
        left -= n
    yield tail + pad(total)


def member(name: str, data: bytes = b"") -> bytes:
    return hdr(name, tarfile.REGTYPE, len(data)) + data + pad(len(data))


END = b"\0" * 1024


def write_stream(path: str, chunks, comp: str = "gz") -> None:
    c = zlib.compressobj(6, zlib.DEFLATED, 31) if comp == "gz" else bz2.BZ2Compressor(9) if comp == "bz2" else None
    with open(path, "wb") as f:
        for ch in chunks:
            f.write(c.compress(ch) if c else ch)
        if c:
            f.write(c.flush())


def zeros(n: int):
    while n:
        k = min(n, MiB)
        yield b"\0" * k
        n -= k


# --------------------------------------------------------------------------- the bombs

def bomb_pax_path(p):            # the reviewer's bomb: one PAX path= of 200 MiB
    write_stream(p, [*big_ext(tarfile.XHDTYPE, b"path", 200 * MiB), member("x"), END])


def bomb_gnu_longname(p):
    write_stream(p, [*big_ext(tarfile.GNUTYPE_LONGNAME, b"", 200 * MiB), member("x"), END])


def bomb_gnu_longlink(p):
    write_stream(p, [*big_ext(tarfile.GNUTYPE_LONGLINK, b"", 200 * MiB),
                     hdr("l", tarfile.SYMTYPE, 0), END])


def bomb_global_pax(p):          # global headers accumulate in tarfile.pax_headers for the whole archive
    chunks = []
    for i in range(40):
        chunks += [*big_ext(tarfile.XGLTYPE, b"comment%d" % i, 600 * 1024), member(f"f{i}")]
    write_stream(p, chunks + [END])


def bomb_header_chain(p):        # many small extended headers in front of one member (recursion, memory)
    chunks = []
    for i in range(5000):
        chunks += list(big_ext(tarfile.XHDTYPE, b"comment", 100))
    write_stream(p, chunks + [member("x"), END])


def bomb_deep(p):
    _pax_named(p, "/".join(["d"] * 300) + "/f")


def bomb_long_path(p):
    _pax_named(p, "/".join(["n" * 200] * 30))      # 6029 bytes, components of 200


def _pax_named(p, name):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        ti = tarfile.TarInfo(name)
        tf.addfile(ti, io.BytesIO(b""))
    write_stream(p, [buf.getvalue()])


def bomb_members(p):
    write_stream(p, [member(f"f{i}") for i in range(3000)] + [END])


def bomb_ratio(p):               # bzip2: 64 MiB of zeros in ~200 bytes
    write_stream(p, [hdr("zero", tarfile.REGTYPE, 64 * MiB), *zeros(64 * MiB), END], comp="bz2")


def bomb_stream(p):              # gzip of 32 MiB of zeros, refused with a lowered stream limit
    write_stream(p, [hdr("zero", tarfile.REGTYPE, 32 * MiB), *zeros(32 * MiB), END])


def bomb_huge_member(p):         # a 1 TiB member declared, a few bytes present
    write_stream(p, [_declared("big", 1 << 40), b"x" * 512, END])


def _declared(name, size):
    ti = tarfile.TarInfo(name)
    ti.size = size
    return ti.tobuf(format=tarfile.PAX_FORMAT)


def bomb_size(p):                # 4 MiB of data, refused with --limit size=1M
    write_stream(p, [hdr("a", tarfile.REGTYPE, 2 * MiB), *zeros(2 * MiB), hdr("b", tarfile.REGTYPE, 2 * MiB),
                     *zeros(2 * MiB), END])


def bomb_sparse(p):              # GNU sparse: tarfile would follow an extension-block chain of any length
    h = bytearray(hdr("s", tarfile.GNUTYPE_SPARSE, 0, tarfile.GNU_FORMAT))
    write_stream(p, [bytes(h), END], comp="none")


def bomb_negative_size(p):       # base-256 negative size: random access would walk backwards for ever
    h = bytearray(member("a") + hdr("b", tarfile.REGTYPE, 0, tarfile.GNU_FORMAT))
    off = 512 + 124
    h[off:off + 12] = b"\xff" * 11 + b"\x00"                    # -256 in base-256
    h[off - 124 + 148:off - 124 + 156] = b" " * 8
    chk = sum(h[512:1024])
    h[512 + 148:512 + 156] = b"%06o\0 " % chk
    write_stream(p, [bytes(h), END], comp="none")


def bomb_json_size(p):           # docker save whose manifest.json is 6 MiB
    _docker(p, manifest=b"[" + b"1," * (3 * MiB) + b"1]")


def bomb_json_depth(p):          # ... or nested 100000 levels (json.loads would raise RecursionError)
    _docker(p, manifest=b"[" * 100000 + b"]" * 100000)


def bomb_json_types(p):          # ... or of the wrong types where dicts are expected
    _docker(p, manifest=json.dumps([{"Config": "c.json", "Layers": ["l.tar"]}]).encode(), config=b'["x"]')


def _docker(p, manifest: bytes, config: bytes = b"{}"):
    write_stream(p, [member("c.json", config), member("manifest.json", manifest), END])


def bomb_xz_dictionary(p):
    """An xz stream whose block header declares a 3 GiB LZMA2 dictionary (liblzma fills as much of
    it as the stream decompresses to; lzma.LZMAFile sets no memory limit)."""
    import lzma
    import struct
    tar = member("f", b"hello\n" * 1000) + END
    x = bytearray(lzma.compress(tar, format=lzma.FORMAT_XZ,
                                filters=[{"id": lzma.FILTER_LZMA2, "dict_size": 1 << 20}]))
    size = (x[12] + 1) * 4                     # the block header follows the 12-byte stream header
    bh = x[12:12 + size]
    assert bh[1] == 0 and bh[2] == 0x21 and bh[3] == 1    # no optional sizes; LZMA2, 1 property byte
    bh[4] = 39                                            # dictionary 3 GiB
    bh[-4:] = struct.pack("<I", zlib.crc32(bytes(bh[:-4])))
    x[12:12 + size] = bh
    with open(p, "wb") as f:
        f.write(bytes(x))


NORATIO = ("--limit", "ratio=1000000")     # each test shows its own bound, whatever the ratio

BOMBS = {
    # name: (builder, extra CLI args, expected words in the one line)
    "pax_path_default": (bomb_pax_path, (), "extended header at offset 0 declares 210MB, more than the 1.05MB allowed"),
    "pax_path": (bomb_pax_path, NORATIO, "extended header at offset 0 declares 210MB, more than the 1.05MB allowed"),
    "gnu_longname": (bomb_gnu_longname, NORATIO, "extended header at offset 0 declares 210MB"),
    "gnu_longlink": (bomb_gnu_longlink, NORATIO, "extended header at offset 0 declares 210MB"),
    "global_pax": (bomb_global_pax, NORATIO, "global PAX headers exceed 1.05MB"),
    "header_chain": (bomb_header_chain, (), "more than 8 extended headers in front of one member"),
    "deep": (bomb_deep, (), "301 path components, more than 256"),
    "long_path": (bomb_long_path, (), "name is 6029 bytes, more than 4096"),
    "members": (bomb_members, ("--limit", "members=2000"), "more than 2000 members (limit members"),
    "ratio": (bomb_ratio, (), "more than 2000 times its compressed size"),
    "stream": (bomb_stream, ("--limit", "stream=8M", *NORATIO), "decompresses to more than 8.39MB"),
    "huge_member": (bomb_huge_member, (), "member 'big': claims 1.1TB, more than the 17.2GB allowed for one file"),
    "size": (bomb_size, ("--limit", "size=3M"), "member 'b': claims 2.1MB: the import would unpack more than"),
    "sparse": (bomb_sparse, (), "sparse files are not supported"),
    "negative_size": (bomb_negative_size, (), "negative size"),
    "json_size": (bomb_json_size, (), "manifest.json is 6.29MB, more than 4.19MB (limit json"),
    "json_depth": (bomb_json_depth, (), "manifest.json is nested more than 64 levels"),
    "json_types": (bomb_json_types, (), "malformed image metadata"),
    "xz_dictionary": (bomb_xz_dictionary, (), "the xz stream needs more than 256 MiB of memory to decompress"),
}


@pytest.fixture(scope="module")
def bombs():
    d = tempfile.mkdtemp(prefix="pysbx-images-bombs-", dir="/tmp")
    os.chmod(d, 0o755)                  # readable by the unprivileged user too
    out = {}
    try:
        for name, (build, _, _) in BOMBS.items():
            p = os.path.join(d, f"{name}.tar")
            build(p)
            os.chmod(p, 0o644)
            out[name] = p
        yield out
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.mark.parametrize("name", list(BOMBS))
def test_tar_bomb_is_refused_with_bounded_memory(runner, shared_tmp, bombs, name):
    os.chown(shared_tmp, runner.uid, runner.gid)
    state = str(shared_tmp / "state")
    path = bombs[name]
    assert os.path.getsize(path) < 2 * MiB          # small on disk
    _, extra, expect = BOMBS[name]
    rc, out, err, rss = import_measured(runner, state, path, *extra)
    assert rc == 2, (rc, out, err)
    assert err.count("\n") == 1 and expect in err and "Traceback" not in err, err
    assert rss < RSS_BOUND_KB, f"peak RSS {rss} KiB"
    assert store_is_empty(state), os.listdir(state)


def test_large_pax_headers_are_not_kept(runner, shared_tmp):
    """300 members each with a 900 KiB PAX comment (270 MB of headers, within the per-member bound):
    tarfile keeps every member's PAX headers; the import keeps none, so memory stays bounded and
    the (harmless) archive imports."""
    os.chown(shared_tmp, runner.uid, runner.gid)
    state, path = str(shared_tmp / "state"), str(shared_tmp / "comments.tar.gz")
    chunks = []
    for i in range(300):
        chunks += [*big_ext(tarfile.XHDTYPE, b"comment", 900 * 1024, fill=b"c"), member(f"f{i}", b"%d\n" % i)]
    write_stream(path, chunks + [END])
    os.chmod(path, 0o644)
    rc, out, err, rss = import_measured(runner, state, path)
    assert rc == 0 and "imported bomb:latest" in out, (rc, out, err)
    assert rss < RSS_BOUND_KB, f"peak RSS {rss} KiB"


def test_limits_can_be_raised_and_bad_limits_are_refused(runner, shared_tmp, bombs):
    os.chown(shared_tmp, runner.uid, runner.gid)
    state = str(shared_tmp / "state")
    rc, out, err, _ = import_measured(runner, state, bombs["members"], "--limit", "members=5000")
    assert rc == 0 and "imported bomb:latest" in out, (rc, out, err)
    rc, out, err, _ = import_measured(runner, state, bombs["members"], "--limit", "members=lots")
    assert rc == 2 and err.count("\n") == 1 and "invalid members 'lots'" in err, err
    rc, out, err, _ = import_measured(runner, state, bombs["members"], "--limit", "nosuch=1")
    assert rc == 2 and err.count("\n") == 1 and "invalid limit 'nosuch=1'" in err, err


def test_legitimate_long_names_import_and_run(runner, shared_tmp):
    """A real image with a 3 kB PAX path, a GNU long name and a 200 kB PAX header still imports and runs."""
    os.chown(shared_tmp, runner.uid, runner.gid)
    state, path = str(shared_tmp / "state"), str(shared_tmp / "long.tar")
    longdir = "/".join(["x" * 250] * 12)                       # 3011 bytes, 12 levels
    with open(ib.BUSYBOX, "rb") as f:
        bb = f.read()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        def add(name, kind=tarfile.REGTYPE, data=b"", mode=0o644, pax=None, link=""):
            ti = tarfile.TarInfo(name)
            ti.type, ti.size, ti.mode, ti.linkname = kind, len(data), mode, link
            if pax:
                ti.pax_headers = pax
            tf.addfile(ti, io.BytesIO(data) if kind == tarfile.REGTYPE else None)
        add("bin", tarfile.DIRTYPE, mode=0o755)
        add("bin/busybox", data=bb, mode=0o755, pax={"comment": "c" * 200_000})
        for a in ("sh", "cat"):
            add(f"bin/{a}", tarfile.SYMTYPE, link="busybox")
        for d in ("etc", "tmp", "proc", "dev"):
            add(d, tarfile.DIRTYPE, mode=0o755)
        parts = longdir.split("/")
        for i in range(1, len(parts) + 1):
            add("/".join(parts[:i]), tarfile.DIRTYPE, mode=0o755)
        add(longdir + "/deep.txt", data=b"deep ok\n")
    gnu = io.BytesIO()
    with tarfile.open(fileobj=gnu, mode="w", format=tarfile.GNU_FORMAT) as tf:   # GNU ././@LongLink
        ti = tarfile.TarInfo("etc/" + "g" * 200)
        ti.size = 8
        tf.addfile(ti, io.BytesIO(b"gnu  ok\n"))
    with open(path, "wb") as f:
        f.write(_concat(buf.getvalue(), gnu.getvalue()))
    os.chmod(path, 0o644)
    rc, out, err, rss = import_measured(runner, state, path)
    assert rc == 0, (rc, out, err)
    assert rss < RSS_BOUND_KB
    r = runner("run", "--profile", "strict", "--image", "bomb", "--", "/bin/sh", "-c",
               f"cat /{longdir}/deep.txt /etc/{'g' * 200}", env={"PYSANDBOX_STATE_DIR": state})
    assert r.returncode == 0 and r.stdout == "deep ok\ngnu  ok\n", r


def _concat(a: bytes, b: bytes) -> bytes:
    """Two tar archives as one: a without its end-of-archive blocks, then b."""
    tf = tarfile.open(fileobj=io.BytesIO(a))
    last = tf.getmembers()[-1]
    end = last.offset_data + ((last.size + 511) // 512) * 512
    return a[:end] + b




def test_commit_is_bounded_too(runner, shared_tmp):
    """commit packs a sandbox's writable layer (written by the program) and imports it with the
    same bounds: a layer over a bound is refused with one line; --limit raises it."""
    import re
    os.chown(shared_tmp, runner.uid, runner.gid)
    state = str(shared_tmp / "state")
    ib.write_docker_save(str(shared_tmp / "save.tar"))
    os.chown(shared_tmp / "save.tar", runner.uid, runner.gid)
    env = {"PYSANDBOX_STATE_DIR": state}
    assert runner("image", "import", str(shared_tmp / "save.tar"), env=env).returncode == 0
    r = runner("run", "--profile", "strict", "--image", "busybox:test", "--read-write", "--keep", "--",
               "/bin/sh", "-c", "mkdir /many && i=0; while [ $i -lt 50 ]; do touch /many/f$i; i=$((i+1)); done",
               env=env)
    assert r.returncode == 0, r
    cid = re.search(r"kept the writable layer of (\S+)", r.stderr).group(1)
    r = runner("commit", "--limit", "members=20", cid, "many:1", env=env)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "more than 20 entries (limit members" in r.stderr, r
    assert "many:1" not in runner("image", "ls", "-q", env=env).stdout
    r = runner("commit", cid, "many:2", env=env)
    assert r.returncode == 0, r
    r = runner("run", "--profile", "strict", "--image", "many:2", "--", "/bin/sh", "-c", "ls /many | wc -l", env=env)
    assert r.returncode == 0 and r.stdout.strip() == "50", r
