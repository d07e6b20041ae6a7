import pytest

from tests.queue.helpers import LogCapture


@pytest.fixture
def logs():
    capture = LogCapture()
    yield capture
    capture.close()
