"""Web-framework integrations for the A-Track SDK.

One module per framework (``asgi``, ``fastapi``, ``starlette``, ``wsgi``, ``flask``,
``django``, ``aiohttp``), each a thin adapter over one shared per-request lifecycle
(:class:`IntegrationConfig`, :class:`RequestTracker`), and ``celery``, which carries a
request's user into the tasks it publishes. Each makes the request's tracker current for
the request (:func:`current_tracker`, :func:`track`). Importing this package imports no
framework; importing a framework module imports only that framework.
"""

from __future__ import annotations

from ._current import NoRequestError, current_tracker, track
from ._lifecycle import (
    DEFAULT_EXCLUDE_PATHS,
    IntegrationConfig,
    RequestTracker,
    resolve_sdk,
)

__all__ = [
    "DEFAULT_EXCLUDE_PATHS",
    "IntegrationConfig",
    "NoRequestError",
    "RequestTracker",
    "current_tracker",
    "resolve_sdk",
    "track",
]
