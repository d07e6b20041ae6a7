"""A cheaper observer for the log file ``twistd --logfile`` writes.

twistd's text observer formats every event with :class:`string.Formatter` (a
pure-Python parser of the format string), formats the timestamp anew for each
event and writes each line with its own unbuffered ``write`` on the reactor
thread.  At three log lines per message that was about a fifth of the
reactor's work.  :class:`BufferedLogObserver` writes the very same lines, but:

* a plain format (no ``{f()}`` call fields, no traceback, not flattened by a
  worker) is formatted with :meth:`str.format_map`; anything else, or a format
  that fails, goes through Twisted's own formatter;
* the timestamp prefix is formatted once per second;
* lines are collected and written together, at the latest
  :data:`FLUSH_DELAY` seconds later; a warning or error, or
  :data:`FLUSH_BYTES` of text, is written at once, and so is everything at
  shutdown.  A crash (SIGKILL, power) can lose the last fraction of a second
  of informational lines; it never loses mail.

:func:`install` swaps it in for twistd's observer of the log file.  It looks
for that observer among the global publisher's observers (Twisted offers no
public way to reach it); when it is not found (``--logger``, ``-l -``, tests)
nothing changes.
"""

from __future__ import annotations

import atexit
import threading
import time
from typing import Any

from twisted.logger import (
    FileLogObserver, LogLevel, Logger, formatEventAsClassicLogText, formatTime,
    globalLogPublisher,
)
from twisted.python import logfile, threadable

FLUSH_DELAY = 0.2
FLUSH_BYTES = 64 * 1024
_PROMPT = (LogLevel.warn, LogLevel.error, LogLevel.critical)


_LEVELS = frozenset(LogLevel.iterconstants())


class QuickLogger(Logger):
    """A :class:`twisted.logger.Logger` for the lines logged for every message.

    ``Logger.emit`` checks the level against a freshly sorted list of all levels
    (``LogLevel.iterconstants()``), a third of its cost; this one checks it against
    a set made once.  The event is the same; a bad level still goes to
    ``Logger.emit``, which reports it.
    """

    def emit(self, level: LogLevel, format: str | None = None,  # noqa: A002
             **kwargs: object) -> None:
        if level not in _LEVELS:
            super().emit(level, format, **kwargs)
            return
        kwargs.update(log_logger=self, log_level=level, log_namespace=self.namespace,
                      log_source=self.source, log_format=format, log_time=time.time())
        if "log_trace" in kwargs:
            kwargs["log_trace"].append((self, self.observer))  # type: ignore[attr-defined]
        self.observer(kwargs)


class BufferedLogObserver:
    """Writes events to a :class:`twisted.python.logfile.BaseLogFile` as twistd's
    text observer does (same lines), in batches (see the module docstring)."""

    def __init__(self, out: Any, clock: Any, time_format: str | None = None) -> None:
        self.out = out
        self.clock = clock
        self.time_format = time_format
        self._lines: list[str] = []
        self._size = 0
        # Reentrant: twistd's SIGTERM handler logs from inside whatever the main
        # thread was doing, which may be this observer holding either lock.
        self._lock = threading.RLock()          # the collected lines
        self._write_lock = threading.RLock()    # writing them out, in order
        self._timer: Any = None
        self._second = -1
        self._stamp = ""

    def __call__(self, event: dict[str, Any]) -> None:
        text = self._fast(event)
        if text is None:
            text = formatEventAsClassicLogText(event, formatTime=self._format_time)
            if not text:
                return
        with self._lock:
            self._lines.append(text)
            self._size += len(text)
            size = self._size
        if size >= FLUSH_BYTES or event.get("log_level") in _PROMPT:
            self.flush()
        elif self._timer is None:
            if threadable.isInIOThread() and getattr(self.clock, "running", True):
                self._timer = self.clock.callLater(FLUSH_DELAY, self._flush_later)
            else:
                self.flush()        # from a thread, or the reactor stopped: no timer

    def _fast(self, event: dict[str, Any]) -> str | None:
        fmt = event.get("log_format")
        if (type(fmt) is not str or "log_failure" in event or "log_flattened" in event
                or "()" in fmt or "log_time" not in event):
            return None
        try:
            text = fmt.format_map(event)
        except Exception:  # noqa: BLE001 -- Twisted's formatter reports it its own way
            return None
        if not text:
            return None
        system = event.get("log_system")
        if system is None:
            level = event.get("log_level")
            system = f"{event.get('log_namespace', '-')}#{level.name if level else '-'}"
        when = event["log_time"]
        second = int(when)
        if second != self._second:
            self._stamp, self._second = self._format_time(when), second
        if "\n" in text:
            text = text.replace("\n", "\n\t")
        return f"{self._stamp} [{system}] {text}\n"

    def _format_time(self, when: float | None) -> str:
        return formatTime(when, self.time_format) if self.time_format else formatTime(when)

    def _flush_later(self) -> None:
        self._timer = None
        self.flush()

    def flush(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None and threadable.isInIOThread() and timer.active():
            timer.cancel()
        with self._write_lock:
            with self._lock:
                lines, self._lines, self._size = self._lines, [], 0
            if lines:
                self.out.write("".join(lines))
                self.out.flush()


def install(clock: Any, publisher: Any = None) -> BufferedLogObserver | None:
    """Replace twistd's text observer of its log file with a :class:`BufferedLogObserver`
    (see the module docstring); returns it, or None when there was none to replace."""
    publisher = publisher if publisher is not None else globalLogPublisher
    for observer in list(getattr(publisher, "_observers", ())):
        out = getattr(observer, "_outFile", None)
        if isinstance(observer, FileLogObserver) and isinstance(out, logfile.BaseLogFile):
            buffered = BufferedLogObserver(out, clock)
            publisher.addObserver(buffered)
            publisher.removeObserver(observer)
            clock.addSystemEventTrigger("after", "shutdown", buffered.flush)
            atexit.register(buffered.flush)       # lines logged after the reactor stopped
            return buffered
    return None
