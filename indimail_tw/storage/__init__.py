"""The user store: engines, repositories and the asynchronous facade the server uses."""

from indimail_tw.storage.engine import (  # noqa: F401
    Engine, MySQLEngine, MySQLParams, SQLiteEngine, TableNames, Txn, open_engine,
    parse_host_mysql,
)
from indimail_tw.storage.repos import (  # noqa: F401
    AliasDomains, Aliases, AtrnMap, DirControl, IpAliasMap, LastAuth, Relay, VLimits,
)
from indimail_tw.storage.store import Repos, UserStore  # noqa: F401
from indimail_tw.storage.users import User, Users  # noqa: F401
