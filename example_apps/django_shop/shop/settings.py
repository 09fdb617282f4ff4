"""Settings of the example shop: the smallest Django project that shows A-Track.

No database: the shop keeps no data of its own. A-Track reads its key, endpoint, geo
and delivery mode from the ``ATRACK_*`` environment variables (``Options.from_env()``;
``ATRACK_OUTBOX=/var/tmp/shop-outbox`` turns the outbox on, or ``ATRACK["OUTBOX"]``);
without ``ATRACK_PUBLIC_KEY`` the shop runs with tracking disabled.
"""

from __future__ import annotations

import logging
import os

from atrack_core import ATrackSdk, Options

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "example-shop-not-secret")
DEBUG = os.environ.get("DJANGO_DEBUG", "1") == "1"
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "[::1]"]
USE_TZ = True
ROOT_URLCONF = "shop.urls"
WSGI_APPLICATION = "shop.wsgi.application"
DATABASES: dict[str, object] = {}

INSTALLED_APPS = [
    # Optional: registers the A-Track system checks (manage.py check).
    "atrack_integrations.django",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.middleware.common.CommonMiddleware",
    # After AuthenticationMiddleware when a site has one, so that an IDENTIFY hook
    # can read request.user (system check atrack.W001).
    "atrack_integrations.django.ATrackMiddleware",
]

ATRACK: dict[str, object] = {
    # Everything else has the spec's defaults: cookie "atrack_uuid", one /init per
    # user per 30 minutes, /health and /static/ excluded, forwarding headers ignored.
    "TRUSTED_PROXIES": os.environ.get("ATRACK_TRUSTED_PROXIES", ""),
}
if not os.environ.get("ATRACK_PUBLIC_KEY"):
    logging.getLogger("shop").warning("A-Track disabled: ATRACK_PUBLIC_KEY is not set")
    ATRACK["SDK"] = ATrackSdk(Options.from_env(disabled=True))
elif os.environ.get("ATRACK_REDIS_URL"):
    # Shared by every worker: one /init per user however many workers serve them.
    # A class named by its dotted path is built without arguments: RedisStorage then
    # reads ATRACK_REDIS_URL.
    ATRACK["STORAGE"] = "atrack_core.redis.RedisStorage"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"atrack": {"handlers": ["console"], "level": "WARNING"}},
}
