"""strcred checker factories: ``--auth indimail`` and ``--auth checkpassword:PROGRAM ARGS``."""

from indimail_tw.auth.plugins import CheckpasswordCheckerFactory, StoreCheckerFactory

indimailStore = StoreCheckerFactory()
checkpassword = CheckpasswordCheckerFactory()
