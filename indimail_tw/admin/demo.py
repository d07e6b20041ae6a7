"""indimail-demo: a ready-to-use demo installation (the first quick-start command).

Creates (once) a data root with a self-signed certificate, the demo domain
and a demo user, prints their credentials, and with ``--run`` starts
``twistd -n indimail`` on unprivileged loopback ports for every protocol this
release serves.  Running it again keeps the existing root and credentials.
"""

from __future__ import annotations

import argparse
import os
import secrets
import socket
import sys

from indimail_tw import listeners
from indimail_tw.errors import AdminError, StoreError

DEMO_DOMAIN = "demo.indimail.test"
DEMO_USER = "demo"
CREDENTIALS = "demo-credentials.txt"


def setup(root: str, domain: str = DEMO_DOMAIN, user: str = DEMO_USER) -> dict[str, str]:
    """Create the demo root if needed; return its credentials."""
    from indimail_tw.admin.ops_domain import add_domain
    from indimail_tw.admin.ops_user import add_user
    from indimail_tw.admin.site import Site
    from indimail_tw.tlsutil import make_self_signed

    env = {k: v for k, v in os.environ.items()
           if k not in ("CONTROLDIR", "BASE_PATH", "QUEUEDIR", "SYSCONFDIR", "INDIMAILDIR",
                        "QMAILHOME", "DOMAINDIR", "TCPDIR", "CERTDIR")}
    site = Site.resolve(root, env)
    site.paths.ensure()
    creds_file = os.path.join(site.paths.root, CREDENTIALS)
    if os.path.exists(creds_file):
        with open(creds_file) as f:
            return dict(line.rstrip("\n").split("=", 1) for line in f if "=" in line)

    control = site.control
    if not control.exists("me"):
        control.write_value("me", "localhost")
    if not control.exists("defaultdomain"):
        control.write_value("defaultdomain", domain)
    cert = os.path.join(site.paths.certs, "servercert.pem")
    if not os.path.exists(cert):
        make_self_signed(cert, socket.getfqdn() or "localhost")
    postmaster_pw = secrets.token_urlsafe(12)
    user_pw = secrets.token_urlsafe(12)
    add_domain(site, domain, postmaster_pw)
    add_user(site, f"{user}@{domain}", user_pw, gecos="Demo User")
    creds = {"domain": domain, "user": f"{user}@{domain}", "password": user_pw,
             "postmaster": f"postmaster@{domain}", "postmaster_password": postmaster_pw,
             "certificate": cert}
    fd = os.open(creds_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.writelines(f"{k}={v}\n" for k, v in creds.items())
    return creds


def twistd_argv(root: str, certificate: str) -> list[str]:
    """The twistd command line serving the demo root on loopback, unprivileged ports."""
    argv = [os.path.join(os.path.dirname(sys.executable), "twistd"), "-n", "--pidfile=",
            "indimail", "--root", root]
    for spec in listeners.PROTOCOLS.values():
        if spec.build is not None:
            argv += [f"--{spec.name}", spec.demo_description(certificate)]
    return argv


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="indimail-demo", description=__doc__.split("\n\n")[0],
        epilog="Ports: " + ", ".join(f"{s.name} {s.demo_port}"
                                     for s in listeners.PROTOCOLS.values() if s.build))
    parser.add_argument("--root", default=os.path.abspath("demo-root"),
                        help="demo data root [default: ./demo-root]")
    parser.add_argument("--run", action="store_true",
                        help="then start twistd -n indimail on the demo ports")
    args = parser.parse_args(argv)
    root = os.path.abspath(args.root)
    try:
        creds = setup(root)
    except (AdminError, StoreError, OSError) as e:
        print(f"indimail-demo: {e}", file=sys.stderr)
        return 1
    print(f"Demo root:    {root}")
    print(f"Demo domain:  {creds['domain']}")
    print(f"Demo user:    {creds['user']}   password: {creds['password']}")
    print(f"Postmaster:   {creds['postmaster']}   password: {creds['postmaster_password']}")
    print(f"Certificate:  {creds['certificate']} (self-signed)")
    print(f"Check a login: printf '{creds['user']}\\0{creds['password']}\\0\\0' | "
          f"INDIMAIL_ROOT={root} vchkpass /bin/false 3<&0; echo $?")
    command = twistd_argv(root, creds["certificate"])
    served = [s for s in listeners.PROTOCOLS.values() if s.build]
    print("Listening:    " + (", ".join(f"{s.name} 127.0.0.1:{s.demo_port}" for s in served)
                              or "no protocol listeners in this release yet"))
    sys.stdout.flush()
    if args.run:
        os.execv(command[0], command)
    else:
        print("Start it with: " + " ".join(command))
    return 0


if __name__ == "__main__":
    sys.exit(main())
