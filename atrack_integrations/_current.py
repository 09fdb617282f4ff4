"""The tracker of the request being handled, reachable from any code that runs for it.

Every integration sets :data:`CURRENT` for the duration of a request (``activate``) and
resets it after (``deactivate``), also when the view raises or a streaming response is
cut. Context variables follow the request into Starlette's thread pool and through
Django's ``sync_to_async``/``async_to_sync`` (they copy the context), and never leak
between concurrent requests.
"""

from __future__ import annotations

from contextvars import ContextVar, Token
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._lifecycle import RequestTracker

CURRENT: ContextVar[RequestTracker | None] = ContextVar("atrack_tracker", default=None)


class NoRequestError(RuntimeError):
    """``track()`` was called where no request (or Celery task) is being handled."""


def current_tracker() -> RequestTracker | None:
    """The tracker of the request (or task) being handled, or ``None`` outside one."""
    return CURRENT.get()


def track(event: str, attributes: dict[str, Any] | None = None) -> None:
    """Track ``event`` for the user of the current request.

    Raises :class:`NoRequestError` outside a request: there is no user to track for.
    Use ``ATrackSdk.track(..., uuid=...)`` in code that runs outside any request.
    """
    tracker = CURRENT.get()
    if tracker is None:
        raise NoRequestError(
            "atrack_integrations.track() was called outside a request: no user to track "
            "for. Call it while a request (or a Celery task published from one) is being "
            "handled, or use sdk.track(EventPayload(event, uuid=...)) with an explicit uuid."
        )
    tracker.track(event, attributes)


def activate(tracker: RequestTracker) -> Token[RequestTracker | None]:
    """Make ``tracker`` the current one; pass the token to :func:`deactivate`."""
    return CURRENT.set(tracker)


def deactivate(token: Token[RequestTracker | None]) -> None:
    """Undo :func:`activate`. A token from another context (a response finished in
    another task) cannot be reset there; the value then dies with that context."""
    try:
        CURRENT.reset(token)
    except ValueError:
        CURRENT.set(None)
