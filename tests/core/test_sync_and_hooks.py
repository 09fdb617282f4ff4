"""Sync delivery errors, before_send, on_error, the key-rejected log line, and the
testing helper, against the loopback fake API."""

from __future__ import annotations

import logging
import sys
import threading
from typing import Any

import pytest

from atrack_core import (
    ATrackError,
    ATrackSdk,
    Call,
    DeliveryError,
    KeyRejectedError,
    Options,
)
from atrack_core.testing import CapturedCalls, capture_calls
from tests.fake_api import FakeApi, Plan, closed_port_url

KEY = "pub_live_abcdefgh_1234"


@pytest.fixture(autouse=True)
def fast_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    import atrack_core._retry as retry

    monkeypatch.setattr(retry, "BACKOFF_BASE", 0.001)


_transport = {"name": "httpx"}


@pytest.fixture(autouse=True)
def each_transport(transport: str) -> None:
    # Every test here runs against both transports (the conftest's parameter).
    _transport["name"] = transport


def sync_sdk(url: str, **kwargs: Any) -> ATrackSdk:
    options = Options(KEY, endpoint=url, delivery="sync", transport=_transport["name"], **kwargs)
    return ATrackSdk(options)


@pytest.mark.parametrize("status", [400, 404, 413, 422])
def test_sync_mode_raises_with_the_status_and_does_not_retry(
    fake_api: FakeApi, status: int
) -> None:
    fake_api.plan("/event", status)
    with sync_sdk(fake_api.url) as sdk:
        with pytest.raises(DeliveryError) as info:
            sdk.track("e", uuid="u")
        assert sdk.stats()["failed"] == 1
    assert info.value.status == status
    assert isinstance(info.value, ATrackError)
    assert len(fake_api.received) == 1


def test_sync_mode_retries_then_succeeds_with_one_request_id(fake_api: FakeApi) -> None:
    fake_api.plan("/event", 503, Plan(429, retry_after="0"), Plan(drop=True))
    with sync_sdk(fake_api.url) as sdk:
        sdk.track("e", uuid="u")
        stats = sdk.stats()
    assert len(fake_api.received) == 4
    assert len({r.headers["x-a-track-request-id"] for r in fake_api.received}) == 1
    # libcurl resends, once and on its own, a request whose reused keep-alive
    # connection closed without any answer, where httpx reports an error the engine
    # retries: same request id either way, and counted as a retry either way.
    assert (stats["sent"], stats["retried"], stats["failed"]) == (1, 3, 0)


def test_sync_mode_gives_up_after_max_retries(fake_api: FakeApi) -> None:
    fake_api.default_status = 500
    with sync_sdk(fake_api.url, max_retries=2) as sdk, pytest.raises(DeliveryError) as info:
        sdk.track("e", uuid="u")
    assert info.value.status == 500
    assert len(fake_api.received) == 3  # the first attempt and two retries


def test_sync_mode_connection_refused_has_no_status() -> None:
    with sync_sdk(closed_port_url(), max_retries=1) as sdk, pytest.raises(DeliveryError) as info:
        sdk.track("e", uuid="u")
    assert info.value.status is None
    assert "ConnectError" in str(info.value)


@pytest.mark.parametrize("status", [401, 403])
def test_rejected_key_logged_once_at_error_with_last_four_only(
    fake_api: FakeApi, caplog: pytest.LogCaptureFixture, status: int
) -> None:
    fake_api.default_status = status
    caplog.set_level(logging.DEBUG, logger="atrack")
    with sync_sdk(fake_api.url) as sdk:
        for _ in range(3):
            with pytest.raises(KeyRejectedError) as info:
                sdk.track("e", uuid="u")
            assert info.value.status == status
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert "1234" in errors[0].getMessage()
    for record in caplog.records:
        assert "abcdefgh" not in record.getMessage()
    assert len(fake_api.received) == 3  # never retried


def test_on_error_receives_the_call_and_the_exception(fake_api: FakeApi) -> None:
    seen: list[tuple[Call, BaseException]] = []
    fake_api.plan("/event", 422)
    sdk = sync_sdk(fake_api.url, on_error=lambda call, exc: seen.append((call, exc)))
    with sdk, pytest.raises(DeliveryError):
        sdk.track("e", {"a": 1}, uuid="u-9")
    ((call, exc),) = seen
    assert call.path == "/event" and call.uuid == "u-9"
    assert call.json()["attributes"] == {"a": 1}
    assert isinstance(exc, DeliveryError) and exc.status == 422


def test_a_failing_on_error_hook_is_logged_not_raised(
    fake_api: FakeApi, caplog: pytest.LogCaptureFixture
) -> None:
    def hook(call: Call, exc: BaseException) -> None:
        raise RuntimeError("hook bug")

    fake_api.plan("/event", 400)
    with sync_sdk(fake_api.url, on_error=hook) as sdk, pytest.raises(DeliveryError):
        sdk.track("e", uuid="u")
    assert any("on_error hook raised" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("method", ["flush", "shutdown"])
def test_flush_or_shutdown_from_on_error_returns(fake_api: FakeApi, method: str) -> None:
    # on_error runs in a delivery thread, and its call counts as not done until the
    # hook returns: flush(None) there waited for itself for ever (that sender stalled,
    # libcurl's only one included), shutdown() waited its whole timeout and then raised
    # RuntimeError ("cannot join current thread") into the hook.
    returned = threading.Event()
    outcome: list[object] = []

    def hook(call: Call, exc: BaseException) -> None:
        try:
            outcome.append(sdk.flush(None) if method == "flush" else sdk.shutdown())
        except Exception as error:
            outcome.append(error)
        returned.set()

    fake_api.plan("/event", 400)
    options = Options(KEY, endpoint=fake_api.url, transport=_transport["name"], on_error=hook)
    with ATrackSdk(options) as sdk:
        sdk.track("e", uuid="u")
        assert returned.wait(30), f"{method}() inside on_error did not return"
        assert outcome == ([False] if method == "flush" else [None])
        sdk.track("after", uuid="u")  # delivered by the flush below, or dropped once shut
        assert sdk.flush(10) is True
    received = [r.body["event"] for r in fake_api.received]
    assert received == (["e", "after"] if method == "flush" else ["e"])


def test_an_on_error_hook_that_exits_does_not_end_delivery(
    fake_api: FakeApi, caplog: pytest.LogCaptureFixture
) -> None:
    # A hook meant to stop the app on a failure: in a delivery thread sys.exit() only
    # ended that thread, with the libcurl transport the only sender: its call never
    # settled and nothing was delivered any more.
    seen: list[str] = []

    def hook(call: Call, exc: BaseException) -> None:
        seen.append(call.uuid)
        sys.exit(1)

    fake_api.plan("/event", 400)
    options = Options(KEY, endpoint=fake_api.url, transport=_transport["name"], on_error=hook)
    with ATrackSdk(options) as sdk:
        sdk.track("e", uuid="first")
        assert sdk.flush(10) is True
        sdk.track("e", uuid="second")
        assert sdk.flush(10) is True
    assert seen == ["first"]
    assert [(r.body["uuid"], r.status) for r in fake_api.received] == [
        ("first", 400),
        ("second", 200),
    ]
    assert any("raised in a delivery thread" in r.getMessage() for r in caplog.records)
    # In the caller's thread (sync mode) it is the caller's, as always.
    fake_api.plan("/event", 400)
    with sync_sdk(fake_api.url, on_error=hook) as sdk, pytest.raises(SystemExit):
        sdk.track("e", uuid="third")


def test_before_send_can_scrub_filter_and_fail(
    fake_api: FakeApi, caplog: pytest.LogCaptureFixture
) -> None:
    def before_send(path: str, body: dict[str, Any]) -> dict[str, Any] | None:
        if body.get("uuid") == "internal":
            return None
        if body.get("event") == "boom":
            raise RuntimeError("scrubber bug")
        body["attributes"].pop("email", None)
        body["attributes"]["path"] = path
        return body

    with sync_sdk(fake_api.url, before_send=before_send) as sdk:
        sdk.track("signup", {"email": "a@b.c", "plan": "pro"}, uuid="u")
        sdk.track("signup", uuid="internal")
        sdk.track("boom", uuid="u")  # logged, dropped, not raised
        sdk.track("after", uuid="u")
        stats = sdk.stats()
    assert [b["event"] for b in fake_api.bodies("/event")] == ["signup", "after"]
    assert fake_api.bodies("/event")[0]["attributes"] == {"plan": "pro", "path": "/event"}
    assert stats["filtered"] == 1 and stats["failed"] == 1
    assert any("before_send failed" in r.getMessage() for r in caplog.records)


def test_before_send_returning_garbage_drops_that_call_only(fake_api: FakeApi) -> None:
    with sync_sdk(fake_api.url, before_send=lambda p, b: "nope") as sdk:  # type: ignore[arg-type,return-value]
        sdk.track("e", uuid="u")
    assert fake_api.received == []


def test_background_mode_delivers_and_flushes(fake_api: FakeApi) -> None:
    with ATrackSdk(Options(KEY, endpoint=fake_api.url, transport=_transport["name"])) as sdk:
        sdk.init()
        for i in range(20):
            sdk.track("e", {"i": i})
        assert sdk.flush(timeout=10) is True
        stats = sdk.stats()
    # Events wait for the user's /init, not for each other.
    assert fake_api.received[0].path == "/init"
    assert sorted(b["attributes"]["i"] for b in fake_api.bodies("/event")) == list(range(20))
    assert stats["sent"] == 21 and stats["queued"] == 0 and stats["in_flight"] == 0


def test_capture_calls_records_without_network() -> None:
    # An endpoint that refuses connections: nothing may be attempted while capturing.
    with (
        ATrackSdk(Options(KEY, endpoint=closed_port_url(), delivery="sync")) as sdk,
        capture_calls() as calls,
    ):
        result = sdk.init()
        sdk.set_attributes({"plan": "pro"})
        sdk.track("order_created", {"amount": 12})
        with pytest.raises(ValueError):
            sdk.track("")  # same validation as a real send
        assert sdk.stats()["failed"] == 0
    assert [c.path for c in calls] == ["/init", "/attributes", "/event"]
    assert calls.inits[0]["uuid"] == result.uuid
    assert calls.attributes[0]["attributes"] == {"plan": "pro"}
    assert calls.event_names() == ["order_created"]
    calls.clear()
    assert len(calls) == 0


def test_pytest_fixture_is_registered(atrack_calls: CapturedCalls) -> None:
    with ATrackSdk(Options(KEY, disabled=True)) as sdk:
        sdk.track("from_fixture", uuid="u")
    assert atrack_calls.event_names() == ["from_fixture"]


def test_capture_ends_with_the_block() -> None:
    with capture_calls() as calls:
        pass
    with ATrackSdk(Options(KEY, disabled=True)) as sdk:
        sdk.track("after", uuid="u")
    assert len(calls) == 0
