from __future__ import annotations

import pytest


@pytest.fixture(params=["httpx", "curl"])
def transport(request: pytest.FixtureRequest) -> str:
    """Each delivery test runs against both transports: the behaviour is the same."""
    return str(request.param)
