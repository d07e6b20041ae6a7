"""vsetuserquota [-v] user@domain quota: set a user's quota."""

from __future__ import annotations

from collections.abc import Sequence

from indimail_tw.admin import cli
from indimail_tw.admin.cli import Opt
from indimail_tw.admin.ops_user import set_quota

COMMAND = cli.Command(
    "vsetuserquota", "[-v] user@domain quota",
    """Set a user's quota (pw_shell) and rewrite Maildir/maildirsize.  Quota:
bytes with k/m/g suffixes, optionally ",count" for a message limit, or NOQUOTA
for no limit (maildirsize is then removed).""",
    [Opt("v", "verbose", None, "verbose")],
    operands=(2, 2))


def body(args: cli.Args) -> int:
    site = cli.site_of(args)
    address, quota = args.operands
    try:
        user = set_quota(site, address, quota)
    finally:
        site.close()
    cli.verbose(args, f"quota of {user.address} is {user.shell}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return cli.run(COMMAND, body, argv)
