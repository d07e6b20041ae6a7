"""``twisted.cred.strcred`` factories for our checkers.

A plugin author adds a checker the same way, without touching our code: a
module in a ``twisted/plugins/`` directory on the Python path that holds an
object providing ``ICheckerFactory`` and ``IPlugin`` (see README, "Writing a
credential checker").  ``twistd indimail --auth NAME:ARGS`` selects it.
"""

from __future__ import annotations

import shlex

from twisted.cred.credentials import IUsernameHashedPassword, IUsernamePassword
from twisted.cred.strcred import ICheckerFactory
from twisted.plugin import IPlugin
from zope.interface import implementer

from indimail_tw.auth.checkers import CheckpasswordChecker, StoreChecker


@implementer(ICheckerFactory, IPlugin)
class StoreCheckerFactory:
    authType = "indimail"
    authHelp = ("IndiMail's user database (SQLite, or MySQL/MariaDB when control/host.mysql "
                "exists): vchkpass semantics, pw_gid service flags, inactive users.")
    argStringFormat = "No argstring required."
    credentialInterfaces = (IUsernamePassword, IUsernameHashedPassword)

    def generateChecker(self, argstring: str = ""):  # noqa: N802
        return StoreChecker()


@implementer(ICheckerFactory, IPlugin)
class CheckpasswordCheckerFactory:
    authType = "checkpassword"
    authHelp = ("Run a checkpassword program speaking IndiMail's fd-3 protocol "
                "(vchkpass, sys-checkpwd, ldap-checkpwd, a site script). Exit 0 accepts, "
                "3 accepts without relaying, 111 is a temporary failure, anything else "
                "refuses.")
    argStringFormat = ("The program and its arguments, "
                       "e.g. checkpassword:/usr/sbin/vchkpass /bin/false")
    credentialInterfaces = (IUsernamePassword, IUsernameHashedPassword)

    def generateChecker(self, argstring: str = ""):  # noqa: N802
        argv = shlex.split(argstring)
        if not argv:
            raise ValueError("checkpassword needs a program: --auth checkpassword:PROGRAM")
        return CheckpasswordChecker(argv)
