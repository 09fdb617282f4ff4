"""The tracker of the request being handled, reachable from any code that runs for it.

Every integration sets :data:`CURRENT` for the duration of a request and resets it
after (with the token ``set`` returned), also when the view raises or a streaming
response is cut; a body produced after the view returned is wrapped (:func:`active_body`,
:func:`active_aiter`) so it sees the tracker while it produces. Context variables
follow the request into Starlette's thread pool and through
Django's ``sync_to_async``/``async_to_sync`` (they copy the context), and never leak
between concurrent requests.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Generator, Iterable, Iterator, Mapping
from contextvars import ContextVar, Token
from types import GeneratorType
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


class ActiveBody:
    """A WSGI response iterable that makes ``tracker`` current while it is iterated and
    closed, and not in between: a streaming body (a generator view) runs its code after
    the app has returned, when the server iterates it, and it must still see the
    request's tracker; the server's thread must not keep it between chunks or after.

    Nothing is consumed or buffered; ``close()`` is passed on (PEP 3333). Iteration is
    a generator (resumed in C, cheaper per chunk than a Python ``__next__``).
    """

    __slots__ = ("_iterable", "_tracker")

    def __init__(self, iterable: Iterable[Any], tracker: RequestTracker) -> None:
        self._iterable = iterable
        self._tracker = tracker

    def __iter__(self) -> Iterator[Any]:
        var = CURRENT
        tracker = self._tracker
        # Current while the iterable produces (the for loop's next() included), reset
        # while the server holds a chunk. token is None exactly while it is reset.
        token: Token[RequestTracker | None] | None = var.set(tracker)
        try:
            for item in self._iterable:
                var.reset(token)  # type: ignore[arg-type]
                token = None
                yield item
                token = var.set(tracker)
        finally:
            if token is not None:
                var.reset(token)

    def close(self) -> None:
        close = getattr(self._iterable, "close", None)
        if close is not None:
            token = CURRENT.set(self._tracker)
            try:
                close()
            finally:
                CURRENT.reset(token)


def active_body(
    iterable: Iterable[bytes], tracker: RequestTracker | None, environ: Mapping[str, Any]
) -> Iterable[bytes]:
    """``iterable`` as it is when no app code runs while it is iterated (a list or
    tuple, the server's ``wsgi.file_wrapper``, which keeps its ``sendfile`` path) or
    when there is no tracker; a generator for a generator; else an :class:`ActiveBody`
    over it."""
    cls = iterable.__class__
    if tracker is None or cls is list or cls is tuple:
        return iterable
    if cls is GeneratorType:
        return _active_generator(iterable, tracker)  # type: ignore[arg-type]
    file_wrapper = environ.get("wsgi.file_wrapper")
    if isinstance(file_wrapper, type) and isinstance(iterable, file_wrapper):
        return iterable
    return ActiveBody(iterable, tracker)


def _active_generator(
    body: Generator[bytes, None, None], tracker: RequestTracker
) -> Generator[bytes, None, None]:
    """:class:`ActiveBody` for a generator body, as a generator: half the cost.

    Equivalent because of what generators are: if the server closes this one before
    starting it, ``body`` was never started either, and closing it would run nothing.
    Once started, closing this one closes ``body`` here, with the tracker current.
    """
    var = CURRENT
    token: Token[RequestTracker | None] | None = var.set(tracker)
    try:
        for item in body:
            var.reset(token)  # type: ignore[arg-type]
            token = None
            yield item
            token = var.set(tracker)
    finally:
        if token is None:
            token = var.set(tracker)
        try:
            body.close()
        finally:
            var.reset(token)


async def active_aiter(content: AsyncIterable[Any], tracker: RequestTracker) -> AsyncIterator[Any]:
    """``content`` with ``tracker`` current while each item is produced, and not while
    the consumer holds it (the async twin of :class:`ActiveBody`)."""
    iterator = aiter(content)
    try:
        while True:
            token = CURRENT.set(tracker)
            try:
                item = await anext(iterator)
            except StopAsyncIteration:
                return
            finally:
                CURRENT.reset(token)
            yield item
    finally:
        aclose = getattr(iterator, "aclose", None)
        if aclose is not None:
            await aclose()
