"""Bounded attempts against hostile or broken APIs, in both delivery modes: a trickling
answer, an endless body, a huge error body, a ``Retry-After`` that is not a number, a
proxy from the environment, a transport that fails in an unexpected way."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping
from typing import Any

import pytest

import atrack_core._retry as retry
from atrack_core import ATrackError, ATrackSdk, Call, DeliveryError, Options
from atrack_core._transport import Connection, Endpoint, Response, Transport
from tests.fake_api import FakeApi, Plan
from tests.proxy import LoopbackProxy

KEY = "pub_live_bounds_5678"
pytestmark = pytest.mark.timeout(60)


@pytest.fixture(autouse=True)
def fast_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(retry, "BACKOFF_BASE", 0.005)


@pytest.fixture
def make(transport: str) -> Iterator[Any]:
    made: list[ATrackSdk] = []

    def build(url: str, **kwargs: Any) -> ATrackSdk:
        kwargs.setdefault("shutdown_timeout", 1.0)
        kwargs.setdefault("transport", transport)
        sdk = ATrackSdk(Options(KEY, endpoint=url, **kwargs))
        made.append(sdk)
        return sdk

    yield build
    for sdk in made:
        sdk.shutdown(timeout=0.5)


# -- timeout bounds one whole attempt ------------------------------------------------


def test_a_trickling_answer_is_cut_at_the_timeout_in_sync_mode(
    fake_api: FakeApi, make: Any
) -> None:
    # One byte every 0.2 s: each read is quick, the whole answer would take ~8 s.
    fake_api.default = Plan(200, trickle=0.2)
    sdk = make(fake_api.url, delivery="sync", timeout=1.0, max_retries=0)
    start = time.monotonic()
    with pytest.raises(DeliveryError) as info:
        sdk.track("e", uuid="u")
    elapsed = time.monotonic() - start
    # The promise: timeout bounds the whole attempt (the answer would take ~8 s; a
    # per-read timeout never fires). Up to five times the 1 s, for a loaded machine.
    assert elapsed < 5.0, f"a 1 s timeout ended the attempt after {elapsed:.2f} s"
    assert info.value.status is None
    assert "Timeout" in str(info.value)
    assert 1 <= fake_api.bytes_written < 20


def test_a_trickling_answer_is_cut_at_the_timeout_in_the_background(
    fake_api: FakeApi, make: Any
) -> None:
    fake_api.plan("/event", Plan(200, trickle=0.2))
    sdk = make(fake_api.url, timeout=1.0)
    sdk.track("e", uuid="u")
    # The whole answer would take ~8 s: flushed within 6 s, the attempt was cut.
    assert sdk.flush(6) is True
    assert len(fake_api.received) == 2  # cut, then retried and answered at once
    assert sdk.stats()["retried"] == 1 and sdk.stats()["sent"] == 1


@pytest.mark.parametrize("status", [200, 500])
def test_an_endless_chunked_body_does_not_hold_a_sender(
    fake_api: FakeApi, make: Any, status: int
) -> None:
    fake_api.plan("/event", Plan(status, endless=0.05))
    sdk = make(fake_api.url, timeout=1.0, max_retries=1)
    sdk.track("e", uuid="u")
    # The body never ends: flushed at all, the attempt was cut at its timeout.
    assert sdk.flush(6) is True
    # The status decides: a 200 is delivered; a 500 is retried (then answered 200).
    assert sdk.stats()["sent"] == 1
    assert len(fake_api.received) == (1 if status == 200 else 2)


@pytest.mark.parametrize("delivery", ["background", "sync"])
def test_a_success_whose_body_is_cut_short_is_delivered_once(
    fake_api: FakeApi, make: Any, delivery: str
) -> None:
    # The status decides, as for a body cut by the timeout: the API answered 200, so
    # the call is delivered. libcurl ends such a transfer with error 18 (partial
    # file), which was taken for a network failure: the call was sent again and, the
    # answer cut the same way each time, reported dropped although the API had it.
    errors: list[BaseException] = []
    fake_api.default = Plan(200, cut=100)
    sdk = make(
        fake_api.url,
        delivery=delivery,
        max_retries=2,
        on_error=lambda call, exc: errors.append(exc),
    )
    sdk.track("e", uuid="u")
    assert sdk.flush(10) is True
    assert [r.status for r in fake_api.received] == [200]
    assert (sdk.stats()["sent"], sdk.stats()["failed"], sdk.stats()["retried"]) == (1, 0, 0)
    assert errors == []


@pytest.mark.parametrize("delivery", ["background", "sync"])
def test_an_answer_that_is_no_http_is_retried(fake_api: FakeApi, make: Any, delivery: str) -> None:
    # A broken middlebox answering garbage is a protocol error, retried like a dropped
    # connection. libcurl reports it as "unsupported protocol" (error 1, "Received
    # HTTP/0.9 when not allowed"), which the curl transport took for a bad URL and
    # dropped the call at once, where httpx retried it.
    fake_api.plan("/event", Plan(garbage=True))
    sdk = make(fake_api.url, delivery=delivery, max_retries=2)
    sdk.track("e", uuid="u")
    assert sdk.flush(10) is True
    assert [r.status for r in fake_api.received] == [0, 200]
    assert (sdk.stats()["sent"], sdk.stats()["failed"], sdk.stats()["retried"]) == (1, 0, 1)


def test_an_endless_body_in_sync_mode_returns_on_time(fake_api: FakeApi, make: Any) -> None:
    fake_api.default = Plan(503, endless=0.05)
    sdk = make(fake_api.url, delivery="sync", timeout=0.5, max_retries=1)
    start = time.monotonic()
    with pytest.raises(DeliveryError) as info:
        sdk.track("e", uuid="u")
    elapsed = time.monotonic() - start
    # The promise: two attempts of at most timeout (0.5 s) each; the body never ends,
    # so without the bound track() would not return. Five times that allowed.
    assert elapsed < 5.0, f"two 0.5 s attempts took {elapsed:.2f} s"
    assert info.value.status == 503


def test_at_most_64_kib_of_an_error_body_is_read(fake_api: FakeApi, make: Any) -> None:
    errors: list[BaseException] = []
    fake_api.plan("/event", Plan(500, body_size=300 * 1024 * 1024))
    sdk = make(fake_api.url, max_retries=0, on_error=lambda call, exc: errors.append(exc))
    sdk.track("e", uuid="u")
    assert sdk.flush(10) is True
    [error] = errors
    assert isinstance(error, DeliveryError) and error.status == 500
    assert error.body is not None and 0 < len(error.body) <= 500
    # The client hung up after 64 KiB: what the server got out is that plus the kernel's
    # socket buffers, nowhere near the 300 MiB.
    assert fake_api.bytes_written < 32 * 1024 * 1024, fake_api.bytes_written


# -- Retry-After never raises ----------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2", 2.0),
        (" 7 ", 7.0),
        ("9" * 400, 60.0),
        ("3600", 60.0),
        ("²", None),
        ("١٢", None),  # Arabic-Indic digits: isdigit() yes, ASCII no
        ("1.5", None),
        ("-1", None),
        ("soon", None),
        ("Wed, 99 Foo 2026 99:99:99 GMT", None),
        ("Mon, 01 Jan 0001 00:00:00 GMT", 0.0),
        ("\x00", None),
        ("", None),
    ],
)
def test_retry_after_parsing_never_raises(value: str, expected: float | None) -> None:
    assert retry.parse_retry_after(value, now=time.time()) == expected


def test_a_non_ascii_digit_retry_after_falls_back_to_the_backoff(
    fake_api: FakeApi, make: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="atrack")
    fake_api.plan("/event", Plan(503, retry_after="²"), Plan(429, retry_after="²"))
    background = make(fake_api.url)
    background.track("e", uuid="u")
    assert background.flush(5) is True
    assert background.stats()["sent"] == 1 and background.stats()["retried"] == 2
    fake_api.plan("/event", Plan(503, retry_after="²"))
    sync = make(fake_api.url, delivery="sync")
    sync.track("e", uuid="u")  # retried, delivered, no ValueError
    assert sync.stats()["sent"] == 1
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


# -- sync mode raises only ATrackError ---------------------------------------------------


class _Broken(Connection):
    def request(self, path: str, headers: Mapping[str, str], body: bytes) -> Response:
        raise RuntimeError("a bug in a transport")


class BrokenTransport(Transport):
    def connection(self, endpoint: Endpoint) -> Connection:
        return _Broken()


def test_sync_mode_turns_any_failure_into_an_atrack_error() -> None:
    seen: list[tuple[Call, BaseException]] = []
    with ATrackSdk(
        Options(
            KEY,
            endpoint="http://127.0.0.1:9",
            delivery="sync",
            transport=BrokenTransport(),
            on_error=lambda call, exc: seen.append((call, exc)),
        )
    ) as sdk:
        with pytest.raises(ATrackError) as info:
            sdk.track("e", uuid="u")
        assert sdk.stats()["failed"] == 1
    assert isinstance(info.value, DeliveryError)
    assert "a bug in a transport" in str(info.value)
    assert [call.uuid for call, _ in seen] == ["u"]


def test_background_mode_survives_a_broken_transport() -> None:
    seen: list[BaseException] = []
    with ATrackSdk(
        Options(
            KEY,
            endpoint="http://127.0.0.1:9",
            transport=BrokenTransport(),
            on_error=lambda call, exc: seen.append(exc),
        )
    ) as sdk:
        sdk.track("e", uuid="u")
        assert sdk.flush(5) is True
        assert sdk.stats()["failed"] == 1
    assert isinstance(seen[0], DeliveryError)


# -- an error text that echoes the key ------------------------------------------------


@pytest.mark.parametrize("status", [401, 400, 503])
def test_a_key_echoed_in_an_error_body_never_reaches_the_caller_in_clear(
    fake_api: FakeApi, make: Any, caplog: pytest.LogCaptureFixture, status: int
) -> None:
    echo = f'{{"error": "key {KEY} is not valid here"}}'
    fake_api.default = Plan(status, text=echo)
    seen: list[BaseException] = []
    caplog.set_level(logging.DEBUG, logger="atrack")

    sync = make(fake_api.url, delivery="sync", max_retries=0)
    with pytest.raises(DeliveryError) as info:
        sync.track("e", uuid="u")
    assert info.value.status == status
    assert info.value.body == '{"error": "key …5678 is not valid here"}'

    background = make(fake_api.url, max_retries=0, on_error=lambda c, e: seen.append(e))
    background.track("e", uuid="u")
    assert background.flush(5) is True
    [error] = seen
    assert isinstance(error, DeliveryError)
    assert error.body == '{"error": "key …5678 is not valid here"}'
    assert KEY not in caplog.text


# -- proxies from the environment -----------------------------------------------------


@pytest.mark.parametrize("delivery", ["background", "sync"])
def test_both_modes_go_through_the_proxy_from_the_environment(
    fake_api: FakeApi, make: Any, monkeypatch: pytest.MonkeyPatch, delivery: str
) -> None:
    with LoopbackProxy() as proxy:
        for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy", "HTTPS_PROXY"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        monkeypatch.setenv("http_proxy", proxy.url)
        sdk = make(fake_api.url, delivery=delivery)
        sdk.track("via-proxy", uuid="u")
        assert sdk.flush(5) is True
        assert proxy.forwarded == [fake_api.url + "/event"]
        assert [b["event"] for b in fake_api.bodies()] == ["via-proxy"]

        # NO_PROXY naming the host: straight to the API.
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        monkeypatch.setenv("no_proxy", "127.0.0.1")
        direct = make(fake_api.url, delivery=delivery)
        direct.track("direct", uuid="u")
        assert direct.flush(5) is True
        assert len(proxy.forwarded) == 1
        assert [b["event"] for b in fake_api.bodies()] == ["via-proxy", "direct"]


@pytest.mark.parametrize("delivery", ["background", "sync"])
def test_a_proxy_on_another_host_is_not_used_for_a_loopback_endpoint(
    fake_api: FakeApi, make: Any, monkeypatch: pytest.MonkeyPatch, delivery: str
) -> None:
    # A proxy elsewhere would reach its own loopback, and a plain http:// call would
    # carry the key to it in clear text: the local collector is reached directly.
    # (198.51.100.1 is TEST-NET-2: were it used, the call would time out.)
    for name in ("NO_PROXY", "no_proxy", "HTTPS_PROXY", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.setenv(name, "http://198.51.100.1:3128")
    sdk = make(fake_api.url, delivery=delivery, timeout=1.0, max_retries=0)
    sdk.track("direct", uuid="u")
    assert sdk.flush(5) is True
    assert sdk.stats()["sent"] == 1
    assert [b["event"] for b in fake_api.bodies()] == ["direct"]


def test_all_proxy_is_used_when_no_scheme_proxy_is_set(
    fake_api: FakeApi, make: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    with LoopbackProxy() as proxy:
        for name in ("NO_PROXY", "no_proxy", "HTTP_PROXY", "http_proxy", "HTTPS_PROXY"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("ALL_PROXY", proxy.url)
        sdk = make(fake_api.url, delivery="sync")
        sdk.track("e", uuid="u")
        assert proxy.forwarded == [fake_api.url + "/event"]
