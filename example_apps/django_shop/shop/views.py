"""The example shop: the same small shop as the FastAPI and Flask examples.

- ``GET /?source=...``: the landing page; tracks ``landing_viewed`` with the source.
- ``POST /signup`` ``{"email": ..., "plan": ...}``: sets the user's attributes.
- ``POST /login`` ``{"user_id": ...}``: switches the tracker to a known user.
- ``POST /orders`` ``{"amount": ..., "currency": ...}``: tracks ``order_created``.
- ``GET /health``: excluded from tracking by default.
"""

from __future__ import annotations

import json
import math
from typing import Any

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

from atrack_integrations import track

LANDING = """<!doctype html>
<html><head><meta charset="utf-8"><title>A-Track shop</title></head>
<body>
<h1>A-Track example shop</h1>
<p>Your visitor id: <code>{uuid}</code> ({visitor})</p>
<button onclick="post('/signup', {{email: 'ada@example.com', plan: 'pro'}})">Sign up</button>
<button onclick="post('/orders', {{amount: 42.5, currency: 'EUR'}})">Order</button>
<pre id="out"></pre>
<script>
async function post(path, body) {{
  const r = await fetch(path, {{method: 'POST', headers: {{'content-type': 'application/json'}},
                               body: JSON.stringify(body)}});
  document.getElementById('out').textContent = path + ' -> ' + await r.text();
}}
</script>
</body></html>
"""


def _json(request: HttpRequest) -> dict[str, Any]:
    try:
        body = json.loads(request.body or b"{}")
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _bad(message: str) -> JsonResponse:
    return JsonResponse({"error": message}, status=400)


@require_GET
def landing(request: HttpRequest) -> HttpResponse:
    tracker = request.atrack
    tracker.track("landing_viewed", {"source": request.GET.get("source")})
    visitor = "new visitor" if tracker.is_new_user else "returning visitor"
    return HttpResponse(LANDING.format(uuid=tracker.uuid, visitor=visitor))


# The JSON endpoints are called by fetch() without a CSRF token; a real shop with
# sessions would keep CSRF protection and send the token.
@csrf_exempt
@require_POST
def signup(request: HttpRequest) -> HttpResponse:
    body = _json(request)
    email, plan = body.get("email"), body.get("plan", "free")
    if not isinstance(email, str) or not 3 <= len(email) <= 254 or not isinstance(plan, str):
        return _bad("expected {email, plan}")
    tracker = request.atrack
    try:
        tracker.set_attributes({"plan": plan, "email_domain": email.rpartition("@")[2]})
        tracker.track("signed_up", {"plan": plan})
    except ValueError as exc:  # input A-Track refuses (it says what and where)
        return _bad(str(exc))
    return JsonResponse({"uuid": tracker.uuid, "plan": plan})


@csrf_exempt
@require_POST
def login(request: HttpRequest) -> HttpResponse:
    user_id = _json(request).get("user_id")
    if not isinstance(user_id, str) or not 1 <= len(user_id) <= 255:
        return _bad("expected {user_id}")
    tracker = request.atrack
    try:
        tracker.identify(user_id)
    except ValueError as exc:  # control characters and the like: no id to track
        return _bad(str(exc))
    tracker.track("logged_in")
    return JsonResponse({"uuid": tracker.uuid})


@csrf_exempt
@require_POST
def create_order(request: HttpRequest) -> HttpResponse:
    body = _json(request)
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
    return JsonResponse(record_order(amount, currency), status=201)


def record_order(amount: float, currency: str) -> dict[str, Any]:
    """The shop's order service: it never sees the request, and tracks for the request's
    user through the current tracker (``NoRequestError`` outside a request)."""
    # ... store the order ...
    track("order_created", {"amount": amount, "currency": currency})
    return {"status": "created", "amount": amount, "currency": currency}


def health(request: HttpRequest) -> HttpResponse:
    return JsonResponse({"status": "ok"})
