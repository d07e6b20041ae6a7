"""tcprules: syntax, matching order, cdb round trip, the CLI, reloading, and the server using it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from twisted.internet import task

from indimail_tw.policy.limits import ConnectionLimiter, max_connections, max_per_ip
from indimail_tw.policy.tcprules import (
    Action, RuleSet, RulesError, RulesFile, address_keys, candidate_keys, compile_rules, main,
    parse_action, parse_rules, write_cdb,
)
from tests.smtp.support import Conn, Site, ehlo, make_factory

RULES = """\
# comment

127.:allow,RELAYCLIENT=""
::1:allow,RELAYCLIENT=""
192.0.2.7:deny
192.0.2.10-12:allow,TAG="range"
10.2-3.:allow,TAG="prefix-range"
198.51.100.0/24:allow,TAG="cidr24",DATABYTES="1000"
198.51.0.0/16:allow,TAG="cidr16"
198.51.100.:allow,TAG="dotted24"
2001:db8::/32:allow,TAG=/v6 net/
2001:db8::5:allow,TAG="v6 host",!RELAYCLIENT
=mail.partner.example:allow,TAG="host"
=.partner.example:allow,TAG="suffix"
:allow,MAXPERIP="5"
"""


def tag(ruleset: RuleSet, ip: str, host: str | None = None):
    found = ruleset.match(ip, host)
    if found is None:
        return None
    env = dict(found[1].env)
    return ("deny" if not found[1].allow else env.get("TAG", "allow"))


@pytest.fixture(params=["text", "cdb"])
def ruleset(request, tmp_path):
    rules = parse_rules(RULES)
    if request.param == "text":
        return RuleSet.from_rules(rules)
    path = str(tmp_path / "tcp.smtp.cdb")
    write_cdb(rules, path, str(tmp_path / "tcp.smtp.tmp"))
    assert not os.path.exists(tmp_path / "tcp.smtp.tmp")
    return RuleSet.from_cdb(path)


def test_matching_order(ruleset):
    assert tag(ruleset, "127.0.0.1") == "allow"
    assert dict(ruleset.match("127.0.0.1")[1].env) == {"RELAYCLIENT": ""}
    assert tag(ruleset, "192.0.2.7") == "deny"
    assert tag(ruleset, "192.0.2.11") == "range"
    assert tag(ruleset, "192.0.2.13") == "allow"
    assert tag(ruleset, "10.3.9.9") == "prefix-range"
    assert tag(ruleset, "10.4.9.9") == "allow"
    assert tag(ruleset, "198.51.100.77") == "cidr24"       # first given for equal length
    assert tag(ruleset, "198.51.7.1") == "cidr16"
    assert tag(ruleset, "2001:db8::5") == "v6 host"
    assert tag(ruleset, "2001:0db8:0:0::9") == "v6 net"
    assert tag(ruleset, "::ffff:127.0.0.1") == "allow"     # IPv4-mapped
    assert tag(ruleset, "203.0.113.9", "mail.partner.example") == "host"
    assert tag(ruleset, "203.0.113.9", "MX.Partner.example.") == "suffix"
    assert tag(ruleset, "203.0.113.9", "mail.other.example") == "allow"
    assert dict(ruleset.match("203.0.113.9")[1].env) == {"MAXPERIP": "5"}
    assert ruleset.uses_hosts


def test_unset_and_values(ruleset):
    action = ruleset.match("2001:db8::5")[1]
    assert action.env == (("TAG", "v6 host"), ("RELAYCLIENT", None))
    assert action.environ({"RELAYCLIENT": "", "X": "1"}) == {"X": "1", "TAG": "v6 host"}


def test_action_parsing_and_encoding():
    action = parse_action('allow,A="x,y",B=/q"q/,!C')
    assert action == Action(True, (("A", "x,y"), ("B", 'q"q'), ("C", None)))
    assert action.encode() == b'+A=x,y\0+B=q"q\0-C\0'
    assert Action.decode(action.encode()) == action
    assert parse_action("deny").encode() == b"D\0"
    assert Action.decode(b"D\0+X=1\0") == Action(False, (("X", "1"),))


@pytest.mark.parametrize("line", [
    "1.2.3.4", "1.2.3.4:permit", "1.2.3.4:allow,X", "1.2.3.4:allow,X=\"open", "1.2.3.4:allow;X=1",
    "300.1.1.1:allow", "1.2.3:allow", "1.2.3.4.5.:allow", "1.2.3.9-2:allow", "1.2-3.4.5:allow",
    "1.2.3.0/33:allow", "1.2.3.0/x:allow", "2001:zz::1:allow", "2001:db8::/129:allow",
    "1.2.3.4:allow,=x=\"1\"",
])
def test_bad_rules(line):
    with pytest.raises(RulesError) as e:
        parse_rules("# first\n" + line + "\n")
    assert e.value.line == 2


def test_keys():
    assert address_keys("127.0/8") == ("_01111111",)
    assert address_keys("1.2.3.250-300") == tuple(f"1.2.3.{n}" for n in range(250, 256))
    assert address_keys("::1") == ("0000:0000:0000:0000:0000:0000:0000:0001",)
    assert address_keys("=Host.Example") == ("=host.example",)
    keys = list(candidate_keys("10.1.2.3", "a.b.example"))
    assert keys[:2] == ["10.1.2.3", "=a.b.example"]
    assert keys.index("10.1.2.") == keys.index("_" + "0" * 4 + "1010" + "0" * 7 + "1" + "0" * 6
                                               + "10") + 1
    assert keys[-3:] == ["=.example", "=", ""]


def test_duplicates_first_wins():
    rules = parse_rules("1.2.3.4:deny\n1.2.3.4:allow\n")
    assert not RuleSet.from_rules(rules).match("1.2.3.4")[1].allow
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        with open(os.path.join(d, "r.cdb"), "wb") as f:
            f.write(compile_rules(rules))
        assert not RuleSet.from_cdb(os.path.join(d, "r.cdb")).match("1.2.3.4")[1].allow


# -- the command ------------------------------------------------------------------------------

def run_cli(*args, stdin: str = "", env=None):
    return subprocess.run([sys.executable, "-m", "indimail_tw.policy.tcprules", *args],
                          input=stdin.encode(), capture_output=True, env=env)


def test_cli_classic_form(tmp_path):
    cdb, tmp = str(tmp_path / "tcp.smtp.cdb"), str(tmp_path / "tcp.smtp.tmp")
    result = run_cli(cdb, tmp, stdin=RULES)
    assert result.returncode == 0, result.stderr
    assert tag(RuleSet.from_cdb(cdb), "192.0.2.7") == "deny"
    with open(cdb, "rb") as f:
        before = f.read()
    result = run_cli(cdb, tmp, stdin="garbage line\n")
    assert result.returncode == 100 and b"unable to parse" in result.stderr
    with open(cdb, "rb") as f:
        assert f.read() == before                            # left alone
    assert run_cli(cdb).returncode == 100


def test_cli_root_form_and_check(tmp_path, capsys, monkeypatch):
    tcp = tmp_path / "tcp"
    tcp.mkdir()
    (tcp / "tcp.smtp").write_text(RULES)
    monkeypatch.delenv("TCPDIR", raising=False)
    monkeypatch.delenv("SYSCONFDIR", raising=False)
    env = dict(os.environ)
    assert main(["--root", str(tmp_path)]) == 0
    assert "15" not in capsys.readouterr().err
    assert os.path.exists(tcp / "tcp.smtp.cdb")
    assert main(["--check", "192.0.2.11", str(tcp / "tcp.smtp.cdb")]) == 0
    out = capsys.readouterr().out
    assert "allow" in out and "TAG='range'" in out
    assert main(["--check", "192.0.2.7", str(tcp / "tcp.smtp")]) == 0
    assert "deny" in capsys.readouterr().out
    assert main(["--root", str(tmp_path), "missing"]) == 111
    assert run_cli("--help", env=env).stdout.count(b"--root") >= 1


def test_console_script_installed():
    import shutil
    exe = shutil.which("tcprules", path=os.path.dirname(sys.executable))
    assert exe is not None


# -- reloading --------------------------------------------------------------------------------

def test_rules_file_prefers_cdb_and_reloads(tmp_path):
    clock = task.Clock()
    text = tmp_path / "tcp.smtp"
    rules = RulesFile(str(tmp_path), now=clock.seconds)
    assert rules.current() is None
    text.write_text("1.2.3.4:deny\n")
    assert rules.current() is None                      # checked less than a second ago
    clock.advance(1)
    assert not rules.current().match("1.2.3.4")[1].allow
    write_cdb(parse_rules("1.2.3.4:allow\n"), str(tmp_path / "tcp.smtp.cdb"),
              str(tmp_path / "tmp"))
    clock.advance(1)
    assert rules.current().match("1.2.3.4")[1].allow
    os.unlink(tmp_path / "tcp.smtp.cdb")
    text.write_text("broken\n")
    clock.advance(1)
    assert rules.current().match("1.2.3.4")[1].allow     # bad text: keep the previous rules


# -- the server applies them -----------------------------------------------------------------

@pytest.fixture
def site():
    s = Site()
    s.store.add_user("alice@example.com")
    yield s
    s.cleanup()


def rules_for(site, text: str) -> RulesFile:
    with open(os.path.join(site.paths.tcp, "tcp.smtp"), "w") as f:
        f.write(text)
    return RulesFile(site.paths.tcp)


def test_server_deny_and_environment(site):
    rules = rules_for(site, '192.0.2.66:deny\n192.0.2.10:allow,RELAYCLIENT="",DATABYTES="50"\n'
                            ':allow\n')
    factory = make_factory(site, rules=rules)
    denied = Conn(factory, ip="192.0.2.66")
    assert denied.output() == b"" and denied.closed
    conn = Conn(factory, ip="192.0.2.10")
    assert "250-SIZE 50" in ehlo(conn)
    conn.send("MAIL FROM:<s@remote.example>\r\nRCPT TO:<x@elsewhere.example>\r\n")
    assert conn.codes() == [250, 250]
    other = Conn(factory, ip="192.0.2.11")
    ehlo(other)
    other.send("MAIL FROM:<s@remote.example>\r\nRCPT TO:<x@elsewhere.example>\r\n")
    assert other.codes() == [250, 553]


def test_server_over_ipv6(site):
    rules = rules_for(site, '::1:allow,RELAYCLIENT=""\n:allow\n')
    factory = make_factory(site, rules=rules)
    conn = Conn(factory, ip="::1", ipv6=True)
    ehlo(conn)
    conn.send("MAIL FROM:<s@remote.example>\r\nRCPT TO:<x@elsewhere.example>\r\nDATA\r\n"
              "x\r\n.\r\n")
    assert conn.codes() == [250, 250, 354, 250]
    envelope, data = site.queue.messages[0]
    assert envelope.remote_ip == "::1" and b"(unknown [IPv6:::1])" in data
    other = Conn(factory, ip="2001:db8::7", ipv6=True)
    ehlo(other)
    other.send("MAIL FROM:<s@remote.example>\r\nRCPT TO:<x@elsewhere.example>\r\n")
    assert other.codes() == [250, 553]


def test_server_limits(site):
    rules = rules_for(site, '192.0.2.10:allow,MAXPERIP="2"\n:allow\n')
    factory = make_factory(site, rules=rules)
    a, b = Conn(factory), Conn(factory)
    c = Conn(factory)
    assert c.lines() == ["421 4.7.0 too many connections from your address, try again later"]
    assert c.closed
    c.lose()
    a.lose()
    assert Conn(factory).codes() == [220]
    site.environ["MAXDAEMONS"] = "2"
    assert Conn(factory, ip="192.0.2.99").codes() == [421]
    b.lose()
    assert Conn(factory, ip="192.0.2.99").codes() == [220]


def test_concurrencyincoming_control_file(site):
    site.write_control("concurrencyincoming", "1\n")
    factory = make_factory(site)
    assert Conn(factory).codes() == [220]
    assert Conn(factory, ip="192.0.2.77").codes() == [421]


def test_limit_helpers():
    assert max_connections({}, None) == 100
    assert max_connections({"MAXDAEMONS": "7"}, "3") == 7
    assert max_connections({}, "3") == 3
    assert max_per_ip({}) == 20 and max_per_ip({"MAXPERIP": "0"}) == 0
    limiter = ConnectionLimiter()
    assert limiter.admit("a", 2, 1) is None
    assert limiter.admit("a", 2, 1) is not None
    assert limiter.admit("b", 2, 1) is None
    assert limiter.admit("c", 2, 0) is not None
    limiter.release("a")
    assert limiter.per_ip == {"b": 1} and limiter.total == 1
