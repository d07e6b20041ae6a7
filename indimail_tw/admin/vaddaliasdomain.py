"""vaddaliasdomain [-v] new_domain old_domain: make new_domain an alias of old_domain."""

from __future__ import annotations

from collections.abc import Sequence

from indimail_tw.admin import cli
from indimail_tw.admin.cli import Opt
from indimail_tw.admin.ops_domain import add_alias_domain

COMMAND = cli.Command(
    "vaddaliasdomain", "[-v] new_domain old_domain",
    """All accounts of old_domain also answer at new_domain: an aliasdomain row,
the symlink domains/new_domain -> old_domain, rcpthosts and virtualdomains
entries, and a line in old_domain's .aliasdomains.""",
    [Opt("v", "verbose", None, "verbose")],
    operands=(2, 2))


def body(args: cli.Args) -> int:
    site = cli.site_of(args)
    alias, domain = args.operands
    try:
        real = add_alias_domain(site, alias, domain)
    finally:
        site.close()
    cli.verbose(args, f"{alias} is now an alias domain of {real}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return cli.run(COMMAND, body, argv)
