"""What the FastAPI, Starlette and Flask example shops share: the landing page and the
order service.

(The Django shop runs from its own directory, without this package on the path, and
keeps its own copy.)
"""

from __future__ import annotations

from typing import Any

from atrack_integrations import track

__all__ = ["landing_page", "record_order"]

_LANDING = """<!doctype html>
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


def landing_page(uuid: str | None, is_new_user: bool) -> str:
    """The landing page's HTML for a visitor."""
    visitor = "new visitor" if is_new_user else "returning visitor"
    return _LANDING.format(uuid=uuid, visitor=visitor)


def record_order(amount: float, currency: str) -> dict[str, Any]:
    """The shop's order service: it never sees the request or the web framework, and
    tracks for the request's user through the current tracker (``track`` raises
    ``NoRequestError`` if it is ever called outside a request)."""
    # ... store the order ...
    track("order_created", {"amount": amount, "currency": currency})
    return {"status": "created", "amount": amount, "currency": currency}
