"""Bad input fails at the call, in the caller's thread, with a message naming what and
where; values with one obvious JSON form are converted."""

from __future__ import annotations

import enum
import json
import math
import uuid as uuidlib
from collections.abc import Iterator
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from atrack_core import (
    ATrackSdk,
    EventPayload,
    InitPayload,
    NoUserError,
    Options,
    UserContext,
)
from atrack_core.testing import CapturedCalls, capture_calls


@pytest.fixture
def sdk() -> Iterator[ATrackSdk]:
    with ATrackSdk(Options("pub_xxxxx", disabled=True)) as client:
        yield client


@pytest.fixture
def calls() -> Iterator[CapturedCalls]:
    with capture_calls() as captured:
        yield captured


class Color(enum.Enum):
    RED = "red"


class Level(enum.IntEnum):
    HIGH = 3


@pytest.mark.parametrize(
    ("name", "exc", "match"),
    [
        ("", ValueError, "empty"),
        ("x" * 256, ValueError, "256 characters"),
        ("bad\nname", ValueError, "control"),
        ("bad\x00name", ValueError, "control"),
        ("bad\x7fname", ValueError, "control"),
        ("bad\x85name", ValueError, "control"),
        (42, TypeError, "str"),
        (None, TypeError, "str"),
    ],
)
def test_bad_event_names(sdk: ATrackSdk, name: Any, exc: type[Exception], match: str) -> None:
    with pytest.raises(exc, match=match) as info:
        sdk.track(EventPayload(event=name, uuid="u"))
    assert "event" in str(info.value)


def test_event_name_of_255_chars_is_accepted(sdk: ATrackSdk, calls: CapturedCalls) -> None:
    sdk.track("x" * 255, uuid="u")
    assert calls.event_names() == ["x" * 255]


@pytest.mark.parametrize("uuid", ["", "u" * 256, "a\tb", "line\r\nbreak"])
def test_bad_uuids_everywhere(sdk: ATrackSdk, uuid: str) -> None:
    with pytest.raises(ValueError, match="uuid"):
        sdk.init(InitPayload(user=UserContext(uuid=uuid)))
    with pytest.raises(ValueError, match="uuid"):
        sdk.track("e", uuid=uuid)
    with pytest.raises(ValueError, match="uuid"):
        sdk.set_attributes({"a": 1}, uuid=uuid)


def test_uuid_objects_are_converted(sdk: ATrackSdk, calls: CapturedCalls) -> None:
    u = uuidlib.uuid4()
    sdk.track("e", uuid=u)  # type: ignore[arg-type]
    assert calls.events[0]["uuid"] == str(u)


@pytest.mark.parametrize(
    ("attributes", "exc", "match"),
    [
        ({1: "x"}, TypeError, "non-string key 1"),
        ({("a",): 1}, TypeError, "non-string key"),
        ({"n": math.nan}, ValueError, r"\['n'\].*NaN"),
        ({"n": math.inf}, ValueError, "infinities"),
        ({"deep": {"n": -math.inf}}, ValueError, r"\['deep'\]\['n'\]"),
        ({"list": [1, math.nan]}, ValueError, r"\['list'\]\[1\]"),
        ({"o": object()}, TypeError, "object, which has no JSON form"),
        ({"f": lambda: 1}, TypeError, "function"),
        ({"b": b"bytes"}, TypeError, "bytes"),
        ({"when": datetime(2026, 1, 1)}, ValueError, "naive datetime"),
        ({"d": Decimal("NaN")}, ValueError, "NaN"),
        ({"bad\nkey": 1}, ValueError, "control"),
        ("not a dict", TypeError, "must be a dict"),
    ],
)
def test_bad_attribute_values(
    sdk: ATrackSdk, attributes: Any, exc: type[Exception], match: str
) -> None:
    with pytest.raises(exc, match=match):
        sdk.track("e", attributes, uuid="u")
    with pytest.raises(exc, match=match):
        sdk.set_attributes(attributes, uuid="u")
    with pytest.raises(exc, match=match):
        sdk.init(InitPayload(user=UserContext(uuid="u", attributes=attributes)))


def test_cycles_are_refused_not_recursed_forever(sdk: ATrackSdk) -> None:
    loop: dict[str, Any] = {}
    loop["self"] = loop
    with pytest.raises(ValueError, match="deeper than"):
        sdk.track("e", loop, uuid="u")
    items: list[Any] = []
    items.append(items)
    with pytest.raises(ValueError, match="deeper than"):
        sdk.track("e", {"l": items}, uuid="u")


def test_bad_context_and_profile(sdk: ATrackSdk) -> None:
    with pytest.raises(TypeError, match=r"InitPayload.context"):
        sdk.init(InitPayload(user=UserContext(uuid="u"), context={"x": object()}))
    with pytest.raises(TypeError, match=r"InitPayload.profile"):
        sdk.init(InitPayload(user=UserContext(uuid="u"), profile={"x": {1, object()}}))
    with pytest.raises(ValueError, match="mode"):
        sdk.init(InitPayload(user=UserContext(uuid="u"), mode="upsert"))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"EventPayload\.context"):
        sdk.track(EventPayload(event="e", uuid="u", context={"x": object()}))


def test_naive_event_timestamp(sdk: ATrackSdk) -> None:
    with pytest.raises(ValueError, match="naive"):
        sdk.track(EventPayload(event="e", uuid="u", timestamp=datetime(2026, 1, 1)))


@pytest.mark.parametrize(
    ("timestamp", "exc", "match"),
    [
        ("2020-01-01T00:00:00Z", TypeError, "got str"),
        (1_700_000_000, TypeError, "got int"),
        (0, TypeError, "got int"),  # falsy: must not quietly mean "now"
        (1.5, TypeError, "got float"),
        (True, TypeError, "got bool"),
        (date(2020, 1, 1), TypeError, "a date, not a datetime"),
        (datetime(2020, 1, 1), ValueError, "naive"),
        # Aware, but outside what UTC can hold once converted.
        (datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=5))), ValueError, "out of range"),
        (datetime(9999, 12, 31, 23, tzinfo=timezone(-timedelta(hours=5))), ValueError, "range"),
    ],
)
def test_bad_event_timestamps_name_the_field(
    sdk: ATrackSdk, timestamp: Any, exc: type[Exception], match: str
) -> None:
    with pytest.raises(exc, match=match) as info:
        sdk.track("e", uuid="u", timestamp=timestamp)
    assert "EventPayload.timestamp" in str(info.value)
    with pytest.raises(exc, match=match):
        sdk.track(EventPayload(event="e", uuid="u", timestamp=timestamp))


def test_event_timestamps_are_utc_with_milliseconds(sdk: ATrackSdk, calls: CapturedCalls) -> None:
    paris = timezone(timedelta(hours=2))
    sdk.track("e", uuid="u", timestamp=datetime(2026, 4, 8, 14, 0, 0, 123_999, tzinfo=paris))
    # Years before 1000 keep four digits (strftime's %Y does not on every platform).
    sdk.track("e", uuid="u", timestamp=datetime(5, 1, 2, 3, 4, 5, tzinfo=timezone.utc))
    sdk.track("e", uuid="u", timestamp=datetime(1, 1, 1, tzinfo=timezone.utc))
    assert [e["timestamp"] for e in calls.events] == [
        "2026-04-08T12:00:00.123Z",
        "0005-01-02T03:04:05.000Z",
        "0001-01-01T00:00:00.000Z",
    ]


def test_huge_integers_name_the_attribute(sdk: ATrackSdk, calls: CapturedCalls) -> None:
    huge = 10**5000
    with pytest.raises(ValueError, match=r"EventPayload\.attributes\['big'\].*4300 digits"):
        sdk.track("e", {"big": huge}, uuid="u")
    with pytest.raises(ValueError, match=r"\['deep'\]\['list'\]\[1\].*digits"):
        sdk.track("e", {"deep": {"list": [1, -huge]}}, uuid="u")
    with pytest.raises(ValueError, match=r"attributes\['d'\].*digits"):
        sdk.set_attributes({"d": Decimal("1E+5000")}, uuid="u")
    with pytest.raises(ValueError, match=r"InitPayload\.context\['n'\].*digits"):
        sdk.init(InitPayload(user=UserContext(uuid="u"), context={"n": huge}))
    with pytest.raises(ValueError, match=r"InitPayload\.profile\['n'\].*digits"):
        sdk.init(InitPayload(user=UserContext(uuid="u"), profile={"n": huge}))
    # The largest accepted integer has 4300 digits, whatever the interpreter's own limit.
    limit = 10**4300 - 1
    sdk.track("e", {"max": limit, "min": -limit}, uuid="u")
    assert calls.events[0]["attributes"] == {"max": limit, "min": -limit}


def test_body_over_256_kib_is_refused(sdk: ATrackSdk, calls: CapturedCalls) -> None:
    with pytest.raises(ValueError, match="limit is 262144"):
        sdk.track("e", {"blob": "x" * (256 * 1024)}, uuid="u")
    sdk.track("e", {"blob": "x" * (200 * 1024)}, uuid="u")
    assert len(calls.events) == 1


# A lone surrogate reaches user code through json.loads (a request body's "\\ud800"),
# os.fsdecode or the surrogateescape handler; UTF-8 cannot carry it.
LONE = json.loads('"\\ud800"')


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda s: s.track("e" + LONE, uuid="u"), r"EventPayload.event 'e\\ud800'"),
        (lambda s: s.track("e", uuid="u" + LONE), r"uuid 'u\\ud800'"),
        (lambda s: s.track("e", {"k" + LONE: 1}, uuid="u"), r"attributes key 'k\\ud800'"),
        (
            lambda s: s.track("e", {"k": ["x", {"y": LONE}]}, uuid="u"),
            r"/event body\['attributes'\]\['k'\]\[1\]\['y'\]",
        ),
        (
            lambda s: s.track(EventPayload(event="e", uuid="u", context={"url": "/" + LONE})),
            r"/event body\['context'\]\['url'\]",
        ),
        (
            lambda s: s.set_attributes({"plan": LONE}, uuid="u"),
            r"/attributes body\['attributes'\]\['plan'\]",
        ),
        (
            lambda s: s.init(InitPayload(user=UserContext(uuid="u"), profile={"p": LONE})),
            r"/init body\['profile'\]\['p'\]",
        ),
        (lambda s: s.init(InitPayload(user=UserContext(uuid=LONE))), r"InitPayload.user.uuid"),
    ],
)
def test_lone_surrogates_are_refused_naming_where(
    sdk: ATrackSdk, calls: CapturedCalls, call: Any, match: str
) -> None:
    with pytest.raises(ValueError, match=f"{match}.* contains a lone surrogate"):
        call(sdk)
    assert calls.calls == []


def test_wrong_argument_types(sdk: ATrackSdk) -> None:
    with pytest.raises(TypeError, match="InitPayload"):
        sdk.init({"user": None})  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="EventPayload or an event name"):
        sdk.track(42)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="no other arguments"):
        sdk.track(EventPayload(event="e", uuid="u"), {"a": 1})
    with pytest.raises(TypeError, match="unexpected keyword"):
        sdk.track("e", uuid="u", user="x")
    with pytest.raises(TypeError, match="replace"):
        sdk.set_attributes({"a": 1}, "yes", uuid="u")  # type: ignore[arg-type]


def test_track_and_set_attributes_need_a_user(sdk: ATrackSdk) -> None:
    with pytest.raises(NoUserError, match="init"):
        sdk.track("e")
    with pytest.raises(NoUserError):
        sdk.set_attributes({"a": 1})
    with pytest.raises(NoUserError):
        sdk.track(EventPayload(event="e"))


def test_conversions(sdk: ATrackSdk, calls: CapturedCalls) -> None:
    u = uuidlib.UUID("12345678-1234-5678-1234-567812345678")
    sdk.track(
        "e",
        {
            "dt": datetime(2026, 4, 8, 12, 0, tzinfo=timezone.utc),
            "d": date(2026, 4, 8),
            "dec_int": Decimal("12.00"),
            "dec": Decimal("12.5"),
            "uuid": u,
            "enum": Color.RED,
            "int_enum": Level.HIGH,
            "set": {3, 1, 2},
            "frozen": frozenset({"b", "a"}),
            "tuple": (1, "a", None),
            "nested": {"list": [date(2026, 1, 2)]},
            "plain": [True, None, 1.5, "s"],
        },
        uuid="u",
    )
    assert calls.events[0]["attributes"] == {
        "dt": "2026-04-08T12:00:00+00:00",
        "d": "2026-04-08",
        "dec_int": 12,
        "dec": 12.5,
        "uuid": str(u),
        "enum": "red",
        "int_enum": 3,
        "set": [1, 2, 3],
        "frozen": ["a", "b"],
        "tuple": [1, "a", None],
        "nested": {"list": ["2026-01-02"]},
        "plain": [True, None, 1.5, "s"],
    }


def test_caller_mutation_after_the_call_changes_nothing(
    sdk: ATrackSdk, calls: CapturedCalls
) -> None:
    attrs: dict[str, Any] = {"items": [1, 2]}
    sdk.track("e", attrs, uuid="u")
    attrs["items"].append(3)
    attrs["late"] = True
    assert calls.events[0]["attributes"] == {"items": [1, 2]}


def test_disabled_validates_but_sends_nothing() -> None:
    with ATrackSdk(Options("pub_xxxxx", disabled=True)) as sdk:
        with pytest.raises(ValueError):
            sdk.track("", uuid="u")
        sdk.track("ok", uuid="u")
        assert sdk.stats()["enqueued"] == 0 and sdk.stats()["sent"] == 0


# -- property-based -----------------------------------------------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=50)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=20), children, max_size=5)
    ),
    max_leaves=30,
)
printable_names = st.text(
    alphabet=st.characters(blacklist_categories=("Cc", "Cs")), min_size=1, max_size=255
)


@settings(max_examples=150, deadline=None)
@given(
    event=printable_names,
    uuid=printable_names,
    attributes=st.dictionaries(st.text(max_size=20), json_values, max_size=8),
)
def test_any_accepted_input_serialises_to_json_that_round_trips(
    event: str, uuid: str, attributes: dict[str, Any]
) -> None:
    with ATrackSdk(Options("pub_xxxxx", disabled=True)) as sdk, capture_calls() as calls:
        try:
            sdk.track(event, attributes, uuid=uuid)
        except ValueError as exc:
            # Only the documented reasons may refuse otherwise well-typed input.
            assert "control characters" in str(exc) or "limit" in str(exc)
            return
        (body,) = calls.events
    raw = json.dumps(body, ensure_ascii=False, allow_nan=False)
    assert json.loads(raw) == body
    assert body["event"] == event and body["uuid"] == uuid
    assert body["attributes"] == json.loads(json.dumps(attributes))


@settings(max_examples=200, deadline=None)
@given(value=st.text(max_size=300))
def test_name_validator_accepts_exactly_the_documented_names(value: str) -> None:
    from atrack_core._validate import check_name

    control = any(ord(c) < 32 or 127 <= ord(c) < 160 for c in value)
    ok = bool(value) and len(value) <= 255 and not control
    try:
        assert check_name(value, "event") == value
        assert ok
    except ValueError:
        assert not ok


@settings(max_examples=100, deadline=None)
@given(value=json_values)
def test_json_values_round_trip_through_the_converter(value: Any) -> None:
    from atrack_core._validate import to_json_object

    try:
        converted = to_json_object({"v": value}, "attributes")
    except ValueError as exc:
        assert "control characters" in str(exc)  # only keys with control chars
        return
    assert json.loads(json.dumps(converted, allow_nan=False)) == {"v": value}


_offsets = st.builds(
    timezone,
    st.timedeltas(
        min_value=-timedelta(hours=23, minutes=59), max_value=timedelta(hours=23, minutes=59)
    ),
)
_WIRE_TIMESTAMP = r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{3}Z"


@settings(max_examples=300, deadline=None)
@given(value=st.datetimes(timezones=st.none() | _offsets))
def test_any_datetime_timestamp_is_sent_exactly_or_refused_by_name(value: datetime) -> None:
    import re

    try:
        # What the wire must carry: the instant in UTC, cut (not rounded) to milliseconds.
        utc = value.astimezone(timezone.utc) if value.tzinfo is not None else None
    except OverflowError:  # aware, but not representable in UTC
        utc = None
    with ATrackSdk(Options("pub_xxxxx", disabled=True)) as sdk, capture_calls() as calls:
        try:
            sdk.track("e", uuid="u", timestamp=value)
        except ValueError as exc:
            assert "EventPayload.timestamp" in str(exc)
            assert utc is None
            return
        (body,) = calls.events
    assert utc is not None
    sent = body["timestamp"]
    assert re.fullmatch(_WIRE_TIMESTAMP, sent)
    parsed = datetime.strptime(sent, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)
    assert parsed == utc.replace(microsecond=utc.microsecond // 1000 * 1000)


@settings(max_examples=100, deadline=None)
@given(
    value=st.text(max_size=30)
    | st.integers()
    | st.floats()
    | st.booleans()
    | st.dates()
    | st.lists(st.integers(), max_size=3)
)
def test_any_timestamp_that_is_not_a_datetime_is_a_type_error_naming_it(value: Any) -> None:
    with (
        ATrackSdk(Options("pub_xxxxx", disabled=True)) as sdk,
        pytest.raises(TypeError, match=r"EventPayload\.timestamp"),
    ):
        sdk.track("e", uuid="u", timestamp=value)


# Small ones, and a band around the limit where a hole would be.
_digits = st.integers(min_value=1, max_value=40) | st.integers(min_value=4280, max_value=4320)


@settings(max_examples=100, deadline=None)
@given(digits=_digits, negative=st.booleans(), nested=st.booleans())
def test_integers_up_to_the_digit_limit_round_trip_and_larger_ones_are_named(
    digits: int, negative: bool, nested: bool
) -> None:
    value = (-1 if negative else 1) * (10**digits - 1)  # exactly `digits` digits
    attributes: dict[str, Any] = {"x": [value]} if nested else {"x": value}
    with ATrackSdk(Options("pub_xxxxx", disabled=True)) as sdk, capture_calls() as calls:
        try:
            sdk.track("e", attributes, uuid="u")
        except ValueError as exc:
            assert digits > 4300
            assert ("['x'][0]" if nested else "['x']") in str(exc)
            return
        assert digits <= 4300
        assert calls.events[0]["attributes"] == attributes
