"""Seccomp user notification: every denied call, recorded exactly (docs/audit.md).

How it fits together
--------------------
0. The supervisor's side decides the run's filters once (sandbox/seccomp.py, filters): deny rules
   compiled as SECCOMP_RET_USER_NOTIF when plan.seccomp.notify_denials is true (kill rules too,
   when they are to be recorded first), or the kmsg fallback's plain filter.
1. Inside the sandbox, just before execve, the program's process loads its filter with
   SECCOMP_FILTER_FLAG_NEW_LISTENER, passes the listener fd to the launcher over a unix
   socketpair with SCM_RIGHTS (listener.send_listener), closes it and execs.
2. The launcher receives it (listener.recv_listener) and supervises it: supervision.Supervision
   (the launcher's three calls), or supervisor.start(listener_fd, seccomp_plan, on_event,
   kill_sandbox) -> Handle.
3. A thread (or the launch server's poll loop) polls the listener. For each notification
   (ioctl.notif_recv) it reads the caller's identity (/proc/TID: comm, exe, tgid, pid inside the
   sandbox) and, where useful, its string and fd arguments (caller.py), re-checks the
   notification id (SECCOMP_IOCTL_NOTIF_ID_VALID: the data belongs to the blocked caller, not a
   recycled pid), decides with the plan's verdict (decision.decide: policies/seccomp_verdict.py),
   records the event through on_event and then answers with the rule's errno. A `kill` rule is
   recorded, then the whole sandbox is killed (kill_sandbox()); the call is never answered.

Guarantees
----------
* Never a way around the policy: the enforcing supervisor has no code path that lets
  a call run (SECCOMP_USER_NOTIF_FLAG_CONTINUE exists only in the learn-mode
  supervisor, supervisor.start_learning, which is used by `pysandbox learn` and nothing else).
  If the supervisor dies or stops, the kernel answers every pending and future
  notified call with ENOSYS: still denied.
* No deadlock with multi-threaded sandboxes or a slow supervisor: the kernel queues
  notifications; each calling thread sleeps until answered; the supervisor takes them
  one at a time with poll+RECV (RECV never blocks: ENOENT when the caller died).
  When every task using the filter is gone the listener reports POLLHUP and the thread
  ends by itself; `Handle.stop()` drains what is pending, ends the thread and joins.
* Memory stays flat: fixed receive/answer buffers, an nr->name cache bounded by the
  syscall table (policies.syscalls.syscall_name), no per-event state kept.

Fallback (kmsg.start_kmsg): where user notification is unavailable, deny rules stay
SECCOMP_RET_ERRNO/KILL in the filter (loaded with SECCOMP_FILTER_FLAG_LOG) and the
kernel's audit records (`type=1326` on /dev/kmsg) are matched by pid. Those records
carry no arguments and the kernel rate-limits them; events say "via": "kmsg".

Modules, one job each: listener (the hand-over of the listener), ioctl (the kernel's
notification interface), caller (reading the caller: identity, arguments, event fields),
decision (the answer to a notified call), supervisor (the enforcing and learn-mode loops),
kmsg (the fallback), supervision (the launcher's glue: thread or inline, integrity snapshot).
"""
