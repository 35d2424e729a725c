#!/usr/bin/env python3
"""Warm API launches of /bin/true under `strict` against bwrap, in one run (sandboxes per second).

  api strict              Sandbox("strict").run(["/bin/true"]): the default API (audit on: every
                          seccomp denial recorded through user notification; one supervisor thread
                          per run), cgroup limits of strict (memory 1g, pids 512) created per run
  api strict, audit off   Sandbox("strict", audit=False): filter with plain errno actions
  api strict, no limits   as above without the cgroup limits: the isolation bwrap gives (bwrap
                          has no cgroup limits at all)
  bwrap equivalent        bwrap with the isolation of strict's plan (peers.bwrap_args_for: the
                          root rootfs.py builds — system dirs, the /etc entries, generated
                          /etc/hostname and /etc/hosts, /dev, /proc, /sys, masked and read-only
                          paths, hostname, every namespace, --cap-drop ALL; the gaps bwrap cannot
                          close are listed in bench/peers.py) and strict's own filter (exported
                          with sandbox.seccomp.build_bpf, plain errno actions) through --seccomp
                          FD; spawned from the same warm Python. The ratios are against this row.
  bwrap minimal           the earlier, thinner peer (peers.BWRAP_MINIMAL: namespaces, read-only
                          /usr, fresh /proc /dev /tmp, read-only /, same filter), for reference

The compile + BPF work happens once in the Sandbox constructor; it is timed separately.
  4 threads / 4 asyncio  Sandbox("strict").run from 4 threads at once, and run_async from 4
                          asyncio tasks at once: sandboxes per second over the whole burst

rows(quick) gives the figures for bench/run.py (1 thread against bwrap+seccomp's rate, 4 callers
against 200/s). Usage: bench/api_launch.py [-n RUNS] [--quick]
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
for _p in (str(REPO), str(Path(__file__).resolve().parent)):
    if _p not in sys.path:
        sys.path.append(_p)                 # after the stdlib (bench/concurrent.py shadows `concurrent`)
from peers import bwrap_true, peer_bpf  # noqa: E402


def bench_interleaved(fns: dict, n: int) -> dict:
    """Each launcher once per round, n rounds, order rotated every round: load that comes and goes
    on the machine (it is shared) hits every row alike. -> name: (median s, runs per second)."""
    for fn in fns.values():
        fn()                                       # warm
    times = {name: [] for name in fns}
    names = list(fns)
    for i in range(n):
        k = i % len(names)
        for name in names[k:] + names[:k]:
            t = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - t)
    return {name: (statistics.median(ts), len(ts) / sum(ts)) for name, ts in times.items()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=40)
    n = ap.parse_args().n
    from policies import plan as P
    from sandbox.api import Sandbox

    t = time.perf_counter()
    sb = Sandbox("strict")
    t_compile = time.perf_counter() - t
    sb_noaudit = Sandbox("strict", audit=False)
    plan_nolimits = dataclasses.replace(sb_noaudit.plan, limits=P.Limits())
    sb_nolimits = Sandbox.from_plan(plan_nolimits, audit=False)

    def api(s):
        def f():
            r = s.run(["/bin/true"])
            if r.exit_code != 0:
                raise SystemExit(f"api run failed: {r}")
        return f

    fns = {"api strict": api(sb), "api strict, audit off": api(sb_noaudit),
           "api strict, no limits": api(sb_nolimits)}
    with contextlib.ExitStack() as stack:
        bwrap = shutil.which("bwrap")
        if bwrap:
            bpf = peer_bpf(sb.plan)
            fns["bwrap equivalent"] = stack.enter_context(bwrap_true(bwrap, bpf, sb.plan))
            fns["bwrap minimal"] = stack.enter_context(bwrap_true(bwrap, bpf))
        res = bench_interleaved(fns, n)
    rows = [(name, *res[name]) for name in fns]

    print(f"compile + BPF once (constructor): {t_compile * 1000:.1f} ms   runs per row: {n}, interleaved   "
          f"({'root' if os.geteuid() == 0 else 'rootless'})")
    print(f"{'launcher':<24} {'median ms':>10} {'per second':>11} {'vs bwrap':>9}")
    ref = dict((r[0], r) for r in rows).get("bwrap equivalent")
    for name, med, rate in rows:
        ratio = f"{rate / ref[2]:.2f}x" if ref else "-"
        print(f"{name:<24} {med * 1000:>10.2f} {rate:>11.1f} {ratio:>9}")
    if ref:
        print("\nratio = sandboxes per second relative to `bwrap equivalent` (>= 1.00 meets the target)")


def burst_peer(fn, callers: int, per_caller: int) -> float:
    """The same burst with a peer: `fn` (e.g. bwrap+seccomp's run) from `callers` threads at once."""
    import threading
    threads = [threading.Thread(target=lambda: [fn() for _ in range(per_caller)]) for _ in range(callers)]
    t = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return callers * per_caller / (time.perf_counter() - t)


def burst_rate(sb, callers: int, per_caller: int, use_asyncio: bool) -> float:
    """Sandboxes per second of `callers` concurrent callers, each running /bin/true per_caller times."""
    import threading

    def check(r):
        if r.exit_code != 0:
            raise RuntimeError(f"api run failed: {r}")
    if use_asyncio:
        import asyncio

        async def caller():
            for _ in range(per_caller):
                check(await sb.run_async(["/bin/true"]))

        async def all_callers():
            await asyncio.gather(*(caller() for _ in range(callers)))
        t = time.perf_counter()
        asyncio.run(all_callers())
        return callers * per_caller / (time.perf_counter() - t)
    errors = []

    def worker():
        try:
            for _ in range(per_caller):
                check(sb.run(["/bin/true"]))
        except Exception as e:              # noqa: BLE001 (reported below)
            errors.append(e)
    threads = [threading.Thread(target=worker) for _ in range(callers)]
    t = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    if errors:
        raise errors[0]
    return callers * per_caller / (time.perf_counter() - t)


def rows(quick: bool = False, n: int | None = None) -> list[dict]:
    n = n or (15 if quick else 40)
    from sandbox.api import Sandbox
    sb = Sandbox("strict")
    sb.run(["/bin/true"])

    def api():
        r = sb.run(["/bin/true"])
        if r.exit_code != 0:
            raise RuntimeError(f"api run failed: {r}")
    fns = {"api strict": api}
    bwrap = shutil.which("bwrap")
    with contextlib.ExitStack() as stack:
        if bwrap:
            fns["bwrap+seccomp"] = stack.enter_context(bwrap_true(bwrap, peer_bpf(sb.plan), sb.plan))
        res = bench_interleaved(fns, n)
    rate, peer = res["api strict"][1], res.get("bwrap+seccomp", (None, None))[1]
    out = [{"name": "api: strict /bin/true, 1 thread", "value": round(rate, 1), "unit": "sandboxes/s",
            "peer": "bwrap+seccomp (subprocess)" if peer else None, "peer_value": round(peer, 1) if peer else None,
            "ratio": round(rate / peer, 2) if peer else None, "target": ">= 1x bwrap+seccomp"}]
    per = max(5, n // 2)
    with contextlib.ExitStack() as stack:
        # the peer's own rate with 4 callers (threads spawning bwrap+seccomp), measured between the
        # two bursts: what the target asks of pysandbox, set beside what the C peer does here
        peer4 = None
        for label, aio in (("4 threads", False), ("4 asyncio tasks", True)):
            r = burst_rate(sb, 4, per, aio)
            if peer4 is None and bwrap:
                peer4 = burst_peer(stack.enter_context(bwrap_true(bwrap, peer_bpf(sb.plan), sb.plan)), 4, per)
            out.append({"name": f"api: strict /bin/true, {label}", "value": round(r, 1), "unit": "sandboxes/s",
                        "peer": "bwrap+seccomp, 4 threads" if peer4 else None,
                        "peer_value": round(peer4, 1) if peer4 else None,
                        "ratio": round(r / peer4, 2) if peer4 else None, "target": ">= 200/s"})
    return out


if __name__ == "__main__":
    main()
