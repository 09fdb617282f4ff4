"""Whatever a client sends, the middleware neither raises nor emits over-long values."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("hypothesis")

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from atrack_core import ATrackSdk, Options
from atrack_core.testing import capture_calls
from atrack_integrations._lifecycle import is_canonical_uuid
from atrack_integrations.asgi import ATrackMiddleware
from tests.integrations.asgi_helpers import KNOWN, record_atrack_logs

INTERESTING = [
    b"cookie",
    b"referer",
    b"user-agent",
    b"accept-language",
    b"x-forwarded-for",
    b"forwarded",
    b"x-timezone",
    b"dnt",
    b"sec-gpc",
    b"host",
]
header_names = st.one_of(
    st.sampled_from(INTERESTING), st.binary(min_size=1, max_size=20).map(bytes.lower)
)
header_values = st.one_of(
    st.binary(max_size=300),
    st.binary(min_size=3000, max_size=5000).map(lambda b: b[:1] * len(b)),
    st.text(max_size=200).map(lambda s: s.encode("utf-8", "surrogatepass")),
    st.sampled_from(
        [
            f"atrack_uuid={KNOWN}".encode(),
            f"atrack_uuid={KNOWN}; atrack_uuid=evil; atrack_tz=Europe%2FParis".encode(),
            b'atrack_uuid="\\x00"; ;;=;atrack_uuid',
            b"1.2.3.4, 10.0.0.1, unknown, [::1]:80",
            b'for="[2001:db8::1]:4711";proto=https, for=10.0.0.1',
            b"en-US,en;q=0.9,*;q=0.1,xx-;q=nan",
        ]
    ),
)
CONTEXT_LIMITS = {
    "url": 2048,
    "referer": 2048,
    "ipAddress": 45,
    "userAgent": 512,
    "locale": 64,
    "timezone": 64,
}


def _limits_hold(context: dict[str, Any]) -> None:
    assert set(context) <= set(CONTEXT_LIMITS), context
    for key, value in context.items():
        assert isinstance(value, str)
        assert len(value) <= CONTEXT_LIMITS[key], (key, len(value))
        assert not any(ord(ch) < 0x20 or 0x7F <= ord(ch) < 0xA0 for ch in value), (key, value)


async def _app(scope: Any, receive: Any, send: Any) -> None:
    tracker = scope["state"]["atrack"]
    tracker.track("fuzzed")
    await send({"type": "http.response.start", "status": 200, "headers": [(b"x-app", b"1")]})
    await send({"type": "http.response.body", "body": b"ok"})


# The middlewares fuzzed, by their options (built by the fixture, not at import).
MIDDLEWARE_OPTIONS: list[dict[str, Any]] = [
    {},
    {"trusted_proxies": ["0.0.0.0/0", "::/0"], "ip": "anonymize"},
    {"respect_dnt": True, "init": "lazy", "cookie_domain": "shop.example"},
]


@pytest.fixture(scope="module")
def middlewares() -> Iterator[list[ATrackMiddleware]]:
    sdk = ATrackSdk(Options("pub_fuzz_1234", disabled=True))
    try:
        yield [ATrackMiddleware(_app, sdk=sdk, **options) for options in MIDDLEWARE_OPTIONS]
    finally:
        sdk.shutdown()


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    which=st.integers(0, len(MIDDLEWARE_OPTIONS) - 1),
    method=st.sampled_from(["GET", "POST", "HEAD", "OPTIONS", "PROPFIND", "get", ""]),
    scheme=st.sampled_from(["http", "https", "", "ws"]),
    path=st.text(max_size=3000),
    raw_path=st.one_of(st.none(), st.binary(max_size=3000)),
    query=st.binary(max_size=3000),
    headers=st.lists(st.tuples(header_names, header_values), max_size=12),
    client=st.one_of(
        st.none(),
        st.tuples(st.text(max_size=60), st.integers(0, 65535)),
        st.sampled_from([("10.0.0.1", 1), ("::1", 2), ("2001:db8::7", 3)]),
    ),
)
def test_anything_through_the_middleware(
    middlewares: list[ATrackMiddleware],
    which: int,
    method: str,
    scheme: str,
    path: str,
    raw_path: bytes | None,
    query: bytes,
    headers: list[tuple[bytes, bytes]],
    client: tuple[str, int] | None,
) -> None:
    scope: dict[str, Any] = {
        "type": "http",
        "method": method,
        "scheme": scheme,
        "path": path,
        "raw_path": raw_path,
        "query_string": query,
        "headers": headers,
        "client": client,
    }
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    with record_atrack_logs(), capture_calls() as calls:
        asyncio.run(middlewares[which](scope, receive, send))

    assert sent[1] == {"type": "http.response.body", "body": b"ok"}
    start_headers = sent[0]["headers"]
    assert start_headers[0] == (b"x-app", b"1")
    cookies = [v for k, v in start_headers if k == b"set-cookie"]
    assert len(cookies) <= 1
    for value in cookies:
        text = value.decode("ascii")
        name_value = text.split(";", 1)[0]
        assert name_value.startswith("atrack_uuid=")
        assert is_canonical_uuid(name_value.removeprefix("atrack_uuid="))
        assert len(text) < 200
    for call in calls:
        _limits_hold(call.body.get("context", {}))
        assert is_canonical_uuid(call.body["uuid"])
