"""Control files: reading and editing them, typed settings, reload on HUP.

``ControlDir`` reads and edits one control directory (plain lists, one-value
files, ``.cdb`` compiled lists).  ``Settings`` is an immutable, fully parsed
snapshot of every known setting (``REGISTRY``), resolved as IndiMail does:
environment variable, then control file, then default.  ``Config`` holds the
current snapshot and swaps in a new one on reload, keeping the old one when a
file is bad.
"""

from indimail_tw.config.control import ControlDir, Stamp
from indimail_tw.config.parsers import (
    HASH_METHODS,
    ParseError,
    SmtpRoute,
    VirtualDomains,
    parse_route,
)
from indimail_tw.config.reload import Config
from indimail_tw.config.settings import (
    REGISTRY,
    Derived,
    EnvMode,
    Kind,
    Setting,
    Settings,
)

__all__ = [
    "HASH_METHODS",
    "REGISTRY",
    "Config",
    "ControlDir",
    "Derived",
    "EnvMode",
    "Kind",
    "ParseError",
    "Setting",
    "Settings",
    "SmtpRoute",
    "Stamp",
    "VirtualDomains",
    "parse_route",
]
