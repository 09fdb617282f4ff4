"""The inspector page in a real headless Chromium, driven by Playwright.

Needs Debian's ``chromium`` at /usr/bin/chromium (no browser download): skipped when it
is missing, except on CI (``ATRACK_REQUIRE_BROWSER=1``), where that is a failure.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from atrack_core import ATrackSdk, EventPayload, InitPayload, Options, UserContext
from atrack_core.collector import Collector, key_id
from tests.conftest import require_or_skip

from .conftest import KEY, OTHER_KEY

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    # Names for the attack tests: an attacker's site, and a name rebound to the collector
    # (as a DNS-rebinding attacker's resolver would answer), both on loopback.
    "--host-resolver-rules=MAP *.attacker.test 127.0.0.1",
]
TIMEOUT_MS = 15_000

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    available = os.access(CHROMIUM, os.X_OK)
    require_or_skip("Chromium at /usr/bin/chromium", available, "ATRACK_REQUIRE_BROWSER")
    sync_api = pytest.importorskip("playwright.sync_api")
    # Generous: CI machines run other suites alongside; passing tests never wait for it.
    sync_api.expect.set_options(timeout=TIMEOUT_MS)
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(f"page error: {exc}"))
    page.on(
        "console",
        lambda msg: errors.append(f"console: {msg.text}") if msg.type == "error" else None,
    )
    try:
        yield page
    finally:
        context.close()
    assert errors == []


def sdk_for(collector: Collector, key: str = KEY) -> ATrackSdk:
    return ATrackSdk(Options(key, endpoint=collector.url, delivery="sync"))


def test_new_events_appear_live_and_filter(page: Any, collector: Collector, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    page.goto(collector.url)
    expect(page.locator("#live")).to_have_attribute("data-state", "live", timeout=TIMEOUT_MS)
    expect(page.locator("#empty")).to_be_visible()
    # Marks this document: a reload would lose it.
    page.evaluate("window.__sameDocument = true")

    with sdk_for(collector) as sdk:
        sdk.init(InitPayload(user=UserContext(uuid="browser-user", attributes={"plan": "pro"})))
        sdk.track(EventPayload(event="signup", uuid="browser-user", attributes={"via": "ads"}))
        sdk.track(EventPayload(event="order_created", uuid="browser-user",
                               attributes={"amount": 12}))  # fmt: skip
    with sdk_for(collector, OTHER_KEY) as other:
        other.track(EventPayload(event="job_processed", uuid="worker-7"))

    user = page.locator('article.user[data-uuid="browser-user"]')
    expect(user.locator('li.event[data-event="order_created"]')).to_be_visible(timeout=TIMEOUT_MS)
    expect(page.locator('article.user[data-uuid="worker-7"]')).to_be_visible()
    assert page.evaluate("window.__sameDocument") is True
    expect(page.locator("#empty")).to_be_hidden()

    # The user's attributes, and their events newest first.
    expect(user.locator("table.attributes")).to_contain_text("plan")
    expect(user.locator("table.attributes")).to_contain_text('"pro"')
    assert user.locator("li.event").evaluate_all("els => els.map(e => e.dataset.event)") == [
        "order_created",
        "signup",
    ]
    expect(page.locator("#stat-events")).to_have_text("3")

    # A later event shows up too, at the top, still without a reload.
    with sdk_for(collector) as sdk:
        sdk.track(EventPayload(event="checkout", uuid="browser-user"))
    expect(user.locator("li.event").first).to_have_attribute("data-event", "checkout")
    assert page.evaluate("window.__sameDocument") is True

    # Filter by event name: only users with such an event, and only those events.
    expect(page.locator('#filter-event option[value="signup"]')).to_have_count(1)
    page.select_option("#filter-event", "signup")
    expect(page.locator('article.user[data-uuid="worker-7"]')).to_have_count(0)
    expect(page.locator("li.event")).to_have_count(1)
    expect(page.locator("li.event")).to_have_attribute("data-event", "signup")
    page.screenshot(path=str(tmp_path / "inspector-filtered.png"), full_page=True)

    # Filter by key (its id; the page never holds the full key).
    page.select_option("#filter-event", "")
    page.select_option("#filter-key", key_id(OTHER_KEY))
    # Counted by uuid: a bare count of 1 could still be the previous filter's result.
    expect(page.locator('article.user[data-uuid="browser-user"]')).to_have_count(0)
    expect(page.locator("article.user")).to_have_count(1)
    expect(page.locator('article.user[data-uuid="worker-7"] .badge.key')).to_have_text("pub_…zzzz")
    page.select_option("#filter-key", "")
    expect(page.locator("article.user")).to_have_count(2)

    html = page.content()
    assert KEY not in html
    assert OTHER_KEY not in html

    screenshot = tmp_path / "inspector.png"
    page.screenshot(path=str(screenshot), full_page=True)
    assert screenshot.stat().st_size > 0
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_call_log_shows_rejected_calls(page: Any, collector: Collector, tmp_path: Path) -> None:
    import httpx
    from playwright.sync_api import expect

    page.goto(collector.url)
    expect(page.locator("#live")).to_have_attribute("data-state", "live")
    response = httpx.post(f"{collector.url}/event", json={"uuid": "x"},
                          headers={"x-a-track-key": KEY})  # fmt: skip
    assert response.status_code == 400
    page.click("#tab-calls")
    row = page.locator("#calls tr.bad")
    expect(row).to_have_count(1)
    expect(row).to_contain_text("400")
    expect(row).to_contain_text("missing keys")
    expect(page.locator("#stat-rejected")).to_have_text("1")
    page.screenshot(path=str(tmp_path / "call-log.png"), full_page=True)
    assert (tmp_path / "call-log.png").stat().st_size > 0


def test_hostile_values_are_shown_as_text(page: Any, collector: Collector) -> None:
    from playwright.sync_api import expect

    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    page.goto(collector.url)
    expect(page.locator("#live")).to_have_attribute("data-state", "live")
    hostile = "<img src=x onerror=alert(1)>"
    with sdk_for(collector) as sdk:
        sdk.init(InitPayload(user=UserContext(uuid="<b>bold</b>", attributes={"bio": hostile})))
        sdk.track(EventPayload(event="<script>alert(2)</script>", uuid="<b>bold</b>",
                               context={"url": hostile}))  # fmt: skip
    user = page.locator("article.user")
    expect(user.locator("h2.uuid")).to_have_text("<b>bold</b>")
    expect(user.locator("table.attributes")).to_contain_text(hostile)
    expect(user.locator(".event-name")).to_have_text("<script>alert(2)</script>")
    assert page.locator("article.user img, article.user b, article.user script").count() == 0
    assert dialogs == []


# -- attacks from other web pages --------------------------------------------------------


@pytest.fixture(scope="module")
def attacker_site() -> Iterator[Callable[[str], str]]:
    """Another origin (``http://evil.attacker.test:PORT``) serving a page the test gives:
    ``serve(html)`` returns its URL."""
    pages: dict[str, bytes] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            content = pages.get(self.path)
            self.send_response(200 if content is not None else 404)
            self.send_header("content-type", "text/html; charset=utf-8")
            self.end_headers()
            self.wfile.write(content or b"")

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()

    def serve(html: str) -> str:
        path = f"/page{len(pages)}.html"
        pages[path] = html.encode()
        return f"http://evil.attacker.test:{server.server_address[1]}{path}"

    try:
        yield serve
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


@pytest.fixture
def attacked(browser: Any) -> Iterator[Any]:
    """A page in a fresh context, without the console-error check: the attacks are
    meant to fail, and the browser reports their failures on the console."""
    context = browser.new_context()
    context.set_default_timeout(TIMEOUT_MS)
    try:
        yield context.new_page()
    finally:
        context.close()


def seed_two_events(collector: Collector) -> None:
    with sdk_for(collector) as sdk:
        sdk.track(EventPayload(event="signup", uuid="victim-user", attributes={"ip": "x"}))
        sdk.track(EventPayload(event="order_created", uuid="victim-user"))
    assert collector.store.stats()["events"] == 2


@pytest.mark.parametrize("enctype", ["application/x-www-form-urlencoded", "text/plain"])
def test_a_page_on_another_site_cannot_wipe_the_collector_with_a_form(
    attacked: Any, attacker_site: Callable[[str], str], collector: Collector, enctype: str
) -> None:
    seed_two_events(collector)
    url = attacker_site(f"""<!doctype html>
        <form id="f" method="POST" action="{collector.url}/api/reset" enctype="{enctype}">
          <input name='{{"x":"' value='"}}'></form>
        <script>document.getElementById("f").submit()</script>""")
    with attacked.expect_response(lambda r: r.url.endswith("/api/reset")) as answer:
        attacked.goto(url)
    assert answer.value.status == 403  # foreign Origin
    assert collector.store.stats()["events"] == 2


def test_a_page_on_another_site_cannot_wipe_the_collector_with_fetch(
    attacked: Any, attacker_site: Callable[[str], str], collector: Collector
) -> None:
    seed_two_events(collector)
    reset = f"{collector.url}/api/reset"
    url = attacker_site(f"""<!doctype html><script>
        const attempts = [
          // A "simple" request: no preflight, the response is opaque but it is sent.
          fetch("{reset}", {{method: "POST", mode: "no-cors", body: "{{}}"}}),
          fetch("{collector.url}/api/data", {{method: "DELETE"}}),
          fetch("{reset}", {{method: "POST", headers: {{"content-type": "application/json"}},
                              body: "{{}}"}}),
        ];
        window.attempted = Promise.allSettled(attempts).then(r => r.map(x => x.status));
        </script>""")
    attacked.goto(url)
    # The no-cors one goes out and is refused; the others never pass their preflight.
    assert attacked.evaluate("window.attempted") == ["fulfilled", "rejected", "rejected"]
    assert len(collector.store.calls()) == 2  # the two seeded ones, nothing else
    assert collector.store.stats()["events"] == 2


def test_a_rebound_name_cannot_read_the_collector(attacked: Any, collector: Collector) -> None:
    seed_two_events(collector)
    # After a DNS rebinding, the attacker's origin (rebind.attacker.test:PORT) points at
    # the collector: same origin, so its scripts could read every answer.
    rebound = f"http://rebind.attacker.test:{collector.port}"
    response = attacked.goto(f"{rebound}/")
    assert response.status == 400
    assert "victim-user" not in attacked.content()
    status, text = attacked.evaluate(
        "fetch('/api/users').then(async r => [r.status, await r.text()])"
    )
    assert status == 400
    assert "victim-user" not in text
    status, text = attacked.evaluate(
        "fetch('/api/events?limit=10').then(async r => [r.status, await r.text()])"
    )
    assert (status, "victim-user" in text) == (400, False)


def test_the_inspector_works_on_localhost_too(page: Any, collector: Collector) -> None:
    from playwright.sync_api import expect

    seed_two_events(collector)
    page.goto(f"http://localhost:{collector.port}/")
    expect(page.locator('article.user[data-uuid="victim-user"] li.event')).to_have_count(2)
