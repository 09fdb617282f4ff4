"""WSGI middleware: works under any WSGI framework or server (PEP 3333).

::

    from atrack_integrations.wsgi import ATrackWSGIMiddleware

    app = ATrackWSGIMiddleware(app, sdk=sdk)

    # in the app
    environ["atrack.tracker"].track("order_created", {"amount": 12})

Imports no framework.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol, TypeAlias

from atrack_core import ATrackSdk

from ._contain import Contain
from ._current import CURRENT, active_body
from ._lifecycle import ENVIRON_KEY, IntegrationConfig, RequestTracker
from ._wsgi_common import header_keys, start_response_with_cookie, view_from_environ

__all__ = ["ATrackWSGIMiddleware", "StartResponse", "WSGIApp", "WSGIEnviron", "get_tracker"]

_MIDDLEWARE_FAILED = Contain("A-Track middleware failed; the request goes on untracked")

WSGIEnviron: TypeAlias = dict[str, Any]


class StartResponse(Protocol):
    def __call__(
        self, status: str, headers: list[tuple[str, str]], exc_info: Any = ..., /
    ) -> Callable[[bytes], object]: ...


WSGIApp: TypeAlias = Callable[[WSGIEnviron, StartResponse], Iterable[bytes]]
ActiveBodyFactory: TypeAlias = Callable[
    [Iterable[bytes], RequestTracker | None, Mapping[str, Any]], Iterable[bytes]
]


class ATrackWSGIMiddleware:
    """A-Track for any WSGI app: one ``/init`` per user session, a uuid cookie, and a
    :class:`~atrack_integrations._lifecycle.RequestTracker` in ``environ["atrack.tracker"]``.

    ``ATrackWSGIMiddleware(app, *, sdk=None, **settings)``: the settings are the
    integration settings of the spec (``identify``, ``cookie_name``, ``init``,
    ``exclude_paths``, ``trusted_proxies`` …), validated here. Without ``sdk`` one is
    built from ``public_key``/``geo``/``endpoint``/``delivery`` or the ``ATRACK_*``
    environment. The ``identify`` hook receives the WSGI environ.

    ``Set-Cookie`` is added through ``start_response``; the app's response iterable is
    never consumed or buffered and its ``close()`` is passed on. A body whose iteration
    may run app code (a generator) is wrapped so that ``current_tracker()`` works there
    too; lists and ``wsgi.file_wrapper`` bodies are returned as they are. Installed
    twice (or under the Flask extension), the inner installation sees
    ``environ["atrack.tracker"]`` and does nothing. Its own failures are logged; the app's
    exceptions propagate unchanged.
    """

    def __init__(self, app: WSGIApp, *, sdk: ATrackSdk | None = None, **settings: Any) -> None:
        self._setup(app, IntegrationConfig(sdk=sdk, **settings), hook_gets_environ=True)

    @classmethod
    def _over(
        cls,
        app: WSGIApp,
        config: IntegrationConfig,
        *,
        active_body: ActiveBodyFactory = active_body,
    ) -> ATrackWSGIMiddleware:
        """The middleware over ``app`` with a validated configuration (the Flask
        extension's: its identify hook gets the Flask request, bound later, and it knows
        which of werkzeug's bodies run no app code while they are iterated and closed)."""
        self = cls.__new__(cls)
        self._setup(app, config, hook_gets_environ=False, active_body=active_body)
        return self

    def _setup(
        self,
        app: WSGIApp,
        config: IntegrationConfig,
        *,
        hook_gets_environ: bool,
        active_body: ActiveBodyFactory = active_body,
    ) -> None:
        self.app = app
        self.config = config
        self.sdk = config.sdk
        self._header_keys = header_keys(config)
        self._hook_gets_environ = hook_gets_environ
        self._active_body = active_body

    def __repr__(self) -> str:
        return f"ATrackWSGIMiddleware({self.app!r}, config={self.config!r})"

    def __call__(self, environ: WSGIEnviron, start_response: StartResponse) -> Iterable[bytes]:
        if ENVIRON_KEY in environ:
            # Installed twice: the outer installation owns this request.
            return self.app(environ, start_response)
        config = self.config
        try:
            view = view_from_environ(environ, self._header_keys)
            # Excluded paths are matched against the app's own (decoded) path.
            tracker = config.begin(
                view,
                environ if self._hook_gets_environ else None,
                path=environ.get("PATH_INFO") or "/",
            )
            environ[ENVIRON_KEY] = tracker
        except Exception:  # noqa: BLE001 - logged by _MIDDLEWARE_FAILED.log()
            _MIDDLEWARE_FAILED.log()
            return self.app(environ, start_response)
        # current_tracker() while the app runs and while its body is iterated, never
        # in this thread after the call (the server may reuse it for another request).
        token = CURRENT.set(tracker)
        try:
            body = self.app(environ, start_response_with_cookie(config, environ, start_response))
        finally:
            CURRENT.reset(token)
        if body.__class__ is list:
            return body  # the common body, and no app code runs while it is iterated
        return self._active_body(body, tracker, environ)


def get_tracker(environ: Mapping[str, Any]) -> RequestTracker:
    """The tracker of the request ``environ`` belongs to (``environ["atrack.tracker"]``, typed).

    Raises ``RuntimeError`` when there is none (the middleware is not installed), so the
    mistake shows on the first request.
    """
    tracker = environ.get(ENVIRON_KEY)
    if not isinstance(tracker, RequestTracker):
        raise RuntimeError(
            "no A-Track tracker on this request: wrap the app with "
            "ATrackWSGIMiddleware(app, sdk=...) "
            "(from atrack_integrations.wsgi import ATrackWSGIMiddleware)"
        )
    return tracker
