"""PSB401 no-memory-limit: No memory limit: the program can exhaust the host's memory."""
from __future__ import annotations

from ..context import Ctx
from ..model import Rule

RULE = Rule(
    code="PSB401",
    name="no-memory-limit",
    severity="warning",
    summary="No memory limit: the program can exhaust the host's memory.",
    rationale="""\
Without a memory limit a program (or a leak) can push the host into swap and the OOM killer,
taking other services with it. Set `limits.memory` (cgroup `memory.max`).
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
limits:   # expect: PSB401
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
Set `limits: {memory: 512m}` (or run with `--memory`).
""",
)


def check(ctx: Ctx) -> None:
    if ctx.plan.limits.memory is None:
        ctx.report(RULE, "no memory limit: the program can exhaust the host's memory",
                   "set `limits: {memory: 512m}` (or run with --memory)", ("limits",))
