"""What the collector keeps: users, attributes by mode, events, the call log, restarts."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import httpx
import pytest

from atrack_core.collector import Collector, Store, key_id, run_in_thread
from tests.pause import WAIT

from .conftest import KEY, OTHER_KEY, body, post


def test_init_creates_the_user_with_context(client: httpx.Client, collector: Collector) -> None:
    assert post(client, "/init", body("/init", profile={"name": "Ada"})).status_code == 200
    [user] = collector.store.users()
    assert user["uuid"] == "user-1"
    assert user["key_id"] == key_id(KEY)
    assert user["attributes"] == {"plan": "free"}
    assert user["profile"] == {"name": "Ada"}
    assert user["context"] == {"url": "/pricing?source=google", "locale": "en-US"}
    assert user["is_new_user"] is True
    assert user["first_seen"] == user["last_seen"]
    assert user["event_count"] == 0


def test_merge_keeps_other_attributes(client: httpx.Client, collector: Collector) -> None:
    post(client, "/init", body("/init", attributes={"plan": "free", "seats": 1}))
    post(client, "/attributes", body("/attributes", attributes={"plan": "pro", "team": "a"}))
    [user] = collector.store.users()
    assert user["attributes"] == {"plan": "pro", "seats": 1, "team": "a"}


def test_merge_is_shallow(client: httpx.Client, collector: Collector) -> None:
    post(client, "/init", body("/init", attributes={"address": {"city": "Berlin", "zip": "10115"}}))
    post(client, "/attributes", body("/attributes", attributes={"address": {"city": "Paris"}}))
    assert collector.store.users()[0]["attributes"] == {"address": {"city": "Paris"}}


def test_replace_drops_other_attributes(client: httpx.Client, collector: Collector) -> None:
    post(client, "/init", body("/init", attributes={"plan": "free", "seats": 1}))
    post(
        client,
        "/attributes",
        body("/attributes", mode="replace", attributes={"plan": "business"}, profile={"p": 1}),
    )
    [user] = collector.store.users()
    assert user["attributes"] == {"plan": "business"}
    assert user["profile"] == {"p": 1}


def test_init_with_replace_resets_attributes(client: httpx.Client, collector: Collector) -> None:
    post(client, "/init", body("/init", attributes={"a": 1, "b": 2}))
    post(client, "/init", body("/init", mode="replace", attributes={"c": 3}, isNewUser=False))
    [user] = collector.store.users()
    assert user["attributes"] == {"c": 3}
    # The first /init said the SDK generated this user; a later one does not undo that.
    assert user["is_new_user"] is True


def test_attributes_call_keeps_the_last_context(client: httpx.Client, collector: Collector) -> None:
    post(client, "/init", body("/init", context={"url": "/first"}))
    post(client, "/attributes", body("/attributes"))
    assert collector.store.users()[0]["context"] == {"url": "/first"}
    post(client, "/init", body("/init", context={"url": "/second"}))
    assert collector.store.users()[0]["context"] == {"url": "/second"}


def test_users_are_per_key(client: httpx.Client, collector: Collector) -> None:
    post(client, "/init", body("/init", attributes={"k": "one"}))
    post(client, "/init", body("/init", attributes={"k": "two"}), key=OTHER_KEY)
    users = {u["key_id"]: u for u in collector.store.users()}
    assert users[key_id(KEY)]["attributes"] == {"k": "one"}
    assert users[key_id(OTHER_KEY)]["attributes"] == {"k": "two"}


def test_event_is_stored_whole(client: httpx.Client, collector: Collector) -> None:
    response = post(client, "/event", body("/event"), request_id="req-1")
    assert response.status_code == 200
    [event] = collector.store.events()
    assert event["uuid"] == "user-1"
    assert event["event"] == "order_created"
    assert event["attributes"] == {"amount": 12}
    assert event["timestamp"] == "2026-01-02T03:04:05.678Z"
    assert event["context"] == {"url": "/checkout"}
    assert event["sdk_version"] == "0.1.0"
    assert event["request_id"] == "req-1"
    assert event["key"] == "pub_…abcd"
    assert event["received_at"].endswith("Z")


def test_event_for_an_unknown_user_makes_it_visible(
    client: httpx.Client, collector: Collector
) -> None:
    post(client, "/event", body("/event", uuid="never-initialised"))
    [user] = collector.store.users()
    assert (user["uuid"], user["attributes"], user["event_count"]) == ("never-initialised", {}, 1)


def test_events_come_back_newest_first(client: httpx.Client, collector: Collector) -> None:
    for name in ("first", "second", "third"):
        post(client, "/event", body("/event", event=name))
    assert [e["event"] for e in collector.store.events()] == ["third", "second", "first"]


def test_duplicate_request_id_is_stored_once(client: httpx.Client, collector: Collector) -> None:
    for _ in range(3):
        response = post(client, "/event", body("/event"), request_id="retry-me")
        assert response.status_code == 200
        assert response.json() == {"ok": True}
    assert len(collector.store.events()) == 1
    calls = collector.store.calls()
    assert [c["duplicate"] for c in calls] == [False, True, True]
    assert collector.store.stats()["duplicate_calls"] == 2


def test_same_request_id_under_another_key_is_not_a_duplicate(
    client: httpx.Client, collector: Collector
) -> None:
    post(client, "/event", body("/event"), request_id="same")
    post(client, "/event", body("/event"), request_id="same", key=OTHER_KEY)
    assert len(collector.store.events()) == 2


def test_a_rejected_attempt_does_not_block_its_retry(
    client: httpx.Client, collector: Collector
) -> None:
    assert post(client, "/event", body("/event", event=""), request_id="r").status_code == 400
    assert post(client, "/event", body("/event"), request_id="r").status_code == 200
    assert len(collector.store.events()) == 1


def test_events_without_request_id_are_never_deduplicated(
    client: httpx.Client, collector: Collector
) -> None:
    post(client, "/event", body("/event"))
    post(client, "/event", body("/event"))
    assert len(collector.store.events()) == 2


def test_duplicate_attributes_call_is_not_applied_twice(
    client: httpx.Client, collector: Collector
) -> None:
    post(client, "/init", body("/init", attributes={"n": 1}), request_id="a")
    post(client, "/attributes", body("/attributes", attributes={"n": 2}), request_id="b")
    post(client, "/attributes", body("/attributes", attributes={"n": 3}), request_id="c")
    # A late duplicate of "b" must not roll the user back to n=2.
    post(client, "/attributes", body("/attributes", attributes={"n": 2}), request_id="b")
    assert collector.store.users()[0]["attributes"] == {"n": 3}


def test_call_log_keeps_order_and_raw_bodies(client: httpx.Client, collector: Collector) -> None:
    post(client, "/init", body("/init"), request_id="1")
    post(client, "/event", body("/event"), request_id="2")
    client.post(
        "/event", content=b"{", headers={"x-a-track-key": KEY, "content-type": "application/json"}
    )
    post(client, "/attributes", body("/attributes"), request_id="3", key=None)
    calls = collector.store.calls()
    assert [(c["path"], c["status"]) for c in calls] == [
        ("/init", 200),
        ("/event", 200),
        ("/event", 400),
        ("/attributes", 401),
    ]
    assert [c["request_id"] for c in calls] == ["1", "2", None, "3"]
    assert calls[2]["body"] == "{"
    assert calls[0]["uuid"] == "user-1"
    assert [c["id"] for c in calls] == sorted(c["id"] for c in calls)


def test_reset_clears_everything(client: httpx.Client, collector: Collector) -> None:
    post(client, "/event", body("/event"))
    assert client.delete("/api/data").json() == {"ok": True}
    assert collector.store.stats()["calls"] == 0
    post(client, "/event", body("/event"))
    assert client.post("/api/reset", json={}).json() == {"ok": True}
    stats = collector.store.stats()
    assert (stats["users"], stats["events"], stats["calls"]) == (0, 0, 0)


def test_data_survives_a_restart(tmp_path: Path) -> None:
    db = tmp_path / "collector.sqlite3"
    with run_in_thread(db_path=db) as first, httpx.Client(base_url=first.url) as http:
        post(http, "/init", body("/init", attributes={"plan": "pro"}))
        post(http, "/event", body("/event"), request_id="once")
    with run_in_thread(db_path=db) as second, httpx.Client(base_url=second.url) as http:
        [user] = http.get("/api/users").json()["users"]
        assert user["attributes"] == {"plan": "pro"}
        [event] = http.get("/api/events").json()["events"]
        assert event["event"] == "order_created"
        # Deduplication is remembered across the restart too.
        post(http, "/event", body("/event"), request_id="once")
        assert len(http.get("/api/events").json()["events"]) == 1
        assert len(http.get("/api/calls").json()["calls"]) == 3


def test_file_database_is_in_wal_mode(tmp_path: Path) -> None:
    store = Store(tmp_path / "db.sqlite3")
    try:
        assert store._db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert store._db.execute("PRAGMA synchronous").fetchone() == (1,)  # NORMAL
    finally:
        store.close()


def test_writes_reach_the_file_without_an_explicit_commit(tmp_path: Path) -> None:
    import sqlite3
    import time

    db = tmp_path / "db.sqlite3"
    store = Store(db, commit_interval=0.01)
    try:
        store.record(
            path="/event", key=KEY, request_id=None, raw_body="{}", status=200, body=body("/event")
        )
        deadline = time.monotonic() + 5
        while True:
            with sqlite3.connect(db) as other:
                count = other.execute("SELECT count(*) FROM events").fetchone()[0]
            other.close()
            if count == 1 or time.monotonic() > deadline:
                break
            time.sleep(0.01)
        assert count == 1
    finally:
        store.close()


def test_a_failing_write_does_not_undo_earlier_ones(tmp_path: Path) -> None:
    store = Store(tmp_path / "db.sqlite3")
    try:
        store.record(
            path="/event",
            key=KEY,
            request_id=None,
            raw_body="{}",
            status=200,
            body=body("/event", event="kept"),
        )
        with pytest.raises(KeyError):
            store.record(
                path="/event",
                key=KEY,
                request_id=None,
                raw_body="{}",
                status=200,
                body={"uuid": "broken"},
            )
        assert [e["event"] for e in store.events()] == ["kept"]
        assert len(store.calls()) == 1
    finally:
        store.close()
    reopened = Store(tmp_path / "db.sqlite3")
    try:
        assert [e["event"] for e in reopened.events()] == ["kept"]
    finally:
        reopened.close()


def test_closed_store_refuses_writes() -> None:
    store = Store()
    store.close()
    store.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        store.record(path="/event", key=KEY, request_id=None, raw_body="", status=401)


def test_latency_delays_each_ingest_call() -> None:
    import time

    # The latency is the scenario: an ingest call takes at least that long (a sleep
    # never ends early), and the dashboard API is not delayed by it. A whole second,
    # so that a loaded machine answering a GET slowly does not look like the latency.
    with run_in_thread(latency=1.0) as slow, httpx.Client(base_url=slow.url) as http:
        started = time.monotonic()
        assert post(http, "/event", body("/event")).status_code == 200
        assert time.monotonic() - started >= 1.0
        started = time.monotonic()
        http.get("/api/stats")
        elapsed = time.monotonic() - started
        assert elapsed < 1.0, f"GET /api/stats took {elapsed:.2f} s: delayed by the latency"


def test_negative_latency_is_refused() -> None:
    from atrack_core.collector import create_app

    with pytest.raises(ValueError, match="latency"):
        create_app(latency=-1)


def test_create_app_takes_a_path_or_a_store_not_both(tmp_path: Path) -> None:
    from atrack_core.collector import create_app

    store = Store()
    try:
        with pytest.raises(ValueError, match="not both"):
            create_app(tmp_path / "db.sqlite3", store=store)
        assert create_app(store=store).state.store is store
    finally:
        store.close()


def test_a_read_does_not_hold_ingest_while_it_builds_its_rows(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Ingest records on the collector's event loop, under the store's lock: a read
    # that kept the lock while turning its rows into dicts (10,000 calls: ~135 ms,
    # 0.3-0.9 s on a loaded machine) held every ingest call that long. A test polling
    # calls() every 50 ms so slowed the collector that the SDK's calls timed out.
    from atrack_core.collector import _store

    building = threading.Event()
    go_on = threading.Event()
    plain_row = _store._row

    def paused_row(*args: Any) -> dict[str, Any]:
        building.set()
        assert go_on.wait(WAIT)
        return plain_row(*args)

    store = Store()
    try:
        store.record(path="/event", key=KEY, request_id="r1", raw_body="{}", status=400)
        monkeypatch.setattr(_store, "_row", paused_row)
        reader = threading.Thread(target=store.calls)
        reader.start()
        assert building.wait(WAIT)
        recorded = threading.Event()
        writer = threading.Thread(
            target=lambda: (
                store.record(path="/event", key=KEY, request_id="r2", raw_body="{}", status=400),
                recorded.set(),
            )
        )
        writer.start()
        # Recorded while the read is still building its rows (it waits for go_on).
        done_first = recorded.wait(WAIT)
        go_on.set()
        reader.join(WAIT)
        writer.join(WAIT)
        assert done_first
        monkeypatch.setattr(_store, "_row", plain_row)
        assert [c["request_id"] for c in store.calls()] == ["r1", "r2"]
    finally:
        go_on.set()
        store.close()
