#!/usr/bin/env python3
"""Launch latency of `pysandbox run --profile strict -- /bin/true` against its peers, in one run.

Peers (all run /bin/true):
  exec      plain fork+exec of /bin/true (the unit: ratios are against this)
  unshare   util-linux unshare with user, pid, mount, uts, ipc, net namespaces
  bwrap     bubblewrap with the isolation of strict's plan (peers.bwrap_args_for: the same root,
            /etc entries, /dev, /proc, /sys, masked and read-only paths, namespaces, hostname,
            --cap-drop ALL; gaps listed in bench/peers.py) and the *same* strict seccomp filter
            (exported BPF via --seccomp FD): "bwrap equivalent", the row pysandbox is compared to;
            and "bwrap minimal" (peers.BWRAP_MINIMAL: namespaces, read-only /usr, fresh
            /proc,/dev,/tmp, same filter), the earlier thinner peer, for reference
  pysandbox `pysandbox run --profile strict -- /bin/true` (cached plan + BPF: the normal case),
            and once with the cache emptied first (cold: YAML, schema, compile, libseccomp)

Interpreters are called by absolute path (the `python3` on PATH may be a slow shim).
Usage: bench/launch.py [-n RUNS]
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PYSANDBOX = str(REPO / ".venv" / "bin" / "pysandbox")
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from peers import bwrap_true, peer_bpf  # noqa: E402


def timeit(argv, n, pass_fds=(), before=None):
    times = []
    for _ in range(n):
        if before:
            before()
        t = time.perf_counter()
        p = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, pass_fds=pass_fds)
        times.append(time.perf_counter() - t)
        if p.returncode != 0:
            raise SystemExit(f"{argv[0]} failed ({p.returncode}): {p.stderr.decode()[-300:]}")
    return statistics.median(times), statistics.mean(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=50)
    a = ap.parse_args()
    n = a.n
    rows = []
    rows.append(("exec /bin/true", *timeit(["/bin/true"], n)))
    if shutil.which("unshare"):
        rows.append(("unshare -Urpfmuin", *timeit(["unshare", "-Urpfmuin", "--mount-proc", "/bin/true"], n)))
    bwrap = shutil.which("bwrap")
    if bwrap:
        from policies.compiler import compile_profile
        plan = compile_profile("strict").plan
        bpf = peer_bpf(plan)                            # plain errno, no listener
        for name, peer_plan in (("bwrap equivalent", plan), ("bwrap minimal", None)):
            times = []
            with bwrap_true(bwrap, bpf, peer_plan) as run:
                run()                                   # warm (and the one-off --proc probe)
                for _ in range(n):
                    t = time.perf_counter()
                    run()
                    times.append(time.perf_counter() - t)
            rows.append((name, statistics.median(times), statistics.mean(times)))
    cmd = [PYSANDBOX, "run", "--profile", "strict", "--", "/bin/true"]
    subprocess.run(cmd, check=True)                     # fill the plan cache
    rows.append(("pysandbox strict (cached)", *timeit(cmd, n)))
    from sandbox import plancache

    def drop_cache():
        shutil.rmtree(plancache.cache_dir(), ignore_errors=True)
    rows.append(("pysandbox strict (cold)", *timeit(cmd, max(5, n // 5), before=drop_cache)))
    subprocess.run(cmd, check=True)

    base = rows[0][1]
    print(f"{'launcher':<28} {'median ms':>10} {'mean ms':>9} {'x exec':>8}")
    for name, med, mean in rows:
        print(f"{name:<28} {med * 1000:>10.2f} {mean * 1000:>9.2f} {med / base:>8.1f}")
    by = {name: med for name, med, _ in rows}
    if "bwrap equivalent" in by:
        print(f"\npysandbox (cached) / bwrap equivalent = "
              f"{by['pysandbox strict (cached)'] / by['bwrap equivalent']:.2f}   (median time; < 1 is faster)")


if __name__ == "__main__":
    main()
