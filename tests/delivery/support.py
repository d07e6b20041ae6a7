"""A throw-away installation for local-delivery tests: root, control files, domains,
users in SQLite or MariaDB, queued messages and a fake queue."""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
from dataclasses import dataclass

from twisted.internet import defer
from zope.interface import implementer

from indimail_tw.config import ControlDir, Settings
from indimail_tw.delivery.catchall import qmail_default_line
from indimail_tw.delivery.local import LocalDeliveryAgent
from indimail_tw.errors import MailError
from indimail_tw.fsutil import make_maildir
from indimail_tw.interfaces import IQueue
from indimail_tw.paths import Paths
from indimail_tw.queue import records
from indimail_tw.queue.envelope import Envelope, Recipient
from indimail_tw.storage.store import REPOS, UserStore
from indimail_tw.storage.users import User
from tests.support import EngineMixin

ME = "mx.example.com"
SENDER = "sender@remote.test"
BODY = b"From: Sender <sender@remote.test>\nSubject: hello\n\nHello there.\n"
_ids = itertools.count(1)


@dataclass
class QueuedMessage:
    """An IQueuedMessage."""

    id: str
    envelope: Envelope
    path: str
    size: int


@implementer(IQueue)
class FakeQueue:
    """Records what was enqueued; ``fail`` makes enqueue fail with that MailError."""

    def __init__(self) -> None:
        self.messages: list[tuple[Envelope, bytes]] = []
        self.fail: MailError | None = None

    def enqueue(self, envelope, message):
        if self.fail is not None:
            return defer.fail(self.fail)
        data = message if isinstance(message, bytes) else message.read()
        self.messages.append((envelope, data))
        return defer.succeed(f"q{len(self.messages)}")

    def writer(self, envelope):
        raise NotImplementedError

    def flush(self, domain=None):
        return None


class DeliverySite(EngineMixin):
    """Mixin for trial test cases: ``self.root``, ``self.paths``, ``self.store``,
    ``self.queue``, ``self.environ``; domain example.com with a catch-all that bounces."""

    backend = "sqlite"

    def setUp(self):
        self.root = tempfile.mkdtemp(prefix="itw-deliv-")
        self.addCleanup(shutil.rmtree, self.root, True)
        self.paths = Paths.resolve(root=self.root, environ={})
        self.paths.ensure()
        self.control("me", ME)
        self.engine = self.make_engine()
        self.engine.run_sync(self.engine.prepare)
        self.store = UserStore(self.engine)
        self.queue = FakeQueue()
        self.environ: dict[str, str] = {}
        self.add_domain("example.com")

    # -- installation -----------------------------------------------------------------

    def control(self, name: str, value: str) -> None:
        with open(os.path.join(self.paths.control, name), "w") as f:
            f.write(value + "\n")

    def settings(self) -> Settings:
        return Settings.load(ControlDir(self.paths.control, {}), fqdn=lambda: ME)

    def add_domain(self, domain: str, handler: str | None = "bounce-no-mailbox") -> str:
        directory = os.path.join(self.paths.domains, domain)
        os.makedirs(directory, exist_ok=True)
        if handler is not None:
            self.write(os.path.join(directory, ".qmail-default"), qmail_default_line(handler))
        return directory

    def add_alias_domain(self, alias: str, domain: str) -> None:
        os.symlink(domain, os.path.join(self.paths.domains, alias))
        self.engine.run_sync(REPOS.aliasdomains.add, alias, domain)

    def add_user(self, name: str, domain: str = "example.com", *, quota: str = "NOQUOTA",
                 gid: int = 0, active: bool = True, gecos: str = "",
                 maildir: bool = True) -> User:
        home = os.path.join(self.paths.mail, domain, name)
        os.makedirs(home, mode=0o700)
        os.chmod(home, 0o700)
        if maildir:
            make_maildir(os.path.join(home, "Maildir"))
        user = User(name=name, domain=domain, passwd="x", gid=gid, gecos=gecos or name,
                    dir=home, shell=quota, active=active)
        self.engine.run_sync(REPOS.users.add, user)
        return user

    def add_alias(self, alias: str, line: str, domain: str = "example.com") -> None:
        self.engine.run_sync(REPOS.aliases.add, alias, domain, line)

    def get_user(self, name: str, domain: str = "example.com") -> User:
        return self.engine.run_sync(REPOS.users.get, name, domain)

    @staticmethod
    def write(path: str, text: str | bytes, mode: int = 0o644) -> str:
        with open(path, "wb") as f:
            f.write(text.encode() if isinstance(text, str) else text)
        os.chmod(path, mode)
        return path

    # -- messages and delivery ---------------------------------------------------------

    def message(self, body: bytes = BODY, sender: str = SENDER, *rcpts: str,
                **envelope) -> QueuedMessage:
        """A queued message in a queue file as the queue writes it (format 2): the
        body, then its envelope record and trailer, which no delivery may see."""
        qid = str(next(_ids))
        path = os.path.join(self.paths.queue, f"msg{qid}")
        env = Envelope(sender=sender, recipients=[Recipient(r) for r in rcpts], **envelope)
        record = records.encode_envelope(env, len(body))
        with open(path, "wb") as f:
            f.write(body + record + records.encode_trailer(len(record)))
        return QueuedMessage(qid, env, path, len(body))

    def agent(self, **kw) -> LocalDeliveryAgent:
        kw.setdefault("environ", self.environ)
        return LocalDeliveryAgent(self.store, self.paths.domains, self.settings(),
                                  self.queue, **kw)

    def deliver(self, address: str, message: QueuedMessage | None = None,
                recipient: Recipient | None = None, **kw):
        message = message or self.message()
        return self.agent().deliver_address(message, recipient or Recipient(address), **kw)

    @staticmethod
    def new_files(maildir: str) -> list[bytes]:
        new = os.path.join(maildir, "new")
        if not os.path.isdir(new):
            return []
        out = []
        for name in sorted(os.listdir(new)):
            with open(os.path.join(new, name), "rb") as f:
                out.append(f.read())
        return out

    def assertDelivered(self, result, maildir: str, count: int = 1) -> list[bytes]:  # noqa: N802
        self.assertTrue(result.is_ok, result)
        files = self.new_files(maildir)
        self.assertEqual(len(files), count, files)
        return files
