"""The SMTP server state machine of one connection: events in, replies out.

:meth:`SMTPSession.handle` takes one parser event and returns a
:class:`Response` (bytes to send, maybe "then close" or "then start TLS"),
``None`` (nothing to say, e.g. a piece of message content) or a Deferred
firing with one of those.  The protocol adapter sends the answer before it
pulls the next event, so replies leave in command order under PIPELINING
however long a lookup, a login or a queue commit takes.  The session never
touches a transport; it switches the parser's mode (DATA, BDAT, SASL lines)
itself, between events.

Policy lives in :mod:`indimail_tw.policy`; the session runs its hooks at
connect, HELO/EHLO, MAIL, RCPT and end of data, and adds what needs counters
or a clock: maxrecipients, tarpitting, the error and auth-failure limits.

AUTH is in :mod:`indimail_tw.smtp.auth` (a mixin), reply texts in
:mod:`indimail_tw.smtp.replies`, message streaming in
:mod:`indimail_tw.smtp.message`.  Messages reach the queue with LF line
endings (as qmail stores them), our ``Received:`` line first.

An unexpected exception anywhere becomes ``451 4.3.0`` and a logged
traceback; the connection goes on (while content is still arriving the reply
waits for its end).  A failing connect check greets with 421.  Nothing the
client can see names the configuration or a backend, or says whether a user
exists, except the recipient check's documented IndiMail codes.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from twisted.internet import defer, task
from twisted.python.failure import Failure

from indimail_tw.auth import sasl
from indimail_tw.errors import MailError
from indimail_tw.logsetup import QuickLogger
from indimail_tw.policy.base import (
    MessageInfo, RcptRequest, Reject, SessionContext, SMTPPolicy, Transaction,
)
from indimail_tw.policy.gates import TOO_BIG
from indimail_tw.queue.envelope import Envelope, Recipient
from indimail_tw.smtp import parser as p
from indimail_tw.smtp.auth import AuthCommands
from indimail_tw.smtp.config import SessionConfig
from indimail_tw.smtp.message import MessageReceiver, bare_line_ending
from indimail_tw.smtp.received import protocol_name, received_header, safe
from indimail_tw.smtp.replies import (
    AUTH_LINE_TOO_LONG, BAD_BDAT, BAD_PARAMETER, EARLY_TALKER, HELLO_FIRST, INTERNAL_ERROR,
    LINE_TOO_LONG, MAIL_FIRST, NESTED_MAIL, NO_ARGUMENTS, NO_DATA_AFTER_BDAT, NO_QUEUE,
    RCPT_FIRST, RCPT_HARD_LIMIT, TIMEOUT, TLS_ACTIVE, TLS_UNAVAILABLE, TOO_MANY_ERRORS,
    TOO_MANY_RCPTS, UNIMPLEMENTED, UNRECOGNIZED, Response, ok, refuse, reply,
)
from indimail_tw.smtp.syntax import (
    SyntaxProblem, decode_xtext, parse_mail_or_rcpt, split_command,
)

log = QuickLogger()


#: Received-line ids only need to be unique enough to find a message in the logs, not
#: secret: no system call per message for them.
_txids = random.Random()
MAX_RECIPIENTS = 10000      # per transaction, whatever maxrecipients says (RFC 5321: >= 100)
_MAIL_PARAMS = {"SIZE", "BODY", "SMTPUTF8", "RET", "ENVID", "AUTH"}
_RCPT_PARAMS = {"NOTIFY", "ORCPT"}
_NOTIFY = {"SUCCESS", "FAILURE", "DELAY"}


class SMTPSession(AuthCommands):
    """One connection's state; see the module docstring."""

    def __init__(self, config: SessionConfig, ctx: SessionContext, policy: SMTPPolicy,
                 parser: p.SMTPParser, *, portal: Any = None, queue: Any = None,
                 clock: Any = None, tls_details: Callable[[], tuple[str, str] | None]
                 | None = None) -> None:
        if clock is None:
            from twisted.internet import reactor as clock
        self.config = config
        self.ctx = ctx
        self.policy = policy
        self.parser = parser
        self.portal = portal
        self.queue = queue
        self.clock = clock
        self.tls_details = tls_details or (lambda: None)
        ctx.now = clock.seconds
        parser.line_limit = config.line_limit
        self._sasl: sasl.SASLExchange | None = None
        self._message: MessageReceiver | None = None
        self._bdat: tuple[int, bool] | None = None    # (size, last) of the chunk being read
        self._bdat_error: Reject | None = None
        self._used_bdat = False
        self._errors = 0
        self._auth_failures = 0
        self._logout: Callable[[], None] | None = None
        self._commands = {
            "HELO": self._helo, "EHLO": self._ehlo, "MAIL": self._mail, "RCPT": self._rcpt,
            "DATA": self._data, "BDAT": self._bdat_command, "RSET": self._rset,
            "NOOP": self._noop, "QUIT": self._quit, "VRFY": self._vrfy, "EXPN": self._expn,
            "HELP": self._help, "STARTTLS": self._starttls, "AUTH": self._auth,
        }

    # -- connection events (called by the protocol) ------------------------------------------

    def greeting(self) -> Response | defer.Deferred:
        cfg = self.config
        if cfg.shutdown is not None:
            return refuse(reply(421, "4.3.2", cfg.shutdown or "Service not available, closing "
                                                          "transmission channel", close=True))
        verdict = self.policy.run("connect", self.ctx)
        if isinstance(verdict, defer.Deferred):
            return verdict.addCallback(self._greet).addErrback(self._greet_failed)
        return self._greet(verdict)

    def _greet(self, verdict: Reject | None) -> Response | defer.Deferred:
        if verdict is not None:
            return refuse(Reject(verdict.code, verdict.enhanced, verdict.text, close=True))
        lines = list(self.config.greeting) or [self.config.hostname]
        lines[0] += " ESMTP"
        text = "".join(f"220-{line}\r\n" for line in lines[:-1]) + f"220 {lines[-1]}\r\n"
        response = Response(text.encode("utf-8", "replace"))
        delay = abs(self.config.greetdelay)
        if delay:
            return task.deferLater(self.clock, delay, lambda: response)
        return response

    def _greet_failed(self, failure: Failure) -> Response:
        log.failure("connect checks failed", failure)
        return refuse(reply(421, "4.3.0", "temporary failure, try again later", close=True))

    def early_talker(self, buffered: int) -> Response | None:
        """After the greeting: a negative greetdelay drops clients that did not wait."""
        if self.config.greetdelay < 0 and buffered:
            return refuse(EARLY_TALKER)
        return None

    def tls_started(self) -> None:
        """TLS is on (STARTTLS accepted, or implicit TLS): forget what the client said."""
        self.ctx.tls = True
        self.ctx.helo = None
        self.ctx.esmtp = False
        self._reset_transaction()

    def timed_out(self) -> Response:
        self._reset_transaction()
        return refuse(TIMEOUT)

    def connection_lost(self) -> None:
        self._reset_transaction()
        if self._logout is not None:
            logout, self._logout = self._logout, None
            logout()

    # -- events -----------------------------------------------------------------------------

    def handle(self, event: p.Event) -> Response | None | defer.Deferred:
        try:
            result = self._dispatch(event)
        except Exception:  # noqa: BLE001 -- a bug must not take the connection down
            return self.internal_error(Failure())
        if isinstance(result, defer.Deferred):
            result.addErrback(self.internal_error)
        return result

    def internal_error(self, failure: Failure) -> Response | None:
        """``451 4.3.0`` and a traceback; content still arriving is drained first."""
        log.failure("SMTP session error from {ip}", failure, ip=self.ctx.client.remote_ip)
        if self._sasl is not None:
            self._end_sasl()
        if self.parser.mode in (p.Mode.DATA, p.Mode.CHUNK):
            if self._message is not None:
                self._message.fail(INTERNAL_ERROR)
            elif self._bdat is not None:
                self._bdat_error = self._bdat_error or INTERNAL_ERROR
            return None
        self._reset_transaction()
        return refuse(INTERNAL_ERROR)

    def _dispatch(self, event: p.Event) -> Response | None | defer.Deferred:
        if isinstance(event, p.Line):
            if self._sasl is not None:
                return self._sasl_line(event.data)
            return self._command(event.data)
        if isinstance(event, p.Content):
            return self._content(event.data)
        if isinstance(event, p.ContentEnd):
            return self._content_end()
        if isinstance(event, p.LineTooLong):
            if self._sasl is not None:
                self._end_sasl()
                return refuse(AUTH_LINE_TOO_LONG)
            return self._error(LINE_TOO_LONG)
        if isinstance(event, p.BadLineEnding):
            self._reset_transaction()
            self.parser.close()
            return refuse(Reject(*_fields(bare_line_ending(event.kind)), close=True))
        raise TypeError(f"unknown event {event!r}")

    def _error(self, reject: Reject) -> Response:
        """A client error; too many of them and the client is dropped."""
        self._errors += 1
        if self._errors >= self.config.max_errors:
            return refuse(TOO_MANY_ERRORS)
        return refuse(reject)

    def _command(self, line: bytes) -> Response | None | defer.Deferred:
        try:
            verb, arg = split_command(line)
        except SyntaxProblem as e:
            return self._error(Reject(e.code, e.enhanced, e.text))
        handler = self._commands.get(verb)
        if handler is None:
            return self._error(UNRECOGNIZED)
        try:
            return handler(arg)
        except SyntaxProblem as e:
            return self._error(Reject(e.code, e.enhanced, e.text))

    # -- HELO / EHLO ------------------------------------------------------------------------

    def _helo(self, arg: bytes) -> Response | defer.Deferred:
        return self._hello(arg, esmtp=False)

    def _ehlo(self, arg: bytes) -> Response | defer.Deferred:
        return self._hello(arg, esmtp=True)

    def _hello(self, arg: bytes, esmtp: bool) -> Response | defer.Deferred:
        name = arg.decode("utf-8", "replace").strip()
        if not name or " " in name:
            return self._error(reply(501, "5.5.4", "syntax: HELO/EHLO hostname"))
        self._reset_transaction()
        self.ctx.helo = None

        def decided(verdict: Reject | None) -> Response:
            if verdict is not None:
                return refuse(verdict)
            self.ctx.helo = name
            self.ctx.esmtp = esmtp
            if not esmtp:
                return Response(f"250 {self.config.hostname}\r\n".encode())
            return Response(self._ehlo_lines())

        return _then(self.policy.run("helo", self.ctx, name), decided)

    def _ehlo_lines(self) -> bytes:
        cfg = self.config
        keywords = ["PIPELINING", "8BITMIME",
                    f"SIZE {cfg.databytes}" if cfg.databytes else "SIZE",
                    "ENHANCEDSTATUSCODES", "SMTPUTF8", "DSN", "CHUNKING"]
        if cfg.tls_available and not self.ctx.tls:
            keywords.append("STARTTLS")
        if self._auth_offered():
            keywords.append("AUTH " + " ".join(cfg.mechanisms))
        if cfg.help:
            keywords.append("HELP")
        lines = [cfg.hostname, *keywords]
        out = "".join(f"250-{x}\r\n" for x in lines[:-1]) + f"250 {lines[-1]}\r\n"
        return out.encode()

    # -- MAIL / RCPT ------------------------------------------------------------------------

    def _mail(self, arg: bytes) -> Response | defer.Deferred:
        ctx = self.ctx
        if ctx.helo is None:
            return refuse(HELLO_FIRST)
        if ctx.transaction is not None:
            return refuse(NESTED_MAIL)
        args = parse_mail_or_rcpt(arg, "FROM", utf8_allowed=True)
        params = args.params
        problem = _check_mail_params(params)
        if problem is not None:
            return self._error(problem)
        tx = Transaction(sender=args.path, params=params)
        ctx.transaction = tx

        def decided(verdict: Reject | None) -> Response:
            if verdict is not None:
                if ctx.transaction is tx:
                    ctx.transaction = None
                return refuse(verdict)
            return ok(250, "2.1.0", "ok")

        return _then(self.policy.run("mail", ctx, args.path, params), decided)

    def _rcpt(self, arg: bytes) -> Response | defer.Deferred:
        tx = self.ctx.transaction
        if tx is None:
            return refuse(MAIL_FIRST)
        utf8 = "SMTPUTF8" in tx.params
        args = parse_mail_or_rcpt(arg, "TO", utf8_allowed=True, utf8=utf8)
        try:
            notify, orcpt = _rcpt_params(args.params)
        except ValueError:
            return self._error(BAD_PARAMETER)
        cfg = self.config
        if cfg.maxrecipients and len(tx.recipients) >= cfg.maxrecipients:
            return refuse(TOO_MANY_RCPTS)
        if len(tx.recipients) >= MAX_RECIPIENTS:         # maxrecipients 0 is not "unbounded"
            return refuse(RCPT_HARD_LIMIT)
        tarpit = bool(cfg.tarpitcount and len(tx.recipients) + 1 >= cfg.tarpitcount)
        request = RcptRequest(args.path, args.path.address, args.params)

        def decided(verdict: Reject | None) -> Response | defer.Deferred:
            if verdict is not None:
                response = refuse(verdict)
            elif self.ctx.transaction is not tx:
                response = refuse(MAIL_FIRST)
            else:
                tx.recipients.append(Recipient(request.address, notify, orcpt))
                response = ok(250, "2.1.5", "ok")
            if tarpit and cfg.tarpitdelay > 0:
                return task.deferLater(self.clock, cfg.tarpitdelay, lambda: response)
            return response

        return _then(self.policy.run("rcpt", self.ctx, request), decided)

    # -- DATA / BDAT ------------------------------------------------------------------------

    def _transaction_ready(self) -> Reject | None:
        tx = self.ctx.transaction
        if tx is None:
            return MAIL_FIRST
        if not tx.recipients:
            return RCPT_FIRST
        if self.queue is None:
            return NO_QUEUE
        return None

    def _data(self, arg: bytes) -> Response:
        if arg:
            return self._error(NO_ARGUMENTS)
        problem = self._transaction_ready()
        if problem is None and self._used_bdat:
            problem = NO_DATA_AFTER_BDAT
        if problem is not None:
            return refuse(problem)
        problem = self._start_message()
        if problem is not None:
            self._reset_transaction()
            return refuse(problem)
        self.parser.expect_data()
        return Response(b"354 go ahead\r\n")

    def _bdat_command(self, arg: bytes) -> Response | None:
        words = arg.split()
        if not 1 <= len(words) <= 2 or not words[0].isdigit() or len(words[0]) > 18 or (
                len(words) == 2 and words[1].upper() != b"LAST"):
            self._reset_transaction()
            self.parser.close()
            return refuse(BAD_BDAT)
        size, last = int(words[0]), len(words) == 2
        self._bdat = (size, last)
        # The chunk is read (and maybe dropped) whatever happens next: its octets must
        # never be taken for commands, not even after an internal error below.
        self.parser.expect_chunk(size)
        self._bdat_error = self._transaction_ready()
        if self._bdat_error is None and self._message is None:
            self._bdat_error = self._start_message()
        self._used_bdat = True
        msg = self._message
        if self._bdat_error is None and msg is not None and self.config.databytes and (
                msg.size + size > self.config.databytes):
            msg.fail(TOO_BIG)
        return None

    def _start_message(self) -> Reject | None:
        """Open the queue writer and write our Received line; a reject if the queue refuses."""
        ctx, tx, cfg = self.ctx, self.ctx.transaction, self.config
        assert tx is not None
        envelope = self._envelope(tx)
        try:
            writer = self.queue.writer(envelope)
        except MailError as e:
            log.warn("queue refused a new message: {error}", error=e.text)
            return Reject.from_error(e)
        self._message = MessageReceiver(writer, cfg.databytes)
        header = received_header(
            helo=ctx.helo, remote_ip=ctx.client.remote_ip, remote_host=ctx.client.remote_host,
            hostname=cfg.hostname, protocol=envelope.protocol,
            tls=self.tls_details() if ctx.tls else None, auth_user=ctx.auth_user,
            txid=f"{_txids.getrandbits(64):016x}", when=envelope.received_at,
            hide_host=cfg.hide_host)
        self._message.write_header(header)
        return self._message.error

    def _envelope(self, tx: Transaction) -> Envelope:
        ctx, params = self.ctx, tx.params
        smtputf8 = "SMTPUTF8" in params
        envid = params.get("ENVID")
        return Envelope(
            sender=tx.sender.address, recipients=list(tx.recipients),
            ret=(params.get("RET") or "").upper() or None,
            envid=decode_xtext(envid) if envid else None,
            body=(params.get("BODY") or "").upper() or None, smtputf8=smtputf8,
            protocol=protocol_name(ctx.esmtp, ctx.tls, ctx.auth_user is not None, smtputf8),
            remote_ip=ctx.client.remote_ip, remote_host=ctx.client.remote_host or "",
            helo=ctx.helo or "", auth_user=ctx.auth_user, received_at=self.clock.seconds())

    def _content(self, data: bytes) -> defer.Deferred | None:
        msg = self._message
        if self._bdat is not None:
            if self._bdat_error is not None or msg is None:
                return None
            return msg.feed_raw(data)
        if msg is not None:
            return msg.feed(data)
        return None

    def _content_end(self) -> Response | None | defer.Deferred:
        msg = self._message
        if self._bdat is None:                       # end of DATA
            return self._finish(msg)
        size, last = self._bdat
        self._bdat = None
        if self._bdat_error is not None:
            error, self._bdat_error = self._bdat_error, None
            self._reset_transaction()
            return refuse(error)
        assert msg is not None
        if not last:
            if msg.error is not None:
                error = msg.error
                self._reset_transaction()
                return refuse(error)
            return ok(250, "2.0.0", f"{size} octets received")
        msg.finish_raw()
        return self._finish(msg)

    def _finish(self, msg: MessageReceiver | None) -> Response | defer.Deferred:
        if msg is None or msg.error is not None:
            error = msg.error if msg is not None else INTERNAL_ERROR
            self._reset_transaction()
            return refuse(error)
        info = MessageInfo(msg.size, msg.hops)

        def checked(verdict: Reject | None) -> Response | defer.Deferred:
            if verdict is not None:
                self._reset_transaction()
                return refuse(verdict)
            return msg.commit().addCallbacks(self._committed, self._commit_failed,
                                             callbackArgs=(msg,))

        return _then(self.policy.run("data", self.ctx, info), checked)

    def _committed(self, queue_id: Any, msg: MessageReceiver) -> Response:
        ctx, tx = self.ctx, self.ctx.transaction
        if tx is not None:
            log.info("accepted message qp {qid}: {ip} HELO <{helo}> MAIL from <{sender}> "
                     "RCPT <{rcpts}> AUTH <{auth}> Size: {size} TLS={tls}", qid=queue_id,
                     ip=ctx.client.remote_ip, helo=safe(ctx.helo or ""),
                     sender=tx.sender.address, rcpts=",".join(r.address for r in tx.recipients),
                     auth=ctx.auth_user or "", size=msg.size, tls="yes" if ctx.tls else "No")
        self._message = None
        self._reset_transaction()
        return ok(250, "2.0.0", f"ok {int(self.clock.seconds())} qp {queue_id}")

    def _commit_failed(self, failure: Failure) -> Response:
        self._message = None
        self._reset_transaction()
        if failure.check(MailError):
            log.warn("queue refused a message: {error}", error=failure.value.text)
            return refuse(Reject.from_error(failure.value))
        log.failure("queue commit failed", failure)
        return refuse(INTERNAL_ERROR)

    def _reset_transaction(self) -> None:
        if self._message is not None:
            self._message.abort()
            self._message = None
        self.ctx.transaction = None
        self._used_bdat = False

    # -- small commands ---------------------------------------------------------------------

    def _rset(self, arg: bytes) -> Response:
        self._reset_transaction()
        return ok(250, "2.0.0", "ok")

    def _noop(self, arg: bytes) -> Response:
        return ok(250, "2.0.0", "ok")

    def _quit(self, arg: bytes) -> Response:
        self._reset_transaction()
        self.parser.close()
        return Response(f"221 2.0.0 {self.config.hostname} closing connection\r\n".encode(),
                        close=True)

    def _vrfy(self, arg: bytes) -> Response:
        if not self.config.vrfy:
            return refuse(UNIMPLEMENTED)
        return ok(252, "2.1.5", "Cannot VRFY user, but will accept message and attempt delivery")

    def _expn(self, arg: bytes) -> Response:
        return refuse(UNIMPLEMENTED)

    def _help(self, arg: bytes) -> Response:
        if not self.config.help:
            return refuse(reply(502, "5.5.1", "disabled by the lord in her infinite wisdom"))
        commands = "HELO EHLO RSET NOOP MAIL RCPT DATA BDAT STARTTLS AUTH VRFY HELP QUIT"
        return Response(b"214-This server supports the following commands:\r\n"
                        + f"214 2.0.0 {commands}\r\n".encode())

    def _starttls(self, arg: bytes) -> Response:
        if arg:
            return self._error(NO_ARGUMENTS)
        if self.ctx.tls:
            return refuse(TLS_ACTIVE)
        if not self.config.tls_available:
            return refuse(TLS_UNAVAILABLE)
        self._reset_transaction()
        self.ctx.helo = None
        self.ctx.auth_user = None
        self.ctx.auth_relay = False
        return Response(b"220 2.0.0 ready for tls\r\n", starttls=True)

# -- helpers -------------------------------------------------------------------------------

def _then(value: Any, callback: Callable[[Any], Any]) -> Any:
    """Apply ``callback`` now, or when ``value`` (a Deferred) fires."""
    if isinstance(value, defer.Deferred):
        return value.addCallback(callback)
    return callback(value)


def _fields(reject: Reject) -> tuple[int, str, str]:
    return reject.code, reject.enhanced, reject.text


def _check_mail_params(params: dict[str, str | None]) -> Reject | None:
    for key, value in params.items():
        if key not in _MAIL_PARAMS:
            return BAD_PARAMETER
        if key == "SIZE" and (value is None or not value.isdigit() or len(value) > 20):
            return BAD_PARAMETER
        if key == "BODY" and (value or "").upper() not in ("7BIT", "8BITMIME"):
            return BAD_PARAMETER
        if key == "SMTPUTF8" and value is not None:
            return BAD_PARAMETER
        if key == "RET" and (value or "").upper() not in ("FULL", "HDRS"):
            return BAD_PARAMETER
        if key in ("ENVID", "AUTH"):
            if value is None or len(value) > 500:
                return BAD_PARAMETER
            try:
                decode_xtext(value if key == "ENVID" else value.strip("<>") or "x")
            except ValueError:
                return BAD_PARAMETER
    return None


def _rcpt_params(params: dict[str, str | None]) -> tuple[tuple[str, ...], str | None]:
    """DSN NOTIFY and ORCPT (decoded, ``type;address``); ValueError if malformed."""
    notify: tuple[str, ...] = ()
    orcpt = None
    for key, value in params.items():
        if key not in _RCPT_PARAMS or value is None:
            raise ValueError(key)
        if key == "NOTIFY":
            words = tuple(w.upper() for w in value.split(","))
            valid = words == ("NEVER",) or (all(w in _NOTIFY for w in words)
                                            and len(set(words)) == len(words))
            if not valid:
                raise ValueError(value)
            notify = words
        else:
            kind, sep, address = value.partition(";")
            if not sep or not kind or not address or len(value) > 500:
                raise ValueError(value)
            orcpt = f"{kind.lower()};{decode_xtext(address)}"
    return notify, orcpt
