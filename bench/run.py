#!/usr/bin/env python3
"""Every benchmark of bench/ in one run: ONE table, and the figures as JSON in bench/results/.

Each `bench/<topic>.py` that defines `rows(quick: bool) -> list[dict]` is a topic; this runner
imports them all (new topic files are picked up without editing this one). A row is a dict with
  name        the figure ("launch: CLI strict, cached plan")
  value       the measurement, in `unit`
  unit        "ms", "sandboxes/s", "MiB", ...
  peer        the peer it is compared with, measured in the same run (or None)
  peer_value  the peer's figure in the same unit (or None)
  ratio       value / peer_value (or None)
  target      text: "<= 1.5x crun" (a bound on the ratio: the number is followed by "x"),
              "<= 300 ms", ">= 200/s" (a bound on the value), or None
The table's last column says whether the target is met. The JSON (bench/results/<UTC date-time>.json)
holds the rows and the machine's description (kernel, CPU model, cores, Python, peers' versions,
load average), so that a regression shows in review. Timing is never asserted in tests: this is
`make bench`, not `make test`.

Usage: bench/run.py [--quick] [--only TOPIC ...] [--no-save]
"""
from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import traceback
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
NOT_TOPICS = {"run", "peers", "__init__"}
# python puts this script's directory first on sys.path: move it after the stdlib
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != str(BENCH)]
for _p in (str(REPO), str(BENCH)):
    if _p not in sys.path:
        sys.path.append(_p)          # after the stdlib: bench/concurrent.py must not shadow `concurrent`

_TARGET = re.compile(r"^\s*(<=|>=|<|>|≤|≥)\s*([0-9]*\.?[0-9]+)\s*(x\b)?")


def topics() -> list[str]:
    return sorted(p.stem for p in BENCH.glob("*.py") if p.stem not in NOT_TOPICS and not p.stem.startswith("_"))


def load(topic: str):
    """The topic module, imported by path under a private name (bench/concurrent.py is named like a
    standard package); None when it has no rows()."""
    spec = importlib.util.spec_from_file_location(f"_bench_{topic}", BENCH / f"{topic}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod if callable(getattr(mod, "rows", None)) else None


def met(row: dict):
    """True/False when the target can be judged, None when there is no target or no figure."""
    m = _TARGET.match(row.get("target") or "")
    if not m:
        return None
    op, bound, on_ratio = m.group(1), float(m.group(2)), bool(m.group(3))
    v = row.get("ratio") if on_ratio else row.get("value")
    if v is None:
        return None
    return {"<=": v <= bound, "≤": v <= bound, ">=": v >= bound, "≥": v >= bound,
            "<": v < bound, ">": v > bound}[op]


def _version(argv) -> str | None:
    exe = shutil.which(argv[0])
    if not exe:
        return None
    try:
        p = subprocess.run([exe, *argv[1:]], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return (p.stdout or p.stderr).strip().splitlines()[0] if (p.stdout or p.stderr).strip() else None


def machine() -> dict:
    cpu = None
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), None)
    except OSError:
        pass
    with open("/proc/loadavg") as f:
        load_avg = f.read().split()[:3]
    git = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return {"kernel": platform.release(), "cpu": cpu, "cores": os.cpu_count(),
            "python": platform.python_version(), "user": "root" if os.geteuid() == 0 else "rootless",
            "load_average": load_avg, "commit": git.stdout.strip() or None,
            "peers": {name: _version(argv) for name, argv in
                      (("bwrap", ["bwrap", "--version"]), ("crun", ["crun", "--version"]),
                       ("runc", ["runc", "--version"]), ("podman", ["podman", "--version"]))}}


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 10 else f"{v:.1f}"
    return str(v)


def table(rows: list[dict]) -> str:
    head = ("figure", "value", "unit", "peer", "peer value", "ratio", "target", "met?")
    body = [(r["name"], _fmt(r.get("value")), r.get("unit") or "", r.get("peer") or "-",
             _fmt(r.get("peer_value")), _fmt(r.get("ratio")), r.get("target") or "-",
             {True: "yes", False: "NO", None: "-"}[met(r)]) for r in rows]
    widths = [max(len(x[i]) for x in [head, *body]) for i in range(len(head))]
    line = lambda cells: "  ".join(c.ljust(w) if i in (0, 2, 3, 6) else c.rjust(w)  # noqa: E731
                                   for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([line(head), line(["-" * w for w in widths]), *(line(b) for b in body)])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer repetitions (a smoke run, noisier figures)")
    ap.add_argument("--only", action="append", metavar="TOPIC", help="only this topic (repeatable)")
    ap.add_argument("--no-save", action="store_true", help="do not write bench/results/*.json")
    a = ap.parse_args(argv)
    with open("/proc/loadavg") as f:
        load_start = f.read().split()[:3]
    names = topics()
    if a.only:
        unknown = sorted(set(a.only) - set(names))
        if unknown:
            ap.error(f"unknown topic(s) {', '.join(unknown)}; known: {', '.join(names)}")
        names = [t for t in names if t in a.only]
    all_rows, failed = [], {}
    for topic in names:
        try:
            mod = load(topic)
            if mod is None:
                continue
            print(f"== {topic}", file=sys.stderr, flush=True)
            for r in mod.rows(a.quick):
                all_rows.append({"topic": topic, **r, "met": met(r)})
        except Exception as e:                     # noqa: BLE001 - one topic failing must not hide the rest
            failed[topic] = f"{type(e).__name__}: {e}"
            traceback.print_exc()
    m = {**machine(), "load_average_start": load_start}
    print(table(all_rows))
    print(f"{m['cpu']}, {m['cores']} cores, kernel {m['kernel']}, Python {m['python']}, {m['user']}; "
          f"load average {' '.join(load_start)} -> {' '.join(m['load_average'])}; "
          + ", ".join(v for v in m["peers"].values() if v))
    for topic, err in failed.items():
        print(f"topic {topic} failed: {err}")
    if not a.no_save:
        now = datetime.datetime.now(datetime.timezone.utc)
        out = BENCH / "results" / f"{now:%Y-%m-%dT%H%M%SZ}.json"
        out.parent.mkdir(exist_ok=True)
        out.write_text(json.dumps({"time": now.isoformat(timespec="seconds"), "quick": a.quick,
                                   "machine": m, "rows": all_rows, "failed": failed}, indent=1) + "\n")
        print(f"wrote {out.relative_to(REPO)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
