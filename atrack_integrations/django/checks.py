"""System checks (``manage.py check``), registered by the optional app
``atrack_integrations.django``. Stable ids:

- ``atrack.E001``: no public key: ``ATRACK`` has neither ``SDK`` nor ``PUBLIC_KEY``, and
  neither ``ATRACK_PUBLIC_KEY`` nor ``ATRACK_DISABLED`` is set in the environment.
- ``atrack.E002``: a bad value in ``ATRACK`` (unknown key, wrong type, invalid value,
  a dotted path that does not import). The message names the setting.
- ``atrack.W001``: ``IDENTIFY`` is set but ``ATrackMiddleware`` comes before
  ``AuthenticationMiddleware``, so a hook reading ``request.user`` finds no user
  (the hook's failure is logged and visitors stay anonymous). A warning, not an error,
  because a hook may not use ``request.user`` at all; silence it with
  ``SILENCED_SYSTEM_CHECKS = ["atrack.W001"]`` in that case.
- ``atrack.W002``: the app is installed but ``ATrackMiddleware`` is not in
  ``MIDDLEWARE``: nothing is tracked.
"""

from __future__ import annotations

import os
from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Error, Warning
from django.core.exceptions import ImproperlyConfigured
from django.utils.module_loading import import_string

from . import conf

_TRUE = frozenset({"1", "true", "yes", "on"})


def check_settings(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    messages: list[CheckMessage] = []
    try:
        values = conf.atrack_settings()
    except ImproperlyConfigured as exc:
        return [Error(str(exc), id="atrack.E002")]

    if (
        values.get("SDK") is None
        and not values.get("PUBLIC_KEY")
        and not os.environ.get("ATRACK_PUBLIC_KEY")
        and os.environ.get("ATRACK_DISABLED", "").strip().lower() not in _TRUE
    ):
        messages.append(
            Error(
                "A-Track has no public key.",
                hint="Set ATRACK = {'PUBLIC_KEY': ...} (or 'SDK'), or the ATRACK_PUBLIC_KEY "
                "environment variable; ATRACK_DISABLED=1 runs without sending anything.",
                id="atrack.E001",
            )
        )
    else:
        try:
            # The same build the middleware uses (cached): a check that passes means the
            # middleware will load.
            conf.get_config()
        except ImproperlyConfigured as exc:
            messages.append(Error(str(exc), id="atrack.E002"))

    middleware = list(getattr(settings, "MIDDLEWARE", None) or [])
    ours = _index(middleware, "atrack_integrations.django.middleware.ATrackMiddleware")
    if ours is None:
        messages.append(
            Warning(
                "ATrackMiddleware is not in MIDDLEWARE: no request is tracked.",
                hint="Add 'atrack_integrations.django.ATrackMiddleware' to MIDDLEWARE, after "
                "AuthenticationMiddleware.",
                id="atrack.W002",
            )
        )
    elif values.get("IDENTIFY") is not None:
        auth = _index(middleware, "django.contrib.auth.middleware.AuthenticationMiddleware")
        if auth is not None and auth > ours:
            messages.append(
                Warning(
                    "ATrackMiddleware comes before AuthenticationMiddleware, so an IDENTIFY "
                    "hook that reads request.user finds no user.",
                    hint="Move 'atrack_integrations.django.ATrackMiddleware' below "
                    "'django.contrib.auth.middleware.AuthenticationMiddleware'.",
                    id="atrack.W001",
                )
            )
    return messages


def _index(middleware: list[str], class_path: str) -> int | None:
    """Position of the first entry that is ``class_path`` or a subclass of it."""
    target = import_string(class_path)
    for position, entry in enumerate(middleware):
        if entry == class_path:
            return position
        try:
            cls = import_string(entry)
        except ImportError:
            continue  # Django's own checks report middleware that does not import
        if isinstance(cls, type) and issubclass(cls, target):
            return position
    return None
