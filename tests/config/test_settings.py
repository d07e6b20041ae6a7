"""Settings: registry, derived defaults, env overrides, errors, lookups, snapshots."""

from __future__ import annotations

import os

import pytest

from indimail_tw.config import (
    REGISTRY,
    ControlDir,
    EnvMode,
    Kind,
    Settings,
    VirtualDomains,
)
from indimail_tw.errors import ConfigError

NS = 1_000_000_000  # one second in nanoseconds, for os.utime


class Control:
    """A temporary control directory plus its environment."""

    def __init__(self, path) -> None:
        self.path = str(path)
        self.environ: dict[str, str] = {}

    def write(self, name: str, data: str) -> str:
        path = os.path.join(self.path, name)
        with open(path, "w") as f:
            f.write(data)
        return path

    def dir(self) -> ControlDir:
        return ControlDir(self.path, self.environ)

    def load(self, fqdn: str = "host.fqdn.example") -> Settings:
        return Settings.load(self.dir(), fqdn=lambda: fqdn)


@pytest.fixture
def ctl(tmp_path) -> Control:
    return Control(tmp_path)


# -- registry ----------------------------------------------------------------------------

REQUIRED = [
    "me", "defaultdomain", "defaulthost", "plusdomain", "idhost", "locals", "rcpthosts",
    "morercpthosts", "virtualdomains", "databytes", "maxhops", "maxrecipients", "maxcmdlen",
    "timeoutsmtpd", "timeoutread", "timeoutwrite", "timeoutremote", "timeoutconnect",
    "tarpitcount", "tarpitdelay", "greetdelay", "smtpgreeting", "queuelifetime",
    "concurrencyremote", "concurrencylocal", "bouncefrom", "bouncehost", "doublebounceto",
    "doublebouncehost", "bouncemaxbytes", "hash_method", "badmailfrom", "badrcptto",
    "badhelo", "relayclients", "relaydomains", "chkrcptdomains", "etrnhosts", "smtproutes",
    "helohost", "outgoingip", "envnoathost", "percenthack", "extraqueue", "queue_count",
]


def test_registry_covers_the_required_files():
    assert set(REQUIRED) <= set(REGISTRY)


def test_registry_entries_are_complete():
    envs = [s.env for s in REGISTRY.values() if s.env]
    assert len(envs) == len(set(envs))
    for name, s in REGISTRY.items():
        assert s.name == name
        assert isinstance(s.kind, Kind) and isinstance(s.env_mode, EnvMode)
        assert s.type
        assert s.filename is not None or s.env, name  # env-only knobs need a variable


def test_every_setting_has_a_default(ctl):
    s = ctl.load()
    assert set(s.as_dict()) == set(REGISTRY)
    assert all(s.source(name) == "default" for name in REGISTRY)


# -- derived defaults --------------------------------------------------------------------

DERIVED_FROM_ME = ["defaultdomain", "defaulthost", "plusdomain", "idhost", "envnoathost",
                   "localiphost", "helohost", "bouncehost", "doublebouncehost",
                   "login_domain"]


def test_defaults_derive_from_me(ctl):
    ctl.write("me", "mail.example.com\n")
    s = ctl.load(fqdn="unused.example")
    for name in DERIVED_FROM_ME:
        assert s.get(name) == "mail.example.com", name
    assert s.locals == ("mail.example.com",)
    assert s.rcpthosts == ("mail.example.com",)
    assert s.smtpgreeting == ("mail.example.com",)
    assert s.is_set("me") and not s.is_set("defaultdomain")


def test_missing_me_is_the_host_fqdn(ctl):
    s = ctl.load(fqdn="box.example.org")
    assert s.me == "box.example.org"
    assert s.defaulthost == "box.example.org"
    assert s.locals == ("box.example.org",)
    assert s.source("me") == "default"


def test_fqdn_is_not_asked_when_me_exists(ctl):
    ctl.write("me", "mail.example.com\n")

    def fqdn() -> str:
        raise AssertionError("should not be called")

    assert Settings.load(ctl.dir(), fqdn=fqdn).me == "mail.example.com"


def test_a_bad_fqdn_is_a_config_error(ctl):
    with pytest.raises(ConfigError, match=r"me .*not a host name"):
        ctl.load(fqdn="not a name")


def test_explicit_files_beat_derived_defaults(ctl):
    ctl.write("me", "mail.example.com\n")
    ctl.write("defaultdomain", "example.com\n")
    ctl.write("locals", "localhost\nmail.example.com\n")
    s = ctl.load()
    assert s.defaultdomain == "example.com"
    assert s.login_domain == "example.com"  # follows defaultdomain, not me
    assert s.plusdomain == "mail.example.com"
    assert s.locals == ("localhost", "mail.example.com")


def test_compiled_defaults(ctl):
    s = ctl.load()
    assert (s.databytes, s.maxhops, s.maxrecipients, s.maxcmdlen) == (0, 100, 0, 0)
    assert (s.timeoutsmtpd, s.timeoutread, s.timeoutwrite) == (1200, 4, 4)
    assert (s.timeoutremote, s.timeoutconnect) == (1200, 60)
    assert (s.tarpitcount, s.tarpitdelay, s.greetdelay) == (0, 5, 0)
    assert (s.queuelifetime, s.concurrencylocal, s.concurrencyremote) == (604800, 10, 20)
    assert (s.bouncefrom, s.doublebounceto, s.bouncemaxbytes) == ("MAILER-DAEMON",
                                                                 "postmaster", 50000)
    assert s.hash_method == "SHA-512"
    assert (s.queue_count, s.queue_start, s.queue_base) == (10, 1, None)
    assert s.virtualdomains == VirtualDomains()
    assert s.smtproutes == () and s.outgoingip == () and s.extraqueue == ()


# -- parsing files -----------------------------------------------------------------------


def test_values_are_typed(ctl):
    ctl.write("databytes", "10485760\n")
    ctl.write("holdremote", "1\n")
    ctl.write("greetdelay", "-3\n")
    ctl.write("maxhops", "0\n")
    ctl.write("hash_method", "# set by vadddomain\n\n2\n")
    s = ctl.load()
    assert s.databytes == 10485760
    assert s.holdremote is True
    assert s.greetdelay == -3
    assert s.maxhops == 100  # qmail: zero or less means the default
    assert s.hash_method == "SHA-256"


def test_lists_are_tuples_without_comments(ctl):
    ctl.write("badmailfrom", "# spammers\nspam@example.com\n\n@bad.example\n")
    ctl.write("etrnhosts", "etrn.example\n")
    s = ctl.load()
    assert s.badmailfrom == ("spam@example.com", "@bad.example")
    assert s.etrnhosts == ("etrn.example",)


def test_empty_value_file_gives_the_default(ctl):
    ctl.write("databytes", "\n")
    ctl.write("bouncefrom", "")
    s = ctl.load()
    assert s.databytes == 0 and s.source("databytes") == "default"
    assert s.bouncefrom == "MAILER-DAEMON"


def test_empty_doublebounceto_means_drop(ctl):
    ctl.write("doublebounceto", "\n")
    assert ctl.load().doublebounceto == ""


def test_empty_list_file_is_an_empty_list_not_the_default(ctl):
    ctl.write("me", "mail.example.com\n")
    ctl.write("locals", "# nothing local\n")
    s = ctl.load()
    assert s.locals == ()
    assert s.is_set("locals")


def test_virtualdomains_and_smtproutes_are_parsed(ctl):
    ctl.write("virtualdomains", "example.com:example.com\n.example.org:org\n")
    ctl.write("smtproutes", ":smarthost.example:587\nexample.net:\n")
    s = ctl.load()
    assert s.virtualdomains.rewrite("a@example.com") == "example.com-a@example.com"
    assert s.virtualdomains.lookup("a@x.example.org") == "org"
    assert [(r.domain, r.relay, r.port, r.line) for r in s.smtproutes] == [
        ("", "smarthost.example", 587, 1), ("example.net", "", None, 2)]


# -- errors name the file and line ----------------------------------------------------------


def test_bad_number_names_file_and_line(ctl):
    path = ctl.write("databytes", "abc\n")
    with pytest.raises(ConfigError) as e:
        ctl.load()
    assert str(e.value) == f"{path} line 1: not a number: 'abc'"


def test_bad_list_entry_names_its_line(ctl):
    path = ctl.write("virtualdomains", "# vdoms\na.example:a\n\nbroken\n")
    with pytest.raises(ConfigError) as e:
        ctl.load()
    assert str(e.value).startswith(f"{path} line 4: expected 'domain:prefix'")


def test_bad_route_port_names_its_line(ctl):
    path = ctl.write("smtproutes", "a.example:relay\nb.example:relay:smtp\n")
    with pytest.raises(ConfigError, match=f"^{path} line 2: not a port number"):
        ctl.load()


def test_bad_first_entry_names_its_line(ctl):
    path = ctl.write("hash_method", "# comment\nSHA-1\n")
    with pytest.raises(ConfigError, match=f"^{path} line 2: not a hash method"):
        ctl.load()


def test_bad_hostname(ctl):
    path = ctl.write("me", "mail example\n")
    with pytest.raises(ConfigError, match=f"^{path} line 1: not a host name"):
        ctl.load()


def test_bad_environment_value_names_the_variable(ctl):
    ctl.environ["MAXRECIPIENTS"] = "lots"
    with pytest.raises(ConfigError) as e:
        ctl.load()
    assert str(e.value) == "environment variable MAXRECIPIENTS: not a number: 'lots'"


def test_missing_control_directory(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        Settings.load(ControlDir(str(tmp_path / "nope"), {}), fqdn=lambda: "h.example")


# -- environment overrides -----------------------------------------------------------------


def test_environment_beats_file_beats_default(ctl):
    s = ctl.load()
    assert s.databytes == 0
    ctl.write("databytes", "1000\n")
    assert ctl.load().databytes == 1000
    ctl.environ["DATABYTES"] = "2000"
    s = ctl.load()
    assert s.databytes == 2000
    assert s.source("databytes") == "environment variable DATABYTES"


def test_empty_environment_variable_is_ignored(ctl):
    ctl.write("tarpitcount", "7\n")
    ctl.environ["TARPITCOUNT"] = ""
    assert ctl.load().tarpitcount == 7


@pytest.mark.parametrize("name, var, text, value", [
    ("maxrecipients", "MAXRECIPIENTS", "50", 50),
    ("tarpitcount", "TARPITCOUNT", "10", 10),
    ("tarpitdelay", "TARPITDELAY", "2", 2),
    ("greetdelay", "GREETDELAY", "-5", -5),
    ("hash_method", "PASSWORD_HASH", "1", "MD5"),
    ("defaultdomain", "QMAILDEFAULTDOMAIN", "example.org", "example.org"),
    ("defaulthost", "QMAILDEFAULTHOST", "example.org", "example.org"),
    ("plusdomain", "QMAILPLUSDOMAIN", "example.org", "example.org"),
    ("idhost", "QMAILIDHOST", "id.example.org", "id.example.org"),
    ("login_domain", "DEFAULT_DOMAIN", "users.example", "users.example"),
    ("queue_count", "QUEUE_COUNT", "5", 5),
    ("queue_start", "QUEUE_START", "0", 0),
    ("queue_base", "QUEUE_BASE", "/var/q", "/var/q"),
    ("qregex", "QREGEX", "1", True),
    ("outgoingip", "OUTGOINGIP", "192.0.2.9", ("192.0.2.9",)),
])
def test_environment_overrides(ctl, name, var, text, value):
    ctl.environ[var] = text
    assert ctl.load().get(name) == value


def test_queue_count_must_be_positive(ctl):
    ctl.environ["QUEUE_COUNT"] = "0"
    with pytest.raises(ConfigError, match="QUEUE_COUNT: must be at least 1"):
        ctl.load()


def test_derived_values_follow_an_overridden_source(ctl):
    ctl.write("me", "mail.example.com\n")
    ctl.environ["QMAILDEFAULTDOMAIN"] = "example.org"
    assert ctl.load().login_domain == "example.org"


def test_extraqueue_variable_replaces_or_disables_the_file(ctl):
    ctl.write("extraqueue", "archive@example.com\nlog@example.com\n")
    assert ctl.load().extraqueue == ("archive@example.com", "log@example.com")
    ctl.environ["EXTRAQUEUE"] = "copy@example.com"
    assert ctl.load().extraqueue == ("copy@example.com",)
    ctl.environ["EXTRAQUEUE"] = ""
    assert ctl.load().extraqueue == ()


def test_variable_naming_another_file(ctl, tmp_path):
    ctl.write("badmailfrom", "default@example.com\n")
    ctl.write("badmailfrom.strict", "strict@example.com\n")
    elsewhere = tmp_path / "outside"
    elsewhere.write_text("outside@example.com\n")
    ctl.environ["BADMAILFROM"] = "badmailfrom.strict"
    assert ctl.load().badmailfrom == ("strict@example.com",)
    ctl.environ["BADMAILFROM"] = str(elsewhere)
    assert ctl.load().badmailfrom == ("outside@example.com",)
    ctl.environ["BADMAILFROM"] = ""
    assert ctl.load().badmailfrom == ("default@example.com",)


def test_variable_naming_a_bad_file_name(ctl):
    ctl.environ["BADRCPTTO"] = "../../etc/passwd"
    with pytest.raises(ConfigError, match="environment variable BADRCPTTO"):
        ctl.load()


def test_variable_naming_a_missing_file_gives_the_default(ctl):
    ctl.environ["SMTPROUTESFILE"] = "routes.none"
    assert ctl.load().smtproutes == ()


# -- lookups -------------------------------------------------------------------------------


def test_rcpthosts_exact_and_suffix(ctl):
    ctl.write("rcpthosts", "example.com\n.example.net\n# .example.org\n")
    s = ctl.load()
    assert s.is_rcpthost("example.com")
    assert s.is_rcpthost("EXAMPLE.COM")
    assert not s.is_rcpthost("sub.example.com")  # exact entry: no subdomains
    assert s.is_rcpthost("a.example.net")
    assert s.is_rcpthost("a.b.example.net")
    assert not s.is_rcpthost("example.net")  # .suffix: subdomains only
    assert not s.is_rcpthost("x.example.org")
    assert not s.is_rcpthost("")
    assert not s.is_rcpthost("badexample.net")


def test_rcpthosts_defaults_to_me(ctl):
    ctl.write("me", "mail.example.com\n")
    s = ctl.load()
    assert s.is_rcpthost("mail.example.com")
    assert not s.is_rcpthost("example.com")
    assert not s.is_set("rcpthosts")


def test_morercpthosts_cdb(ctl):
    ctl.write("rcpthosts", "example.com\n")
    ctl.write("morercpthosts", "More.example\n.wild.example\n")
    d = ctl.dir()
    d.make_cdb("morercpthosts")
    s = ctl.load()
    assert s.is_rcpthost("more.example")
    assert s.is_rcpthost("MORE.example")
    assert s.is_rcpthost("a.wild.example")
    assert not s.is_rcpthost("wild.example")
    assert s.is_rcpthost("example.com")
    assert not s.is_rcpthost("other.example")
    assert s.morercpthosts == ("More.example", ".wild.example")
    assert s.warnings == ()


def test_morercpthosts_text_alone_is_ignored_with_a_warning(ctl):
    ctl.write("morercpthosts", "more.example\n")
    s = ctl.load()
    assert not s.is_rcpthost("more.example")
    assert any("morercpthosts.cdb does not" in w for w in s.warnings)


def test_stale_cdb_warning(ctl):
    path = ctl.write("morercpthosts", "a.example\n")
    ctl.dir().make_cdb("morercpthosts")
    os.utime(path + ".cdb", ns=(100 * NS, 100 * NS))
    os.utime(path, ns=(200 * NS, 200 * NS))
    assert any("newer than" in w for w in ctl.load().warnings)


def test_in_list_prefers_the_cdb(ctl):
    ctl.write("badmailfrom", "Text@example.com\n")
    s = ctl.load()
    assert s.in_list("badmailfrom", "text@EXAMPLE.com")
    assert s.cdb("badmailfrom") is None
    d = ctl.dir()
    d.remove_line("badmailfrom", "Text@example.com")
    d.add_line("badmailfrom", "compiled@example.com")
    d.make_cdb("badmailfrom")
    d.remove_line("badmailfrom", "compiled@example.com")
    d.add_line("badmailfrom", "text-only@example.com")
    s = ctl.load()
    assert s.in_list("badmailfrom", "Compiled@example.com")
    assert not s.in_list("badmailfrom", "text-only@example.com")
    with pytest.raises(KeyError):
        s.in_list("databytes", "x")


def test_is_local_is_exact(ctl):
    ctl.write("locals", "localhost\nMail.Example.com\n")
    s = ctl.load()
    assert s.is_local("mail.example.com")
    assert s.is_local("LOCALHOST")
    assert not s.is_local("sub.mail.example.com")
    assert not s.is_local("example.com")


def test_unknown_names(ctl):
    s = ctl.load()
    with pytest.raises(KeyError):
        s.get("no_such_file")
    with pytest.raises(AttributeError):
        s.no_such_file  # noqa: B018


# -- snapshots -----------------------------------------------------------------------------


def test_snapshot_does_not_follow_the_files(ctl):
    ctl.write("databytes", "100\n")
    ctl.write("morercpthosts", "a.example\n")
    d = ctl.dir()
    d.make_cdb("morercpthosts")
    s = ctl.load()
    ctl.write("databytes", "200\n")
    d.remove_line("morercpthosts", "a.example")
    d.make_cdb("morercpthosts")
    assert s.databytes == 100
    assert s.is_rcpthost("a.example")  # the snapshot keeps the cdb it opened


def test_changed_notices_edits_new_files_and_removals(ctl):
    ctl.write("rcpthosts", "a.example\n")
    s = ctl.load()
    assert not s.changed()
    ctl.dir().add_line("rcpthosts", "b.example")
    assert s.changed()
    s = ctl.load()
    ctl.write("databytes", "5\n")  # was missing
    assert s.changed()
    s = ctl.load()
    ctl.dir().write_value("me", "h.example")
    assert s.changed()
    s = ctl.load()
    os.unlink(os.path.join(ctl.path, "rcpthosts"))
    assert s.changed()


def test_changed_notices_a_recompiled_cdb(ctl):
    ctl.write("morercpthosts", "a.example\n")
    ctl.dir().make_cdb("morercpthosts")
    s = ctl.load()
    ctl.dir().make_cdb("morercpthosts")
    assert s.changed()


def test_with_environ_overlays_without_rereading(ctl):
    ctl.write("databytes", "100\n")
    ctl.write("me", "mail.example.com\n")
    s = ctl.load()
    assert s.with_environ({"TCPREMOTEIP": "192.0.2.1"}) is s
    assert s.with_environ({}) is s
    os.unlink(os.path.join(ctl.path, "databytes"))
    os.unlink(os.path.join(ctl.path, "me"))
    t = s.with_environ({"MAXRECIPIENTS": "3"})
    assert t.maxrecipients == 3 and s.maxrecipients == 0
    assert t.databytes == 100 and t.me == "mail.example.com"
    assert t.with_environ({"DATABYTES": "7"}).databytes == 7


def test_with_environ_errors_name_the_variable(ctl):
    s = ctl.load()
    with pytest.raises(ConfigError, match="environment variable DATABYTES"):
        s.with_environ({"DATABYTES": "x"})


def test_with_environ_reads_a_newly_named_file(ctl):
    ctl.write("badrcptto.port587", "nobody@example.com\n")
    s = ctl.load()
    assert s.badrcptto == ()
    assert s.with_environ({"BADRCPTTO": "badrcptto.port587"}).badrcptto == (
        "nobody@example.com",)
    assert not s.changed()
