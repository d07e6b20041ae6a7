"""A small cache of recent lookups: each answer is reused for a few seconds.

Used where IndiMail's inlookup caches its answers for a moment (the SMTP
recipient check, local delivery's user lookup): a burst of messages to the same
addresses costs one lookup each, and a change is seen once ``seconds`` have
passed.  At most ``size`` entries are kept, the oldest dropped first.  Entries
are only ever added, replaced or removed by single dict operations, so worker
threads may share one (a race costs at most an extra lookup or an entry).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable, Iterator
from typing import Any

MISSING: Any = object()


class RecentAnswers:
    """``get(key)`` gives an answer recorded less than ``seconds`` ago, else
    :data:`MISSING`; ``put(key, answer, when)`` records one (``when``: the time the
    lookup started, from ``now``).  With ``seconds`` or ``size`` 0 nothing is kept."""

    def __init__(self, seconds: float, size: int,
                 now: Callable[[], float] = time.monotonic) -> None:
        self.seconds = seconds
        self.size = size
        self.now = now
        self._items: dict[Hashable, tuple[float, Any]] = {}   # insertion order: age

    def get(self, key: Hashable) -> Any:
        entry = self._items.get(key)
        if entry is None or self.now() - entry[0] >= self.seconds:
            return MISSING
        return entry[1]

    def put(self, key: Hashable, answer: Any, when: float) -> None:
        if self.seconds <= 0 or self.size <= 0:
            return
        items = self._items
        items.pop(key, None)
        while len(items) >= self.size:
            try:
                del items[next(iter(items))]
            except (KeyError, StopIteration, RuntimeError):   # another thread got there first
                break
        items[key] = (when, answer)

    def clear(self) -> None:
        self._items.clear()

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[Hashable]:
        return iter(list(self._items))
