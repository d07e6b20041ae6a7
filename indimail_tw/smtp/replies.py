"""SMTP replies: the response type the session returns, and every fixed reply text.

Texts follow qmail-smtpd/IndiMail where they exist (without the ``(#x.y.z)``
suffix: the enhanced status code leads the text, RFC 2034); codes follow the
RFCs where IndiMail has none.  None of them names a backend or a setting.
"""

from __future__ import annotations

from dataclasses import dataclass

from indimail_tw.policy.base import Reject


@dataclass(frozen=True)
class Response:
    """Bytes to send; then maybe close the connection or start TLS."""

    data: bytes
    close: bool = False
    starttls: bool = False


def ok(code: int, enhanced: str, text: str) -> Response:
    return Response(f"{code} {enhanced} {text}\r\n".encode())


def refuse(reject: Reject) -> Response:
    return Response(reject.smtp(), close=reject.close)


def reply(code: int, enhanced: str, text: str, close: bool = False) -> Reject:
    return Reject(code, enhanced, text, close)


INTERNAL_ERROR = reply(451, "4.3.0", "Requested action aborted: temporary failure, try again later")
HELLO_FIRST = reply(503, "5.5.1", "Polite people say hello first")
EHLO_FIRST = reply(503, "5.5.1", "send EHLO first")
NESTED_MAIL = reply(503, "5.5.1", "nested MAIL command")
MAIL_FIRST = reply(503, "5.5.1", "MAIL first")
RCPT_FIRST = reply(503, "5.5.1", "RCPT first")
NO_DATA_AFTER_BDAT = reply(503, "5.5.1", "DATA cannot follow BDAT in one transaction")
UNRECOGNIZED = reply(502, "5.5.2", "command not recognized")
UNIMPLEMENTED = reply(502, "5.5.1", "unimplemented")
NO_ARGUMENTS = reply(501, "5.5.4", "syntax error (no parameters allowed)")
BAD_PARAMETER = reply(555, "5.5.4", "unsupported or malformed parameter")
LINE_TOO_LONG = reply(500, "5.5.2", "line too long")
TOO_MANY_ERRORS = reply(421, "4.7.0", "too many errors, closing connection", close=True)
TOO_MANY_RCPTS = reply(557, "5.5.3", "sorry, too many recipients")
RCPT_HARD_LIMIT = reply(452, "4.5.3", "too many recipients")
TIMEOUT = reply(451, "4.4.2", "timeout, closing connection", close=True)
EARLY_TALKER = reply(554, "5.5.0", "SMTP protocol violation: talking before the greeting",
                  close=True)
TLS_ACTIVE = reply(503, "5.5.1", "TLS already active")
TLS_UNAVAILABLE = reply(454, "4.7.0", "TLS not available due to temporary reason")
BAD_BDAT = reply(501, "5.5.4", "syntax error in BDAT, closing connection", close=True)
NO_QUEUE = reply(451, "4.3.0", "Requested action aborted: unable to queue messages")
# AUTH (qmail-smtpd's texts, RFC 4954 codes)
AUTH_OK = "235 2.7.0 ok, go ahead\r\n"
AUTH_FAILED = reply(535, "5.7.8", "authorization failure")
AUTH_TEMPFAIL = reply(454, "4.3.0", "temporary authentication failure")
AUTH_ALREADY = reply(503, "5.5.1", "you're already authenticated")
AUTH_IN_TRANSACTION = reply(503, "5.5.1", "no AUTH during mail transaction")
AUTH_UNKNOWN = reply(504, "5.5.4", "auth type unimplemented")
AUTH_NEEDS_TLS = reply(538, "5.7.11", "encryption required for requested authentication mechanism")
AUTH_CANCELLED = reply(501, "5.0.0", "auth exchange cancelled")
AUTH_BAD_BASE64 = reply(501, "5.5.2", "malformed auth input (bad base64)")
AUTH_MALFORMED = reply(501, "5.5.4", "malformed auth input")
AUTH_LINE_TOO_LONG = reply(500, "5.5.6", "authentication exchange line is too long")
AUTH_TOO_MANY = reply(421, "4.7.0", "too many authentication failures", close=True)
