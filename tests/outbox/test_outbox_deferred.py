"""The outbox writer and events whose body the SDK encodes after the call (``EventCall``,
a request tracker's): the writer makes those bodies outside the scheduler's lock."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

import atrack_core._call as call_mod
from atrack_core import ATrackSdk, Options
from atrack_core._request import RequestView
from atrack_integrations import IntegrationConfig
from tests.fake_api import FakeApi, Plan
from tests.outbox.conftest import KEY
from tests.pause import WAIT

UUID = "0d54a1f2-3b4c-4d5e-8f90-123456789abc"
# An ASCII request context: its events' bodies are encoded by whoever reads them first.
VIEW = RequestView(
    "GET",
    "https",
    "shop.example",
    "/products",
    "",
    {"cookie": f"atrack_uuid={UUID}", "user-agent": "Mozilla/5.0 (X11)"},
    "134.122.17.144",
)


def test_the_writer_encodes_deferred_bodies_outside_the_schedulers_lock(
    tmp_path: Path, fake_api: FakeApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every track() takes the scheduler's lock to enqueue. The writer's commit holds
    that lock while it takes the new calls; a deferred body it encoded there (~5 µs
    each, thousands per commit in a burst) held every caller for as long. Here the
    writer is paused inside the encoding of one body: another thread's track() must
    complete meanwhile."""
    encoding, proceed = threading.Event(), threading.Event()
    real_event_json = call_mod.event_json

    def event_json(*parts: Any) -> bytes:
        if parts[1] == "second" and threading.current_thread().name == "atrack-outbox":
            encoding.set()
            proceed.wait(WAIT)
        return real_event_json(*parts)

    monkeypatch.setattr(call_mod, "event_json", event_json)
    answer = threading.Event()
    fake_api.plan_uuid(UUID, Plan(200, hold=answer))  # "first" stays in flight
    sdk = ATrackSdk(
        Options(KEY, endpoint=fake_api.url, outbox=tmp_path / "outbox", max_concurrency=1)
    )
    enqueued = threading.Event()
    try:
        tracker = IntegrationConfig(sdk=sdk, init="off").begin(VIEW)
        tracker.track("first", {"n": 1})
        tracker.track("second", {"n": 2})  # waits in the queue: the writer encodes it
        assert encoding.wait(WAIT), "the writer never encoded the deferred body"
        third = threading.Thread(target=lambda: (tracker.track("third", {}), enqueued.set()))
        third.start()
        assert enqueued.wait(WAIT), "track() waited for the writer's encoding"
    finally:
        proceed.set()
        answer.set()
    third.join(WAIT)
    assert sdk.flush(WAIT)
    sdk.shutdown()
    events = sorted(r.body["event"] for r in fake_api.received if r.path == "/event")
    assert events == ["first", "second", "third"]
    assert sdk.stats()["failed"] == 0
