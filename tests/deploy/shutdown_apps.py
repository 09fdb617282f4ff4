"""Minimal apps for the server shutdown tests: the SDK built at import from
``ATRACK_TEST_ENDPOINT``/``ATRACK_TEST_TRANSPORT``, behind the A-Track middleware (one
``/init`` per new visitor, then the view's event). ``/hit?n=N`` tracks ``hit`` with
``{"n": N}``; ``/health`` is excluded from tracking.

- ``wsgi_app``: WSGI (gunicorn sync/gthread/gevent, waitress, granian ``wsgi``).
- ``asgi_app``: ASGI with lifespan support (uvicorn, hypercorn, daphne, granian
  ``asgi``, gunicorn's uvicorn worker); under granian ``asginl`` it runs without one.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qs

from atrack_core import ATrackSdk, Options
from atrack_integrations import current_tracker
from atrack_integrations.asgi import ATrackMiddleware, Receive, Scope, Send
from atrack_integrations.wsgi import ATrackWSGIMiddleware

sdk = ATrackSdk(
    Options(
        "pub_shutdown_test_5150",
        endpoint=os.environ["ATRACK_TEST_ENDPOINT"],
        transport=os.environ.get("ATRACK_TEST_TRANSPORT", "auto"),  # type: ignore[arg-type]
        # The outbox restart tests (tests/deploy/test_outbox_restart.py).
        outbox=os.environ.get("ATRACK_TEST_OUTBOX") or None,
        shutdown_timeout=float(os.environ.get("ATRACK_TEST_SHUTDOWN_TIMEOUT", "5")),
    )
)


def _hit(query: str) -> None:
    n = int(parse_qs(query).get("n", ["-1"])[0])
    tracker = current_tracker()
    assert tracker is not None  # inside a request, behind the middleware
    tracker.track("hit", {"n": n})


def _wsgi(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    if environ["PATH_INFO"] == "/hit":
        _hit(environ.get("QUERY_STRING", ""))
    start_response("200 OK", [("content-type", "text/plain")])
    return [b"ok"]


async def _asgi(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    if scope["path"] == "/hit":
        _hit(scope.get("query_string", b"").decode())
    headers = [(b"content-type", b"text/plain")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": b"ok"})


wsgi_app = ATrackWSGIMiddleware(_wsgi, sdk=sdk)
asgi_app = ATrackMiddleware(_asgi, sdk=sdk)
