"""vdeldomain [-v] domain: delete a virtual domain (or an alias domain)."""

from __future__ import annotations

from collections.abc import Sequence

from indimail_tw.admin import cli
from indimail_tw.admin.cli import Opt
from indimail_tw.admin.ops_domain import delete_domain

COMMAND = cli.Command(
    "vdeldomain", "[-v] domain",
    """Delete a domain.  A real domain loses its users (rows and homes), aliases,
lastauth, dir_control, ATRN, IP map and vlimits rows, its directory, its
control-file entries, and every alias domain that points to it.  An alias
domain loses only the alias: its aliasdomain row, symlink, control entries and
its line in the real domain's .aliasdomains.""",
    [Opt("v", "verbose", None, "verbose")],
    operands=(1, 1))


def body(args: cli.Args) -> int:
    site = cli.site_of(args)
    try:
        result = delete_domain(site, args.operands[0])
    finally:
        site.close()
    if result.real_domain:
        cli.verbose(args, f"deleted alias domain {result.domain} of {result.real_domain}")
    else:
        cli.verbose(args, f"deleted domain {result.domain} with {result.users} users")
        for alias in result.alias_domains:
            cli.verbose(args, f"deleted alias domain {alias}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return cli.run(COMMAND, body, argv)
