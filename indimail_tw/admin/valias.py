"""valias [-v] [-s] [-S] [-d line] [-i line] [-u old -i new] alias@domain|@domain."""

from __future__ import annotations

from collections.abc import Sequence

from indimail_tw.admin import cli
from indimail_tw.admin.cli import Opt
from indimail_tw.admin.ops_maps import (
    add_alias_lines, delete_alias_lines, list_aliases, replace_alias_line, track_aliases,
)
from indimail_tw.admin.validate import bad

COMMAND = cli.Command(
    "valias", "[-v] [-s] [-S] [-d line] [-i line] [-u old -i new] alias@domain|@domain",
    """Maintain valias rows: delivery lines of an alias.  A line is &user@domain
(or user@domain) to forward, /path/Maildir/ to store, or |program to pipe.
Without -i/-d/-u, list the alias's lines (-s; @domain: the whole domain; no
argument: every alias).  -S lists the aliases that deliver to an address.""",
    [
        Opt("v", "verbose", None, "verbose"),
        Opt("s", "show", None, "list (the default)"),
        Opt("S", "track", None, "list the aliases delivering to the given address"),
        Opt("i", "insert", "line", "add a line (repeatable; with -u the new line)",
            repeat=True),
        Opt("d", "delete", "line", "delete a line (repeatable)", repeat=True),
        Opt("u", "update", "old", "replace line old with the line given by -i"),
    ],
    operands=(0, 1))


def body(args: cli.Args) -> int:
    site = cli.site_of(args)
    target = args.operands[0] if args.operands else None
    actions = sum(bool(x) for x in (args.insert or args.update, args.delete, args.track))
    if actions > 1:
        raise bad(f"give only one of -i, -d, -u, -S; {COMMAND.usage_line()}")
    try:
        if args.update is not None:
            if len(args.insert) != 1 or target is None:
                raise bad(f"-u old needs exactly one -i new and an alias; "
                          f"{COMMAND.usage_line()}")
            replace_alias_line(site, target, args.update, args.insert[0])
            cli.verbose(args, f"{target}: replaced {args.update} with {args.insert[0]}")
        elif args.insert or args.delete:
            if target is None:
                raise bad("must supply alias email address")
            if args.insert:
                lines = add_alias_lines(site, target, args.insert)
                cli.verbose(args, f"{target}: " + ", ".join(lines))
            else:
                delete_alias_lines(site, target, args.delete)
                cli.verbose(args, f"{target}: deleted {len(args.delete)} line(s)")
        else:
            if args.track:
                if target is None:
                    raise bad("-S needs an address")
                rows = [(a, d, target) for a, d, _ in track_aliases(site, target)]
            else:
                rows = list_aliases(site, target)
            for alias, domain, line in rows:
                print(f"{alias}@{domain} -> {line}")
            if not rows:
                cli.verbose(args, "no aliases")
    finally:
        site.close()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return cli.run(COMMAND, body, argv)
