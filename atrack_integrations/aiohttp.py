"""A-Track for aiohttp's web server (not ASGI, so a middleware of its own).

::

    from aiohttp import web
    from atrack_integrations.aiohttp import setup

    app = web.Application()
    setup(app, sdk=sdk)                  # or public_key=..., or the ATRACK_* environment

    async def order(request: web.Request) -> web.Response:
        request["atrack"].track("order_created", {"amount": 12})
        # or, from any code the handler calls: atrack_integrations.track(...)
        return web.json_response({"ok": True})

``setup`` adds the middleware (first in line, so the app's own middlewares see the
tracker), a response hook that adds the uuid cookie (``on_response_prepare``: it also
reaches streamed responses and raised ``HTTPException`` answers), and a flush of the SDK
on ``app.on_cleanup``, bounded by ``Options.shutdown_timeout``. The settings are the
integration settings of the spec; the ``identify`` hook receives the aiohttp request and
may be ``async``. Needs aiohttp: ``pip install 'a-track-sdk[aiohttp]'``.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Awaitable, Callable
from typing import Any

try:
    from aiohttp import web
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "atrack_integrations.aiohttp needs aiohttp: pip install 'a-track-sdk[aiohttp]'"
    ) from exc

from atrack_core import ATrackSdk, _shutdown
from atrack_core._request import RequestView
from atrack_core._sdk import _in_thread

from ._contain import Contain
from ._current import CURRENT
from ._decode import header_text, url_text
from ._lifecycle import STATE_KEY, IntegrationConfig, RequestTracker

__all__ = ["CONFIG_KEY", "get_tracker", "setup"]

logger = logging.getLogger("atrack")

_MIDDLEWARE_FAILED = Contain("A-Track middleware failed; the request goes on untracked")
_COOKIE_FAILED = Contain("A-Track could not set its cookie on this response")
_FLUSH_FAILED = Contain("A-Track flush at cleanup failed")

CONFIG_KEY: web.AppKey[IntegrationConfig] = web.AppKey("atrack", IntegrationConfig)
"""``app[CONFIG_KEY]``: the validated settings, ``.sdk`` the SDK in use."""

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def setup(
    app: web.Application, *, sdk: ATrackSdk | None = None, **settings: Any
) -> IntegrationConfig:
    """Install A-Track on ``app``; return its configuration (``.sdk`` is the SDK).

    Raises ``RuntimeError`` when A-Track is already set up on ``app``, ``ValueError`` /
    ``TypeError`` for a bad setting.
    """
    if CONFIG_KEY in app:
        raise RuntimeError("A-Track is already set up on this aiohttp app; call setup() once")
    config = IntegrationConfig(sdk=sdk, **settings)
    app[CONFIG_KEY] = config
    app.middlewares.insert(0, _middleware(config))
    app.on_response_prepare.append(_cookie_hook(config))
    app.on_cleanup.append(_flush_hook(config))
    return config


def get_tracker(request: web.Request) -> RequestTracker:
    """The request's tracker (``request["atrack"]``, typed).

    Raises ``RuntimeError`` when there is none (``setup(app)`` was not called).
    """
    tracker = request.get(STATE_KEY)
    if not isinstance(tracker, RequestTracker):
        raise RuntimeError(
            "no A-Track tracker on this request: call setup(app, sdk=...) "
            "(from atrack_integrations.aiohttp import setup)"
        )
    return tracker


def _middleware(config: IntegrationConfig) -> Any:
    names = config.header_names
    # An identify hook (maybe async) or a storage that does I/O: the awaitable path.
    needs_request = config.async_begin

    first = True

    @web.middleware
    async def atrack_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        nonlocal first
        if STATE_KEY in request:
            return await handler(request)  # a sub-app set up too: the outer one works
        tracker = None
        with _MIDDLEWARE_FAILED:
            view = _view(request, names)
            path = request.path
            if needs_request:
                tracker = await config.abegin(view, request, path=path)
            else:
                tracker = config.begin(view, request, path=path, in_event_loop=True)
            if first:
                _store_first(request, tracker)
                first = False
            else:
                request[STATE_KEY] = tracker
        if tracker is None:
            return await handler(request)
        # current_tracker() while the handler runs, its streamed body included (it is
        # written from inside the handler). The handler's exceptions propagate unchanged.
        token = CURRENT.set(tracker)
        try:
            return await handler(request)
        finally:
            CURRENT.reset(token)

    return atrack_middleware


def _cookie_hook(
    config: IntegrationConfig,
) -> Callable[[web.Request, web.StreamResponse], Awaitable[None]]:
    async def add_cookie(request: web.Request, response: web.StreamResponse) -> None:
        tracker = request.get(STATE_KEY)
        if not isinstance(tracker, RequestTracker):
            return
        # The response starts: the eager /init if due for its status, and the cookie.
        cookie = config.finish(tracker, response.status)  # never raises
        if tracker._last is not None:
            await config.settle(tracker)  # the init dedupe in the background, done
        if cookie is None:
            return
        with _COOKIE_FAILED:
            response.headers.add("Set-Cookie", cookie)

    return add_cookie


def _flush_hook(config: IntegrationConfig) -> Callable[[web.Application], Awaitable[None]]:
    async def flush(app: web.Application) -> None:
        sdk = config.sdk
        with _FLUSH_FAILED:
            timeout = sdk.options.shutdown_timeout
            # From the server's stop; an exit flush after a timeout keeps this deadline.
            end = _shutdown.server_stopping() + timeout
            # Work handed to the background threads (a storage round trip) first.
            await _in_thread(lambda: config.drain(_shutdown.time_left(end)))
            if not await sdk.aflush(_shutdown.time_left(end)):
                _shutdown.warn_stop_flush_timed_out(sdk, "cleanup", timeout)
            else:
                _shutdown.server_stop_flushed()

    return flush


def _store_first(request: web.Request, tracker: RequestTracker) -> None:
    # The spec's name is request["atrack"], a str key: aiohttp >= 3.12 recommends
    # RequestKey objects and warns once per process for each str key, the first time it
    # is stored. That one warning is about our documented key, not the app's code.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="It is recommended to use web.RequestKey")
        request[STATE_KEY] = tracker


def _view(request: web.Request, names: tuple[str, ...]) -> RequestView:
    headers = request.headers
    picked: dict[str, str] = {}
    for name in names:
        values = headers.getall(name, None)
        if values:
            # aiohttp decodes header bytes as UTF-8, invalid bytes as surrogates: those
            # values are read from their bytes by the shared rule, as the WSGI, Django
            # and ASGI adapters read them (one raw request, one context everywhere).
            texts = [v if v.isascii() else _as_text(v, name) for v in values]
            picked[name] = ("; " if name == "cookie" else ", ").join(texts)
    raw = request.raw_path
    if not raw.isascii():
        # Non-ASCII bytes percent-encoded as sent, as every adapter reads them.
        raw = url_text(raw.encode("utf-8", "surrogateescape"))
    path, _, query = raw.partition("?")
    return RequestView(
        request.method,
        request.scheme,
        headers.get("host"),
        path or "/",
        query,
        picked,
        request.remote,
    )


def _as_text(value: str, name: str) -> str:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates: the bytes were not UTF-8
        return header_text(value.encode("utf-8", "surrogateescape"), name)
    return value
