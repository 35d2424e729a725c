"""Learn mode: `pysandbox learn --profile BASE -o NEW.yaml -- CMD`.

Runs CMD in the sandbox BASE describes — namespaces, capabilities, filesystem, limits all
enforced as usual — except seccomp, which runs *observing*: every call BASE would deny
(deny rules of any action, and the default action) is sent to a learn-mode supervisor
(seccomp user notification) that records it and lets it run
(SECCOMP_USER_NOTIF_FLAG_CONTINUE; `notify.supervisor.Learning`, the only code
path in pysandbox that ever continues a notified call). Then it writes NEW.yaml:

    extends: BASE
    capabilities: {add: !extend [...]}     # inferred: observed calls that need a capability
    seccomp:
      allow: !extend [observed calls BASE's default denied]
      deny: [BASE's deny list, with groups holding an observed call expanded and that call removed]

A deny beats an allow at equal specificity, so a call BASE denies explicitly (e.g. through
@privileged) is taken out of the deny list rather than added to the allow list.
Capabilities are inferred only where a syscall is governed by exactly one (chown -> CHOWN,
setuid family -> SETUID, setgid family -> SETGID, capset -> SETPCAP, and the call groups
the kernel gates on one capability: see CAP_HINTS); a capability check the program fails
without a seccomp denial (e.g. binding port 80) is not visible to learn mode.

Learn mode is not a security boundary for seccomp: run only programs you would run
under BASE without a seccomp filter.
"""
from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import replace
from typing import Optional

import click

# Syscalls whose success the kernel gates on one capability (beyond policies.seccomp.CAP_LIFTS).
CAP_HINTS: dict[str, str] = {
    "chown": "CHOWN", "fchown": "CHOWN", "fchownat": "CHOWN", "lchown": "CHOWN",
    "setuid": "SETUID", "setreuid": "SETUID", "setresuid": "SETUID", "setfsuid": "SETUID",
    "setgid": "SETGID", "setregid": "SETGID", "setresgid": "SETGID", "setfsgid": "SETGID",
    "setgroups": "SETGID", "capset": "SETPCAP",
    "sethostname": "SYS_ADMIN", "setdomainname": "SYS_ADMIN", "mount": "SYS_ADMIN", "umount2": "SYS_ADMIN",
    "pivot_root": "SYS_ADMIN", "chroot": "SYS_CHROOT", "ptrace": "SYS_PTRACE",
    "process_vm_readv": "SYS_PTRACE", "process_vm_writev": "SYS_PTRACE",
    "settimeofday": "SYS_TIME", "clock_settime": "SYS_TIME", "adjtimex": "SYS_TIME", "clock_adjtime": "SYS_TIME",
    "init_module": "SYS_MODULE", "finit_module": "SYS_MODULE", "delete_module": "SYS_MODULE",
    "reboot": "SYS_BOOT", "acct": "SYS_PACCT", "iopl": "SYS_RAWIO", "ioperm": "SYS_RAWIO",
    "swapon": "SYS_ADMIN", "swapoff": "SYS_ADMIN", "vhangup": "SYS_TTY_CONFIG",
    "mknod": "MKNOD", "mknodat": "MKNOD",
}
# Only these are inferred into `capabilities.add`: the rest would widen the sandbox a lot
# and are reported as hints instead.
SAFE_INFERRED_CAPS = frozenset({"CHOWN", "SETUID", "SETGID", "SETPCAP"})


def learning_seccomp(s):
    """BASE's seccomp plan with every non-allow decision turned into `notify` (observed).
    The default becomes notify, so a syscall's non-allow rules can just fall to it when its
    rules are disjoint; rules kept in priority order (first match) keep their place, as notify."""
    from policies.seccomp import disjoint
    by_name: dict = {}
    for r in s.rules:
        by_name.setdefault(r.name, []).append(r)
    rules = []
    for name, rs in by_name.items():
        if disjoint(rs):
            rules.extend(r for r in rs if r.action in ("allow", "log"))
        else:
            rules.extend(r if r.action in ("allow", "log") else replace(r, action="notify", errno=None)
                         for r in rs)
    return replace(s, rules=tuple(rules), default_action="notify", default_errno=None, notify_denials=True)


def observed_from(events: list) -> dict:
    """learn-mode events -> {syscall name: count}, in first-seen order. The rate limit writes
    the first call of each kind in full, so every name is there; counts include coalesced ones."""
    from audit.sinks import event_count
    out: dict = {}
    for e in events:
        if e.get("type") in ("seccomp_logged", "escape_attempt", "seccomp_denied") and e.get("syscall"):
            n = e["syscall"].get("name")
            if n:
                out[n] = out.get(n, 0) + event_count(e)     # a coalesced record counts its calls
    return out


def _base_errno(s, name: str) -> Optional[int]:
    for r in s.rules:
        if r.name == name and not r.args and r.action == "errno":
            return r.errno
    return None


def _denied_by(s, name: str) -> Optional[str]:
    """How BASE's plan treats a call: 'rule' (a deny rule names it), 'default', or None (allowed)."""
    named = [r for r in s.rules if r.name == name]
    if any(r.action != "allow" for r in named):
        return "rule"
    if named and all(r.action == "allow" for r in named) and any(not r.args for r in named):
        return None
    return "default" if s.default_action != "allow" else None


def new_deny_list(deny: list, remove: set, keep_caps: set) -> tuple[list, bool]:
    """BASE's deny list without the names in `remove`: groups that contain one are expanded
    (minus members a kept capability lifts, which the compiler would lift anyway)."""
    from policies import syscalls as sc
    try:
        from policies.seccomp import CAP_LIFTS
    except ImportError:  # pragma: no cover
        CAP_LIFTS = {}
    lifted = {n for cap in keep_caps for n in CAP_LIFTS.get(cap, ())}
    out, changed = [], False
    for item in deny:
        if isinstance(item, str):
            if sc.is_group(item):
                members = sc.expand([item])
                if remove & set(members):
                    changed = True
                    out.extend(m for m in members if m not in remove and m not in lifted and m not in out
                               and sc.is_known(m))      # other architectures' names: lint PSB207
                else:
                    out.append(item)
            elif item in remove:
                changed = True
            else:
                out.append(item)
        elif isinstance(item, dict):
            names = list(item.get("names", []))
            expanded = []
            for n in names:
                expanded.extend(sc.expand([n]) if sc.is_group(n) else [n])
            if remove & set(expanded):
                changed = True
                rest = [n for n in expanded if n not in remove and sc.is_known(n)]
                if rest:
                    out.append({**item, "names": rest})
            else:
                out.append(item)
        else:
            out.append(item)
    return out, changed


def _flow(items) -> str:
    return "[" + ", ".join(json.dumps(x) for x in items) + "]"


def _item(x) -> str:
    return json.dumps(x, separators=(", ", ": ")) if isinstance(x, dict) else json.dumps(x)


def escape_class(name: str) -> Optional[tuple[str, str]]:
    """(severity, why) when `pysandbox lint` calls allowing `name` an escape (PSB203)."""
    try:
        from policies.lint.hazards import ESCAPE_SYSCALLS
    except ImportError:  # pragma: no cover - lint not installed
        from audit.techniques import classify
        t = classify(name)
        return ("error", t[1]) if t else None
    return ESCAPE_SYSCALLS.get(name)


def render_profile(name: str, base_ref: str, argv, observed: dict, allow: list, deny: Optional[list],
                   caps: list, hints: dict, kept: Optional[dict] = None, allowed_escape: Optional[dict] = None) -> str:
    import shlex
    from audit.reader import safe
    cmd = safe(shlex.join(argv))        # one line, no control characters: it goes in YAML comments
    lines = [
        f"# Generated by `pysandbox learn` on {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}.",
        f"# Observed under {base_ref}: {cmd}",
        "# Allows exactly the system calls the program made that the base profile denies:",
        "#   " + (", ".join(f"{k} ×{v}" for k, v in observed.items()) or "(none)"),
    ]
    for n, why in (kept or {}).items():
        lines.append(f"# NOT allowed: {n} is escape-class ({why}); rerun learn with --allow-escape to allow it")
    for n, why in (allowed_escape or {}).items():
        lines.append(f"# REVIEW: {n} is escape-class ({why}) and was allowed because of --allow-escape")
    for n, cap in hints.items():
        lines.append(f"# note: {n} usually also needs CAP_{cap} (not added: review and add by hand)")
    lines += [
        "version: 1",
        f"name: {name}",
        f"description: {json.dumps(f'{base_ref} plus what `{cmd[:80]}` needed (pysandbox learn)')}",
        f"extends: {json.dumps(base_ref)}",
    ]
    if caps:
        lines += ["capabilities:", f"  add: !extend {_flow(caps)}"]
    if allow or deny is not None:
        lines.append("seccomp:")
        if allow:
            line = f"  allow: !extend {_flow(allow)}"
            if allowed_escape:
                line += (f"   # pysandbox: ignore[PSB203] observed by pysandbox learn and allowed with "
                         f"--allow-escape: {', '.join(allowed_escape)}")
            lines.append(line)
        if deny is not None:
            lines.append("  deny:" if deny else "  deny: []")
            lines += [f"    - {_item(x)}" for x in deny]
    return "\n".join(lines) + "\n"


def _profile_name(path: str) -> str:
    import re
    stem = os.path.splitext(os.path.basename(path))[0]
    stem = re.sub(r"[^A-Za-z0-9_.-]", "-", stem).lstrip("-_.") or "learned"
    return stem


def learn(base_ref: str, argv, output: str, *, audit_log: Optional[str] = None, timeout: Optional[float] = None,
          allow_escape: bool = False, stream=None) -> tuple[int, dict, str]:
    """Run argv under BASE observing seccomp; write the learned profile. -> (exit code, observed, text)."""
    from policies.compiler import Overrides, compile_profile

    from . import seccomp as _sc
    from .launcher import LaunchError, launch
    import audit
    from audit.session import open_session

    if not _sc.user_notif_available():
        raise LaunchError("learn mode needs seccomp user notification (kernel 5.0+), which this kernel lacks")
    compiled = compile_profile(base_ref, Overrides(argv=tuple(argv), timeout=timeout))
    plan = compiled.plan
    base = plan.seccomp
    if not base.enabled:
        raise LaunchError(f"learn: profile {base_ref} has seccomp disabled: nothing to learn")
    ls = learning_seccomp(base)
    try:
        bpf = _sc.build_bpf(ls, notify_enosys=True)
    except ValueError as e:
        raise LaunchError(f"learn: {e}") from None
    mem = audit.MemorySink()
    sess = open_session(os.urandom(6).hex(), "learn", plan.name, log_path=audit_log, summary=False,
                        syslog=False) if audit_log else None
    rec = audit.Recorder("learn", "learn", plan.name, [mem])

    def on_event(t, **f):
        ev = rec.emit(t, **f)
        if sess is not None:
            sess.emit(t, **f)
        return ev
    try:
        result = launch(replace(plan, seccomp=ls), tuple(argv), bpf=bpf, name="learn", on_event=on_event,
                        learn_plan=base)
    finally:
        if sess is not None:
            sess.close()
    if result.message:
        (stream or sys.stderr).write(result.message.rstrip("\n") + "\n")
    observed = observed_from(mem.events)

    keep_caps = set(plan.capabilities)
    caps, hints = [], {}
    for n in observed:
        cap = CAP_HINTS.get(n)
        if cap is None or cap in keep_caps:
            continue
        if cap in SAFE_INFERRED_CAPS:
            if cap not in caps:
                caps.append(cap)
        else:
            hints[n] = cap
    # escape-class calls (lint PSB203 errors) stay denied unless the caller says otherwise;
    # clone3 denied with ENOSYS is glibc's probe, answered as intended: never learned.
    kept, allowed_escape = {}, {}
    learnable = []
    for n in observed:
        if n == "clone3" and _base_errno(base, n) == 38:
            continue
        ec = escape_class(n)
        if ec is not None and ec[0] == "error":
            if not allow_escape:
                kept[n] = ec[1]
                continue
            allowed_escape[n] = ec[1]
        learnable.append(n)
    by_rule = [n for n in learnable if _denied_by(base, n) == "rule"]
    by_default = [n for n in learnable if _denied_by(base, n) == "default"]
    deny = None
    if by_rule:
        data_deny = ((compiled.document.data.get("seccomp") or {}).get("deny")) or []
        deny, changed = new_deny_list(list(data_deny), set(by_rule), keep_caps | set(caps))
        if not changed:
            deny = None
    base_ref_out = base_ref if not ("/" in base_ref or base_ref.endswith((".yaml", ".yml"))) \
        else os.path.abspath(base_ref)
    # every learned call goes to the allow list (a call removed from the deny list would
    # otherwise fall to the default action)
    allow = by_default + [n for n in by_rule if n not in by_default]
    text = render_profile(_profile_name(output), base_ref_out, argv, observed, allow, deny, caps, hints,
                          kept, allowed_escape)
    from . import fsutil
    fsutil.atomic_write(output, text, mode=None)
    return result.exit_code, observed, text


@click.command("learn", context_settings={"allow_interspersed_args": False})
@click.option("--profile", "profile", default="strict", show_default=True, help="Base profile (name or file).")
@click.option("-o", "--output", required=True, metavar="NEW.yaml", type=click.Path(dir_okay=False),
              help="Where to write the learned profile.")
@click.option("--force", is_flag=True, help="Overwrite NEW.yaml if it exists.")
@click.option("--timeout", type=float, metavar="SECONDS", help="Kill the sandbox after this time.")
@click.option("--audit-log", "audit_log", metavar="FILE", help="Also append the observations to FILE.")
@click.option("--allow-escape", is_flag=True,
              help="Also allow observed escape-class calls (lint PSB203 errors), with a reviewed suppression.")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def learn_command(profile, output, force, timeout, audit_log, allow_escape, command):
    """Run COMMAND observing seccomp, then write a least-privilege profile extending the base:

    pysandbox learn --profile strict -o my.yaml -- COMMAND [ARGS...]

    Namespaces, capabilities, filesystem and limits of the base profile are enforced; seccomp
    denials are recorded and allowed (learn mode only). Exit status: COMMAND's."""
    from .launcher import LaunchError
    if os.path.exists(output) and not force:
        raise click.UsageError(f"{output} exists (use --force to overwrite)")
    parent = os.path.dirname(os.path.abspath(output))
    if not (os.path.isdir(parent) and os.access(parent, os.W_OK | os.X_OK)):   # before the command runs
        raise click.UsageError(f"{output}: cannot write there ({parent}: "
                               f"{'not writable' if os.path.isdir(parent) else 'no such directory'})")
    try:
        code, observed, text = learn(profile, command, output, audit_log=audit_log, timeout=timeout,
                                     allow_escape=allow_escape)
    except LaunchError as e:
        click.echo(f"pysandbox learn: {e}", err=True)
        return e.code
    except OSError as e:
        click.echo(f"pysandbox learn: {output}: {e.strerror}", err=True)
        return 125
    shown = ", ".join(f"{k} ×{v}" for k, v in observed.items()) or "nothing beyond the base profile"
    click.echo(f"pysandbox learn: observed {shown}; wrote {output} (command exit status {code})", err=True)
    for line in text.splitlines():
        if line.startswith(("# NOT allowed:", "# REVIEW:")):
            click.echo(f"pysandbox learn: {line[2:]}", err=True)
    return code


COMMANDS = [learn_command]
