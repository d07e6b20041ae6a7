"""vmoduser [options] user@domain: change a user's flags, quota, comment, password, state."""

from __future__ import annotations

from collections.abc import Sequence

from indimail_tw.admin import cli
from indimail_tw.admin.cli import Opt
from indimail_tw.admin.ops_user import UserChanges, modify_user, parse_address
from indimail_tw.admin.validate import bad
from indimail_tw.auth.flags import Flags, describe

#: option letter -> pw_gid flag (IndiMail's vmoduser)
FLAG_OPTIONS = {
    "u": Flags.NO_DIALUP, "d": Flags.NO_PASSWD_CHNG, "p": Flags.NO_POP,
    "w": Flags.NO_WEBMAIL, "i": Flags.NO_IMAP, "b": Flags.BOUNCE_MAIL,
    "r": Flags.NO_RELAY, "a": Flags.QA_ADMIN, "s": Flags.NO_SMTP, "o": Flags.V_OVERRIDE,
    "0": Flags.V_USER0, "1": Flags.V_USER1, "2": Flags.V_USER2, "3": Flags.V_USER3,
}

COMMAND = cli.Command(
    "vmoduser", "[options] user@domain",
    """Modify a user.  Flag options set bits of pw_gid (with -t they toggle;
-x clears all bits first).""",
    [
        Opt("v", "verbose", None, "verbose"),
        Opt("n", "toggle_active", None, "toggle active <-> inactive"),
        Opt("q", "quota", "quota", "quota (k/m/g, NOQUOTA; +N / -N change the current one)"),
        Opt("c", "gecos", "comment", "comment (gecos) field"),
        Opt("P", "clear", "password", "set the password (hashed)"),
        Opt("e", "encrypted", "password", "set the password field verbatim"),
        Opt("h", "hash", "method", "hash method for -P: DES MD5 SHA-256 SHA-512 YESCRYPT"),
        Opt("m", "mechanism", "method", "with -P also store CRAM or SCRAM-SHA-1/256 secrets"),
        Opt("C", "keep_clear", None, "with -P store the clear text too (CRAM)"),
        Opt("S", "salt", "salt", "with -P a fixed salt"),
        Opt("I", "iterations", "iter", "with -P the SCRAM iteration count"),
        Opt("t", "toggle", None, "toggle the flags below instead of setting them"),
        Opt("u", "f_u", None, "NO_DIALUP"),
        Opt("d", "f_d", None, "NO_PASSWD_CHNG (no password change)"),
        Opt("p", "f_p", None, "NO_POP (no POP3 access)"),
        Opt("w", "f_w", None, "NO_WEBMAIL"),
        Opt("i", "f_i", None, "NO_IMAP (no IMAP access)"),
        Opt("b", "f_b", None, "BOUNCE_MAIL (bounce mail for this user)"),
        Opt("r", "f_r", None, "NO_RELAY (no relaying after SMTP AUTH)"),
        Opt("a", "f_a", None, "QA_ADMIN (domain administrator)"),
        Opt("s", "f_s", None, "NO_SMTP (no SMTP AUTH)"),
        Opt("o", "f_o", None, "V_OVERRIDE (not subject to domain limits)"),
        Opt("0", "f_0", None, "V_USER0"),
        Opt("1", "f_1", None, "V_USER1"),
        Opt("2", "f_2", None, "V_USER2"),
        Opt("3", "f_3", None, "V_USER3"),
        Opt("x", "clear_flags", None, "clear all flags"),
    ],
    notes="Not implemented: -D (date folders) and -l (vacation); upper case in the "
          "address is refused.",
    operands=(1, 1))


def body(args: cli.Args) -> int:
    site = cli.site_of(args)
    parse_address(site, args.operands[0])
    flags = 0
    for letter, flag in FLAG_OPTIONS.items():
        if getattr(args, f"f_{letter}"):
            flags |= int(flag)
    password = None
    if args.clear is not None or args.encrypted is not None:
        if args.clear is not None and args.encrypted is not None:
            raise bad("give -P or -e, not both")
        if args.clear == "":
            raise bad("empty password")
        password = cli.password_from(args, None, args.operands[0], clear_option=args.clear)
    elif args.hash or args.mechanism or args.keep_clear or args.salt or args.iterations:
        raise bad("-h, -m, -C, -S and -I need a password (-P or -e)")
    changes = UserChanges(toggle_active=args.toggle_active, quota=args.quota,
                          gecos=args.gecos, password=password, flags=flags,
                          toggle_flags=args.toggle, clear_flags=args.clear_flags)
    if changes.empty:
        raise bad(f"nothing to change; {COMMAND.usage_line()}")
    try:
        user = modify_user(site, args.operands[0], changes)
    finally:
        site.close()
    cli.verbose(args, f"{user.address}: {'active' if user.active else 'inactive'}, "
                f"flags {user.gid:#x} ({describe(user.gid)}), quota {user.shell}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return cli.run(COMMAND, body, argv)
