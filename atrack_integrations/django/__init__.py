"""Django integration: middleware, settings, system checks and a cache-backed storage.

::

    # settings.py
    INSTALLED_APPS = [..., "atrack_integrations.django"]      # optional: system checks
    MIDDLEWARE = [
        ...,
        "django.contrib.auth.middleware.AuthenticationMiddleware",
        "atrack_integrations.django.ATrackMiddleware",
    ]
    ATRACK = {"PUBLIC_KEY": "pub_xxxxx"}

    # a view
    request.atrack.track("order_created", {"amount": 12})

Importing this package does not read settings, so it works before they are configured.
"""

from __future__ import annotations

try:
    import django  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "atrack_integrations.django needs Django: pip install 'a-track-sdk[django]'"
    ) from exc

from .conf import get_sdk, identify_user
from .middleware import ATrackMiddleware, get_tracker
from .storage import DjangoCacheStorage

__all__ = ["ATrackMiddleware", "DjangoCacheStorage", "get_sdk", "get_tracker", "identify_user"]
