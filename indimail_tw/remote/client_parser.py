"""The SMTP client as a sans-IO state machine: replies in, commands and events out.

No Twisted and no sockets.  The adapter (:mod:`indimail_tw.remote.client`)
feeds received bytes to :meth:`ClientCore.receive`, writes whatever
:meth:`ClientCore.outgoing` returns, and acts on the events:

* :class:`Ready` -- greeting, EHLO (HELO for old servers), STARTTLS and AUTH
  are done; :meth:`ClientCore.start` may send a transaction.  A connection
  goes back to ``Ready`` after each transaction, so many messages can share it.
* :class:`StartTLS` -- the server said 220 to STARTTLS: start TLS, then call
  :meth:`ClientCore.tls_started` once the handshake is complete.
* :class:`SendBody` -- the server said 354: stream the message through a
  :class:`~indimail_tw.remote.body.BodyEncoder`, then call
  :meth:`ClientCore.body_sent`.
* :class:`TransactionDone` -- one result per recipient, in order.
* :class:`SessionFailed` -- the connection could not be set up; says whether
  to try the next MX and whether the host belongs in the tcpto table.
* :class:`Closed` -- nothing more will happen; close the connection.

Every command that is sent queues the handler of its reply, so with
PIPELINING (RFC 2920) MAIL, all RCPTs and DATA leave in one write and the
replies are matched in order.  Decisions made before sending anything: a
message larger than the server's SIZE fails with 5.3.4; a message that
needs SMTPUTF8 (an address that has no ASCII form, or UTF-8 headers with the
SMTPUTF8 flag) fails with 5.6.7 at a server without it; BODY=8BITMIME is
declared when the server offers it (8-bit data is sent as is otherwise, as
qmail-remote does).  Result texts follow qmail-remote's wording.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import hmac
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from indimail_tw.delivery.result import DeliveryResult
from indimail_tw.remote.addresses import ascii_address, ascii_domain
from indimail_tw.remote.replies import Capabilities, PeerError, Reply, ReplyReader, encode_xtext


class TLSMode(enum.Enum):
    NONE = "none"                    # never STARTTLS
    OPPORTUNISTIC = "opportunistic"  # STARTTLS when offered, no verification
    REQUIRED = "required"            # STARTTLS or fail (tlshosts/<host>.pem)


@dataclass(frozen=True)
class Credentials:
    """AUTH credentials of an smtproutes entry."""

    user: str
    password: str
    mechanism: str | None = None     # AUTH_SMTP: PLAIN, LOGIN or CRAM-MD5; None = best offered
    plaintext_ok: bool = False       # PLAIN/LOGIN allowed without TLS (SECURE_AUTH=0)

    def __repr__(self) -> str:       # never log the password
        return f"Credentials(user={self.user!r}, mechanism={self.mechanism!r})"


@dataclass
class Transaction:
    """One message to some recipients.  ``recipients`` have .address, .notify, .orcpt."""

    sender: str
    recipients: Sequence[Any]
    size: int = 0                    # bytes on the wire (SIZE=)
    eight_bit: bool = False
    smtputf8: bool = False           # the envelope's SMTPUTF8 flag
    utf8_header: bool = False        # the header holds non-ASCII text
    ret: str | None = None           # DSN RET
    envid: str | None = None         # DSN ENVID (decoded)


@dataclass(frozen=True)
class Ready:
    capabilities: Capabilities


@dataclass(frozen=True)
class StartTLS:
    pass


@dataclass(frozen=True)
class SendBody:
    pass


@dataclass(frozen=True)
class TransactionDone:
    results: tuple[DeliveryResult, ...]
    reusable: bool                   # the connection is Ready for another transaction
    answered: bool                   # the server replied to at least one command of it


@dataclass(frozen=True)
class SessionFailed:
    result: DeliveryResult
    next_mx: bool = False            # try the next MX / address
    tcpto: bool = False              # count it in the tcpto table
    tls_failed: bool = False         # the STARTTLS handshake failed (retry in clear)


@dataclass(frozen=True)
class Closed:
    pass


Event = Ready | StartTLS | SendBody | TransactionDone | SessionFailed | Closed
Handler = Callable[[Reply], list]


class Phase(enum.Enum):
    GREETING = "greeting"
    HELLO = "hello"                  # EHLO / HELO
    STARTTLS = "starttls"
    HANDSHAKE = "handshake"
    AUTH = "auth"
    READY = "ready"
    TRANSACTION = "transaction"
    BODY = "body"
    QUIT = "quit"
    CLOSED = "closed"


_SETUP = {Phase.GREETING, Phase.HELLO, Phase.STARTTLS, Phase.HANDSHAKE, Phase.AUTH}


def _b64(data: bytes) -> bytes:
    return base64.b64encode(data)


class ClientCore:
    """One SMTP client connection to ``host`` (its name is used in result texts)."""

    def __init__(self, host: str, helo: str, *, tls: TLSMode = TLSMode.OPPORTUNISTIC,
                 implicit_tls: bool = False, credentials: Credentials | None = None,
                 next_mx_on_helo_failure: bool = False) -> None:
        self.host = host
        self.helo = helo
        self.tls_mode = tls
        self.tls_active = implicit_tls
        self.credentials = credentials
        self.next_mx_on_helo_failure = next_mx_on_helo_failure
        self.capabilities = Capabilities.none()
        self.phase = Phase.GREETING
        self.authenticated = False
        self.transactions = 0            # transactions finished on this connection
        self._reader = ReplyReader()
        self._out: list[bytes] = []
        self._expect: deque[Handler] = deque([self._on_greeting])
        self._tx: _TxState | None = None

    # -- the adapter's side ------------------------------------------------------------------

    def outgoing(self) -> bytes:
        """Bytes to write now."""
        data, self._out = b"".join(self._out), []
        return data

    @property
    def waiting(self) -> bool:
        """Whether the server owes us something (a reply or the TLS handshake)."""
        return bool(self._expect) or self.phase is Phase.HANDSHAKE

    def receive(self, data: bytes) -> list[Event]:
        if self.phase in (Phase.CLOSED, Phase.HANDSHAKE):
            return []
        self._reader.append(data)
        events: list[Event] = []
        while self.phase is not Phase.CLOSED:
            try:
                reply = self._reader.next_reply()
            except PeerError as e:
                return events + self._die(f"Connected to {self.host} but it does not speak "
                                          f"SMTP properly ({e}). (#4.4.2)")
            if reply is None:
                break
            if not self._expect:
                events += self._unexpected()
                continue
            events += self._expect.popleft()(reply)
            if self.phase is Phase.HANDSHAKE:
                # anything after "220" to STARTTLS was sent in the clear: never act on it
                self._reader = ReplyReader()
                break
        return events

    def tls_started(self) -> list[Event]:
        """The STARTTLS handshake completed: say EHLO again."""
        if self.phase is not Phase.HANDSHAKE:
            return []
        self.tls_active = True
        self.capabilities = Capabilities.none()
        return self._hello()

    def start(self, tx: Transaction) -> list[Event]:
        """Send a transaction; only when Ready."""
        if self.phase is not Phase.READY:
            raise RuntimeError(f"start() in phase {self.phase.value}")
        self._tx = state = _TxState(tx)
        self.phase = Phase.TRANSACTION
        limit = self.capabilities.size_limit
        if limit and tx.size > limit:
            too_big = self._local(f"Sorry, the message is larger than {self.host} accepts "
                                  f"({tx.size} > {limit} bytes). (#5.3.4)", "5.3.4")
            state.results = [too_big] * len(tx.recipients)
        sender, smtputf8, forms = self._envelope_forms(state)
        if sender is None or not state.pending:
            return self._done(True, answered=True)
        commands: list[tuple[bytes, Handler]] = [
            (self._mail_command(tx, sender, smtputf8), self._on_mail)]
        for i in state.pending:
            commands.append((self._rcpt_command(tx.recipients[i], forms[i]),
                             self._rcpt_handler(i)))
        commands.append((b"DATA\r\n", self._on_data))
        if "PIPELINING" in self.capabilities:
            for command, handler in commands:
                self._send(command, handler)
        else:
            state.queue = deque(commands)
            self._send_next()
        return []

    def body_sent(self) -> list[Event]:
        """The message and its terminator have been written."""
        if self.phase is Phase.BODY:
            self.phase = Phase.TRANSACTION
            self._expect.append(self._on_final)
        return []

    def quit(self) -> list[Event]:
        if self.phase is Phase.READY:
            self.phase = Phase.QUIT
            self._send(b"QUIT\r\n", lambda reply: self._closed())
            return []
        return [] if self.phase is Phase.QUIT else self._closed()

    def connection_lost(self, detail: str = "") -> list[Event]:
        if self.phase in (Phase.CLOSED, Phase.QUIT, Phase.READY):
            return [] if self.phase is Phase.CLOSED else self._closed()
        if self.phase is Phase.HANDSHAKE:
            why = f" ({detail})" if detail else ""
            return self._die(f"Connected to {self.host} but the TLS handshake "
                             f"failed{why}. (#4.7.5)", "4.7.5")
        return self._die(f"Connected to {self.host} but connection died. (#4.4.2)")

    def abort(self, text: str, enhanced: str = "4.3.0") -> list[Event]:
        """Give up on the connection for a reason of our own (e.g. unreadable message)."""
        if self.phase in (Phase.CLOSED, Phase.QUIT, Phase.READY):
            return [] if self.phase is Phase.CLOSED else self._closed()
        return self._die(text, enhanced)

    def timed_out(self) -> list[Event]:
        if self.phase in (Phase.CLOSED, Phase.QUIT, Phase.READY):
            return [] if self.phase is Phase.CLOSED else self._closed()
        return self._die(f"Connected to {self.host} but my connection timed out. (#4.4.2)")

    # -- results -------------------------------------------------------------------------------

    def _extra(self, reply: Reply | None) -> dict[str, str]:
        extra = {"remote_mta": f"dns; {self.host}"}
        if reply is not None:
            extra["diagnostic"] = f"smtp; {reply.one_line()}"
        return extra

    def _failure(self, reply: Reply, text: str, enhanced: str = "") -> DeliveryResult:
        """The server refused: 5xx is permanent, anything else temporary."""
        kind = 5 if reply.kind == 5 else 4
        if reply.enhanced and reply.kind == kind:
            enhanced = reply.enhanced
        enhanced = enhanced or f"{kind}.0.0"
        text = f"{text}\nRemote host said: {reply.wire_text()}"
        make = DeliveryResult.permanent if kind == 5 else DeliveryResult.temporary
        return make(text, enhanced, **self._extra(reply))

    def _local(self, text: str, enhanced: str) -> DeliveryResult:
        """A failure we decide ourselves (the status class says which kind)."""
        make = DeliveryResult.permanent if enhanced.startswith("5") else DeliveryResult.temporary
        return make(text, enhanced, **self._extra(None))

    def _fail(self, result: DeliveryResult, **kw: bool) -> list[Event]:
        """End the session before Ready, saying QUIT if the server can still hear it."""
        if self.phase not in (Phase.HANDSHAKE, Phase.CLOSED):
            self._out.append(b"QUIT\r\n")
        self.phase = Phase.CLOSED
        self._expect.clear()
        return [SessionFailed(result, **kw)]

    def _closed(self) -> list[Event]:
        self.phase = Phase.CLOSED
        self._expect.clear()
        return [Closed()]

    def _die(self, text: str, enhanced: str = "4.4.2") -> list[Event]:
        """The connection is gone (lost, timed out or unintelligible)."""
        phase = self.phase
        self._expect.clear()
        self.phase = Phase.CLOSED
        result = self._local(text, enhanced)
        if phase in _SETUP:
            return [SessionFailed(result, next_mx=True, tcpto=phase is Phase.GREETING,
                                  tls_failed=phase is Phase.HANDSHAKE)]
        if self._tx is not None:
            state, self._tx = self._tx, None
            results = tuple(r if r is not None else result for r in state.results)
            return [TransactionDone(results, False, state.answered), Closed()]
        return [Closed()]

    def _unexpected(self) -> list[Event]:
        """A reply nobody asked for (a 421 before closing): the connection is done."""
        if self.phase in (Phase.READY, Phase.QUIT):
            return self._closed()
        return self._die(f"Connected to {self.host} but it sent a reply I did not "
                         f"expect. (#4.4.2)")

    # -- setting the session up ---------------------------------------------------------------

    def _send(self, command: bytes, handler: Handler) -> None:
        self._out.append(command)
        self._expect.append(handler)

    def _hello(self) -> list[Event]:
        self.phase = Phase.HELLO
        self._send(b"EHLO " + self._helo_name() + b"\r\n", self._on_ehlo)
        return []

    def _helo_name(self) -> bytes:
        try:
            return ascii_domain(self.helo).encode("ascii")
        except ValueError:
            return self.helo.encode("ascii", "replace")

    def _on_greeting(self, reply: Reply) -> list[Event]:
        if reply.code == 220:
            return self._hello()
        result = self._failure(reply, f"Connected to {self.host} but greeting failed.")
        # qmail-remote tries the next MX after a 4xx greeting and remembers the host
        return self._fail(result, next_mx=reply.kind == 4, tcpto=reply.kind == 4)

    def _on_ehlo(self, reply: Reply) -> list[Event]:
        if reply.code == 250:
            self.capabilities = Capabilities.from_ehlo(reply)
            return self._after_hello()
        self._send(b"HELO " + self._helo_name() + b"\r\n", self._on_helo)
        return []

    def _on_helo(self, reply: Reply) -> list[Event]:
        if reply.code == 250:
            self.capabilities = Capabilities.none()
            return self._after_hello()
        result = self._failure(reply, f"Connected to {self.host} but my name was rejected.")
        return self._fail(result, next_mx=self.next_mx_on_helo_failure and reply.kind != 5)

    def _after_hello(self) -> list[Event]:
        if not self.tls_active and self.tls_mode is not TLSMode.NONE:
            if "STARTTLS" in self.capabilities:
                self.phase = Phase.STARTTLS
                self._send(b"STARTTLS\r\n", self._on_starttls)
                return []
            if self.tls_mode is TLSMode.REQUIRED:
                return self._fail(self._no_tls(), next_mx=True)
        return self._authenticate()

    def _no_tls(self) -> DeliveryResult:
        return self._local(f"Connected to {self.host} but TLS was not achieved, and TLS "
                           "is required for this host. (#4.7.0)", "4.7.0")

    def _on_starttls(self, reply: Reply) -> list[Event]:
        if reply.code == 220:
            self.phase = Phase.HANDSHAKE
            return [StartTLS()]
        if self.tls_mode is TLSMode.REQUIRED:
            return self._fail(self._no_tls(), next_mx=True)
        return self._authenticate()

    # -- AUTH (RFC 4954): PLAIN, LOGIN, CRAM-MD5 -------------------------------------------------

    def _mechanism(self, creds: Credentials) -> str | None:
        offered = self.capabilities.auth_mechanisms
        clear_ok = self.tls_active or creds.plaintext_ok
        usable = [m for m in ("PLAIN", "LOGIN", "CRAM-MD5")
                  if m in offered and (clear_ok or m == "CRAM-MD5")]
        if creds.mechanism:
            usable = [m for m in usable if m == creds.mechanism.upper()]
        return usable[0] if usable else None

    def _authenticate(self) -> list[Event]:
        creds = self.credentials
        if creds is None or self.authenticated or "AUTH" not in self.capabilities:
            return self._ready()      # qmail-remote goes on without AUTH when none is offered
        mechanism = self._mechanism(creds)
        if mechanism is None:
            if not self.tls_active and not creds.plaintext_ok:
                text = (f"Connected to {self.host} but TLS was not achieved, and I send "
                        "credentials only over TLS. (#4.7.0)")
            else:
                text = (f"Connected to {self.host} but it offers no AUTH mechanism I "
                        "can use. (#4.7.0)")
            return self._fail(self._local(text, "4.7.0"), next_mx=True)
        self.phase = Phase.AUTH
        user, password = creds.user.encode(), creds.password.encode()
        if mechanism == "PLAIN":
            token = _b64(b"\0" + user + b"\0" + password)
            # the token goes with the command; it is sent again only if the server asks
            self._send(b"AUTH PLAIN " + token + b"\r\n", self._auth_reply(mechanism, [token]))
        elif mechanism == "LOGIN":
            self._send(b"AUTH LOGIN\r\n",
                       self._auth_reply(mechanism, [_b64(user), _b64(password)]))
        else:
            self._send(b"AUTH CRAM-MD5\r\n", self._auth_reply(mechanism, None))
        return []

    def _auth_reply(self, mechanism: str, responses: list[bytes] | None) -> Handler:
        """The handler of one AUTH reply; ``responses`` answer 334 challenges in order
        (None: compute the CRAM-MD5 answer from the challenge)."""

        def on_reply(reply: Reply) -> list[Event]:
            if reply.code == 235:
                self.authenticated = True
                return self._ready()
            if reply.code == 334:
                answer = self._cram_md5(reply) if responses is None else (
                    responses.pop(0) if responses else None)
                if answer is not None:
                    self._send(answer + b"\r\n", self._auth_reply(mechanism, responses or []))
                    return []
                self._out.append(b"*\r\n")      # cancel the exchange (RFC 4954 4)
            text = f"Connected to {self.host} but authentication was rejected (AUTH {mechanism})."
            enhanced = "5.7.8" if reply.kind == 5 else "4.7.0"
            return self._fail(self._failure(reply, text, enhanced))

        return on_reply

    def _cram_md5(self, reply: Reply) -> bytes | None:
        creds = self.credentials
        assert creds is not None
        try:
            challenge = base64.b64decode(reply.lines[0].strip(), validate=True)
        except ValueError:
            return None
        digest = hmac.new(creds.password.encode(), challenge, hashlib.md5).hexdigest()
        return _b64(creds.user.encode() + b" " + digest.encode())

    def _ready(self) -> list[Event]:
        self.phase = Phase.READY
        return [Ready(self.capabilities)]

    # -- a transaction -------------------------------------------------------------------------

    def _no_utf8(self) -> DeliveryResult:
        return self._local(f"Sorry, the message needs SMTPUTF8 and {self.host} does not "
                           "support it. (#5.6.7)", "5.6.7")

    def _envelope_forms(self, state: _TxState) -> tuple[str | None, bool, dict[int, str]]:
        """The sender and recipients as sent, and whether to say SMTPUTF8.

        Without SMTPUTF8 at the server, an address whose only non-ASCII part is
        the domain goes out with the domain in A-labels; others fail (5.6.7).
        """
        tx = state.tx
        if "SMTPUTF8" in self.capabilities:
            addresses = [tx.sender] + [r.address for r in tx.recipients]
            utf8 = tx.smtputf8 or not all(a.isascii() for a in addresses)
            return tx.sender, utf8, {i: r.address for i, r in enumerate(tx.recipients)}
        sender = ascii_address(tx.sender)
        if sender is None or (tx.smtputf8 and tx.utf8_header):
            state.results = [r or self._no_utf8() for r in state.results]
            return None, False, {}
        forms: dict[int, str] = {}
        for i, r in enumerate(tx.recipients):
            form = ascii_address(r.address)
            if form is None:
                state.results[i] = state.results[i] or self._no_utf8()
            else:
                forms[i] = form
        return sender, False, forms

    def _mail_command(self, tx: Transaction, sender: str, smtputf8: bool) -> bytes:
        caps = self.capabilities
        params = []
        if "SIZE" in caps:
            params.append(f"SIZE={tx.size}")
        if tx.eight_bit and "8BITMIME" in caps:
            params.append("BODY=8BITMIME")
        if smtputf8:
            params.append("SMTPUTF8")
        if "DSN" in caps:
            if tx.ret:
                params.append(f"RET={tx.ret}")
            if tx.envid:
                params.append(f"ENVID={encode_xtext(tx.envid)}")
        tail = "".join(" " + p for p in params)
        return f"MAIL FROM:<{sender}>{tail}\r\n".encode()

    def _rcpt_command(self, recipient: Any, form: str) -> bytes:
        params = []
        if "DSN" in self.capabilities:
            notify = getattr(recipient, "notify", ())
            if notify:
                params.append("NOTIFY=" + ",".join(notify))
            orcpt = getattr(recipient, "orcpt", None)
            if orcpt:
                kind, _, original = orcpt.partition(";")
                params.append(f"ORCPT={kind};{encode_xtext(original)}")
        tail = "".join(" " + p for p in params)
        return f"RCPT TO:<{form}>{tail}\r\n".encode()

    def _send_next(self) -> list[Event]:
        """Without PIPELINING: send the transaction's next command, if it is still due."""
        state = self._tx
        assert state is not None and state.queue is not None
        if state.mail_failed or not state.queue:
            state.queue.clear()
            return self._end()
        command, handler = state.queue.popleft()
        if command == b"DATA\r\n" and not state.accepted:
            state.queue.clear()
            return self._end()
        self._send(command, handler)
        return []

    def _after_reply(self) -> list[Event]:
        state = self._tx
        return self._send_next() if state is not None and state.queue is not None else []

    def _on_mail(self, reply: Reply) -> list[Event]:
        state = self._tx
        assert state is not None
        state.answered = True
        if reply.kind != 2:
            state.mail_failed = True
            failure = self._failure(reply, f"Connected to {self.host} but sender was rejected.")
            state.results = [r or failure for r in state.results]
        return self._after_reply()

    def _rcpt_handler(self, index: int) -> Handler:
        def on_reply(reply: Reply) -> list[Event]:
            state = self._tx
            assert state is not None
            if not state.mail_failed:
                if reply.kind == 2:
                    state.accepted.append(index)
                else:
                    state.results[index] = self._failure(
                        reply, f"{self.host} does not like recipient.")
            return self._after_reply()

        return on_reply

    def _on_data(self, reply: Reply) -> list[Event]:
        state = self._tx
        assert state is not None
        if reply.code == 354 and state.accepted and not state.mail_failed:
            self.phase = Phase.BODY
            return [SendBody()]
        if reply.code == 354:            # pipelined DATA with nobody to send to: empty message
            self._send(b".\r\n", lambda _reply: self._end())
            return []
        if state.accepted and not state.mail_failed:
            failure = self._failure(reply, "Failed on DATA command.")
            for i in state.accepted:
                state.results[i] = failure
        return self._end()

    def _on_final(self, reply: Reply) -> list[Event]:
        state = self._tx
        assert state is not None
        if reply.kind == 2:
            text = f"{self.host} accepted message.\nRemote host said: {reply.wire_text()}"
            result = DeliveryResult.ok(text, enhanced=reply.enhanced or "2.0.0",
                                       **self._extra(reply))
        else:
            result = self._failure(reply, "Failed after I sent the message.")
        for i in state.accepted:
            state.results[i] = result
        return self._done(True)

    def _end(self) -> list[Event]:
        """The transaction ended without a message: RSET, then report."""
        self._send(b"RSET\r\n", lambda reply: self._done(reply.code == 250))
        return []

    def _done(self, reusable: bool, answered: bool | None = None) -> list[Event]:
        state, self._tx = self._tx, None
        assert state is not None
        self.transactions += 1
        results = tuple(r if r is not None else self._local(
            f"Connected to {self.host} but the transaction ended unexpectedly. (#4.4.2)",
            "4.4.2") for r in state.results)
        events: list[Event] = [TransactionDone(
            results, reusable, state.answered if answered is None else answered)]
        self.phase = Phase.READY
        if not reusable:
            events += self.quit()
        return events


class _TxState:
    __slots__ = ("tx", "results", "accepted", "mail_failed", "answered", "queue")

    def __init__(self, tx: Transaction) -> None:
        self.tx = tx
        self.results: list[DeliveryResult | None] = [None] * len(tx.recipients)
        self.accepted: list[int] = []
        self.mail_failed = False
        self.answered = False
        self.queue: deque[tuple[bytes, Handler]] | None = None

    @property
    def pending(self) -> list[int]:
        return [i for i, r in enumerate(self.results) if r is None]
