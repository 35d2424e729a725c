"""The Python API's launch server: one small, single-purpose process that starts and supervises
every sandbox of one API process (per state directory), one module per job:

  client    in the API process: start the server (`python -I -S`, a module path of its own),
            send a launch, read its replies; one server per state directory
  protocol  the sockets' framing (SOCK_SEQPACKET messages) and the protocol's description
  loop      the server: one poll loop over every sandbox (PID 1 pidfds, deadlines, audit
            listeners, the callers' sockets)
  template  the template process that clones every PID 1, and the spares it clones ahead
  pid1      in a PID 1 the template cloned: take the run's context, run sequence.pid1

The CLI's launch server (`pysandbox server`, opt-in) is the same loop listening on a socket:
  lean      in `pysandbox run`: the socket's checks, the run sent as typed, signals (C modules only)
  clirun    in the server: a CLI's run as its own cached path would do it, or "not here"
  peer      in the server: is a client exactly as confined as the server

Why a separate process:
  * cost: a sandbox's PID 1 is a forked copy of whoever clones it. Cloned from the API process
    (which compiled profiles: PyYAML, jsonschema, libseccomp, the compiler; and whatever the
    application itself holds), every launch copies a large page table twice (PID 1, then the
    program) and every PID 1 shares — and soon copies — a large heap. The server is started once
    with `python -I -S` and imports only the launch path (sandbox.launcher, init, rootfs,
    capabilities, the seccomp loader, cgroups, notify), so forks from it are cheap and its PID 1s
    small (`bench/api_launch.py`, `bench/concurrent.py`);
  * safety: it is single-threaded when it clones (the audit's notification threads aside: they only
    ever release the GIL around blocking system calls), whereas an application calling the API may
    run any number of threads — cloning from those could leave the child waiting forever on a
    lock another thread held. No per-run supervisor process is needed any more;
  * scale: one poll loop supervises every sandbox (PID 1 pidfds, deadlines, the callers' sockets),
    so N concurrent sandboxes cost N small PID 1s, not N supervisors.

This package's __init__ imports nothing: the API imports only `client`, the server only `loop`
(and what it needs).
"""
