"""Log events of a child process (a ``--workers`` worker, the local delivery helper),
carried to the server as JSON and logged there as the server's own.

The child writes with :func:`json_observer` (one JSON record per event, RS
separated, as :func:`twisted.logger.jsonFileLogObserver` writes them); the
server feeds what it reads into a :class:`JSONEventReader`, and what the child
writes on its stderr (a traceback, an interpreter's complaint) into a
:class:`StderrLines`.
"""

from __future__ import annotations

import atexit
import os
from typing import Any

from twisted.logger import Logger, eventFromJSON, globalLogPublisher, jsonFileLogObserver

log = Logger()


def json_observer(fd: int, reactor: Any, flush_delay: float) -> Any:
    """An observer writing events as JSON to (a copy of) file descriptor ``fd``.

    Events are written as they come but flushed to the descriptor every
    ``flush_delay`` seconds (and at shutdown and exit), so the events of a busy
    moment share writes."""
    from twisted.internet import task

    out = open(os.dup(fd), "w", encoding="utf-8", errors="replace")  # noqa: SIM115
    flusher = task.LoopingCall(out.flush)
    reactor.callWhenRunning(flusher.start, flush_delay, False)
    reactor.addSystemEventTrigger("after", "shutdown", out.flush)
    atexit.register(lambda: out.closed or out.flush())
    return jsonFileLogObserver(_FlushLater(out))


class _FlushLater:
    """A text file whose ``flush`` waits for the periodic flush."""

    def __init__(self, out: Any) -> None:
        self._out = out

    def write(self, text: str) -> int:
        return self._out.write(text)

    def flush(self) -> None:
        pass


class JSONEventReader:
    """Publishes the events a child writes with :func:`json_observer`, as they arrive
    in pieces; text that is not an event is logged as a warning from ``source``."""

    def __init__(self, source: str, publisher: Any = None) -> None:
        self.source = source
        self.publisher = publisher if publisher is not None else globalLogPublisher
        self._buffer = b""

    def feed(self, data: bytes) -> None:
        # a record is RS, the event as JSON (never a raw newline), LF: it is complete
        # at its LF (not only once the next record's RS arrives)
        self._buffer += data
        *records, self._buffer = self._buffer.split(b"\n")
        for record in records:
            text = record.strip(b"\x1e \t\r")
            if not text:
                continue
            try:
                event = eventFromJSON(text.decode("utf-8", "replace"))
            except ValueError:
                log.warn("{source}: {text}", source=self.source,
                         text=text.decode("utf-8", "replace"))
                continue
            self.publisher(event)


class StderrLines:
    """Logs each line a child writes on its stderr as an error from ``source``; a line
    longer than ``limit`` bytes is logged in pieces of that size."""

    def __init__(self, source: str, limit: int = 64 * 1024) -> None:
        self.source = source
        self.limit = limit
        self._buffer = b""

    def feed(self, data: bytes) -> None:
        self._buffer += data
        *lines, self._buffer = self._buffer.split(b"\n")
        while len(self._buffer) > self.limit:
            lines.append(self._buffer[:self.limit])
            self._buffer = self._buffer[self.limit:]
        for line in lines:
            log.error("{source}: {line}", source=self.source,
                      line=line.decode("utf-8", "replace"))
