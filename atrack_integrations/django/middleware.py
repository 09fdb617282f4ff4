"""``ATrackMiddleware`` for Django's ``MIDDLEWARE``: sync- and async-capable, native in
both modes (no ``sync_to_async`` hop under ASGI)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from http.cookies import Morsel
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.core.exceptions import ImproperlyConfigured

from atrack_core._request import RequestView

from .._contain import Contain
from .._current import CURRENT, ActiveBody, active_aiter
from .._decode import url_text
from .._lifecycle import STATE_KEY, IntegrationConfig, RequestTracker
from .._wsgi_common import HeaderKeys, environ_path, header_keys, view_from_environ
from . import conf

__all__ = ["ATrackMiddleware", "get_tracker"]

logger = logging.getLogger("atrack.django")

_MIDDLEWARE_FAILED = Contain("A-Track middleware failed; the request goes on untracked")
_COOKIE_FAILED = Contain("A-Track could not set its cookie on this response")
_STREAM_FAILED = Contain("A-Track could not follow this streaming response")


class ATrackMiddleware:
    """A-Track for Django: one ``/init`` per user session, a uuid cookie, and a
    :class:`~atrack_integrations._lifecycle.RequestTracker` as ``request.atrack``.

    Settings come from ``settings.ATRACK`` (see :mod:`atrack_integrations.django.conf`)
    and are validated when the middleware is loaded, so a bad value stops the server at
    start-up with ``ImproperlyConfigured``. The ``identify`` hook receives the
    ``HttpRequest``; under ASGI an ``async def`` hook is awaited (use
    ``await request.auser()``) and ``request.user`` is never touched on the event loop.

    Listed twice, the second instance sees ``request.atrack`` and does nothing. Its own
    failures are logged and the request goes on; the app's exceptions are untouched.
    """

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[Any], Any]) -> None:
        self.get_response = get_response
        self.async_mode = iscoroutinefunction(get_response)
        if self.async_mode:
            # Tells Django's handler to call us without a thread hop under ASGI.
            markcoroutinefunction(self)
        # Validate now: a bad ATRACK setting stops the server at start-up
        # (ImproperlyConfigured), not at the first request.
        with Contain(
            "A-Track could not start; requests go on untracked", passes=(ImproperlyConfigured,)
        ):
            conf.get_config()

    def __repr__(self) -> str:
        return f"<ATrackMiddleware get_response={self.get_response!r}>"

    def __call__(self, request: Any) -> Any:
        if self.async_mode:
            return self.__acall__(request)
        attrs = request.__dict__
        if STATE_KEY in attrs:
            return self.get_response(request)  # installed twice: the outer one works
        started = _begin(request, attrs, in_event_loop=False)
        if started is None:
            return self.get_response(request)
        config, tracker = started
        token = CURRENT.set(tracker)
        try:
            response = self.get_response(request)
        finally:
            CURRENT.reset(token)
        # Nothing is due for most requests (a returning visitor): no call.
        if (
            tracker._init_pending
            or tracker._identify_due
            or tracker._cookie_out is not None
            or getattr(response, "streaming", False)
        ):
            _finish(config, tracker, response, request)
        return response

    async def __acall__(self, request: Any) -> Any:
        get_response: Callable[[Any], Awaitable[Any]] = self.get_response
        attrs = request.__dict__
        if STATE_KEY in attrs:
            return await get_response(request)
        started = _begin(request, attrs, in_event_loop=True)
        if started is None:
            return await get_response(request)
        config, tracker = started
        if tracker._identify_due:
            # Under ASGI Django's IDENTIFY gives an awaitable (await request.auser(), or
            # a sync hook in Django's thread): a view's sync track() could not await
            # it later, so it is awaited now.
            await config.await_identity(tracker)
        # Views run in this context or a copy of it (sync_to_async copies it).
        token = CURRENT.set(tracker)
        try:
            response = await get_response(request)
        finally:
            CURRENT.reset(token)
        if (
            tracker._init_pending
            or tracker._identify_due
            or tracker._cookie_out is not None
            or getattr(response, "streaming", False)
        ):
            _finish(config, tracker, response, request)
        if tracker._last is not None:
            await config.settle(tracker)  # the init dedupe in the background, done
        return response


def _begin(
    request: Any, attrs: dict[str, Any], *, in_event_loop: bool
) -> tuple[IntegrationConfig, RequestTracker] | None:
    """The start both modes share: the tracker attached as ``request.atrack``."""
    # try/except rather than a with block: free until something fails (every request
    # passes here).
    try:
        config = conf._config  # what get_config() returns once built, without the call
        if config is None:
            config = conf.get_config()
        cached = _keys_cache
        keys = cached[1] if cached[0] is config else _keys(config)
        meta = request.META
        scope = attrs.get("scope")
        if scope is None:
            # WSGI: the environ's path, query and scheme (the cookie's Secure flag
            # follows request.scheme, read by _finish only when a cookie goes out).
            view = view_from_environ(meta, keys, path=environ_path(meta))
        else:
            view = _asgi_view(meta, scope, keys)
        tracker = config.begin(view, request, path=request.path_info, in_event_loop=in_event_loop)
        attrs[STATE_KEY] = tracker  # request.atrack, without setattr's lookups
        return config, tracker
    except Exception:  # noqa: BLE001 - logged by _MIDDLEWARE_FAILED.log()
        _MIDDLEWARE_FAILED.log()
    return None


def _finish(
    config: IntegrationConfig, tracker: RequestTracker, response: Any, request: Any
) -> None:
    """The end both modes share, when something is due: the eager ``/init`` if due for
    the response's status, the cookie, and a streaming body that keeps the tracker
    current."""
    if tracker._init_pending or tracker._identify_due or tracker._cookie_out is not None:
        with _COOKIE_FAILED:
            # request.scheme honours SECURE_PROXY_SSL_HEADER: the Secure flag follows
            # it. Read here, only when a cookie may go out (~5k instructions).
            https = request.scheme == "https"
            cookie = config.finish(tracker, response.status_code, https)  # never raises
            if cookie is not None:
                # Django keeps cookies apart from other headers, in response.cookies.
                line = _CookieLine(cookie)
                response.cookies[line.key] = line
    _stream_with_tracker(response, tracker)


def get_tracker(request: Any) -> RequestTracker:
    """The request's tracker (``request.atrack``, typed).

    Raises ``RuntimeError`` when there is none (the middleware is not in ``MIDDLEWARE``),
    so the mistake shows on the first request.
    """
    tracker = request.__dict__.get(STATE_KEY)
    if not isinstance(tracker, RequestTracker):
        raise RuntimeError(
            "no A-Track tracker on this request: add "
            "'atrack_integrations.django.ATrackMiddleware' to MIDDLEWARE"
        )
    return tracker


# The configuration changes only with settings (override_settings): _begin keeps the
# header keys of the current one, checked by identity inline (a call costs ~0.5k
# instructions per request).
_keys_cache: tuple[IntegrationConfig | None, HeaderKeys] = (None, ())


def _keys(config: IntegrationConfig) -> HeaderKeys:
    global _keys_cache
    _keys_cache = (config, header_keys(config))
    return _keys_cache[1]


def _asgi_view(meta: Any, scope: Any, keys: HeaderKeys) -> RequestView:
    # ASGI: the raw path and query are in the scope (META's are decoded), read as every
    # adapter reads them; the scheme as the server saw it.
    raw = scope.get("raw_path")
    path = url_text(raw) if raw else environ_path(meta)
    raw_query = scope.get("query_string", b"")
    # Test clients may put text there.
    query = url_text(raw_query) if raw_query.__class__ is bytes else str(raw_query)
    scheme = scope.get("scheme") or "http"
    return view_from_environ(meta, keys, scheme=scheme, path=path, query=query)


def _stream_with_tracker(response: Any, tracker: RequestTracker) -> None:
    # A streaming body runs view code after the middleware returned: make the tracker
    # current while each chunk is produced (files need not: no app code runs there).
    if not getattr(response, "streaming", False) or hasattr(response, "file_to_stream"):
        return
    with _STREAM_FAILED:
        if getattr(response, "is_async", False):
            response.streaming_content = active_aiter(response.streaming_content, tracker)
        else:
            response.streaming_content = ActiveBody(response.streaming_content, tracker)


_NO_ATTRIBUTES = dict.fromkeys(Morsel._reserved, "")  # type: ignore[attr-defined]


class _CookieLine(Morsel[str]):
    """A cookie whose ``Set-Cookie`` value the lifecycle built (its one definition of
    the cookie), output as it is.

    Django writes ``response.cookies`` out through ``Morsel.OutputString``; building a
    regular Morsel (``SimpleCookie.load``, ``response.set_cookie``) costs 15-25 µs for
    the same line. The attributes are still readable (``cookie["max-age"]``), so code
    and tests that inspect ``response.cookies`` keep working.
    """

    def __init__(self, header: str) -> None:
        # Morsel.__init__ and Morsel.set only validate what the lifecycle has validated.
        dict.__init__(self, _NO_ATTRIBUTES)
        first, *attributes = header.split("; ")
        name, _, value = first.partition("=")
        self._key = name
        self._value = self._coded_value = value
        for attribute in attributes:
            key, eq, attr_value = attribute.partition("=")
            dict.__setitem__(self, key.lower(), attr_value if eq else True)
        self._header = header

    def OutputString(self, attrs: Any = None) -> str:
        return self._header

    def __reduce__(self) -> tuple[type[_CookieLine], tuple[str]]:
        # Django's cache middleware pickles responses, cookies included.
        return (_CookieLine, (self._header,))
