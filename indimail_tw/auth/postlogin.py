"""IndiMail's post-login tasks for POP3 and IMAP (reference 7.2, ``Login_Tasks.c``).

After every successful POP3/IMAP login, in IndiMail's order:

1. Create the home and ``Maildir/{cur,new,tmp}`` (mode 0700) when missing
   (users added without a home).  Reactivate an inactive user: move the row
   from ``indibak`` back to ``indimail`` and write lastauth ``ACTI``.
2. Stop here with ``NOLASTAUTH`` or ``NOLASTAUTHLOGGING`` (as IndiMail does:
   POSTAUTH, MIGRATEUSER and the BOUNCE_MAIL step are skipped too).
3. POP/IMAP-before-SMTP: a ``relay`` row (user@domain, client IP, Unix time)
   unless ``NORELAY`` is set or the account has NO_RELAY.  SMTP honours it
   with ``CHECKRELAY`` for ``RELAY_CLEAR_MINUTES``.  (IndiMail also needs
   ``OPEN_SMTP`` for this and regenerates tcp.smtp.cdb; we only write the row.)
4. ``MIN_LOGIN_INTERVAL`` seconds: a login sooner than that after the last
   pop3/imap/webmail login is refused (:class:`LoginTooSoon`); the relay row
   of step 3 stays, as in IndiMail.
5. lastauth row (service ``pop3``/``imap``, client IP, usage from maildirsize).
6. ``POSTAUTH`` program (if executable): ``POSTAUTH user@domain home``.  Exit
   2 or 3: the mailbox is ``TMP_MAILDIR`` (or the home); 3 also gives the
   ``MSG_ONERROR`` text and, with ``EXIT_ONERROR``, ends the session.  Any
   non-zero exit ends the tasks here (IndiMail returns its status).
7. ``MIGRATEUSER`` program (default ``/usr/local/bin/migrateuser``) once: it
   runs while the flag file ``MIGRATEFLAG`` (default ``Qmail.txt``, in the
   home directory as IndiMail's code has it) is missing; after exit 0 the flag
   file is created if the program did not.
8. BOUNCE_MAIL is cleared (and the userquota row zeroed, as vset_lastdeliver
   does) when the account is under its quota again.  An account without a
   quota keeps a BOUNCE_MAIL set by hand, as local delivery does.

Programs get the server's environment plus ``USER``, ``HOME``, ``MAILDIR``,
``AUTHSERVICE``, ``PROTOCOL``, ``TCPREMOTEIP``, ``LAST_PASSWORD_CHANGE`` and
IndiMail's ``PWSTRUCT`` (``email:passwd:uid:gid:gecos:dir:shell:inactive``),
and are killed after ``LOGIN_TASK_TIMEOUT`` seconds (default 60).

Failures: a database that cannot be reached is a
:class:`~indimail_tw.auth.credentials.TemporaryLoginFailure`; any other error
in a task is logged and the login goes on.  Disk work runs in a thread, the
database work in the engine's pool; nothing here blocks the reactor.
Not done: bulletins (BULK_MAILDIR, welcome/activation mails), QUOTAWARN
notices, OVERQUOTA_CMD, ``.domain_rename``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from twisted.internet import defer, error as ierror, protocol, threads
from twisted.logger import Logger
from twisted.python.failure import Failure

from indimail_tw import fsutil
from indimail_tw.auth.credentials import TemporaryLoginFailure
from indimail_tw.auth.flags import Flags
from indimail_tw.errors import StoreError, StoreUnavailable
from indimail_tw.maildir import quota as mq
from indimail_tw.storage.engine import Txn
from indimail_tw.storage.store import REPOS

log = Logger()

#: lastauth service keys (char(10) column) of the login services.
LASTAUTH_SERVICES = {"pop3": "pop3", "imap": "imap", "webmail": "webm"}
#: the services whose last login MIN_LOGIN_INTERVAL looks at (vget_lastauth AUTH_TIME)
LOGIN_KEYS = ("pop3", "imap", "webm")
DEFAULT_MIGRATEUSER = "/usr/local/bin/migrateuser"
DEFAULT_MIGRATEFLAG = "Qmail.txt"
DEFAULT_TIMEOUT = 60.0
MESSAGE_LIMIT = 512          # MSG_ONERROR text shown to the client, one line
_INT_MAX = 2**31 - 1         # lastauth.quota is an int column


class LoginTooSoon(Exception):
    """MIN_LOGIN_INTERVAL: the last login was too recent.  The reply must not say why."""


@dataclass(frozen=True)
class LoginResult:
    """What the protocol does after the tasks."""

    maildir: str                  # the mailbox to open: the Maildir, TMP_MAILDIR or the home
    message: str | None = None    # MSG_ONERROR text (POSTAUTH exit 3), one line
    end_session: bool = False     # EXIT_ONERROR: show ``message``, then end the session
    created: bool = False         # the Maildir was created now
    reactivated: bool = False     # the user was moved back from indibak


@dataclass(frozen=True)
class TaskOptions:
    """The environment knobs of the tasks (see the module docstring)."""

    nolastauth: bool = False
    norelay: bool = False
    min_login_interval: int = 0
    postauth: str = ""
    migrateuser: str = DEFAULT_MIGRATEUSER
    migrateflag: str = DEFAULT_MIGRATEFLAG
    tmp_maildir: str = ""
    msg_onerror: str = ""
    exit_onerror: bool = False
    timeout: float = DEFAULT_TIMEOUT

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> TaskOptions:
        def number(name: str, default: float) -> float:
            try:
                return max(0.0, float(environ.get(name) or default))
            except ValueError:
                return default

        return cls(
            nolastauth=bool(environ.get("NOLASTAUTH") or environ.get("NOLASTAUTHLOGGING")),
            norelay=bool(environ.get("NORELAY")),
            min_login_interval=int(number("MIN_LOGIN_INTERVAL", 0)),
            postauth=environ.get("POSTAUTH", ""),
            migrateuser=environ.get("MIGRATEUSER") or DEFAULT_MIGRATEUSER,
            migrateflag=environ.get("MIGRATEFLAG") or DEFAULT_MIGRATEFLAG,
            tmp_maildir=environ.get("TMP_MAILDIR", ""),
            msg_onerror=environ.get("MSG_ONERROR", ""),
            exit_onerror=bool(environ.get("EXIT_ONERROR")),
            timeout=number("LOGIN_TASK_TIMEOUT", DEFAULT_TIMEOUT) or DEFAULT_TIMEOUT,
        )


# -- the blocking parts (threads and the database pool) ---------------------------

@dataclass(frozen=True)
class _DiskState:
    created: bool = False
    usage: int = 0
    under_quota: bool = False
    postauth: bool = False
    migrate: bool = False


def _executable(path: str) -> bool:
    return bool(path) and os.path.isfile(path) and os.access(path, os.X_OK)


def _disk_tasks(user: Any, opts: TaskOptions, check_bounce: bool) -> _DiskState:
    """Step 1's Maildir, the usage for lastauth, the quota check, which programs run."""
    created = False
    maildir = user.maildir
    if user.dir:
        try:
            if not all(os.path.isdir(os.path.join(maildir, sub)) for sub in ("cur", "new", "tmp")):
                created = bool(fsutil.make_maildir(maildir))
                if created:
                    log.info("created {maildir} for {user}", maildir=maildir, user=user.address)
        except OSError as e:
            log.error("cannot create {maildir} for {user}: {e}", maildir=maildir,
                      user=user.address, e=e)
    else:
        log.warn("{user} has no home directory", user=user.address)
    if opts.nolastauth:
        return _DiskState(created)
    usage = 0
    under = False
    try:
        found = mq.read_usage(maildir) if user.dir else None
        usage = min(_INT_MAX, max(0, found.bytes)) if found else 0
        if check_bounce and user.dir:
            quota = _quota_of(user)
            if quota is not None and not quota.unlimited:
                under = not mq.check_quota(maildir, quota, 0, 0).over_quota
    except OSError as e:
        log.warn("quota of {user} unreadable: {e}", user=user.address, e=e)
    migrate = (user.dir and _executable(opts.migrateuser)
               and not os.path.exists(os.path.join(user.dir, opts.migrateflag)))
    return _DiskState(created, usage, under, _executable(opts.postauth), bool(migrate))


def _quota_of(user: Any) -> mq.Quota | None:
    try:
        return mq.parse_quota(user.shell or "NOQUOTA")
    except ValueError:
        return None


def _write_flag(path: str) -> None:
    if not os.path.exists(path):
        fsutil.atomic_write(path, b"migrated\n", 0o644)


def _read_message(value: str) -> str:
    """MSG_ONERROR names a file whose text is shown (IndiMail); else the value is the text."""
    text = value
    if value.startswith("/"):
        try:
            with open(value, "rb") as f:
                text = f.read(4 * MESSAGE_LIMIT).decode("utf-8", "replace")
        except OSError:
            text = ""
    line = " ".join("".join(ch if ch.isprintable() else " " for ch in text).split())
    return line[:MESSAGE_LIMIT]


@dataclass(frozen=True)
class _TxnOutcome:
    reactivated: bool = False
    too_soon: bool = False
    password_changed: int = 0


def _unix(text: str) -> int:
    try:
        moment = datetime.strptime(str(text)[:19], "%Y-%m-%d %H:%M:%S")
    except ValueError:
        return 0
    return int(moment.replace(tzinfo=UTC).timestamp())


def _login_txn(txn: Txn, name: str, domain: str, gecos: str, service: str, remote_ip: str,
               reactivate: bool, record: bool, relay: bool, now: float, min_interval: int,
               read_times: bool, usage: int) -> _TxnOutcome:
    """Steps 1 (reactivation), 3, 4 and 5 in one transaction."""
    ip = remote_ip or "unknown"
    reactivated = False
    if reactivate and REPOS.users.set_active(txn, name, domain, True):
        REPOS.lastauth.record(txn, name, domain, "ACTI", ip, 0, gecos)
        reactivated = True
    if not record:
        return _TxnOutcome(reactivated)
    if relay and remote_ip:
        REPOS.relay.add(txn, f"{name}@{domain}", remote_ip, int(now))
    changed = 0
    if read_times:
        times = REPOS.lastauth.get(txn, name, domain)
        last = max((_unix(times[key][0]) for key in LOGIN_KEYS if key in times), default=0)
        if min_interval and last and now - last < min_interval:
            return _TxnOutcome(reactivated, too_soon=True)
        changed = _unix(times["pass"][0]) if "pass" in times else 0
    REPOS.lastauth.record(txn, name, domain, service, ip, usage, gecos)
    return _TxnOutcome(reactivated, False, changed)


def _clear_bounce_txn(txn: Txn, name: str, domain: str) -> int | None:
    """vset_lastdeliver(user, domain, 0), clearing only BOUNCE_MAIL; the new pw_gid."""
    user = REPOS.users.get(txn, name, domain)
    if user is None:
        return None
    gid = user.gid & ~Flags.BOUNCE_MAIL
    if gid != user.gid:
        REPOS.users.set_flags(txn, name, domain, gid)
    REPOS.userquota.set(txn, name, domain, 0)
    return gid


# -- programs -----------------------------------------------------------------

class _ProgramProtocol(protocol.ProcessProtocol):
    def __init__(self, done: defer.Deferred) -> None:
        self.done = done

    def connectionMade(self) -> None:  # noqa: N802 - Twisted's name
        self.transport.closeStdin()

    def childDataReceived(self, fd: int, data: bytes) -> None:  # noqa: N802
        pass    # stdout is not for us; reading it keeps the program from blocking

    def processEnded(self, reason: Failure) -> None:  # noqa: N802
        if reason.check(ierror.ProcessDone):
            code: int | None = 0
        else:
            code = getattr(reason.value, "exitCode", None)   # None: killed by a signal
        if not self.done.called:
            self.done.callback(code)


# -- the tasks ----------------------------------------------------------------

class LoginTasks:
    """Runs the post-login tasks for one server (see the module docstring)."""

    def __init__(self, context: Any, reactor: Any = None,
                 environ: Mapping[str, str] | None = None) -> None:
        self.context = context
        self.store = context.store
        self.environ: Mapping[str, str] = dict(context.environ if environ is None else environ)
        self.options = TaskOptions.from_environ(self.environ)
        self._reactor = reactor or getattr(context, "reactor", None)

    @property
    def reactor(self) -> Any:
        if self._reactor is None:
            from twisted.internet import reactor
            self._reactor = reactor
        return self._reactor

    def run(self, avatar: Any, service: str, remote_ip: str) -> defer.Deferred:
        """Deferred[LoginResult]; fails with LoginTooSoon or TemporaryLoginFailure only."""
        if service not in LASTAUTH_SERVICES:
            raise ValueError(f"unknown login service {service!r}")
        return defer.ensureDeferred(self._run(avatar, service, remote_ip or ""))

    async def _run(self, avatar: Any, service: str, remote_ip: str) -> LoginResult:
        opts = self.options
        user = avatar.user
        check_bounce = bool(user.gid & Flags.BOUNCE_MAIL)
        try:
            disk = await self._thread(_disk_tasks, user, opts, check_bounce)
        except Exception:  # noqa: BLE001 - a task's failure never locks the user out
            log.failure("login tasks for {user}: disk step failed", user=user.address)
            disk = _DiskState()
        outcome = _TxnOutcome()
        if avatar.inactive or not opts.nolastauth:
            relay = not opts.norelay and bool(getattr(avatar, "relay_allowed", True))
            outcome = await self._database(
                _login_txn, user.name, user.domain, user.gecos, LASTAUTH_SERVICES[service],
                remote_ip, avatar.inactive, not opts.nolastauth, relay,
                self.reactor.seconds(), opts.min_login_interval,
                bool(opts.min_login_interval or disk.postauth), disk.usage)
        if outcome.reactivated:
            log.info("{user} reactivated by {service} login", user=user.address, service=service)
            avatar.user = user = user.with_(active=True)
            avatar.inactive = False
        if outcome.too_soon:
            log.info("{service} login of {user} refused: MIN_LOGIN_INTERVAL", service=service,
                     user=user.address)
            raise LoginTooSoon()
        result = LoginResult(user.maildir, created=disk.created,
                             reactivated=outcome.reactivated)
        if opts.nolastauth:
            return result
        if disk.postauth:
            env = self._program_env(avatar, service, remote_ip, outcome)
            code = await self._program(opts.postauth, [user.address, user.dir], env)
            if code != 0:
                log.warn("POSTAUTH {prog} for {user} exited {code}", prog=opts.postauth,
                         user=user.address, code=code)
                return await self._postauth_result(result, code, user)
        if disk.migrate:
            env = self._program_env(avatar, service, remote_ip, outcome)
            code = await self._program(opts.migrateuser, [user.address, user.dir], env)
            if code == 0:
                try:
                    await self._thread(_write_flag, os.path.join(user.dir, opts.migrateflag))
                except OSError as e:
                    log.error("cannot write {flag} for {user}: {e}", flag=opts.migrateflag,
                              user=user.address, e=e)
            else:
                log.warn("MIGRATEUSER {prog} for {user} exited {code}", prog=opts.migrateuser,
                         user=user.address, code=code)
        if check_bounce and disk.under_quota:
            gid = await self._database(_clear_bounce_txn, user.name, user.domain, optional=True)
            if gid is not None:
                log.info("{user} is under quota again: BOUNCE_MAIL cleared", user=user.address)
                avatar.user = user.with_(gid=gid)
        return result

    async def _postauth_result(self, result: LoginResult, code: int | None,
                               user: Any) -> LoginResult:
        opts = self.options
        if code not in (2, 3):
            return result
        mailbox = opts.tmp_maildir or user.dir
        message = None
        if code == 3 and opts.msg_onerror:
            try:
                message = await self._thread(_read_message, opts.msg_onerror) or None
            except Exception:  # noqa: BLE001
                log.failure("reading MSG_ONERROR")
        return LoginResult(mailbox, message, code == 3 and opts.exit_onerror,
                           result.created, result.reactivated)

    def _program_env(self, avatar: Any, service: str, remote_ip: str,
                     outcome: _TxnOutcome) -> dict[str, str]:
        user = avatar.user
        inactive = int(outcome.reactivated or avatar.inactive)   # as at login (is_inactive)
        pwstruct = ":".join([user.address, user.passwd, str(user.uid), str(user.gid),
                             user.gecos, user.dir, user.shell, str(inactive)])
        env = {k: v for k, v in self.environ.items() if isinstance(v, str)}
        env.update(USER=user.address, HOME=user.dir, MAILDIR=user.maildir,
                   AUTHSERVICE=service, PROTOCOL=service.upper(), TCPREMOTEIP=remote_ip,
                   LAST_PASSWORD_CHANGE=str(outcome.password_changed), PWSTRUCT=pwstruct)
        return env

    # -- runners ---------------------------------------------------------------

    def _thread(self, fn: Any, *args: Any) -> defer.Deferred:
        pool = getattr(self.context, "io_pool", None)
        if pool is None or not getattr(pool, "started", False):
            pool = self.reactor.getThreadPool()
        return threads.deferToThreadPool(self.reactor, pool, fn, *args)

    async def _database(self, fn: Any, *args: Any, optional: bool = False) -> Any:
        """Run a transaction; unreachable -> TemporaryLoginFailure, other errors logged."""
        try:
            return await self.store.engine.runInteraction(fn, *args)
        except StoreUnavailable as e:
            log.error("login tasks: user store unavailable: {e}", e=e)
            raise TemporaryLoginFailure("user store unavailable") from e
        except StoreError as e:
            log.error("login tasks: database error: {e}", e=e)
        except Exception:  # noqa: BLE001
            log.failure("login tasks: unexpected database error")
        return None if optional else _TxnOutcome()

    async def _program(self, path: str, args: list[str], env: dict[str, str]) -> int | None:
        """The program's exit status; None if it could not run or was killed."""
        done: defer.Deferred = defer.Deferred()
        try:
            transport = self.reactor.spawnProcess(
                _ProgramProtocol(done), path, [path, *args], env=env,
                childFDs={0: "w", 1: "r", 2: 2})
        except OSError as e:
            log.error("cannot run {prog}: {e}", prog=path, e=e)
            return None
        timer = self.reactor.callLater(self.options.timeout, self._kill, transport, path)
        try:
            return await done
        finally:
            if timer.active():
                timer.cancel()

    @staticmethod
    def _kill(transport: Any, path: str) -> None:
        log.error("{prog} took too long; killed", prog=path)
        with contextlib.suppress(ierror.ProcessExitedAlready):
            transport.signalProcess("KILL")
