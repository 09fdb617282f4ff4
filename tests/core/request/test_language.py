"""Accept-Language -> locale."""

from __future__ import annotations

import pytest

from atrack_core._request import (
    MAX_LOCALE_LENGTH,
    build_request_context,
    preferred_locale,
)
from tests.core.request.helpers import DEFAULT, view

# --------------------------------------------------------------------------- locale


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("en-US,en;q=0.9", "en-US"),
        ("en-us", "en-US"),
        ("EN", "en"),
        ("zh-hant-tw", "zh-Hant-TW"),
        ("es-419", "es-419"),
        ("sr-latn-rs", "sr-Latn-RS"),
        ("de-CH-u-co-phonebk", "de-CH-u-co-phonebk"),
        ("en-US-x-twain", "en-US-x-twain"),
        ("en_gb", "en-GB"),
        ("fr;q=0.8, en-us, de;q=0.9", "en-US"),
        ("fr;q=0.8, de;q=0.9", "de"),
        ("fr;q=0.5, de;q=0.5", "fr"),  # tie: first wins
        ("*, fr;q=0.5", "fr"),
        ("*", None),
        ("fr;q=0, de;q=0.1", "de"),
        ("fr;q=0", None),
        ("fr;q=abc, de;q=0.2", "de"),
        ("fr;q=nan, de;q=0.2", "de"),
        ("fr;q=1e-3, de;q=0.2", "de"),
        ("fr;q=2, de;q=0.2", "de"),
        ("fr;q=-1, de;q=0.2", "de"),
        ("fr;q=\u00b2, de;q=0.2", "de"),
        ("fr;level=1;q=0.4, de;q=0.3", "fr"),
        ("fr;q=0.4;level=1", "fr"),
        ("e, 123, en--us, x-klingon, i-klingon, it", "it"),
        ("a" * 9 + ", pt-BR", "pt-BR"),
        ("en-abcdefghi, pt", "pt"),
        ("en-\u00e9, pt", "pt"),
        (" , ,,", None),
        ("", None),
        (None, None),
    ],
)
def test_preferred_locale(header: str | None, expected: str | None) -> None:
    assert preferred_locale(header) == expected
    headers = {} if header is None else {"accept-language": header}
    assert build_request_context(view(headers=headers), DEFAULT).locale == expected


def test_locale_header_length_bounded() -> None:
    header = ", ".join(["xx;q=0.1"] * 1000) + ", fr"
    assert preferred_locale(header) == "xx"  # "fr" is past the parsed bound
    assert preferred_locale("x" * 100_000) is None
    long_tag = "en-" + "-".join(["abcdefgh"] * 20)
    assert preferred_locale(long_tag) is None
    assert preferred_locale(long_tag[:MAX_LOCALE_LENGTH]) is not None
