"""A small FastAPI shop tracked with A-Track.

Run it (from the repository root)::

    export ATRACK_OUTBOX=/var/tmp/shop-outbox   # calls kept on disk until delivered
    ATRACK_PUBLIC_KEY=pub_xxxxx uvicorn example_apps.fastapi_shop.app:app

Point it at the local collector with ``ATRACK_ENDPOINT=http://127.0.0.1:8787`` (see
``atrack collector``). Without ``ATRACK_PUBLIC_KEY`` it runs with tracking disabled.

- ``GET /?source=...``: the landing page; tracks ``landing_viewed`` with the source.
- ``POST /signup`` ``{"email": ..., "plan": ...}``: sets the user's attributes.
- ``POST /login`` ``{"user_id": ...}``: switches the tracker to a known user.
- ``POST /orders`` ``{"amount": ..., "currency": ...}``: tracks ``order_created``.
- ``GET /health``: excluded from tracking by default.
"""

from __future__ import annotations

from fastapi import FastAPI, HTTPException
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, Field

from atrack_integrations.fastapi import ATrackMiddleware, ATrackTracker
from example_apps._sdk import build_sdk
from example_apps._shop import landing_page, record_order

# From the ATRACK_* environment; RedisStorage when ATRACK_REDIS_URL is set.
sdk = build_sdk()
app = FastAPI(title="A-Track example shop (FastAPI)")
# The middleware also flushes the SDK when the server shuts down (lifespan).
app.add_middleware(ATrackMiddleware, sdk=sdk)


class Signup(BaseModel):
    email: str = Field(min_length=3, max_length=254)
    plan: str = "free"


class Login(BaseModel):
    user_id: str = Field(min_length=1, max_length=255)


class Order(BaseModel):
    amount: float = Field(gt=0)
    currency: str = Field(default="EUR", min_length=3, max_length=3)


@app.get("/", response_class=HTMLResponse)
def landing(tracker: ATrackTracker, source: str | None = None) -> str:
    tracker.track("landing_viewed", {"source": source})
    return landing_page(tracker.uuid, tracker.is_new_user)


@app.post("/signup")
def signup(body: Signup, tracker: ATrackTracker) -> dict[str, str]:
    try:
        tracker.set_attributes({"plan": body.plan, "email_domain": body.email.rpartition("@")[2]})
        tracker.track("signed_up", {"plan": body.plan})
    except ValueError as exc:  # input A-Track refuses (it says what and where)
        raise HTTPException(422, str(exc)) from None
    return {"uuid": tracker.uuid, "plan": body.plan}


@app.post("/login")
def login(body: Login, tracker: ATrackTracker) -> dict[str, str]:
    try:
        tracker.identify(body.user_id)
    except ValueError as exc:  # control characters and the like: no id to track
        raise HTTPException(422, str(exc)) from None
    tracker.track("logged_in")
    return {"uuid": tracker.uuid}


@app.post("/orders", status_code=201)
def create_order(order: Order) -> dict[str, object]:
    # A plain def runs in FastAPI's thread pool: the current tracker follows it there.
    return record_order(order.amount, order.currency)


@app.get("/health")
def health() -> dict[str, str]:
    return {"status": "ok"}
