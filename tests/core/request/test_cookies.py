"""Reading the Cookie header."""

from __future__ import annotations

import pytest

from atrack_core._request import (
    find_cookie,
    parse_cookies,
)

# --------------------------------------------------------------------------- cookies


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("a=1; b=2", {"a": "1", "b": "2"}),
        ("a=1;b=2;", {"a": "1", "b": "2"}),
        ('a="quoted value"', {"a": "quoted value"}),
        ('a="', {"a": '"'}),
        ("a=1=2", {"a": "1=2"}),
        ("a=1; a=2", {"a": "1"}),  # first wins: the most specific path comes first
        ("a= 1 ", {"a": "1"}),
        ("a=", {"a": ""}),
        ("=x; ;;; novalue; b=2", {"b": "2"}),
        ("\x00=\x01; c=\u00e9", {"\x00": "\x01", "c": "\u00e9"}),
        ("", {}),
        (None, {}),
    ],
)
def test_parse_cookies(header: str | None, expected: dict[str, str]) -> None:
    assert parse_cookies(header) == expected


def test_parse_cookies_bounded() -> None:
    many = "; ".join(f"c{i}=v" for i in range(1000))
    cookies = parse_cookies(many)
    assert len(cookies) == 256
    assert parse_cookies("a=" + "x" * 5000 + "; b=1") == {"b": "1"}
    assert parse_cookies("n" * 300 + "=1; b=1") == {"b": "1"}
    huge = "a=1; " + "x" * 20_000 + "; late=1"
    assert parse_cookies(huge) == {"a": "1"}


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("atrack_tz=UTC", "UTC"),
        ("a=1; atrack_tz=UTC; b=2", "UTC"),
        ("a=1;atrack_tz=UTC", "UTC"),
        ("xatrack_tz=1; atrack_tz_old=2; atrack_tz=3", "3"),
        ("atrack_tz=1; atrack_tz=2", "1"),
        ('atrack_tz="UTC"', "UTC"),
        (" atrack_tz = UTC ", "UTC"),
        ("a=atrack_tz=1", None),
        ("atrack_tz", None),
        ("atrack_tz=" + "x" * 5000, None),
        ("", None),
        (None, None),
    ],
)
def test_find_cookie(header: str | None, expected: str | None) -> None:
    assert find_cookie(header, "atrack_tz") == expected
    if header is not None and "x" * 5000 not in header:
        assert parse_cookies(header).get("atrack_tz") == expected
