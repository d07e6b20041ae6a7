"""vchkpass: IndiMail's checkpassword program over our user store.

Reads ``login\\0secret\\0response\\0[method]\\0`` (at most 512 bytes) from fd 3.
Exit status: 0 authenticated; 3 authenticated but NO_RELAY; 1 refused;
2 misuse; 111 temporary failure (database unreachable).  A login this
module cannot authenticate (unknown user, wrong password) is passed on: the
next program in argv is executed with the same bytes on its fd 3, as IndiMail
chains its modules (``vchkpass /bin/false``).

Test it as the FAQ does::

    printf 'user@domain\\0pass\\0\\0' | vchkpass /bin/false 3<&0
"""

from __future__ import annotations

import os
import sys

from indimail_tw.auth.checkers import AuthPolicy, authenticate
from indimail_tw.auth.credentials import CRAM_ALGORITHMS, ChallengeCredentials, PasswordProof
from indimail_tw.errors import SchemaTooNew, StoreError, StoreUnavailable
from indimail_tw.paths import Paths

MAX_INPUT = 512
EXIT_OK, EXIT_REFUSED, EXIT_MISUSE, EXIT_NORELAY, EXIT_TEMP = 0, 1, 2, 3, 111
_CRAM_DISABLE = {"md5": "DISABLE_CRAM_MD5", "sha1": "DISABLE_CRAM_SHA1",
                 "sha224": "DISABLE_CRAM_SHA224", "sha256": "DISABLE_CRAM_SHA256",
                 "sha384": "DISABLE_CRAM_SHA384", "sha512": "DISABLE_CRAM_SHA512",
                 "ripemd160": "DISABLE_CRAM_RIPEMD"}


def read_input(fd: int = 3) -> bytes | None:
    """The fd-3 bytes, or None when fd 3 is not readable or holds too much."""
    chunks, total = [], 0
    while True:
        try:
            chunk = os.read(fd, MAX_INPUT + 1)
        except OSError:
            return None
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
        if total > MAX_INPUT:
            return None
    return b"".join(chunks)


def parse_input(data: bytes) -> tuple[str, bytes, str, int | None] | None:
    """(login, secret, response, method) or None when malformed."""
    fields = data.split(b"\0")
    if len(fields) < 3 or not fields[0]:
        return None
    login = fields[0].decode("utf-8", "replace")
    method = None
    if len(fields) > 4 and fields[3]:
        raw = fields[3]
        if raw.isdigit():
            method = int(raw)
        elif len(raw) == 1:
            method = raw[0]
    return login, fields[1], fields[2].decode("ascii", "replace"), method


class _CramProof:
    """Tries the requested CRAM flavour, or every enabled one when none was named."""

    def __init__(self, challenge: bytes, response: str, method: int | None, environ,
                 enable_cram: bool) -> None:
        if method in CRAM_ALGORITHMS:
            methods = [method]
        else:
            methods = [m for m, alg in CRAM_ALGORITHMS.items()
                       if not environ.get(_CRAM_DISABLE[alg])]
        self._creds = [ChallengeCredentials("", challenge, response, m) for m in methods]
        self._enable_cram = enable_cram

    def check(self, stored: str) -> bool:
        from indimail_tw.auth import passwords
        secret = passwords.cram_secret(stored, enable_cram=self._enable_cram)
        if secret is None:
            return False
        return any(c.checkPassword(secret.encode("utf-8", "surrogateescape")) for c in self._creds)


def _say(text: str) -> None:
    """SMTP-style text on stdout, which qmail-smtpd relays to the client."""
    sys.stdout.write(text)
    sys.stdout.flush()


def _next_module(argv: list[str], data: bytes) -> int:
    """Exec the next checkpassword module with the same bytes on its fd 3."""
    if not argv:
        return EXIT_REFUSED
    read_end, write_end = os.pipe()
    os.write(write_end, data)      # <= 512 bytes: fits in any pipe buffer
    os.close(write_end)
    if read_end != 3:
        os.dup2(read_end, 3)
        os.close(read_end)
    os.set_inheritable(3, True)
    try:
        os.execvp(argv[0], argv)
    except OSError as e:
        sys.stderr.write(f"vchkpass: cannot run {argv[0]}: {e.strerror}\n")
        return EXIT_TEMP
    return EXIT_TEMP  # not reached


def run(argv: list[str], environ: dict[str, str]) -> int:
    if not argv:
        sys.stderr.write("usage: vchkpass prog [args...]   (credentials on fd 3)\n")
        return EXIT_MISUSE
    data = read_input()
    if data is None:
        sys.stderr.write("vchkpass: fd 3 missing or more than 512 bytes\n")
        return EXIT_MISUSE
    parsed = parse_input(data)
    if parsed is None:
        return EXIT_MISUSE
    login, secret, response, method = parsed
    if environ.get("DEBUG"):
        sys.stderr.write(f"vchkpass: login [{login}] method [{method}]\n")

    paths = Paths.resolve(environ=environ)
    try:
        from indimail_tw.config import ControlDir
        control = ControlDir(paths.control, environ)
        policy = AuthPolicy(environ=environ,
                            configured_domain=control.value("defaultdomain")
                            or control.value("me"),
                            locals=tuple(control.lines("locals")))
    except Exception:  # noqa: BLE001 - unreadable control files: treat as unset
        policy = AuthPolicy(environ=environ)
    if response:
        proof = _CramProof(secret, response, method, environ, policy.enable_cram)
    else:
        proof = PasswordProof(secret.decode("utf-8", "surrogateescape"), policy.allow_clear)
    service = environ.get("AUTHSERVICE", "smtp").lower()

    from indimail_tw.storage.engine import open_engine
    try:
        engine = open_engine(paths, environ, create=False)
        engine.run_sync(engine.check)
        outcome = engine.run_sync(authenticate, login, proof, service,
                                  environ.get("TCPLOCALIP", ""), policy)
    except (StoreUnavailable, SchemaTooNew) as e:
        sys.stderr.write(f"vchkpass: {e}\n")
        _say("454-failed to connect to database (#4.3.0)\r\n")
        return EXIT_TEMP
    except StoreError as e:
        sys.stderr.write(f"vchkpass: {e}\n")
        return EXIT_TEMP

    if outcome.status in ("unknown", "mismatch"):
        return _next_module(argv, data)
    if outcome.status == "denied":
        _say("553-Sorry, this account cannot use SMTP (#5.7.1)\r\n")
        return EXIT_REFUSED
    user = outcome.user
    os.environ["HOME"] = user.dir
    postauth = environ.get("POSTAUTH")
    if postauth and os.access(postauth, os.X_OK):
        import subprocess
        return subprocess.call([postauth, outcome.address], env=dict(os.environ))
    if environ.get("NATIVE_CHECKPASSWORD") or environ.get("DOVECOT_VERSION"):
        os.environ.update(USER=outcome.address, HOME=user.dir)
        try:
            os.execvp(argv[0], argv)
        except OSError as e:
            sys.stderr.write(f"vchkpass: cannot run {argv[0]}: {e.strerror}\n")
            return EXIT_TEMP
    return EXIT_NORELAY if outcome.no_relay else EXIT_OK


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    try:
        return run(list(args), dict(os.environ))
    except KeyboardInterrupt:
        return EXIT_TEMP
    except Exception as e:  # noqa: BLE001 - never a traceback to the caller
        sys.stderr.write(f"vchkpass: internal error: {e.__class__.__name__}\n")
        return EXIT_TEMP


if __name__ == "__main__":
    sys.exit(main())
