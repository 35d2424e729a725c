"""bench/run.py, the runner of `make bench`: how a row's target is judged, the table, and that every
bench/<topic>.py with rows() is a topic (no measurement here: timing is never asserted in tests)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture(scope="module")
def run():
    spec = importlib.util.spec_from_file_location("_bench_runner_under_test", BENCH / "run.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def row(**kw):
    return {"name": "x", "value": None, "unit": "ms", "peer": None, "peer_value": None, "ratio": None,
            "target": None, **kw}


@pytest.mark.parametrize("kw, met", [
    (dict(value=30, ratio=1.4, target="<= 1.5x crun"), True),
    (dict(value=30, ratio=1.6, target="<= 1.5x crun"), False),
    (dict(value=250, target="<= 300 ms"), True),
    (dict(value=301, target="<= 300 ms"), False),
    (dict(value=210, target=">= 200/s"), True),
    (dict(value=1.0, ratio=0.99, target=">= 1x bwrap+seccomp"), False),
    (dict(value=0.2, target="<= 1 MiB"), True),
    (dict(value=None, target="<= 1 s"), None),          # no figure: not judged
    (dict(value=3, target=None), None),
    (dict(value=3, target="faster than before"), None),  # not a bound: not judged
])
def test_targets(run, kw, met):
    assert run.met(row(**kw)) is met


def test_table_has_one_line_per_row_and_the_verdict(run):
    t = run.table([row(name="a", value=40.0, peer="crun", peer_value=20.0, ratio=2.0, target="<= 1.5x crun"),
                   row(name="b", value=5.0)]).splitlines()
    assert len(t) == 4 and t[0].split()[0] == "figure" and t[2].rstrip().endswith("NO") and t[3].rstrip().endswith("-")


def test_every_topic_with_rows_is_found(run):
    topics = run.topics()
    assert {"launch", "api_launch", "concurrent", "seccomp"} <= set(topics)
    assert "peers" not in topics and "run" not in topics
    import concurrent.futures                    # bench/concurrent.py does not shadow the stdlib
    assert concurrent.futures.__file__ and "bench" not in concurrent.futures.__file__
