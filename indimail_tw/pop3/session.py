"""One POP3 connection's state (RFC 1939 with RFC 2449, 2595, 5034): events in, replies out.

States: AUTHORIZATION (CAPA, USER, PASS, AUTH, STLS, QUIT), TRANSACTION
(STAT, LIST, RETR, TOP, DELE, RSET, NOOP, UIDL, CAPA, QUIT) and UPDATE (QUIT
after a login: the DELE'd messages are expunged through the folder index, and
only then; a connection that drops or times out deletes nothing).

The session never touches the transport: it answers each event with a
:class:`~indimail_tw.pop3.replies.Response` or a Deferred of one; RETR and
TOP answer with an open message file that the protocol streams.  Blocking
work (the index, the lock, the expunge) runs through ``run`` (a thread) in
one queue per session, so the maildrop is never used by two threads at once.

A command in the wrong state, an unknown command or bad arguments is a client
error; after ``max_errors`` of them the client is dropped.  An unexpected
exception becomes ``-ERR [SYS/TEMP]`` and a logged traceback; the connection
lives on.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from indimail_tw.auth import sasl
from indimail_tw.pop3 import parser as p
from indimail_tw.pop3 import replies as r
from indimail_tw.pop3.auth import LoginCommands
from indimail_tw.pop3.config import POP3Config
from indimail_tw.pop3.maildrop import Maildrop, Message, MessageGone
from indimail_tw.pop3.replies import MessageBody, Response, err, multiline, ok

log = Logger()


class State(enum.Enum):
    AUTHORIZATION = "authorization"
    TRANSACTION = "transaction"
    UPDATE = "update"


_ANY = {"CAPA", "QUIT"}
_AUTHORIZATION = {"USER", "PASS", "AUTH", "STLS"}
_TRANSACTION = {"STAT", "LIST", "RETR", "TOP", "DELE", "RSET", "NOOP", "UIDL"}


def _sync_run(fn: Callable[..., Any], *args: Any) -> defer.Deferred:
    return defer.maybeDeferred(fn, *args)


class POP3Session(LoginCommands):
    """See the module docstring."""

    def __init__(self, config: POP3Config, client: Any, parser: p.POP3Parser, *,
                 mail_login: Any, clock: Any, tls: bool = False,
                 run: Callable[..., defer.Deferred] | None = None) -> None:
        self.config = config
        self.client = client
        self.parser = parser
        self.mail_login = mail_login
        self.clock = clock
        self.tls = tls
        self._run = run or _sync_run
        self.state = State.AUTHORIZATION
        self.maildrop: Maildrop | None = None
        self.address: str | None = None
        self.closed = False
        self._user: bytes | None = None
        self._sasl: sasl.SASLExchange | None = None
        self._login_session: Any = None
        self._logins: Any = None              # the MailLogin connection (failure count)
        self._pending_login: defer.Deferred | None = None
        self._errors = 0
        self._jobs: defer.Deferred = defer.succeed(None)
        parser.line_limit = config.line_limit
        self._commands: dict[str, Callable[[list[bytes], bytes], Any]] = {
            "CAPA": lambda a, _l: self._cmd_capa(a),
            "QUIT": lambda a, _l: self._cmd_quit(a),
            "USER": lambda a, _l: self._cmd_user(a),
            "PASS": self._cmd_pass,
            "AUTH": lambda a, _l: self._cmd_auth(a),
            "STLS": lambda a, _l: self._cmd_stls(a),
            "STAT": lambda a, _l: self._cmd_stat(a),
            "LIST": lambda a, _l: self._cmd_list(a),
            "UIDL": lambda a, _l: self._cmd_uidl(a),
            "RETR": lambda a, _l: self._cmd_retr(a),
            "TOP": lambda a, _l: self._cmd_top(a),
            "DELE": lambda a, _l: self._cmd_dele(a),
            "RSET": lambda a, _l: self._cmd_rset(a),
            "NOOP": lambda a, _l: self._cmd_noop(a),
        }

    # -- connection events (called by the protocol) ------------------------------------------

    def greeting(self) -> Response:
        if self.config.shutdown is not None:
            return err(self.config.shutdown or r.SHUTDOWN, close=True)
        return ok(f"{self.config.hostname} POP3 server ready.")

    def tls_started(self) -> None:
        """TLS is on (STLS accepted): forget what the client said before it."""
        self.tls = True
        self._user = None

    def timed_out(self) -> Response:
        return err(r.TIMEOUT, close=True)

    def connection_lost(self) -> None:
        """The connection is gone: release the maildrop, delete nothing."""
        self.closed = True
        self._sasl = None
        if self._pending_login is not None:
            self._pending_login.cancel()
        self._release()

    # -- events -----------------------------------------------------------------------------

    def handle(self, event: p.Event) -> Response | defer.Deferred:
        try:
            result = self._dispatch(event)
        except Exception:  # noqa: BLE001 -- a bug must not take the connection down
            return self.internal_error(Failure())
        if isinstance(result, defer.Deferred):
            result.addErrback(self.internal_error)
        return result

    def internal_error(self, failure: Failure) -> Response:
        log.failure("POP3 session error from {ip}", failure, ip=self.client.remote_ip)
        if self._sasl is not None:
            self._end_sasl()
        return err(r.INTERNAL_ERROR)

    def _dispatch(self, event: p.Event) -> Response | defer.Deferred:
        if isinstance(event, p.LineTooLong):
            if self._sasl is not None:
                return self._sasl_too_long()
            return self._error(r.LINE_TOO_LONG)
        if self._sasl is not None:
            return self._sasl_line(event.data)
        verb, args = p.split_command(event.data)
        handler = self._commands.get(verb)
        if handler is None:
            return self._error(r.UNKNOWN)
        if verb not in _ANY:
            wanted = State.AUTHORIZATION if verb in _AUTHORIZATION else State.TRANSACTION
            if self.state is not wanted:
                return self._error(r.WRONG_STATE)
        return handler(args, event.data)

    def _error(self, text: str) -> Response:
        """A client error; too many of them and the client is dropped."""
        self._errors += 1
        if self._errors >= self.config.max_errors:
            self.parser.close()
            return err(r.TOO_MANY_ERRORS, close=True)
        return err(text)

    def _job(self, fn: Callable[..., Any], *args: Any) -> defer.Deferred:
        """Run blocking ``fn`` after the session's previous blocking job (never two at once)."""
        result: defer.Deferred = defer.Deferred()

        def start(_: Any) -> defer.Deferred:
            d = self._run(fn, *args)
            d.addBoth(_fire, result)
            return d.addBoth(lambda _: None)

        self._jobs.addCallback(start)
        return result

    # -- any state ------------------------------------------------------------------------

    def _cmd_capa(self, args: list[bytes]) -> Response:
        if args:
            return self._error(r.SYNTAX)
        caps = ["TOP", "UIDL", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING"]
        if self.state is State.AUTHORIZATION:
            if self._plaintext_allowed():
                caps.append("USER")
            mechanisms = self._mechanisms_now()
            if mechanisms:
                caps.append("SASL " + " ".join(mechanisms))
            if self.config.tls_available and not self.tls:
                caps.append("STLS")
        return multiline("Capability list follows", caps)

    def _cmd_quit(self, args: list[bytes]) -> Response | defer.Deferred:
        self.parser.close()
        if self.state is not State.TRANSACTION or self.maildrop is None:
            self._release()
            return Response(b"+OK Logging out.\r\n", close=True)
        self.state = State.UPDATE
        maildrop, self.maildrop = self.maildrop, None
        d = self._job(maildrop.finish)

        def expunged(counts: tuple[int, int]) -> Response:
            asked, removed = counts
            if asked:
                log.info("POP3 {user}: {removed} of {asked} messages deleted",
                         user=self.address, removed=removed, asked=asked)
            self._release()
            if removed < asked:
                return err(r.EXPUNGE_FAILED, close=True)
            return Response(b"+OK Logging out, messages deleted.\r\n" if asked else
                            b"+OK Logging out.\r\n", close=True)

        def failed(failure: Failure) -> Response:
            log.failure("POP3 {user}: expunge failed", failure, user=self.address)
            self._release()
            return err(r.EXPUNGE_FAILED, close=True)

        return d.addCallbacks(expunged, failed)

    def _cmd_stls(self, args: list[bytes]) -> Response:
        if args:
            return self._error(r.SYNTAX)
        if self.tls:
            return self._error(r.TLS_ACTIVE)
        if not self.config.tls_available:
            return err(r.TLS_UNAVAILABLE)
        return Response(b"+OK Begin TLS negotiation now.\r\n", starttls=True)

    # -- TRANSACTION ----------------------------------------------------------------------

    def _live(self) -> list[tuple[int, Message]]:
        assert self.maildrop is not None
        return [(n, m) for n, m in enumerate(self.maildrop.messages, 1) if not m.deleted]

    def _message(self, arg: bytes) -> Message | Response:
        assert self.maildrop is not None
        number = p.parse_number(arg)
        if number is None:
            return self._error(r.SYNTAX)
        if not 1 <= number <= len(self.maildrop.messages):
            return err(r.NO_SUCH_MESSAGE)
        message = self.maildrop.messages[number - 1]
        if message.deleted:
            return err(r.ALREADY_DELETED)
        return message

    def _cmd_stat(self, args: list[bytes]) -> Response:
        if args:
            return self._error(r.SYNTAX)
        live = self._live()
        return ok(f"{len(live)} {sum(m.size for _, m in live)}")

    def _cmd_list(self, args: list[bytes]) -> Response:
        if len(args) > 1:
            return self._error(r.SYNTAX)
        if args:
            found = self._message(args[0])
            if isinstance(found, Response):
                return found
            return ok(f"{args[0].decode()} {found.size}")
        live = self._live()
        return multiline(f"{len(live)} messages ({sum(m.size for _, m in live)} octets)",
                         [f"{n} {m.size}" for n, m in live])

    def _cmd_uidl(self, args: list[bytes]) -> Response:
        assert self.maildrop is not None
        if len(args) > 1:
            return self._error(r.SYNTAX)
        if args:
            found = self._message(args[0])
            if isinstance(found, Response):
                return found
            return ok(f"{int(args[0])} {self.maildrop.uidl(found)}")
        return multiline("Unique-ID listing follows",
                         [f"{n} {self.maildrop.uidl(m)}" for n, m in self._live()])

    def _cmd_retr(self, args: list[bytes]) -> Response | defer.Deferred:
        if len(args) != 1:
            return self._error(r.SYNTAX)
        return self._send(args[0], None)

    def _cmd_top(self, args: list[bytes]) -> Response | defer.Deferred:
        if len(args) != 2:
            return self._error(r.SYNTAX)
        lines = p.parse_number(args[1])
        if lines is None:
            return self._error(r.SYNTAX)
        return self._send(args[0], lines)

    def _send(self, arg: bytes, lines: int | None) -> Response | defer.Deferred:
        message = self._message(arg)
        if isinstance(message, Response):
            return message
        first = b"+OK %d octets\r\n" % message.size

        def opened(file: Any) -> Response:
            if self.closed:
                file.close()
                return err(r.INTERNAL_ERROR, close=True)
            return Response(first, body=MessageBody(file, message.size, lines))

        try:
            # the usual case, without a thread: the file is where the index last saw it
            file = open(message.path, "rb", buffering=0)  # noqa: SIM115 -- the protocol closes it
        except FileNotFoundError:
            d = self._job(self.maildrop.open_message, message)
            return d.addCallbacks(opened, self._open_failed)
        return opened(file)

    def _open_failed(self, failure: Failure) -> Response:
        if failure.check(MessageGone):
            return err(r.MESSAGE_GONE)
        return self.internal_error(failure)

    def _cmd_dele(self, args: list[bytes]) -> Response:
        if len(args) != 1:
            return self._error(r.SYNTAX)
        message = self._message(args[0])
        if isinstance(message, Response):
            return message
        message.deleted = True
        return ok("Marked to be deleted.")

    def _cmd_rset(self, args: list[bytes]) -> Response:
        assert self.maildrop is not None
        if args:
            return self._error(r.SYNTAX)
        for message in self.maildrop.messages:
            message.deleted = False
        live = self._live()
        return ok(f"{len(live)} messages ({sum(m.size for _, m in live)} octets).")

    def _cmd_noop(self, args: list[bytes]) -> Response:
        if args:
            return self._error(r.SYNTAX)
        return ok()

    # -- leaving ----------------------------------------------------------------------------

    def _release(self) -> None:
        maildrop, self.maildrop = self.maildrop, None
        if maildrop is not None:
            self._job(maildrop.close).addErrback(
                lambda f: log.failure("POP3: closing the mailbox failed", f))
        self._end_login()

    def enter_transaction(self) -> None:
        self.state = State.TRANSACTION


def _fire(value: Any, d: defer.Deferred) -> None:
    if isinstance(value, Failure):
        d.errback(value)
    else:
        d.callback(value)
