"""The cache of recent lookups shared by the recipient check and the user store."""

from indimail_tw.recent import MISSING, RecentAnswers


class _Now:
    t = 100.0

    def __call__(self):
        return self.t


def test_answers_expire_are_bounded_and_can_be_switched_off():
    now = _Now()
    cache = RecentAnswers(1.0, 2, now)
    cache.put("a", None, now.t)              # None and False are answers too
    cache.put("b", False, now.t)
    assert cache.get("a") is None and cache.get("b") is False and cache.get("c") is MISSING
    now.t += 1.0
    assert cache.get("a") is MISSING         # exactly `seconds` old: looked up again
    cache.put("c", 3, now.t)                 # the oldest goes
    assert list(cache) == ["b", "c"] and len(cache) == 2
    cache.put("b", 4, now.t)                 # replaced, now the youngest
    assert list(cache) == ["c", "b"] and cache.get("b") == 4
    cache.clear()
    assert not cache
    off = RecentAnswers(0, 10, now)
    off.put("a", 1, now.t)
    assert off.get("a") is MISSING and not off
