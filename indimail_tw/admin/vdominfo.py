"""vdominfo [-a|-n|-d|-b|-t|-l|-c] [domain]: show domains."""

from __future__ import annotations

from collections.abc import Sequence

from indimail_tw.admin import cli
from indimail_tw.admin.cli import Opt
from indimail_tw.admin.ops_domain import DomainInfo, all_domain_info, domain_info

COMMAND = cli.Command(
    "vdominfo", "[-a|-n|-d|-b|-t|-l|-c] [domain]",
    """Show a domain (or every domain): whether it is real or an alias, its
directory, the base directory of its homes, its user count, alias domains,
password hash method, domain limits and catch-all handler.  Without field
options everything is shown.""",
    [
        Opt("a", "all", None, "all fields (the default)"),
        Opt("n", "name", None, "domain name (and real domain of an alias)"),
        Opt("d", "dir", None, "domain directory"),
        Opt("b", "base", None, "base directory of the homes"),
        Opt("t", "total", None, "number of users"),
        Opt("l", "limits", None, "domain limits (vlimits) enabled or disabled"),
        Opt("c", "catchall", None, "catch-all handler"),
    ],
    operands=(0, 1))


def render(info: DomainInfo, fields: set[str]) -> list[str]:
    every = not fields
    out = [f"---- Domain {info.domain:<25} -------------------------------"]
    if every or "n" in fields:
        out.append(f"    domain: {info.domain}" + (
            f" aliased to {info.real_domain}" if info.real_domain else ""))
    if every or "d" in fields:
        out.append(f"Domain Dir: {info.directory}")
    if every or "b" in fields:
        out.append(f"  Base Dir: {info.base_path}")
    if every:
        out.append(f"crypt Hash: {info.hash_method or 'default'}")
        out.append(f"Users/Dir : {info.users_per_level}")
    if (every or "t" in fields) and info.users is not None:
        out.append(f"     Users: {info.users}")
    if every or "l" in fields:
        out.append(f"   vlimits: {'enabled' if info.domain_limits else 'disabled'}")
    if every or "c" in fields:
        out.append(f"  catchall: {info.handler or 'none'}"
                   + (f" ({info.program})" if info.program else ""))
    if every and info.alias_domains:
        out.append("AliasDomains:")
        out.extend(info.alias_domains)
    return out


def body(args: cli.Args) -> int:
    fields = set() if args.all else {letter for letter in args.seen if letter != "a"}
    site = cli.site_of(args)
    try:
        infos = ([domain_info(site, args.operands[0])] if args.operands
                 else all_domain_info(site))
    finally:
        site.close()
    for info in infos:
        print("\n".join(render(info, fields)))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return cli.run(COMMAND, body, argv)
