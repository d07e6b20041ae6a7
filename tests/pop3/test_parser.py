"""The sans-IO POP3 parser and message encoder."""

from __future__ import annotations

import random
import unittest

from indimail_tw.pop3 import parser as p


def events(data: bytes, bytewise: bool = False, limit: int = p.COMMAND_LINE_LIMIT) -> list:
    parser = p.POP3Parser(limit)
    out = []
    pieces = [data[i:i + 1] for i in range(len(data))] if bytewise else [data]
    for piece in pieces:
        parser.feed(piece)
        while (event := parser.next_event()) is not None:
            out.append(event)
    return out


class ParserTests(unittest.TestCase):
    def test_lines_crlf_and_lf(self):
        self.assertEqual(events(b"USER a\r\nPASS b c\nQUIT\r\n"),
                         [p.Line(b"USER a"), p.Line(b"PASS b c"), p.Line(b"QUIT")])

    def test_partial_line_waits(self):
        self.assertEqual(events(b"USER a"), [])

    def test_long_line_reported_once_and_skipped(self):
        data = b"USER " + b"x" * 5000 + b"\r\nNOOP\r\n"
        for bytewise in (False, True):
            self.assertEqual(events(data, bytewise), [p.LineTooLong(), p.Line(b"NOOP")])

    def test_line_at_the_limit_passes(self):
        line = b"x" * p.COMMAND_LINE_LIMIT
        self.assertEqual(events(line + b"\r\n"), [p.Line(line)])
        self.assertEqual(events(line + b"y\r\n"), [p.LineTooLong()])

    def test_auth_limit(self):
        parser = p.POP3Parser()
        parser.line_limit = p.AUTH_LINE_LIMIT
        parser.feed(b"A" * 12000 + b"\r\n")
        self.assertEqual(parser.next_event(), p.Line(b"A" * 12000))
        parser.line_limit = 10 ** 9
        self.assertEqual(parser.line_limit, p.HARD_LINE_CAP)

    def test_discard_and_close(self):
        parser = p.POP3Parser()
        parser.feed(b"STLS\r\nUSER evil\r\n")
        self.assertEqual(parser.next_event(), p.Line(b"STLS"))
        self.assertEqual(parser.discard_buffered(), len(b"USER evil\r\n"))
        self.assertIsNone(parser.next_event())
        parser.close()
        parser.feed(b"QUIT\r\n")
        self.assertIsNone(parser.next_event())

    def test_fuzz_whole_and_bytewise_agree(self):
        rng = random.Random(1939)
        alphabet = [b"\r", b"\n", b"a", b" ", b".", b"\0", b"\xff"]
        for _ in range(300):
            data = b"".join(rng.choice(alphabet) * rng.randint(1, 40)
                            for _ in range(rng.randint(0, 60)))
            self.assertEqual(events(data, limit=30), events(data, True, limit=30))

    def test_split_command(self):
        self.assertEqual(p.split_command(b"retr  1"), ("RETR", [b"1"]))
        self.assertEqual(p.split_command(b"TOP\t1 2"), ("TOP", [b"1", b"2"]))
        self.assertEqual(p.split_command(b"   "), ("", []))
        self.assertEqual(p.split_command(b"\xff\xfe"), ("\ufffd\ufffd", []))

    def test_parse_number(self):
        self.assertEqual(p.parse_number(b"12"), 12)
        for bad in (b"-1", b"+1", b"1.0", b"", b"x", b"99999999999", "١".encode()):
            self.assertIsNone(p.parse_number(bad), bad)


def encode_in_pieces(data: bytes, lines=None, size: int = 1) -> bytes:
    encoder = p.MessageEncoder(lines)
    out = b""
    for i in range(0, len(data), size):
        out += encoder.feed(data[i:i + size])
        if encoder.done:
            break
    return out + encoder.finish()


class EncoderTests(unittest.TestCase):
    def test_lf_becomes_crlf_and_dots_are_stuffed(self):
        data = b"Subject: x\n\n.hidden\nline\n..two\n.\nend"
        expected = b"Subject: x\r\n\r\n..hidden\r\nline\r\n...two\r\n..\r\nend\r\n.\r\n"
        self.assertEqual(p.encode_message(data), expected)

    def test_crlf_stays_crlf(self):
        self.assertEqual(p.encode_message(b"A: b\r\n\r\nbody\r\n"), b"A: b\r\n\r\nbody\r\n.\r\n")

    def test_leading_dot_of_message(self):
        self.assertEqual(p.encode_message(b".x\n"), b"..x\r\n.\r\n")

    def test_empty_message(self):
        self.assertEqual(p.encode_message(b""), b".\r\n")

    def test_bare_cr_is_kept(self):
        self.assertEqual(p.encode_message(b"a\rb\n"), b"a\rb\r\n.\r\n")

    def test_top(self):
        data = b"A: 1\nB: 2\n\nl1\n.l2\nl3\n"
        self.assertEqual(p.encode_message(data, 0), b"A: 1\r\nB: 2\r\n\r\n.\r\n")
        self.assertEqual(p.encode_message(data, 2), b"A: 1\r\nB: 2\r\n\r\nl1\r\n..l2\r\n.\r\n")
        self.assertEqual(p.encode_message(data, 99), p.encode_message(data))

    def test_top_without_body(self):
        self.assertEqual(p.encode_message(b"A: 1\nB: 2", 3), b"A: 1\r\nB: 2\r\n.\r\n")
        self.assertEqual(p.encode_message(b"\nbody\nmore\n", 1), b"\r\nbody\r\n.\r\n")

    def test_negative_top_refused(self):
        with self.assertRaises(ValueError):
            p.MessageEncoder(-1)

    def test_chunking_never_changes_the_output(self):
        rng = random.Random(2449)
        alphabet = [b"\r\n", b"\n", b"\r", b".", b"a", b"..", b"\n\n", b"\r\n\r\n"]
        for _ in range(200):
            data = b"".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
            for lines in (None, 0, 1, 3):
                whole = p.encode_message(data, lines)
                for size in (1, 2, 3, 7):
                    self.assertEqual(encode_in_pieces(data, lines, size), whole,
                                     (data, lines, size))

    def test_output_is_valid_pop3(self):
        """Unstuffing the output gives the message back with CRLF line endings."""
        rng = random.Random(5034)
        for _ in range(200):
            data = b"".join(rng.choice([b"\n", b".", b"a", b"\r\n", b".."])
                            for _ in range(rng.randint(0, 30)))
            out = p.encode_message(data)
            self.assertTrue(out.endswith(b".\r\n"))
            lines = out[:-3].split(b"\r\n")[:-1]
            self.assertTrue(all(not line.startswith(b".") or line.startswith(b"..")
                                for line in lines))
            body = b"".join((line[1:] if line.startswith(b".") else line) + b"\r\n"
                            for line in lines)
            expected = data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
            if expected and not expected.endswith(b"\r\n"):
                expected += b"\r\n"
            self.assertEqual(body, expected)
