"""Flask extension.

::

    from atrack_integrations.flask import ATrack

    atrack = ATrack()                      # module level, for the app factory pattern

    def create_app():
        app = Flask(__name__)
        app.config["ATRACK_PUBLIC_KEY"] = "pub_xxxxx"     # or ATRACK_* environment
        atrack.init_app(app)
        return app

    @app.post("/orders")
    def create_order():
        request.atrack.track("order_created", {"amount": 12})   # or g.atrack

Settings are the integration settings of the spec as Flask config keys ``ATRACK_<NAME>``
(``ATRACK_PUBLIC_KEY``, ``ATRACK_IDENTIFY``, ``ATRACK_COOKIE_NAME`` …). Keyword
arguments of :class:`ATrack` are defaults for them; the app's config wins.
"""

from __future__ import annotations

import inspect
import threading
from typing import TYPE_CHECKING, Any

try:
    from flask import g, request
    from werkzeug.wrappers import Response as _Response
    from werkzeug.wsgi import ClosingIterator
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "atrack_integrations.flask needs Flask: pip install 'a-track-sdk[flask]'"
    ) from exc

from flask import globals as _flask_globals

from atrack_core import ATrackSdk

from ._contain import Contain
from ._current import CURRENT, active_body
from ._lifecycle import ENVIRON_KEY, SETTING_NAMES, STATE_KEY, IntegrationConfig, RequestTracker
from ._wsgi_common import header_keys, view_from_environ
from .wsgi import ATrackWSGIMiddleware

# The context variables behind Flask's ``request`` and ``g`` proxies (Flask 2.2+): read
# directly, the hook below makes no call through werkzeug's proxies (two Python calls
# per request). A Flask without them: the proxies.
_cv_request: Any = getattr(_flask_globals, "_cv_request", None)
_cv_app: Any = getattr(_flask_globals, "_cv_app", None)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping

    from flask import Flask

    from ._lifecycle import RequestTracker as _Tracker
    from .wsgi import StartResponse, WSGIEnviron

__all__ = ["ATrack", "ATrackState", "get_tracker"]

_EXTENSION_FAILED = Contain("A-Track extension failed; the request goes on untracked")
_CLASSES_FAILED = Contain(
    "A-Track could not subclass the app's request and g classes; a before_request "
    "function attaches request.atrack and g.atrack on every request instead"
)

EXTENSION_KEY = "atrack"
CONFIG_PREFIX = "ATRACK_"

# Every setting's default, read from IntegrationConfig itself so the two cannot drift;
# the SDK settings default to None ("not given": built from the ATRACK_* environment).
_DEFAULTS: dict[str, Any] = {
    name: (param.default if param.default is not inspect.Parameter.empty else None)
    for name, param in inspect.signature(IntegrationConfig.__init__).parameters.items()
    if name in SETTING_NAMES
}


def _iter_encoded_code() -> Any:
    """The code of the generator werkzeug's ``Response.iter_encoded`` returns."""
    encoded: Any = _Response([b""]).iter_encoded()
    encoded.close()
    return encoded.gi_code


# What werkzeug's Response returns as the body of a response it holds in memory:
# ClosingIterator(_iter_encoded(response.response), response.close) (werkzeug 2.3-3.1).
_RESPONSE_CLOSE = _Response.close
_ITER_ENCODED_CODE = _iter_encoded_code()


def _active_body(
    body: Iterable[bytes], tracker: _Tracker | None, environ: Mapping[str, Any]
) -> Iterable[bytes]:
    """The body as it is when iterating and closing it runs no app code: werkzeug's
    ClosingIterator over a response held in memory (a list: no generator view) whose
    ``close()`` calls nothing the app registered (no ``call_on_close``), from werkzeug's
    own ``iter_encoded`` and ``close``; otherwise the body that keeps the tracker current
    (a streamed body, a close callback, anything not recognised)."""
    if body.__class__ is ClosingIterator:
        try:
            # Not two callbacks: ValueError, below.
            callbacks: list[Any] = body._callbacks
            encoded_close, close = callbacks
            response = close.__self__
            if (
                close.__func__ is _RESPONSE_CLOSE
                and response.response.__class__ is list
                and not response._on_close
                and encoded_close.__self__.gi_code is _ITER_ENCODED_CODE
            ):
                return body
        except (AttributeError, TypeError, ValueError):  # another werkzeug: keep it current
            pass
    return active_body(body, tracker, environ)


class _RequestTracker:
    """``request.atrack`` on the app's request class: the tracker the WSGI middleware
    put in the environ. A request dispatched without ``app.wsgi_app``
    (``test_request_context()`` plus ``full_dispatch_request()``) gets one made here."""

    __slots__ = ("begin",)

    def __init__(self, begin: Callable[[Any], RequestTracker | None]) -> None:
        self.begin = begin

    def __get__(self, req: Any, owner: Any = None) -> Any:
        if req is None:
            return self
        tracker = req.environ.get(ENVIRON_KEY)
        if tracker is None:
            tracker = self.begin(req)
            if tracker is None:
                raise AttributeError(STATE_KEY)
        return tracker


class _GlobalsTracker:
    """``g.atrack`` on the app's ``g`` class: the current request's ``request.atrack``;
    without a request (``teardown_appcontext`` runs after the request context is
    popped), ``current_tracker()``; else no such attribute."""

    __slots__ = ()

    def __get__(self, obj: Any, owner: Any = None) -> Any:
        if obj is None:
            return self
        ctx = _cv_request.get(None) if _cv_request is not None else None
        tracker = None if ctx is None else getattr(ctx.request, STATE_KEY, None)
        if tracker is None:
            tracker = CURRENT.get()
            if tracker is None:
                raise AttributeError(STATE_KEY)
        return tracker


def _request_class(base: type[Any], begin: Callable[[Any], RequestTracker | None]) -> type[Any]:
    """``base`` (the app's ``request_class``) with this app's ``request.atrack``."""
    own = base.__dict__.get(STATE_KEY)
    if isinstance(own, _RequestTracker) and own.begin is begin:
        return base
    namespace = {"__module__": __name__, STATE_KEY: _RequestTracker(begin)}
    return type(base.__name__, (base,), namespace)


def _globals_class(base: type[Any]) -> type[Any]:
    """``base`` (the app's ``app_ctx_globals_class``) with ``g.atrack``, which
    ``g.get`` and ``in g`` see too; ``base`` itself if it has it already."""
    if isinstance(base.__dict__.get(STATE_KEY), _GlobalsTracker):
        return base

    def get(self: Any, name: str, default: Any = None) -> Any:
        if name == STATE_KEY and name not in self.__dict__:
            return getattr(self, name, default)
        return base.get(self, name, default)

    def __contains__(self: Any, item: str) -> bool:
        if item == STATE_KEY and item not in self.__dict__:
            return getattr(self, item, None) is not None
        return bool(base.__contains__(self, item))

    namespace = {"__module__": __name__, STATE_KEY: _GlobalsTracker()}
    return type(base.__name__, (base,), {**namespace, "get": get, "__contains__": __contains__})


def _adopt(obj: Any, cls: type[Any]) -> bool:
    """Make ``obj``, made from ``cls``'s base before ``cls`` existed, an instance of
    ``cls``; ``False`` if it is of another class."""
    if isinstance(obj, cls):
        return True
    if cls.__bases__ == (type(obj),):
        object.__setattr__(obj, "__class__", cls)  # past g's own __setattr__
        return True
    return False


class _Attach:
    """How ``request.atrack`` and ``g.atrack`` come to be (see docs/flask.md).

    Without an ``identify`` hook they are attributes of subclasses of the app's request
    and ``g`` classes (:class:`_RequestTracker`, :class:`_GlobalsTracker`): nothing of
    the extension runs per request for them (Flask's dispatch of one ``before_request``
    function costs more than the rest of the extension). The subclasses are made when
    the app is first used, over the classes the app has by then: at its first WSGI call
    (before Flask makes any request from them; concurrent first calls wait for it), or
    at the first ``before_request`` of a request dispatched without ``app.wsgi_app``.

    With an ``identify`` hook (which must get this request's Flask request, also from a
    thread or a streamed body), or if the classes cannot be subclassed, or an app
    context pushed before the first request holds a ``g`` of another class, a
    ``before_request`` function attaches them on every request instead.
    """

    def __init__(
        self,
        app: Flask,
        middleware: ATrackWSGIMiddleware,
        begin: Callable[[Any], RequestTracker | None],
    ) -> None:
        self._app = app
        self._middleware = middleware
        self._begin = begin
        self._lock = threading.Lock()
        self._settled = False  # classes installed, or every request attaches
        self._every = False  # a before_request function attaches on every request
        # One bound method each, to find them again in Flask's lists.
        self.first_call = self._first_call
        self.first_request = self._first_request
        self.each_request = self._each_request

    def _first_call(self, environ: WSGIEnviron, start_response: StartResponse) -> Any:
        if not self._settled:
            pushed = _cv_app.get(None) if _cv_app is not None else None
            self._settle(None, pushed.g if pushed is not None and pushed.app is self._app else None)
        return self._middleware(environ, start_response)

    def _first_request(self) -> None:
        if not self._settle(_current_request(), _current_g()):
            self._each_request()

    def _settle(self, req: Any, flask_g: Any) -> bool:
        """Install the classes (once) and make ``req`` and ``flask_g``, made before
        them, their instances; ``False`` if every request attaches instead."""
        app = self._app
        with self._lock:
            if not self._settled:
                # _settled is set last: _first_call reads it without the lock, and a
                # call that sees it must find the classes in place.
                every = True
                with _CLASSES_FAILED:
                    request_class = _request_class(app.request_class, self._begin)
                    globals_class = _globals_class(app.app_ctx_globals_class)
                    app.request_class = request_class
                    app.app_ctx_globals_class = globals_class
                    every = flask_g is not None and not _adopt(flask_g, globals_class)
                self._every = every
                # The first-request function goes (or gives way to the one that runs
                # every request), in a new list: Flask may be iterating over the old.
                funcs: list[Any] = []
                for func in app.before_request_funcs.get(None, []):
                    if func != self.first_request:
                        funcs.append(func)
                    elif every:
                        funcs.append(self.each_request)
                app.before_request_funcs[None] = funcs
                if app.wsgi_app == self.first_call:
                    app.wsgi_app = self._middleware  # type: ignore[method-assign]
                self._settled = True
            if self._every:
                return False
            return req is None or (
                _adopt(req, app.request_class) and _adopt(flask_g, app.app_ctx_globals_class)
            )

    def _each_request(self) -> None:
        req = _current_request()
        environ = req.environ
        tracker = environ.get(ENVIRON_KEY)
        if tracker is None:
            tracker = self._begin(req)
            if tracker is None:
                return
        elif tracker._identify_due:
            tracker._hook_request = req  # config.bind_request, inline
        vars(req)[STATE_KEY] = tracker
        vars(_current_g())[STATE_KEY] = tracker


# The real objects through Flask's context variables: every access through one of its
# proxies costs a Python call.
def _current_request() -> Any:
    """The Flask request of the current context."""
    if _cv_request is not None:
        return _cv_request.get().request
    return request._get_current_object()  # type: ignore[attr-defined]  # pragma: no cover


def _current_g() -> Any:
    """The Flask ``g`` of the current app context."""
    if _cv_app is not None:
        return _cv_app.get().g
    return g._get_current_object()  # pragma: no cover


class ATrackState:
    """What :class:`ATrack` keeps per app, in ``app.extensions["atrack"]``.

    ``sdk`` is the SDK in use (for flushing and tests); ``config`` the validated
    settings.
    """

    __slots__ = ("config", "extension", "sdk")

    def __init__(self, extension: ATrack, config: IntegrationConfig) -> None:
        self.extension = extension
        self.config = config
        self.sdk: ATrackSdk = config.sdk

    def __repr__(self) -> str:
        return f"ATrackState(config={self.config!r})"


class ATrack:
    """A-Track for Flask: one ``/init`` per user session, a uuid cookie, and a
    :class:`~atrack_integrations._lifecycle.RequestTracker` as ``request.atrack`` and
    ``g.atrack``.

    ``ATrack(app)`` or ``ATrack().init_app(app)``; one ``ATrack`` may serve several
    apps (each gets its own state and, unless ``sdk`` is shared, its own SDK).
    Registering twice on the same app raises ``RuntimeError``. The ``identify`` hook
    receives the Flask request. With :class:`~atrack_integrations.wsgi.ATrackWSGIMiddleware`
    around the app as well, the work is done once (by the middleware).
    """

    def __init__(self, app: Flask | None = None, *, sdk: ATrackSdk | None = None, **config: Any):
        unknown = sorted(set(config) - set(SETTING_NAMES))
        if unknown:
            raise TypeError(f"unknown A-Track settings {unknown}; known: {sorted(SETTING_NAMES)}")
        self._defaults = {**config, "sdk": sdk}
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Register on ``app``: read (and default) its ``ATRACK_*`` config, build the
        SDK, wrap ``app.wsgi_app`` and add a ``before_request`` function (at the first
        request, ``request.atrack`` and ``g.atrack`` become attributes of subclasses of
        the app's classes and that function goes, unless it must stay: see
        :class:`_Attach`). Raises
        ``RuntimeError`` if A-Track is already registered on ``app``,
        ``ValueError``/``TypeError`` for a bad setting."""
        if EXTENSION_KEY in app.extensions:
            raise RuntimeError(
                "A-Track is already registered on this Flask app; call ATrack(app) or "
                "init_app(app) once per app (use app.extensions['atrack'] to reach it)"
            )
        for name in SETTING_NAMES:
            app.config.setdefault(
                CONFIG_PREFIX + name.upper(), self._defaults.get(name, _DEFAULTS.get(name))
            )
        config = IntegrationConfig.from_settings(app.config, prefix=CONFIG_PREFIX)
        state = ATrackState(self, config)
        app.extensions[EXTENSION_KEY] = state

        keys = header_keys(config)
        # The tracker starts at the WSGI level, in ATrackWSGIMiddleware (one lifecycle,
        # not a copy of it): before Flask builds its request, with the cookie added and
        # the eager /init sent through start_response. The identify hook must get the
        # Flask request: bound by a before_request function (see _Attach); the hook is
        # asked only when the uuid is needed (after that).
        middleware = ATrackWSGIMiddleware._over(app.wsgi_app, config, active_body=_active_body)

        def begin_here(req: Any) -> RequestTracker | None:
            """Dispatched without app.wsgi_app: a tracker, but no cookie (no response
            start to add it to) and no eager /init (only one a tracked call sends)."""
            environ = req.environ
            with _EXTENSION_FAILED:
                view = view_from_environ(environ, keys)
                tracker = config.begin(view, req, path=environ.get("PATH_INFO") or "/")
                environ[ENVIRON_KEY] = tracker
                return tracker
            return None

        attach = _Attach(app, middleware, begin_here)
        # First in line, so that the app's own before_request hooks can use the tracker.
        funcs = app.before_request_funcs.setdefault(None, [])
        if config.identify is not None:
            funcs.insert(0, attach.each_request)
            app.wsgi_app = middleware  # type: ignore[method-assign]
        else:
            funcs.insert(0, attach.first_request)
            app.wsgi_app = attach.first_call  # type: ignore[method-assign]


def get_tracker() -> RequestTracker:
    """The current request's tracker (``request.atrack``, typed).

    Raises ``RuntimeError`` when there is none (A-Track is not registered on the app),
    so the mistake shows on the first request.
    """
    tracker = getattr(request, STATE_KEY, None)
    if not isinstance(tracker, RequestTracker):
        raise RuntimeError(
            "no A-Track tracker on this request: register the extension with ATrack(app) "
            "or ATrack().init_app(app) (from atrack_integrations.flask import ATrack)"
        )
    return tracker
