"""A-Track for Starlette: the ASGI middleware and a typed accessor for views.

::

    from starlette.applications import Starlette
    from atrack_integrations.starlette import ATrackMiddleware, get_tracker

    app = Starlette(routes=routes)
    app.add_middleware(ATrackMiddleware, sdk=sdk)

    async def order(request):
        get_tracker(request).track("order_created", {"amount": 12})
        # or, untyped: request.state.atrack.track(...)

The middleware itself is :class:`atrack_integrations.asgi.ATrackMiddleware` (pure ASGI);
this module only adds the accessor. Needs Starlette: ``pip install 'a-track-sdk[starlette]'``.
"""

from __future__ import annotations

try:
    from starlette.requests import HTTPConnection
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "atrack_integrations.starlette needs Starlette: pip install 'a-track-sdk[starlette]'"
    ) from exc

from ._lifecycle import RequestTracker
from .asgi import ATrackMiddleware, tracker_in

__all__ = ["ATrackMiddleware", "RequestTracker", "get_tracker"]


def get_tracker(request: HTTPConnection) -> RequestTracker:
    """The request's :class:`~atrack_integrations.RequestTracker`.

    Raises ``RuntimeError`` when the middleware is not installed.
    """
    return tracker_in(request.scope, __name__)
