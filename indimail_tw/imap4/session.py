"""One IMAP connection's state and commands (RFC 9051, RFC 3501 and extensions).

The session takes parser events (:mod:`indimail_tw.imap4.parser`) and answers
each with a *reply*: an iterable of complete response lines (bytes ending in
CRLF, the tagged completion last), or a Deferred firing with one.  It never
writes to a transport; what the protocol must do besides writing is said by
attributes it reads after each reply:

* ``action`` -- ``"starttls"``, ``"compress"`` or ``"close"`` (after the reply);
  :meth:`take_action` reads and clears it;
* ``raw_mode`` -- the parser must deliver raw lines (AUTHENTICATE responses,
  IDLE's DONE);
* ``idling`` -- in IDLE: the protocol calls :meth:`idle_poll` every
  ``config.idle_poll`` seconds and writes what it returns;
* :attr:`timeout` -- the autologout delay for the current state.

States (RFC 9051 3): not authenticated, authenticated, selected, logout.  A
command is checked against the state before its arguments are parsed; the
message commands (FETCH, STORE, SEARCH, COPY, MOVE, EXPUNGE, APPEND, CLOSE,
UNSELECT, CHECK) come from :class:`~indimail_tw.imap4.messages.MessageCommands`,
the mailbox commands from :class:`~indimail_tw.imap4.mailboxes.MailboxCommands`.
Pending mailbox changes (EXISTS, EXPUNGE, FETCH FLAGS, VANISHED) are inserted
before the tagged line of every command that completes while a mailbox is
selected (no EXPUNGE during FETCH, STORE and SEARCH, RFC 9051 7.5.1).

Login: LOGIN and AUTHENTICATE (PLAIN, LOGIN, CRAM-MD5, with SASL-IR) go through
:class:`~indimail_tw.auth.maillogin.MailLogin` (throttle, portal, post-login
tasks).  Before TLS, with ``SECURE_AUTH`` on (the default), LOGIN is refused
with ``NO [PRIVACYREQUIRED]`` and ``LOGINDISABLED`` is advertised.  Replies
never say whether a user exists; passwords never reach a log line.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from indimail_tw.auth import sasl
from indimail_tw.imap4 import grammar, wire
from indimail_tw.imap4.config import IMAPConfig
from indimail_tw.imap4.mailboxes import MailboxCommands
from indimail_tw.imap4.messages import MessageCommands
from indimail_tw.imap4.parser import ContinuationNeeded, ParseError, RawLine
from indimail_tw.imap4.tokens import Atom, Command
from indimail_tw.maildir import folders as mfolders
from indimail_tw.maildir.index import ScanNeeded

log = Logger()

CRLF = b"\r\n"
NOT_AUTH, AUTH, SELECTED, LOGOUT = 1, 2, 4, 8
ANY = NOT_AUTH | AUTH | SELECTED
AUTHED = AUTH | SELECTED

#: command -> (method, states it is valid in)
COMMANDS: dict[str, tuple[str, int]] = {
    "CAPABILITY": ("do_capability", ANY), "NOOP": ("do_noop", ANY),
    "LOGOUT": ("do_logout", ANY), "ID": ("do_id", ANY),
    "STARTTLS": ("do_starttls", NOT_AUTH), "AUTHENTICATE": ("do_authenticate", NOT_AUTH),
    "LOGIN": ("do_login", NOT_AUTH),
    "ENABLE": ("do_enable", AUTH), "SELECT": ("do_select", AUTHED),
    "EXAMINE": ("do_examine", AUTHED), "CREATE": ("do_create", AUTHED),
    "DELETE": ("do_delete", AUTHED), "RENAME": ("do_rename", AUTHED),
    "SUBSCRIBE": ("do_subscribe", AUTHED), "UNSUBSCRIBE": ("do_unsubscribe", AUTHED),
    "LIST": ("do_list", AUTHED), "LSUB": ("do_lsub", AUTHED),
    "NAMESPACE": ("do_namespace", AUTHED), "STATUS": ("do_status", AUTHED),
    "APPEND": ("do_append", AUTHED), "IDLE": ("do_idle", AUTHED),
    "GETQUOTA": ("do_getquota", AUTHED), "GETQUOTAROOT": ("do_getquotaroot", AUTHED),
    "SETQUOTA": ("do_setquota", AUTHED), "COMPRESS": ("do_compress", AUTHED),
    "CHECK": ("do_check", SELECTED), "CLOSE": ("do_close", SELECTED),
    "UNSELECT": ("do_unselect", SELECTED), "EXPUNGE": ("do_expunge", SELECTED),
    "SEARCH": ("do_search", SELECTED), "FETCH": ("do_fetch", SELECTED),
    "STORE": ("do_store", SELECTED), "COPY": ("do_copy", SELECTED),
    "MOVE": ("do_move", SELECTED),
    "UID FETCH": ("do_fetch", SELECTED), "UID STORE": ("do_store", SELECTED),
    "UID SEARCH": ("do_search", SELECTED), "UID COPY": ("do_copy", SELECTED),
    "UID MOVE": ("do_move", SELECTED), "UID EXPUNGE": ("do_expunge", SELECTED),
}
#: no pending updates after these (they change or end the selection themselves)
NO_UPDATES = frozenset({"SELECT", "EXAMINE", "CLOSE", "UNSELECT", "LOGOUT", "IDLE",
                        "STARTTLS", "COMPRESS"})
#: no EXPUNGE/VANISHED while these run (sequence numbers must stay put)
NO_EXPUNGE = frozenset({"FETCH", "STORE", "SEARCH"})
ENABLEABLE = {"CONDSTORE": "CONDSTORE", "QRESYNC": "QRESYNC", "UTF8=ACCEPT": "UTF8=ACCEPT",
              "IMAP4REV2": "IMAP4REV2"}
STATE_ERRORS = {NOT_AUTH: "Not logged in", AUTH: "No mailbox selected",
                SELECTED: "Command not allowed in this state"}

Reply = Iterable[bytes] | defer.Deferred


def tagged(tag: bytes, status: str, text: str, code: str | bytes | None = None) -> bytes:
    return wire.tagged(tag, status, text, code)


class IMAPSession(MailboxCommands, MessageCommands):
    """One connection (see the module docstring)."""

    def __init__(self, config: IMAPConfig, client: Any, login: Any, reactor: Any,
                 run: Callable[..., defer.Deferred], *, tls: bool = False,
                 tls_details: Callable[[], Any] | None = None) -> None:
        self.config = config
        self.client = client                 # policy.base.Client
        self.login_service = login           # auth.maillogin.MailLogin
        self.reactor = reactor
        self.run = run                       # run(fn, *args) -> Deferred (a thread)
        self.tls = tls
        self.tls_details = tls_details
        self.state = NOT_AUTH
        self.user: Any = None                # the MailUser avatar
        self.folders: mfolders.MailFolders | None = None
        self.selected: Any = None            # messages' SelectedMailbox
        self.enabled: set[str] = set()
        self.action: str | None = None
        self.raw_mode = False
        self.idling: bytes | None = None     # the IDLE command's tag
        self.compressed = False
        self._login_conn: Any = None
        self._login_session: Any = None
        self._auth: tuple[bytes, sasl.SASLExchange] | None = None
        self._bad = 0

    # -- what the messages mixin uses ---------------------------------------------------------

    @property
    def rev2(self) -> bool:
        return "IMAP4REV2" in self.enabled

    @property
    def utf8(self) -> bool:
        return "UTF8=ACCEPT" in self.enabled

    @property
    def timeout(self) -> int:
        return self.config.timeout if self.state & AUTHED else self.config.preauth_timeout

    def quota_check(self, size: int) -> str | None:
        """Over-quota text for a message of ``size`` bytes, or None (blocking: a thread)."""
        from indimail_tw.maildir import quota as mquota

        limit = self._quota_limit()
        if limit is None or self.folders is None:
            return None
        result = mquota.check_quota(self.folders.maildir, limit, size)
        return None if result.allowed else "Quota exceeded"

    def _quota_limit(self) -> Any:
        from indimail_tw.maildir import quota as mquota

        row = getattr(self.user, "user", None)
        shell = getattr(row, "shell", None)
        if not shell:
            return None
        try:
            limit = mquota.parse_quota(shell)
        except ValueError:
            return None
        return None if limit is None or limit.unlimited else limit

    # -- connection ---------------------------------------------------------------------------

    def capabilities(self) -> str:
        cfg = self.config
        caps = ["IMAP4rev1", "IMAP4rev2"]
        if self.state == NOT_AUTH:
            caps += ["SASL-IR", "LITERAL+", "ID", "ENABLE", "IDLE"]
            if cfg.tls_available and not self.tls:
                caps.append("STARTTLS")
            if not self._plaintext_ok():
                caps.append("LOGINDISABLED")
            caps += [f"AUTH={m}" for m in self._mechanisms()]
            return " ".join(caps)
        caps += ["LITERAL+", "ID", "ENABLE", "IDLE", "SASL-IR", "NAMESPACE", "UIDPLUS",
                 "MOVE", "UNSELECT", "CHILDREN", "SPECIAL-USE", "CREATE-SPECIAL-USE",
                 "LIST-EXTENDED", "LIST-STATUS", "STATUS=SIZE", "CONDSTORE", "QRESYNC",
                 "ESEARCH", "SEARCHRES", "BINARY", "QUOTA", "QUOTA=RES-STORAGE",
                 "QUOTA=RES-MESSAGE", "UTF8=ACCEPT", f"APPENDLIMIT={cfg.append_limit}"]
        if not self.compressed:
            caps.append("COMPRESS=DEFLATE")
        return " ".join(caps)

    def _plaintext_ok(self) -> bool:
        return self.tls or not self.config.secure_auth

    def _mechanisms(self) -> list[str]:
        plain_ok = self._plaintext_ok()
        return [m for m in self.config.mechanisms
                if m in sasl.MECHANISMS and (plain_ok or not sasl.MECHANISMS[m].plaintext)]

    def greeting(self) -> list[bytes]:
        if self.config.shutdown is not None:
            self.action = "close"
            return [wire.untagged_status("BYE", self.config.shutdown or "Server shutting down")]
        return [wire.untagged_status("OK", "Server ready.", "CAPABILITY " + self.capabilities())]

    def take_action(self) -> str | None:
        action, self.action = self.action, None
        return action

    def tls_started(self) -> None:
        self.tls = True

    def compression_started(self) -> None:
        self.compressed = True

    def timed_out(self) -> list[bytes]:
        self.action = "close"
        return [wire.untagged_status("BYE", "Autologout; idle for too long")]

    def shutting_down(self) -> list[bytes]:
        self.action = "close"
        return [wire.untagged_status("BYE", "Server shutting down")]

    def connection_lost(self) -> None:
        self._end_selection()
        self.state = LOGOUT
        self._auth = None
        self.idling = None
        session, self._login_session = self._login_session, None
        if session is not None:
            try:
                session.logout()
            except Exception:  # noqa: BLE001
                log.failure("logout hook failed")

    def internal_error(self, tag: bytes | None, failure: Failure) -> list[bytes]:
        log.failure("IMAP command failed", failure)
        self.raw_mode = False
        self._auth = None
        if tag is None:
            return [wire.untagged_status("NO", "Internal error, try again later",
                                         "SERVERBUG")]
        return [tagged(tag, "NO", "Internal error, try again later", "SERVERBUG")]

    # -- events -------------------------------------------------------------------------------

    def handle(self, event: Any) -> Reply:
        if isinstance(event, Command):
            return self._command(event)
        if isinstance(event, RawLine):
            return self._raw_line(event.data)
        if isinstance(event, ParseError):
            return self._parse_error(event)
        if isinstance(event, ContinuationNeeded):
            return [b"+ " + event.text.encode("utf-8", "replace") + CRLF]
        raise TypeError(f"unexpected event {event!r}")

    def _parse_error(self, event: ParseError) -> list[bytes]:
        text = event.text or "Invalid command"
        if event.tag is None and (self._auth is not None or self.idling is not None):
            # a bad line inside AUTHENTICATE or IDLE ends that command
            tag = self._auth[0] if self._auth is not None else self.idling
            self._auth, self.idling, self.raw_mode = None, None, False
            event = ParseError(tag, text, event.fatal)
        line = (tagged(event.tag, "BAD", text) if event.tag is not None
                else wire.untagged_status("BAD", text))
        if event.fatal:
            self.action = "close"
            return [line, wire.untagged_status("BYE", text)]
        return self._count_bad([line])

    def _count_bad(self, lines: list[bytes]) -> list[bytes]:
        self._bad += 1
        if self._bad >= self.config.max_bad_commands:
            self.action = "close"
            return [*lines, wire.untagged_status("BYE", "Too many invalid commands")]
        return lines

    def _bad_reply(self, tag: bytes, text: str) -> list[bytes]:
        return self._count_bad([tagged(tag, "BAD", text)])

    def _command(self, cmd: Command) -> Reply:
        tag, name = cmd.tag, cmd.name.upper()
        key = name
        if name == "UID":
            sub = cmd.args[0].upper() if cmd.args and isinstance(cmd.args[0], Atom) else ""
            key = f"UID {sub}"
        spec = COMMANDS.get(key)
        if spec is None:
            return self._bad_reply(tag, "Unknown command")
        method, states = spec
        if not self.state & states:
            if states == NOT_AUTH and self.state & AUTHED:
                return self._bad_reply(tag, "Already logged in")
            return self._bad_reply(tag, STATE_ERRORS.get(self.state, "Not allowed now"))
        handler = getattr(self, method, None)
        if handler is None:
            return self._bad_reply(tag, "Command not implemented")
        try:
            args = grammar.parse(cmd, utf8=self.utf8)
        except grammar.BadCharset as e:
            return [tagged(tag, "NO", e.text,
                           "BADCHARSET (" + " ".join(e.charsets) + ")")]
        except grammar.BadArgs as e:
            return self._bad_reply(tag, getattr(e, "text", None) or str(e) or "Invalid arguments")
        self._bad = 0
        result = handler(tag, args)
        base = name if name != "UID" else key
        if base in NO_UPDATES or self.selected is None and not isinstance(result, defer.Deferred):
            return result
        expunge_ok = base not in NO_EXPUNGE
        if isinstance(result, defer.Deferred):
            return result.addCallback(self._with_updates, expunge_ok)
        return self._with_updates(result, expunge_ok)

    def _with_updates(self, lines: Iterable[bytes], expunge_ok: bool) -> Iterator[bytes]:
        """``lines`` with the selected mailbox's pending updates before the last one.

        A Deferred among the lines (a streamed FETCH waiting for its next reads)
        is passed on at once: the lines after it exist only once it has fired."""
        previous, have = None, False
        for line in lines:
            if isinstance(line, defer.Deferred):
                if have:
                    yield previous
                    have = False
                yield line
                continue
            if have:
                yield previous
            previous, have = line, True
        if self.selected is not None and self.state == SELECTED:
            polled = self._poll(self.selected, expunge_ok)
            if isinstance(polled, defer.Deferred):
                box: list[Any] = []
                polled.addBoth(box.append)
                if not box:
                    yield polled               # the reply waits for the scan's thread
                polled = box[0] if isinstance(box[0], list) else []
            yield from polled
        if have:
            yield previous

    def _poll(self, selected: Any, expunge_ok: bool,
              wanted: Any = None) -> list[bytes] | defer.Deferred:
        """The selected mailbox's updates.  When the directories changed (a
        delivery, another client) their scan, which numbers new files with an
        fsync, runs in a thread, never here: then the Deferred of the updates,
        polled after the scan only if ``wanted()`` still says so (else the
        updates stay for the next poll)."""
        try:
            return selected.poll(expunge_ok, scan=False)
        except ScanNeeded:
            pass

        def again(_: Any) -> list[bytes]:
            if self.selected is not selected or (wanted is not None and not wanted()):
                return []
            try:
                return selected.poll(expunge_ok, scan=False)
            except ScanNeeded:          # changed again meanwhile: the next poll scans
                return []

        d = self.run(selected.scan)
        d.addErrback(lambda f: log.failure("scanning {folder}", f, folder=selected.name))
        return d.addCallback(again)

    def _raw_line(self, data: bytes) -> Reply:
        if self._auth is not None:
            tag, exchange = self._auth
            try:
                step = exchange.respond(data.strip(b" "))
            except sasl.SASLError as e:
                return self._sasl_error(tag, e)
            return self._sasl_step(tag, step)
        if self.idling is not None:
            tag, self.idling = self.idling, None
            self.raw_mode = False
            if data.strip().upper() != b"DONE":
                return self._bad_reply(tag, "Expected DONE")
            self._bad = 0
            return self._with_updates([tagged(tag, "OK", "IDLE terminated")], True)
        self.raw_mode = False
        return [wire.untagged_status("BAD", "Unexpected line")]

    # -- any state ------------------------------------------------------------------------------

    def do_capability(self, tag: bytes, args: Any) -> list[bytes]:
        return [wire.untagged("CAPABILITY " + self.capabilities()),
                tagged(tag, "OK", "CAPABILITY completed")]

    def do_noop(self, tag: bytes, args: Any) -> list[bytes]:
        return [tagged(tag, "OK", "NOOP completed")]

    def do_logout(self, tag: bytes, args: Any) -> list[bytes]:
        self._end_selection()
        self.state = LOGOUT
        self.action = "close"
        return [wire.untagged_status("BYE", "Logging out"), tagged(tag, "OK", "LOGOUT completed")]

    def do_id(self, tag: bytes, args: Any) -> list[bytes]:
        # RFC 2971: the server may answer NIL; we say nothing about the software
        return [wire.untagged("ID NIL"), tagged(tag, "OK", "ID completed")]

    # -- not authenticated ---------------------------------------------------------------------

    def do_starttls(self, tag: bytes, args: Any) -> list[bytes]:
        if self.tls:
            return self._bad_reply(tag, "TLS is already active")
        if not self.config.tls_available:
            return self._bad_reply(tag, "TLS is not available")
        self.action = "starttls"
        return [tagged(tag, "OK", "Begin TLS negotiation now")]

    def _connection_login(self) -> Any:
        if self._login_conn is None:
            self._login_conn = self.login_service.connection(
                self.client.remote_ip, self.client.local_ip)
        return self._login_conn

    def do_login(self, tag: bytes, args: Any) -> Reply:
        if not self._plaintext_ok():
            return [tagged(tag, "NO", "Plaintext login is not allowed without TLS; "
                                      "use STARTTLS first", "PRIVACYREQUIRED")]
        conn = self._connection_login()
        credentials = conn.credentials(args.username, args.password)
        return self._login(tag, credentials)

    def do_authenticate(self, tag: bytes, args: Any) -> Reply:
        name = args.mechanism.upper()
        if name not in self.config.mechanisms or name not in sasl.MECHANISMS:
            return [tagged(tag, "NO", "Unsupported authentication mechanism")]
        if name not in self._mechanisms():
            return [tagged(tag, "NO", "Plaintext authentication is not allowed without TLS",
                           "PRIVACYREQUIRED")]
        conn = self._connection_login()
        exchange = sasl.exchange(name, conn.sasl_context(self.config.hostname))
        try:
            step = exchange.start(args.initial)
        except sasl.SASLError as e:
            return self._sasl_error(tag, e)
        self._auth = (tag, exchange)
        return self._sasl_step(tag, step)

    def _sasl_step(self, tag: bytes, step: sasl.Step) -> Reply:
        if isinstance(step, sasl.Challenge):
            self.raw_mode = True
            return [b"+ " + sasl.SASLExchange.encoded(step) + CRLF]
        self._auth = None
        self.raw_mode = False
        return self._login(tag, step.credentials)

    def _sasl_error(self, tag: bytes, error: sasl.SASLError) -> list[bytes]:
        self._auth = None
        self.raw_mode = False
        if isinstance(error, sasl.SASLCancelled):
            return [tagged(tag, "BAD", "Authentication cancelled")]
        if isinstance(error, sasl.SASLBadEncoding):
            return self._bad_reply(tag, "Invalid base64 data")
        return [tagged(tag, "NO", "Authentication failed.", "AUTHENTICATIONFAILED")]

    def _login(self, tag: bytes, credentials: Any) -> defer.Deferred:
        d = self._connection_login().login(credentials)
        d.addCallback(self._logged_in, tag)
        d.addErrback(self._login_failed, tag)
        return d

    def _login_failed(self, failure: Failure, tag: bytes) -> list[bytes]:
        from indimail_tw.auth.maillogin import LoginFailed

        error = failure.check(LoginFailed) and failure.value
        if not error:
            log.failure("IMAP login: unexpected error", failure)
            return [tagged(tag, "NO", "Temporary authentication failure.", "UNAVAILABLE")]
        lines = [error.imap(tag)]
        if error.close:
            self.action = "close"
            lines.append(wire.untagged_status("BYE", "Too many authentication failures"))
        return lines

    def _logged_in(self, session: Any, tag: bytes) -> Reply:
        if self.state != NOT_AUTH:          # the client went away meanwhile
            session.logout()
            return []
        self._login_session = session
        self._login_conn = None
        self.user = session.avatar
        if session.end_session:
            self.action = "close"
            return [wire.untagged_status("BYE", session.message or "Login refused"),
                    tagged(tag, "NO", "Login refused", "UNAVAILABLE")]
        self.folders = mfolders.MailFolders(session.maildir, self.config.append_limit)
        self.state = AUTH
        lines = []
        if session.message:
            lines.append(wire.untagged_status("OK", session.message, "ALERT"))

        def done(_result: Any) -> list[bytes]:
            return [*lines, tagged(tag, "OK", "Logged in",
                                   "CAPABILITY " + self.capabilities())]

        def special_failed(failure: Failure) -> list[bytes]:
            log.failure("creating the special-use folders of {user}", failure,
                        user=getattr(self.user, "address", "?"))
            return done(None)

        return self.run(self.folders.ensure_special_use).addCallbacks(done, special_failed)

    # -- authenticated -------------------------------------------------------------------------

    def do_enable(self, tag: bytes, args: Any) -> list[bytes]:
        before = set(self.enabled)
        newly: list[str] = []
        for capability in args.capabilities:
            name = ENABLEABLE.get(capability.upper())
            if name is None or name in before:
                continue
            self.enabled.add(name)
            if name == "QRESYNC":
                self.enabled.add("CONDSTORE")     # implied (RFC 7162 3.2.3), not echoed
            shown = "IMAP4rev2" if name == "IMAP4REV2" else name
            if shown not in newly:
                newly.append(shown)
        lines = [wire.untagged(" ".join(["ENABLED", *newly]))]
        return [*lines, tagged(tag, "OK", "ENABLE completed")]

    def do_select(self, tag: bytes, args: Any) -> Reply:
        return self._select(tag, args, readonly=False)

    def do_examine(self, tag: bytes, args: Any) -> Reply:
        return self._select(tag, args, readonly=True)

    def _end_selection(self) -> bool:
        selected, self.selected = self.selected, None
        if self.state == SELECTED:
            self.state = AUTH
        if selected is None:
            return False
        try:
            selected.close_silently()
        except Exception:  # noqa: BLE001
            log.failure("closing the selected mailbox")
        return True

    def _select(self, tag: bytes, args: Any, readonly: bool) -> Reply:
        from indimail_tw.imap4.selected import SelectedMailbox

        command = "EXAMINE" if readonly else "SELECT"
        prefix = []
        if self._end_selection():
            prefix.append(wire.untagged_status("OK", "Previous mailbox closed.", "CLOSED"))
        qresync = getattr(args, "qresync", None)
        if qresync is not None and "QRESYNC" not in self.enabled:
            return [*prefix, *self._bad_reply(tag, "QRESYNC is not enabled")]
        if getattr(args, "condstore", False):
            self.enabled.add("CONDSTORE")
        name = args.mailbox
        folders = self.folders

        def open_mailbox() -> tuple[Any, list[bytes]]:
            canonical = mfolders.canonical(name)
            index = folders.open_index(canonical)
            try:
                selected = SelectedMailbox(index, canonical, readonly, self)
                lines = list(selected.open_responses(qresync))
            except BaseException:
                index.close()
                raise
            return selected, lines

        def opened(result: tuple[Any, list[bytes]]) -> list[bytes]:
            selected, lines = result
            if self.state == LOGOUT or self.selected is not None:
                selected.close_silently()
                return [*prefix, tagged(tag, "NO", "Mailbox closed meanwhile")]
            self.selected = selected
            self.state = SELECTED
            code = "READ-ONLY" if readonly else "READ-WRITE"
            return [*prefix, *lines, tagged(tag, "OK", f"{command} completed", code)]

        def failed(failure: Failure) -> list[bytes]:
            if failure.check(mfolders.NoSuchFolder, mfolders.BadFolderName):
                return [*prefix, tagged(tag, "NO", "Mailbox doesn't exist", "NONEXISTENT")]
            return [*prefix, *self.internal_error(tag, failure)]

        return self.run(open_mailbox).addCallbacks(opened, failed)

    def do_idle(self, tag: bytes, args: Any) -> list[bytes]:
        self.idling = tag
        self.raw_mode = True
        lines = [b"+ idling" + CRLF]
        if self.selected is not None:
            lines += self.selected.poll(True)
        return lines

    def idle_poll(self) -> list[bytes] | defer.Deferred:
        """Called by the protocol while idling: new untagged updates, if any (or the
        Deferred of them, while the directories' scan runs in a thread)."""
        if self.idling is None or self.selected is None or not self.selected.changed():
            return []
        # IDLE ended while the scan ran: DONE's own poll reports the updates
        polled = self._poll(self.selected, True, wanted=lambda: self.idling is not None)
        return polled if isinstance(polled, defer.Deferred) else list(polled)

    def do_compress(self, tag: bytes, args: Any) -> list[bytes]:
        if self.compressed:
            return [tagged(tag, "NO", "Compression is already active", "COMPRESSIONACTIVE")]
        if args.mechanism.upper() != "DEFLATE":
            return self._bad_reply(tag, "Unsupported compression mechanism")
        self.action = "compress"
        return [tagged(tag, "OK", "DEFLATE active")]
