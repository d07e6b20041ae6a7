"""Config: atomic swap on reload, keeping the old snapshot when a file is bad."""

from __future__ import annotations

import os

import pytest
from twisted.logger import Logger, formatEvent

from indimail_tw.config import Config, ControlDir, Settings
from indimail_tw.errors import ConfigError


def write(directory, name: str, data: str) -> str:
    path = os.path.join(str(directory), name)
    with open(path, "w") as f:
        f.write(data)
    return path


@pytest.fixture
def events() -> list[dict]:
    return []


@pytest.fixture
def config(tmp_path, events) -> Config:
    write(tmp_path, "me", "mail.example.com\n")
    write(tmp_path, "databytes", "100\n")
    c = Config(ControlDir(str(tmp_path), {}), fqdn=lambda: "h.example")
    c.log = Logger(observer=events.append)
    return c


def messages(events: list[dict]) -> list[str]:
    return [formatEvent(e) for e in events]


def test_current_is_a_settings_snapshot(config):
    assert isinstance(config.current, Settings)
    assert config.current.databytes == 100


def test_reload_swaps_in_a_new_snapshot(config, tmp_path):
    old = config.current
    write(tmp_path, "databytes", "200\n")
    assert config.reload() is True
    assert config.current is not old
    assert config.current.databytes == 200
    assert old.databytes == 100  # work in flight keeps its snapshot


def test_bad_file_keeps_the_old_snapshot_and_logs_where(config, tmp_path, events):
    old = config.current
    path = write(tmp_path, "databytes", "lots\n")
    assert config.reload() is False
    assert config.current is old
    assert config.current.databytes == 100
    (text,) = [m for m in messages(events) if "not reloaded" in m]
    assert f"{path} line 1: not a number: 'lots'" in text
    assert events[-1]["log_level"].name == "error"


def test_a_fixed_file_reloads_again(config, tmp_path):
    write(tmp_path, "databytes", "lots\n")
    assert not config.reload()
    write(tmp_path, "databytes", "300\n")
    assert config.reload()
    assert config.current.databytes == 300


def test_observers_hear_of_successful_reloads_only(config, tmp_path):
    heard: list[Settings] = []
    config.subscribe(heard.append)
    assert config.reload()
    assert heard == [config.current]
    write(tmp_path, "maxhops", "x\n")
    assert not config.reload()
    assert len(heard) == 1


def test_unsubscribe(config):
    heard: list[Settings] = []
    unsubscribe = config.subscribe(heard.append)
    unsubscribe()
    unsubscribe()  # twice is harmless
    config.reload()
    assert heard == []


def test_a_failing_observer_does_not_stop_the_others(config, events):
    heard: list[Settings] = []

    def broken(settings: Settings) -> None:
        raise RuntimeError("observer bug")

    config.subscribe(broken)
    config.subscribe(heard.append)
    assert config.reload() is True
    assert heard == [config.current]
    assert any(e.get("log_failure") is not None for e in events)


def test_reload_if_changed(config, tmp_path):
    old = config.current
    assert config.reload_if_changed() is False
    assert config.current is old
    write(tmp_path, "rcpthosts", "example.com\n")
    assert config.reload_if_changed() is True
    assert config.current.rcpthosts == ("example.com",)
    assert config.reload_if_changed() is False


def test_reload_logs_cdb_warnings(config, tmp_path, events):
    write(tmp_path, "morercpthosts", "more.example\n")
    assert config.reload()
    assert any("morercpthosts.cdb does not" in m for m in messages(events))


def test_startup_with_a_bad_file_raises(tmp_path):
    path = write(tmp_path, "concurrencyremote", "many\n")
    with pytest.raises(ConfigError, match=f"^{path} line 1"):
        Config(ControlDir(str(tmp_path), {}), fqdn=lambda: "h.example")


def test_config_accepts_a_path(tmp_path):
    write(tmp_path, "me", "mail.example.com\n")
    config = Config(str(tmp_path), fqdn=lambda: "h.example")
    assert config.control.path == str(tmp_path)
    assert config.current.me == "mail.example.com"
