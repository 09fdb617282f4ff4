"""Minimal Django settings for ``tests/integrations/django`` (and the servers those
tests start). No database: the tests use signed-cookie sessions and a fake auth layer.

The A-Track settings come from the environment so that a test can point a server
subprocess at a fake API; in-process tests capture calls instead of sending them.
"""

from __future__ import annotations

import os

SECRET_KEY = "atrack-tests-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["*"]
USE_TZ = True
ROOT_URLCONF = "tests.integrations.django.testapp"
DATABASES: dict[str, object] = {}
INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "atrack_integrations.django",
]
SESSION_ENGINE = "django.contrib.sessions.backends.signed_cookies"
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "tests.integrations.django.testapp.FakeAuthMiddleware",
    "atrack_integrations.django.ATrackMiddleware",
]
CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
LOGGING_CONFIG = None

ATRACK: dict[str, object] = {
    "PUBLIC_KEY": os.environ.get("ATRACK_PUBLIC_KEY", "pub_test_key_1234"),
    # Port 9 (discard) on loopback: nothing listens, so a test that forgot to capture
    # calls can never reach the real API.
    "ENDPOINT": os.environ.get("ATRACK_ENDPOINT", "http://127.0.0.1:9"),
    "IDENTIFY": os.environ.get(
        "ATRACK_TEST_IDENTIFY", "tests.integrations.django.testapp.identify"
    ),
}
if os.environ.get("ATRACK_TRUSTED_PROXIES"):
    ATRACK["TRUSTED_PROXIES"] = os.environ["ATRACK_TRUSTED_PROXIES"]
