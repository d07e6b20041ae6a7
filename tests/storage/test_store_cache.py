"""The server's UserStore reuses a delivery lookup for cache_seconds."""

from __future__ import annotations

from indimail_tw.storage.engine import SQLiteEngine
from indimail_tw.storage.store import REPOS, UserStore
from indimail_tw.storage.users import User


class _Now:
    t = 100.0

    def __call__(self) -> float:
        return self.t


def _store(tmp_path, **kw):
    engine = SQLiteEngine(str(tmp_path / "db.sqlite"))
    engine.run_sync(engine.prepare)
    engine.run_sync(REPOS.users.add, User("alice", "example.com", "x"))
    engine.run_sync(REPOS.aliases.add, "sales", "example.com", "&alice@example.com")
    return engine, UserStore(engine, **kw)


def test_lookups_are_reused_for_cache_seconds(tmp_path):
    now = _Now()
    engine, store = _store(tmp_path, cache_seconds=1.0, now=now)
    try:
        user, real, lines = store.get_user_and_aliases_now("alice", "example.com")
        assert user.name == "alice" and real == "example.com" and lines == []
        _, _, sales = store.get_user_and_aliases_now("sales", "example.com")
        assert sales == ["&alice@example.com"]
        sales.append("changed by the caller")             # callers get their own list
        engine.run_sync(REPOS.users.delete, "alice", "example.com")
        engine.run_sync(REPOS.aliases.add, "sales", "example.com", "&bob@example.com")
        now.t += 0.99
        assert store.get_user_and_aliases_now("alice", "example.com")[0] is not None
        assert store.get_user_and_aliases_now("sales", "example.com")[2] == [
            "&alice@example.com"]
        now.t += 0.02
        assert store.get_user_and_aliases_now("alice", "example.com")[0] is None
        assert sorted(store.get_user_and_aliases_now("sales", "example.com")[2]) == [
            "&alice@example.com", "&bob@example.com"]
    finally:
        engine.close()


def test_forget_and_writes_drop_the_cache(tmp_path):
    from twisted.internet import defer

    now = _Now()
    engine, store = _store(tmp_path, cache_seconds=60.0, now=now)
    try:
        assert store.get_user_and_aliases_now("alice", "example.com")[0].active
        engine.run_sync(REPOS.users.set_active, "alice", "example.com", False)
        assert store.get_user_and_aliases_now("alice", "example.com")[0].active
        store.forget()
        assert not store.get_user_and_aliases_now("alice", "example.com")[0].active
        engine.run_sync(REPOS.users.set_active, "alice", "example.com", True)
        store.engine = _Sync(engine)
        result = store.set_flags("alice", "example.com", 0)
        assert isinstance(result, defer.Deferred)
        assert store.get_user_and_aliases_now("alice", "example.com")[0].active
    finally:
        engine.close()


class _Sync:
    """The engine, running interactions at once (enough for the write test)."""

    def __init__(self, engine):
        self._engine = engine

    def runInteraction(self, fn, *args):  # noqa: N802
        from twisted.internet import defer

        return defer.maybeDeferred(self._engine.run_sync, fn, *args)

    def run_read(self, fn, *args):
        return self._engine.run_read(fn, *args)


def test_no_cache_by_default(tmp_path):
    engine, store = _store(tmp_path)
    try:
        assert store.get_user_and_aliases_now("alice", "example.com")[0] is not None
        engine.run_sync(REPOS.users.delete, "alice", "example.com")
        assert store.get_user_and_aliases_now("alice", "example.com")[0] is None
    finally:
        engine.close()
