"""The buffered log observer writes the lines twistd's text observer would."""

from __future__ import annotations

import io

from twisted.internet import task
from twisted.logger import (
    FileLogObserver, LogLevel, LogPublisher, formatEventAsClassicLogText, textFileLogObserver,
)
from twisted.python import logfile
from twisted.python.failure import Failure
from twisted.internet.testing import MemoryReactorClock

from indimail_tw import logsetup


class Out(io.StringIO):
    writes = 0

    def write(self, text):
        self.writes += 1
        return super().write(text)


def events():
    try:
        raise ZeroDivisionError("division by zero")
    except ZeroDivisionError:
        failure = Failure()
    base = {"log_time": 1764000000.25, "log_namespace": "indimail_tw.queue",
            "log_level": LogLevel.info}
    return [
        {**base, "log_format": "{queue}: new msg {id}: bytes {size}", "queue": "queue1",
         "id": "abc", "size": 2048},
        {**base, "log_format": "{x!r} {y:g} {z.real}", "x": "a'b", "y": 0.5, "z": 3},
        {**base, "log_format": "two\nlines {n}", "n": 1, "log_system": "custom"},
        {**base, "log_format": "missing {nothing}"},
        {**base, "log_format": "call {f()}", "f": lambda: "called"},
        {**base, "log_format": "failed", "log_failure": failure, "log_level": LogLevel.error},
        {**base, "log_format": "", "log_level": None},
    ]


def test_same_lines_as_twistds_observer():
    clock = task.Clock()
    out = Out()
    observer = logsetup.BufferedLogObserver(out, clock)
    expected = []
    for event in events():
        observer(event)
        expected.append(formatEventAsClassicLogText(event) or "")
    observer.flush()
    assert out.getvalue() == "".join(expected)


def test_lines_are_written_together_after_a_delay_errors_at_once(monkeypatch):
    monkeypatch.setattr(logsetup.threadable, "isInIOThread", lambda: True)
    clock = task.Clock()
    out = Out()
    observer = logsetup.BufferedLogObserver(out, clock)
    info = events()[0]
    observer(info)
    observer(info)
    assert out.writes == 0
    clock.advance(logsetup.FLUSH_DELAY)
    assert out.writes == 1 and out.getvalue().count("\n") == 2
    observer({**info, "log_level": LogLevel.warn})
    assert out.writes == 2


def test_install_replaces_the_observer_of_a_log_file(tmp_path):
    publisher = LogPublisher()
    log_file = logfile.LogFile.fromFullPath(str(tmp_path / "twistd.log"))
    original = textFileLogObserver(log_file)
    publisher.addObserver(original)
    clock = MemoryReactorClock()
    installed = logsetup.install(clock, publisher)
    assert installed is not None
    assert publisher._observers == [installed]
    publisher(events()[0])
    installed.flush()
    log_file.close()
    assert "new msg abc" in (tmp_path / "twistd.log").read_text()


def test_install_leaves_other_observers_alone():
    publisher = LogPublisher()
    observer = FileLogObserver(io.StringIO(), lambda event: "x\n")
    publisher.addObserver(observer)
    assert logsetup.install(MemoryReactorClock(), publisher) is None
    assert publisher._observers == [observer]


def test_an_event_logged_while_writing_does_not_deadlock():
    """twistd's SIGTERM handler logs ("Received SIGTERM, shutting down.") from
    inside whatever the main thread was doing: that may be this observer's own
    flush.  The nested event must be written, not wait forever for the lock."""
    import threading

    base = {"log_time": 1764000000.25, "log_namespace": "t", "log_level": LogLevel.info}

    class Reentrant(Out):
        nested = False

        def write(self, text):
            if not self.nested:
                self.nested = True             # as a signal handler would, mid-write
                observer({**base, "log_format": "Received SIGTERM"})
                observer({**base, "log_format": "prompt", "log_level": LogLevel.error})
            return super().write(text)

    out = Reentrant()
    observer = logsetup.BufferedLogObserver(out, MemoryReactorClock())
    observer({**base, "log_format": "first"})
    done = threading.Event()
    worker = threading.Thread(target=lambda: (observer.flush(), done.set()), daemon=True)
    worker.start()
    assert done.wait(10), "the observer deadlocked on its own lock"
    observer.flush()
    text = out.getvalue()
    assert sorted(line.split("] ", 1)[1] for line in text.splitlines()) == [
        "Received SIGTERM", "first", "prompt"]


def test_quick_logger_emits_what_logger_emits():
    from twisted.logger import LogLevel, Logger

    from indimail_tw.logsetup import QuickLogger

    seen = []
    quick = QuickLogger(namespace="ns", observer=seen.append)
    plain = Logger(namespace="ns", observer=seen.append)
    quick.info("new msg {id}", id="1")
    plain.info("new msg {id}", id="1")
    a, b = seen
    assert set(a) == set(b)
    for key in ("log_level", "log_namespace", "log_format", "log_source", "id"):
        assert a[key] == b[key]
    assert a["log_logger"] is quick and a["log_level"] is LogLevel.info
    seen.clear()
    quick.emit("not a level", "x")                     # reported as Logger does
    assert len(seen) == 1 and seen[0]["log_level"] is LogLevel.critical
    assert "invalid log level" in seen[0]["log_format"]
