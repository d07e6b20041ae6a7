"""One error family for the whole server.

A :class:`MailError` carries everything a protocol needs to answer: the SMTP
code, the enhanced status code, a public text that reveals nothing about the
configuration, whether the failure is temporary, and the wrapped cause for the
log (never sent to the peer).
"""

from __future__ import annotations


class MailError(Exception):
    """A failure with a protocol-neutral description of how to answer it."""

    def __init__(self, code: int, enhanced: str, text: str, *,
                 cause: BaseException | None = None) -> None:
        super().__init__(text)
        self.code = code
        self.enhanced = enhanced
        self.text = text
        self.cause = cause

    @property
    def temporary(self) -> bool:
        return 400 <= self.code < 500

    def smtp(self) -> bytes:
        return f"{self.code} {self.enhanced} {self.text}\r\n".encode()

    def pop3(self) -> bytes:
        return f"-ERR {self.text}\r\n".encode()

    def imap(self, tag: bytes) -> bytes:
        return tag + f" NO {self.text}\r\n".encode()


def temporary_failure(cause: BaseException | None = None) -> MailError:
    """The reply for an unexpected internal error: try again later."""
    return MailError(451, "4.3.0", "temporary failure, try again later", cause=cause)


class StoreError(Exception):
    """Base class of user-store failures."""


class StoreUnavailable(StoreError):
    """The database cannot be reached or failed transiently: a temporary failure."""


class DuplicateEntry(StoreError):
    """A row with the same key exists already."""


class SchemaTooNew(StoreError):
    """The database was written by a newer version of indimail_tw."""


class ConfigError(Exception):
    """A control file or option holds a value we cannot use.

    The message names the file (and line) so an admin can fix it.
    """


class AdminError(Exception):
    """A CLI failure: one clear line for stderr and the exit status to use."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status
