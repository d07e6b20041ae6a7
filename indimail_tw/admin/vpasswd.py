"""vpasswd [options] user@domain [password]: change a user's password."""

from __future__ import annotations

from collections.abc import Sequence

from indimail_tw.admin import cli
from indimail_tw.admin.cli import Opt
from indimail_tw.admin.ops_user import parse_address, set_password

COMMAND = cli.Command(
    "vpasswd", "[options] user@domain [password]",
    """Set a user's password.  Without a password argument (or -e/-r) it is
prompted for twice on a terminal, or one line is read from stdin otherwise.
Records the change time (lastauth 'pass').""",
    [Opt("v", "verbose", None, "verbose")] + cli.PASSWORD_OPTS,
    operands=(1, 2))


def body(args: cli.Args) -> int:
    site = cli.site_of(args)
    name, domain = parse_address(site, args.operands[0])
    operand = args.operands[1] if len(args.operands) > 1 else None
    password = cli.password_from(args, operand, f"{name}@{domain}")
    try:
        user = set_password(site, args.operands[0], password)
    finally:
        site.close()
    cli.verbose(args, f"password of {user.address} changed")
    cli.print_random(password)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return cli.run(COMMAND, body, argv)
