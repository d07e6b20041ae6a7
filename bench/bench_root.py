#!/usr/bin/env python3
"""A fresh indimail_tw root for the receive benchmarks: ``me`` bench.local, the
domain bench.test with user1..user10 (password "pw").

    bench/bench_root.py ROOT [--hold-local]    # --hold-local: control/holdlocal 1
"""

from __future__ import annotations

import argparse

from indimail_tw.admin.ops_domain import add_domain
from indimail_tw.admin.ops_user import add_user
from indimail_tw.admin.site import Site


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("root")
    p.add_argument("--hold-local", action="store_true",
                   help="hold local delivery (control/holdlocal) until it is cleared")
    args = p.parse_args()
    site = Site.resolve(args.root, {})
    site.paths.ensure()
    site.control.write_value("me", "bench.local")
    if args.hold_local:
        site.control.write_value("holdlocal", "1")
    add_domain(site, "bench.test", "pm-secret")
    for i in range(1, 11):
        add_user(site, f"user{i}@bench.test", "pw")
    site.close()


if __name__ == "__main__":
    main()
