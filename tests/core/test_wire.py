"""Exact wire bodies and headers of the three calls, over real HTTP on loopback, and the
seed's examples translated to Python."""

from __future__ import annotations

import re
import uuid as uuidlib
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone

import pytest

from atrack_core import (
    ATrackSdk,
    Attributes,
    EventPayload,
    InitPayload,
    Options,
    RequestContextInput,
    UserContext,
    __version__,
    build_init_payload,
)
from tests.fake_api import FakeApi

KEY = "pub_xxxxx"
TS_RE = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z\Z")


@pytest.fixture
def sdk(fake_api: FakeApi) -> Iterator[ATrackSdk]:
    with ATrackSdk(Options(KEY, endpoint=fake_api.url, delivery="sync")) as client:
        yield client


def test_seed_example_init_with_known_user_then_track(sdk: ATrackSdk, fake_api: FakeApi) -> None:
    options = Options(KEY)
    options.geo = "fra"
    assert ATrackSdk(Options(KEY, geo="fra", disabled=True)).base_url == (
        "https://fra.api.a-track.io"
    )

    sdk.init(InitPayload(user=UserContext(uuid="server-user-42", attributes=None)))
    sdk.track(EventPayload(event="order_created"))

    init, event = fake_api.received
    assert init.path == "/init"
    assert init.body == {
        "sdkVersion": __version__,
        "uuid": "server-user-42",
        "isNewUser": False,
        "mode": "merge",
        "context": {},
        "attributes": {},
        "profile": {},
    }
    assert event.path == "/event"
    body = event.body
    assert set(body) == {"sdkVersion", "uuid", "event", "attributes", "timestamp", "context"}
    assert body["uuid"] == "server-user-42"
    assert body["event"] == "order_created"
    assert body["attributes"] == {} and body["context"] == {}
    assert TS_RE.match(body["timestamp"])


def test_seed_example_generated_uuid_read_back_and_used_later(
    sdk: ATrackSdk, fake_api: FakeApi
) -> None:
    result = sdk.init(None)
    uuid_from_init = result.uuid
    assert result.is_new_user is True
    assert str(uuidlib.UUID(uuid_from_init)) == uuid_from_init
    assert uuidlib.UUID(uuid_from_init).version == 4
    current_user = sdk.get_user()
    assert current_user is not None and current_user.uuid == uuid_from_init

    sdk.track(EventPayload(event="job_processed", uuid=uuid_from_init))
    init, event = fake_api.bodies()
    assert init["isNewUser"] is True and init["uuid"] == uuid_from_init
    assert event["uuid"] == uuid_from_init and event["event"] == "job_processed"


def test_seed_example_build_init_payload(sdk: ATrackSdk, fake_api: FakeApi) -> None:
    attrs: Attributes = {"plan": "pro"}
    payload = build_init_payload(
        RequestContextInput(
            url="/pricing?source=google",
            referer="https://google.com",
            ip_address="134.122.17.144",
            user_agent="python-service/1.0",
            locale="en-US",
            timezone="America/New_York",
            uuid="crm-user-42",
            user_attributes=attrs,
        )
    )
    sdk.init(payload)
    (body,) = fake_api.bodies("/init")
    assert body == {
        "sdkVersion": __version__,
        "uuid": "crm-user-42",
        "isNewUser": False,
        "mode": "merge",
        "context": {
            "url": "/pricing?source=google",
            "referer": "https://google.com",
            "ipAddress": "134.122.17.144",
            "userAgent": "python-service/1.0",
            "locale": "en-US",
            "timezone": "America/New_York",
        },
        "attributes": {"plan": "pro"},
        "profile": {},
    }


def test_build_init_payload_only_known_keys_and_extras() -> None:
    payload = build_init_payload(RequestContextInput(url="/x", extra={"appVersion": "2.1"}))
    assert payload.context == {"url": "/x", "appVersion": "2.1"}
    assert payload.user is not None and payload.user.uuid is None
    assert build_init_payload(RequestContextInput()).context == {}


def test_seed_example_set_attributes(sdk: ATrackSdk, fake_api: FakeApi) -> None:
    sdk.init(InitPayload(user=UserContext(uuid="u-1", attributes={"plan": "pro", "a": 1})))
    attrs: Attributes = {"plan": "business", "seats": 12}
    sdk.set_attributes(attrs, False)
    body = fake_api.bodies("/attributes")[0]
    assert body == {
        "sdkVersion": __version__,
        "uuid": "u-1",
        "mode": "merge",
        "attributes": {"plan": "business", "seats": 12},
        "profile": {},
    }
    user = sdk.get_user()
    assert user is not None
    assert user.attributes == {"plan": "business", "seats": 12, "a": 1}

    sdk.set_attributes({"plan": "free"}, True)
    assert fake_api.bodies("/attributes")[1]["mode"] == "replace"
    user = sdk.get_user()
    assert user is not None and user.attributes == {"plan": "free"}


def test_headers_on_every_call(sdk: ATrackSdk, fake_api: FakeApi) -> None:
    sdk.init()
    sdk.set_attributes({"a": 1})
    sdk.track("clicked")
    ids = set()
    for rec in fake_api.received:
        h = rec.headers
        assert h["x-a-track-key"] == KEY
        assert h["content-type"] == "application/json"
        assert h["user-agent"] == f"a-track-sdk-python/{__version__}"
        assert uuidlib.UUID(h["x-a-track-request-id"]).version == 4
        ids.add(h["x-a-track-request-id"])
        assert rec.raw.decode("utf-8")  # UTF-8 JSON
    assert len(ids) == 3


def test_endpoint_path_is_appended_to_the_base_path(fake_api: FakeApi) -> None:
    with ATrackSdk(Options(KEY, endpoint=fake_api.url + "/atrack/", delivery="sync")) as sdk:
        sdk.track("x", uuid="u")
    assert fake_api.received[0].path == "/atrack/event"


def test_init_merges_user_and_payload_attributes_and_carries_profile_and_mode(
    sdk: ATrackSdk, fake_api: FakeApi
) -> None:
    sdk.init(
        InitPayload(
            user=UserContext(uuid="u-2", attributes={"a": 1, "b": 1}),
            attributes={"b": 2},
            profile={"name": "Ada"},
            context={"url": "/"},
            mode="replace",
        )
    )
    body = fake_api.bodies("/init")[0]
    assert body["attributes"] == {"a": 1, "b": 2}
    assert body["profile"] == {"name": "Ada"}
    assert body["mode"] == "replace"
    assert body["context"] == {"url": "/"}


def test_track_short_form_and_keywords(sdk: ATrackSdk, fake_api: FakeApi) -> None:
    sdk.init(InitPayload(user=UserContext(uuid="u-3")))
    sdk.track("order_created", {"amount": 12})
    when = datetime(2026, 4, 8, 14, 0, 0, 123456, tzinfo=timezone(timedelta(hours=2)))
    sdk.track("invoice_paid", uuid="other", timestamp=when, context={"url": "/pay"})
    first, second = fake_api.bodies("/event")
    assert first["attributes"] == {"amount": 12} and first["uuid"] == "u-3"
    assert second["uuid"] == "other"
    assert second["timestamp"] == "2026-04-08T12:00:00.123Z"
    assert second["context"] == {"url": "/pay"}


def test_timestamp_is_the_time_of_the_call(sdk: ATrackSdk, fake_api: FakeApi) -> None:
    before = datetime.now(timezone.utc) - timedelta(milliseconds=1)
    sdk.track("x", uuid="u")
    after = datetime.now(timezone.utc) + timedelta(milliseconds=1)
    stamp = fake_api.bodies("/event")[0]["timestamp"]
    parsed = datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)
    assert before <= parsed <= after


def test_unicode_travels_as_utf8(sdk: ATrackSdk, fake_api: FakeApi) -> None:
    sdk.track("café_ordered", {"city": "Zürich", "emoji": "🎉"}, uuid="ü-1")
    rec = fake_api.received[0]
    assert "Zürich".encode() in rec.raw
    assert rec.body["event"] == "café_ordered"


def test_supplied_uuid_gives_is_new_user_false_and_reinit_reuses(
    sdk: ATrackSdk, fake_api: FakeApi
) -> None:
    first = sdk.init()
    again = sdk.init()  # the current user is reused, not replaced
    assert again.uuid == first.uuid and again.is_new_user is False
    assert [b["isNewUser"] for b in fake_api.bodies("/init")] == [True, False]


def test_request_ids_are_distinct_version_4_uuids() -> None:
    import uuid

    from atrack_core._wire import new_request_id

    ids = [new_request_id() for _ in range(2000)]
    assert len(set(ids)) == 2000
    for value in ids:
        parsed = uuid.UUID(value)
        assert str(parsed) == value
        assert parsed.version == 4
        assert parsed.variant == uuid.RFC_4122


def test_request_ids_made_in_bulk_are_distinct_version_4_uuids() -> None:
    import uuid
    from collections import Counter

    from atrack_core._wire import new_request_ids

    assert new_request_ids(0) == []
    assert len(new_request_ids(1)) == 256  # whole blocks: the outbox keeps the rest
    ids = new_request_ids(4000)
    assert len(ids) == 4096 and len(set(ids)) == 4096
    for value in ids:
        parsed = uuid.UUID(value)
        assert str(parsed) == value
        assert parsed.version == 4
        assert parsed.variant == uuid.RFC_4122
    # Every random digit position takes all 16 values, about equally often (4096
    # ids: 256 expected each; a digit stuck or skewed by the masking would show).
    for pos in (0, 7, 9, 15, 20, 24, 35):
        counts = Counter(value[pos] for value in ids)
        assert len(counts) == 16 and min(counts.values()) > 150, (pos, counts)
    assert set(Counter(value[19] for value in ids)) == set("89ab")
