"""The real SDK against the real collector over loopback: what users see end to end."""

from __future__ import annotations

import json
import re
import threading

import httpx
import pytest

from atrack_core import (
    ATrackSdk,
    EventPayload,
    InitPayload,
    KeyRejectedError,
    Options,
)
from atrack_core.collector import Collector, run_in_thread

from .conftest import KEY, OTHER_KEY, body

UUID4 = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")
TIMESTAMP = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z")


def test_background_sdk_lifecycle(collector: Collector) -> None:
    with ATrackSdk(Options(KEY, endpoint=collector.url)) as sdk:
        result = sdk.init(InitPayload(attributes={"plan": "free", "seats": 1}))
        sdk.set_attributes({"plan": "pro"})
        sdk.track("order_created", {"amount": 12})
        sdk.track(EventPayload(event="checkout", attributes={"total": 99}))
        assert sdk.flush(10) is True
        assert result.is_new_user is True
        [user] = collector.store.users()
        assert user["uuid"] == result.uuid
        assert UUID4.fullmatch(user["uuid"])
        assert user["is_new_user"] is True
        assert user["attributes"] == {"plan": "pro", "seats": 1}
        sdk.set_attributes({"plan": "business"}, True)
        assert sdk.flush(10) is True
    assert collector.store.users()[0]["attributes"] == {"plan": "business"}
    events = collector.store.events(uuid=result.uuid)
    # One user's events go out concurrently: the collector may store them in any order.
    assert sorted(e["event"] for e in events) == ["checkout", "order_created"]
    for event in events:
        assert TIMESTAMP.fullmatch(event["timestamp"])
        assert UUID4.fullmatch(event["request_id"])
    calls = collector.store.calls()
    assert [c["path"] for c in calls] == ["/init", "/attributes", "/event", "/event", "/attributes"]
    assert all(c["status"] == 200 for c in calls)


def test_per_user_order_holds_under_latency() -> None:
    # /init first, /attributes after the calls made before it and before the calls
    # made after it; events between two of those in any order.
    with run_in_thread(latency=0.02) as slow:
        with ATrackSdk(Options(KEY, endpoint=slow.url)) as sdk:
            for user in range(8):
                sdk.send_init(f"user-{user}", True)
            for step in range(5):
                for user in range(8):
                    sdk.track(EventPayload(event=f"step-{step}", uuid=f"user-{user}"))
                    if step == 1:
                        sdk.send_attributes(f"user-{user}", {"after": 1})
            assert sdk.flush(30) is True
        calls = slow.store.calls()
        assert len(calls) == 8 * 7
        for user in range(8):
            mine = [c for c in calls if c["uuid"] == f"user-{user}"]
            paths = [c["path"] for c in mine]
            assert paths[0] == "/init"
            steps = [
                int(json.loads(c["body"])["event"].removeprefix("step-"))
                for c in mine
                if c["path"] == "/event"
            ]
            assert sorted(steps[:2]) == [0, 1]
            assert sorted(steps[2:]) == [2, 3, 4]
            assert paths.index("/attributes") == 3


def test_sync_sdk_with_a_rejected_key_raises_with_status_and_body() -> None:
    with run_in_thread(keys=[KEY]) as strict:
        sdk = ATrackSdk(Options(OTHER_KEY, endpoint=strict.url, delivery="sync", max_retries=0))
        try:
            with pytest.raises(KeyRejectedError) as error:
                sdk.track("signup", uuid="u")
        finally:
            sdk.shutdown()
        assert error.value.status == 401
        assert error.value.body is not None
        assert "not accepted by this collector" in error.value.body
        assert strict.store.events() == []


def test_concurrent_clients_lose_nothing(collector: Collector) -> None:
    threads, per_thread = 8, 60
    failures: list[str] = []

    def send(worker: int) -> None:
        with httpx.Client(base_url=collector.url) as http:
            for i in range(per_thread):
                response = http.post(
                    "/event",
                    json=body("/event", uuid=f"w{worker}", event=f"e{i}"),
                    headers={"x-a-track-key": KEY, "x-a-track-request-id": f"{worker}-{i}"},
                )
                if response.status_code != 200:
                    failures.append(response.text)

    workers = [threading.Thread(target=send, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    assert failures == []
    stats = collector.store.stats()
    assert (stats["events"], stats["calls"], stats["users"]) == (
        threads * per_thread,
        threads * per_thread,
        threads,
    )
    for n in range(threads):
        mine = collector.store.events(uuid=f"w{n}", limit=1000)
        assert [e["event"] for e in reversed(mine)] == [f"e{i}" for i in range(per_thread)]
