"""W^X in builds (docs/images.md, "W^X in builds"): a RUN step executes what an earlier RUN or COPY
wrote into the image (a script installed in /usr/local/bin, a configure-and-make step in the
WORKDIR, a new directory at the top of the root in the next step), as root and as the
unprivileged test user. The denied side: tests/security/test_build_scratch_exec.py."""
from __future__ import annotations

from buildhelpers import build, run_img
from buildhelpers import ctx_dir as _ctx

APP = "#!/bin/sh\necho app ran as $(id -u)\n"
CONFIGURE = "#!/bin/sh\nprintf '#!/bin/sh\\necho built-tool\\n' > tool\nchmod 755 tool\necho 'all:' > Makefile\n"

ALLOWED = """FROM busybox:test
ENV PATH=/usr/local/bin:/bin
COPY app.sh /usr/local/bin/app
RUN chmod 755 /usr/local/bin/app && app > /app.out
WORKDIR /src
COPY configure ./
RUN chmod 755 configure && ./configure && ./tool > tool.out
RUN mkdir -p /opt/new/bin && cp /bin/busybox /opt/new/bin/echo
RUN /opt/new/bin/echo bb-ran > /opt/bb.out
"""


def test_build_runs_what_it_builds(img):
    ctx = _ctx(img, {"Dockerfile": ALLOWED, "app.sh": APP, "configure": CONFIGURE}, "wx")
    r = build(img, ctx, tag="wx:1")
    assert r.returncode == 0, r
    r = run_img(img, "wx:1", "/bin/cat", "/app.out", "/src/tool.out", "/opt/bb.out")
    assert r.stdout.split("\n")[:3] == ["app ran as 0", "built-tool", "bb-ran"], r

