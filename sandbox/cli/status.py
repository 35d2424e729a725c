"""`pysandbox ps|inspect|logs|top|stats`: what the detached sandboxes are doing (read only).

Exit codes: 0 ok; 1 no such sandbox / not running; 2 usage. The status itself (starting,
running, paused, exited, dead) is sandbox/detached.py's `status_of`.
"""
from __future__ import annotations

import json
import os
import sys
import time
from typing import Optional

import click

from .. import procid
from ..store import state
from ..recorded import load, status_of
from ..store.state import StateError
from . import completion as _complete


def report(e: StateError) -> int:
    """One line on stderr for a failed sandbox operation; its exit code."""
    sys.stderr.write(f"pysandbox: {e}\n")
    return e.code


# --- what the commands read -----------------------------------------------------------------

def listing(all_: bool = False) -> list[dict]:
    rows = []
    for n in state.names():
        try:
            st = state.read(n)
        except StateError:
            continue
        status = status_of(st, n)
        if not all_ and status not in ("running", "starting", "paused"):
            continue
        rows.append({"name": n, "id": st.get("id"), "profile": st.get("profile"), "status": status,
                     "exit_code": st.get("exit_code"), "pid": st.get("pid1"), "created": st.get("created"),
                     "command": st.get("argv")})
    return rows


def inspect(ref: str) -> dict:
    name, st, status = load(ref)
    out = dict(st)
    out["status"] = status
    prog = st.get("program_pid")
    out["paused"] = status == "paused"
    if status in ("running", "paused") and procid.same_process(prog, st.get("program_start")):
        out["mounts"] = _mounts(prog)
        out["processes"] = [p["pid"] for p in processes(st)]
    out["limits"] = (st.get("plan") or {}).get("limits")
    out["network"] = (st.get("plan") or {}).get("network")
    out["state_dir"] = str(state.sandbox_dir(name))
    return out


def _mounts(pid: int) -> list:
    try:
        with open(f"/proc/{pid}/mountinfo") as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        left, _, right = line.partition(" - ")
        lf, rf = left.split(), right.split()
        if len(lf) >= 6 and len(rf) >= 2:
            out.append({"target": lf[4], "fstype": rf[0], "source": rf[1], "options": lf[5]})
    return out


def processes(st: dict) -> list[dict]:
    """The sandbox's processes (host view): those in its pid namespace, else in its cgroups."""
    pidns = (st.get("namespaces") or {}).get("pid")
    pids = set()
    if pidns:
        for ent in os.scandir("/proc"):
            if ent.name.isdigit():
                try:
                    if os.stat(f"/proc/{ent.name}/ns/pid").st_ino == pidns:
                        pids.add(int(ent.name))
                except OSError:
                    pass
    for cg in st.get("cgroups") or ():
        try:
            with open(os.path.join(cg, "cgroup.procs")) as f:
                pids.update(int(x) for x in f.read().split())
        except (OSError, ValueError):
            pass
    rows = []
    for pid in sorted(pids):
        row = _proc_row(pid)
        if row:
            rows.append(row)
    return rows


def _proc_row(pid: int) -> Optional[dict]:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            s = f.read()
        with open(f"/proc/{pid}/status") as f:
            status = f.read()
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = " ".join(f.read().replace(b"\0", b" ").decode(errors="replace").split())
    except OSError:
        return None
    fields = s[s.rindex(b")") + 2:].split()
    comm = s[s.index(b"(") + 1:s.rindex(b")")].decode(errors="replace")
    kv = dict(l.split(":", 1) for l in status.splitlines() if ":" in l)
    nspid = kv.get("NSpid", "").split()
    tick = os.sysconf("SC_CLK_TCK")
    return {"pid": pid, "nspid": int(nspid[-1]) if nspid else None, "ppid": int(fields[1]),
            "state": fields[0].decode(), "uid": kv.get("Uid", "").split()[0] if kv.get("Uid") else "",
            "rss_kib": int(kv.get("VmRSS", "0 kB").split()[0]) if kv.get("VmRSS") else 0,
            "cpu_s": round((int(fields[11]) + int(fields[12])) / tick, 2), "command": cmd or f"[{comm}]"}


def cgroup_stats(st: dict) -> dict:
    """Current cgroup figures of the sandbox (v1 and v2 files)."""
    def rd(path):
        try:
            with open(path) as f:
                return f.read().strip()
        except OSError:
            return None

    def num(v):
        try:
            return int(v)
        except (TypeError, ValueError):
            return None
    out: dict = {}
    for cg in st.get("cgroups") or ():
        if os.path.exists(os.path.join(cg, "memory.usage_in_bytes")):
            out["memory_usage"] = num(rd(os.path.join(cg, "memory.usage_in_bytes")))
            lim = num(rd(os.path.join(cg, "memory.limit_in_bytes")))
            out["memory_limit"] = lim if lim is not None and lim < (1 << 62) else None
            out["memory_peak"] = num(rd(os.path.join(cg, "memory.max_usage_in_bytes")))
        if os.path.exists(os.path.join(cg, "memory.current")):
            out["memory_usage"] = num(rd(os.path.join(cg, "memory.current")))
            out["memory_limit"] = num(rd(os.path.join(cg, "memory.max")))
        if os.path.exists(os.path.join(cg, "pids.current")):
            out["pids"] = num(rd(os.path.join(cg, "pids.current")))
            out["pids_limit"] = num(rd(os.path.join(cg, "pids.max")))
        if os.path.exists(os.path.join(cg, "cpuacct.usage")):
            u = num(rd(os.path.join(cg, "cpuacct.usage")))
            out["cpu_usage_ns"] = u
        if os.path.exists(os.path.join(cg, "cpu.stat")) and "cpu_usage_ns" not in out:
            for line in (rd(os.path.join(cg, "cpu.stat")) or "").splitlines():
                k, _, v = line.partition(" ")
                if k == "usage_usec":
                    out["cpu_usage_ns"] = num(v) * 1000
    return out


def follow_logs(name: str, follow: bool, out=None, err=None) -> None:
    out = out or sys.stdout.buffer
    err = err or sys.stderr.buffer
    d = state.sandbox_dir(name)
    files = []
    for fname, dest in (("stdout.log", out), ("stderr.log", err)):
        try:
            files.append((open(d / fname, "rb"), dest))
        except FileNotFoundError:
            pass
    try:
        while True:
            got = False
            for f, dest in files:
                chunk = f.read()
                if chunk:
                    got = True
                    dest.write(chunk)
                    dest.flush()
            if not follow:
                return
            if not got:
                if not state.is_alive(name):
                    for f, dest in files:          # what was written just before the end
                        chunk = f.read()
                        if chunk:
                            dest.write(chunk)
                            dest.flush()
                    return
                time.sleep(0.1)
    finally:
        for f, _ in files:
            f.close()


def to_json(obj) -> str:
    return json.dumps(obj, indent=2, default=str)


# --- the commands ---------------------------------------------------------------------------

def _fmt_status(row) -> str:
    s = row["status"]
    if s == "exited":
        return f"exited ({row.get('exit_code')})"
    return s


@click.command("ps")
@click.option("-a", "--all", "all_", is_flag=True, help="Also stopped and dead sandboxes.")
@click.option("--json", "as_json", is_flag=True)
@click.option("-q", "--quiet", is_flag=True, help="Names only.")
def ps_cmd(all_, as_json, quiet):
    """List named/detached sandboxes."""
    try:
        rows = listing(all_)
    except StateError as e:
        return report(e)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return 0
    if quiet:
        for r in rows:
            click.echo(r["name"])
        return 0
    click.echo(f"{'NAME':<20} {'ID':<13} {'PROFILE':<10} {'STATUS':<12} {'PID':>8}  {'CREATED':<20} COMMAND")
    for r in rows:
        cmd = " ".join(r.get("command") or [])
        click.echo(f"{r['name']:<20} {r['id'] or '':<13} {r['profile'] or '':<10} {_fmt_status(r):<12} "
                   f"{r['pid'] or '':>8}  {r['created'] or '':<20} {cmd[:60]}")
    return 0


@click.command("inspect")
@click.argument("names", nargs=-1, required=True, shell_complete=_complete.sandboxes)
@click.option("--json", "as_json", is_flag=True, help="(always JSON; accepted for symmetry)")
def inspect_cmd(names, as_json):
    """Everything known about sandboxes, as JSON: profile, compiled plan, pids, namespace inodes,
    cgroups, mounts, limits, network, log and audit paths."""
    out = []
    code = 0
    for n in names:
        try:
            out.append(inspect(n))
        except StateError as e:
            code = report(e)
    click.echo(to_json(out))
    return code


@click.command("logs")
@click.argument("name", shell_complete=_complete.sandboxes)
@click.option("-f", "--follow", is_flag=True, help="Keep printing until the sandbox ends.")
def logs_cmd(name, follow):
    """The stdout (to stdout) and stderr (to stderr) of a detached sandbox."""
    try:
        n = state.resolve(name)
        follow_logs(n, follow)
    except StateError as e:
        return report(e)
    except KeyboardInterrupt:
        return 0
    return 0


@click.command("top")
@click.argument("name", shell_complete=_complete.sandboxes)
@click.option("--json", "as_json", is_flag=True)
def top_cmd(name, as_json):
    """The processes of a running sandbox (host pid, pid inside, state, RSS, CPU time, command)."""
    try:
        _n, st, status = load(name)
    except StateError as e:
        return report(e)
    if status not in ("running", "paused"):
        return report(StateError(f"{name} is not running ({status})"))
    rows = processes(st)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return 0
    click.echo(f"{'PID':>8} {'NSPID':>6} {'PPID':>8} {'S':<2} {'UID':>10} {'RSS(KiB)':>9} {'CPU(s)':>7}  COMMAND")
    for r in rows:
        click.echo(f"{r['pid']:>8} {r['nspid'] or '':>6} {r['ppid']:>8} {r['state']:<2} {r['uid']:>10} "
                   f"{r['rss_kib']:>9} {r['cpu_s']:>7}  {r['command'][:80]}")
    return 0


def _h(n) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f}{unit}" if unit != "B" else f"{n}B"
        n /= 1024
    return str(n)


@click.command("stats")
@click.argument("names", nargs=-1, required=True, shell_complete=_complete.sandboxes)
@click.option("--no-stream", is_flag=True, help="Print once and exit.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per sandbox and sample.")
@click.option("--interval", type=float, default=1.0, show_default=True)
def stats_cmd(names, no_stream, as_json, interval):
    """Live cgroup figures: CPU %, memory usage/limit, pids. CPU % is the CPU time used over the
    last interval (100 % = one CPU); --no-stream samples once over --interval, as Docker does."""
    if interval <= 0 or interval > 3600:
        raise click.BadParameter("must be > 0 and at most 3600", param_hint="--interval")
    prev: dict = {}

    def sample() -> list:
        rows = []
        for n in names:
            name, st, status = load(n)
            live = status in ("running", "paused")
            s = cgroup_stats(st) if live else {}
            procs = processes(st) if live else []
            if s.get("cpu_usage_ns") is None and procs:   # no cpu accounting cgroup: the processes' times
                s["cpu_usage_ns"] = int(sum(p["cpu_s"] for p in procs) * 1e9)
            now = time.monotonic()
            cpu = None
            if s.get("cpu_usage_ns") is not None and name in prev:
                t0, u0 = prev[name]
                if now > t0 and u0 is not None:
                    cpu = round(max(0.0, 100.0 * (s["cpu_usage_ns"] - u0) / 1e9 / (now - t0)), 2)
            prev[name] = (now, s.get("cpu_usage_ns"))
            rows.append({"name": name, "status": status, "cpu_percent": cpu, **s, "processes": len(procs)})
        return rows

    try:
        if no_stream:                 # a first sample, then the figures over one interval
            try:
                first = sample()
            except StateError as e:
                return report(e)
            if any(r["status"] in ("running", "paused") for r in first):
                time.sleep(interval)
        while True:
            try:
                rows = sample()
            except StateError as e:
                return report(e)
            if as_json:
                for r in rows:
                    click.echo(json.dumps(r))
            else:
                click.echo(f"{'NAME':<20} {'STATUS':<9} {'CPU %':>7} {'MEM USAGE / LIMIT':>24} {'PIDS':>6} "
                           f"{'PIDS LIMIT':>10}")
                for r in rows:
                    mem = f"{_h(r.get('memory_usage'))} / {_h(r.get('memory_limit'))}"
                    click.echo(f"{r['name']:<20} {r['status']:<9} "
                               f"{r['cpu_percent'] if r['cpu_percent'] is not None else '-':>7} {mem:>24} "
                               f"{r.get('pids') if r.get('pids') is not None else '-':>6} "
                               f"{r.get('pids_limit') if r.get('pids_limit') is not None else '-':>10}")
            sys.stdout.flush()
            if no_stream:
                return 0
            if all(r["status"] not in ("running", "paused") for r in rows):
                return 0
            time.sleep(interval)
    except KeyboardInterrupt:
        return 0


COMMANDS = [ps_cmd, inspect_cmd, logs_cmd, top_cmd, stats_cmd]
