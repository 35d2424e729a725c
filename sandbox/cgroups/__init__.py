"""Resource limits through cgroups: one driver per cgroup version behind one small interface
(modelled on runc's libcontainer: `fs` for v1, `fs2` for v2).

| module | job |
|---|---|
| `manager` | what the launcher calls: `create_for_sandbox` -> `Cgroup` (PID 1's descriptors, kill, finish) |
| `v1`, `v2` | the drivers: a version's files, limits written and read back, kill, statistics |
| `driver` | what both drivers share (leaves, flocks, removal) |
| `limits` | a plan's `Limits` -> controllers and Docker flags; checks before anything is created |
| `layout` | the hierarchies of this mount namespace (`detect`, from /proc/self/mountinfo) |
| `placement` | where a caller's sandbox cgroups go (root, delegated v1 subtree, delegated cgroup2) |
| `files` | the cgroup file interface, `CgroupError` |
| `freezer` | the freeze-then-SIGKILL loop; pause / unpause |
| `stats` | figures -> audit events; the one-line summary |
| `leftover` | what dead supervisors left: removal, reclaim, listing |
| `delegate` | root gives a user a limited v1 subtree |
| `doctor` | `pysandbox doctor`'s rows |

Fail closed: every requested limit is written and read back; a limit that cannot be enforced
(controller not mounted or not enabled, not writable for this caller, rootless without a delegated
cgroup, value refused by the kernel) raises `CgroupError`, whose text is one line naming the
controller.

This package's `__init__` imports nothing: a launch imports only the modules it uses.
"""
