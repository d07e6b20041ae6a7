"""ControlDir: qmail's file shapes, cdb compile/lookup, and the admin editors."""

from __future__ import annotations

import os

import pytest

from indimail_tw.config import ControlDir
from indimail_tw.errors import ConfigError


@pytest.fixture
def control(tmp_path) -> ControlDir:
    return ControlDir(str(tmp_path), environ={})


def write(control: ControlDir, name: str, data: str | bytes) -> str:
    path = os.path.join(control.path, name)
    with open(path, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)
    return path


def read(control: ControlDir, name: str) -> str:
    with open(os.path.join(control.path, name)) as f:
        return f.read()


# -- one-value files ---------------------------------------------------------------


def test_value_is_first_line_stripped(control):
    write(control, "me", "  mail.example.com \t\nsecond line\n")
    assert control.value("me") == "mail.example.com"


def test_value_without_final_newline(control):
    write(control, "me", "mail.example.com")
    assert control.value("me") == "mail.example.com"


@pytest.mark.parametrize("data", ["", "\n", "   \t\n", "\nsecond\n"])
def test_empty_value_gives_default(control, data):
    write(control, "me", data)
    assert control.value("me") is None
    assert control.value("me", "fallback") == "fallback"


def test_missing_value_gives_default(control):
    assert control.value("nothing") is None
    assert control.value("nothing", "x") == "x"


# -- list files --------------------------------------------------------------------


def test_lines_skip_comments_and_blank_lines(control):
    write(control, "rcpthosts",
          "# local domains\nexample.com  \n\n\t\nexample.net\t\n#example.org\n")
    assert control.lines("rcpthosts") == ("example.com", "example.net")


def test_leading_blanks_are_kept_as_in_qmail(control):
    write(control, "badhelo", " # not a comment\n  spaced\n")
    assert control.lines("badhelo") == (" # not a comment", "  spaced")


def test_crlf_and_missing_final_newline(control):
    write(control, "locals", "a.example\r\nb.example")
    assert control.lines("locals") == ("a.example", "b.example")


def test_entries_carry_line_numbers(control):
    write(control, "smtproutes", "# routes\n\nexample.com:relay\n:smarthost\n")
    assert control.entries("smtproutes") == ((3, "example.com:relay"), (4, ":smarthost"))


def test_missing_list_is_empty(control):
    assert control.lines("rcpthosts") == ()
    assert control.entries("rcpthosts") == ()


def test_odd_bytes_survive(control):
    write(control, "badmailfrom", b"caf\xe9@example.com\n")
    (entry,) = control.lines("badmailfrom")
    control.add_line("badmailfrom", "x@example.com")
    with open(os.path.join(control.path, "badmailfrom"), "rb") as f:
        assert f.read() == b"caf\xe9@example.com\nx@example.com\n"
    assert entry.startswith("caf")


def test_unreadable_path_is_a_config_error(control):
    os.mkdir(os.path.join(control.path, "rcpthosts"))
    with pytest.raises(ConfigError, match="rcpthosts"):
        control.lines("rcpthosts")


# -- names -------------------------------------------------------------------------


def test_absolute_names_are_used_as_they_are(control, tmp_path):
    other = tmp_path / "elsewhere"
    other.write_text("x@example.com\n")
    assert control.file(str(other)) == str(other)
    assert control.lines(str(other)) == ("x@example.com",)


@pytest.mark.parametrize("name", ["", ".", "..", "../x", "a/../../b", "a//b", "a/", "a\0b"])
def test_bad_names_are_refused(control, name):
    with pytest.raises(ValueError):
        control.file(name)


def test_names_may_reach_into_subdirectories(control):
    os.mkdir(os.path.join(control.path, "certs"))
    write(control, "certs/tlsclients", "user@example.com\n")
    assert control.lines("certs/tlsclients") == ("user@example.com",)


# -- stamps ------------------------------------------------------------------------


def test_stamp_and_mtime(control):
    assert control.stamp("me") is None
    assert control.mtime("me") is None
    path = write(control, "me", "a.example\n")
    os.utime(path, ns=(1_000_000_000_000, 1_000_000_000_000))
    before = control.stamp("me")
    assert control.mtime("me") == 1000.0
    control.write_value("me", "b.example")
    assert control.stamp("me") != before


# -- editors -----------------------------------------------------------------------


def test_add_line_creates_the_file(control):
    assert control.add_line("rcpthosts", "example.com") is True
    assert read(control, "rcpthosts") == "example.com\n"
    assert os.stat(os.path.join(control.path, "rcpthosts")).st_mode & 0o777 == 0o644


def test_add_line_is_idempotent(control):
    assert control.add_line("rcpthosts", "example.com")
    assert control.add_line("rcpthosts", "example.com") is False
    assert control.add_line("rcpthosts", "example.com  ") is False
    assert read(control, "rcpthosts") == "example.com\n"


def test_add_line_keeps_comments_blank_lines_and_order(control):
    write(control, "rcpthosts", "# ours\nb.example\n\n# more\na.example")
    assert control.add_line("rcpthosts", "c.example")
    assert read(control, "rcpthosts") == "# ours\nb.example\n\n# more\na.example\nc.example\n"


def test_add_line_keeps_the_file_mode(control):
    path = write(control, "rcpthosts", "a.example\n")
    os.chmod(path, 0o600)
    control.add_line("rcpthosts", "b.example")
    assert os.stat(path).st_mode & 0o777 == 0o600


@pytest.mark.parametrize("line", ["a\nb", "a\rb", "a\0b", "", "   "])
def test_add_line_refuses_bad_lines(control, line):
    with pytest.raises(ValueError):
        control.add_line("rcpthosts", line)
    assert not control.exists("rcpthosts")


def test_remove_line_is_idempotent_and_keeps_comments(control):
    write(control, "rcpthosts", "# ours\na.example\nb.example\n\n# end\n")
    assert control.remove_line("rcpthosts", "a.example") is True
    assert control.remove_line("rcpthosts", "a.example") is False
    assert read(control, "rcpthosts") == "# ours\nb.example\n\n# end\n"


def test_remove_line_removes_duplicates(control):
    write(control, "locals", "a.example\nb.example\na.example \n")
    assert control.remove_line("locals", "a.example")
    assert read(control, "locals") == "b.example\n"


def test_remove_line_on_missing_file_creates_nothing(control):
    assert control.remove_line("rcpthosts", "a.example") is False
    assert not control.exists("rcpthosts")


def test_remove_matching_counts_and_never_sees_comments(control):
    write(control, "virtualdomains",
          "# example.com:example.com\nexample.com:example.com\nx.org:x.org\n"
          "sub.example.com:example.com\n")
    seen = []

    def predicate(entry: str) -> bool:
        seen.append(entry)
        return entry.endswith(":example.com")

    assert control.remove_matching("virtualdomains", predicate) == 2
    assert not any(entry.startswith("#") for entry in seen)
    assert read(control, "virtualdomains") == "# example.com:example.com\nx.org:x.org\n"
    assert control.remove_matching("virtualdomains", predicate) == 0


def test_write_value_replaces_the_file(control):
    write(control, "databytes", "100\nold junk\n")
    control.write_value("databytes", "2000")
    assert read(control, "databytes") == "2000\n"
    assert control.value("databytes") == "2000"
    with pytest.raises(ValueError):
        control.write_value("databytes", "1\n2")


def test_editors_leave_no_temporary_files(control):
    control.add_line("rcpthosts", "a.example")
    control.remove_line("rcpthosts", "a.example")
    control.write_value("me", "h.example")
    control.add_line("morercpthosts", "m.example")
    control.make_cdb("morercpthosts")
    assert sorted(os.listdir(control.path)) == [
        "me", "morercpthosts", "morercpthosts.cdb", "rcpthosts"]


# -- cdb ---------------------------------------------------------------------------


def test_make_cdb_round_trip(control):
    write(control, "morercpthosts", "# big list\nExample.COM  \n\nexample.net\nexample.net\n")
    assert control.make_cdb("morercpthosts") == 2
    assert control.cdb_has("morercpthosts", "example.com")
    assert control.cdb_has("morercpthosts", b"example.net")
    assert not control.cdb_has("morercpthosts", "Example.COM")  # keys are lower-cased
    assert not control.cdb_has("morercpthosts", "# big list")
    db = control.open_cdb("morercpthosts")
    assert sorted(db.keys()) == [b"example.com", b"example.net"]
    assert db[b"example.com"] == b""


def test_cdb_lookup_sees_a_recompiled_file(control):
    write(control, "morercpthosts", "a.example\n")
    control.make_cdb("morercpthosts")
    assert control.cdb_has("morercpthosts", "a.example")
    control.remove_line("morercpthosts", "a.example")
    control.add_line("morercpthosts", "b.example")
    control.make_cdb("morercpthosts")
    assert not control.cdb_has("morercpthosts", "a.example")
    assert control.cdb_has("morercpthosts", "b.example")
    os.unlink(os.path.join(control.path, "morercpthosts.cdb"))
    assert not control.cdb_has("morercpthosts", "b.example")


def test_missing_cdb(control):
    assert control.cdb_has("morercpthosts", "a.example") is False
    assert control.open_cdb("morercpthosts") is None


def test_make_cdb_of_empty_list(control):
    write(control, "morercpthosts", "# nothing yet\n")
    assert control.make_cdb("morercpthosts") == 0
    assert not control.cdb_has("morercpthosts", "a.example")


def test_make_cdb_without_source_is_a_config_error(control):
    with pytest.raises(ConfigError, match="morercpthosts"):
        control.make_cdb("morercpthosts")
    assert not control.exists("morercpthosts.cdb")


def test_damaged_cdb_is_a_config_error(control):
    write(control, "morercpthosts.cdb", b"garbage")
    with pytest.raises(ConfigError, match=r"morercpthosts\.cdb"):
        control.cdb_has("morercpthosts", "a.example")
