# twistd -ny tac/indimail.tac
# The same service tree as `twistd indimail`; options come from $INDIMAIL_OPTIONS
# (e.g. INDIMAIL_OPTIONS="--root /var/indimail --smtp tcp:2525").
import os
import shlex

from twisted.application import service

from indimail_tw.tap import Options, makeService

options = Options()
options.parseOptions(shlex.split(os.environ.get("INDIMAIL_OPTIONS", "")))
application = service.Application("indimail")
makeService(options).setServiceParent(application)
