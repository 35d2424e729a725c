"""pysandbox-runtime: an OCI runtime (create/start/state/kill/delete) over the project's launcher.

  cli.py      the command line (runc's and crun's conventions: global --root, --log, --log-format)
  bundle.py   config.json -> a Plan plus what the plan has no field for (hooks, joined namespaces,
              oomScoreAdj, sysctl, console); what cannot be honoured fails closed naming the field
  state.py    the state directory of one container (state.json, state.front, exec.fifo), the OCI state JSON
  monitor.py  the container's monitor: the launch sequence (sandbox/launch/sequence.py) held before
              its release until `start` opens the exec FIFO; then wait, record the exit, clean up
  hooks.py    OCI hooks with the state on stdin, bounded by their timeout
  front.c     the `pysandbox-runtime` executable: start, state, kill and a stopped container's
              delete in C from state.front (state.py); everything else execs cli.py's
              `pysandbox-runtime-py` with the same argv

Nothing here is imported by the rest of the project; sandbox/entry.py writes the lean script
(pysandbox-runtime-py) and copies the built front end (pysandbox-runtime) into the venv.
"""
