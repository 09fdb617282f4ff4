"""A small Starlette shop tracked with A-Track (the same shop as the FastAPI example).

Run it (from the repository root)::

    export ATRACK_OUTBOX=/var/tmp/shop-outbox   # calls kept on disk until delivered
    ATRACK_PUBLIC_KEY=pub_xxxxx uvicorn example_apps.starlette_shop.app:app

Point it at the local collector with ``ATRACK_ENDPOINT=http://127.0.0.1:8787``. Without
``ATRACK_PUBLIC_KEY`` it runs with tracking disabled.
"""

from __future__ import annotations

import json

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from atrack_integrations.starlette import ATrackMiddleware
from example_apps._sdk import build_sdk
from example_apps._shop import landing_page, record_order

# From the ATRACK_* environment; RedisStorage when ATRACK_REDIS_URL is set.
sdk = build_sdk()


async def read_json(request: Request) -> dict[str, object] | None:
    try:
        body = await request.json()
    except (ValueError, UnicodeDecodeError):
        return None
    return body if isinstance(body, dict) else None


async def landing(request: Request) -> Response:
    tracker = request.state.atrack
    tracker.track("landing_viewed", {"source": request.query_params.get("source")})
    return HTMLResponse(landing_page(tracker.uuid, tracker.is_new_user))


async def signup(request: Request) -> Response:
    body = await read_json(request)
    email, plan = (body or {}).get("email"), (body or {}).get("plan", "free")
    if not isinstance(email, str) or "@" not in email or not isinstance(plan, str):
        return JSONResponse({"error": "expected {'email': str, 'plan': str}"}, status_code=422)
    tracker = request.state.atrack
    try:
        tracker.set_attributes({"plan": plan, "email_domain": email.rpartition("@")[2]})
        tracker.track("signed_up", {"plan": plan})
    except ValueError as exc:  # input A-Track refuses (it says what and where)
        return JSONResponse({"error": str(exc)}, status_code=422)
    return JSONResponse({"uuid": tracker.uuid, "plan": plan})


async def login(request: Request) -> Response:
    body = await read_json(request)
    user_id = (body or {}).get("user_id")
    if not isinstance(user_id, str) or not user_id:
        return JSONResponse({"error": "expected {'user_id': str}"}, status_code=422)
    tracker = request.state.atrack
    try:
        tracker.identify(user_id)
    except ValueError as exc:  # control characters and the like: no id to track
        return JSONResponse({"error": str(exc)}, status_code=422)
    tracker.track("logged_in")
    return JSONResponse({"uuid": tracker.uuid})


async def create_order(request: Request) -> Response:
    body = await read_json(request) or {}
    amount, currency = body.get("amount"), body.get("currency", "EUR")
    if (
        isinstance(amount, bool)
        or not isinstance(amount, (int, float))
        or amount <= 0
        or not isinstance(currency, str)
    ):
        return JSONResponse({"error": "expected {'amount': number > 0}"}, status_code=422)
    return JSONResponse(record_order(amount, currency), status_code=201)


async def health(request: Request) -> Response:
    return Response(json.dumps({"status": "ok"}), media_type="application/json")


app = Starlette(
    routes=[
        Route("/", landing),
        Route("/signup", signup, methods=["POST"]),
        Route("/login", login, methods=["POST"]),
        Route("/orders", create_order, methods=["POST"]),
        Route("/health", health),
    ],
    # The middleware also flushes the SDK when the server shuts down (lifespan).
    middleware=[Middleware(ATrackMiddleware, sdk=sdk)],
)
