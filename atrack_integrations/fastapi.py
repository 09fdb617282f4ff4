"""A-Track for FastAPI: the ASGI middleware plus a dependency for views.

::

    from fastapi import FastAPI
    from atrack_integrations.fastapi import ATrackMiddleware, ATrackTracker

    app = FastAPI()
    app.add_middleware(ATrackMiddleware, sdk=sdk)

    @app.post("/orders")
    def create_order(order: Order, tracker: ATrackTracker) -> dict[str, str]:
        tracker.track("order_created", {"amount": order.amount})
        return {"status": "created"}

Needs FastAPI: ``pip install 'a-track-sdk[fastapi]'``.
"""

from __future__ import annotations

from typing import Annotated

try:
    from fastapi import Depends, Request
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "atrack_integrations.fastapi needs FastAPI: pip install 'a-track-sdk[fastapi]'"
    ) from exc

from ._lifecycle import RequestTracker
from .asgi import ATrackMiddleware, tracker_in

__all__ = ["ATrackMiddleware", "ATrackTracker", "RequestTracker", "get_tracker"]


def get_tracker(request: Request) -> RequestTracker:
    """The request's :class:`~atrack_integrations.RequestTracker` (a FastAPI dependency).

    Raises ``RuntimeError`` when the middleware is not installed, so the mistake shows
    on the first request instead of as missing data.
    """
    return tracker_in(request.scope, __name__)


ATrackTracker = Annotated[RequestTracker, Depends(get_tracker)]
"""Declare ``tracker: ATrackTracker`` in a path operation to receive the tracker."""
