"""Maildir++ quota: spec parsing, the maildirsize file, recalculation, the delivery check."""

from __future__ import annotations

import multiprocessing
import os

import pytest

from indimail_tw.fsutil import make_maildir
from indimail_tw.maildir import quota as q
from indimail_tw.maildir.quota import (
    Quota,
    add_usage,
    check_quota,
    format_quota,
    needs_recalc,
    parse_quota,
    parse_quota_arg,
    read_usage,
    recalculate,
    write_header,
)

K, M, G = 1024, 1024**2, 1024**3
NOW = 1_700_000_000.0


@pytest.fixture
def maildir(tmp_path):
    path = str(tmp_path / "Maildir")
    make_maildir(path)
    return path


def deliver(directory, name, size=10, content=None):
    """Put a message file into ``directory`` (created if needed)."""
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, name), "wb") as f:
        f.write(content if content is not None else b"x" * size)


def folder(maildir, name, marker=True):
    path = os.path.join(maildir, name)
    make_maildir(path)
    if marker:
        open(os.path.join(path, "maildirfolder"), "wb").close()
    return path


def file_text(maildir):
    with open(os.path.join(maildir, "maildirsize")) as f:
        return f.read()


def set_mtime(maildir, mtime):
    os.utime(os.path.join(maildir, "maildirsize"), (mtime, mtime))


# -- parse_quota ---------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("5000000", Quota(5000000)),
    ("5000000,200", Quota(5000000, 200)),
    ("0", Quota(0)),
    ("5k", Quota(5 * K)),
    ("5K", Quota(5 * K)),
    ("5m", Quota(5 * M)),
    ("5M", Quota(5 * M)),
    ("2g", Quota(2 * G)),
    ("2G,10", Quota(2 * G, 10)),
    ("5000000S", Quota(5000000)),
    ("5000000S,200C", Quota(5000000, 200)),
    ("200C,5000000S", Quota(5000000, 200)),
    ("200C", Quota(0, 200)),
    (" 5000 , 7 ", Quota(5000, 7)),
    ("010", Quota(10)),
    ("NOQUOTA,100", Quota(0, 100)),
])
def test_parse_quota(text, expected):
    assert parse_quota(text) == expected


@pytest.mark.parametrize("text", ["NOQUOTA", "noquota", "NoQuota", " NOQUOTA ", "NOQUOTA,0"])
def test_parse_quota_noquota(text):
    assert parse_quota(text) is None


@pytest.mark.parametrize("text", [
    "", "  ", "abc", "-5", "+5", "5x", "5.5M", "5 M", "5MB", "0x10", "5,6,7", "5,", ",5",
    "5,10k", "5S,6S", "5C,6C", "100C,5000", "5000,100S", "NOQUOTA,5S", "QUOTA", "9" * 30,
    "\u0665", "5,\u0665",  # non-ASCII digits
])
def test_parse_quota_rejects(text):
    with pytest.raises(ValueError, match="quota"):
        parse_quota(text)


def test_quota_values_are_checked():
    with pytest.raises(ValueError):
        Quota(-1)
    with pytest.raises(ValueError):
        Quota(1, -1)
    assert Quota(0).unlimited and not Quota(0, 1).unlimited and not Quota(1).unlimited


# -- format_quota and round trips -----------------------------------------------

def test_format_quota():
    assert format_quota(None) == "NOQUOTA"
    assert format_quota(Quota(5000000)) == "5000000"
    assert format_quota(Quota(5000000, 200)) == "5000000,200"
    assert format_quota(Quota(0, 200)) == "0,200"


@pytest.mark.parametrize("value", [None, Quota(0), Quota(1), Quota(5 * M, 100), Quota(0, 7)])
def test_round_trip_quota(value):
    assert parse_quota(format_quota(value)) == value
    assert parse_quota_arg(format_quota(value)) == value


@pytest.mark.parametrize("text, canonical", [
    ("5M", str(5 * M)), ("5000000S,200C", "5000000,200"), ("noquota", "NOQUOTA"), ("7,3", "7,3"),
])
def test_round_trip_text(text, canonical):
    assert format_quota(parse_quota(text)) == canonical


# -- parse_quota_arg ---------------------------------------------------------------

def test_arg_absolute_forms():
    assert parse_quota_arg("5M") == Quota(5 * M)
    assert parse_quota_arg("5m,100") == Quota(5 * M, 100)
    assert parse_quota_arg("1g") == Quota(G)
    assert parse_quota_arg("3k") == Quota(3 * K)
    assert parse_quota_arg("5000000S,200C") == Quota(5000000, 200)
    assert parse_quota_arg("NOQUOTA") is None
    assert parse_quota_arg("noQuota", Quota(5, 5)) is None


def test_arg_absolute_keeps_current_count_unless_given():
    current = Quota(5 * M, 100)
    assert parse_quota_arg("10M", current) == Quota(10 * M, 100)
    assert parse_quota_arg("10M,7", current) == Quota(10 * M, 7)
    assert parse_quota_arg("10M") == Quota(10 * M)


def test_arg_relative():
    current = Quota(5 * M, 100)
    assert parse_quota_arg("+1M", current) == Quota(6 * M, 100)
    assert parse_quota_arg("-1m", current) == Quota(4 * M, 100)
    assert parse_quota_arg("+1024", current) == Quota(5 * M + K, 100)
    assert parse_quota_arg("-2k", Quota(3 * K)) == Quota(K)
    assert parse_quota_arg("+1g", current) == Quota(G + 5 * M, 100)


@pytest.mark.parametrize("text, current", [
    ("-5M", Quota(5 * M)),          # leaves zero, which would mean unlimited
    ("-6M", Quota(5 * M)),          # negative
    ("+5", None),                   # NOQUOTA has no byte limit to change
    ("+5", Quota(0, 10)),           # unlimited bytes, count limit only
    ("+1M,5", Quota(5 * M)),        # relative changes carry no count
    ("+", Quota(5)), ("-", Quota(5)), ("++5", Quota(5)), ("+5x", Quota(5)), ("+5S", Quota(5)),
    ("", None), ("garbage", None), ("5,6,7", None), ("-1", None),
])
def test_arg_rejects(text, current):
    with pytest.raises(ValueError):
        parse_quota_arg(text, current)


# -- maildirsize: header, reading, appending ---------------------------------------

def test_write_header_format_and_read(maildir):
    deliver(os.path.join(maildir, "new"), "1.1.host,S=300", size=1)
    usage = write_header(maildir, Quota(1000))
    assert file_text(maildir) == "1000S\n300 1\n"
    assert (usage.bytes, usage.count, usage.quota, usage.lines) == (300, 1, Quota(1000), 1)
    write_header(maildir, Quota(5000, 10))
    assert file_text(maildir) == "5000S,10C\n300 1\n"
    read = read_usage(maildir)
    assert (read.bytes, read.count, read.quota, read.lines) == (300, 1, Quota(5000, 10), 1)
    assert not read.corrupt
    assert read.size_of_file == len("5000S,10C\n300 1\n")


def test_write_header_noquota_removes_file(maildir):
    write_header(maildir, Quota(1000))
    assert write_header(maildir, None) is None
    assert read_usage(maildir) is None
    assert write_header(maildir, None) is None  # already gone: fine
    write_header(maildir, Quota(1000))
    write_header(maildir, Quota(0))
    assert not os.path.exists(os.path.join(maildir, "maildirsize"))


def test_add_usage_sums_deltas(maildir):
    write_header(maildir, Quota(10000, 50))
    assert add_usage(maildir, 500, 1)
    assert add_usage(maildir, 250, 1)
    assert add_usage(maildir, -500, -1)
    usage = read_usage(maildir)
    assert (usage.bytes, usage.count, usage.lines) == (250, 1, 4)
    assert file_text(maildir).endswith("500 1\n250 1\n-500 -1\n")


def test_add_usage_without_file_creates_nothing(maildir):
    assert add_usage(maildir, 10, 1) is False
    assert read_usage(maildir) is None


def test_read_usage_tolerates_courier_spacing_and_flags_garbage(maildir):
    path = os.path.join(maildir, "maildirsize")
    with open(path, "w") as f:
        f.write("2000S,5C\n  100    1\n\n-20 0\n")
    usage = read_usage(maildir)
    assert (usage.bytes, usage.count, usage.lines, usage.corrupt) == (80, 1, 2, False)
    with open(path, "a") as f:
        f.write("oops\n1_000 1\n1 2 3\n12 1")  # garbage lines and a torn last line
    usage = read_usage(maildir)
    assert usage.corrupt and (usage.bytes, usage.count) == (80, 1)
    assert needs_recalc(usage, NOW, mtime=NOW)


def test_read_usage_headers(maildir):
    path = os.path.join(maildir, "maildirsize")
    for header, expected, corrupt in [("0S", Quota(0), False), ("", None, False),
                                      ("rubbish", None, True), ("1000", Quota(1000), False)]:
        with open(path, "w") as f:
            f.write(f"{header}\n1 1\n")
        usage = read_usage(maildir)
        assert (usage.quota, usage.corrupt) == (expected, corrupt), header


def test_concurrent_appends_from_processes(maildir):
    write_header(maildir, Quota(10**9))
    jobs = [(maildir, 100 + i % 7, 1) for i in range(300)] + [(maildir, -50, -1)] * 60
    with multiprocessing.get_context("spawn").Pool(6) as pool:
        results = pool.starmap(add_usage, jobs, chunksize=5)
    assert all(results)
    usage = read_usage(maildir)
    assert not usage.corrupt
    assert usage.lines == 1 + len(jobs)
    assert usage.bytes == sum(size for _, size, _ in jobs)
    assert usage.count == 300 - 60


def test_concurrent_recalculations_do_not_interleave(maildir):
    for i in range(40):
        deliver(os.path.join(maildir, "cur"), f"{i}.x.host,S=1000:2,S")
    jobs = [(maildir, Quota(10**6, 100))] * 24
    with multiprocessing.get_context("spawn").Pool(6) as pool:
        pool.starmap(recalculate, jobs)
    assert file_text(maildir) == "1000000S,100C\n40000 40\n"
    assert os.listdir(os.path.join(maildir, "tmp")) == []


# -- recalculation -----------------------------------------------------------------

def build_tree(maildir):
    """INBOX, two folders, a Trash with a subfolder, and things that are not counted."""
    deliver(os.path.join(maildir, "new"), "1.a.host,S=1000", size=3)      # size from name
    deliver(os.path.join(maildir, "cur"), "2.b.host,S=2000:2,ST", size=3)  # T: still counted
    deliver(os.path.join(maildir, "cur"), "3.c.host:2,S", size=70)         # stat size
    deliver(os.path.join(maildir, "cur"), ".hidden", size=5000)            # ignored
    deliver(os.path.join(maildir, "tmp"), "4.d.host,S=9999", size=1)       # tmp: ignored
    sent = folder(maildir, ".Sent")
    deliver(os.path.join(sent, "cur"), "5.e.host,S=400,W=410:2,S", size=1)
    drafts = folder(maildir, ".Drafts", marker=False)                     # cur/new/tmp only
    deliver(os.path.join(drafts, "new"), "6.f.host", size=30)
    trash = folder(maildir, ".Trash")
    deliver(os.path.join(trash, "cur"), "7.g.host,S=5000:2,S", size=1)
    trash_sub = folder(maildir, ".Trash.Old")
    deliver(os.path.join(trash_sub, "new"), "8.h.host", size=600)
    deliver(os.path.join(maildir, ".NotAFolder", "cur"), "9.i.host,S=7000")  # no marker, no tmp
    deliver(maildir, ".notadir", size=8000)
    os.makedirs(os.path.join(maildir, "cur", "subdir"))                   # a directory, ignored


def test_recalculate_inbox_and_folders_without_trash(maildir):
    build_tree(maildir)
    usage = recalculate(maildir, Quota(50000, 100))
    assert (usage.bytes, usage.count) == (1000 + 2000 + 70 + 400 + 30, 5)
    assert file_text(maildir) == "50000S,100C\n3500 5\n"
    assert usage == read_usage(maildir)


def test_recalculate_with_trash(maildir):
    build_tree(maildir)
    usage = recalculate(maildir, Quota(50000), include_trash=True)
    assert (usage.bytes, usage.count) == (3500 + 5000 + 600, 7)
    assert file_text(maildir) == "50000S\n9100 7\n"


def test_recalculate_without_size_in_names(maildir):
    deliver(os.path.join(maildir, "new"), "1.a.host", size=123)
    deliver(os.path.join(maildir, "cur"), "2.b.host:2,S", size=77)
    deliver(os.path.join(maildir, "cur"), "3.c.host,S=:2,S", size=5)  # empty S=: stat
    deliver(os.path.join(maildir, "cur"), "4.d.host:2,S=99", size=6)  # S= in info part: stat
    usage = recalculate(maildir, None)
    assert (usage.bytes, usage.count, usage.quota) == (211, 4, Quota(0))
    assert file_text(maildir) == "0S\n211 4\n"


def test_recalculate_empty_and_missing_dirs(tmp_path):
    path = str(tmp_path / "bare")
    os.makedirs(path)  # no cur/new/tmp at all
    usage = recalculate(path, Quota(10))
    assert (usage.bytes, usage.count) == (0, 0)
    assert file_text(path) == "10S\n0 0\n"


def test_recalculate_rescans_when_a_directory_changes(maildir, monkeypatch):
    deliver(os.path.join(maildir, "new"), "1.a.host,S=100")
    real = q._count_dir
    new = os.path.join(maildir, "new")
    raced = []

    def racing_count(directory):
        result = real(directory)
        if directory == new and not raced:  # a delivery lands just after new/ was counted
            raced.append(True)
            deliver(new, "2.b.host,S=50")
            os.utime(new, ns=(1, 1))  # a distinct mtime, whatever the clock granularity
        return result

    monkeypatch.setattr(q, "_count_dir", racing_count)
    usage = recalculate(maildir, Quota(1000))
    assert (usage.bytes, usage.count) == (150, 2)


def test_recalculate_replaces_header_and_drops_deltas(maildir):
    deliver(os.path.join(maildir, "new"), "1.a.host,S=100")
    write_header(maildir, Quota(1000))
    add_usage(maildir, 999, 9)
    recalculate(maildir, Quota(2000, 5))
    assert file_text(maildir) == "2000S,5C\n100 1\n"


# -- needs_recalc ------------------------------------------------------------------

def usage_of(size_of_file=100, mtime=NOW, size=0, count=0, corrupt=False):
    return q.Usage(size, count, Quota(1000), 1, size_of_file, mtime, corrupt)


def test_needs_recalc_rules():
    assert needs_recalc(None, NOW)
    assert not needs_recalc(usage_of(), NOW)
    assert not needs_recalc(usage_of(size_of_file=8192), NOW)
    assert needs_recalc(usage_of(size_of_file=8193), NOW)
    assert not needs_recalc(usage_of(mtime=NOW - 43199), NOW)
    assert needs_recalc(usage_of(mtime=NOW - 43200), NOW)
    assert needs_recalc(usage_of(size=-1), NOW)
    assert needs_recalc(usage_of(count=-1), NOW)
    assert needs_recalc(usage_of(corrupt=True), NOW)


def test_needs_recalc_custom_limits_and_mtime():
    assert needs_recalc(usage_of(size_of_file=5121), NOW, max_size=5120)
    assert needs_recalc(usage_of(mtime=NOW - 60), NOW, max_age=60)
    assert not needs_recalc(usage_of(mtime=NOW - 60), NOW, max_age=61)
    assert needs_recalc(usage_of(mtime=NOW), NOW, mtime=NOW - 43200)
    assert not needs_recalc(usage_of(mtime=0), NOW, mtime=NOW)


def test_needs_recalc_on_real_file(maildir):
    write_header(maildir, Quota(1000))
    set_mtime(maildir, NOW - 100)
    assert not needs_recalc(read_usage(maildir), NOW)
    assert needs_recalc(read_usage(maildir), NOW + 43100)
    for _ in range(1000):
        add_usage(maildir, 123456, 0)  # 9 bytes a line
    set_mtime(maildir, NOW)
    assert needs_recalc(read_usage(maildir), NOW)  # over 8192 bytes


# -- check_quota -------------------------------------------------------------------

def test_unlimited_never_touches_the_maildir(maildir):
    for limit in (None, Quota(0)):
        result = check_quota(maildir, limit, 10**12, now=NOW)
        assert result.allowed and not result.over_quota and result.usage is None
    assert read_usage(maildir) is None


def test_under_quota_and_exact_fit(maildir):
    deliver(os.path.join(maildir, "new"), "1.a.host,S=4000")
    result = check_quota(maildir, Quota(5000), 1000, now=NOW)
    assert result.allowed and not result.over_quota and result.reason == ""
    assert (result.usage.bytes, result.usage.count) == (4000, 1)
    assert file_text(maildir) == "5000S\n4000 1\n"  # the missing file was built


def test_over_quota_by_size(maildir):
    deliver(os.path.join(maildir, "new"), "1.a.host,S=4000")
    result = check_quota(maildir, Quota(5000), 1001, now=NOW)
    assert not result.allowed and result.over_quota and result.reason == "size"
    assert not result.grace


def test_small_message_grace(maildir):
    deliver(os.path.join(maildir, "new"), "1.a.host,S=5000")
    small = check_quota(maildir, Quota(5000), 1000, now=NOW)
    assert small.allowed and small.over_quota and small.grace
    big = check_quota(maildir, Quota(5000), 1001, now=NOW)
    assert not big.allowed and not big.grace
    custom = check_quota(maildir, Quota(5000), 1001, overquota_mailsize=2000, now=NOW)
    assert custom.allowed and custom.grace
    none = check_quota(maildir, Quota(5000), 1, overquota_mailsize=0, now=NOW)
    assert not none.allowed


def test_count_limit(maildir):
    for i in range(3):
        deliver(os.path.join(maildir, "new"), f"{i}.a.host,S=10")
    assert check_quota(maildir, Quota(0, 4), 5000, now=NOW).allowed
    deliver(os.path.join(maildir, "new"), "3.a.host,S=10")
    add_usage(maildir, 10, 1)  # as the deliverer does
    result = check_quota(maildir, Quota(0, 4), 5000, now=NOW)
    assert not result.allowed and result.reason == "count"
    small = check_quota(maildir, Quota(10**6, 4), 500, now=NOW)
    assert small.allowed and small.grace and small.reason == "count"


def test_stale_cache_is_rechecked_before_refusing(maildir):
    deliver(os.path.join(maildir, "new"), "1.a.host,S=100")
    write_header(maildir, Quota(5000))
    add_usage(maildir, 4800, 3)  # messages since expunged without a negative delta
    set_mtime(maildir, NOW + 60)  # even a file stamped ahead of our clock
    result = check_quota(maildir, Quota(5000), 2000, now=NOW)
    assert result.allowed and result.usage.bytes == 100
    assert file_text(maildir) == "5000S\n100 1\n"


def test_recheck_age_and_fast_trust_the_cache(maildir):
    deliver(os.path.join(maildir, "new"), "1.a.host,S=100")
    write_header(maildir, Quota(5000))
    add_usage(maildir, 4800, 3)
    set_mtime(maildir, NOW - 10)
    throttled = check_quota(maildir, Quota(5000), 2000, now=NOW, recheck_age=900)
    assert not throttled.allowed and throttled.usage.bytes == 4900
    fast = check_quota(maildir, Quota(5000), 2000, now=NOW + 10**6, fast=True)
    assert not fast.allowed and fast.usage.bytes == 4900
    old_enough = check_quota(maildir, Quota(5000), 2000, now=NOW + 900, recheck_age=900)
    assert old_enough.allowed and old_enough.usage.bytes == 100


def test_old_or_big_file_is_recalculated_even_when_under_quota(maildir):
    deliver(os.path.join(maildir, "new"), "1.a.host,S=100")
    write_header(maildir, Quota(10**6))
    add_usage(maildir, 5000, 1)
    set_mtime(maildir, NOW - 43200)
    result = check_quota(maildir, Quota(10**6), 10, now=NOW)
    assert result.allowed and result.usage.bytes == 100 and result.usage.lines == 1


def test_fresh_cache_is_trusted_when_under_quota(maildir):
    write_header(maildir, Quota(10**6))
    add_usage(maildir, 5000, 1)  # no such message on disk, but the file is fresh
    set_mtime(maildir, NOW - 10)
    result = check_quota(maildir, Quota(10**6), 10, now=NOW)
    assert result.allowed and result.usage.bytes == 5000 and result.usage.lines == 2


def test_changed_quota_rewrites_header(maildir):
    deliver(os.path.join(maildir, "new"), "1.a.host,S=100")
    write_header(maildir, Quota(1000))
    set_mtime(maildir, NOW)
    result = check_quota(maildir, Quota(2000, 10), 10, now=NOW)
    assert result.allowed and result.usage.quota == Quota(2000, 10)
    assert file_text(maildir) == "2000S,10C\n100 1\n"


def test_missing_file_is_built_even_in_fast_mode(maildir):
    deliver(os.path.join(maildir, "new"), "1.a.host,S=100")
    result = check_quota(maildir, Quota(1000), 10, now=NOW, fast=True)
    assert result.allowed and file_text(maildir) == "1000S\n100 1\n"
