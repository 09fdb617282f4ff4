"""No web page can wipe the collector (CSRF) or read it through a name of its own (DNS
rebinding): raw ``Host`` and ``Origin`` headers over loopback, and what must keep working
(the SDK, the page's own requests, the CLI). The same attacks in a real browser are in
``test_inspector_browser.py``."""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator

import httpx
import pytest

from atrack_core import ATrackSdk, Options
from atrack_core.collector import Collector, run_in_thread

from .conftest import KEY, body, post


@pytest.fixture
def seeded(collector: Collector, client: httpx.Client) -> Collector:
    """The collector with two events in it (what a CSRF reset would wipe)."""
    for _ in range(2):
        assert post(client, "/event", body("/event")).status_code == 200
    assert collector.store.stats()["events"] == 2
    return collector


def events(collector: Collector) -> int:
    return int(collector.store.stats()["events"])


# -- CSRF: state-changing endpoints ----------------------------------------------------


@pytest.mark.parametrize(
    "content_type",
    [
        None,
        # The three types an HTML form (or a no-cors fetch) can send without a preflight.
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "text/plain",
    ],
)
def test_reset_needs_a_json_content_type(
    seeded: Collector, client: httpx.Client, content_type: str | None
) -> None:
    headers = {} if content_type is None else {"content-type": content_type}
    response = client.post("/api/reset", content=b"{}", headers=headers)
    assert response.status_code == 415
    assert "application/json" in response.json()["error"]
    assert events(seeded) == 2


@pytest.mark.parametrize(
    "origin",
    [
        "http://evil.example",
        "https://evil.example",
        "http://127.0.0.1:1",  # same host, another port: another origin
        "http://localhost",
        "null",  # sandboxed frames and file:// pages
        "not an origin",
    ],
)
def test_state_changing_calls_from_a_foreign_origin_are_refused(
    seeded: Collector, client: httpx.Client, origin: str
) -> None:
    headers = {"origin": origin, "content-type": "application/json"}
    reset = client.post("/api/reset", json={}, headers=headers)
    assert reset.status_code == 403
    assert "origin" in reset.json()["error"].lower()
    assert client.delete("/api/data", headers={"origin": origin}).status_code == 403
    ingest = client.post("/event", json=body("/event"), headers={"x-a-track-key": KEY, **headers})
    assert ingest.status_code == 403
    assert events(seeded) == 2


def test_reset_from_the_collectors_own_origin_works(
    seeded: Collector, client: httpx.Client
) -> None:
    own = f"http://127.0.0.1:{seeded.port}"
    response = client.post("/api/reset", json={}, headers={"origin": own})
    assert (response.status_code, response.json()) == (200, {"ok": True})
    assert events(seeded) == 0


def test_reset_without_an_origin_works(seeded: Collector, client: httpx.Client) -> None:
    # curl, scripts and tests send no Origin; only browsers do, and they always do on POST.
    assert client.post("/api/reset", json={}).json() == {"ok": True}
    assert events(seeded) == 0
    post(client, "/event", body("/event"))
    assert client.delete("/api/data").json() == {"ok": True}
    assert events(seeded) == 0


def test_refused_requests_are_logged(
    seeded: Collector, client: httpx.Client, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG, logger="atrack.collector"):
        for _ in range(3):  # a polling page: one warning, then debug lines
            client.post("/api/reset", json={}, headers={"origin": "http://logged.example"})
            client.get("/api/users", headers={"host": "rebind.logged.example"})
    records = [r for r in caplog.records if r.name == "atrack.collector"]
    warnings = [r.getMessage() for r in records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert "POST /api/reset" in warnings[0] and "http://logged.example" in warnings[0]
    assert "GET /api/users" in warnings[1] and "rebind.logged.example" in warnings[1]
    assert len(records) == 6


# -- DNS rebinding: the Host header ----------------------------------------------------


@pytest.mark.parametrize(
    "path", ["/", "/static/app.js", "/api/users", "/api/events", "/api/calls", "/api/stats"]
)
@pytest.mark.parametrize(
    "host", ["rebind.evil.example", "rebind.evil.example:8787", "foo.localhost"]
)
def test_reads_through_a_foreign_host_name_are_refused(
    seeded: Collector, client: httpx.Client, path: str, host: str
) -> None:
    response = client.get(path, headers={"host": host})
    assert response.status_code == 400
    assert "host" in response.json()["error"].lower()
    assert "user-1" not in response.text


def test_writes_through_a_foreign_host_name_are_refused(
    seeded: Collector, client: httpx.Client
) -> None:
    host = {"host": "rebind.evil.example"}
    assert client.post("/api/reset", json={}, headers=host).status_code == 400
    assert post(client, "/event", body("/event", uuid="intruder")).status_code == 200
    refused = client.post("/event", json=body("/event"), headers={"x-a-track-key": KEY, **host})
    assert refused.status_code == 400
    assert events(seeded) == 3


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1",
        "127.0.0.1:{port}",
        "127.8.9.10:{port}",
        "localhost:{port}",
        "LOCALHOST:{port}",
        "[::1]:{port}",
    ],
)
def test_loopback_host_names_are_accepted(
    seeded: Collector, client: httpx.Client, host: str
) -> None:
    response = client.get("/api/users", headers={"host": host.format(port=seeded.port)})
    assert response.status_code == 200
    assert response.json()["users"][0]["uuid"] == "user-1"


def raw_request(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_raw_requests_with_forged_headers(seeded: Collector) -> None:
    port = seeded.port
    # What a DNS-rebinding page's fetch('/api/users') puts on the wire.
    rebound = raw_request(
        port,
        b"GET /api/users HTTP/1.1\r\nHost: rebind.evil.example:%d\r\nConnection: close\r\n\r\n"
        % port,
    )
    assert rebound.startswith(b"HTTP/1.1 400 ")
    assert b"user-1" not in rebound
    # What an auto-submitting form on another site puts on the wire.
    form = raw_request(
        port,
        b"POST /api/reset HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nOrigin: http://evil.example\r\n"
        b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 3\r\n"
        b"Connection: close\r\n\r\na=1" % port,
    )
    assert form.startswith(b"HTTP/1.1 403 ")
    # An HTTP/1.0 client without a Host header is no browser: nothing to refuse.
    plain = raw_request(port, b"GET /api/stats HTTP/1.0\r\n\r\n")
    assert plain.startswith(b"HTTP/1.1 200 ")
    assert events(seeded) == 2


def test_the_host_given_and_extra_names_are_accepted() -> None:
    with (
        run_in_thread(allowed_hosts=["collector.internal"]) as running,
        httpx.Client(base_url=running.url) as http,
    ):
        assert http.get("/api/stats", headers={"host": "collector.internal:9"}).status_code == 200
        assert http.get("/api/stats", headers={"host": "other.internal"}).status_code == 400
    with run_in_thread(host="localhost") as running, httpx.Client(base_url=running.url) as http:
        assert http.get("/api/stats").status_code == 200


# -- what must keep working ------------------------------------------------------------


@pytest.mark.parametrize("base", ["http://127.0.0.1:{port}", "http://localhost:{port}"])
def test_the_sdk_still_delivers(collector: Collector, base: str) -> None:
    endpoint = base.format(port=collector.port)
    with ATrackSdk(Options(KEY, endpoint=endpoint, delivery="sync")) as sdk:
        sdk.init()
        sdk.track("signup")
    assert [c["status"] for c in collector.store.calls()] == [200, 200]


@pytest.fixture
def collector_on_ipv6() -> Iterator[Collector]:
    try:
        with run_in_thread(host="::1") as running:
            yield running
    except OSError:  # pragma: no cover - a machine without IPv6 loopback
        pytest.skip("no IPv6 loopback")


def test_the_sdk_still_delivers_over_ipv6(collector_on_ipv6: Collector) -> None:
    with ATrackSdk(Options(KEY, endpoint=collector_on_ipv6.url, delivery="sync")) as sdk:
        sdk.track("signup", uuid="u6")
    assert collector_on_ipv6.store.events()[0]["uuid"] == "u6"
