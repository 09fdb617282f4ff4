"""The background delivery engine over real loopback HTTP, with injected faults."""

from __future__ import annotations

import asyncio
import email.utils
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import pytest

import atrack_core._retry as retry
from atrack_core import ATrackError, ATrackSdk, Call, Options
from atrack_core._errors import DeliveryError, KeyRejectedError, QueueFullError
from atrack_core._scheduler import MIN_SENDERS, OUTAGE_AFTER, BackgroundDelivery
from tests.fake_api import FakeApi, Plan, Received, blackhole_url, closed_port_url
from tests.pause import PausedThread

KEY = "pub_live_secretkey_9z8y"
pytestmark = pytest.mark.timeout(30)


@pytest.fixture(autouse=True)
def fast_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    # Backoff is uniform in [0, base * 2**n): a tiny base keeps retries fast while the
    # code path (jitter, cap, timer thread) stays the real one.
    monkeypatch.setattr(retry, "BACKOFF_BASE", 0.005)


class Errors:
    """An on_error hook that records what it is given."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.items: list[tuple[Call, BaseException]] = []

    def __call__(self, call: Call, error: BaseException) -> None:
        with self.lock:
            self.items.append((call, error))


@pytest.fixture
def sdk_factory(transport: str) -> Iterator[Any]:
    made: list[ATrackSdk] = []

    def make(url: str, **kwargs: Any) -> ATrackSdk:
        kwargs.setdefault("shutdown_timeout", 2.0)
        kwargs.setdefault("transport", transport)
        sdk = ATrackSdk(Options(KEY, endpoint=url, **kwargs))
        made.append(sdk)
        return sdk

    yield make
    for sdk in made:
        sdk.shutdown()


def warm_up(sdk: ATrackSdk) -> None:
    """One call delivered, so the engine has measured an answer (its sender estimate
    starts from the first one) and the calls a test plans start from a settled state."""
    sdk.track("warm-up", uuid="warm-up")
    assert sdk.flush(5) is True


def per_uuid(received: list[Received]) -> dict[str, list[Received]]:
    out: dict[str, list[Received]] = defaultdict(list)
    for rec in received:
        out[rec.body["uuid"]].append(rec)
    return out


# -- delivery and retries ------------------------------------------------------------


def test_delivers_each_call_with_the_wire_headers(fake_api: FakeApi, sdk_factory: Any) -> None:
    sdk = sdk_factory(fake_api.url)
    sdk.send_init("u1", True)
    sdk.track("signed_up", {"plan": "pro"}, uuid="u1")
    assert sdk.flush(5) is True
    got = fake_api.received
    assert [r.path for r in got] == ["/init", "/event"]
    assert got[1].body["attributes"] == {"plan": "pro"}
    assert got[1].headers["x-a-track-key"] == KEY
    assert got[1].headers["content-type"] == "application/json"
    assert got[1].headers["user-agent"].startswith("a-track-sdk-python/")
    assert len({r.headers["x-a-track-request-id"] for r in got}) == 2
    assert sdk.stats() | {"filtered": 0} == {
        "enqueued": 2,
        "sent": 2,
        "failed": 0,
        "retried": 0,
        "dropped": 0,
        "queued": 0,
        "in_flight": 0,
        "filtered": 0,
    }


@pytest.mark.parametrize("status", [408, 425, 429, 500, 502, 503, 504])
def test_retried_statuses_keep_one_request_id(
    fake_api: FakeApi, sdk_factory: Any, status: int
) -> None:
    fake_api.plan("/event", status, status)
    sdk = sdk_factory(fake_api.url)
    sdk.track("e", uuid="u")
    assert sdk.flush(5) is True
    assert [r.status for r in fake_api.received] == [status, status, 200]
    assert len(set(fake_api.request_ids())) == 1
    stats = sdk.stats()
    assert (stats["sent"], stats["retried"], stats["failed"]) == (1, 2, 0)


def test_dropped_connection_and_timeout_are_retried(fake_api: FakeApi, sdk_factory: Any) -> None:
    fake_api.plan("/event", Plan(drop=True), Plan(delay=1.0))
    sdk = sdk_factory(fake_api.url, timeout=0.3)
    sdk.track("e", uuid="u")
    assert sdk.flush(5) is True
    assert len(fake_api.received) == 3
    assert len(set(fake_api.request_ids())) == 1
    assert sdk.stats()["retried"] == 2
    assert sdk.stats()["sent"] == 1


@pytest.mark.parametrize("delivery", ["background", "sync"])
def test_a_request_dropped_on_a_reused_connection_is_counted_as_a_retry(
    fake_api: FakeApi, sdk_factory: Any, delivery: str
) -> None:
    """The API received the call, then closed the keep-alive connection unanswered:
    httpx reports the error and the engine retries; libcurl resends on its own. Either
    way the API has it twice under one request id, and stats() counts the retry (every
    copy at the API is an attempt the SDK counted)."""
    sdk = sdk_factory(fake_api.url, delivery=delivery, max_concurrency=1)
    sdk.track("first", uuid="u")  # opens the connection the next call reuses
    assert sdk.flush(5) is True
    fake_api.plan("/event", Plan(drop=True))
    sdk.track("second", uuid="u")
    assert sdk.flush(5) is True
    ids = fake_api.request_ids()
    assert len(ids) == 3 and len(set(ids)) == 2 and ids[1] == ids[2]
    stats = sdk.stats()
    assert (stats["sent"], stats["retried"], stats["failed"]) == (2, 1, 0)


def test_gives_up_after_max_retries_and_reports(fake_api: FakeApi, sdk_factory: Any) -> None:
    errors = Errors()
    fake_api.default = Plan(503)
    sdk = sdk_factory(fake_api.url, max_retries=3, on_error=errors)
    sdk.track("e", uuid="u")
    assert sdk.flush(5) is True
    assert len(fake_api.received) == 4  # the first attempt and 3 retries
    stats = sdk.stats()
    assert (stats["sent"], stats["retried"], stats["failed"]) == (0, 3, 1)
    [(call, error)] = errors.items
    assert isinstance(error, DeliveryError)
    assert error.status == 503
    assert call.path == "/event"
    assert call.uuid == "u"
    assert call.attempts == 4


def test_max_retries_zero_sends_once(fake_api: FakeApi, sdk_factory: Any) -> None:
    fake_api.plan("/event", 500)
    sdk = sdk_factory(fake_api.url, max_retries=0)
    sdk.track("e", uuid="u")
    assert sdk.flush(5) is True
    assert len(fake_api.received) == 1
    assert sdk.stats()["failed"] == 1


@pytest.mark.parametrize("status", [400, 401, 403, 404, 413, 422])
def test_other_statuses_are_not_retried(fake_api: FakeApi, sdk_factory: Any, status: int) -> None:
    errors = Errors()
    fake_api.plan("/event", status)
    sdk = sdk_factory(fake_api.url, on_error=errors)
    sdk.track("e", uuid="u")
    assert sdk.flush(5) is True
    assert len(fake_api.received) == 1
    assert sdk.stats()["failed"] == 1
    assert sdk.stats()["retried"] == 0
    [(_, error)] = errors.items
    assert isinstance(error, DeliveryError)
    assert error.status == status
    assert isinstance(error, KeyRejectedError) == (status in (401, 403))


def test_retry_after_seconds_is_respected(fake_api: FakeApi, sdk_factory: Any) -> None:
    fake_api.plan("/event", Plan(429, retry_after="1"))
    sdk = sdk_factory(fake_api.url)
    sdk.track("e", uuid="u")
    assert sdk.flush(5) is True
    first, second = fake_api.received
    assert 0.9 <= second.at - first.at < 3.0


def test_retry_after_http_date_is_respected(fake_api: FakeApi, sdk_factory: Any) -> None:
    # HTTP dates have whole seconds: 2 s ahead means a wait of 1-2 s.
    when = email.utils.formatdate(time.time() + 2, usegmt=True)
    fake_api.plan("/event", Plan(503, retry_after=when))
    sdk = sdk_factory(fake_api.url)
    sdk.track("e", uuid="u")
    assert sdk.flush(6) is True
    first, second = fake_api.received
    assert 0.9 <= second.at - first.at < 3.5


def test_retry_after_is_capped(
    fake_api: FakeApi, sdk_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(retry, "RETRY_AFTER_CAP", 0.2)
    fake_api.plan("/event", Plan(503, retry_after="3600"))
    sdk = sdk_factory(fake_api.url)
    sdk.track("e", uuid="u")
    assert sdk.flush(5) is True
    first, second = fake_api.received
    assert second.at - first.at < 1.5


def test_backoff_is_full_jitter_exponential_and_capped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(retry, "BACKOFF_BASE", 0.5)
    assert retry.backoff_delay(0, lambda: 0.999) == pytest.approx(0.4995)
    assert retry.backoff_delay(3, lambda: 0.5) == pytest.approx(2.0)
    assert retry.backoff_delay(20, lambda: 1.0) == retry.BACKOFF_CAP == 30.0
    assert retry.backoff_delay(4, lambda: 0.0) == 0.0


# -- ordering and isolation ----------------------------------------------------------


def test_per_user_order_holds_where_it_matters_under_concurrency_and_retries(
    fake_api: FakeApi, sdk_factory: Any
) -> None:
    # The rule: /init and /attributes of a user go one at a time, in call order, each
    # after every earlier call of that user; an /event waits for the /init and
    # /attributes made before it, never for other events.
    users = [f"user-{n}" for n in range(30)]
    for n, uuid in enumerate(users):
        if n % 3 == 0:  # a third of the users see failures in the middle of their calls
            fake_api.plan_uuid(uuid, 200, 200, 503, Plan(drop=True), 200, 429)
        elif n % 3 == 1:  # and some a failing /init first
            fake_api.plan_uuid(uuid, 503, Plan(drop=True))
    fake_api.latency = 0.002
    sdk = sdk_factory(fake_api.url, max_concurrency=16)
    for uuid in users:
        sdk.send_init(uuid, True)
    for i in range(12):
        for uuid in users:
            sdk.track("step", {"i": i}, uuid=uuid)
        if i % 4 == 3:
            for uuid in users:
                sdk.send_attributes(uuid, {"after": i})
    assert sdk.flush(20) is True
    assert sdk.stats()["sent"] == 30 * 16
    assert sdk.stats()["failed"] == 0
    for uuid, recs in per_uuid(fake_api.received).items():
        ok = [n for n, r in enumerate(recs) if 200 <= r.status < 300]
        # /init delivered before any other request of the user arrived.
        assert recs[ok[0]].path == "/init", uuid
        assert all(r.path == "/init" for r in recs[: ok[0] + 1]), uuid
        events = {r.body["attributes"]["i"] for r in recs if r.path == "/event"}
        assert events == set(range(12)), uuid
        barriers = [n for n in ok if recs[n].path == "/attributes"]
        assert [recs[n].body["attributes"]["after"] for n in barriers] == [3, 7, 11], uuid
        for n in barriers:
            after = recs[n].body["attributes"]["after"]
            first = min(k for k, r in enumerate(recs) if r.raw == recs[n].raw)
            for k, r in enumerate(recs):
                if r.path != "/event":
                    continue
                if r.body["attributes"]["i"] <= after:
                    assert k < first, (uuid, after, r.body)  # waited for by the barrier
                else:
                    assert k > n, (uuid, after, r.body)  # waited for the barrier


def test_one_users_events_do_not_wait_for_each_other(fake_api: FakeApi, sdk_factory: Any) -> None:
    # The API holds every /event unanswered (for less than the requests' timeout, so
    # none is abandoned and resent): were one user's events sent one at a time, only
    # the first would arrive (wait_for would give up).
    # (MIN_SENDERS: the fewest senders the engine keeps, however fast the /init came.)
    release = threading.Event()
    fake_api.plan("/event", *[Plan(hold=release) for _ in range(100)])
    sdk = sdk_factory(fake_api.url, max_concurrency=64, timeout=20.0)
    sdk.send_init("job", True)
    for i in range(100):
        sdk.track("row", {"i": i}, uuid="job")
    fake_api.wait_for(1 + MIN_SENDERS)
    assert fake_api.max_open >= MIN_SENDERS
    release.set()
    assert sdk.flush(10) is True
    paths = [r.path for r in fake_api.received]
    assert paths[0] == "/init"
    assert paths.count("/event") == 100


def test_an_event_waits_for_the_users_earlier_attributes(
    fake_api: FakeApi, sdk_factory: Any
) -> None:
    fake_api.plan("/attributes", Plan(503, retry_after="1"))
    sdk = sdk_factory(fake_api.url)
    sdk.track("before", uuid="u")
    sdk.send_attributes("u", {"plan": "pro"})
    sdk.track("after", uuid="u")
    sdk.track("other-user", uuid="v")
    fake_api.wait_for(3)  # "before", the first /attributes attempt, "other-user"
    assert sdk.stats()["queued"] >= 1  # "after" waits for the /attributes retry
    assert "after" not in [r.body.get("event") for r in fake_api.received]
    assert sdk.flush(5) is True
    seq = [r.body.get("event", r.path) for r in fake_api.received if r.body["uuid"] == "u"]
    assert seq == ["before", "/attributes", "/attributes", "after"]


def test_a_retrying_user_does_not_hold_back_others(fake_api: FakeApi, sdk_factory: Any) -> None:
    # One sender slot only: a retry that sat in it would block everyone for 2 s.
    fake_api.plan_uuid("slow", Plan(503, retry_after="2"))
    sdk = sdk_factory(fake_api.url, max_concurrency=1)
    sdk.send_init("slow", True)
    sdk.track("second", uuid="slow")  # waits for the /init
    fake_api.wait_for(1)
    for i in range(20):
        sdk.track("e", {"i": i}, uuid=f"other-{i}")
    # All 20 others went through the one slot while slow's /init waited out its
    # Retry-After: had the retry sat in the slot, slow's second /init (and its event)
    # would have come before them.
    arrived = [r.body["uuid"] for r in fake_api.wait_for(21)]
    assert arrived[0] == "slow"
    assert sorted(arrived[1:]) == sorted(f"other-{i}" for i in range(20))
    assert sdk.stats()["queued"] == 2  # both of slow's calls still wait
    assert sdk.flush(6) is True
    slow = [r.path for r in per_uuid(fake_api.received)["slow"]]
    assert slow == ["/init", "/init", "/event"]


@pytest.mark.parametrize("limit", [1, 2, 4])
def test_concurrency_is_bounded_by_max_concurrency(
    fake_api: FakeApi, sdk_factory: Any, limit: int
) -> None:
    # Below MIN_SENDERS too: the engine's own floor for its sender estimate (taken once
    # the first answer is in, hence the warm-up) must not lift the user's bound.
    sdk = sdk_factory(fake_api.url, max_concurrency=limit, timeout=20.0)
    warm_up(sdk)
    # The next `limit` are held unanswered, then the rest answered at once: the API
    # counts how many requests were open at any moment of the run.
    release = threading.Event()
    fake_api.plan("/event", *[Plan(hold=release) for _ in range(limit)])
    fake_api.reset_max_open()
    for i in range(12):
        sdk.track("e", uuid=f"u{i}")
    fake_api.wait_for(1 + limit)
    stats = sdk.stats()
    assert (stats["in_flight"], stats["queued"]) == (limit, 12 - limit)
    release.set()
    assert sdk.flush(5) is True
    assert len(fake_api.received) == 1 + 12
    assert fake_api.max_open == limit


def test_calls_made_before_the_first_is_answered_do_not_wait_for_it(
    fake_api: FakeApi, sdk_factory: Any
) -> None:
    # A burst while the delivery thread is still starting: with libcurl, calls that came
    # before its multi driver existed had their wake-up lost and waited for the first
    # answer (here held: a slow API's first call), 11 bursts in 20. Each round is a new
    # SDK, so each meets a starting thread.
    for round_ in range(5):
        release = threading.Event()
        fake_api.plan("/event", Plan(hold=release))
        sdk = sdk_factory(fake_api.url, timeout=20.0)
        for i in range(4):
            sdk.track("e", uuid=f"r{round_}-u{i}")
        # All four arrive while the first is still held (hang guard: 10 s).
        arrived = fake_api.wait_for(4 * round_ + 4)
        assert {rec.body["uuid"] for rec in arrived[-4:]} == {f"r{round_}-u{i}" for i in range(4)}
        release.set()
        assert sdk.flush(5) is True


def test_many_users_are_sent_concurrently(fake_api: FakeApi, sdk_factory: Any) -> None:
    # The API holds requests unanswered: one user at a time, only the first would
    # arrive. The engine keeps at least MIN_SENDERS senders (how many more depends on
    # the latency it measured, a figure for bench/): at least that many are held at once.
    sdk = sdk_factory(fake_api.url, timeout=20.0)
    warm_up(sdk)
    release = threading.Event()
    fake_api.plan("/event", *[Plan(hold=release) for _ in range(200)])
    fake_api.reset_max_open()
    for i in range(200):
        sdk.track("e", uuid=f"u{i}")
    fake_api.wait_for(1 + MIN_SENDERS)
    assert fake_api.max_open >= MIN_SENDERS
    release.set()
    assert sdk.flush(10) is True
    assert len(fake_api.received) == 1 + 200


# -- back-pressure, flush, shutdown --------------------------------------------------


def test_back_pressure_drops_without_blocking(
    fake_api: FakeApi, sdk_factory: Any, caplog: pytest.LogCaptureFixture
) -> None:
    fake_api.default = Plan(hang=True)
    errors = Errors()
    sdk = sdk_factory(
        fake_api.url, max_queue_size=10, max_concurrency=2, on_error=errors, shutdown_timeout=0.1
    )
    caplog.set_level(logging.WARNING, logger="atrack")
    # The API never answers: a track() that waited for room in the queue would never
    # return (the test's timeout), so returning at all shows it does not block.
    for i in range(500):
        sdk.track("e", uuid=f"u{i}")
    fake_api.wait_for(2)
    stats = sdk.stats()
    # At most 10 wait; up to 2 had been taken by the senders when later calls came
    # (the single curl sender loop may take its second call after the burst).
    assert 10 <= stats["enqueued"] <= 12, stats
    assert 9 <= stats["queued"] <= 10, stats
    assert stats["enqueued"] + stats["dropped"] == 500
    assert len(errors.items) == stats["dropped"]
    assert all(isinstance(e, QueueFullError) for _, e in errors.items)
    full = [r for r in caplog.records if "queue is full" in r.getMessage()]
    assert len(full) == 1
    assert full[0].levelno == logging.WARNING
    # The drops after that line are in the log too, by count, when the SDK shuts down.
    sdk.shutdown()
    summary = [r.getMessage() for r in caplog.records if "queue was full" in r.getMessage()]
    assert summary == [
        f"A-Track queue was full: {stats['dropped'] - 1} other calls dropped since the last "
        "such message (see stats().dropped)"
    ]


def test_flush_waits_only_for_calls_made_before_it(fake_api: FakeApi, sdk_factory: Any) -> None:
    release_early = threading.Event()
    fake_api.plan_uuid("early", Plan(hold=release_early))
    fake_api.plan_uuid("late", Plan(hang=True))
    sdk = sdk_factory(fake_api.url, shutdown_timeout=0.1)
    sdk.track("e", uuid="early")
    fake_api.wait_for(1)
    result: list[bool] = []
    # Known to have begun waiting once it waits on the scheduler's condition (it has
    # then counted the calls it waits for).
    flusher = PausedThread(
        threading.Condition.wait.__code__,
        lambda: result.append(sdk.flush(5)),
        caller=BackgroundDelivery._flush.__code__,
        hold=False,
    )
    flusher.wait_reached()
    sdk.track("e", uuid="late")  # made after flush() started: not waited for
    release_early.set()
    flusher.resume()
    assert flusher.errors == []
    # "late" hangs until the API closes: a flush() that waited for it would have given
    # up at its 5 s timeout with False.
    assert result == [True]
    assert sdk.stats()["in_flight"] == 1  # "late" still hangs


def test_flush_times_out_and_reports_false(fake_api: FakeApi, sdk_factory: Any) -> None:
    fake_api.default = Plan(hang=True)
    sdk = sdk_factory(fake_api.url, shutdown_timeout=0.1)
    sdk.track("e", uuid="u")
    start = time.monotonic()
    assert sdk.flush(0.3) is False
    elapsed = time.monotonic() - start
    # The promise: flush(timeout) waits its timeout, then gives up (the upper bound is
    # ten times the timeout, for a loaded machine; the API would hang forever).
    assert 0.25 <= elapsed < 3.0, f"flush(0.3) returned after {elapsed:.2f} s"
    assert sdk.flush(0) is False


def test_flush_with_nothing_queued_returns_true_at_once(sdk_factory: Any) -> None:
    sdk = sdk_factory(closed_port_url())
    start = time.monotonic()
    assert sdk.flush(20) is True
    elapsed = time.monotonic() - start
    # The promise: nothing to wait for, so flush() does not wait out its timeout.
    assert elapsed < 5.0, f"flush(20) with nothing queued took {elapsed:.2f} s"


def test_aflush_and_ashutdown(fake_api: FakeApi, sdk_factory: Any) -> None:
    sdk = sdk_factory(fake_api.url)
    sdk.track("e", uuid="u")

    async def main() -> bool:
        ok = await sdk.aflush(5)
        await sdk.ashutdown()
        await sdk.ashutdown()
        return ok

    assert asyncio.run(main()) is True
    assert len(fake_api.received) == 1


def test_shutdown_is_idempotent_and_later_calls_are_dropped(
    fake_api: FakeApi, sdk_factory: Any
) -> None:
    errors = Errors()
    sdk = sdk_factory(fake_api.url, on_error=errors)
    sdk.track("e", uuid="u")
    sdk.shutdown()
    sdk.shutdown()
    assert len(fake_api.received) == 1
    sdk.track("after", uuid="u")
    assert sdk.stats()["dropped"] == 1
    [(call, error)] = errors.items
    assert call.uuid == "u"
    assert isinstance(error, ATrackError)
    assert not isinstance(error, QueueFullError)


def test_shutdown_against_unreachable_api_is_bounded(sdk_factory: Any) -> None:
    with blackhole_url() as url:
        sdk = sdk_factory(url, timeout=20.0)
        for i in range(20):
            sdk.track("e", uuid=f"u{i}")
        start = time.monotonic()
        sdk.shutdown(timeout=0.5)
        elapsed = time.monotonic() - start
        # The promise: shutdown(timeout) returns within its timeout, not after the
        # requests' 20 s timeout (ten times 0.5 s allowed, for a loaded machine).
        assert elapsed < 5.0, f"shutdown(timeout=0.5) took {elapsed:.2f} s"
        assert sdk.stats()["sent"] == 0


def test_calls_a_timed_out_shutdown_leaves_behind_are_counted_and_reported(
    sdk_factory: Any,
) -> None:
    """The API refuses connections and shutdown() runs out of time: every call is
    accounted for (dropped, or failed for an attempt that was under way), each passed
    to on_error, none left "queued"; calls waiting in a user's lane too."""
    errors = Errors()
    sdk = sdk_factory(closed_port_url(), on_error=errors, max_retries=50)
    sdk.set_attributes({"plan": "pro"}, uuid="u0")  # the lane's barrier
    for i in range(4):
        sdk.track("behind the attributes", {"i": i}, uuid="u0")
    for i in range(1, 6):
        sdk.track("e", uuid=f"u{i}")
    sdk.shutdown(timeout=0.3)
    deadline = time.monotonic() + 5
    while sdk.stats()["in_flight"] and time.monotonic() < deadline:
        time.sleep(0.01)  # an attempt under way at the shutdown ends on its own
    stats = sdk.stats()
    assert stats["queued"] == 0
    assert stats["in_flight"] == 0
    assert stats["dropped"] + stats["failed"] == 10
    assert stats["dropped"] >= 8
    assert len(errors.items) == 10
    dropped = [call for call, error in errors.items if "shut down (timeout)" in str(error)]
    assert len(dropped) == stats["dropped"]
    assert {call.uuid for call in dropped} >= {"u0"}
    assert all(isinstance(error, ATrackError) for _, error in errors.items)


def test_shutdown_stops_the_threads(fake_api: FakeApi, sdk_factory: Any) -> None:
    sdk = sdk_factory(fake_api.url)
    for i in range(50):
        sdk.track("e", uuid=f"u{i}")
    fake_api.plan("/event", 503)
    sdk.flush(5)
    # The SDK's own threads ("atrack-signals" is the process's, not an SDK's).
    before = {t for t in threading.enumerate() if t.name in ("atrack-sender", "atrack-retry")}
    assert before
    sdk.shutdown()
    for thread in before:
        thread.join(5)
    assert not any(t.is_alive() for t in before)


def test_http2_option_works_against_an_http1_server(fake_api: FakeApi, sdk_factory: Any) -> None:
    sdk = sdk_factory(fake_api.url, http2=True)
    for i in range(20):
        sdk.track("e", uuid=f"u{i % 5}")
    assert sdk.flush(5) is True
    assert len(fake_api.received) == 20


# -- threads and counters ------------------------------------------------------------


def test_many_threads_tracking_at_once_lose_nothing(fake_api: FakeApi, sdk_factory: Any) -> None:
    fake_api.plan("/event", *([503] * 20))  # some retries in the mix
    sdk = sdk_factory(fake_api.url, max_concurrency=32)
    barrier = threading.Barrier(16)

    def work(t: int) -> None:
        barrier.wait()
        for i in range(100):
            sdk.track("e", {"t": t, "i": i}, uuid=f"u{(t * 100 + i) % 40}")

    threads = [threading.Thread(target=work, args=(t,)) for t in range(16)]
    for thread in threads:
        thread.start()
    seen_inconsistent = []
    while any(t.is_alive() for t in threads):
        s = sdk.stats()
        if s["enqueued"] != s["sent"] + s["failed"] + s["queued"] + s["in_flight"]:
            seen_inconsistent.append(s)
        time.sleep(0.001)
    for thread in threads:
        thread.join()
    assert sdk.flush(20) is True
    stats = sdk.stats()
    assert seen_inconsistent == []
    assert stats["enqueued"] == stats["sent"] == 1600
    assert (stats["failed"], stats["dropped"], stats["queued"], stats["in_flight"]) == (0, 0, 0, 0)
    assert stats["retried"] == 20
    delivered = {(r.body["attributes"]["t"], r.body["attributes"]["i"]) for r in fake_api.received}
    assert len(delivered) == 1600
    assert len(set(fake_api.request_ids())) == 1600


def test_a_slow_api_with_many_requests_in_flight_gets_every_call_in_time(
    fake_api: FakeApi, sdk_factory: Any
) -> None:
    """50 ms per answer, 64 requests in flight: the answers trickle in (a server thread
    each), which is when the curl loop paces its waits (a pause after each wake-up, so
    that one wake-up takes several answers). Every call still arrives, once, at about
    the pace 64 requests per round trip allow."""
    fake_api.latency = 0.05
    sdk = sdk_factory(fake_api.url, max_concurrency=64)
    start = time.monotonic()
    for i in range(640):
        sdk.track("e", {"i": i}, uuid=f"u{i % 100}")
    assert sdk.flush(30) is True
    elapsed = time.monotonic() - start
    assert sorted(r.body["attributes"]["i"] for r in fake_api.received) == list(range(640))
    assert len(set(fake_api.request_ids())) == 640
    assert elapsed < 5.0, elapsed  # 10 round trips: 0.5 s; a shared, loaded machine


# -- logging -------------------------------------------------------------------------


def test_key_never_appears_in_a_log_line(
    fake_api: FakeApi, sdk_factory: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    fake_api.plan_uuid("rejected", 401, 403, 401)
    fake_api.plan_uuid("retried", 503, Plan(drop=True))
    fake_api.plan_uuid("bad", 422)
    sdk = sdk_factory(fake_api.url, max_queue_size=3, max_retries=1)
    for _ in range(3):
        sdk.track("e", uuid="rejected")
    sdk.track("e", uuid="retried")
    sdk.track("e", uuid="bad")
    for i in range(50):
        sdk.track("e", uuid=f"flood-{i}")
    sdk.flush(5)
    down_url = closed_port_url()
    down = sdk_factory(down_url, max_retries=1)
    down.track("e", uuid="down")
    down.flush(5)
    down.shutdown()
    sdk.shutdown()
    assert caplog.records
    for record in caplog.records:
        text = record.getMessage() + (caplog.text if record.exc_info else "")
        assert KEY not in text
        assert KEY[:-4] not in text
    rejected = [r for r in caplog.records if r.levelno == logging.ERROR and "key" in r.getMessage()]
    assert len(rejected) == 1  # once per SDK, however many 401/403s
    assert KEY[-4:] in rejected[0].getMessage()
    # Each line names the endpoint, so a wrong ATRACK_ENDPOINT shows in the log.
    assert f"A-Track at {fake_api.url} rejected" in rejected[0].getMessage()
    [down_line] = [r.getMessage() for r in caplog.records if "'down' dropped" in r.getMessage()]
    assert f"call {down_url}/event for uuid" in down_line
    assert "Connect" in down_line  # the reason: the connection was refused
    assert "sdk" not in repr(sdk).lower() or KEY not in repr(sdk)


def test_failed_calls_are_logged_once_per_interval_and_all_reported(
    fake_api: FakeApi, sdk_factory: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="atrack")
    errors = Errors()
    fake_api.default = Plan(422)
    sdk = sdk_factory(fake_api.url, on_error=errors)
    for i in range(20):
        sdk.track("e", uuid=f"u{i}")
    assert sdk.flush(5) is True
    assert len(errors.items) == 20
    dropped = [r for r in caplog.records if "dropped:" in r.getMessage()]
    assert [r.levelno for r in dropped].count(logging.WARNING) == 1
    assert [r.levelno for r in dropped].count(logging.DEBUG) == 19
    # The 19 at DEBUG only are counted in a WARNING line when the SDK shuts down.
    sdk.shutdown()
    summary = [
        r for r in caplog.records if r.levelno == logging.WARNING and "19 other" in r.getMessage()
    ]
    assert [r.getMessage() for r in summary] == [
        f"A-Track calls to {fake_api.url} dropped after failing: 19 other calls since the "
        "last such message (see stats().failed)"
    ]


def test_an_unreachable_api_is_probed_one_call_at_a_time_then_resumed(
    fake_api: FakeApi, sdk_factory: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """OUTAGE_AFTER attempts in a row without a response: from then on one probe at a
    time, the other calls waiting without using up attempts, until the API answers.

    No retries, so the attempts that start the outage are settled (given up) when
    ``flush()`` returns, and none of them is still in flight among the probes: every
    request the API sees after that is a probe."""
    caplog.set_level(logging.INFO, logger="atrack")
    fake_api.default = Plan(drop=True)  # every attempt ends without an HTTP response
    sdk = sdk_factory(fake_api.url, max_concurrency=16, max_retries=0)
    for i in range(OUTAGE_AFTER):
        sdk.track("e", {"i": -1}, uuid=f"early{i}")
    assert sdk.flush(10) is True
    messages = [r.getMessage() for r in caplog.records]
    [unreachable] = [m for m in messages if "unreachable" in m]
    # Where and why: the endpoint and the last attempt's error.
    assert f"A-Track API at {fake_api.url} unreachable" in unreachable
    assert "/event failed" in unreachable
    before = len(fake_api.received)
    assert before == OUTAGE_AFTER
    # Each probe stays open a while at the API: a second request sent meanwhile shows.
    fake_api.default = Plan(drop=True, delay=0.02)
    fake_api.reset_max_open()
    for i in range(100):
        sdk.track("e", {"i": i}, uuid=f"u{i % 50}")
    probes = 5
    fake_api.wait_for(before + probes)
    # Without the outage brake, several of the 16 senders' requests would be open at
    # once, and each call would be dropped at its first attempt.
    assert fake_api.max_open == 1
    stats = sdk.stats()
    assert stats["sent"] == 0
    assert stats["failed"] - OUTAGE_AFTER < probes  # the probes that came back so far
    fake_api.default = None  # the API is back
    assert sdk.flush(10) is True
    stats = sdk.stats()
    failed_probes = [r for r in fake_api.received[before:] if r.status == 0]
    assert len(failed_probes) >= probes
    # Only the probes failed; every other call waited, then went out once the API answered.
    assert stats["failed"] == OUTAGE_AFTER + len(failed_probes)
    assert stats["sent"] == 100 - len(failed_probes)
    delivered = [r.body["attributes"]["i"] for r in fake_api.received if r.status == 200]
    assert sorted(delivered) == sorted(
        set(range(100)) - {r.body["attributes"]["i"] for r in failed_probes}
    )
    # The end of the outage at the same level as its start.
    [back] = [r for r in caplog.records if "reachable again" in r.getMessage()]
    assert back.levelno == logging.WARNING
    assert f"A-Track API at {fake_api.url} reachable again" in back.getMessage()


# -- delivery="sync" shares the policy ---------------------------------------------------


def test_sync_mode_errors_carry_the_status_after_the_same_retries(
    fake_api: FakeApi, sdk_factory: Any
) -> None:
    fake_api.plan("/event", 503, 503, 503)
    sdk = sdk_factory(fake_api.url, delivery="sync", max_retries=2)
    with pytest.raises(DeliveryError) as info:
        sdk.track("e", uuid="u")
    assert info.value.status == 503
    assert len(fake_api.received) == 3
    assert len(set(fake_api.request_ids())) == 1


def test_sync_mode_rejected_key_is_logged_once_with_its_last_four_characters(
    fake_api: FakeApi, sdk_factory: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="atrack")
    fake_api.default = Plan(401)
    sdk = sdk_factory(fake_api.url, delivery="sync")
    for _ in range(3):
        with pytest.raises(KeyRejectedError) as info:
            sdk.track("e", uuid="u")
        assert info.value.status == 401
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert KEY[-4:] in errors[0].getMessage()
    assert KEY not in caplog.text
    assert len(fake_api.received) == 3  # 401 is not retried


# -- how many senders ------------------------------------------------------------------


def test_sender_count_follows_latency(fake_api: FakeApi, sdk_factory: Any) -> None:
    # Fast answers: senders are added as the network wait needs them, not all
    # max_concurrency (128) up front. (How many a loaded machine needs varies: the
    # in-process fake API answers slower then, so only the bound is asserted.)
    fast = sdk_factory(fake_api.url)
    for i in range(600):
        fast.track("e", uuid=f"u{i % 300}")
    assert fast.flush(20) is True
    senders = [t for t in threading.enumerate() if t.name == "atrack-sender"]
    assert 1 <= len(senders) < 128
    # Slow answers: many requests must be in flight, up to max_concurrency.
    fake_api.latency = 0.1
    slow = sdk_factory(fake_api.url, max_concurrency=48)
    for i in range(480):
        slow.track("e", uuid=f"u{i}")
    deadline = time.monotonic() + 5
    most = 0
    while most <= 30 and time.monotonic() < deadline:
        most = max(most, slow.stats()["in_flight"])
        time.sleep(0.01)  # polling a counter; nothing to wait on
    assert 30 < most <= 48
    assert slow.flush(10) is True
