from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fake_api import FakeApi


@pytest.fixture
def fake_api() -> Iterator[FakeApi]:
    with FakeApi() as api:
        yield api
