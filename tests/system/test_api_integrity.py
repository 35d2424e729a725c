"""The launch server finishes an ended sandbox on a worker thread (sandbox/server/loop.py,
finish_run): the end-of-run integrity check still runs before the result is final, and its
`integrity_violation` event is part of that run's result — also with other runs of the same
server starting and ending at the same time. Real sandboxes, a real bind source changed from
the host while the sandbox runs (the sandbox itself waits until it sees the change, so the
change is inside the run whatever the machine's load)."""
from __future__ import annotations

import os
import shutil
import tempfile
import threading

WAIT_FOR_CHANGE = 'while [ "$(cat /data/f)" = 1 ]; do sleep 0.02; done; echo seen'


def _source():
    top = tempfile.mkdtemp(prefix="pysandbox-apiint-", dir="/tmp")
    os.chmod(top, 0o755)
    src = os.path.join(top, "src")
    os.mkdir(src)
    with open(os.path.join(src, "f"), "w") as f:
        f.write("1\n")
    return top, src


def test_api_integrity_violation_comes_with_the_run_result_under_concurrent_runs():
    from sandbox.api import Sandbox
    top, src = _source()
    try:
        watched = Sandbox("strict", volumes=[f"{src}:/data:ro"])
        clean = Sandbox("strict")
        assert clean.run(["/bin/true"]).exit_code == 0            # the server is up
        results: dict = {}
        errors: list = []

        def others(i):
            try:
                results[i] = [clean.run(["/bin/true"]) for _ in range(5)]
            except Exception as e:  # noqa: BLE001 - reported below
                errors.append(e)
        threads = [threading.Thread(target=others, args=(i,)) for i in range(3)]
        for t in threads:
            t.start()

        def change():
            with open(os.path.join(src, "f"), "w") as f:
                f.write("2\n")
        timer = threading.Timer(0.3, change)
        timer.start()
        r = watched.run(["/bin/sh", "-c", WAIT_FOR_CHANGE], timeout=60, text=True)
        timer.join()
        for t in threads:
            t.join()
        assert not errors, errors
        assert r.exit_code == 0 and r.stdout == "seen\n", r
        iv = r.events_of("integrity_violation")
        assert len(iv) == 1, r.events
        assert iv[0]["path"] == src and "read-only source changed" in iv[0]["message"]
        assert r.events_of("sandbox_exit"), r.events                 # the check came before the end
        for runs in results.values():                               # the others: clean, each its own
            for o in runs:
                assert o.exit_code == 0 and o.events_of("integrity_violation") == [], o.events
    finally:
        shutil.rmtree(top, ignore_errors=True)


def test_api_clean_run_with_a_read_only_source_reports_nothing():
    from sandbox.api import Sandbox
    top, src = _source()
    try:
        r = Sandbox("strict", volumes=[f"{src}:/data:ro"]).run(["/bin/cat", "/data/f"], text=True)
        assert r.exit_code == 0 and r.stdout == "1\n", r
        assert r.events_of("integrity_violation") == [], r.events
    finally:
        shutil.rmtree(top, ignore_errors=True)
