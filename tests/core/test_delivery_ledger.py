"""The delivery ledger without an outbox: every call made ends delivered (the API saw
it answered 200), counted in stats() (failed, dropped) with a log line and on_error,
or still queued/in flight; across a burst beyond max_queue_size, an API that flaps
(503 and 429 with Retry-After, dropped connections, 500) and a shutdown in the middle
of the burst, with both transports."""

from __future__ import annotations

import logging
import threading

import pytest

import atrack_core._retry as retry
from atrack_core import ATrackSdk, Options
from tests.fake_api import FakeApi, Plan
from tests.ledger import Ledger

KEY = "pub_live_secretkey_9z8y"
pytestmark = pytest.mark.timeout(30)


def test_a_burst_through_a_flapping_api_cut_by_shutdown_is_delivered_or_counted(
    transport: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(retry, "BACKOFF_BASE", 0.005)
    caplog.set_level(logging.DEBUG, logger="atrack")
    ledger = Ledger()
    answer = threading.Event()
    with FakeApi() as api:
        flaps: list[Plan] = []
        for _ in range(40):
            flaps += [Plan(503, retry_after="0"), Plan(429, retry_after="0"), Plan(drop=True)]
            flaps += [Plan(500), Plan(200)]
        api.plan("/event", *flaps)
        api.plan_uuid("u0", Plan(hold=answer))  # in flight through the shutdown
        sdk = ATrackSdk(
            Options(
                KEY,
                endpoint=api.url,
                transport=transport,
                max_queue_size=50,
                max_concurrency=8,
                max_retries=2,
                on_error=ledger,
                shutdown_timeout=0.2,
            )
        )
        halfway = threading.Event()

        def burst() -> None:
            for n in range(400):
                sdk.track("burst", {"n": n}, uuid=f"u{n}")
                if n == 200:
                    halfway.set()

        thread = threading.Thread(target=burst)
        thread.start()
        halfway.wait()
        sdk.shutdown()  # u0 is held: the flush runs out of time
        thread.join()
        answer.set()
        # The attempt under way at the shutdown ends on its own (delivered: the API
        # answers 200 once released), after which nothing is queued or in flight.
        api.wait_for(1)
        assert sdk.flush(5)
        stats = sdk.stats()
        delivered = {int(r.body["uuid"][1:]) for r in api.received if r.status == 200}
    assert stats["queued"] == stats["in_flight"] == 0, stats
    assert stats["sent"] + stats["failed"] + stats["dropped"] == 400, stats
    assert stats["sent"] == len(delivered), stats
    assert set(range(400)) - delivered - set(ledger.lost) == set()
    assert len(ledger.lost) == stats["failed"] + stats["dropped"], stats
    assert ledger.twice == []  # each reported once
    assert 0 in delivered
    # A line for every counted loss: each failure (at WARNING, or at DEBUG within 10 s
    # of the last WARNING one), and one per kind of drop.
    messages = [r.getMessage() for r in caplog.records]
    assert sum(" dropped: " in m for m in messages) == stats["failed"]
    kinds = {type(e).__name__ for e in ledger.lost.values()}
    if "QueueFullError" in kinds:
        assert any("queue is full" in m for m in messages)
    if any("after shutdown" in str(e) or "was shut down" in str(e) for e in ledger.lost.values()):
        assert any("dropping calls made once shutdown() began" in m for m in messages)
    if any("shut down (timeout)" in str(e) for e in ledger.lost.values()):
        assert any("calls not delivered" in m for m in messages)
    assert stats["dropped"] > 0  # the burst went past the queue, and past the shutdown
