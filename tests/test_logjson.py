"""A child's stderr, logged line by line as the server's errors."""

from __future__ import annotations

from twisted.logger import globalLogPublisher

from indimail_tw.logjson import StderrLines


def test_stderr_lines_are_logged_whole_and_long_ones_in_pieces():
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    try:
        lines = StderrLines("worker 3", limit=10)
        lines.feed(b"Trace")
        lines.feed(b"back\nsecond")
        lines.feed(b" line\n" + b"x" * 25)
    finally:
        globalLogPublisher.removeObserver(events.append)
    logged = [(e["source"], e["line"]) for e in events if "line" in e]
    assert logged == [("worker 3", "Traceback"), ("worker 3", "second line"),
                      ("worker 3", "x" * 10), ("worker 3", "x" * 10)]
    assert all(e["log_level"].name == "error" for e in events if "line" in e)
