"""create + start + delete latency of pysandbox-runtime against crun and runc, in the same run.

One bundle (made by `crun spec`; rootfs: the host's static busybox; process /bin/true; no
terminal) and one measurement loop for the three runtimes: `create ID`, `start ID`, wait until
`state ID` says stopped, `delete ID`, timed as a whole (median of N); each `state` call is timed
apart too (engines call it several times per container). crun refuses this machine's
hybrid cgroup layout, so its loop runs in a private mount namespace where the cgroup2 mount at
/sys/fs/cgroup/unified is unmounted (only the v1 hierarchies remain, as the issue says); runc and
pysandbox-runtime run directly. The Python CLI alone (`pysandbox-runtime-py`, what the C front end
falls back to) is measured in the same run as a row of its own. Root only.

    .venv/bin/python bench/runtime.py [--quick]      (make bench imports rows())
"""
from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
OURS = os.path.join(os.path.dirname(sys.executable), "pysandbox-runtime")
OURS_PY = OURS + "-py"              # the Python CLI alone (what the C front end falls back to)


def make_bundle(d: str) -> str:
    os.makedirs(f"{d}/rootfs/bin")
    shutil.copy("/bin/busybox", f"{d}/rootfs/bin/busybox")
    os.symlink("busybox", f"{d}/rootfs/bin/true")
    subprocess.run(["crun", "spec"], cwd=d, check=True)
    with open(f"{d}/config.json") as f:
        cfg = json.load(f)
    cfg["process"].update(terminal=False, args=["/bin/true"])
    with open(f"{d}/config.json", "w") as f:
        json.dump(cfg, f)
    return d


def inner(runtime: str, bundle: str, root: str, n: int) -> dict:
    """The loop itself (in this process: for crun, inside the private mount namespace): the whole
    lifecycle's times and, apart, each `state` call's (engines call it several times a container)."""
    rt = [runtime, "--root", root]
    out, states = [], []
    null = subprocess.DEVNULL
    for i in range(n + 1):
        cid = f"bench{os.getpid()}-{i}"
        t0 = time.perf_counter()
        subprocess.run(rt + ["create", "--bundle", bundle, cid], check=True, stdin=null, stdout=null)
        subprocess.run(rt + ["start", cid], check=True, stdout=null)
        while True:
            s0 = time.perf_counter()
            st = subprocess.run(rt + ["state", cid], capture_output=True, text=True)
            states.append(time.perf_counter() - s0)
            if st.returncode != 0 or json.loads(st.stdout)["status"] == "stopped":
                break
        subprocess.run(rt + ["delete", cid], check=True, stdout=null)
        if i:                                        # the first one warms the page cache
            out.append(time.perf_counter() - t0)
    return {"total": out, "state": states}


def measure(name: str, bundle: str, work: str, n: int) -> tuple:
    root = os.path.join(work, f"root-{name}")
    runtime = {"pysandbox-runtime": OURS, "pysandbox-runtime-py": OURS_PY}.get(name) or shutil.which(name)
    cmd = [sys.executable, os.path.abspath(__file__), "--inner", runtime, bundle, root, str(n)]
    if name == "crun":                                # only the v1 hierarchies in its mount namespace
        cmd = ["unshare", "-m", "--propagation", "private", "/bin/sh", "-c",
               'umount /sys/fs/cgroup/unified 2>/dev/null; exec "$@"', "sh", *cmd]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{name}: {r.stderr.strip()[-300:]}")
    got = json.loads(r.stdout)
    return statistics.median(got["total"]), statistics.median(got["state"])


def rows(quick: bool) -> list:
    if os.geteuid() != 0:
        return []
    n = 5 if quick else 20
    work = tempfile.mkdtemp(prefix="psbrt-bench-", dir="/tmp")
    os.chmod(work, 0o755)
    try:
        bundle = make_bundle(os.path.join(work, "bundle"))
        names = ("crun", "runc", "pysandbox-runtime") + (("pysandbox-runtime-py",) if os.path.exists(OURS_PY) else ())
        t = {name: measure(name, bundle, work, n) for name in names}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    ms = {k: v[0] * 1000 for k, v in t.items()}
    st = {k: v[1] * 1000 for k, v in t.items()}
    out = [{"name": f"oci create+start+delete ({k})", "value": round(v, 1), "unit": "ms", "peer": None,
            "peer_value": None, "ratio": None, "target": None} for k, v in ms.items() if k != "pysandbox-runtime"]
    if "pysandbox-runtime-py" in st:
        out.append({"name": "oci state, one call (pysandbox-runtime-py)", "value": round(st["pysandbox-runtime-py"], 2),
                    "unit": "ms", "peer": None, "peer_value": None, "ratio": None, "target": None})
    ours = ms["pysandbox-runtime"]
    out.append({"name": "oci create+start+delete (pysandbox-runtime) vs crun", "value": round(ours, 1), "unit": "ms",
                "peer": "crun", "peer_value": round(ms["crun"], 1), "ratio": round(ours / ms["crun"], 2),
                "target": "<= 1.5x crun"})
    out.append({"name": "oci create+start+delete (pysandbox-runtime) vs runc", "value": round(ours, 1), "unit": "ms",
                "peer": "runc", "peer_value": round(ms["runc"], 1), "ratio": round(ours / ms["runc"], 2),
                "target": "< 1x runc"})
    out.append({"name": "oci state, one call (pysandbox-runtime) vs crun", "value": round(st["pysandbox-runtime"], 2),
                "unit": "ms", "peer": "crun", "peer_value": round(st["crun"], 2),
                "ratio": round(st["pysandbox-runtime"] / st["crun"], 2), "target": "<= 1.5x crun"})
    return out


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--inner":
        print(json.dumps(inner(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]))))
    else:
        for row in rows("--quick" in sys.argv):
            print(row)
