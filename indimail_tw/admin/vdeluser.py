"""vdeluser [-v] user@domain: delete a user."""

from __future__ import annotations

from collections.abc import Sequence

from indimail_tw.admin import cli
from indimail_tw.admin.cli import Opt
from indimail_tw.admin.ops_user import delete_user

COMMAND = cli.Command(
    "vdeluser", "[-v] user@domain",
    """Delete a user: the row, the user's valias forwardings, lastauth and ATRN
rows, the home directory tree, and one dir_control slot.""",
    [Opt("v", "verbose", None, "verbose")],
    operands=(1, 1))


def body(args: cli.Args) -> int:
    site = cli.site_of(args)
    try:
        user = delete_user(site, args.operands[0])
    finally:
        site.close()
    cli.verbose(args, f"deleted {user.address} ({user.dir})")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return cli.run(COMMAND, body, argv)
