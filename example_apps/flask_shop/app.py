"""A small Flask shop tracked with A-Track: the same shop as the FastAPI example.

Run it (from the repository root)::

    export ATRACK_OUTBOX=/var/tmp/shop-outbox   # calls kept on disk until delivered
    ATRACK_PUBLIC_KEY=pub_xxxxx flask --app example_apps.flask_shop.app run
    ATRACK_PUBLIC_KEY=pub_xxxxx gunicorn example_apps.flask_shop.app:app

Point it at the local collector with ``ATRACK_ENDPOINT=http://127.0.0.1:8787`` (see
``atrack collector``). Without ``ATRACK_PUBLIC_KEY`` it runs with tracking disabled.

- ``GET /?source=...``: the landing page; tracks ``landing_viewed`` with the source.
- ``POST /signup`` ``{"email": ..., "plan": ...}``: sets the user's attributes.
- ``POST /login`` ``{"user_id": ...}``: switches the tracker to a known user.
- ``POST /orders`` ``{"amount": ..., "currency": ...}``: tracks ``order_created`` (from
  the order service, through the current tracker) and, with ``SHOP_CELERY_BROKER`` set,
  enqueues a receipt task that tracks ``receipt_sent`` in the worker (``tasks.py``).
- ``GET /health``: excluded from tracking by default.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping
from typing import Any

from flask import Blueprint, Flask, current_app, jsonify, request
from flask.typing import ResponseReturnValue

from atrack_core import ATrackSdk, Options
from atrack_integrations.flask import ATrack
from example_apps._shop import landing_page, record_order

logger = logging.getLogger("example_apps.flask_shop")

# One extension object for every app the factory makes (tests make several).
atrack = ATrack()
shop = Blueprint("shop", __name__)


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """The app factory. ``config`` overrides Flask config keys, e.g. ``ATRACK_SDK``;
    the A-Track settings default to the ``ATRACK_*`` environment variables."""
    app = Flask(__name__)
    app.config.from_mapping(config or {})
    if app.config.get("ATRACK_SDK") is None and not os.environ.get("ATRACK_PUBLIC_KEY"):
        # No key: run with tracking disabled rather than refuse to start.
        logger.warning("A-Track disabled: ATRACK_PUBLIC_KEY is not set")
        app.config["ATRACK_SDK"] = ATrackSdk(Options.from_env(disabled=True))
    elif app.config.get("ATRACK_SDK") is None and os.environ.get("ATRACK_REDIS_URL"):
        # Shared by every worker: one /init per user however many workers serve them.
        # A class named by its dotted path is built without arguments: RedisStorage
        # then reads ATRACK_REDIS_URL.
        app.config.setdefault("ATRACK_STORAGE", "atrack_core.redis.RedisStorage")
    atrack.init_app(app)
    app.config.setdefault("SHOP_CELERY_BROKER", os.environ.get("SHOP_CELERY_BROKER"))
    if app.config["SHOP_CELERY_BROKER"]:
        from example_apps.flask_shop.tasks import celery

        celery.conf.broker_url = app.config["SHOP_CELERY_BROKER"]
    app.register_blueprint(shop)
    return app


def _json() -> dict[str, Any]:
    body = request.get_json(silent=True)
    return body if isinstance(body, dict) else {}


def _bad(message: str) -> ResponseReturnValue:
    return jsonify(error=message), 400


@shop.get("/")
def landing() -> ResponseReturnValue:
    tracker = request.atrack  # type: ignore[attr-defined]
    tracker.track("landing_viewed", {"source": request.args.get("source")})
    return landing_page(tracker.uuid, tracker.is_new_user)


@shop.post("/signup")
def signup() -> ResponseReturnValue:
    body = _json()
    email, plan = body.get("email"), body.get("plan", "free")
    if not isinstance(email, str) or not 3 <= len(email) <= 254 or not isinstance(plan, str):
        return _bad("expected {email, plan}")
    tracker = request.atrack  # type: ignore[attr-defined]
    try:
        tracker.set_attributes({"plan": plan, "email_domain": email.rpartition("@")[2]})
        tracker.track("signed_up", {"plan": plan})
    except ValueError as exc:  # input A-Track refuses (it says what and where)
        return _bad(str(exc))
    return jsonify(uuid=tracker.uuid, plan=plan)


@shop.post("/login")
def login() -> ResponseReturnValue:
    user_id = _json().get("user_id")
    if not isinstance(user_id, str) or not 1 <= len(user_id) <= 255:
        return _bad("expected {user_id}")
    tracker = request.atrack  # type: ignore[attr-defined]
    try:
        tracker.identify(user_id)
    except ValueError as exc:  # control characters and the like: no id to track
        return _bad(str(exc))
    tracker.track("logged_in")
    return jsonify(uuid=tracker.uuid)


@shop.post("/orders")
def create_order() -> ResponseReturnValue:
    body = _json()
    amount, currency = body.get("amount"), body.get("currency", "EUR")
    if (
        isinstance(amount, bool)
        or not isinstance(amount, (int, float))
        or not math.isfinite(amount)
        or amount <= 0
        or not isinstance(currency, str)
        or len(currency) != 3
    ):
        return _bad("expected {amount > 0, currency: 3 letters}")
    order = record_order(amount, currency)
    if current_app.config["SHOP_CELERY_BROKER"]:
        from example_apps.flask_shop.tasks import send_receipt

        # Published during the request: the worker's receipt_sent event is this user's,
        # with this page's context.
        send_receipt.delay(amount, currency)
    return jsonify(order), 201


@shop.get("/health")
def health() -> ResponseReturnValue:
    return jsonify(status="ok")


app = create_app()
