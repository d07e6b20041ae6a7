"""Crash-safe delivery of one message into a Maildir (qmail's and IndiMail's rules).

The message is written under a unique name into ``tmp/``, fsynced, then
linked into ``new/`` as ``<unique>,S=<size>,W=<rfc822 size>`` (qmail's name plus
Dovecot's ``,W=``) and ``new/`` is fsynced; only then is the delivery reported
done (:mod:`indimail_tw.fsutil` does the syncing and linking).  A batch
(:func:`shared_syncs`) renames its files into ``new/`` through io_uring instead,
never over an existing name (:meth:`_Links.publish`).  A failure at
any step removes the partial file in ``tmp/``; a crash leaves at most a stray
file in ``tmp/`` that Maildir cleaners remove, never a partial message in ``new/``.

Several deliveries made in one thread job share their fsyncs
(:func:`shared_syncs`): each message is written into ``tmp/`` when it is
delivered, and when the job ends all of them are fsynced at once, linked into
``new/``, and each ``new/`` is fsynced once; every delivery is reported done
only after that.

Every function blocks on disk I/O: the server calls them in a thread, never
on the reactor thread.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import threading
from collections.abc import Iterable, Iterator
from contextlib import suppress
from dataclasses import dataclass

from indimail_tw import fsutil
from indimail_tw.datafile import open_data

CHUNK = 65536
_NAME_ATTEMPTS = 5
#: The marker Courier/IndiMail put in a Maildir++ folder (never in the INBOX).
FOLDER_MARKER = "maildirfolder"


class MaildirDeliveryError(Exception):
    """A delivery that did not happen; ``temporary`` says whether to retry."""

    def __init__(self, text: str, *, temporary: bool = True, enhanced: str = "4.3.0") -> None:
        super().__init__(text)
        self.text = text
        self.temporary = temporary
        self.enhanced = enhanced


@dataclass(frozen=True)
class Delivered:
    path: str  # the file in new/ (in shared_syncs, should the name be taken when the
               # batch links its files, another unique name is used instead)
    size: int  # bytes written, header block included (the ,S= value)


def folder_path(maildir: str, folder: str | None) -> str:
    """``maildir`` itself, or its Maildir++ folder ``.<folder>`` (MAILDIRFOLDER)."""
    maildir = maildir.rstrip("/") or "/"
    if not folder:
        return maildir
    folder = folder.strip("/")
    if not folder.startswith("."):
        folder = "." + folder
    if "/" in folder or folder in (".", ".."):
        raise MaildirDeliveryError(f"invalid Maildir folder {folder!r}. (#4.2.1)")
    return os.path.join(maildir, folder)


def prepare(maildir: str, folder: str | None = None) -> str:
    """The directory to deliver into, creating missing ``cur``/``new``/``tmp``
    (IndiMail's ``prepare_maildir``).

    A folder that had to be created gets a ``maildirfolder`` marker; the
    INBOX (``.../Maildir``) never does.
    """
    target = folder_path(maildir, folder)
    try:
        created = fsutil.make_maildir(target)
        marker = os.path.join(target, FOLDER_MARKER)
        if (created and os.path.basename(target) != "Maildir" and folder
                and not os.path.exists(marker)):
            fsutil.atomic_write(marker, b"", 0o644)
    except OSError as e:
        raise MaildirDeliveryError(
            f"cannot create Maildir {target}: {e.strerror}. indimail (#4.2.1)") from e
    return target


@dataclass
class _Unsynced:
    """A delivery of a batch written to ``tmp/`` but not yet fsynced nor linked."""

    fd: int
    tmp: str
    final: str
    new_dir: str


class _Links:
    """The deliveries of one batch: files written but not yet fsynced, and the
    ``new/`` directories and ``tmp/`` names of those already linked."""

    def __init__(self) -> None:
        self.unsynced: list[_Unsynced] = []
        self.directories: dict[str, None] = {}
        self.tmp_paths: list[str] = []

    def publish(self) -> None:
        """fsync every written file (all at once), then link each into ``new/``.
        On any error nothing more is linked, the temporary files are removed and
        the error raised: the whole batch then fails and is retried.

        Where io_uring can be had (:func:`fsutil.publish_written`) each file is
        renamed into ``new/`` instead (never over a file) and every ``new/`` is
        fsynced, all in three system calls: a crash before that fsync may lose a
        renamed file, but none of the batch is reported delivered before it, so
        the queue delivers it again.
        """
        unsynced, self.unsynced = self.unsynced, []
        done = fsutil.publish_written([fsutil.Written(u.fd, u.tmp, u.final, u.new_dir)
                                       for u in unsynced])
        if done is None:                    # fsync them all, close them, link them
            errors = fsutil.fsync_all([u.fd for u in unsynced])
            for u in unsynced:
                with suppress(OSError):
                    os.close(u.fd)
            error, to_link = next((e for e in errors if e is not None), None), unsynced
        else:                               # renamed and fsynced, but for the errors
            errors, error = done
            to_link = []                    # fsynced, but the name is taken: another one
            for u, e in zip(unsynced, errors, strict=True):
                if e is None:
                    u.tmp = ""
                elif e.errno == errno.EEXIST:
                    to_link.append(u)
                else:
                    error = error or e
        try:
            if error is not None:
                raise error
            for u in to_link:
                if _link_unique(u):
                    self.tmp_paths.append(u.tmp)
                self.directories[u.new_dir] = None
                u.tmp = ""
        finally:
            for u in unsynced:
                if u.tmp:
                    with suppress(OSError):
                        os.unlink(u.tmp)

    def discard(self) -> None:
        """The batch failed: forget the files not yet linked."""
        unsynced, self.unsynced = self.unsynced, []
        for u in unsynced:
            with suppress(OSError):
                os.close(u.fd)
            with suppress(OSError):
                os.unlink(u.tmp)


def _link_unique(u: _Unsynced) -> bool:
    """:func:`fsutil.link_unsynced` under ``u.final``, or, if that name is taken (never
    seen: the names are unique), under a new unique name (``u.final`` is updated)."""
    for _ in range(_NAME_ATTEMPTS):
        try:
            return fsutil.link_unsynced(u.tmp, u.final)
        except FileExistsError:
            info = os.path.basename(u.final).partition(",")[2]      # S=...,W=...
            u.final = os.path.join(u.new_dir, fsutil.unique_name() + "," + info)
    raise MaildirDeliveryError("Unable to find a unique name in new/. (#4.3.0)")


_batch = threading.local()


@contextlib.contextmanager
def shared_syncs() -> Iterator[None]:
    """Deliveries made in this thread inside the block share their fsyncs.

    Inside the block :func:`deliver` only writes each message into ``tmp/``
    and returns where it will be.  On leaving the block all those files are
    fsynced at once (:func:`fsutil.fsync_all`), linked into ``new/``, each
    ``new/`` is fsynced once and the ``tmp/`` names are removed; the caller
    reports the deliveries done only after that (if it raises, none of them
    may be reported done: a delivery not yet durable is repeated, never lost).
    """
    if getattr(_batch, "links", None) is not None:      # nested: the outer block syncs
        yield
        return
    links = _batch.links = _Links()
    try:
        yield
    except BaseException:
        links.discard()
        raise
    finally:
        _batch.links = None
    links.publish()
    fsutil.finish_links(links.directories, links.tmp_paths)


def _message_chunks(header: bytes, message_path: str, data: bytes | None = None,
                    size: int | None = None) -> Iterator[bytes]:
    """``header``, then the message: ``data``, or the first ``size`` bytes of the
    file (None: all of it; a queue file goes on with its envelope)."""
    if data is not None:
        yield header + data if header else data     # one write(2) for a small message
        return
    if header:
        yield header
    with open_data(message_path, size) as f:
        while chunk := f.read(CHUNK):
            yield chunk


class _BareLF:
    """Counts the octets CRLF line ends would add (LFs without a CR) to the chunks it
    passes on: ``,W=`` in the name is then the IMAP RFC822.SIZE / POP3 size, so
    readers (our index, Dovecot) need not read the message to know it."""

    def __init__(self) -> None:
        self.extra = 0
        self._last = b""

    def count(self, chunks: Iterable[bytes]) -> Iterator[bytes]:
        for chunk in chunks:
            if chunk:
                self.extra += chunk.count(b"\n") - chunk.count(b"\r\n")
                if self._last == b"\r" and chunk[:1] == b"\n":
                    self.extra -= 1
                self._last = chunk[-1:]
            yield chunk


def deliver(maildir: str, message_path: str, header: bytes = b"",
            data: bytes | None = None, size: int | None = None) -> Delivered:
    """Write ``header`` + the message into ``maildir``; return where and how big.

    The message is the first ``size`` bytes of the file at ``message_path``
    (None: the whole file); ``data``, when given, is the whole message (already
    read).

    Raises :class:`MaildirDeliveryError` (always temporary: a full disk, a
    disk quota, a missing or sticky directory are all worth a retry).
    """
    try:
        st = os.stat(maildir)
    except OSError as e:
        raise MaildirDeliveryError(
            f"Unable to chdir to maildir {maildir}: {e.strerror}. (#4.2.1)", enhanced="4.2.1"
        ) from e
    if st.st_mode & stat.S_ISVTX:
        raise MaildirDeliveryError(f"dir {maildir} is sticky. (#4.2.1)", enhanced="4.2.1")
    tmp_dir, new_dir = os.path.join(maildir, "tmp"), os.path.join(maildir, "new")
    links = getattr(_batch, "links", None)
    tmp, fd = "", -1
    try:
        tmp, fd, size, extra = _write_tmp(tmp_dir, header, message_path, data, size)
        base = os.path.basename(tmp)
        for attempt in range(_NAME_ATTEMPTS):
            name = (base if attempt == 0 else fsutil.unique_name()) + f",S={size},W={extra}"
            final = os.path.join(new_dir, name)
            if links is not None:
                # inside shared_syncs: the fsync and the link wait for the block's end
                # (which picks another name in the unlikely case this one is taken)
                links.unsynced.append(_Unsynced(fd, tmp, final, new_dir))
                tmp, fd = "", -1
                return Delivered(final, size)
            if fd >= 0:
                synced, fd = fd, -1
                try:
                    fsutil.fsync_file(synced)
                finally:
                    os.close(synced)
            try:
                fsutil.link_into(tmp, final)
                tmp = ""
                return Delivered(final, size)
            except FileExistsError:
                continue
        raise MaildirDeliveryError("Unable to find a unique name in new/. (#4.3.0)")
    except MaildirDeliveryError:
        raise
    except OSError as e:
        raise _os_error(maildir, e) from e
    finally:
        if fd >= 0:
            _closed(fd)
        if tmp:
            with suppress(OSError):
                os.unlink(tmp)


def _write_tmp(tmp_dir: str, header: bytes, message_path: str,
               data: bytes | None, message_size: int | None = None
               ) -> tuple[str, int, int, int]:
    """Create a uniquely named file in ``tmp/`` and write ``header`` + the message
    into it (not fsynced): (path, open fd, size, size with CRLF line ends)."""
    for _ in range(_NAME_ATTEMPTS):
        tmp = os.path.join(tmp_dir, fsutil.unique_name())
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            break
        except FileExistsError:
            continue
    else:
        raise MaildirDeliveryError("Unable to find a unique name in tmp/. (#4.3.0)")
    try:
        crlf, size = _BareLF(), 0
        for chunk in crlf.count(_message_chunks(header, message_path, data, message_size)):
            fsutil.write_all(fd, chunk)
            size += len(chunk)
    except BaseException:
        _closed(fd)
        with suppress(OSError):
            os.unlink(tmp)
        raise
    return tmp, fd, size, size + crlf.extra


def _closed(fd: int) -> int:
    with suppress(OSError):
        os.close(fd)
    return -1


def _os_error(maildir: str, e: OSError) -> MaildirDeliveryError:
    if e.errno == errno.EDQUOT:
        return MaildirDeliveryError(
            f"Disk quota exceeded writing to {maildir}. (#4.2.2)", enhanced="4.2.2")
    if e.errno == errno.ENOSPC:
        return MaildirDeliveryError(
            f"No space left on device writing to {maildir}. (#4.3.1)", enhanced="4.3.1")
    return MaildirDeliveryError(
        f"Temporary error on maildir delivery to {maildir}: {e.strerror}. (#4.3.0)")
