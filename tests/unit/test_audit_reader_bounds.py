"""audit/reader.py reads logs that may not be pysandbox's (`audit show --log FILE`, issue: sweep):
a record of another shape is skipped, not fed to the formatters (which raised TypeError); a line
longer than MAX_LINE is dropped without being held in memory; only regular files are opened (a FIFO
would block, /dev/zero never end)."""
from __future__ import annotations

import io
import os

import pytest

from audit import reader


@pytest.mark.parametrize("ev", [
    {"type": {"a": 1}}, {"time": 5}, {"severity": 7}, {"seq": "x"}, {"seq": True}, {"syscall": "mount"},
    {"syscall": {"name": 3}}, {"syscall": {"args": ["x"]}}, {"argv": "sh"}, {"argv": [1]},
    {"status": {"signal": 9}}, {"limit": [1]}, {"duration": "1s"},
])
def test_malformed_records_are_skipped_and_counted(ev):
    import json
    stats = reader.ReadStats()
    good = {"type": "sandbox_exit", "sandbox_id": "a", "status": {"exit_code": 0, "signal": None}, "duration": 0.1}
    out = list(reader.parse_lines([json.dumps(ev), json.dumps(good)], stats))
    assert out == [good] and stats.bad == 1
    for e in out:                                  # what survives formats and summarises
        reader.format_event(e)
    reader.summarize(out)


def test_long_line_is_dropped_in_bounded_pieces():
    f = io.StringIO("x" * (reader.MAX_LINE * 3 + 5) + "\n" + '{"type": "sandbox_start"}\n')
    stats = reader.ReadStats()
    assert list(reader.parse_lines(reader._bounded_lines(f), stats)) == [{"type": "sandbox_start"}]
    assert stats.bad == 1


def test_only_regular_files_are_opened(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for p in (str(fifo), "/dev/zero", str(tmp_path)):
        with pytest.raises(OSError):
            list(reader.read_events(p))
    log = tmp_path / "log"
    log.write_text('{"type": "sandbox_start"}\n')
    assert list(reader.read_events(str(log))) == [{"type": "sandbox_start"}]
