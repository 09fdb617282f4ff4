"""Pure ASGI middleware: works under Starlette, FastAPI and any other ASGI app.

::

    from atrack_integrations.asgi import ATrackMiddleware

    app.add_middleware(ATrackMiddleware, sdk=sdk)        # Starlette / FastAPI
    app = ATrackMiddleware(app, sdk=sdk)                 # any ASGI app

    # in a Starlette/FastAPI view
    request.state.atrack.track("order_created", {"amount": 12})

The tracker lives in ``scope["state"]["atrack"]`` (``request.state.atrack`` in
Starlette). Imports no framework: Starlette is used only if installed, to hand the
``identify`` hook a ``starlette.requests.Request`` (otherwise the hook gets the scope).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, TypeAlias

from atrack_core import ATrackSdk, _shutdown
from atrack_core._request import RequestView
from atrack_core._sdk import _in_thread

from ._contain import Contain
from ._current import CURRENT
from ._decode import header_text, url_text
from ._lifecycle import STATE_KEY, IntegrationConfig, RequestTracker

__all__ = ["ASGIApp", "ATrackMiddleware", "Message", "Receive", "Scope", "Send", "get_tracker"]

logger = logging.getLogger("atrack")

_MIDDLEWARE_FAILED = Contain("A-Track middleware failed; the request goes on untracked")
_FLUSH_FAILED = Contain("A-Track flush at shutdown failed")
_COOKIE_FAILED = Contain("A-Track could not set its cookie on this response")

Scope: TypeAlias = MutableMapping[str, Any]
Message: TypeAlias = MutableMapping[str, Any]
Receive: TypeAlias = Callable[[], Awaitable[Message]]
Send: TypeAlias = Callable[[Message], Awaitable[None]]
ASGIApp: TypeAlias = Callable[[Scope, Receive, Send], Awaitable[None]]

# Marks the Host header in ATrackMiddleware._wanted: not a header name (those are tokens).
_HOST = "\x00host"
# Stands in for a request the middleware could not read (see the failure path).
_UNKNOWN_REQUEST = RequestView("GET", "http", None, "/", "", {}, None)


class ATrackMiddleware:
    """A-Track for any ASGI app: one ``/init`` per user session, a uuid cookie, and a
    :class:`~atrack_integrations.RequestTracker` in ``scope["state"]["atrack"]``.

    ``ATrackMiddleware(app, *, sdk=None, **settings)``; the settings are those of
    :class:`~atrack_integrations.IntegrationConfig` (``identify``, ``cookie_name``,
    ``init``, ``exclude_paths``, ``trusted_proxies`` …). Without ``sdk`` one is built
    from ``public_key``/``geo``/``endpoint``/``delivery`` or the ``ATRACK_*`` environment.

    - ``http``: the lifecycle runs; ``Set-Cookie`` is added to ``http.response.start``,
      the body passes through untouched and unbuffered.
    - ``websocket``: passed through untouched.
    - ``lifespan``: on ``lifespan.shutdown`` the SDK is flushed before the app gets the
      message, and again (what the app's shutdown handlers tracked) before the server
      hears that the app is done; both within one ``Options.shutdown_timeout``.

    Installed twice, the inner instance sees the outer one's tracker and does nothing.
    The middleware's own failures are logged; the app's exceptions propagate unchanged.
    """

    def __init__(self, app: ASGIApp, *, sdk: ATrackSdk | None = None, **settings: Any) -> None:
        self.app = app
        self.config = IntegrationConfig(sdk=sdk, **settings)
        self.sdk = self.config.sdk
        # Picking the lifecycle's headers in one pass over the raw list and decoding only
        # those is cheaper than decoding every header of the request into a dict.
        self._wanted: dict[bytes, str] = {
            name.encode("latin-1"): name for name in self.config.header_names
        }
        # And the Host header, for the view (unless a setting names it as a header to read).
        self._wanted.setdefault(b"host", _HOST)
        self._request_factory: Callable[[Scope], Any] | None = None
        if self.config.identify is not None:
            self._request_factory = _request_factory()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "lifespan":
                await self._lifespan(scope, receive, send)
            else:
                await self.app(scope, receive, send)  # websocket and anything else
            return
        state = scope.get("state")
        if state is None:
            state = scope["state"] = {}
        elif STATE_KEY in state and isinstance(state[STATE_KEY], RequestTracker):
            # Installed twice: the outer instance owns this request. (A lifespan state
            # that happens to use the same key is not mistaken for a tracker.)
            await self.app(scope, receive, send)
            return
        config = self.config
        tracker = None
        # try/except rather than a with block: free until something fails (as in WSGI).
        try:
            view = self._view(scope)
            if not config.async_begin:
                request = None if self._request_factory is None else self._request_factory(scope)
                tracker = config.begin(view, request, path=scope.get("path"), in_event_loop=True)
            else:
                request = self._request_factory(scope)  # type: ignore[misc]
                tracker = await config.abegin(view, request, path=scope.get("path"))
        except Exception:  # noqa: BLE001 - logged by _MIDDLEWARE_FAILED.log()
            _MIDDLEWARE_FAILED.log()
        if tracker is None:
            # A no-op tracker still, so that view code using it keeps working.
            tracker = config._disabled(_UNKNOWN_REQUEST)
        state[STATE_KEY] = tracker

        async def send_finishing(message: Message) -> None:
            if message["type"] == "http.response.start":
                if tracker._init_pending or tracker._identify_due or tracker._cookie_out:
                    message = _finish(config, tracker, message)
                if tracker._last is not None:
                    await config.settle(tracker)  # the init dedupe in the background, done
            await send(message)

        # current_tracker() for the whole request, streamed body included (it is sent
        # from inside this call); tasks and thread-pool calls the app starts copy it.
        # The app's exceptions propagate from here unchanged.
        token = CURRENT.set(tracker)
        try:
            await self.app(scope, receive, send_finishing)
        finally:
            CURRENT.reset(token)

    def _view(self, scope: Scope) -> RequestView:
        wanted = self._wanted
        picked: dict[str, str] = {}
        # Repeated headers' values, joined once at the end: "+=" on a dict's str copies
        # the whole value every time (quadratic: 16,000 repeated Cookie lines cost
        # ~0.3-0.5 s of CPU).
        repeated: dict[str, list[str]] | None = None
        host = None
        for name, value in scope["headers"]:
            # One lookup per header: the rest of a browser's headers (most) stop here.
            key = wanted.get(name)
            if key is None:
                continue
            try:
                # header_text's first try (valid UTF-8, nearly every header) without
                # the call: ~0.8k instructions per header read.
                text = value.decode()
            except UnicodeDecodeError:
                text = header_text(value, key)
            if key in picked:
                if repeated is None:
                    repeated = {}
                parts = repeated.get(key)
                if parts is None:
                    parts = repeated[key] = [picked[key]]
                parts.append(text)
            elif key is _HOST:
                host = text  # the last one, if repeated
            else:
                picked[key] = text
        if repeated is not None:
            for key, parts in repeated.items():
                picked[key] = ("; " if key == "cookie" else ", ").join(parts)
        client = scope.get("client")
        raw_path = scope.get("raw_path")
        return RequestView(
            scope["method"],
            scope.get("scheme", "http"),
            host,
            url_text(raw_path) if raw_path else scope.get("path", "/"),
            url_text(scope.get("query_string", b"")),
            picked,
            client[0] if client else None,
        )

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        # SPEC 6: on lifespan.shutdown, flush before passing the message on; and again
        # after the app's own shutdown handlers (they may track events), before the server
        # is told it may exit. One deadline for both, from the server's stop.
        end: float | None = None
        settled = False  # the last flush ran, or the deadline passed: no more flushes
        shutting_down = False

        async def flush(last: bool) -> None:
            nonlocal end, settled
            if settled:
                return
            settled = last
            with _FLUSH_FAILED:
                timeout = self.sdk.options.shutdown_timeout
                if end is None:
                    # From the server's stop; an exit flush after a timeout keeps it.
                    end = _shutdown.server_stopping() + timeout
                # Work handed to the background worker (a storage round trip) first.
                stop = end
                await _in_thread(lambda: self.config.drain(_shutdown.time_left(stop)))
                if not await self.sdk.aflush(_shutdown.time_left(end)):
                    settled = True  # out of time: a second flush could only warn again
                    _shutdown.warn_stop_flush_timed_out(self.sdk, "shutdown", timeout)
                elif last:  # until then the exit flush keeps this stop's deadline
                    _shutdown.server_stop_flushed()

        async def lifespan_receive() -> Message:
            nonlocal shutting_down
            message = await receive()
            if message.get("type") == "lifespan.shutdown":
                shutting_down = True
                await flush(last=False)
            return message

        async def lifespan_send(message: Message) -> None:
            if message.get("type") in ("lifespan.shutdown.complete", "lifespan.shutdown.failed"):
                await flush(last=True)
            await send(message)

        try:
            await self.app(scope, lifespan_receive, lifespan_send)
        finally:
            if shutting_down:
                await flush(last=True)


def get_tracker(scope: Scope) -> RequestTracker:
    """The tracker the middleware attached to an ASGI ``scope``.

    Raises ``RuntimeError`` when there is none (the middleware is not installed, or this
    is not an ``http`` scope), so the mistake shows on the first request.
    """
    return tracker_in(scope, __name__)


def tracker_in(scope: Scope, module: str) -> RequestTracker:
    """:func:`get_tracker` for the framework modules that re-export the middleware: the
    error names ``module``, where the user's quickstart imports ``ATrackMiddleware`` from
    (``atrack_integrations.fastapi``), not this one."""
    state = scope.get("state")
    tracker = state.get(STATE_KEY) if state is not None else None
    if not isinstance(tracker, RequestTracker):
        raise RuntimeError(
            "no A-Track tracker on this request: install the middleware with "
            "app.add_middleware(ATrackMiddleware, sdk=...) "
            f"(from {module} import ATrackMiddleware)"
        )
    return tracker


def _finish(config: IntegrationConfig, tracker: RequestTracker, message: Message) -> Message:
    """The response starts: the lifecycle finishes (the eager ``/init`` if due for this
    status, off the loop when the storage does I/O) and its cookie is added."""
    with _COOKIE_FAILED:
        status = message.get("status", 200)
        cookie = config.finish(tracker, status if status.__class__ is int else 500)
        if cookie is None:
            return message
        # A new message, not an edit: the app may reuse its headers list.
        headers = list(message.get("headers", ()))
        headers.append((b"set-cookie", cookie.encode("latin-1")))
        return {**message, "headers": headers}
    return message


def _request_factory() -> Callable[[Scope], Any]:
    """What the identify hook receives: a Starlette ``Request`` when Starlette is
    installed (it is also a mapping over the scope), else the ASGI scope itself."""
    try:
        from starlette.requests import Request
    except ImportError:
        return lambda scope: scope
    return Request
