"""Program deliveries: ``sh -c command`` with the message on stdin (qmail-command(8)).

The child's stdin holds exactly the message and is seekable, as qmail promises
(some programs rewind it): a copy in an anonymous file (:func:`message_stdin`,
made in a thread), never the queue file itself, which goes on with the
message's envelope.  Its working directory the home directory, its environment qmail-local's
(SENDER, RECIPIENT, DTLINE, ...; see :func:`qmail_environment`).  Exit codes:
0 success; 99 success and stop processing further lines; 100, 64, 65, 70,
76, 77, 78 and 112 permanent; anything else, a crash or the timeout,
temporary.  stdout and stderr (bounded) become the report.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer, error, protocol
from twisted.logger import Logger

from indimail_tw import fsutil
from indimail_tw.datafile import open_data
from indimail_tw.delivery.message import enhanced_from_text
from indimail_tw.delivery.result import DeliveryResult

log = Logger()

PERMANENT_CODES = frozenset({64, 65, 70, 76, 77, 78, 100, 112})
MAX_REPORT = 4000
DEFAULT_TIMEOUT = 3600.0
#: After the child exits, how long to wait for a background grandchild still
#: holding stdout/stderr before reporting anyway.
EXIT_GRACE = 5.0
SHELL = "/bin/sh"


@dataclass(frozen=True)
class ProgramOutcome:
    result: DeliveryResult
    stop: bool = False  # exit 99: skip the remaining lines
    code: int | None = None


def classify(code: int | None, output: str, *, timed_out: bool = False,
             signal: int | None = None) -> ProgramOutcome:
    """qmail-local's reading of a program's end."""
    text = output.strip()
    if timed_out:
        return ProgramOutcome(DeliveryResult.temporary(
            _join(text, "Timeout on program delivery. (#4.3.0)"), "4.3.0"))
    if code is None:
        return ProgramOutcome(DeliveryResult.temporary(
            _join(text, f"Aack, child crashed (signal {signal}). (#4.3.0)"), "4.3.0"))
    if code == 0:
        return ProgramOutcome(DeliveryResult.ok(text or "program delivered"), code=0)
    if code == 99:
        return ProgramOutcome(DeliveryResult.ok(text or "program delivered"), True, 99)
    if code in PERMANENT_CODES:
        return ProgramOutcome(DeliveryResult.permanent(
            text or f"Program failed with exit code {code}. (#5.3.0)",
            enhanced_from_text(text, "5.3.0")), code=code)
    return ProgramOutcome(DeliveryResult.temporary(
        text or f"Program failed with exit code {code}. (#4.3.0)",
        enhanced_from_text(text, "4.3.0")), code=code)


def _join(text: str, note: str) -> str:
    return f"{text}\n{note}" if text else note


def _split(value: str, sep: str, count: int) -> list[str]:
    """qmail-local's EXT2..EXT4 (after each ``-``) or HOST2..HOST4 (before each ``.``)."""
    out = []
    if sep == "-":
        rest = value
        for _ in range(count):
            at = rest.find("-")
            rest = rest[at + 1:] if at >= 0 else ""
            out.append(rest)
    else:
        rest = value
        for _ in range(count):
            at = rest.rfind(".")
            rest = rest[:at] if at >= 0 else rest
            out.append(rest)
    return out


def qmail_environment(*, sender: str, newsender: str, local: str, host: str, ext: str,
                      user: str, home: str, default: str | None, dtline: bytes,
                      rpline: bytes, when: float | None = None, messid: str = "",
                      qqeh: str = "", base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment qmail-local gives a program (``LOCAL`` is the address's
    local part as qmail sees it, e.g. ``example.org-joe`` for a virtual user)."""
    env = dict(base or {})
    env.setdefault("PATH", "/bin:/usr/bin:/usr/local/bin")
    host2, host3, host4 = _split(host, ".", 3)
    ext2, ext3, ext4 = _split(ext, "-", 3)
    who = sender.replace(" ", "-").replace("\t", "-") if sender else "MAILER-DAEMON"
    env.update({
        "SENDER": sender, "NEWSENDER": newsender, "RECIPIENT": f"{local}@{host}",
        "USER": user, "HOME": home, "HOST": host, "HOST2": host2, "HOST3": host3,
        "HOST4": host4, "LOCAL": local, "EXT": ext, "EXT2": ext2, "EXT3": ext3, "EXT4": ext4,
        "DTLINE": dtline.decode("utf-8", "surrogateescape"),
        "RPLINE": rpline.decode("utf-8", "surrogateescape"),
        "UFLINE": f"From {who} {time.ctime(time.time() if when is None else when)}\n",
        "MESSID": messid,
    })
    if default is not None:
        env["DEFAULT"] = default
    else:
        env.pop("DEFAULT", None)
    if qqeh:
        env["QQEH"] = qqeh
    return env


class _ProgramProtocol(protocol.ProcessProtocol):
    def __init__(self, done: defer.Deferred, clock: Any, timeout: float,
                 max_report: int) -> None:
        self.done = done
        self.clock = clock
        self.output = bytearray()
        self.max_report = max_report
        self.exit_code: int | None = None
        self.signal: int | None = None
        self.exited = False
        self.timer = clock.callLater(timeout, self._timeout) if timeout > 0 else None
        self.grace = None

    def childDataReceived(self, fd: int, data: bytes) -> None:  # noqa: N802
        room = self.max_report - len(self.output)
        if room > 0:
            self.output += data[:room]

    def processExited(self, reason) -> None:  # noqa: N802
        self.exited = True
        self._record(reason)
        if not self.done.called:  # give stray grandchildren a moment, then report
            self.grace = self.clock.callLater(EXIT_GRACE, self._finish, False)

    def processEnded(self, reason) -> None:  # noqa: N802
        if not self.exited:
            self._record(reason)
        self._finish(False)

    def _record(self, reason) -> None:
        value = reason.value
        if isinstance(value, (error.ProcessDone, error.ProcessTerminated)):
            self.exit_code = value.exitCode
            self.signal = getattr(value, "signal", None)

    def _timeout(self) -> None:
        self.timer = None
        with contextlib.suppress(error.ProcessExitedAlready):
            self.transport.signalProcess("KILL")
        self._finish(True)

    def _finish(self, timed_out: bool) -> None:
        for call in (self.timer, self.grace):
            if call is not None and call.active():
                call.cancel()
        self.timer = self.grace = None
        if self.done.called:
            return
        if timed_out or not self.exited:
            self._close_pipes()
        text = self.output.decode("utf-8", "replace")
        code = None if timed_out else self.exit_code
        self.done.callback(classify(code, text, timed_out=timed_out, signal=self.signal))

    def _close_pipes(self) -> None:
        for fd in (1, 2):
            with contextlib.suppress(Exception):  # already closed
                self.transport.closeChildFD(fd)


#: Copying the message for a program's stdin, bytes at a time.
_COPY_CHUNK = 1024 * 1024


def message_stdin(path: str, size: int | None = None, data: bytes | None = None,
                  tmpdir: str | None = None) -> int:
    """A program's stdin: an open, seekable, anonymous file holding exactly the
    message (``data``, or the first ``size`` bytes of ``path``; None: all of it),
    positioned at 0.  A memfd where the system has one, else an unlinked file in
    ``tmpdir`` (TMPDIR by default).  Blocking: call it in a thread; the caller
    owns the fd (:func:`run_program` closes it)."""
    fd = _anonymous_file(tmpdir)
    try:
        if data is not None:
            fsutil.write_all(fd, data)
        else:
            with open_data(path, size) as f:
                while chunk := f.read(_COPY_CHUNK):
                    fsutil.write_all(fd, chunk)
        os.lseek(fd, 0, os.SEEK_SET)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _anonymous_file(tmpdir: str | None) -> int:
    memfd = getattr(os, "memfd_create", None)
    if memfd is not None:
        try:
            return memfd("indimail-message", os.MFD_CLOEXEC)
        except OSError:
            pass                      # e.g. blocked by a seccomp policy: a temp file
    with tempfile.TemporaryFile(dir=tmpdir) as f:
        return os.dup(f.fileno())     # unlinked already; the dup outlives the close


def run_program(reactor: Any, command: str, stdin: str | int, env: Mapping[str, str],
                cwd: str, *, timeout: float = DEFAULT_TIMEOUT, clock: Any = None,
                max_report: int = MAX_REPORT) -> defer.Deferred:
    """Deferred[ProgramOutcome] for ``sh -c command`` fed ``stdin``: an open fd
    (from :func:`message_stdin`; closed here) or the path of a file that holds
    nothing but the message.

    Opening a path is the only blocking call here (one open(2)).
    """
    done: defer.Deferred = defer.Deferred()
    if isinstance(stdin, int):
        fd = stdin
    else:
        try:
            fd = os.open(stdin, os.O_RDONLY)
        except OSError as e:
            return defer.succeed(ProgramOutcome(DeliveryResult.temporary(
                f"Unable to read message: {e.strerror}. (#4.3.0)", "4.3.0")))
    if not os.path.isdir(cwd):
        cwd = "/"
    proto = _ProgramProtocol(done, clock or reactor, timeout, max_report)
    try:
        reactor.spawnProcess(proto, SHELL, [SHELL, "-c", command],
                             env={k: v for k, v in env.items()}, path=cwd,
                             childFDs={0: fd, 1: "r", 2: "r"})
    except OSError as e:
        if proto.timer is not None and proto.timer.active():
            proto.timer.cancel()
        return defer.succeed(ProgramOutcome(DeliveryResult.temporary(
            f"Unable to run {SHELL}: {e.strerror}. (#4.3.0)", "4.3.0")))
    finally:
        os.close(fd)
    return done

