"""vdelivermail: IndiMail's MDA, for a real qmail/IndiMail to call from ``.qmail-default``::

    | /usr/bin/vdelivermail '' bounce-no-mailbox

The user is ``$EXT`` (empty: postmaster), the domain ``$HOST`` (default: the
control file ``defaultdomain``/``me``), the sender ``$SENDER``; the message
comes on stdin; the last argument is the catch-all (``bounce-no-mailbox``,
``delete``, an address, a Maildir, ``host:ip:port``).  qmail-local's
ten-argument form (``-- user home local dash ext domain sender aliasempty
qqeh``) also works, as when set as ``QMAILLOCAL``.

It runs the server's own :class:`~indimail_tw.delivery.local.LocalDeliveryAgent`
over the same user store; forwards go to that MTA's ``qmail-queue``
(``$QMAILQUEUE``).  Exit status: 0 delivered (or discarded), 100 permanent
failure (``DISCARD_BOUNCE`` turns it into 0), 111 temporary; the report goes
to stderr, where qmail-local picks it up.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from typing import IO, Any

from indimail_tw.delivery.result import DeliveryResult
from indimail_tw.queue.envelope import Envelope, Recipient

EXIT_OK, EXIT_PERM, EXIT_TEMP = 0, 100, 111
USAGE = "usage: vdelivermail '' bounce-no-mailbox|delete|address|/Maildir|host:ip:port"


@dataclass
class StdinMessage:
    """The message on stdin, copied to a temporary file (qmail promises a seekable one)."""

    id: str
    envelope: Envelope
    path: str
    size: int


@dataclass(frozen=True)
class Invocation:
    user: str
    domain: str | None
    sender: str
    handler: str | None
    qqeh: str = ""


def parse_args(argv: list[str], environ: Mapping[str, str]) -> Invocation | tuple[int, str]:
    """The invocation, or (exit status, message) for a misuse."""
    if len(argv) == 2:
        if "EXT" not in environ:
            return EXIT_PERM, "No EXT environment variable"
        if "SENDER" not in environ:
            return EXIT_PERM, "vdelivermail: No SENDER environment variable"
        return Invocation(environ["EXT"] or "postmaster", environ.get("HOST") or None,
                          environ["SENDER"], argv[1] or None)
    if (len(argv) == 10 and argv[0] == "--") or len(argv) == 9:
        args = argv[1:] if argv[0] == "--" else argv
        # user homedir local dash ext domain sender aliasempty qqeh
        return Invocation(args[4] or "postmaster", args[5] or None, args[6], None, args[8])
    return EXIT_TEMP, "vdelivermail: invalid number of arguments\n" + USAGE


def exit_status(result: DeliveryResult) -> int:
    if result.is_ok:
        return EXIT_OK
    return EXIT_PERM if result.is_permanent else EXIT_TEMP


def _copy_stdin(stdin: IO[bytes]) -> tuple[str, int]:
    fd, path = tempfile.mkstemp(prefix="vdelivermail.")
    with os.fdopen(fd, "wb") as out:
        shutil.copyfileobj(stdin, out, 65536)
        size = out.tell()
    return path, size


def run(argv: list[str], environ: Mapping[str, str], stdin: IO[bytes],
        stderr: IO[str]) -> int:
    """Deliver stdin; returns the exit status (blocking: runs a reactor)."""
    parsed = parse_args(argv, environ)
    if isinstance(parsed, tuple):
        stderr.write(parsed[1] + "\n")
        return parsed[0]
    from indimail_tw.config import ControlDir, Settings
    from indimail_tw.errors import ConfigError, SchemaTooNew, StoreError
    from indimail_tw.paths import Paths
    from indimail_tw.storage.engine import open_engine
    from indimail_tw.storage.store import UserStore

    paths = Paths.resolve(environ=environ)
    try:
        settings = Settings.load(ControlDir(paths.control, environ))
    except ConfigError as e:
        stderr.write(f"vdelivermail: {e}\n")
        return EXIT_TEMP
    domain = parsed.domain or settings.defaultdomain
    try:
        path, size = _copy_stdin(stdin)
    except OSError as e:
        stderr.write(f"vdelivermail: cannot copy the message: {e.strerror}\n")
        return EXIT_TEMP
    try:
        try:
            engine = open_engine(paths, environ, create=False)
            engine.run_sync(engine.check)
        except (StoreError, SchemaTooNew) as e:
            stderr.write(f"vdelivermail: temporary authentication error: {e}\n")
            return EXIT_TEMP
        extra = {"qqeh": parsed.qqeh} if parsed.qqeh else {}
        message = StdinMessage(environ.get("MESSID", "stdin"),
                               Envelope(parsed.sender, [Recipient(f"{parsed.user}@{domain}")],
                                        protocol="LOCAL", extra=extra), path, size)
        try:
            result = _deliver(message, parsed.handler, UserStore(engine), paths, settings,
                              environ)
        finally:
            engine.close()
    finally:
        os.unlink(path)
    if result.text:
        stderr.write(result.text.rstrip("\n") + "\n")
    return exit_status(result)


def _deliver(message: StdinMessage, handler: str | None, store: Any, paths: Any,
             settings: Any, environ: Mapping[str, str]) -> DeliveryResult:
    from twisted.internet import reactor

    from indimail_tw.delivery.local import LocalDeliveryAgent
    from indimail_tw.delivery.qmailqueue import QmailQueueClient, find_qmail_queue

    queue = QmailQueueClient(find_qmail_queue(environ), reactor, environ)
    agent = LocalDeliveryAgent(store, paths.domains, settings, queue, reactor=reactor,
                               environ=environ, program_env=environ)
    outcome: list[DeliveryResult] = []

    def start() -> None:
        d = agent.deliver_address(message, message.envelope.recipients[0], handler=handler,
                                  dtline_text=environ.get("DTLINE"),
                                  rpline_text=environ.get("RPLINE"))
        d.addCallback(outcome.append)
        d.addBoth(lambda _: stop())

    def stop() -> None:
        store.engine.close()  # inside the reactor: the pool's threads stop cleanly
        reactor.stop()

    reactor.callWhenRunning(start)
    reactor.run(installSignalHandlers=True)
    return outcome[0] if outcome else DeliveryResult.temporary(
        "vdelivermail: delivery did not finish. (#4.3.0)", "4.3.0")


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    sys.exit(run(argv, dict(os.environ), sys.stdin.buffer, sys.stderr))


if __name__ == "__main__":
    main()
