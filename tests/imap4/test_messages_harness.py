"""A small driver for the message commands: a real Maildir, FolderIndex and
MailFolders under a temp directory, a stand-in for the session (state checks,
parsing and the poll before the tagged line as the real session does), and a
synchronous ``run``.  No tests here; the test_* modules use it."""

from __future__ import annotations

import os
import shutil
import tempfile
import time

from twisted.internet import defer

from indimail_tw import fsutil
from indimail_tw.imap4 import grammar
from indimail_tw.imap4.messages import MessageCommands
from indimail_tw.imap4.parser import IMAPParser
from indimail_tw.imap4.selected import SelectedMailbox
from indimail_tw.imap4.tokens import Command
from indimail_tw.maildir.folders import MailFolders

NO_EXPUNGE = {"FETCH", "STORE", "SEARCH", "UID FETCH", "UID STORE", "UID SEARCH"}
HANDLERS = {"FETCH": "do_fetch", "STORE": "do_store", "SEARCH": "do_search",
            "COPY": "do_copy", "MOVE": "do_move", "EXPUNGE": "do_expunge",
            "APPEND": "do_append", "CLOSE": "do_close", "UNSELECT": "do_unselect",
            "CHECK": "do_check"}


def parse_command(line: bytes) -> Command:
    events = IMAPParser().feed(line + b"\r\n")
    (event,) = [e for e in events if isinstance(e, Command)]
    return event


class FakeSession(MessageCommands):
    """What the message mixin needs from IMAPSession."""

    def __init__(self, folders: MailFolders) -> None:
        self.folders = folders
        self.selected = None
        self.enabled: set[str] = set()
        self.quota_text: str | None = None
        self.runs = 0

    @property
    def rev2(self) -> bool:
        return "IMAP4REV2" in self.enabled

    @property
    def utf8(self) -> bool:
        return "UTF8=ACCEPT" in self.enabled

    def run(self, fn, *args):
        self.runs += 1
        return defer.maybeDeferred(fn, *args)

    def quota_check(self, size: int) -> str | None:
        return self.quota_text


class Harness:
    def __init__(self) -> None:
        self.root = tempfile.mkdtemp(prefix="imap4-msg-")
        self.maildir = os.path.join(self.root, "Maildir")
        fsutil.make_maildir(self.maildir)
        self.folders = MailFolders(self.maildir)
        self.session = FakeSession(self.folders)
        self._n = 0

    def cleanup(self) -> None:
        if self.session.selected is not None:
            self.session.selected.close_silently()
        shutil.rmtree(self.root, ignore_errors=True)

    # -- mail arriving ---------------------------------------------------------------------

    def deliver(self, data: bytes, folder: str = "INBOX", flags: str = "",
                mtime: float | None = None) -> str:
        """A file put into new/ (or cur/ with flags) as a delivery agent would."""
        self._n += 1
        base = self.maildir if folder == "INBOX" else os.path.join(self.maildir, "." + folder)
        name = f"{int(time.time())}.M{self._n}P{os.getpid()}.test"
        sub, info = ("cur", ":2," + flags) if flags else ("new", "")
        path = os.path.join(base, sub, name + info)
        with open(path, "wb") as f:
            f.write(data)
        if mtime is not None:
            os.utime(path, (mtime, mtime))
        return path

    def create(self, name: str) -> None:
        self.folders.create(name)

    # -- commands --------------------------------------------------------------------------

    def select(self, name: str = "INBOX", readonly: bool = False, qresync=None) -> list[bytes]:
        s = self.session
        if s.selected is not None:
            s.selected.close_silently()
        index = self.folders.open_index(name)
        s.selected = SelectedMailbox(index, name, readonly, s)
        return s.selected.open_responses(qresync)

    def command(self, line: bytes | str) -> list[bytes]:
        if isinstance(line, str):
            line = line.encode()
        cmd = parse_command(line)
        return self.execute(cmd)

    def execute(self, cmd: Command) -> list[bytes]:
        s = self.session
        key = cmd.name
        if key == "UID":
            key = "UID " + cmd.args[0].upper()
        args = grammar.parse(cmd, utf8=s.utf8)
        handler = getattr(s, HANDLERS[key.replace("UID ", "")])
        result = handler(cmd.tag, args)
        if isinstance(result, defer.Deferred):
            out = []
            result.addBoth(out.append)
            assert out, "the reply did not arrive synchronously"
            result = out[0]
            if isinstance(result, Exception) or hasattr(result, "raiseException"):
                result.raiseException()
        lines = list(result)
        if s.selected is not None:
            lines[-1:-1] = s.selected.poll(key not in NO_EXPUNGE)
        for line in lines:
            assert line.endswith(b"\r\n"), line
        return lines

    def other_index(self, name: str = "INBOX"):
        """Another session's (or process's) view of the folder."""
        return self.folders.open_index(name)


def text(lines: list[bytes]) -> str:
    return b"".join(lines).decode("utf-8", "replace")
