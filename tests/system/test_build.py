"""`pysandbox build` end to end, as root and as the unprivileged test user (conftest `img`: busybox:test
in a store of the runner's own): multi-step builds, the run-time config, the cache and its precise
invalidation, .dockerignore, whiteouts and opaque directories, multi-stage, errors."""
from __future__ import annotations

import json
import os
import re

import imagebuild as ib
from buildhelpers import build, run_img, steps
from buildhelpers import ctx_dir as _ctx
from conftest import single_id


APP = """\
# a small application image
ARG BASE=busybox:test
FROM ${BASE} AS base
LABEL org.example.name="demo app" version=1
ENV APP_HOME=/srv/app \\
    GREETING="hello world"
WORKDIR $APP_HOME
COPY conf/ ./conf/
COPY run.sh ./
RUN chmod 755 run.sh && echo "built with $GREETING" > built.txt
RUN rm /etc/motd && mkdir -p /var/cache/x && echo tmp > /var/cache/x/f
EXPOSE 8080/tcp 53/udp
USER nobody
ENTRYPOINT ["/bin/sh", "run.sh"]
CMD ["default-arg"]
"""
RUN_SH = 'echo "args=$* user=$(id -u) pwd=$(pwd) home=$APP_HOME greet=$GREETING"; cat conf/app.conf\n'


def test_multi_step_build_and_run_time_config(img):
    ctx = _ctx(img, {"Dockerfile": APP, "run.sh": RUN_SH, "conf/app.conf": "port=8080\n"})
    r = build(img, ctx)
    assert r.returncode == 0, r
    image_id = r.stdout.strip()
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", image_id)
    # ENTRYPOINT + CMD, USER, WORKDIR, ENV honoured by run --image
    r = run_img(img, "app:1")
    assert r.returncode == 0, r
    assert "args=default-arg user=65534 pwd=/srv/app home=/srv/app greet=hello world" in r.stdout, r
    assert "port=8080" in r.stdout
    for _ in range(2):                     # twice: the second run would take a plan-cache fast path
        r = run_img(img, "app:1", "given")            # the command given replaces CMD, after ENTRYPOINT
        assert "args=given " in r.stdout, r
    r = run_img(img, "app:1", opts=("-e", "GREETING=over"))          # -e over the image's Env
    assert "greet=over" in r.stdout, r
    # inspect / history show the OCI config
    r = ib.cli(img, "image", "inspect", "app:1")
    rec = json.loads(r.stdout)[0]
    cfg = rec["config"]
    assert cfg["Entrypoint"] == ["/bin/sh", "run.sh"] and cfg["Cmd"] == ["default-arg"]
    assert cfg["User"] == "nobody" and cfg["WorkingDir"] == "/srv/app"
    assert "GREETING=hello world" in cfg["Env"] and "APP_HOME=/srv/app" in cfg["Env"]
    assert cfg["ExposedPorts"] == {"8080/tcp": {}, "53/udp": {}}
    assert cfg["Labels"] == {"org.example.name": "demo app", "version": "1"}
    oci = json.loads(rec["config_json"])
    assert oci["rootfs"]["diff_ids"] == [la["digest"] for la in rec["layers"]] and rec["id"] == image_id
    made = [h for h in oci["history"] if h.get("comment") == "pysandbox build"]
    assert [h["empty_layer"] for h in made] == [True, True, False, False, False, False, False, True, True, True, True]
    assert len(rec["layers"]) == 3 + 5          # busybox:test's 3, then WORKDIR, 2 COPY, 2 RUN
    r = ib.cli(img, "image", "history", "app:1")
    assert "RUN /bin/sh -c chmod 755 run.sh" in r.stdout and "EXPOSE" in r.stdout


def test_whiteouts_and_opaque_directories(img):
    df = """FROM busybox:test
RUN rm /etc/motd && rm -r /usr/share/data && mkdir /usr/share/data && echo new > /usr/share/data/new
RUN echo later > /etc/later
"""
    ctx = _ctx(img, {"Dockerfile": df})
    r = build(img, ctx, tag="wh:1")
    assert r.returncode == 0, r
    r = run_img(img, "wh:1", "/bin/sh", "-c", "test -e /etc/motd && echo motd-present; ls /usr/share/data; cat /etc/later")
    assert r.returncode == 0, r
    assert "motd-present" not in r.stdout
    assert r.stdout.split() == ["new", "later"], r      # a, b, c of the layers below are hidden (opaque)
    # the layer itself: the stored diff has the whiteout and the opaque marker as overlay wants them
    state = img[1]
    rec = json.loads(ib.cli(img, "image", "inspect", "wh:1").stdout)[0]
    diff = os.path.join(state, "layers", rec["layers"][-2]["digest"][7:], "diff")
    st = os.lstat(os.path.join(diff, "etc", "motd"))
    assert (st.st_mode & 0o170000) == 0o020000 and st.st_rdev == 0
    opaque = set()
    for x in ("trusted.overlay.opaque", "user.overlay.opaque"):
        try:
            opaque.add(os.getxattr(os.path.join(diff, "usr", "share", "data"), x))
        except OSError:
            pass
    assert opaque == {b"y"}, opaque


def test_cache_hit_and_precise_invalidation(img):
    files = {"Dockerfile": "FROM busybox:test\nRUN echo one > /one\nCOPY a.txt /a.txt\nRUN cat /a.txt > /copy\n"
                           "COPY b.txt /b.txt\nRUN echo end > /end\n",
             "a.txt": "a1\n", "b.txt": "b1\n", ".dockerignore": "ignored.txt\n*.log\n", "ignored.txt": "x\n"}
    ctx = _ctx(img, files)
    first = build(img, ctx, tag="c:1")
    assert first.returncode == 0, first
    assert steps(first.stderr) == {2: "ran", 3: "ran", 4: "ran", 5: "ran", 6: "ran"}
    again = build(img, ctx, tag="c:1")
    assert again.returncode == 0, again
    assert steps(again.stderr) == {2: "cached", 3: "cached", 4: "cached", 5: "cached", 6: "cached"}
    assert again.stdout == first.stdout                  # the same image id
    # an ignored file changes nothing; b.txt changes the COPY of it and what follows only
    _ctx(img, {"ignored.txt": "changed\n", "new.log": "x\n", "b.txt": "b2\n"})
    third = build(img, ctx, tag="c:1")
    assert steps(third.stderr) == {2: "cached", 3: "cached", 4: "cached", 5: "ran", 6: "ran"}, third
    # a.txt: its COPY, the RUN reading it and everything after
    _ctx(img, {"a.txt": "a2\n"})
    fourth = build(img, ctx, tag="c:1")
    assert steps(fourth.stderr) == {2: "cached", 3: "ran", 4: "ran", 5: "ran", 6: "ran"}, fourth
    r = run_img(img, "c:1", "/bin/cat", "/copy", "/b.txt")
    assert r.stdout.split() == ["a2", "b2"]
    # --no-cache runs every step again
    fifth = build(img, ctx, "--no-cache", tag="c:1")
    assert set(steps(fifth.stderr).values()) == {"ran"}, fifth
    # image prune --build-cache forgets the steps (the image keeps its layers)
    r = ib.cli(img, "image", "prune", "--build-cache")
    assert r.returncode == 0 and "forgot" in r.stdout, r
    assert set(steps(build(img, ctx, tag="c:2").stderr).values()) == {"ran"}
    assert run_img(img, "c:1", "/bin/cat", "/end").stdout == "end\n"


def test_dockerignore_excludes_files(img):
    files = {"Dockerfile": "FROM busybox:test\nCOPY . /ctx/\n",
             ".dockerignore": "# comment\n*.secret\nbuild/**\n!build/keep.txt\n/node_modules\n",
             "a.secret": "s\n", "sub/b.secret": "s\n", "ok.txt": "ok\n", "build/x.o": "o\n",
             "build/keep.txt": "keep\n", "node_modules/m.js": "m\n"}
    ctx = _ctx(img, files)
    r = build(img, ctx, tag="ig:1")
    assert r.returncode == 0, r
    r = run_img(img, "ig:1", "/bin/find", "/ctx", "-type", "f")
    got = sorted(r.stdout.split())
    # Docker's rules: `*.secret` is anchored at the context root (sub/b.secret stays)
    assert got == ["/ctx/.dockerignore", "/ctx/Dockerfile", "/ctx/build/keep.txt", "/ctx/ok.txt",
                   "/ctx/sub/b.secret"], got


def test_multi_stage_copy_from(img):
    df = """ARG V=1
FROM busybox:test AS builder
ARG V
RUN mkdir -p /out && echo "artifact v$V" > /out/artifact && ln -s artifact /out/link
FROM busybox:test AS unused
RUN exit 1
FROM busybox:test
COPY --from=builder /out/ /opt/
COPY --from=0 --chmod=600 /out/artifact /opt/again
CMD ["/bin/cat", "/opt/artifact", "/opt/again"]
"""
    ctx = _ctx(img, {"Dockerfile": df})
    r = build(img, ctx, "--build-arg", "V=7", tag="ms:1")
    assert r.returncode == 0, r                          # the unused stage (RUN exit 1) is not built
    r = run_img(img, "ms:1")
    assert r.stdout.split() == ["artifact", "v7", "artifact", "v7"], r
    r = run_img(img, "ms:1", "/bin/sh", "-c", "stat -c '%a %U' /opt/again; readlink /opt/link")
    assert r.stdout.split() == ["600", "root", "artifact"], r


def test_copy_chown_and_user_names(img):
    df = "FROM busybox:test\nCOPY --chown=nobody:nogroup f /f\nCOPY --chown=123:456 f /g\n"
    ctx = _ctx(img, {"Dockerfile": df, "f": "x\n"})
    r = build(img, ctx, tag="own:1")
    assert r.returncode == 0, r
    r = run_img(img, "own:1", "/bin/stat", "-c", "%u:%g", "/f", "/g")
    if not single_id(img[0]):          # one id mapped (no subordinate ids): every file is root's inside
        assert r.stdout.split() == ["65534:65534", "123:456"], r
    bad = _ctx(img, {"Dockerfile": "FROM busybox:test\nCOPY --chown=nosuchuser f /f\n", "f": "x\n"}, "bad")
    r = build(img, bad, tag="own:2")
    assert r.returncode == 2 and "Dockerfile:2:" in r.stderr and "nosuchuser" in r.stderr, r


def _layer_count(state: str) -> int:
    try:
        return len(os.listdir(os.path.join(state, "layers")))
    except FileNotFoundError:
        return 0


def test_unsupported_instruction_exit_2_nothing_built(img):
    for df, where in (("FROM busybox:test\nRUN echo hi\nHEALTHCHECK CMD true\n", "Dockerfile:3:1:"),
                      ("FROM busybox:test\nRUN echo a \\\n  b\n  VOLUME /data\n", "Dockerfile:4:3:"),
                      ("FROM busybox:test\nRUN --mount=type=cache,target=/c true\n", "Dockerfile:2:5:"),
                      ("FROM busybox:test\nCOPY <<EOF /x\nhi\nEOF\n", "Dockerfile:2:6:"),
                      ("FROM busybox:test\nENV A=${B:?x}\n", "Dockerfile:2:5:")):
        ctx = _ctx(img, {"Dockerfile": df}, "u")
        before = _layer_count(img[1])
        r = build(img, ctx, tag="bad:1")
        assert r.returncode == 2, (df, r)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and where in lines[0], (df, r.stderr)
        assert "Traceback" not in r.stderr
        assert _layer_count(img[1]) == before
        assert "bad:1" not in ib.cli(img, "image", "ls").stdout


def test_failing_run_and_missing_base(img):
    ctx = _ctx(img, {"Dockerfile": "FROM busybox:test\nRUN echo out; exit 3\n"}, "f")
    r = build(img, ctx, tag="fail:1")
    assert r.returncode == 1 and "Dockerfile:2:5: RUN: the command exited with 3" in r.stderr, r
    assert "fail:1" not in ib.cli(img, "image", "ls").stdout
    assert ib.cli(img, "image", "containers", "--json").stdout.strip() in ("", "[]")   # nothing kept
    ctx = _ctx(img, {"Dockerfile": "FROM app-not-here:1\n"}, "g")       # a bare name: never fetched
    r = build(img, ctx, tag="fail:2")
    assert r.returncode == 2 and "is not local; `pysandbox image pull app-not-here:1` first" in r.stderr, r
    # a registry's name is pulled (tests/system/test_registry.py); one that cannot be reached: exit 6
    ctx = _ctx(img, {"Dockerfile": "FROM registry.invalid/app:1\n"}, "h")
    r = build(img, ctx, tag="fail:3")
    assert r.returncode == 6 and "FROM registry.invalid/app:1" in r.stderr, r
    assert "fail:2" not in ib.cli(img, "image", "ls").stdout


def test_progress_on_a_terminal_and_quiet(img):
    """On a terminal (util-linux `script` gives the build one) `auto` draws rich's spinner while a RUN
    runs; not on a terminal, plain lines; --progress quiet: only the image id."""
    import subprocess
    from conftest import PYSANDBOX
    runner, state, _ = img
    ctx = _ctx(img, {"Dockerfile": "FROM busybox:test\nRUN sleep 0.3; echo hi > /x\n"}, "tty")
    cmd = f"{PYSANDBOX} build --no-cache -t tty:1 {ctx}"
    argv = ["script", "-qec", cmd, "/dev/null"]
    if runner.rootless:
        argv = ["runuser", "-u", runner.user, "--"] + argv
    env = runner.env({"PYSANDBOX_STATE_DIR": state, "TERM": "xterm"})
    p = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env, cwd="/tmp")
    assert p.returncode == 0, p
    assert "\x1b[" in p.stdout and "STEP 2/2:" in p.stdout, p.stdout     # colour and cursor control
    plain = build(img, ctx, "--no-cache", tag="tty:1")
    assert "\x1b[" not in plain.stderr and "STEP 2/2: RUN" in plain.stderr
    q = ib.cli(img, "build", "-q", "-t", "tty:1", ctx)
    assert q.returncode == 0 and q.stderr == "" and re.fullmatch(r"sha256:[0-9a-f]{64}\n", q.stdout), q
