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
from ._current import active_body
from ._lifecycle import ENVIRON_KEY, SETTING_NAMES, STATE_KEY, IntegrationConfig, RequestTracker
from ._wsgi_common import header_keys, view_from_environ
from .wsgi import ATrackWSGIMiddleware

# The context variables behind Flask's ``request`` and ``g`` proxies (Flask 2.2+): read
# directly, the hook below makes no call through werkzeug's proxies (two Python calls
# per request). A Flask without them: the proxies.
_cv_request: Any = getattr(_flask_globals, "_cv_request", None)
_cv_app: Any = getattr(_flask_globals, "_cv_app", None)

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    from flask import Flask

    from ._lifecycle import RequestTracker as _Tracker

__all__ = ["ATrack", "ATrackState", "get_tracker"]

_EXTENSION_FAILED = Contain("A-Track extension failed; the request goes on untracked")

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
        SDK, wrap ``app.wsgi_app`` and add a ``before_request`` hook. Raises
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
        # Flask request: it is bound in before_request, and the hook is asked only when
        # the uuid is needed (after that). One before_request hook exposes the tracker
        # as request.atrack and g.atrack.
        middleware = ATrackWSGIMiddleware._over(
            app.wsgi_app, config, hook_gets_environ=False, active_body=_active_body
        )

        def before_request() -> None:
            # The real objects once: every access through a proxy costs a Python call.
            req: Any
            if _cv_request is not None and _cv_app is not None:
                req = _cv_request.get().request
                flask_g = _cv_app.get().g
            else:  # pragma: no cover - depends on the Flask version
                req = request._get_current_object()  # type: ignore[attr-defined]
                flask_g = g._get_current_object()
            environ = req.environ
            tracker = environ.get(ENVIRON_KEY)
            if tracker is None:
                # Dispatched without app.wsgi_app (test_request_context +
                # full_dispatch_request): a tracker, but no cookie (no response start
                # to add it to) and no eager /init (only one a tracked call sends).
                with _EXTENSION_FAILED:
                    view = view_from_environ(environ, keys)
                    tracker = config.begin(view, req, path=environ.get("PATH_INFO") or "/")
                    environ[ENVIRON_KEY] = tracker
                if tracker is None:
                    return
            elif tracker._identify_due:
                tracker._hook_request = req  # config.bind_request, inline
            req.atrack = tracker
            # Into g's namespace: what its __setattr__ does, without that Python call.
            vars(flask_g)[STATE_KEY] = tracker

        # First in line, so that the app's own before_request hooks can use the tracker.
        app.before_request_funcs.setdefault(None, []).insert(0, before_request)
        app.wsgi_app = middleware  # type: ignore[method-assign]


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
