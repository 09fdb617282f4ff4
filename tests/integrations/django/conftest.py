"""Django is configured here, only when these tests are collected: the settings come
from ``tests/django_settings.py``; nothing global is set in the project's pytest config.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from atrack_core.testing import CapturedCalls, capture_calls
from tests.integrations.test_wsgi_servers import atrack_log_guard  # noqa: F401

try:
    import django
except ImportError:  # the tox envs without Django skip this whole directory
    collect_ignore_glob = ["*"]
else:
    from django.conf import settings

    if not settings.configured:
        from tests import django_settings

        settings.configure(
            **{
                name: getattr(django_settings, name)
                for name in dir(django_settings)
                if name.isupper()
            }
        )
        django.setup()


@pytest.fixture(autouse=True)
def calls() -> Iterator[CapturedCalls]:
    """Every Django test captures what the SDK would send, so nothing leaves the
    process; each test starts with a fresh SDK (fresh init dedupe) and cache."""
    from django.core.cache import cache

    from atrack_integrations.django import conf
    from tests.integrations.django import testapp

    testapp.SYNC_USER_LOADS.clear()
    cache.clear()
    with capture_calls() as captured:
        yield captured
    conf.reset()
