"""A-Track for Celery: tasks published during a request track for that request's user.

::

    from celery import Celery
    from atrack_integrations import track
    from atrack_integrations.celery import ATrackCelery

    app = Celery("shop", broker="redis://localhost:6379/0")
    ATrackCelery(app)              # sdk=... or ATRACK_* environment, built on first use

    @app.task
    def send_receipt(order_id: int) -> None:
        ...
        track("receipt_sent", {"order_id": order_id})   # the user who ordered

    # in a view (Django, Flask, FastAPI …), while the middleware handles the request
    send_receipt.delay(order.id)

A task published while a request is handled carries the request tracker's uuid and
context in a message header (:mod:`atrack_integrations._task_headers`). In the worker,
:func:`~atrack_integrations.current_tracker` returns, for the task's duration, a tracker
for that user whose events carry the originating request's context; it sends no
``/init`` (the request did) and sets no cookie. Tasks published outside a request (beat,
a shell, a task without one) carry nothing and get no tracker. A request whose tracker is
a no-op (``respect_dnt``) publishes that, and its tasks get a no-op tracker; so does a
task whose header does not decode (damaged, forged), with a WARNING.

The worker flushes the SDK when it stops: each prefork child as it exits
(``worker_process_shutdown``), and the main process (``worker_shutdown``), bounded by
``Options.shutdown_timeout``.

Needs Celery: ``pip install 'a-track-sdk[celery]'``.
"""

from __future__ import annotations

import logging
import threading
import weakref
from typing import Any

try:
    from celery import Celery, signals
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "atrack_integrations.celery needs Celery: pip install 'a-track-sdk[celery]'"
    ) from exc

from atrack_core import ATrackSdk, _shutdown
from atrack_core._request import RequestView
from atrack_core._wire import WireContext

from . import _task_headers
from ._contain import Contain
from ._current import CURRENT
from ._lifecycle import IntegrationConfig, RequestTracker

__all__ = ["ATrackCelery"]

logger = logging.getLogger("atrack.celery")

_TASK_FAILED = Contain("A-Track could not start a tracker for this task", log=logger)
_FLUSH_FAILED = Contain("A-Track flush at worker shutdown failed", log=logger)

# What a task tracker stands on: its context comes from the header, never from a view.
_NO_REQUEST = RequestView("GET", "http", None, "/", "", {}, None)
_TOKEN_ATTR = "_atrack_token"
# Apps with an ATrackCelery: a second one would nest its tokens in the first's.
_INSTALLED: weakref.WeakSet[Celery] = weakref.WeakSet()


class ATrackCelery:
    """Carry the request's user into the tasks it publishes; flush when workers stop.

    ``ATrackCelery(app, *, sdk=None, **settings)``: ``settings`` are the integration
    settings (``public_key``, ``endpoint`` …, as for the middlewares), used to build the
    worker's SDK when ``sdk`` is not given. A second one on the same app raises
    ``RuntimeError``. That SDK is built on first use, so a web
    process that only publishes tasks never builds one. Call it where the Celery app is
    defined, so that both the web processes and the workers run it.
    """

    def __init__(self, app: Celery, *, sdk: ATrackSdk | None = None, **settings: Any) -> None:
        if app in _INSTALLED:
            raise RuntimeError(
                "A-Track is already installed on this Celery app; call ATrackCelery(app) "
                "once, where the app is defined"
            )
        self.app = app
        self._sdk = sdk
        self._settings = settings
        if sdk is not None or settings:
            # Validate now: a bad setting shows where the app is defined.
            self._config: IntegrationConfig | None = IntegrationConfig(sdk=sdk, **settings)
        else:
            self._config = None
        self._lock = threading.Lock()
        _INSTALLED.add(app)
        # weak=False: the handlers are bound methods of this object, which the app's
        # module may not keep a reference to.
        signals.before_task_publish.connect(self._on_publish, weak=False)
        signals.task_prerun.connect(self._on_prerun, weak=False)
        signals.task_postrun.connect(self._on_postrun, weak=False)
        signals.worker_process_shutdown.connect(self._on_shutdown, weak=False)
        signals.worker_shutdown.connect(self._on_shutdown, weak=False)

    def __repr__(self) -> str:
        return f"ATrackCelery({self.app!r})"

    @property
    def config(self) -> IntegrationConfig:
        """The worker's integration settings (the SDK among them), built on first use."""
        config = self._config
        if config is None:
            with self._lock:
                config = self._config
                if config is None:
                    config = self._config = IntegrationConfig(sdk=self._sdk, **self._settings)
        return config

    @property
    def sdk(self) -> ATrackSdk:
        """The SDK the worker's task trackers send through (for flushing and tests)."""
        return self.config.sdk

    # -- publishing side ---------------------------------------------------------------

    def _on_publish(self, sender: Any = None, headers: Any = None, **_: Any) -> None:
        tracker = CURRENT.get()
        if tracker is None or not isinstance(headers, dict):
            return
        with Contain("A-Track could not attach the request to task %s", sender, log=logger):
            headers[_task_headers.HEADER] = _task_headers.encode(tracker)

    # -- worker side -------------------------------------------------------------------

    def _on_prerun(self, sender: Any = None, task: Any = None, **_: Any) -> None:
        if task is None or getattr(task, "app", None) is not self.app:
            return
        request = task.request
        header = request.get(_task_headers.HEADER)
        if header is None:
            return  # published outside a request: no tracker
        try:
            decoded = _task_headers.decode(header)
        except _task_headers.HeaderError as exc:
            # A damaged or forged header (anyone who can publish to the broker can write
            # one): nothing of it is sent, and the task runs with a no-op tracker, so its
            # track() calls neither send nor raise.
            logger.warning(
                "A-Track ignored the %r header of task %s (%s): its events are not sent",
                _task_headers.HEADER,
                getattr(task, "name", sender),
                exc,
            )
            decoded = _task_headers.OFF
        with _TASK_FAILED:
            if decoded == _task_headers.OFF:
                tracker = self._noop_tracker()
            else:
                tracker = self._tracker(*decoded)
            setattr(request, _TOKEN_ATTR, CURRENT.set(tracker))

    def _on_postrun(self, sender: Any = None, task: Any = None, **_: Any) -> None:
        if task is None:
            return
        request = task.request
        token = getattr(request, _TOKEN_ATTR, None)
        if token is not None:
            setattr(request, _TOKEN_ATTR, None)
            try:
                CURRENT.reset(token)
            except ValueError:  # pragma: no cover - pre/postrun run in one context
                CURRENT.set(None)

    def _tracker(self, uuid: str, context: dict[str, str]) -> RequestTracker:
        # Passive: events and attributes go out, no /init (the request sent it) and no
        # cookie. The context is the request's, as its events carried it.
        tracker = RequestTracker(self.config, _NO_REQUEST, uuid, False, passive=True)
        tracker._context = WireContext(context)
        return tracker

    def _noop_tracker(self) -> RequestTracker:
        # The request's tracker was a no-op (respect_dnt), or the header is not ours.
        tracker = RequestTracker(self.config, _NO_REQUEST, None, False, passive=True)
        tracker.enabled = False
        return tracker

    def _on_shutdown(self, **_: Any) -> None:
        config = self._config
        if config is None:
            return  # this process never tracked anything
        sdk = config.sdk
        with _FLUSH_FAILED:
            timeout = sdk.options.shutdown_timeout
            if not sdk.flush(timeout):
                _shutdown.warn_stop_flush_timed_out(sdk, "worker shutdown", timeout)
