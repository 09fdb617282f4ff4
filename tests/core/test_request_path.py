"""The request path's shortcuts (``WireContext``, ``event_json``, ``request_context_dict``)
give exactly what the general path gives, and never let unvalidated input through."""

from __future__ import annotations

import json
import math
import sys
import threading
import tracemalloc
from collections.abc import Iterator, Mapping
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from atrack_core import ATrackSdk, EventPayload, Options
from atrack_core._call import ATTRIBUTE_MEMORY, EventCall
from atrack_core._request import (
    ContextConfig,
    RequestView,
    build_request_context,
    request_context_dict,
)
from atrack_core._scheduler import BackgroundDelivery
from atrack_core._storage import FileStorage
from atrack_core._transport import Connection, Endpoint, Response, Transport
from atrack_core._validate import MAX_BODY_BYTES
from atrack_core._wire import (
    PATH_ATTRIBUTES,
    PATH_EVENT,
    PATH_INIT,
    WireContext,
    attributes_body,
    event_body,
    event_bound,
    event_json,
    serialize,
    text_bound,
)
from atrack_core.testing import CapturedCalls, CaptureTransport, capture_calls
from atrack_integrations import IntegrationConfig

UUID = "0d54a1f2-3b4c-4d5e-8f90-123456789abc"
TS = "2026-01-02T03:04:05.678Z"
BROWSER = RequestView(
    "GET",
    "https",
    "shop.example",
    "/products",
    "source=google&token=abc",
    {
        "cookie": f"_ga=1; atrack_uuid={UUID}; atrack_tz=Europe%2FBerlin",
        "referer": 'https://shop.example/"quoted"\\path?session=1',
        "user-agent": 'Mozilla/5.0 "Gecko" \\ é 漢字',
        "accept-language": "de-DE,de;q=0.9",
    },
    "134.122.17.144",
)


def recording_sdk(**options: Any) -> ATrackSdk:
    """An SDK whose calls go, in the caller's thread, to a transport that records them."""
    return ATrackSdk(
        Options(
            "pub_test_1234",
            endpoint="http://127.0.0.1:9",  # never connected to: the transport records
            delivery="sync",
            transport=CaptureTransport(),
            **options,
        )
    )


@pytest.fixture
def sdk() -> Iterator[ATrackSdk]:
    sdk = recording_sdk()
    yield sdk
    sdk.shutdown()


def recording(sdk: ATrackSdk) -> CapturedCalls:
    transport = sdk.options.transport
    assert isinstance(transport, CaptureTransport)
    return transport.calls


# ------------------------------------------------------------------ event_json


@pytest.mark.parametrize(
    ("uuid", "event", "attributes"),
    [
        (UUID, "order_created", {}),
        (UUID, "order_created", {"amount": 12, "ok": True, "none": None, "x": 1.5}),
        ('user "42" \\', 'quote"d\\event', {'k"ey': 'va"l\\ue', "nested": {"a": [1, "b"]}}),
        ("ユーザー", "événement", {"text": "漢字 \u2028 \u00e9"}),
    ],
)
def test_event_json_is_byte_for_byte_the_general_serialisation(
    uuid: str, event: str, attributes: dict[str, Any]
) -> None:
    context = request_context_dict(BROWSER, ContextConfig())
    fast = event_json(uuid, event, attributes, TS, WireContext(context))
    assert fast == serialize(PATH_EVENT, event_body(uuid, event, attributes, TS, context))
    # Again, with the uuid's and event's JSON literals taken from the cache.
    assert event_json(uuid, event, attributes, TS, WireContext(context)) == fast
    assert list(json.loads(fast)) == [
        "sdkVersion",
        "uuid",
        "event",
        "attributes",
        "timestamp",
        "context",
    ]


def test_now_timestamp_follows_the_clock_across_seconds_and_backwards(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import atrack_core._wire as wire

    expected = {
        1796424421.0: "2026-12-04T22:47:01.000Z",
        1796424421.4476: "2026-12-04T22:47:01.447Z",
        1796424421.9999: "2026-12-04T22:47:01.999Z",
        1796424422.0005: "2026-12-04T22:47:02.000Z",
        1796424420.5: "2026-12-04T22:47:00.500Z",  # the clock stepped back
        1796424479.999999: "2026-12-04T22:47:59.999Z",
        1796424480.25: "2026-12-04T22:48:00.250Z",
    }
    for now, text in expected.items():
        monkeypatch.setattr(wire, "_time", lambda now=now: now)
        assert wire.now_timestamp() == text


def test_event_json_refuses_bodies_over_the_limit() -> None:
    with pytest.raises(ValueError, match="/event body"):
        event_json(UUID, "e", {"big": "x" * MAX_BODY_BYTES}, TS, WireContext({}))


_names = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cc", "Cs")), min_size=1, max_size=20
)
_flat = st.dictionaries(
    _names,
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.floats(allow_nan=False, allow_infinity=False),
        _names,
    ),
    max_size=5,
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(uuid=_names, event=_names, attributes=_flat, context=st.dictionaries(_names, _names))
def test_property_event_json_matches_serialize(
    uuid: str, event: str, attributes: dict[str, Any], context: dict[str, str]
) -> None:
    fast = event_json(uuid, event, attributes, TS, WireContext(context))
    assert fast == serialize(PATH_EVENT, event_body(uuid, event, attributes, TS, context))
    # Again, with the uuid's and event's JSON literals taken from the cache.
    assert event_json(uuid, event, attributes, TS, WireContext(context)) == fast


# ------------------------------------------------------------------ deferred encoding


def deferred_bound(uuid: str, event: str, attributes: dict[str, Any], context: WireContext) -> int:
    """The weight ``_event_in_request`` computes: > 0 when the body may be encoded later."""
    return event_bound(uuid, text_bound(event), attributes, context)


_ascii_text = st.text(alphabet=st.characters(max_codepoint=127), max_size=40)
_ascii_flat = st.dictionaries(
    _ascii_text,
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.floats(allow_nan=False, allow_infinity=False),
        _ascii_text,
    ),
    max_size=6,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    uuid=st.one_of(_names, _ascii_text.filter(bool)),
    event=st.one_of(_names, _ascii_text.filter(bool)),
    attributes=st.one_of(_flat, _ascii_flat),
    context=st.dictionaries(st.one_of(_names, _ascii_text), st.one_of(_names, _ascii_text)),
)
def test_property_a_deferred_body_is_the_body_and_its_bound_holds(
    uuid: str, event: str, attributes: dict[str, Any], context: dict[str, str]
) -> None:
    wire = WireContext(context)
    expected = serialize(PATH_EVENT, event_body(uuid, event, attributes, TS, context))
    bound = deferred_bound(uuid, event, attributes, wire)
    text = (uuid + event + "".join(attributes) + wire.json()).encode("utf-8", "surrogatepass")
    if not text.isascii() or any(type(v) is str and not v.isascii() for v in attributes.values()):
        assert bound == -1  # encoded at once, where a failure reaches the caller
        return
    assert bound >= len(expected)
    call = EventCall(uuid, (uuid, event, attributes, TS, wire), bound)
    assert call.weight == bound + ATTRIBUTE_MEMORY * len(attributes)
    assert call.path == PATH_EVENT and call.uuid == uuid
    assert call.body == expected
    assert call.body is call.body  # made once
    assert call.json()["attributes"] == attributes


@pytest.mark.parametrize(
    "value",
    [
        2**2000 - 1,  # 603 digits: encodes under any int_max_str_digits limit
        -(2**2000 - 1),
        -1,
        0,
        -1.7976931348623157e308,
        5e-324,
        True,
        None,
        '\x00\x1f"\\' * 50,  # every character a six- or two-byte escape
    ],
)
def test_the_bound_holds_for_the_widest_values(value: Any) -> None:
    wire = WireContext({"url": "/"})
    attributes = {"k\x01": value}
    bound = deferred_bound(UUID, "e\x7f", attributes, wire)
    assert bound >= len(event_json(UUID, "e\x7f", attributes, TS, wire)) > 0


@pytest.mark.parametrize(
    ("uuid", "event", "attributes", "context"),
    [
        (UUID, "e", {"nested": {"a": 1}}, {}),  # not flat
        (UUID, "e", {"list": [1]}, {}),
        (UUID, "e", {"text": "\ud800"}, {}),  # a lone surrogate: only encoding finds it
        (UUID, "e", {"\ud800": 1}, {}),
        (UUID, "\ud800", {}, {}),
        ("\ud800", "e", {}, {}),
        (UUID, "e", {}, {"userAgent": "\ud800"}),
        (UUID, "e", {"big": "x" * (MAX_BODY_BYTES // 6)}, {}),  # could exceed the limit
        (UUID, "e", {"n": 2**2000}, {}),  # 604 digits: a lower int_max_str_digits refuses it
        (UUID, "e", {"n": -(10**4299)}, {}),
    ],
)
def test_bodies_that_could_fail_are_not_deferred(
    uuid: str, event: str, attributes: dict[str, Any], context: dict[str, str]
) -> None:
    assert deferred_bound(uuid, event, attributes, WireContext(context)) == -1


def test_a_tracker_event_that_cannot_encode_fails_at_the_call(sdk: ATrackSdk) -> None:
    tracker = IntegrationConfig(sdk=sdk, init="off").begin(ASCII_BROWSER)  # deferrable
    with pytest.raises(ValueError, match="lone surrogate"):
        tracker.track("order_created", {"note": "\ud800"})
    with pytest.raises(ValueError, match="/event body"):
        tracker.track("order_created", {"note": "x" * MAX_BODY_BYTES})
    tracker.track("order_created", {"note": "x" * 1000})  # deferred, and delivered
    (call,) = recording(sdk).calls
    assert call.body["attributes"] == {"note": "x" * 1000}


# A browser whose request context is ASCII: its events can be encoded by the sender.
ASCII_BROWSER = RequestView(
    "GET",
    "https",
    "shop.example",
    "/products",
    "source=google",
    {"cookie": f"atrack_uuid={UUID}", "user-agent": 'Mozilla/5.0 "Gecko" \\ (X11)'},
    "134.122.17.144",
)


def test_a_wide_int_fails_at_the_call_under_a_lower_int_digits_limit() -> None:
    """PYTHONINTMAXSTRDIGITS (or sys.set_int_max_str_digits) may be below the 4,300
    digits validation allows: such an int fails to encode, and must fail at the call,
    not in the sender (where it was dropped and the view never told)."""
    transport = CaptureTransport()
    failed: list[BaseException] = []
    sdk = ATrackSdk(
        Options(
            "pub_test_1234",
            endpoint="http://127.0.0.1:9",
            transport=transport,
            on_error=lambda call, exc: failed.append(exc),
        )
    )
    limit = sys.get_int_max_str_digits()
    try:
        tracker = IntegrationConfig(sdk=sdk, init="off").begin(ASCII_BROWSER)
        tracker.track("deferred_first", {"n": 1})
        context = tracker._context
        assert isinstance(context, WireContext) and context.ascii_size > 0  # deferrable
        sys.set_int_max_str_digits(1000)
        with pytest.raises(ValueError, match="digits"):
            tracker.track("wide", {"n": 10**1500})
        tracker.track("widest_sure", {"n": -(2**2000 - 1)})  # 603 digits: always encodes
        assert sdk.flush(10)
    finally:
        sys.set_int_max_str_digits(limit)
        sdk.shutdown()
    assert failed == [] and sdk.stats()["failed"] == 0
    bodies = sorted((c.body for c in transport.calls.calls), key=lambda b: b["event"])
    assert [b["event"] for b in bodies] == ["deferred_first", "widest_sure"]
    assert bodies[1]["attributes"] == {"n": -(2**2000 - 1)}


class _HeldConnection(Connection):
    def __init__(self, release: threading.Event, taken: threading.Event, bodies: list[Any]) -> None:
        self._release = release
        self._taken = taken
        self.bodies = bodies

    def request(self, path: str, headers: Mapping[str, str], body: bytes) -> Response:
        self.bodies.append(json.loads(body))
        self._taken.set()
        self._release.wait()
        return Response(200)


class HeldTransport(Transport):
    """Answers 200 once ``release`` is set: until then the calls wait in the queue."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.taken = threading.Event()
        self.bodies: list[Any] = []  # the bodies sent, decoded

    def connection(self, endpoint: Endpoint) -> Connection:
        return _HeldConnection(self.release, self.taken, self.bodies)


def held_sdk() -> tuple[ATrackSdk, HeldTransport]:
    """An SDK with one sender, through a :class:`HeldTransport`: its first call stays in
    flight until ``release``, and the calls after it wait in the queue."""
    transport = HeldTransport()
    options = Options(
        "pub_test_1234", endpoint="http://127.0.0.1:9", transport=transport, max_concurrency=1
    )
    return ATrackSdk(options), transport


def test_queued_deferred_events_take_no_more_memory_than_the_queue_counts() -> None:
    """The queue's byte bound (32 MiB) is what keeps memory bounded while the API is
    down. A deferred event holds its attributes, not its body: each one a dict entry and
    often a key made for the call, more than its JSON. Its weight must cover that, as a
    body's length covers an eagerly encoded event (there: 1.1 times for these)."""
    sdk, transport = held_sdk()
    try:
        tracker = IntegrationConfig(sdk=sdk, init="off").begin(ASCII_BROWSER)
        tracker.track("first", {})
        assert transport.taken.wait(10)  # held in flight: the rest wait in the queue
        delivery = sdk._delivery
        assert isinstance(delivery, BackgroundDelivery)
        counted = delivery._bytes
        tracemalloc.start()
        try:
            for n in range(2000):
                tracker.track("flags", {f"flag_{i}": (n >> i) & 1 for i in range(100)})
            used = tracemalloc.get_traced_memory()[0]
        finally:
            tracemalloc.stop()
        counted = delivery._bytes - counted
        assert all(type(call) is EventCall for call in delivery._ready)  # deferred
        assert len(delivery._ready) == 2000
        assert used <= 1.5 * counted, (used, counted)
        transport.release.set()
        assert sdk.flush(30)
    finally:
        transport.release.set()
        sdk.shutdown()
    assert sdk.stats()["sent"] == 2001 and sdk.stats()["failed"] == 0


def test_a_body_that_cannot_encode_fails_at_the_call_when_sent_by_the_ordered_worker(
    tmp_path: Any,
) -> None:
    """Under an event loop with a storage that does I/O, a tracker's calls go out from
    the ordered worker (behind the user's /init). Its event (or /attributes) used to be
    validated at the call but encoded in the worker: a lone surrogate in a value or a
    body over 256 KiB was only logged there, the call site told nothing and no counter
    moved."""
    transport = CaptureTransport()
    sdk = ATrackSdk(
        Options(
            "pub_test_1234",
            endpoint="http://127.0.0.1:9",
            transport=transport,
            storage=FileStorage(tmp_path / "atrack.json"),
        )
    )
    try:
        tracker = IntegrationConfig(sdk=sdk).begin(ASCII_BROWSER, in_event_loop=True)
        tracker.track("first", {"n": 1})  # the /init goes to the worker: ordered now
        assert tracker._ordered
        with pytest.raises(ValueError, match="lone surrogate"):
            tracker.track("bad_text", {"note": "\ud800"})
        with pytest.raises(ValueError, match="/event body"):
            tracker.track("too_big", {"note": "x" * MAX_BODY_BYTES})
        tracker.track("caf\u00e9", {"city": "Z\u00fcrich"})  # not sure, encodes: sent
        with pytest.raises(ValueError, match="lone surrogate"):
            tracker.set_attributes({"note": "\ud800"})
        with pytest.raises(ValueError, match="/attributes body"):
            tracker.set_attributes({"note": "x" * MAX_BODY_BYTES})
        tracker.set_attributes({"plan": "pro"})
        assert tracker._last is not None
        tracker._last.result(10)
        assert sdk.flush(10)
    finally:
        sdk.shutdown()
    events = [c.body["event"] for c in transport.calls.calls if c.path == PATH_EVENT]
    assert sorted(events) == ["caf\u00e9", "first"]  # events keep no order among them
    sent = [c.body["attributes"] for c in transport.calls.calls if c.path == PATH_ATTRIBUTES]
    assert sent == [{"plan": "pro"}]


@pytest.mark.parametrize("ordered", [False, True])
def test_identify_with_attributes_that_cannot_encode_fails_at_the_call(
    tmp_path: Any, ordered: bool
) -> None:
    """identify(uuid, attributes) sends the user's /init with them, later (at once, or
    from the ordered worker), where a failure is contained: a lone surrogate or a body
    over 256 KiB was logged there only, no counter moved, the attributes lost."""
    transport = CaptureTransport()
    storage = {"storage": FileStorage(tmp_path / "atrack.json")} if ordered else {}
    sdk = ATrackSdk(
        Options("pub_test_1234", endpoint="http://127.0.0.1:9", transport=transport, **storage)
    )
    try:
        tracker = IntegrationConfig(sdk=sdk).begin(ASCII_BROWSER, in_event_loop=ordered)
        tracker.track("first", {})
        assert tracker._ordered is ordered
        with pytest.raises(ValueError, match="lone surrogate"):
            tracker.identify("user-2", {"note": "\ud800"})
        with pytest.raises(ValueError, match="/init body"):
            tracker.identify("user-3", {"note": "x" * MAX_BODY_BYTES})
        tracker.identify("user-4", {"plan": "pro"})
        if tracker._last is not None:
            tracker._last.result(10)
        assert sdk.flush(10)
    finally:
        sdk.shutdown()
    inits = {c.body["uuid"]: c.body for c in transport.calls.calls if c.path == PATH_INIT}
    assert sorted(inits) == [UUID, "user-4"]  # two users' calls keep no order
    assert inits["user-4"]["attributes"] == {"plan": "pro"}


def test_identify_checks_the_body_it_sends(sdk: ATrackSdk) -> None:
    """With init="off" identify's attributes go out as /attributes, without the
    request's context: a value that fits there is not refused for the /init it is not."""
    tracker = IntegrationConfig(sdk=sdk, init="off").begin(BROWSER)
    room = MAX_BODY_BYTES - len(
        serialize(PATH_ATTRIBUTES, attributes_body("u-1", "merge", {"v": ""}, {}))
    )
    tracker.identify("u-1", {"v": "x" * room})
    (call,) = recording(sdk).calls
    assert call.path == PATH_ATTRIBUTES and len(call.body["attributes"]["v"]) == room
    with pytest.raises(ValueError, match="/attributes body"):
        tracker.identify("u-2", {"v": "x" * (room + 1)})


def test_a_deferred_body_holds_the_values_of_the_call() -> None:
    """Encoded later, in the sender: what the caller changes after the call is not in it.
    The events wait behind a call held in flight, so every body is made after the
    caller changed its dict."""
    sdk, transport = held_sdk()
    try:
        tracker = IntegrationConfig(sdk=sdk, init="off").begin(ASCII_BROWSER)
        tracker.track("held", {})
        assert transport.taken.wait(10)
        attributes: dict[str, Any] = {"step": 1, "label": "first"}
        for step in range(1, 4):
            attributes["step"] = step
            tracker.track("checkout_step", attributes)
            attributes["label"] = "changed"
        delivery = sdk._delivery
        assert isinstance(delivery, BackgroundDelivery)
        assert [type(call) for call in delivery._ready] == [EventCall] * 3  # not encoded
        attributes.clear()
        transport.release.set()
        assert sdk.flush(10)
    finally:
        transport.release.set()
        sdk.shutdown()
    steps = {
        b["attributes"]["step"]: b["attributes"]["label"]
        for b in transport.bodies
        if b["event"] == "checkout_step"
    }
    assert steps == {1: "first", 2: "changed", 3: "changed"}


# ------------------------------------------------------------------ request_context_dict


def test_request_context_dict_is_the_wire_form_of_build_request_context() -> None:
    for config in (ContextConfig(), ContextConfig(ip="anonymize", scrub_params=["*"])):
        expected = build_request_context(BROWSER, config).to_context()
        assert request_context_dict(BROWSER, config) == expected
        assert list(request_context_dict(BROWSER, config)) == list(expected)
    bare = RequestView("GET", "http", None, "/", "", {}, None)
    assert request_context_dict(bare, ContextConfig()) == {"url": "/"}


# ------------------------------------------------------------------ the tracker's events


def tracker_for(sdk: ATrackSdk, **settings: Any) -> Any:
    config = IntegrationConfig(sdk=sdk, init="off", **settings)
    return config.begin(BROWSER)


def test_tracker_events_are_the_same_on_the_fast_and_the_captured_path(sdk: ATrackSdk) -> None:
    delivery = recording(sdk)
    tracker = tracker_for(sdk)
    tracker.track("order_created", {"amount": 12, "currency": "EUR"})
    with capture_calls() as captured:
        tracker.track("order_created", {"amount": 12, "currency": "EUR"})
    (call,) = delivery.calls
    fast = dict(call.body)
    assert call.path == "/event" and fast["uuid"] == UUID
    (captured_call,) = captured.calls
    assert captured_call.path == "/event"
    fast.pop("timestamp")
    body = dict(captured_call.body)
    body.pop("timestamp")
    assert fast == body
    assert fast["context"] == tracker.context
    assert fast["context"]["url"] == "/products?source=google&token=[Filtered]"


@pytest.mark.parametrize(
    ("event", "attributes", "error"),
    [
        ("", None, ValueError),
        ("a\x00b", None, ValueError),
        ("x" * 256, None, ValueError),
        (42, None, TypeError),
        ("ok", {"v": math.nan}, ValueError),
        ("ok", {"v": math.inf}, ValueError),
        ("ok", {1: "non-str key"}, TypeError),
        ("ok", {"bad\nkey": 1}, ValueError),
        ("ok", {"v": object()}, TypeError),
        ("ok", ["not", "a", "dict"], TypeError),
    ],
)
def test_tracker_fast_path_still_validates_at_the_call(
    sdk: ATrackSdk, event: Any, attributes: Any, error: type[Exception]
) -> None:
    delivery = recording(sdk)
    tracker = tracker_for(sdk)
    with pytest.raises(error):
        tracker.track(event, attributes)
    assert delivery.calls == []


def test_a_context_given_by_a_caller_is_always_validated(sdk: ATrackSdk) -> None:
    delivery = recording(sdk)
    # A caller's context is a dict: validated, never taken as the integrations' own.
    for bad, error in (({"v": math.nan}, ValueError), ({1: "x"}, TypeError)):
        with pytest.raises(error):
            sdk.send_event(UUID, "e", context=bad)
        with pytest.raises(error):
            sdk.track("e", uuid=UUID, context=bad)
        with pytest.raises(error):
            sdk.track(EventPayload("e", uuid=UUID, context=bad))
    # With a dict context the uuid is checked too.
    with pytest.raises(ValueError):
        sdk.send_event("bad\x00uuid", "e", context={"url": "/"})
    # The tracker hands out a copy of its context, a plain dict: passing it back is
    # validated like any other dict.
    tracker = tracker_for(sdk)
    assert type(tracker.context) is dict
    with pytest.raises(ValueError):
        sdk.send_event(UUID, "e", context={**tracker.context, "bad": math.nan})
    assert delivery.calls == []


def test_before_send_gets_a_copy_of_the_request_context() -> None:
    seen: list[dict[str, Any]] = []

    def scrub(path: str, body: dict[str, Any]) -> dict[str, Any]:
        seen.append(json.loads(json.dumps(body["context"])))
        body["context"].pop("ipAddress", None)
        body["context"]["added"] = 1
        return body

    sdk = recording_sdk(before_send=scrub)
    try:
        delivery = recording(sdk)
        tracker = tracker_for(sdk)
        tracker.track("one")
        tracker.track("two")
        assert seen[0] == seen[1]
        assert seen[1]["ipAddress"] == "134.122.17.144"
        assert "added" not in tracker.context
        sent = [call.body["context"] for call in delivery.calls]
        assert all("ipAddress" not in ctx and ctx["added"] == 1 for ctx in sent)
    finally:
        sdk.shutdown()
