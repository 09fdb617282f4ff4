from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.fake_api import FakeApi


@pytest.fixture
def fake_api() -> Iterator[FakeApi]:
    with FakeApi() as api:
        yield api


def require_or_skip(what: str, available: bool, env_var: str) -> None:
    """Skip a test whose system dependency is missing, except where ``env_var`` says it
    must run (CI sets it after installing the dependency): then fail loudly."""
    if available:
        return
    if os.environ.get(env_var):
        pytest.fail(f"{what} is required here ({env_var} is set) but is not available")
    pytest.skip(f"{what} is not available")


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """A private redis-server for the session (skipped locally when the binary is
    missing; a failure on CI, where .ci/run installs it)."""
    import shutil

    from tests.redis_server import RedisServer

    found = shutil.which("redis-server") is not None
    require_or_skip("redis-server", found, "ATRACK_REQUIRE_REDIS")
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    try:
        yield server
    finally:
        server.stop()
