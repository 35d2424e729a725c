"""`pysandbox build` of a 10-step Dockerfile, cold (every step run: --no-cache) and fully cached,
against `podman build` (buildah; runtime runc, overlay storage in a store of its own) of the same
Dockerfile on the same busybox base image, in the same run. Targets (issue 22): cached <= 0.5 s and
faster than podman; cold within 1.5x podman.

Run alone: `.venv/bin/python bench/build.py [--quick]`; `make bench` imports rows().
"""
from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PYSANDBOX = os.path.join(os.path.dirname(sys.executable), "pysandbox")
PODMAN = shutil.which("podman") or "/usr/bin/podman"

DOCKERFILE = """\
FROM {base}
ENV APP=/srv/app MODE=bench
WORKDIR /srv/app
COPY conf/ ./conf/
RUN echo one > one.txt
RUN mkdir -p data && for i in 1 2 3 4 5; do echo $i > data/$i; done
RUN rm -f /etc/motd
COPY run.sh ./
RUN chmod 755 run.sh
CMD ["/bin/sh", "run.sh"]
"""


def _context(d: str, base: str) -> str:
    os.makedirs(os.path.join(d, "conf"), exist_ok=True)
    with open(os.path.join(d, "Dockerfile"), "w") as f:
        f.write(DOCKERFILE.format(base=base))
    with open(os.path.join(d, "conf", "app.conf"), "w") as f:
        f.write("port=8080\n")
    with open(os.path.join(d, "run.sh"), "w") as f:
        f.write("cat conf/app.conf\n")
    return d


def _time(cmd, env=None) -> float:
    t0 = time.perf_counter()
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    dt = time.perf_counter() - t0
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])}...: exit {p.returncode}: {p.stderr.strip()[-400:]}")
    return dt


def rows(quick: bool = False) -> list[dict]:
    sys.path.insert(0, os.path.join(REPO, "tests"))
    import imagebuild as ib
    n = 1 if quick else 3
    tmp = tempfile.mkdtemp(prefix="pysbx-bench-build-")
    state, proot, prun = (os.path.join(tmp, x) for x in ("state", "podroot", "podrun"))
    env = dict(os.environ, PYSANDBOX_STATE_DIR=state)
    podman = [PODMAN, "--root", proot, "--runroot", prun, "--storage-driver", "overlay"]
    out: list[dict] = []
    try:
        save = ib.write_docker_save(os.path.join(tmp, "save.tar"), tag="bench-base:latest")
        subprocess.run([PYSANDBOX, "image", "import", save], env=env, check=True, capture_output=True)
        ctx_p = _context(os.path.join(tmp, "ctx-p"), "bench-base:latest")
        ours = [PYSANDBOX, "build", "-t", "bench:1", "--progress", "quiet", ctx_p]
        cold = [_time(ours + ["--no-cache"], env) for _ in range(n)]
        cached = [_time(ours, env) for _ in range(max(n, 3))]
        peer_cold = peer_cached = None
        try:
            subprocess.run(podman + ["load", "-i", save], check=True, capture_output=True, timeout=300)
            ctx_b = _context(os.path.join(tmp, "ctx-b"), "localhost/bench-base:latest")
            theirs = podman + ["build", "--runtime", "/usr/bin/runc", "-q", "-t", "bench:1", ctx_b]
            peer_cold = statistics.median([_time(theirs + ["--no-cache"]) for _ in range(n)])
            peer_cached = statistics.median([_time(theirs) for _ in range(max(n, 3))])
        except (OSError, RuntimeError, subprocess.SubprocessError) as e:
            print(f"bench/build.py: podman build unavailable: {e}", file=sys.stderr)
        for name, vals, peer, target in (("build 10 steps, cold", cold, peer_cold, "<= 1.5x podman build"),
                                         ("build 10 steps, cached", cached, peer_cached,
                                          "<= 0.5 s and < podman build")):
            v = statistics.median(vals)
            out.append({"name": name, "value": round(v, 3), "unit": "s",
                        "peer": "podman build (runc)" if peer else None,
                        "peer_value": round(peer, 3) if peer else None,
                        "ratio": round(v / peer, 2) if peer else None, "target": target})
    finally:
        subprocess.run(podman + ["system", "reset", "-f"], capture_output=True, timeout=300)
        subprocess.run(["umount", "-R", proot], capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)
    return out


if __name__ == "__main__":
    for r in rows("--quick" in sys.argv):
        print(r)
