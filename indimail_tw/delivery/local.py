"""Local delivery with IndiMail's vdelivermail semantics (reference sections 4.1, 4.2, 4.4).

For ``user@domain``, in order:

1. zero-size message -> discarded; sender in ``blackholedsender`` -> discarded;
   our ``Delivered-To: <domain>-<user>@<domain>`` line already there more
   than ``maxdeliveredto`` times -> permanent (#5.4.6);
2. the domain's ``.qmail-<ext>`` / ``.qmail-<prefix>-default`` (list managers),
   processed as qmail-local would, before anything else;
3. the user (alias domains resolve to their real domain; database trouble ->
   temporary; unknown domain -> permanent):
   active (or ``ALLOW_INACTIVE``): BOUNCE_MAIL lock, then valias lines or
   ``pw_dir/.qmail`` instead of the Maildir, group accounts never stored,
   else the Maildir (``MAILDIRFOLDER``) under the Maildir++ quota;
   inactive: the catch-all, as for unknown users;
4. unknown user: valias lines of the address, else the domain's catch-all
   (``delete``, ``bounce-no-mailbox``, an address, a Maildir, a route).

Blocking work runs in the reactor's thread pool; programs run through
``reactor.spawnProcess``; forwards are new messages in the queue with the
same envelope sender.  The usual case costs one trip to a thread: one job
reads the message header, the domain's files, the user and alias rows (on the
thread's own database connection) and the user's ``.qmail``, and when all that
says "the user's Maildir", delivers there too (:meth:`LocalDeliveryAgent._look`).
Everything else continues on the reactor with what that job found.  Lookup
jobs requested while one runs go together into the next trip to the thread
(:class:`~indimail_tw.queue.batch.CallBatcher`), and the Maildir deliveries of
one trip share their directory fsyncs (:func:`~indimail_tw.maildir.deliver.shared_syncs`):
under load a commit batch of the queue becomes one delivery batch.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

from twisted.internet import defer, threads
from twisted.logger import Logger
from zope.interface import implementer

from indimail_tw.auth.flags import Flags
from indimail_tw.delivery import dotqmail as dq
from indimail_tw.delivery.catchall import CatchAll
from indimail_tw.delivery.domainfiles import DomainFiles, HomeQmail
from indimail_tw.delivery.mailbox import (
    AUTO, MailboxOutcome, deliver_to_maildir, locked_account,
)
from indimail_tw.delivery.mbox import deliver_mbox
from indimail_tw.delivery.message import (
    HeaderScan, PrefixedReader, dtline, forward_loops, is_looping, rpline, ufline,
)
from indimail_tw.delivery.program import (
    ProgramOutcome, message_stdin, qmail_environment, run_program,
)
from indimail_tw.delivery.result import DeliveryResult
from indimail_tw.delivery.steps import (
    Job, LocalOptions, Precheck, clear_bounce_mail_txn, header_text, mark_over_quota_txn,
    precheck, qmail_address, split_address, user_quota,
)
from indimail_tw.errors import StoreError
from indimail_tw.interfaces import IDeliveryAgent
from indimail_tw.maildir.deliver import shared_syncs
from indimail_tw.queue.batch import CallBatcher, ThreadRunner
from indimail_tw.queue.envelope import Envelope, Recipient
from indimail_tw.storage.users import User

log = Logger()
GROUP_PREFIX = "MailGroup "
_NO_SCAN = HeaderScan(b"", ())     # until the lookup job has read the header

__all__ = ["LocalDeliveryAgent", "LocalOptions", "build_local_agent", "split_address"]


@dataclass
class _Facts:
    """What the lookup job found about one recipient, in the order of the checks.

    The job stops at the first fact that needs the reactor (or ends the
    delivery); fields after it stay None.  ``delivered`` is set only when
    every check said "deliver to the user's Maildir" and it was done.
    """

    pre: Precheck
    info: _DomainInfo | None = None         # the domain as addressed
    real_info: _DomainInfo | None = None    # the real domain (alias domains resolved)
    user: User | None = None
    real: str = ""
    lookup_error: StoreError | None = None  # the user lookup failed
    lines: list[str] | None = None          # valias lines (of the user or the address)
    lines_error: StoreError | None = None
    qmail: dq.DotQmail | None = None        # the user's .qmail
    qmail_error: dq.DotQmailError | None = None
    delivered: MailboxOutcome | None = None


@dataclass(frozen=True)
class _DomainInfo:
    exists: bool
    catchall: CatchAll | None
    ext_file: tuple[dq.DotQmail, str | None] | None
    owner: bool = False  # .qmail-<ext>-owner exists: forwards go out from <local>-owner@


def _getter(source: Any) -> Callable[[], Any]:
    if source is None:
        return lambda: None
    if hasattr(source, "current"):
        return lambda: source.current
    if callable(source) and not hasattr(source, "enqueue") and not hasattr(source, "get"):
        return source
    return lambda: source


@implementer(IDeliveryAgent)
class LocalDeliveryAgent:
    """IndiMail's vdelivermail as an :class:`IDeliveryAgent`.

    ``store`` is the :class:`~indimail_tw.storage.UserStore`; ``domains_dir``
    holds ``<domain>/.qmail-default``; ``settings`` is a Settings snapshot, a
    Config (``.current`` is read per delivery) or a function returning one;
    ``queue`` an IQueue (or a function returning it) for forwards, or ``forward``
    queues them instead (``forward(envelope, dtline, path, size)`` ->
    Deferred[queue id]: the delivery helper asks its server);
    ``environ`` holds the knobs of :class:`LocalOptions`; ``program_env`` the
    base environment of program deliveries (default: PATH only);
    ``clock`` times program deliveries out (default: the reactor); ``pool`` runs
    the lookup job (default: the reactor's pool; other blocking work uses that).
    """

    def __init__(self, store: Any, domains_dir: str, settings: Any, queue: Any = None, *,
                 reactor: Any = None, environ: Mapping[str, str] | None = None,
                 program_env: Mapping[str, str] | None = None, clock: Any = None,
                 pool: Any = None,
                 forward: Callable[..., defer.Deferred] | None = None) -> None:
        self.store = store
        self.domains_dir = domains_dir
        self.domain_files = DomainFiles(domains_dir)
        self.home_qmail = HomeQmail()
        self._settings = _getter(settings)
        self._queue = _getter(queue)
        self._forward_copy = forward
        self._reactor = reactor
        self.environ: Mapping[str, str] = dict(os.environ if environ is None else environ)
        self.program_env = dict(program_env) if program_env is not None else {
            "PATH": os.environ.get("PATH", "/bin:/usr/bin:/usr/local/bin")}
        self._clock = clock
        self._pool = pool
        self._lookups: CallBatcher | None = None

    @property
    def reactor(self) -> Any:
        if self._reactor is None:
            from twisted.internet import reactor
            self._reactor = reactor
        return self._reactor

    def _thread(self, fn: Callable[..., Any], *args: Any, **kw: Any) -> defer.Deferred:
        reactor = self.reactor
        return threads.deferToThreadPool(reactor, reactor.getThreadPool(), fn, *args, **kw)

    def _job(self, fn: Callable[..., Any], *args: Any) -> defer.Deferred:
        """The lookup job: in ``pool`` when given (it never waits on locks), batched
        with the others requested meanwhile (see the module docstring)."""
        if self._lookups is None:
            reactor, pool = self.reactor, self._pool
            run = ThreadRunner(reactor, pool if pool is not None else reactor.getThreadPool())
            self._lookups = CallBatcher(run, around=shared_syncs)
        return self._lookups(fn, *args)

    # -- entry points -----------------------------------------------------------------

    def deliver(self, message: Any, recipient: Recipient) -> defer.Deferred:
        """Deferred[DeliveryResult]; never fails (an unexpected error is temporary)."""
        return self.deliver_address(message, recipient)

    def deliver_address(self, message: Any, recipient: Recipient, *,
                        handler: str | None = None, dtline_text: str | None = None,
                        rpline_text: str | None = None) -> defer.Deferred:
        """:meth:`deliver` with vdelivermail's overrides: the catch-all ``handler``
        named on its command line, and qmail-local's DTLINE/RPLINE.

        The lookup job runs first; when it has delivered into the user's Maildir
        with nothing left to do (the usual case) its result is the answer, else
        :meth:`_route` goes on with what it found."""
        dtline_text, rpline_text = header_text(dtline_text), header_text(rpline_text)
        opts = LocalOptions.from_environ(self.environ)

        def looked(found: tuple[Job, str, _Facts]) -> Any:
            job, dt_address, facts = found
            delivered = facts.delivered
            if delivered is not None and delivered.mark_usage is None:
                return self._final(delivered.result, opts)
            d = defer.Deferred.fromCoroutine(self._route(job, facts, handler, dt_address))
            return d.addCallback(self._final, opts)

        def unexpected(failure: Any) -> DeliveryResult:
            log.failure("local delivery to {rcpt} failed unexpectedly", failure,
                        rcpt=recipient.address)
            return DeliveryResult.temporary("Temporary local delivery failure. (#4.3.0)",
                                            "4.3.0")

        d = defer.maybeDeferred(self._start, message, recipient, dtline_text, rpline_text,
                                opts)
        return d.addCallback(looked).addErrback(unexpected)

    @staticmethod
    def _final(result: DeliveryResult, opts: LocalOptions) -> DeliveryResult:
        if result.is_permanent and opts.discard_bounce:
            return DeliveryResult.ok(f"discarded (DISCARD_BOUNCE): {result.text}")
        return result

    def _start(self, message: Any, recipient: Recipient, dtline_text: str | None,
               rpline_text: str | None, opts: LocalOptions) -> defer.Deferred:
        """The recipient's job and the lookup job (:meth:`_look`) for it:
        Deferred[(job, the Delivered-To address, the facts found)]."""
        settings = self._settings()
        local, domain = split_address(recipient.address,
                                      getattr(settings, "envnoathost", "") or "")
        sender = message.envelope.sender if message.envelope else ""
        dt_address = qmail_address(settings, local, domain)
        dt = dtline_text.encode("utf-8", "surrogateescape") if dtline_text else dtline(dt_address)
        if dtline_text:
            dt_address = dtline_text.partition(":")[2].strip()
        rp = rpline_text.encode("utf-8", "surrogateescape") if rpline_text else rpline(sender)
        job = Job(message, recipient, local, domain, sender, dt, rp, _NO_SCAN, opts,
                  qmail_local=dt_address.rpartition("@")[0])
        d = self._job(self._look, job, dt_address, settings)
        return d.addCallback(lambda facts: (job, dt_address, facts))

    async def _route(self, job: Job, facts: _Facts, handler: str | None,
                     dt_address: str) -> DeliveryResult:
        """Everything after the lookup job, in vdelivermail's order (module docstring)."""
        recipient, sender, domain = job.recipient, job.sender, job.domain
        pre = facts.pre
        if pre.size == 0:
            return DeliveryResult.ok("discarding 0 size message")
        if pre.blackholed:
            return DeliveryResult.ok(f"Discarding BlackHoled Address [{sender}]")
        if is_looping(pre.scan, dt_address, pre.max_delivered_to):
            return DeliveryResult.permanent(
                "This message is looping: it already has my Delivered-To line. (#5.4.6)", "5.4.6")
        info = facts.info
        if info.ext_file is not None:
            qmail, default = info.ext_file
            if info.owner and sender not in ("", "#@[]"):
                job.newsender = f"{job.qmail_local}-owner@{domain}"
            return await self._run_dot_qmail(job, qmail, job.domain_dir, None, default)
        if facts.lookup_error is not None:
            log.warn("user lookup for {rcpt} failed: {error}", rcpt=recipient.address,
                     error=str(facts.lookup_error))
            return DeliveryResult.temporary("temporary authentication error. (#4.4.3)", "4.4.3")
        user, info = facts.user, facts.real_info
        if not info.exists:
            return DeliveryResult.permanent(f"No such domain {domain}. indimail (#5.1.2)",
                                            "5.1.2")
        catchall = CatchAll("vdelivermail", handler) if handler else info.catchall
        if user is not None and (user.active or job.opts.allow_inactive):
            return await self._deliver_user(job, user, facts)
        if user is not None:
            return await self._catch_all(job, catchall, inactive=True)
        if facts.lines_error is not None:
            log.warn("valias lookup for {rcpt} failed: {error}", rcpt=recipient.address,
                     error=str(facts.lines_error))
            return DeliveryResult.temporary("temporary database error. (#4.4.3)", "4.4.3")
        if facts.lines:
            return await self._run_instructions(job, facts.lines, None, None, job.local,
                                                "valias")
        return await self._catch_all(job, catchall, inactive=False)

    def _look(self, job: Job, dt_address: str, settings: Any) -> _Facts:
        """The lookup job (in a thread): the checks of :meth:`_route` that block, in
        its order, up to the first that ends the delivery or needs the reactor; then
        :meth:`_look_user`.  Fills in ``job.scan``, ``job.real_domain`` and
        ``job.domain_dir``."""
        pre = precheck(job.message.path, job.sender, settings,
                       getattr(job.message, "data", None), job.message.size)
        facts = _Facts(pre)
        job.scan = pre.scan
        if pre.size == 0 or pre.blackholed or is_looping(pre.scan, dt_address,
                                                         pre.max_delivered_to):
            return facts
        local, domain = job.local, job.domain
        facts.info = info = self._domain_info(domain, local)
        if info.ext_file is not None:
            job.real_domain, job.domain_dir = domain, os.path.join(self.domains_dir, domain)
            return facts
        try:
            # the user row and the valias lines that go with it, in one read
            user, real, lines = self.store.get_user_and_aliases_now(local, domain)
            if user is None and job.opts.qmail_ext and "-" in local:
                found = self.store.get_user_and_aliases_now(local.split("-", 1)[0], domain)
                if found[0] is not None:
                    user, real, lines = found
        except StoreError:
            lines = None        # read them one by one, to tell which read failed
            try:
                user, real = self.store.get_user_now(local, domain)
                if user is None and job.opts.qmail_ext and "-" in local:
                    user, real = self.store.get_user_now(local.split("-", 1)[0], domain)
            except StoreError as e:
                facts.lookup_error = e
                return facts
        facts.user, facts.real = user, real
        if real != domain or not info.exists:
            info = self._domain_info(real, None)
        facts.real_info = info
        if not info.exists:
            return facts
        job.real_domain, job.domain_dir = real, os.path.join(self.domains_dir, real)
        if user is None:
            facts.lines = lines
            if lines is None:
                try:
                    facts.lines = self.store.alias_lines_now(local, real)
                except StoreError as e:
                    facts.lines_error = e
        elif (user.active or job.opts.allow_inactive) and not user.gid & Flags.BOUNCE_MAIL:
            self._look_user(job, user, facts, lines)
        return facts

    def _look_user(self, job: Job, user: User, facts: _Facts,
                   lines: list[str] | None = None) -> _Facts:
        """The blocking part of :meth:`_deliver_user` after the BOUNCE_MAIL check (in a
        thread): valias lines (unless ``lines`` has them), the ``.qmail``, and else the
        Maildir delivery itself."""
        try:
            facts.lines = (lines if lines is not None
                           else self.store.alias_lines_now(user.name, job.real_domain))
        except StoreError as e:
            facts.lines_error = e
            return facts
        if facts.lines:
            return facts
        try:
            facts.qmail = self.home_qmail.read(user.dir)
        except dq.DotQmailError as e:
            facts.qmail_error = e
            return facts
        if facts.qmail is not None or user.gecos.startswith(GROUP_PREFIX):
            return facts
        facts.delivered = deliver_to_maildir(
            user.maildir, job.message.path, job.header, quota=user_quota(user),
            label=f"{user.name}@{job.real_domain}", policy=job.opts.quota, home=user.dir,
            folder=job.opts.maildirfolder, message_size=facts.pre.size,
            message_data=facts.pre.data)
        return facts

    def _domain_info(self, domain: str, ext: str | None) -> _DomainInfo:
        found = self.domain_files.get(domain)
        if not found.exists:
            return _DomainInfo(False, None, None)
        directory = self.domain_files.directory(domain)
        ext_file = None
        if ext is not None:
            try:
                ext_file = dq.find_domain_file(directory, ext, found.names)
            except dq.DotQmailError as e:
                log.warn("{error}", error=e.text)
            if ext_file is not None and ext_file[0].empty:
                ext_file = None
        owner = ext_file is not None and os.path.exists(
            os.path.join(directory, f".qmail-{dq.safe_ext(ext or '')}-owner"))
        return _DomainInfo(True, found.catchall, ext_file, owner)

    # -- a user's mail ----------------------------------------------------------------

    async def _deliver_user(self, job: Job, user: User, facts: _Facts) -> DeliveryResult:
        """The user's mail, from what :meth:`_look_user` found (it runs again after an
        account's BOUNCE_MAIL flag was cleared)."""
        address = f"{user.name}@{job.real_domain}"
        if user.gid & Flags.BOUNCE_MAIL:
            state = await self._thread(locked_account, user.maildir, user_quota(user), address,
                                       job.opts.quota, user.dir)
            if state.result is not None:
                return state.result
            await self._db_update(clear_bounce_mail_txn, user.name, job.real_domain)
            facts = await self._job(self._look_user, job, user, _Facts(facts.pre))
        if facts.lines_error is not None:
            log.warn("valias lookup for {rcpt} failed: {error}", rcpt=address,
                     error=str(facts.lines_error))
            return DeliveryResult.temporary("temporary database error. (#4.4.3)", "4.4.3")
        if facts.lines:
            return await self._run_instructions(job, facts.lines, user.dir, user, job.local,
                                                "valias")
        if facts.qmail_error is not None:
            return DeliveryResult.temporary(facts.qmail_error.text, facts.qmail_error.enhanced)
        qmail = facts.qmail
        if qmail is not None:
            if qmail.empty:
                return DeliveryResult.ok("discarded: empty .qmail")
            return await self._run_dot_qmail(job, qmail, user.dir, user, job.local)
        if user.gecos.startswith(GROUP_PREFIX):
            return DeliveryResult.ok("Mail delivery to group is avoided")
        outcome = facts.delivered
        if outcome.mark_usage is not None:
            await self._db_update(mark_over_quota_txn, user.name, job.real_domain,
                                  outcome.mark_usage)
        return outcome.result

    async def _db_update(self, fn: Callable[..., Any], *args: Any) -> None:
        """A bookkeeping write (BOUNCE_MAIL, userquota): its failure is logged, not fatal."""
        try:
            await self.store.engine.runInteraction(fn, *args)
        except Exception as e:  # noqa: BLE001
            log.warn("quota bookkeeping for {user}@{domain} failed: {error}",
                     user=args[0], domain=args[1], error=str(e))

    # -- delivery lines ---------------------------------------------------------------

    async def _run_dot_qmail(self, job: Job, qmail: dq.DotQmail, home: str,
                             user: User | None, default: str | None) -> DeliveryResult:
        try:
            instructions = dq.parse_lines(qmail.lines, home)
            dq.check_forward_only(qmail, instructions)
        except dq.DotQmailError as e:
            return DeliveryResult.temporary(e.text, e.enhanced)
        return await self._run(job, instructions, home, user, default)

    async def _run_instructions(self, job: Job, lines: list[str], home: str | None,
                                user: User | None, default: str | None,
                                origin: str) -> DeliveryResult:
        try:
            instructions = dq.parse_lines(lines, home)
        except dq.DotQmailError as e:
            log.warn("bad {origin} line for {rcpt}: {error}", origin=origin,
                     rcpt=job.address, error=e.text)
            return DeliveryResult.temporary(e.text, e.enhanced)
        return await self._run(job, instructions, home, user, default)

    async def _run(self, job: Job, instructions: list[dq.Instruction], home: str | None,
                   user: User | None, default: str | None) -> DeliveryResult:
        """Process lines top to bottom; forwards are queued once everything else worked."""
        selves = {job.address, f"{job.local}@{job.real_domain}"}
        forwards: list[str] = []
        files = programs = 0
        for ins in instructions:
            if ins.kind == dq.FORWARD:
                target = ins.target.lower()
                if target in selves:
                    continue  # IndiMail's simple loop check: a line naming the user itself
                if forward_loops(job.scan, target):
                    return DeliveryResult.permanent(f"{ins.target} is looping. (#5.4.6)", "5.4.6")
                forwards.append(ins.target)
            elif ins.kind == dq.PROGRAM:
                programs += 1
                outcome = await self._program(job, ins.target, home, user, default)
                if not outcome.result.is_ok:
                    return outcome.result
                if outcome.stop:
                    break
            else:
                files += 1
                result = await self._file(job, ins, home)
                if not result.is_ok:
                    return result
        if forwards:
            result = await self._forward(job, forwards)
            if not result.is_ok:
                return result
        return DeliveryResult.ok(f"did {files}+{len(forwards)}+{programs}")

    async def _file(self, job: Job, ins: dq.Instruction, home: str | None) -> DeliveryResult:
        if ins.kind == dq.MAILDIR:
            outcome = await self._thread(
                deliver_to_maildir, ins.target, job.message.path, job.header, quota=AUTO,
                label=ins.line, policy=job.opts.quota, home=home, folder=job.opts.maildirfolder,
                message_size=job.message.size)
            return outcome.result
        header = ufline(job.sender) + job.header
        try:
            await self._thread(deliver_mbox, ins.target, job.message.path, header,
                               size=job.message.size)
        except TimeoutError:
            return DeliveryResult.temporary(
                "File has been locked for 30 seconds straight. (#4.3.0)", "4.3.0")
        except OSError as e:
            return DeliveryResult.temporary(
                f"Unable to write {ins.target}: {e.strerror}. (#4.3.0)", "4.3.0")
        return DeliveryResult.ok(f"delivered to {ins.target}")

    async def _program(self, job: Job, command: str, home: str | None, user: User | None,
                       default: str | None) -> Any:
        cwd = home if home and os.path.isdir(home) else job.domain_dir
        env = qmail_environment(
            sender=job.sender, newsender=job.newsender or job.sender, local=job.qmail_local,
            host=job.domain, ext=job.local, user=user.name if user else job.local,
            home=home or job.domain_dir, default=default, dtline=job.dtline,
            rpline=job.rpline, messid=str(getattr(job.message, "id", "")),
            qqeh=job.message.envelope.extra.get("qqeh", "") if job.message.envelope else "",
            base=self.program_env)
        message = job.message
        try:
            # a copy of exactly the message, seekable, made in a thread: never the
            # queue file itself (it goes on with the envelope)
            stdin = await self._thread(message_stdin, message.path, message.size,
                                       getattr(message, "data", None))
        except OSError as e:
            return ProgramOutcome(DeliveryResult.temporary(
                f"Unable to read message: {e.strerror}. (#4.3.0)", "4.3.0"))
        return await run_program(self.reactor, command, stdin, env, cwd,
                                 timeout=job.opts.program_timeout,
                                 clock=self._clock or self.reactor)

    async def _forward(self, job: Job, addresses: list[str]) -> DeliveryResult:
        """Queue one new message (our Delivered-To line first) for ``addresses``."""
        forward = self._forward_copy
        if forward is None:
            queue = self._queue()
            if queue is None:
                return DeliveryResult.temporary(
                    "Unable to forward message: no queue. (#4.3.0)", "4.3.0")
            forward = partial(enqueue_copy, self.reactor, queue)
        original = job.message.envelope
        orcpt = job.recipient.orcpt or f"rfc822;{job.recipient.address}"
        envelope = Envelope(
            sender=job.newsender or job.sender,
            recipients=[Recipient(a, notify=job.recipient.notify, orcpt=orcpt)
                        for a in addresses],
            ret=original.ret if original else None, envid=original.envid if original else None,
            body=original.body if original else None,
            smtputf8=original.smtputf8 if original else False, protocol="LOCAL")
        try:
            queue_id = await forward(envelope, job.dtline, job.message.path, job.message.size)
        except OSError as e:
            return DeliveryResult.temporary(f"Unable to read message: {e.strerror}. (#4.3.0)",
                                            "4.3.0")
        except Exception as e:  # noqa: BLE001 - any queue failure: retry, unless refused
            text = getattr(e, "text", None) or str(e) or e.__class__.__name__
            if getattr(e, "temporary", True) is False:
                return DeliveryResult.permanent(f"Unable to forward message: {text}. (#5.3.0)",
                                                getattr(e, "enhanced", "") or "5.3.0")
            return DeliveryResult.temporary(f"Unable to forward message: {text}. (#4.3.0)",
                                            "4.3.0")
        return DeliveryResult.ok(f"forwarded to {', '.join(addresses)} (queued as {queue_id})")

    # -- unknown and inactive users ---------------------------------------------------

    async def _catch_all(self, job: Job, catchall: CatchAll | None,
                         inactive: bool) -> DeliveryResult:
        handler = catchall or CatchAll("vdelivermail", "bounce-no-mailbox")
        kind = handler.kind
        who = f"{job.local}@{job.real_domain}"
        inactive_text = f"account {who} is inactive. indimail(#5.1.3)"
        if kind == "delete":
            return DeliveryResult.ok(f"discarded mail for {who} (catch-all delete)")
        if kind == "bounce" or (kind == "route" and inactive):
            if inactive:
                return DeliveryResult.permanent(inactive_text, "5.2.1")
            return DeliveryResult.permanent(
                f"no account {who} here by that name. indimail (#5.1.5)", "5.1.1")
        if kind == "route":
            if handler.handler.count(":") != 2:
                return DeliveryResult.temporary(
                    f"Invalid SMTPROUTE Specification [{handler.handler}]. indimail (#5.1.8)",
                    "4.3.5")
            log.warn("catch-all of {domain} routes {rcpt} to {route}: remote routing is not "
                     "implemented yet; deferring", domain=job.real_domain, rcpt=who,
                     route=handler.handler)
            return DeliveryResult.temporary(
                f"no account {who} here; routing to {handler.handler} is not supported yet. "
                "(#4.3.0)", "4.3.0")
        if kind == "forward":
            try:
                forward = dq.parse_line(handler.handler.lstrip("&"), None)
            except dq.DotQmailError as e:
                return DeliveryResult.temporary(e.text, e.enhanced)
            if forward is None or forward.kind != dq.FORWARD:
                return DeliveryResult.temporary(
                    f"invalid catch-all address [{handler.handler}]. (#4.3.5)", "4.3.5")
            return await self._run(job, [forward], None, None, job.local)
        path = handler.handler
        if "/Maildir/" not in path + "/":
            path = path.rstrip("/") + "/Maildir/"
        return await self._file(job, dq.Instruction(dq.MAILDIR, path, path), None)


def enqueue_copy(reactor: Any, queue: Any, envelope: Envelope, dtline: bytes, path: str,
                 size: int) -> defer.Deferred:
    """Queue ``dtline`` and bytes [0, ``size``) of the message file ``path`` as a new
    message: Deferred[queue id] (the file is opened in a thread; OSError if it cannot be)."""
    d = threads.deferToThreadPool(
        reactor, reactor.getThreadPool(),
        lambda: io.BufferedReader(PrefixedReader(dtline, path, size)))

    def opened(reader: Any) -> defer.Deferred:
        done = defer.maybeDeferred(queue.enqueue, envelope, reader)
        return done.addBoth(lambda result: (reader.close(), result)[1])

    return d.addCallback(opened)


def build_local_agent(context: Any) -> LocalDeliveryAgent:
    """The local agent of a running server (``ServerContext``)."""
    return LocalDeliveryAgent(
        context.store, context.paths.domains, context.config,
        lambda: context.queue, reactor=context.reactor, environ=context.environ,
        pool=getattr(context, "io_pool", None))
