"""The example shops pick RedisStorage when ATRACK_REDIS_URL is set (fast, in-process)."""

from __future__ import annotations

import pytest

from atrack_core import MemoryStorage

pytest.importorskip("redis")

URL = "redis://127.0.0.1:6399/3"


def test_build_sdk_uses_redis_when_the_url_is_set() -> None:
    from atrack_core.redis import RedisStorage
    from example_apps._sdk import build_sdk

    with build_sdk({"ATRACK_PUBLIC_KEY": "pub_test_1234", "ATRACK_REDIS_URL": URL}) as sdk:
        assert isinstance(sdk.storage, RedisStorage)
        assert "127.0.0.1:6399/3" in repr(sdk.storage)
        assert not sdk.options.disabled
    with build_sdk({"ATRACK_PUBLIC_KEY": "pub_test_1234"}) as sdk:
        assert isinstance(sdk.storage, MemoryStorage)


def test_build_sdk_without_a_key_is_disabled_and_keeps_the_storage() -> None:
    from atrack_core.redis import RedisStorage
    from example_apps._sdk import build_sdk

    with build_sdk({"ATRACK_REDIS_URL": URL}) as sdk:
        assert sdk.options.disabled
        assert isinstance(sdk.storage, RedisStorage)


def test_flask_shop_uses_redis_when_the_url_is_set(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("flask")
    from atrack_core.redis import RedisStorage
    from example_apps.flask_shop.app import create_app

    monkeypatch.setenv("ATRACK_PUBLIC_KEY", "pub_test_1234")
    monkeypatch.setenv("ATRACK_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("ATRACK_REDIS_URL", URL)
    sdk = create_app().extensions["atrack"].sdk
    try:
        assert isinstance(sdk.storage, RedisStorage)
        assert "127.0.0.1:6399/3" in repr(sdk.storage)
    finally:
        sdk.shutdown(timeout=0.5)
    monkeypatch.delenv("ATRACK_REDIS_URL")
    sdk = create_app().extensions["atrack"].sdk
    try:
        assert isinstance(sdk.storage, MemoryStorage)
    finally:
        sdk.shutdown(timeout=0.5)
