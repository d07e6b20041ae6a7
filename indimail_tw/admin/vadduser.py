"""vadduser [options] user@domain [password]: add a user."""

from __future__ import annotations

from collections.abc import Sequence

from indimail_tw.admin import cli
from indimail_tw.admin.cli import Opt
from indimail_tw.admin.ops_user import add_user, parse_address
from indimail_tw.admin.validate import check_positive_int

COMMAND = cli.Command(
    "vadduser", "[options] user@domain [password]",
    """Add a user: a row in the indimail table (indibak with -i), the home
BASE/<bucket>/<domain>/[hash/]<user> with its Maildir, maildirsize when a
quota is set, and the lastauth 'add' time.  BASE is -B, else the domain's
.base_path, else $BASE_PATH (ROOT/mail).  Without a password argument (or
-e/-r) the password is prompted for, or read from stdin when it is not a
terminal.  A user of an alias domain is added to its real domain.""",
    [
        Opt("v", "verbose", None, "verbose"),
        Opt("q", "quota", "quota",
            "quota in bytes (k/m/g suffixes, NOQUOTA; default $HARD_QUOTA, else none)"),
        Opt("c", "gecos", "comment", "comment (gecos) field"),
        Opt("B", "base_path", "dir", "base directory of the home"),
        Opt("l", "users_per_level", "n", "users per directory level"),
        Opt("d", "make_maildir", None, "create the Maildir now (always done here)"),
        Opt("i", "inactive", None, "create the account inactive (postmaster and abuse "
            "are always active)"),
    ] + cli.PASSWORD_OPTS,
    notes="User names: a-z 0-9 . - _ (plus $ALLOWCHARS), at most 40 characters; "
          "upper case is refused.",
    operands=(1, 2))


def body(args: cli.Args) -> int:
    site = cli.site_of(args)
    address = args.operands[0]
    name, domain = parse_address(site, address)  # before prompting for a password
    per_level = (check_positive_int(args.users_per_level, "-l")
                 if args.users_per_level is not None else None)
    operand = args.operands[1] if len(args.operands) > 1 else None
    password = cli.password_from(args, operand, f"{name}@{domain}")
    try:
        user = add_user(site, address, password, gecos=args.gecos or "", quota=args.quota,
                        base_path=args.base_path, users_per_level=per_level,
                        active=not args.inactive, hash_method=password.method)
    finally:
        site.close()
    cli.verbose(args, f"added {user.address} ({user.dir}, "
                f"{'active' if user.active else 'inactive'}, quota {user.shell})")
    cli.print_random(password)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return cli.run(COMMAND, body, argv)
