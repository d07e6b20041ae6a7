"""vatrn [-v] [-s] [-d dom|-i dom|-u dom -i newdom] email|domain: ATRN access maps."""

from __future__ import annotations

from collections.abc import Sequence

from indimail_tw.admin import cli
from indimail_tw.admin.cli import Opt
from indimail_tw.admin.ops_maps import atrn_add, atrn_delete, atrn_list, atrn_rename
from indimail_tw.admin.validate import bad

COMMAND = cli.Command(
    "vatrn", "[-v] [-s] [-d dom|-i dom|-u dom -i newdom] email|domain",
    """Maintain atrn_map: which user may pull which domain's mail with ATRN (ODMR).
-i grants user@domain the ATRN domain dom, -d revokes it, -u old -i new
renames it.  -s lists every map, those of a user (user@domain) or of an ATRN
domain.""",
    [
        Opt("v", "verbose", None, "verbose"),
        Opt("s", "show", None, "list"),
        Opt("i", "insert", "domain", "grant this ATRN domain (with -u: the new name)"),
        Opt("d", "delete", "domain", "revoke this ATRN domain"),
        Opt("u", "update", "domain", "rename this ATRN domain to the one given by -i"),
    ],
    notes="Exit status: 0 done (IndiMail returns the number of rows changed; we "
          "return 1 when nothing matched).",
    operands=(0, 1))


def body(args: cli.Args) -> int:
    site = cli.site_of(args)
    target = args.operands[0] if args.operands else None
    changes = [x for x in (args.insert, args.delete) if x is not None]
    if not args.show and not changes:
        raise bad(f"must specify one of -s, -i, -u and -i, -d; {COMMAND.usage_line()}")
    if len(changes) > 1 or (args.update is not None and args.insert is None):
        raise bad(f"give one of -i, -d, -u old -i new; {COMMAND.usage_line()}")
    try:
        if changes:
            if target is None:
                raise bad("must supply email address")
            if args.update is not None:
                atrn_rename(site, target, args.update, args.insert)
                cli.verbose(args, f"{target}: {args.update} renamed to {args.insert}")
            elif args.insert is not None:
                atrn_add(site, target, args.insert)
                cli.verbose(args, f"{target} may pull {args.insert}")
            else:
                atrn_delete(site, target, args.delete)
                cli.verbose(args, f"{target} may no longer pull {args.delete}")
        else:
            rows = atrn_list(site, target)
            for user, domain, atrn_domain in rows:
                print(f"{user:<20} {domain:<20} {atrn_domain}")
            if not rows:
                cli.verbose(args, "No ATRN Maps present")
    finally:
        site.close()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return cli.run(COMMAND, body, argv)
