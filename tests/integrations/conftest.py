"""Fixtures shared by the integration tests (test modules override them where they need
another SDK)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from atrack_core import ATrackSdk, Options
from atrack_core.testing import CapturedCalls, capture_calls


@pytest.fixture
def sdk() -> Iterator[ATrackSdk]:
    """A disabled SDK: validates everything, sends nothing (pair it with ``calls``)."""
    sdk = ATrackSdk(Options("pub_test_1234", disabled=True))
    yield sdk
    sdk.shutdown()


@pytest.fixture
def calls() -> Iterator[CapturedCalls]:
    """What every SDK would send during the test."""
    with capture_calls() as captured:
        yield captured
