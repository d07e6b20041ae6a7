"""Where one installation keeps its files.

One data root holds everything (``--root`` or ``$INDIMAIL_ROOT``, default
``/var/indimail``).  IndiMail's own variables override single locations, so an
existing IndiMail tree can be used in place:

=========  ==========================  =====================================
location   default                     overridden by
=========  ==========================  =====================================
control    ROOT/control                CONTROLDIR, then SYSCONFDIR/control
tcp        ROOT/tcp                    TCPDIR, then SYSCONFDIR/tcp
certs      ROOT/certs                  CERTDIR, then SYSCONFDIR/certs
domains    ROOT/domains                DOMAINDIR, then INDIMAILDIR/domains
queue      ROOT/queue                  QUEUEDIR
mail       ROOT/mail                   BASE_PATH
db         ROOT/db                     (SQLite file ROOT/db/indimail.sqlite)
=========  ==========================  =====================================
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from collections.abc import Mapping

DEFAULT_ROOT = "/var/indimail"


@dataclass(frozen=True)
class Paths:
    root: str
    control: str
    tcp: str
    certs: str
    domains: str
    queue: str
    mail: str
    db: str

    @classmethod
    def resolve(cls, root: str | None = None,
                environ: Mapping[str, str] | None = None,
                control: str | None = None) -> Paths:
        """Resolve every location from an explicit root, the environment and defaults.

        An explicit ``control`` (the ``--control-dir`` option) wins over everything.
        """
        env = os.environ if environ is None else environ
        root = os.path.abspath(root or env.get("INDIMAIL_ROOT") or DEFAULT_ROOT)
        sysconf = env.get("SYSCONFDIR")
        home = env.get("INDIMAILDIR") or env.get("QMAILHOME")

        def pick(own: str | None, parent: str | None, sub: str) -> str:
            if own:
                return os.path.abspath(own)
            if parent:
                return os.path.join(os.path.abspath(parent), sub)
            return os.path.join(root, sub)

        return cls(
            root=root,
            control=os.path.abspath(control) if control
            else pick(env.get("CONTROLDIR"), sysconf, "control"),
            tcp=pick(env.get("TCPDIR"), sysconf, "tcp"),
            certs=pick(env.get("CERTDIR"), sysconf, "certs"),
            domains=pick(env.get("DOMAINDIR"), home, "domains"),
            queue=pick(env.get("QUEUEDIR"), None, "queue"),
            mail=pick(env.get("BASE_PATH"), None, "mail"),
            db=os.path.join(root, "db"),
        )

    @property
    def sqlite_file(self) -> str:
        return os.path.join(self.db, "indimail.sqlite")

    def domain_dir(self, domain: str) -> str:
        return os.path.join(self.domains, domain)

    def ensure(self) -> None:
        """Create the directories of the root that do not exist yet."""
        for path in (self.root, self.control, self.tcp, self.certs, self.domains,
                     self.queue, self.mail, self.db):
            os.makedirs(path, mode=0o750, exist_ok=True)
