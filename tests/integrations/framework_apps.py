"""The same small app in each framework that reuses the generic middlewares (Litestar,
Quart, Falcon WSGI and ASGI), for tests/integrations/test_frameworks.py.

Every app answers ``GET /who?tag=...`` by tracking ``page_viewed`` through the
framework's own way to the tracker and returning ``{"uuid", "who"}`` (``who`` from
:func:`~atrack_integrations.current_tracker`), and ``GET /health`` with ``ok`` (an
excluded path). Factories take an SDK, or build it from the ``ATRACK_*`` environment
(``sdk=None``) when a server process imports them.
"""

from __future__ import annotations

from typing import Any

from atrack_core import ATrackSdk
from atrack_integrations import RequestTracker, current_tracker


def who() -> str:
    """Service code that never sees the request."""
    tracker = current_tracker()
    return "none" if tracker is None else tracker.uuid


def answer(tracker: RequestTracker, tag: str) -> dict[str, str]:
    tracker.track("page_viewed", {"tag": tag})
    return {"uuid": tracker.uuid, "who": who()}


def litestar_app(sdk: ATrackSdk | None = None) -> Any:
    from litestar import Litestar, Request, get

    from atrack_integrations.asgi import ATrackMiddleware, get_tracker

    @get("/who")
    async def who_view(request: Request[Any, Any, Any]) -> dict[str, str]:
        tag = request.query_params.get("tag", "")
        return answer(get_tracker(request.scope), tag)  # type: ignore[arg-type]

    @get("/health", sync_to_thread=False)
    def health() -> str:
        return "ok"

    # Around the whole app (not Litestar's per-route middleware): the lifespan, and so
    # the flush at shutdown, goes through it.
    return ATrackMiddleware(Litestar(route_handlers=[who_view, health]), sdk=sdk)


def quart_app(sdk: ATrackSdk | None = None) -> Any:
    from quart import Quart, request

    from atrack_integrations.asgi import ATrackMiddleware, get_tracker

    app = Quart(__name__)

    @app.get("/who")
    async def who_view() -> Any:
        return answer(get_tracker(request.scope), request.args.get("tag", ""))

    @app.get("/health")
    async def health() -> str:
        return "ok"

    app.asgi_app = ATrackMiddleware(app.asgi_app, sdk=sdk)  # type: ignore[method-assign]
    return app


class _WhoResource:
    def on_get(self, req: Any, resp: Any) -> None:
        resp.media = answer(req.env["atrack.tracker"], req.get_param("tag") or "")


class _AsyncWhoResource:
    async def on_get(self, req: Any, resp: Any) -> None:
        from atrack_integrations.asgi import get_tracker

        resp.media = answer(get_tracker(req.scope), req.get_param("tag") or "")


class _Health:
    def on_get(self, req: Any, resp: Any) -> None:
        resp.text = "ok"


class _AsyncHealth:
    async def on_get(self, req: Any, resp: Any) -> None:
        resp.text = "ok"


def falcon_wsgi_app(sdk: ATrackSdk | None = None) -> Any:
    import falcon

    from atrack_integrations.wsgi import ATrackWSGIMiddleware

    app = falcon.App()
    app.add_route("/who", _WhoResource())
    app.add_route("/health", _Health())
    return ATrackWSGIMiddleware(app, sdk=sdk)


def falcon_asgi_app(sdk: ATrackSdk | None = None) -> Any:
    import falcon.asgi

    from atrack_integrations.asgi import ATrackMiddleware

    app = falcon.asgi.App()
    app.add_route("/who", _AsyncWhoResource())
    app.add_route("/health", _AsyncHealth())
    return ATrackMiddleware(app, sdk=sdk)
