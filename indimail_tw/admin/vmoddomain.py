"""vmoddomain [-v] [-h handler] [-f 0|1] [-H hash] [-l 0|1] domain: change domain settings."""

from __future__ import annotations

from collections.abc import Sequence

from indimail_tw.admin import cli
from indimail_tw.admin.cli import Opt
from indimail_tw.admin.ops_domain import modify_domain
from indimail_tw.admin.validate import bad

COMMAND = cli.Command(
    "vmoddomain", "[-v] [-h handler] [-f 0|1] [-H hash] [-l 0|1] domain",
    """Change what happens to mail for unknown users of a domain (the catch-all
handler in .qmail-default), switch between vdelivermail and vfilter, set the
domain's password hash method, or turn domain limits on or off.

Handlers: bounce-no-mailbox (bounce), delete (discard), an absolute Maildir
path (store there), an e-mail address (forward), or host:ip:port (SMTPROUTE).""",
    [
        Opt("v", "verbose", None, "verbose"),
        Opt("h", "handler", "handler", "catch-all handler (see above)"),
        Opt("f", "vfilter", "0|1", "1: deliver with vfilter, 0: with vdelivermail"),
        Opt("H", "hash", "hash", "password hash method: DES MD5 SHA-256 SHA-512 YESCRYPT"),
        Opt("l", "limits", "0|1", "1: enable domain limits (.domain_limits), 0: disable"),
    ],
    notes="An alias domain changes the settings of its real domain.",
    operands=(1, 1))


def _switch(value: str | None, option: str) -> bool | None:
    if value is None:
        return None
    if value not in ("0", "1"):
        raise bad(f"option {option}: expected 0 or 1")
    return value == "1"


def body(args: cli.Args) -> int:
    vfilter = _switch(args.vfilter, "-f")
    limits = _switch(args.limits, "-l")
    if args.handler is None and vfilter is None and limits is None and args.hash is None:
        raise bad(f"nothing to change; {COMMAND.usage_line()}")
    site = cli.site_of(args)
    settings = modify_domain(site, args.operands[0], handler=args.handler,
                             use_vfilter=vfilter, hash_method=args.hash,
                             domain_limits=limits)
    cli.verbose(args, f"{settings.domain}: {settings.program} '' {settings.handler}; "
                f"hash method {settings.hash_method or 'default'}; domain limits "
                f"{'enabled' if settings.domain_limits else 'disabled'}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return cli.run(COMMAND, body, argv)
