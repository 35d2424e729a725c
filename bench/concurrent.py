#!/usr/bin/env python3
"""100 concurrent `strict` sandboxes (`sleep 2`) launched from one API process.

Measures
  * the time from the first run() call until every sandbox's program is running, from the
    programs' own clock reads (each prints CLOCK_BOOTTIME before it becomes /bin/sleep);
  * the CPU time per sandbox until all run, and start to end: the launch server, its template and
    every sandbox's processes, and this API process (its threads, its waiting for the results);
  * the supervisor memory per sandbox while all run (taken once all N sleep processes exist;
    watching for that costs one read of /proc/loadavg per 10 ms, and a walk of the process tree
    when its task count has grown by 2N or 100 ms after the last: walking it every 5 ms took
    ~0.35 s of CPU from the very launches it watched): the launch server's PSS (sandbox/server/,
    one process supervising every sandbox of this API process) plus this process's PSS growth,
    divided by N. Each sandbox's PID 1 (inside the sandbox: a forked copy of the launch server
    that execs the small pysandbox-init once the program runs, sandbox/pid1.c) is reported
    separately (sum of their PSS / N), and the total of both.
Targets (issue 8): all running within 1 s, <= 1 MiB supervisor PSS per sandbox.

Usage: bench/concurrent.py [-n 100] [--audit-off] [--no-limits]
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# this file is named like the stdlib package `concurrent`: take bench/ off the path
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != str(Path(__file__).resolve().parent)]
sys.path.insert(0, str(REPO))


def pss_kib(pid="self") -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def cpu_ms(pid) -> float:
    """Milliseconds of CPU of a process: its own (every thread's, from schedstat, in ns: the
    clock-tick fields of /proc/PID/stat read 0 for a process that ran 2 ms) plus what it reaped
    (cutime + cstime, accumulated exactly by the kernel, shown in clock ticks)."""
    own = 0
    try:
        for t in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{t}/schedstat") as f:
                own += int(f.read().split()[0])
        with open(f"/proc/{pid}/stat") as f:
            v = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return own / 1e6 + (int(v[13]) + int(v[14])) * 1000 / os.sysconf("SC_CLK_TCK")


def launch_cpu(server: int) -> float:
    """CPU milliseconds spent so far by the launch server and everything below it, live (the
    template, spare PID 1s, running sandboxes) or reaped (each ended sandbox's PID 1, with the
    program that PID 1 reaped)."""
    return sum(cpu_ms(p) for p in [server, *descendants(server)])


def tasks() -> int:
    """Scheduling entities on the machine (the 4th field of /proc/loadavg: running/total)."""
    with open("/proc/loadavg") as f:
        return int(f.read().split()[3].split("/")[1])


def children(pid: int, tid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{tid}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


def descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        try:
            tids = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for t in tids:
            for c in children(p, int(t)):
                out.append(c)
                todo.append(c)
    return out


def nspid(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("NSpid:"):
                    return [int(x) for x in line.split()[1:]]
    except OSError:
        pass
    return []


def main(argv=None) -> dict:
    """Runs the burst, prints the figures and returns them: all_started (s), supervisor_pss (MiB)."""
    figures = {}
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=100)
    ap.add_argument("--audit-off", action="store_true")
    ap.add_argument("--no-limits", action="store_true")
    ap.add_argument("--sleep", default="2")
    ap.add_argument("--no-peer", action="store_true", help="skip the bwrap burst")
    a = ap.parse_args(argv)
    from sandbox.api import Sandbox
    sb = Sandbox("strict", audit=not a.audit_off)
    if a.no_limits:
        from policies import plan as P
        sb = Sandbox.from_plan(dataclasses.replace(sb.plan, limits=P.Limits()), sb.bpf, audit=not a.audit_off)
    threading.stack_size(256 * 1024)
    sb.run(["/bin/true"])                                # warm: imports, caches
    before = pss_kib()
    results = [None] * a.n
    go = threading.Event()

    def worker(i):
        go.wait()
        # the program notes when it started (CLOCK_BOOTTIME via /proc/uptime, 10 ms resolution;
        # `read` is a shell builtin), then becomes `sleep`
        results[i] = sb.run(["/bin/sh", "-c", f"read up idle < /proc/uptime; echo $up; exec /bin/sleep {a.sleep}"],
                            timeout=60, text=True)
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(a.n)]
    for t in threads:
        t.start()
    from sandbox.server.client import Client
    server = Client.get().proc.pid
    cpu0, api0 = launch_cpu(server), sum(os.times()[:2])
    base_tasks = tasks()
    t0 = time.monotonic()
    up0 = float(open("/proc/uptime").read().split()[0])
    go.set()
    all_running = None
    peak_pss = 0
    deadline = t0 + 30
    walked = t0
    kinds = {}
    while time.monotonic() < deadline and any(t.is_alive() for t in threads):
        # PID 1 and the program of each (less the few spare PID 1s that existed already); the
        # machine's count moves with other users' processes too: walk at least every 100 ms
        if tasks() < base_tasks + 2 * a.n - 8 and time.monotonic() - walked < 0.1:
            time.sleep(0.01)
            continue
        walked = time.monotonic()
        desc = descendants(os.getpid())
        if sum(1 for p in desc if comm(p) == "sleep") >= a.n:
            all_running = time.monotonic() - t0
            cpu_up = (launch_cpu(server) - cpu0) / a.n
            api_up = (sum(os.times()[:2]) - api0) * 1000 / a.n
            peak_pss = pss_kib()
            for p in desc:
                ns = nspid(p)
                kind = "pid1" if ns[-1:] == [1] and len(ns) > 1 else ("program" if len(ns) > 1 else "supervisor")
                kinds[kind] = kinds.get(kind, 0) + pss_kib(p)
            break
        time.sleep(0.01)
    for t in threads:
        t.join()
    total = time.monotonic() - t0
    cpu = (launch_cpu(server) - cpu0) / a.n
    api_cpu = (sum(os.times()[:2]) - api0) * 1000 / a.n
    bad = [r for r in results if r is None or r.exit_code != 0]
    starts = [float(r.stdout.split()[0]) - up0 for r in results if r is not None and r.stdout.strip()]
    mode = ("root" if os.geteuid() == 0 else "rootless") + (", audit off" if a.audit_off else ", audit on") + \
        (", no limits" if a.no_limits else ", strict limits")
    print(f"{a.n} concurrent strict sandboxes (sleep {a.sleep}) from one API process ({mode})")
    if len(starts) == a.n:
        figures["all_started"] = max(starts)
        print(f"  all programs started by  {max(starts):7.3f} s     (target <= 1 s: {max(starts):.2f}x; median "
              f"{sorted(starts)[a.n // 2]:.3f} s; from the programs' own clock reads)")
    if all_running is None:
        print(f"  never all {a.n} running at once (the first ones ended before the last started); "
              f"use --sleep 10 for the memory figures")
    else:
        api = (peak_pss - before) / a.n
        server = kinds.get("supervisor", 0) / a.n
        pid1 = kinds.get("pid1", 0) / a.n
        figures["supervisor_pss"] = (api + server) / 1024
        print(f"  supervisor PSS / sandbox {(api + server) / 1024:7.3f} MiB   (target <= 1 MiB: "
              f"{(api + server) / 1024:.2f}x): the launch server {server / 1024:.3f} + this API process's "
              f"growth {api / 1024:.3f} (PSS {before / 1024:.1f} -> {peak_pss / 1024:.1f} MiB)")
        print(f"  PID 1 PSS / sandbox      {pid1 / 1024:7.3f} MiB   (each sandbox's init, inside it; with it "
              f"{(api + server + pid1) / 1024:.3f} MiB per sandbox in all)")
    if all_running is not None:
        print(f"  CPU per sandbox, start   {cpu_up + api_up:7.2f} ms    (until all ran: the launch server, its template and "
              f"the sandboxes {cpu_up:.2f}, this API process {api_up:.2f})")
    print(f"  CPU per sandbox, all     {cpu + api_cpu:7.2f} ms    (start to end: {cpu:.2f} + {api_cpu:.2f}; CPU "
          f"time varies less than elapsed time on a shared machine)")
    print(f"  all ended after          {total:7.3f} s; failures: {len(bad)}; load average "
          f"{open('/proc/loadavg').read().split()[0]} on {os.cpu_count()} CPUs")
    if bad:
        print("  first failure:", bad[0])
    if not a.no_peer and len(starts) == a.n:
        figures["peer_all_started"] = peer_burst(a, sb, max(starts))
    return figures


def peer_burst(a, sb, ours: float) -> float | None:
    """The same burst under bwrap with the isolation of the plan (bench/peers.py: bwrap_args_for,
    the same seccomp filter; no cgroup limits, no audit — bwrap has neither): N bwrap processes
    started from N threads of this process at once."""
    import shutil
    sys.path.append(str(Path(__file__).resolve().parent))     # (after the stdlib: see the top)
    from peers import bwrap_true, peer_bpf
    bwrap = shutil.which("bwrap")
    if not bwrap:
        print("  bwrap not installed: no peer figures")
        return
    with bwrap_true(bwrap, peer_bpf(sb.plan), sb.plan) as run:
        run()                                            # warm: page cache, the probe
        argv = ["/bin/sh", "-c", f"read up idle < /proc/uptime; echo $up; exec /bin/sleep {a.sleep}"]
        out = [None] * a.n
        go = threading.Event()

        def worker(i):
            go.wait()
            out[i] = run(argv, capture=True)
        threads = [threading.Thread(target=worker, args=(i,)) for i in range(a.n)]
        for t in threads:
            t.start()
        with open("/proc/uptime") as f:
            up0 = float(f.read().split()[0])
        go.set()
        for t in threads:
            t.join()
    starts = [float(p.stdout.split()[0]) - up0 for p in out if p is not None and p.returncode == 0 and p.stdout.strip()]
    if len(starts) != a.n:
        print(f"  bwrap: {a.n - len(starts)} of {a.n} failed")
        return
    print("bwrap, same isolation and filter, no limits, no audit (bench/peers.py), the same burst")
    print(f"  all programs started by  {max(starts):7.3f} s     (median {sorted(starts)[a.n // 2]:.3f} s); pysandbox "
          f"took {ours / max(starts):.2f}x bwrap's time")
    return max(starts)


def rows(quick: bool = False) -> list[dict]:
    """P4: 100 concurrent strict sandboxes all running within 1 s (bwrap's same burst as the peer),
    supervisor memory <= 1 MiB PSS a sandbox. --quick: 20 sandboxes."""
    n = 20 if quick else 100
    f = main(["-n", str(n), "--sleep", "3"])
    started, peer = f.get("all_started"), f.get("peer_all_started")
    out = [{"name": f"api: {n} concurrent strict, all running", "value": round(started, 3) if started else None,
            "unit": "s", "peer": "bwrap+seccomp burst" if peer else None,
            "peer_value": round(peer, 3) if peer else None,
            "ratio": round(started / peer, 2) if started and peer else None, "target": "<= 1 s"}]
    pss = f.get("supervisor_pss")
    out.append({"name": f"api: {n} concurrent strict, supervisor PSS a sandbox",
                "value": round(pss, 3) if pss is not None else None, "unit": "MiB", "peer": None,
                "peer_value": None, "ratio": None, "target": "<= 1 MiB"})
    return out


if __name__ == "__main__":
    main()
