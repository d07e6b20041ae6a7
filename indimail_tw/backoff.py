"""When to start a helper process again after it died: the supervisor of
``--workers`` and the local delivery helper's agent share this rule."""

from __future__ import annotations

from collections.abc import Sequence


class Backoff:
    """Delays before a restart: ``delays[0]`` after a first death, growing along
    ``delays`` while the process keeps dying young; a process that ran at least
    ``stable_after`` seconds starts again after ``delays[0]`` and the count starts
    from there."""

    def __init__(self, delays: Sequence[float], stable_after: float) -> None:
        self.delays = tuple(delays)
        self.stable_after = stable_after
        self.failures = 0

    def next_delay(self, ran: float) -> float:
        """The delay before the next start of a process that ran ``ran`` seconds."""
        self.failures = 0 if ran >= self.stable_after else self.failures + 1
        return self.delays[min(max(self.failures - 1, 0), len(self.delays) - 1)]
