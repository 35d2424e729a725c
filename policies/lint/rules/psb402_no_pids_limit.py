"""PSB402 no-pids-limit: No pids limit: a fork bomb can exhaust the host's process table."""
from __future__ import annotations

from ..context import Ctx
from ..model import Rule

RULE = Rule(
    code="PSB402",
    name="no-pids-limit",
    severity="warning",
    summary="No pids limit: a fork bomb can exhaust the host's process table.",
    rationale="""\
Without a pids limit a fork bomb exhausts the host's process table. Set `limits.pids` (cgroup
`pids.max`).
""",
    bad="""\
# A clean profile: every lint rule passes. The rule fixtures extend it or copy it.
version: 1
name: lint-base
namespaces: {user: true, pid: true, mount: true, uts: true, ipc: true, net: true, cgroup: true}
user:
  uid: 0
  gid: 0
  uid_map: auto
  gid_map: auto
capabilities:
  drop: [ALL]
  add: []
no_new_privs: true
filesystem:
  root: host
  read_only: true
  mounts:
    - {type: tmpfs, target: /tmp, size: 16m}
  masked_paths: [/proc/acpi, /proc/asound, /proc/kcore, /proc/keys, /proc/latency_stats,
                 /proc/timer_list, /proc/timer_stats, /proc/sched_debug, /proc/scsi,
                 /sys/firmware, /sys/devices/virtual/powercap]
  readonly_paths: [/proc/bus, /proc/fs, /proc/irq, /proc/sys, /proc/sysrq-trigger]
process:
  argv: [/bin/true]
network: none
limits:   # expect: PSB402
  memory: 64m
  cpus: 0.5
seccomp:
  default_action: errno
  default_errno: ENOSYS
  allow: [read, write, close, exit, exit_group, brk, mmap, munmap, mprotect, rt_sigreturn,
          rt_sigaction, rt_sigprocmask, execve, arch_prctl, fstat, newfstatat, openat, futex]
  deny: [ptrace]
  deny_action: errno
  deny_errno: EPERM
""",
    good="""\
# A clean profile: every lint rule passes. The rule fixtures extend it or copy it.
version: 1
name: lint-base
namespaces: {user: true, pid: true, mount: true, uts: true, ipc: true, net: true, cgroup: true}
user:
  uid: 0
  gid: 0
  uid_map: auto
  gid_map: auto
capabilities:
  drop: [ALL]
  add: []
no_new_privs: true
filesystem:
  root: host
  read_only: true
  mounts:
    - {type: tmpfs, target: /tmp, size: 16m}
  masked_paths: [/proc/acpi, /proc/asound, /proc/kcore, /proc/keys, /proc/latency_stats,
                 /proc/timer_list, /proc/timer_stats, /proc/sched_debug, /proc/scsi,
                 /sys/firmware, /sys/devices/virtual/powercap]
  readonly_paths: [/proc/bus, /proc/fs, /proc/irq, /proc/sys, /proc/sysrq-trigger]
process:
  argv: [/bin/true]
network: none
limits:
  memory: 64m
  pids: 32
  cpus: 0.5
seccomp:
  default_action: errno
  default_errno: ENOSYS
  allow: [read, write, close, exit, exit_group, brk, mmap, munmap, mprotect, rt_sigreturn,
          rt_sigaction, rt_sigprocmask, execve, arch_prctl, fstat, newfstatat, openat, futex]
  deny: [ptrace]
  deny_action: errno
  deny_errno: EPERM
""",
    fix="""\
Set `limits: {pids: 256}` (or run with `--pids-limit`).
""",
)


def check(ctx: Ctx) -> None:
    if ctx.plan.limits.pids is None:
        ctx.report(RULE, "no pids limit: a fork bomb can exhaust the host's process table",
                   "set `limits: {pids: 256}` (or run with --pids-limit)", ("limits",))
