"""MIME structure: ENVELOPE, BODY/BODYSTRUCTURE, sections, BINARY, SEARCH helpers."""

from __future__ import annotations

import calendar

import pytest

from indimail_tw.imap4 import mime


def parsed(raw: bytes) -> tuple[bytes, mime.Part]:
    data = mime.normalise(raw)
    return data, mime.parse(data)


RFC3501_HEADER = b"""Date: Wed, 17 Jul 1996 02:23:25 -0700 (PDT)
From: Terry Gray <gray@cac.washington.edu>
Subject: IMAP4rev1 WG mtg summary and minutes
To: imap@cac.washington.edu
cc: minutes@CNRI.Reston.VA.US, John Klensin <KLENSIN@MIT.EDU>
Message-Id: <B27397-0100000@cac.washington.edu>
MIME-Version: 1.0
Content-Type: TEXT/PLAIN; CHARSET=US-ASCII

"""


def test_envelope_of_the_rfc3501_example():
    data, root = parsed(RFC3501_HEADER + b"body\n")
    assert mime.envelope(root) == (
        b'("Wed, 17 Jul 1996 02:23:25 -0700 (PDT)" "IMAP4rev1 WG mtg summary and minutes" '
        b'(("Terry Gray" NIL "gray" "cac.washington.edu")) '
        b'(("Terry Gray" NIL "gray" "cac.washington.edu")) '
        b'(("Terry Gray" NIL "gray" "cac.washington.edu")) '
        b'((NIL NIL "imap" "cac.washington.edu")) '
        b'((NIL NIL "minutes" "CNRI.Reston.VA.US") ("John Klensin" NIL "KLENSIN" "MIT.EDU")) '
        b'NIL NIL "<B27397-0100000@cac.washington.edu>")')


def test_bodystructure_of_a_text_message():
    data, root = parsed(RFC3501_HEADER + b"line one\nline two\n")
    assert mime.bodystructure(root) == (
        b'("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7bit" 20 2 NIL NIL NIL NIL)')
    assert mime.bodystructure(root, extended=False) == (
        b'("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7bit" 20 2)')


def test_defaults_without_mime_headers():
    data, root = parsed(b"Subject: x\n\nabc")
    # the last line has no line end: it still counts
    assert mime.bodystructure(root) == (
        b'("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 3 1 NIL NIL NIL NIL)')
    env = mime.envelope(root)
    assert env == b'(NIL "x" NIL NIL NIL NIL NIL NIL NIL NIL)'


def test_text_part_without_charset_gets_the_default():
    data, root = parsed(b"Content-Type: text/html\n\n<p>\n")
    assert mime.bodystructure(root, False) == (
        b'("text" "html" ("charset" "us-ascii") NIL NIL "7bit" 5 1)')


def test_sender_and_reply_to_default_to_from_when_absent_or_empty():
    data, root = parsed(b"From: a@b.c\nSender:\nTo: d@e.f\n\n")
    env = mime.envelope(root)
    assert env.count(b'((NIL NIL "a" "b.c"))') == 3
    data, root = parsed(b"From: a@b.c\nSender: s@b.c\nReply-To: r@b.c\n\n")
    assert mime.envelope(root) == (
        b'(NIL NIL ((NIL NIL "a" "b.c")) ((NIL NIL "s" "b.c")) ((NIL NIL "r" "b.c")) '
        b'NIL NIL NIL NIL NIL)')


@pytest.mark.parametrize("value, expected", [
    ('"Doe, John" <john@example.com>', [("Doe, John", None, "john", "example.com")]),
    ("john@example.com (John Doe)", [("John Doe", None, "john", "example.com")]),
    ("John Q. Public <jqp@x.org>", [("John Q. Public", None, "jqp", "x.org")]),
    ("<@relay.example,@b.example:joe@example.org>",
     [(None, "@relay.example,@b.example", "joe", "example.org")]),
    ("undisclosed-recipients:;",
     [(None, None, "undisclosed-recipients", None), (None, None, None, None)]),
    ("Team: a@x.org, B <b@y.org>;, c@z.org",
     [(None, None, "Team", None), (None, None, "a", "x.org"), ("B", None, "b", "y.org"),
      (None, None, None, None), (None, None, "c", "z.org")]),
    ("=?utf-8?q?J=C3=B6rg?= <j@x.de>", [("=?utf-8?q?J=C3=B6rg?=", None, "j", "x.de")]),
    ("localonly", [(None, None, "localonly", "MISSING_DOMAIN")]),
    ('"john doe"@example.com', [(None, None, '"john doe"', "example.com")]),
    ("a@b, , c@d", [(None, None, "a", "b"), (None, None, "c", "d")]),
    ("", []),
    ("Unterminated <a@b", [("Unterminated", None, "a", "b")]),
])
def test_address_parsing(value, expected):
    assert mime.parse_addresses(value) == expected


def test_envelope_keeps_encoded_words_and_sends_8bit_as_literal():
    data, root = parsed("Subject: =?iso-8859-1?q?caf=E9?=\nFrom: Zoë <z@x.org>\n\n"
                        .encode())
    env = mime.envelope(root)
    assert b'"=?iso-8859-1?q?caf=E9?="' in env
    assert b'{4}\r\nZo\xc3\xab' in env
    assert b'"Zo\xc3\xab"' in mime.envelope(root, utf8=True)


def test_folded_header_values_are_unfolded():
    data, root = parsed(b"Subject: a long\n  subject line\nIn-Reply-To:\n <x@y>\n\n")
    assert mime.envelope(root).startswith(b'(NIL "a long  subject line" ')
    assert mime.envelope(root).endswith(b' "<x@y>" NIL)')


ALTERNATIVE = b"""From: a@b
Content-Type: multipart/alternative; boundary="=_alt"

This is a preamble.
--=_alt
Content-Type: text/plain; charset=utf-8
Content-Transfer-Encoding: quoted-printable

caf=C3=A9
--=_alt
Content-Type: text/html; charset=utf-8

<p>caf\xc3\xa9</p>
--=_alt--
epilogue
"""


def test_multipart_alternative():
    data, root = parsed(ALTERNATIVE)
    assert mime.bodystructure(root) == (
        b'(("text" "plain" ("charset" "utf-8") NIL NIL "quoted-printable" 9 1 NIL NIL NIL NIL)'
        b'("text" "html" ("charset" "utf-8") NIL NIL "7bit" 12 1 NIL NIL NIL NIL)'
        b' "alternative" ("boundary" "=_alt") NIL NIL NIL)')
    assert mime.bodystructure(root, False) == (
        b'(("text" "plain" ("charset" "utf-8") NIL NIL "quoted-printable" 9 1)'
        b'("text" "html" ("charset" "utf-8") NIL NIL "7bit" 12 1) "alternative")')
    assert mime.section(data, root, (1,), None) == b"caf=C3=A9"
    assert mime.section(data, root, (2,), None) == b"<p>caf\xc3\xa9</p>"
    assert mime.section(data, root, (1,), "MIME") == (
        b"Content-Type: text/plain; charset=utf-8\r\n"
        b"Content-Transfer-Encoding: quoted-printable\r\n\r\n")
    assert mime.binary(data, root, (1,)) == "café".encode()


MIXED = b"""From: a@b
Content-Type: multipart/mixed; boundary=XYZ
Content-Language: en, de
Content-Location: http://example.com/m

--XYZ

Just text, no header.
--XYZ
Content-Type: application/pdf; name="doc.pdf"
Content-ID: <part2@x>
Content-Description: A document
Content-Disposition: attachment; filename="doc.pdf"; size=3
Content-Language: fr
Content-Location: doc.pdf
Content-MD5: Q2hlY2sgSW50ZWdyaXR5IQ==
Content-Transfer-Encoding: BASE64

AAEC
--XYZ--
"""


def test_multipart_mixed_with_an_attachment_and_extension_data():
    data, root = parsed(MIXED)
    assert mime.bodystructure(root) == (
        b'(("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 21 1 NIL NIL NIL NIL)'
        b'("application" "pdf" ("name" "doc.pdf") "<part2@x>" "A document" "BASE64" 4 '
        b'"Q2hlY2sgSW50ZWdyaXR5IQ==" ("attachment" ("filename" "doc.pdf" "size" "3")) "fr" '
        b'"doc.pdf") "mixed" ("boundary" "XYZ") NIL ("en" "de") "http://example.com/m")')
    assert mime.section(data, root, (1,), None) == b"Just text, no header."
    assert mime.section(data, root, (1,), "MIME") == b"\r\n"
    assert mime.binary(data, root, (2,)) == b"\x00\x01\x02"
    assert mime.section(data, root, (3,), None) is None
    assert mime.section(data, root, (1, 1), None) is None


# The RFC 3501 6.4.5 example message, part by part.
NESTED = b"""From: top@example.com
Subject: nested
MIME-Version: 1.0
Content-Type: MULTIPART/MIXED; boundary="outer"

--outer
Content-Type: TEXT/PLAIN

part 1
--outer
Content-Type: APPLICATION/OCTET-STREAM

part 2
--outer
Content-Type: MESSAGE/RFC822

From: three@example.com
Subject: part 3
Content-Type: multipart/mixed; boundary="p3"

--p3
Content-Type: text/plain

part 3.1
--p3
Content-Type: application/octet-stream

part 3.2
--p3--
--outer
Content-Type: MULTIPART/MIXED; boundary="p4"

--p4
Content-Type: IMAGE/GIF

part 4.1
--p4
Content-Type: MESSAGE/RFC822

From: four@example.com
Subject: part 4.2
Content-Type: multipart/mixed; boundary="p42"

--p42
Content-Type: text/plain

part 4.2.1
--p42
Content-Type: multipart/alternative; boundary="p422"

--p422
Content-Type: text/plain

part 4.2.2.1
--p422
Content-Type: text/richtext

part 4.2.2.2
--p422--
--p42--
--p4--
--outer--
"""


@pytest.mark.parametrize("path, text, expected", [
    ((1,), None, b"part 1"),
    ((2,), None, b"part 2"),
    ((3,), "HEADER", b"From: three@example.com\r\nSubject: part 3\r\n"
                     b"Content-Type: multipart/mixed; boundary=\"p3\"\r\n\r\n"),
    ((3, 1), None, b"part 3.1"),
    ((3, 2), None, b"part 3.2"),
    ((4, 1), None, b"part 4.1"),
    ((4, 1), "MIME", b"Content-Type: IMAGE/GIF\r\n\r\n"),
    ((4, 2), "HEADER.FIELDS", b"Subject: part 4.2\r\n\r\n"),
    ((4, 2, 1), None, b"part 4.2.1"),
    ((4, 2, 2, 1), None, b"part 4.2.2.1"),
    ((4, 2, 2, 2), None, b"part 4.2.2.2"),
    ((4, 2, 2, 2), "MIME", b"Content-Type: text/richtext\r\n\r\n"),
    ((4, 2, 2, 3), None, None),
    ((5,), None, None),
    ((1, 1), None, None),
])
def test_sections_of_the_rfc3501_example(path, text, expected):
    data, root = parsed(NESTED)
    assert mime.section(data, root, path, text, ("subject",)) == expected


def test_text_of_an_encapsulated_message_and_of_the_whole():
    data, root = parsed(NESTED)
    text3 = mime.section(data, root, (3,), "TEXT")
    assert text3.startswith(b"--p3\r\n") and text3.endswith(b"--p3--")
    whole3 = mime.section(data, root, (3,), None)
    assert whole3.startswith(b"From: three@example.com") and whole3.endswith(b"--p3--")
    assert mime.section(data, root, (), "TEXT").startswith(b"--outer\r\n")
    assert mime.section(data, root, (), None) == data
    assert mime.section(data, root, (), "HEADER").endswith(b'"outer"\r\n\r\n')
    # HEADER of a part that is not a message: empty
    assert mime.section(data, root, (1,), "HEADER") == b""


def test_bodystructure_of_nested_messages():
    data, root = parsed(NESTED)
    body = mime.bodystructure(root, False)
    assert body.startswith(
        b'(("TEXT" "PLAIN" ("charset" "us-ascii") NIL NIL "7bit" 6 1)'
        b'("APPLICATION" "OCTET-STREAM" NIL NIL NIL "7bit" 6)'
        b'("MESSAGE" "RFC822" NIL NIL NIL "7bit" ')
    assert (b'(NIL "part 3" ((NIL NIL "three" "example.com")) '
            b'((NIL NIL "three" "example.com")) ((NIL NIL "three" "example.com")) '
            b'NIL NIL NIL NIL NIL) (("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 8 1)'
            b'("application" "octet-stream" NIL NIL NIL "7bit" 8) "mixed") 13)') in body
    assert (b'(("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 12 1)'
            b'("text" "richtext" ("charset" "us-ascii") NIL NIL "7bit" 12 1) "alternative")'
            b' "mixed") ') in body
    assert body.endswith(b' "MIXED")')
    full = mime.bodystructure(root)
    assert full.endswith(b' "MIXED" ("boundary" "outer") NIL NIL NIL)')
    # parentheses balance and no part is lost
    assert full.count(b"(") == full.count(b")")
    assert body.count(b'"7bit"') == 10


def test_header_fields_are_case_insensitive_and_keep_folding_and_order():
    data, root = parsed(b"Subject: a\n b\nX-A: 1\nsubject: again\nTo: t@x\n\nbody\n")
    assert mime.section(data, root, (), "HEADER.FIELDS", ("SUBJECT",)) == (
        b"Subject: a\r\n b\r\nsubject: again\r\n\r\n")
    assert mime.section(data, root, (), "HEADER.FIELDS.NOT", ("subject", "x-a")) == (
        b"To: t@x\r\n\r\n")
    assert mime.section(data, root, (), "HEADER.FIELDS", ("NOPE",)) == b"\r\n"


def test_lf_and_crlf_files_give_the_same_octets():
    lf = b"From: a@b\nSubject: s\n\nline\n\nlast\n"
    crlf = lf.replace(b"\n", b"\r\n")
    mixed = b"From: a@b\r\nSubject: s\n\r\nline\n\nlast\r\n"
    assert mime.normalise(lf) == crlf == mime.normalise(crlf) == mime.normalise(mixed)
    assert mime.normalise(crlf) is crlf


def test_binary_decodings():
    data, root = parsed(b"Content-Type: text/plain\nContent-Transfer-Encoding: base64\n\n"
                        b"aGVs\nbG8=\n")
    assert mime.binary(data, root, (1,)) == b"hello"
    data, root = parsed(b"Content-Transfer-Encoding: base64\n\naGVsbG8")   # no padding
    assert mime.binary(data, root, (1,)) == b"hello"
    data, root = parsed(b"Content-Transfer-Encoding: quoted-printable\n\na=3Db=\nc\n")
    assert mime.binary(data, root, (1,)) == b"a=bc\r\n"
    data, root = parsed(b"Content-Transfer-Encoding: x-uuencode\n\nbegin\n")
    with pytest.raises(mime.UnknownCTE):
        mime.binary(data, root, (1,))
    data, root = parsed(MIXED)
    assert mime.binary(data, root, ()) == data
    assert mime.binary(data, root, (9,)) is None


@pytest.mark.parametrize("raw", [
    b"",
    b"\n",
    b"no header at all",
    b"Content-Type: multipart/mixed\n\nno boundary",
    b"Content-Type: multipart/mixed; boundary=zz\n\n--zz\nContent-Type: text/plain\n\nnever closed",
    b"Content-Type: multipart/mixed; boundary=zz\n\nno delimiter at all\n",
    b"Content-Type: message/rfc822\n\n",
    b"Content-Type: message/rfc822\nContent-Transfer-Encoding: base64\n\nRnJvbTogYUBi\n",
    b"Content-Type: /\nContent-Disposition: ;;;\nContent-Language: ,\n\nx",
    b"Content-Type: text/plain; charset=\"unterminated\n\nx",
    b"From: <<<@@@>>> ,,, ;;; :::\nTo: \"unterminated\nCc: (unterminated\n\n",
    b"\x00\xff\xfe garbage \r\r\r\n\n\n\x80",
    b"Content-Type: multipart/mixed; boundary=a\n\n"
    + b"--a\nContent-Type: multipart/mixed; boundary=a\n\n" * 60,
])
def test_malformed_messages_get_a_structure(raw):
    data, root = parsed(raw)
    body = mime.bodystructure(root)
    assert body.count(b"(") >= 1
    mime.envelope(root)
    mime.bodystructure(root, False)
    assert mime.load(mime.dump(root)) is not None
    for path in [(), (1,), (1, 1), (2, 3, 4)]:
        for text in (None, "HEADER", "TEXT", "MIME", "HEADER.FIELDS"):
            mime.section(data, root, path, text, ("from",))
    mime.body_text(data, root)
    mime.header_text(data, root)


def test_multipart_without_parts_has_one_empty_part():
    data, root = parsed(b"Content-Type: multipart/mixed; boundary=zz\n\nno delimiter\n")
    assert mime.bodystructure(root, False) == (
        b'(("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 0 0) "mixed")')


def test_nesting_is_bounded():
    raw = b"".join(b"Content-Type: message/rfc822\n\n" for _ in range(200)) + b"x"
    data, root = parsed(raw)
    depth = 0
    node = root
    while node.message is not None:
        node, depth = node.message, depth + 1
    assert depth <= mime.MAX_DEPTH


def test_cache_round_trip():
    data, root = parsed(NESTED)
    blob = mime.dump(root)
    again = mime.load(blob)
    assert mime.bodystructure(again) == mime.bodystructure(root)
    assert mime.envelope(again) == mime.envelope(root)
    assert mime.section(data, again, (4, 2, 2, 2), None) == b"part 4.2.2.2"
    assert mime.load(b"garbage") is None
    assert mime.load(b'[999, []]') is None
    # 8-bit header bytes survive the JSON form
    data, root = parsed("Subject: Grüße\n\n".encode())
    assert mime.envelope(mime.load(mime.dump(root))) == mime.envelope(root)


def test_rfc2231_continuations():
    data, root = parsed(b"Content-Type: application/x; name*0=\"a b\"; name*1=\"c.txt\"\n"
                        b"Content-Disposition: attachment; filename*=utf-8''%E2%82%AC.txt\n\n")
    body = mime.bodystructure(root)
    assert b'("name" "a bc.txt")' in body
    assert b'("attachment" ("filename*" "utf-8\'\'%E2%82%AC.txt"))' in body


def test_search_helpers():
    data, root = parsed(b"Subject: =?utf-8?q?caf=C3=A9?= time\nSubject: second\n"
                        b"Date: Mon, 01 Jan 2024 23:30:00 -0500\n"
                        b"Content-Type: multipart/mixed; boundary=b\n\n"
                        b"--b\nContent-Type: text/plain; charset=iso-8859-1\n"
                        b"Content-Transfer-Encoding: quoted-printable\n\nna=EFve\n"
                        b"--b\nContent-Type: image/png\nContent-Transfer-Encoding: base64\n\n"
                        b"AAAA\n--b--\n")
    assert mime.header_values(data, root, "SUBJECT") == ["café time", "second"]
    assert "subject: café time" in mime.header_text(data, root)
    assert "naïve" in mime.body_text(data, root)
    assert mime.sent_date(root) == calendar.timegm((2024, 1, 1, 0, 0, 0))
    data, root = parsed(b"Date: not a date\n\n")
    assert mime.sent_date(root) is None


def test_cache_blob_gives_rendered_items_without_decoding_the_tree(monkeypatch):
    data, root = parsed(NESTED)
    blob = mime.dump(root)
    calls = []
    real = mime.json.loads
    monkeypatch.setattr(mime.json, "loads", lambda text: calls.append(1) or real(text))
    pre = mime.load_structure(blob)
    assert (pre.envelope, pre.body, pre.bodystructure) == (
        mime.envelope(root), mime.bodystructure(root, False), mime.bodystructure(root, True))
    assert calls == []
    assert mime.section(data, pre.root, (4, 2, 2, 2), None) == b"part 4.2.2.2"
    assert calls == [1]
    assert mime.load_structure(blob[:-3]) is None or mime.load(blob[:-3]) is None
    assert mime.load_structure(blob[:10]) is None


def test_cache_blobs_of_the_json_form_are_still_read():
    data, root = parsed(NESTED)
    old = mime.json.dumps([mime.CACHE_VERSION, root.to_list(),
                           mime.envelope(root).decode("latin-1"),
                           mime.bodystructure(root, False).decode("latin-1"),
                           mime.bodystructure(root, True).decode("latin-1")]).encode()
    pre = mime.load_structure(old)
    assert pre.bodystructure == mime.bodystructure(root, True)
    assert mime.bodystructure(pre.root) == mime.bodystructure(root)
