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

from .._current import CURRENT, ActiveBody, active_aiter
from .._lifecycle import STATE_KEY, IntegrationConfig, RequestTracker
from .._wsgi_common import HeaderKeys, environ_path, header_keys, view_from_environ
from . import conf

__all__ = ["ATrackMiddleware", "get_tracker"]

logger = logging.getLogger("atrack.django")


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
        try:
            conf.get_config()
        except ImproperlyConfigured:
            raise
        except Exception:
            logger.error("A-Track could not start; requests go on untracked", exc_info=True)

    def __repr__(self) -> str:
        return f"<ATrackMiddleware get_response={self.get_response!r}>"

    def __call__(self, request: Any) -> Any:
        if self.async_mode:
            return self.__acall__(request)
        if STATE_KEY in request.__dict__:
            return self.get_response(request)  # installed twice: the outer one works
        try:
            config = conf.get_config()
            view = _view(request, _keys(config))
            tracker = config.begin(view, request, path=request.path_info)
            request.atrack = tracker
        except Exception:
            logger.error("A-Track middleware failed; the request goes on untracked", exc_info=True)
            return self.get_response(request)
        token = CURRENT.set(tracker)
        try:
            response = self.get_response(request)
        finally:
            CURRENT.reset(token)
        _set_cookie(config, tracker, response)
        _stream_with_tracker(response, tracker)
        return response

    async def __acall__(self, request: Any) -> Any:
        get_response: Callable[[Any], Awaitable[Any]] = self.get_response
        if STATE_KEY in request.__dict__:
            return await get_response(request)
        try:
            config = conf.get_config()
            view = _view(request, _keys(config))
            if not config.async_begin:
                tracker = config.begin(view, request, path=request.path_info)
            else:
                tracker = await config.abegin(view, request, path=request.path_info)
            request.atrack = tracker
        except Exception:
            logger.error("A-Track middleware failed; the request goes on untracked", exc_info=True)
            return await get_response(request)
        # Views run in this context or a copy of it (sync_to_async copies it).
        token = CURRENT.set(tracker)
        try:
            response = await get_response(request)
        finally:
            CURRENT.reset(token)
        _set_cookie(config, tracker, response)
        _stream_with_tracker(response, tracker)
        return response


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


_keys_cache: tuple[IntegrationConfig, HeaderKeys] | None = None


def _keys(config: IntegrationConfig) -> HeaderKeys:
    # The configuration changes only with settings (override_settings): keep the
    # header keys of the current one.
    global _keys_cache
    cached = _keys_cache
    if cached is None or cached[0] is not config:
        cached = _keys_cache = (config, header_keys(config))
    return cached[1]


def _view(request: Any, keys: HeaderKeys) -> RequestView:
    meta = request.META
    scope = request.__dict__.get("scope")
    if scope is not None:
        # ASGI: the raw path is in the scope (META's PATH_INFO is decoded).
        raw = scope.get("raw_path")
        path = raw.decode("latin-1") if raw else environ_path(meta)
    else:
        path = environ_path(meta)
    # request.scheme honours SECURE_PROXY_SSL_HEADER: the Secure flag follows it.
    return view_from_environ(meta, keys, scheme=request.scheme, path=path)


def _stream_with_tracker(response: Any, tracker: RequestTracker) -> None:
    # A streaming body runs view code after the middleware returned: make the tracker
    # current while each chunk is produced (files need not: no app code runs there).
    if not getattr(response, "streaming", False) or hasattr(response, "file_to_stream"):
        return
    try:
        if getattr(response, "is_async", False):
            response.streaming_content = active_aiter(response.streaming_content, tracker)
        else:
            response.streaming_content = ActiveBody(response.streaming_content, tracker)
    except Exception:
        logger.error("A-Track could not follow this streaming response", exc_info=True)


def _set_cookie(config: IntegrationConfig, tracker: RequestTracker, response: Any) -> None:
    cookie = config.set_cookie_header(tracker)  # never raises
    if cookie is None:
        return
    try:
        # Django keeps cookies apart from other headers, in response.cookies.
        line = _CookieLine(cookie)
        response.cookies[line.key] = line
    except Exception:
        logger.error("A-Track could not set its cookie on this response", exc_info=True)


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
