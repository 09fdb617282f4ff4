"""DjangoCacheStorage, and importing the package without configured settings."""

from __future__ import annotations

import logging
import subprocess
import sys
from typing import Any

import pytest
from django.test import override_settings

from atrack_core import Storage
from atrack_integrations.django.storage import DjangoCacheStorage
from tests.integrations.test_wsgi_servers import ROOT


def test_storage_contract() -> None:
    storage = DjangoCacheStorage()
    assert isinstance(storage, Storage)
    assert storage.get("k") is None
    assert storage.add("k", "v", ttl=60) is True
    assert storage.add("k", "w", ttl=60) is False
    assert storage.get("k") == "v"
    storage.set("k", "x")
    assert storage.get("k") == "x"
    storage.delete("k")
    assert storage.get("k") is None


def test_storage_uses_the_named_alias() -> None:
    caches = {
        "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
        "shared": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": "s"},
    }
    with override_settings(CACHES=caches):
        from django.core.cache import caches as django_caches

        DjangoCacheStorage("shared").set("k", "v")
        assert django_caches["shared"].get("atrack:k") == "v"
        assert django_caches["default"].get("atrack:k") is None


class BrokenCache:
    """A cache server that is down: every operation raises (after the client's timeout,
    in life), and is counted."""

    def __init__(self) -> None:
        self.asked = 0
        self.down = True

    def __getattr__(self, name: str) -> Any:
        def operation(*args: Any, **kwargs: Any) -> Any:
            self.asked += 1
            if self.down:
                raise ConnectionError("cache server down")
            return True if name == "add" else None

        return operation


def test_a_failing_cache_is_a_miss_asked_once_per_retry_interval(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Every request asks the storage: it asked the cache each time (each paying the
    # cache client's timeout during an outage) and logged a WARNING with a traceback
    # each time. Now, as RedisStorage: asked once, then left alone for retry_interval.
    broken = BrokenCache()
    storage = DjangoCacheStorage(retry_interval=3600)
    monkeypatch.setattr(DjangoCacheStorage, "cache", property(lambda self: broken))
    with caplog.at_level(logging.DEBUG, logger="atrack"):
        for _ in range(50):  # fifty requests during the outage
            assert storage.get("k") is None
            assert storage.add("k", "v") is True  # a miss: the caller goes ahead
            storage.set("k", "v")
            storage.delete("k")
    assert broken.asked == 1
    records = [r for r in caplog.records if r.name == "atrack.django"]
    [warning] = [r for r in records if r.levelno >= logging.WARNING]
    assert warning.levelno == logging.WARNING and warning.exc_info is not None
    # Each miss is a DEBUG line naming its key (a duplicate /init is traced to it).
    debug = [r.getMessage() for r in records if r.levelno == logging.DEBUG]
    assert len(debug) == 200
    assert all(":k: a miss (" in m for m in debug), debug[:3]
    assert sum("(not asked, resting after a failure)" in m for m in debug) == 199
    assert "Django cache 'default' get failed; treating it as a miss" in warning.getMessage()


def test_a_cache_outage_is_logged_once_and_its_end_too(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    broken = BrokenCache()
    storage = DjangoCacheStorage(retry_interval=0)  # asked every time
    monkeypatch.setattr(DjangoCacheStorage, "cache", property(lambda self: broken))
    with caplog.at_level(logging.DEBUG, logger="atrack"):
        for _ in range(20):
            assert storage.add("k", "v") is True
        broken.down = False
        assert storage.add("k", "v") is True
    assert broken.asked == 21
    records = [r for r in caplog.records if r.name == "atrack.django"]
    warnings = [r.getMessage() for r in records if r.levelno >= logging.WARNING]
    assert len(warnings) == 2, warnings
    assert "reachable again" in warnings[1]
    debug = [r.getMessage() for r in records if r.levelno == logging.DEBUG]
    assert len([m for m in debug if " failed again: " in m]) == 19
    assert len([m for m in debug if ":k: a miss (failed: " in m]) == 20


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_import_needs_no_configured_settings() -> None:
    result = run_python(
        "import atrack_integrations.django as d; "
        "from django.conf import settings; assert not settings.configured; "
        "print(d.ATrackMiddleware.__name__)"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ATrackMiddleware"


def test_missing_django_names_the_extra() -> None:
    result = run_python(
        "import sys; sys.modules['django'] = None\n"
        "try:\n    import atrack_integrations.django\n"
        "except ImportError as exc:\n    print(exc)\n"
    )
    assert "pip install 'a-track-sdk[django]'" in result.stdout, result.stderr


def test_wsgi_module_imports_no_framework() -> None:
    result = run_python(
        "import sys, atrack_integrations.wsgi; "
        "print(sorted({'django', 'flask', 'starlette'} & set(sys.modules)))"
    )
    assert result.stdout.strip() == "[]", result.stderr


def test_public_api() -> None:
    import atrack_integrations.django as module

    assert module.__all__ == [
        "ATrackMiddleware",
        "DjangoCacheStorage",
        "get_sdk",
        "get_tracker",
        "identify_user",
    ]
    for name in module.__all__:
        assert getattr(module, name) is not None


@pytest.mark.parametrize(
    "raw", ['{"uuid": 5}', '{"uuid": ""}', "[", '{"uuid": "u", "attributes": 1}']
)
def test_a_cached_current_user_that_does_not_validate_is_a_logged_miss(
    raw: str, caplog: pytest.LogCaptureFixture
) -> None:
    from atrack_core import ATrackSdk, Options
    from atrack_core._sdk import CURRENT_USER_KEY

    storage = DjangoCacheStorage()
    storage.set(CURRENT_USER_KEY, raw)
    with ATrackSdk(Options("pub_xxxxx", disabled=True, storage=storage)) as sdk:
        with caplog.at_level(logging.WARNING, logger="atrack"):
            result = sdk.init()  # neither TypeError nor ValueError
        assert result.is_new_user
        sdk.track("e")
        assert sdk.get_user() is not None
    assert any("does not validate" in r.getMessage() for r in caplog.records)
