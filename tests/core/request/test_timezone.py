"""The IANA timezone from a cookie or a header."""

from __future__ import annotations

import zoneinfo

import pytest

from atrack_core._request import (
    ContextConfig,
    build_request_context,
    valid_timezone,
)
from tests.core.request.helpers import DEFAULT, view

# --------------------------------------------------------------------------- timezone


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("America/New_York", "America/New_York"),
        ("America%2FNew_York", "America/New_York"),
        ("america/new_york", "America/New_York"),
        (" Europe/Paris ", "Europe/Paris"),
        ("UTC", "UTC"),
        ("Etc/GMT+5", "Etc/GMT+5"),
        ("Mars/Olympus_Mons", None),
        ("../../etc/passwd", None),
        ("..%2F..%2Fetc%2Fpasswd", None),
        ("/etc/localtime", None),
        ("localtime", None),
        ("posixrules", None),
        ("America/New_York\x00", None),
        ("America/New_York" * 20, None),
        ("%", None),
        ("%E2%82", None),
        ("", None),
        (None, None),
    ],
)
def test_valid_timezone(name: str | None, expected: str | None) -> None:
    assert valid_timezone(name) == expected


def test_valid_timezone_never_touches_zoneinfo_files(monkeypatch: pytest.MonkeyPatch) -> None:
    valid_timezone("UTC")  # the zone list is loaded once, before the patch

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("zoneinfo was asked to open a zone")

    monkeypatch.setattr(zoneinfo, "ZoneInfo", forbidden)
    monkeypatch.setattr(zoneinfo, "available_timezones", forbidden)
    assert valid_timezone("../../../../etc/passwd-" + "x") is None
    assert valid_timezone("Asia/Tokyo") == "Asia/Tokyo"


def test_timezone_from_cookie_then_header() -> None:
    def tz(headers: dict[str, str], config: ContextConfig = DEFAULT) -> str | None:
        return build_request_context(view(headers=headers), config).timezone

    assert tz({"cookie": "atrack_tz=Europe%2FBerlin"}) == "Europe/Berlin"
    assert tz({"x-timezone": "Asia/Tokyo"}) == "Asia/Tokyo"
    assert tz({"cookie": "atrack_tz=Europe/Berlin", "x-timezone": "Asia/Tokyo"}) == "Europe/Berlin"
    # An invalid cookie falls back to the header.
    assert tz({"cookie": "atrack_tz=Nowhere", "x-timezone": "Asia/Tokyo"}) == "Asia/Tokyo"
    assert tz({"cookie": "xatrack_tz=Europe/Berlin"}) is None
    assert tz({"x-timezone": "../../etc/passwd"}) is None
    custom = ContextConfig(timezone_cookie="tz", timezone_header="X-Client-TZ")
    assert tz({"cookie": "tz=Europe/Rome"}, custom) == "Europe/Rome"
    assert tz({"x-client-tz": "Europe/Rome"}, custom) == "Europe/Rome"
    assert tz({"cookie": "atrack_tz=Europe/Berlin"}, custom) is None


def test_timezone_from_parsed_cookies() -> None:
    headers = {"cookie": "atrack_tz=Europe/Berlin"}
    ctx = build_request_context(view(headers=headers), DEFAULT, cookies={"atrack_tz": "UTC"})
    assert ctx.timezone == "UTC"  # the parsed cookies are used, not the header
    ctx = build_request_context(view(headers={"x-timezone": "UTC"}), DEFAULT, cookies={})
    assert ctx.timezone == "UTC"
