"""The collector's Starlette app: the three ingest endpoints, the read API, the page."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any, Final

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ._guard import HostOriginGuard
from ._keys import key_id, mask_key, resolve_key_filter
from ._store import Store, utc_now
from ._validate import MAX_BODY_BYTES, PATHS, BodyError, parse_body

__all__ = ["create_app"]

logger = logging.getLogger("atrack.collector")

KEY_HEADER: Final = "x-a-track-key"
REQUEST_ID_HEADER: Final = "x-a-track-request-id"
_MAX_REQUEST_ID: Final = 255
_OK: Final = b'{"ok":true}'
_STATIC: Final = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
# The page renders data that any client sent; it must never run any of it, nor load
# anything from elsewhere.
_PAGE_HEADERS: Final = {
    "content-security-policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    ),
    "x-content-type-options": "nosniff",
    "cache-control": "no-cache",
    "referrer-policy": "no-referrer",
}


def _is_number(text: str) -> bool:
    # str.isdigit() alone accepts "²" and other digits int() refuses.
    return text.isascii() and text.isdigit()


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _media_type_problem(content_type: str | None) -> str | None:
    """Why ``content_type`` is not a UTF-8 JSON one, or ``None`` when it is."""
    if not content_type:
        return "missing content-type header; send 'application/json'"
    media, _, params = content_type.partition(";")
    if media.strip().lower() != "application/json":
        return f"content-type must be 'application/json', got {content_type[:100]!r}"
    for param in params.split(";"):
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset" and value.strip().strip('"').lower() not in (
            "utf-8",
            "utf8",
        ):
            return f"the body must be UTF-8, but content-type says {content_type[:100]!r}"
    return None


async def _read_capped(request: Request) -> bytes | None:
    """The body, or ``None`` as soon as it is known to exceed the size limit."""
    declared = request.headers.get("content-length", "")
    if _is_number(declared) and int(declared) > MAX_BODY_BYTES:
        return None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _ingest_endpoint(
    store: Store, path: str, latency: float, accepted: frozenset[str] | None
) -> Callable[[Request], Awaitable[Response]]:
    async def ingest(request: Request) -> Response:
        if latency > 0:
            await asyncio.sleep(latency)
        received_at = utc_now()
        key = request.headers.get(KEY_HEADER, "").strip() or None
        request_id = request.headers.get(REQUEST_ID_HEADER, "").strip()[:_MAX_REQUEST_ID] or None
        try:
            raw = await _read_capped(request)
        except ClientDisconnect:
            # The client went away before its body arrived (a killed process, a
            # timeout): not an error of the collector, and nothing to record (it was
            # never a whole call; the client sends it again or never knew).
            logger.debug(
                "POST %s (request id %s): the client went away before its body arrived; "
                "not recorded",
                path,
                request_id,
            )
            return Response(status_code=400)
        text = raw.decode("utf-8", "replace") if raw is not None else None
        status, message = 200, None
        body: dict[str, Any] | None = None
        if key is None:
            status, message = 401, f"missing {KEY_HEADER} header: every call needs a public key"
        elif accepted is not None and key_id(key) not in accepted:
            status, message = 401, f"public key {mask_key(key)} is not accepted by this collector"
        elif raw is None:
            status, message = 413, f"body is larger than {MAX_BODY_BYTES} bytes"
        else:
            problem = _media_type_problem(request.headers.get("content-type"))
            if problem is not None:
                status, message = 415, problem
            else:
                try:
                    body = parse_body(path, raw)
                except BodyError as exc:
                    status, message = 400, str(exc)
        # Written before the response goes out, so a client that got its answer can
        # rely on the call being visible in the read API (and in call order).
        store.record(
            path=path,
            key=key,
            request_id=request_id,
            raw_body=text,
            status=status,
            error=message,
            body=body,
            received_at=received_at,
        )
        if message is not None:
            return _error(status, message)
        return Response(_OK, media_type="application/json")

    return ingest


def _int_param(request: Request, name: str, default: int, maximum: int) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    if not _is_number(raw) or not 0 < int(raw) <= maximum:
        raise HTTPException(400, f"{name!r} must be an integer from 1 to {maximum}")
    return int(raw)


def _key_param(request: Request) -> str | None:
    value = request.query_params.get("key")
    return resolve_key_filter(value) if value else None


def _text_param(request: Request, name: str) -> str | None:
    return request.query_params.get(name) or None


def create_app(
    db_path: str | os.PathLike[str] | None = None,
    *,
    latency: float = 0.0,
    keys: Iterable[str] | None = None,
    store: Store | None = None,
    allowed_hosts: Iterable[str] = (),
) -> Starlette:
    """Build the collector's ASGI app.

    ``db_path``: SQLite file to keep data in across restarts; ``None`` keeps it in
    memory. ``latency``: seconds each ingest call waits before it is handled, to
    imitate a distant API in delivery tests and benchmarks. ``keys``: when given, only
    these public keys are accepted and any other gets a 401, as the hosted API answers
    a wrong key; by default every non-empty key is. ``store``: an existing
    :class:`Store` to use instead (then the caller closes it). The store is reachable
    as ``app.state.store``.

    Only requests whose ``Host`` is a loopback name (``localhost``, 127.0.0.0/8,
    ``::1``) or one of ``allowed_hosts`` are answered (no DNS rebinding), and
    state-changing requests from another ``Origin`` are refused (no CSRF): see
    ``docs/collector.md``.

    Run it with any ASGI server, for example
    ``uvicorn --factory atrack_core.collector:create_app``.
    """
    if store is not None and db_path is not None:
        raise ValueError("pass db_path or store, not both")
    if latency < 0:
        raise ValueError(f"latency must be >= 0 seconds, got {latency!r}")
    accepted = None if keys is None else frozenset(key_id(key) for key in keys)
    owns_store = store is None
    the_store = Store(db_path) if store is None else store
    static_dir = resources.files(__package__) / "static"
    assets = {name: (static_dir / name).read_bytes() for name in _STATIC}

    async def page(request: Request) -> Response:
        return Response(
            assets["index.html"], headers={**_PAGE_HEADERS, "content-type": _STATIC["index.html"]}
        )

    async def asset(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in assets or name == "index.html":
            raise HTTPException(404, f"no static file {name[:100]!r}")
        # The type goes in as a header: Starlette < 0.28 appends a second charset to a
        # media_type that already carries one.
        return Response(assets[name], headers={**_PAGE_HEADERS, "content-type": _STATIC[name]})

    async def users(request: Request) -> Response:
        rows = the_store.users(
            key_id=_key_param(request),
            uuid=_text_param(request, "uuid"),
            limit=_int_param(request, "limit", 500, 10_000),
        )
        return JSONResponse({"users": rows})

    async def events(request: Request) -> Response:
        after = request.query_params.get("after_id")
        if after is not None and not _is_number(after):
            raise HTTPException(400, "'after_id' must be a non-negative integer")
        rows = the_store.events(
            key_id=_key_param(request),
            event=_text_param(request, "event"),
            uuid=_text_param(request, "uuid"),
            after_id=int(after) if after is not None else None,
            limit=_int_param(request, "limit", 100, 10_000),
        )
        return JSONResponse({"events": rows})

    async def calls(request: Request) -> Response:
        limit = request.query_params.get("limit")
        rows = the_store.calls(
            path=_text_param(request, "path"),
            uuid=_text_param(request, "uuid"),
            key_id=_key_param(request),
            limit=_int_param(request, "limit", 0, 100_000) if limit else None,
        )
        return JSONResponse({"calls": rows})

    async def stats(request: Request) -> Response:
        return JSONResponse(the_store.stats())

    async def reset(request: Request) -> Response:
        if request.method == "POST":
            # An HTML form or a no-cors fetch can POST only form or text types, without
            # a preflight; asking for JSON keeps every other site's page out.
            problem = _media_type_problem(request.headers.get("content-type"))
            if problem is not None:
                return _error(415, problem)
        the_store.reset()
        return JSONResponse({"ok": True})

    async def http_error(request: Request, exc: Exception) -> Response:
        if not isinstance(exc, HTTPException):  # pragma: no cover - registered for it only
            raise exc
        return JSONResponse({"error": exc.detail}, status_code=exc.status_code, headers=exc.headers)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            if owns_store:
                the_store.close()

    routes = [
        *(
            Route(path, _ingest_endpoint(the_store, path, latency, accepted), methods=["POST"])
            for path in PATHS
        ),
        Route("/", page, methods=["GET"]),
        Route("/static/{name}", asset, methods=["GET"]),
        Route("/api/users", users, methods=["GET"]),
        Route("/api/events", events, methods=["GET"]),
        Route("/api/calls", calls, methods=["GET"]),
        Route("/api/stats", stats, methods=["GET"]),
        Route("/api/data", reset, methods=["DELETE"]),
        Route("/api/reset", reset, methods=["POST"]),
    ]
    app = Starlette(
        routes=routes,
        exception_handlers={HTTPException: http_error},
        lifespan=lifespan,
        middleware=[Middleware(HostOriginGuard, allowed_hosts=tuple(allowed_hosts))],
    )
    app.state.store = the_store
    return app
