"""POP3 replies: the response type the session returns, and every fixed reply text.

Response codes follow RFC 2449 section 8 ([IN-USE], [LOGIN-DELAY]) and RFC
3206 ([SYS/TEMP], [SYS/PERM], [AUTH]); texts follow Dovecot's where clients
are known to parse them.  None names a backend, a setting or the software, and
a failed login reads the same whether the user exists or not.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Response:
    """Bytes to send; then maybe a message to stream, TLS to start, or the end."""

    data: bytes
    close: bool = False
    starttls: bool = False
    body: Any = None             # a MessageBody streamed after ``data``


@dataclass
class MessageBody:
    """RETR/TOP: the open message file and how much of it to send (``lines``: TOP)."""

    file: Any
    size: int                    # the file's expected RFC 822 size (a hint for buffering)
    lines: int | None = None


def ok(text: str = "") -> Response:
    return Response(f"+OK {text}\r\n".encode("utf-8", "replace") if text else b"+OK\r\n")


def err(text: str, close: bool = False) -> Response:
    return Response(f"-ERR {text}\r\n".encode("utf-8", "replace"), close=close)


def multiline(first: str, lines: list[str]) -> Response:
    """``+OK first`` then the lines (dot-stuffed) and the terminating ``.``."""
    body = "".join(("." + line if line.startswith(".") else line) + "\r\n" for line in lines)
    return Response(f"+OK {first}\r\n{body}.\r\n".encode("utf-8", "replace"))


UNKNOWN = "Unknown command."
WRONG_STATE = "Command not valid in this state."
NO_SUCH_MESSAGE = "There is no such message."
ALREADY_DELETED = "Message is deleted."
SYNTAX = "Invalid arguments."
LINE_TOO_LONG = "Command line too long."
TOO_MANY_ERRORS = "Too many invalid commands."
USER_FIRST = "No user name given; send USER first."
AUTH_FAILED = "[AUTH] Authentication failed."
AUTH_TEMPFAIL = "[SYS/TEMP] Temporary authentication failure, try again later."
AUTH_PLAINTEXT = "[AUTH] Plaintext authentication disallowed on non-secure (SSL/TLS) connections."
AUTH_TLS_REQUIRED = "[AUTH] Authentication is only allowed over TLS."
AUTH_UNKNOWN_MECH = "Unsupported authentication mechanism."
AUTH_CANCELLED = "Authentication cancelled."
AUTH_BAD_BASE64 = "Invalid base64 data."
AUTH_MALFORMED = "Invalid authentication data."
AUTH_LINE_TOO_LONG = "Authentication response too long."
AUTH_TOO_MANY = "[AUTH] Too many authentication failures."
IN_USE = "[IN-USE] Mailbox is locked by another POP3 session."
MAILDROP_TEMPFAIL = "[SYS/TEMP] Cannot open the mailbox, try again later."
INTERNAL_ERROR = "[SYS/TEMP] Temporary failure, try again later."
MESSAGE_GONE = "Message was removed by another session."
TLS_ACTIVE = "TLS is already active."
TLS_UNAVAILABLE = "[SYS/TEMP] TLS is not available."
TIMEOUT = "Disconnected for inactivity."
TOO_MANY_CONNECTIONS = "[SYS/TEMP] Too many connections, try again later."
SHUTDOWN = "[SYS/TEMP] Service not available, try again later."
EXPUNGE_FAILED = "[SYS/TEMP] Some deleted messages were not removed."
