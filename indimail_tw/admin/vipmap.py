"""vipmap [-v] [-d ip|-i ip|-u ip|-p] [domain]: map local IP addresses to domains."""

from __future__ import annotations

from collections.abc import Sequence

from indimail_tw.admin import cli
from indimail_tw.admin.cli import Opt
from indimail_tw.admin.ops_maps import ipmap_add, ipmap_delete, ipmap_list, ipmap_update
from indimail_tw.admin.validate import bad

COMMAND = cli.Command(
    "vipmap", "[-v] [-d ip|-i ip|-u ip|-p] [domain]",
    """Maintain ip_alias_map: a login without @domain on local address ip belongs
to domain.  -i adds a mapping, -u changes the domain of a mapped address, -d
deletes a mapping, -p (or -s, or no option) lists them (those of one domain
when given).  IPv4 and IPv6 addresses are stored in canonical form.""",
    [
        Opt("v", "verbose", None, "verbose"),
        Opt("i", "insert", "ip", "map ip to domain"),
        Opt("a", "add", "ip", "same as -i"),
        Opt("u", "update", "ip", "map an already mapped ip to domain"),
        Opt("d", "delete", "ip", "delete the mapping of ip to domain"),
        Opt("p", "print", None, "list the mappings"),
        Opt("s", "show", None, "same as -p"),
    ],
    notes="Exit status: 0 done (IndiMail returns the number of rows changed; we "
          "return 1 when nothing matched).",
    operands=(0, 1))


def body(args: cli.Args) -> int:
    site = cli.site_of(args)
    domain = args.operands[0] if args.operands else None
    insert = args.insert or args.add
    actions = [x for x in (insert, args.update, args.delete) if x is not None]
    if len(actions) > 1:
        raise bad(f"give only one of -i, -u, -d; {COMMAND.usage_line()}")
    try:
        if actions:
            if domain is None:
                raise bad(f"must supply a domain; {COMMAND.usage_line()}")
            if insert is not None:
                ip = ipmap_add(site, insert, domain)
            elif args.update is not None:
                ip = ipmap_update(site, args.update, domain)
            else:
                ip = ipmap_delete(site, args.delete, domain)
            cli.verbose(args, f"{ip} {domain}: done")
        else:
            rows = ipmap_list(site, domain)
            for ip, mapped in rows:
                print(f"{ip} {mapped}")
            if not rows:
                cli.verbose(args, "No IP Maps present")
    finally:
        site.close()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return cli.run(COMMAND, body, argv)
