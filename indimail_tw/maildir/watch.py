"""Which names changed in a Maildir folder's ``new/`` and ``cur/``: inotify (Linux).

:class:`~indimail_tw.maildir.index.FolderIndex` keeps the set of names the index
rows describe (its last listing plus its own renames, appends and expunges).
After a change of its own, the directory's mtime differs from the one its last
scan stored, and without more knowledge it must list ``cur/`` again to learn
whether somebody else changed something in the same clock tick.  A watch
answers that without a listing: every create, delete and rename in the two
directories, by any process, queues an event with the name; when each event
since the last look agrees with the known set (a name created or moved in is
in it, a name deleted or moved away is not), the directory holds exactly the
known names.

Why that is enough: the watch exists before the listing that made the known
set (:meth:`FolderWatch.quiet` is only asked after that), and the kernel
queues every event after the watch was added.  For each name, its last event
says whether it is there now; an event that agrees with the known set makes
the known set right for that name, and a name with no event is as the listing
saw it.  Any doubt (events lost to a queue overflow, a watched directory
removed or replaced, no inotify at all) answers False: the caller lists.

One inotify descriptor per process; any thread that asks reads the pending
events (non-blocking) and hands them to the watches of their directories.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import struct
import threading
import weakref

IN_MOVED_FROM = 0x40
IN_MOVED_TO = 0x80
IN_CREATE = 0x100
IN_DELETE = 0x200
IN_DELETE_SELF = 0x400
IN_MOVE_SELF = 0x800
IN_Q_OVERFLOW = 0x4000
IN_IGNORED = 0x8000
IN_ONLYDIR = 0x01000000
_ADDED = IN_CREATE | IN_MOVED_TO
_REMOVED = IN_DELETE | IN_MOVED_FROM
_MASK = _ADDED | _REMOVED | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR
_EVENT = struct.Struct("iIII")
#: Events kept per watch between two looks; more and the watch answers False once.
MAX_PENDING = 4096


class _INotify:
    """The process's inotify descriptor and the watches of each directory."""

    def __init__(self) -> None:
        name = ctypes.util.find_library("c")
        libc = ctypes.CDLL(name, use_errno=True)
        self._add = libc.inotify_add_watch
        self._add.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        self._add.restype = ctypes.c_int
        self._rm = libc.inotify_rm_watch
        self._rm.argtypes = [ctypes.c_int, ctypes.c_int]
        self._rm.restype = ctypes.c_int
        init1 = libc.inotify_init1
        init1.argtypes = [ctypes.c_int]
        init1.restype = ctypes.c_int
        fd = init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        self.fd = fd
        self.lock = threading.Lock()
        #: wd -> (subdirectory name "new"/"cur", the watches that get its events)
        self._subscribers: dict[int, tuple[str, weakref.WeakSet[FolderWatch]]] = {}

    def subscribe(self, watch: FolderWatch, folder: str) -> bool:
        """Route the events of ``folder``/new and /cur to ``watch`` from now on."""
        with self.lock:
            wds = []
            for sub in ("new", "cur"):
                wd = self._add(self.fd, os.fsencode(f"{folder}/{sub}"), _MASK)
                if wd < 0:                      # ENOSPC (max_user_watches), ENOENT, ...
                    for old in wds:
                        self._release(old, watch)
                    return False
                entry = self._subscribers.get(wd)
                if entry is None:
                    entry = self._subscribers[wd] = (sub, weakref.WeakSet())
                entry[1].add(watch)
                wds.append(wd)
            watch._wds = tuple(wds)
            return True

    def unsubscribe(self, watch: FolderWatch) -> None:
        with self.lock:
            for wd in watch._wds:
                self._release(wd, watch)
            watch._wds = ()

    def _release(self, wd: int, watch: FolderWatch) -> None:
        entry = self._subscribers.get(wd)
        if entry is None:
            return
        entry[1].discard(watch)
        if not entry[1]:
            del self._subscribers[wd]
            self._rm(self.fd, wd)

    def drain(self) -> None:
        """Read every pending event and hand it to its watches (hold ``lock``)."""
        subscribers = self._subscribers
        while True:
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                return
            except OSError as e:
                if e.errno == errno.EINTR:
                    continue
                raise
            if not data:
                return
            pos, end = 0, len(data)
            while pos < end:
                wd, mask, _cookie, size = _EVENT.unpack_from(data, pos)
                pos += 16
                name = data[pos:pos + size].rstrip(b"\0")
                pos += size
                if mask & IN_Q_OVERFLOW:
                    for _sub, watches in subscribers.values():
                        for watch in watches:
                            watch._lost = True
                    continue
                entry = subscribers.get(wd)
                if entry is None:
                    continue
                sub, watches = entry
                if not watches:                 # its watches were dropped unclosed
                    del subscribers[wd]
                    self._rm(self.fd, wd)
                    continue
                if mask & (IN_IGNORED | IN_DELETE_SELF | IN_MOVE_SELF) or not name:
                    for watch in watches:       # the directory is gone or elsewhere
                        watch._dead = True
                    if mask & IN_IGNORED:       # the kernel dropped the watch
                        del subscribers[wd]
                    continue
                if name[:1] == b".":            # not a message (as FolderIndex._list)
                    continue
                event = (sub, mask, os.fsdecode(name))
                for watch in watches:
                    if len(watch._events) >= MAX_PENDING:
                        watch._lost = True
                        watch._events.clear()
                    if not watch._lost:
                        watch._events.append(event)


_inotify: _INotify | None = None
_inotify_failed = False
_init_lock = threading.Lock()


def _instance() -> _INotify | None:
    global _inotify, _inotify_failed
    if _inotify is None and not _inotify_failed:
        with _init_lock:
            if _inotify is None and not _inotify_failed:
                try:
                    _inotify = _INotify()
                except (OSError, AttributeError, TypeError):   # no inotify here
                    _inotify_failed = True
    return _inotify


class FolderWatch:
    """The creates, deletes and renames in one folder's ``new/`` and ``cur/``
    since the watch began (see the module docstring)."""

    def __init__(self, inotify: _INotify) -> None:
        self._inotify = inotify
        self._wds: tuple[int, ...] = ()
        self._events: list[tuple[str, int, str]] = []
        self._lost = False                   # events were dropped: False once
        self._dead = False                   # a watched directory went: False for good

    @classmethod
    def start(cls, folder: str) -> FolderWatch | None:
        """A watch of ``folder``, or None where inotify is not available."""
        inotify = _instance()
        if inotify is None:
            return None
        watch = cls(inotify)
        return watch if inotify.subscribe(watch, folder) else None

    def quiet(self, known: tuple[set[str], set[str]]) -> bool:
        """Do the directories hold exactly ``known`` (new/ names, cur/ names)?  Every
        event since the previous call must agree with it.  The events are used up
        either way: after False the caller lists and makes a new known set."""
        inotify = self._inotify
        with inotify.lock:
            inotify.drain()
            events, self._events = self._events, []
            lost, self._lost = self._lost, False
        if lost or self._dead or not self._wds:
            return False
        new, cur = known
        for sub, mask, name in events:
            present = name in (cur if sub == "cur" else new)
            if present != bool(mask & _ADDED):
                return False
        return True

    def reset(self) -> None:
        """Forget the events so far (the caller lists next: the listing says more)."""
        inotify = self._inotify
        with inotify.lock:
            inotify.drain()
            self._events, self._lost = [], False

    def close(self) -> None:
        if self._wds:
            self._inotify.unsubscribe(self)
