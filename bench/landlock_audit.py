#!/usr/bin/env python3
"""The cost of the Landlock notify fallback (sandbox/notify/landlock_fallback.py): strict's
sandbox launched in this process (sandbox.launcher.launch, audited), with the fallback (the
calls Landlock could deny notified to the supervisor and predicted) and without it (the same
launch, landlock.denial_source answering None: only the plan's own filter), alternated, median.

Rows: /bin/true (execve notified once), and a shell writing 1000 files in /tmp (1000 notified
write-opens). Run as root. Usage: bench/landlock_audit.py [--quick]
"""
from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.append(str(REPO))

WRITES = ["/bin/sh", "-c", 'i=0; while [ $i -lt 1000 ]; do : > /tmp/f$i; i=$((i+1)); done']


def _launch(plan, argv, fallback: bool) -> float:
    from sandbox import landlock, launcher
    real = landlock.denial_source
    if not fallback:
        landlock.denial_source = lambda *a, **k: None
    try:
        t = time.perf_counter()
        r = launcher.launch(plan, argv, on_event=lambda *a, **k: None, stdout=None)
        dt = time.perf_counter() - t
    finally:
        landlock.denial_source = real
    if r.exit_code != 0:
        raise RuntimeError(f"{argv}: exit {r.exit_code} {r.message}")
    return dt * 1000


def rows(quick: bool) -> list:
    from policies.compiler import compile_profile
    plan = compile_profile("strict", None).plan
    n = 5 if quick else 21
    out = []
    for name, argv in (("landlock audit: strict /bin/true (exec notified once)", ["/bin/true"]),
                       ("landlock audit: strict, 1000 files written in /tmp", WRITES)):
        got: dict = {True: [], False: []}
        _launch(plan, argv, True)                          # warm
        for i in range(n):
            for fb in ((True, False) if i % 2 else (False, True)):
                got[fb].append(_launch(plan, argv, fb))
        on, off = statistics.median(got[True]), statistics.median(got[False])
        out.append({"name": name, "value": round(on, 2), "unit": "ms", "peer": "without the fallback",
                    "peer_value": round(off, 2), "ratio": round(on / off, 3), "target": None})
    return out


if __name__ == "__main__":
    if os.geteuid() != 0:
        sys.exit("bench/landlock_audit.py: run as root")
    for row in rows("--quick" in sys.argv):
        print(row)
