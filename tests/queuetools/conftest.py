import pytest

from tests.queuetools.helpers import ENV_VARS, make_root


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def root(tmp_path):
    return make_root(str(tmp_path / "root"))
