"""The current settings snapshot, and swapping in a new one on SIGHUP.

qmail-send re-reads its controls on HUP and, if that fails, keeps serving with
the old ones.  :class:`Config` does the same: :meth:`Config.reload` builds a
complete new :class:`Settings` and only then replaces the reference, so a reader
sees the old snapshot or the new one, never a mix, and a bad file never takes the
server down.  Whoever holds a snapshot (a connection, a delivery) keeps using it.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable

from twisted.logger import Logger

from indimail_tw.config.control import ControlDir
from indimail_tw.config.settings import Settings
from indimail_tw.errors import ConfigError

Observer = Callable[[Settings], object]


class Config:
    """Holder of the current :class:`Settings`.

    The constructor reads the control files and raises :class:`ConfigError` if one
    is bad: at startup that must stop the server.  Reloads read files (blocking),
    so run them off the reactor thread (``deferToThread(config.reload)``); observers
    are called in the thread that reloaded.
    """

    log = Logger()

    def __init__(self, control: ControlDir | str, *,
                 fqdn: Callable[[], str] = socket.getfqdn) -> None:
        self.control = control if isinstance(control, ControlDir) else ControlDir(control)
        self._fqdn = fqdn
        self._lock = threading.Lock()
        self._observers: list[Observer] = []
        self._current = Settings.load(self.control, fqdn=fqdn)
        self._log_warnings(self._current)

    @property
    def current(self) -> Settings:
        return self._current

    def reload(self) -> bool:
        """Build a new snapshot and swap it in; on a bad file keep the old one.

        Returns whether the new snapshot is in place.  A failure is logged with the
        file and line at fault.
        """
        with self._lock:
            try:
                new = Settings.load(self.control, fqdn=self._fqdn)
            except ConfigError as e:
                self.log.error("control files not reloaded, keeping the previous "
                               "settings: {error}", error=str(e))
                return False
            self._current = new
            observers = list(self._observers)
        self.log.info("control files reloaded from {path}", path=self.control.path)
        self._log_warnings(new)
        for observer in observers:
            try:
                observer(new)
            except Exception:  # noqa: BLE001 -- one broken observer must not stop the rest
                self.log.failure("settings observer {observer!r} failed", observer=observer)
        return True

    def reload_if_changed(self) -> bool:
        """Reload only if a file the current snapshot read has changed since.

        Returns whether a new snapshot was swapped in.
        """
        if not self._current.changed():
            return False
        return self.reload()

    def subscribe(self, callback: Observer) -> Callable[[], None]:
        """Call ``callback(new_settings)`` after each successful reload.

        Returns a function that unsubscribes it.
        """
        with self._lock:
            self._observers.append(callback)

        def unsubscribe() -> None:
            with self._lock:
                if callback in self._observers:
                    self._observers.remove(callback)

        return unsubscribe

    def _log_warnings(self, settings: Settings) -> None:
        for warning in settings.warnings:
            self.log.warn("{warning}", warning=warning)  # noqa: G010 -- Twisted's name
