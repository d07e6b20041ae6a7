"""The IndiMail admin tools (vadddomain, vadduser, ...) and the operations behind them.

Each tool is a thin module ``indimail_tw/admin/<tool>.py`` with ``main(argv)``;
the work is done by :mod:`.ops_domain`, :mod:`.ops_user` and :mod:`.ops_maps`,
which other code may call directly::

    from indimail_tw.admin.site import Site
    from indimail_tw.admin.ops_domain import add_domain
    from indimail_tw.admin.ops_user import add_user

    site = Site.resolve(root)                      # --root / $INDIMAIL_ROOT
    add_domain(site, "example.com", "pm-password")
    add_user(site, "alice@example.com", "secret", quota="50M")

Failures raise :class:`indimail_tw.errors.AdminError` (``.status`` is the exit
status the CLI would use) or a store error; nothing is left half-done.
"""
