#!/usr/bin/env python3
"""Launch latency of `pysandbox run --profile strict -- /bin/true` against its peers, in one run.

Rows (all run /bin/true; each launcher once per round, order rotated every round, median):
  exec              plain fork+exec of /bin/true (the floor)
  bwrap+seccomp     bubblewrap with the isolation of strict's plan (peers.bwrap_args_for: the same
                    root, /etc entries, /dev, /proc, /sys, masked and read-only paths, namespaces,
                    hostname, --cap-drop ALL; gaps listed in bench/peers.py) and the *same* strict
                    seccomp filter (plain errno actions, --seccomp FD)
  crun              `crun run` (create + start + wait + delete) of the OCI bundle `pysandbox export
                    -f oci strict` writes (namespaces, id map, caps, NNP, seccomp, read-only root,
                    masked paths, rlimits, memory + pids limits), in a private mount + cgroup
                    namespace showing only the cgroup v1 hierarchies (peers.crun_true). Root only.
  pysandbox cached  `pysandbox run --profile strict -- /bin/true` with the plan cached (the usual case)
  pysandbox cold    the same with the plan cache emptied first (YAML, schema, compile, BPF)
  pysandbox server  the cached run with the caller's launch server running (`pysandbox server
                    start`, opt-in; a private state directory: sandbox/server/local.py)

Interpreters are called by absolute path (the `python3` on PATH may be a slow shim).
Usage: bench/launch.py [-n RUNS] [--quick]
"""
from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PYSANDBOX = str(REPO / ".venv" / "bin" / "pysandbox")
for _p in (str(REPO), str(Path(__file__).resolve().parent)):
    if _p not in sys.path:
        sys.path.append(_p)                 # after the stdlib (bench/concurrent.py shadows `concurrent`)
from peers import bwrap_true, crun_true, peer_bpf  # noqa: E402

CMD = [PYSANDBOX, "run", "--profile", "strict", "--", "/bin/true"]


def _subprocess_timer(argv, before=None, env=None):
    def run():
        if before:
            before()
        t = time.perf_counter()
        p = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
        dt = time.perf_counter() - t
        if p.returncode != 0:
            raise RuntimeError(f"{argv[0]} failed ({p.returncode}): {p.stderr.decode()[-300:]}")
        return dt
    return run


def _timed(fn):
    def run():
        t = time.perf_counter()
        fn()
        return time.perf_counter() - t
    return run


def interleaved(fns: dict, n: int) -> dict:
    """name -> median seconds; every launcher once per round, the order rotated each round, so
    load that comes and goes on the shared machine hits every row alike."""
    for fn in fns.values():
        fn()                                  # warm: page cache, probes
    times = {name: [] for name in fns}
    names = list(fns)
    for i in range(n):
        k = i % len(names)
        for name in names[k:] + names[:k]:
            times[name].append(fns[name]())
    return {name: statistics.median(ts) for name, ts in times.items()}


def _drop_cache():
    """Remove this command's plan-cache entry only (the cache directory is shared: as root, every
    installation's entries are in /var/cache/pysandbox/plans). The key is what the subprocess
    computes: same working directory, environment and options."""
    from sandbox import plancache
    with contextlib.suppress(FileNotFoundError):
        os.unlink(plancache._file_for(plancache.key_for(CMD[2:CMD.index("--")])))


@contextlib.contextmanager
def _launch_server():
    """A launch server of our own (`pysandbox server start`) in a private state directory: the
    environment that reaches it; stopped and removed after."""
    import tempfile
    d = tempfile.mkdtemp(prefix="pysbx-bench-server-")
    os.chmod(d, 0o711)
    env = dict(os.environ, PYSANDBOX_STATE_DIR=d)
    try:
        subprocess.run([PYSANDBOX, "server", "start", "--idle", "600"], env=env, check=True,
                       stdout=subprocess.DEVNULL)
        yield env
    finally:
        subprocess.run([PYSANDBOX, "server", "stop"], env=env, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        shutil.rmtree(d, ignore_errors=True)


def rows(quick: bool = False, n: int | None = None) -> list[dict]:
    n = n or (10 if quick else 40)
    from policies.compiler import compile_profile
    plan = compile_profile("strict").plan
    fns = {"exec /bin/true": _subprocess_timer(["/bin/true"])}
    with contextlib.ExitStack() as stack:
        bwrap = shutil.which("bwrap")
        if bwrap:
            fns["bwrap+seccomp"] = _timed(stack.enter_context(bwrap_true(bwrap, peer_bpf(plan), plan)))
        crun = shutil.which("crun")
        if crun and os.geteuid() == 0:
            fns["crun"] = stack.enter_context(crun_true(crun, "strict"))
        _drop_cache()
        subprocess.run(CMD, check=True)                       # fill the plan cache (this version's entry)
        fns["pysandbox cached"] = _subprocess_timer(CMD)
        fns["pysandbox server"] = _subprocess_timer(CMD, env=stack.enter_context(_launch_server()))
        med = interleaved(fns, n)
        cold = interleaved({"cold": _subprocess_timer(CMD, before=_drop_cache)}, max(3, n // 8))["cold"]
        subprocess.run(CMD, check=True)

    def row(name, value, unit="ms", peer=None, target=None):
        pv = med[peer] * 1000 if peer in med else None
        return {"name": name, "value": round(value, 2), "unit": unit, "peer": peer if pv else None,
                "peer_value": round(pv, 2) if pv else None,
                "ratio": round(value / pv, 2) if pv else None, "target": target}
    ms = {k: v * 1000 for k, v in med.items()}
    out = [row("launch: exec /bin/true", ms["exec /bin/true"])]
    for peer in ("bwrap+seccomp", "crun"):
        if peer in ms:
            out.append(row(f"launch: {peer} /bin/true", ms[peer], peer="exec /bin/true"))
    ours = ms["pysandbox cached"]
    out.append(row("launch: CLI strict, cached plan", ours, peer="crun", target="<= 1.5x crun"))
    out.append(row("launch: CLI strict, cached plan", ours, peer="bwrap+seccomp", target="<= 2x bwrap+seccomp"))
    srv = ms["pysandbox server"]
    out.append(row("launch: CLI strict cached, launch server running", srv, peer="crun", target="<= 1.5x crun"))
    out.append(row("launch: CLI strict cached, launch server running", srv, peer="bwrap+seccomp",
                   target="<= 2x bwrap+seccomp"))
    out.append(row("launch: CLI strict, cold (cache emptied)", cold * 1000, target="<= 300 ms"))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=None)
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    for r in rows(a.quick, a.n):
        print(r)


if __name__ == "__main__":
    main()
