"""vadddomain [options] domain [postmaster_password]: add a virtual domain."""

from __future__ import annotations

import os
from collections.abc import Sequence

from indimail_tw.admin import cli
from indimail_tw.admin.cli import Opt
from indimail_tw.admin.ops_domain import add_domain
from indimail_tw.admin.validate import check_domain, check_positive_int
from indimail_tw.errors import AdminError

COMMAND = cli.Command(
    "vadddomain", "[options] domain [postmaster_password]",
    """Create a virtual domain: domains/<domain>/ with its .qmail-default, the
rcpthosts (morercpthosts past 50 domains) and virtualdomains entries, the
database tables, the active postmaster account and the abuse and
mailer-daemon aliases of postmaster.  Without a password argument (or -e/-r)
the postmaster password is prompted for, or read from stdin when it is not a
terminal.""",
    [
        Opt("v", "verbose", None, "verbose"),
        Opt("B", "base_path", "dir", "base directory for the domain's homes (.base_path)"),
        Opt("l", "users_per_level", "n", "users per directory level (default 100)"),
        Opt("q", "quota", "quota", "postmaster quota (k/m/g suffixes, NOQUOTA)"),
        Opt("b", "bounce", None, "bounce mail for unknown users (the default)"),
        Opt("E", "forward", "addr|maildir",
            "deliver mail for unknown users to this address or absolute Maildir"),
        Opt("f", "vfilter", None, "deliver with vfilter instead of vdelivermail"),
        Opt("R", "chkrcpt", None, "check recipients at SMTP time (chkrcptdomains)"),
        Opt("t", "etrn", None, "ETRN/ATRN domain (etrnhosts); grant access with vatrn"),
        Opt("O", "optimize", None, "accepted for compatibility, no effect"),
    ] + cli.PASSWORD_OPTS,
    notes="""-h also writes the domain's hash_method file.  qmail's users/assign is not
written and no qmail-newu is needed: indimail_tw resolves virtual domains itself.""",
    operands=(1, 2))


def body(args: cli.Args) -> int:
    site = cli.site_of(args)
    domain = check_domain(args.operands[0])
    if os.path.lexists(site.domain_dir(domain)):
        raise AdminError(f"domain {domain} exists", 1)
    per_level = (check_positive_int(args.users_per_level, "-l")
                 if args.users_per_level is not None else None)
    operand = args.operands[1] if len(args.operands) > 1 else None
    password = cli.password_from(args, operand, f"postmaster@{domain}")
    try:
        result = add_domain(site, domain, password, base_path=args.base_path,
                            users_per_level=per_level, quota=args.quota,
                            handler=args.forward, use_vfilter=args.vfilter,
                            chkrcpt=args.chkrcpt, etrn=args.etrn, hash_method=args.hash)
    finally:
        site.close()
    cli.verbose(args, f"added domain {domain} ({site.domain_dir(domain)})")
    cli.verbose(args, f"updated {', '.join(result.control_files) or 'no control files'}")
    cli.verbose(args, f"added {result.postmaster.address} ({result.postmaster.dir})")
    cli.print_random(password)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return cli.run(COMMAND, body, argv)
