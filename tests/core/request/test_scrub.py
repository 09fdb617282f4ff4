"""Query scrubbing: the context url and referer."""

from __future__ import annotations

import pytest

from atrack_core._request import (
    DEFAULT_SCRUB_PARAMS,
    MAX_REFERER_LENGTH,
    MAX_URL_LENGTH,
    ContextConfig,
    build_request_context,
    scrub_referer,
    scrub_url,
)
from tests.core.request.helpers import DEFAULT, view

# --------------------------------------------------------------------------- url


@pytest.mark.parametrize(
    ("path", "query", "expected"),
    [
        ("/pricing", "source=google", "/pricing?source=google"),
        ("/", "", "/"),
        ("", "", "/"),
        ("/a%20b/%E2%82%AC", "x=%2F", "/a%20b/%E2%82%AC?x=%2F"),  # raw form kept
        ("/search", "q=a+b&page=2", "/search?q=a+b&page=2"),
        ("/login", "token=abc", "/login?token=[Filtered]"),
        ("/login", "TOKEN=abc&Password=x", "/login?TOKEN=[Filtered]&Password=[Filtered]"),
        ("/cb", "code=1&state=s&code=2", "/cb?code=[Filtered]&state=s&code=[Filtered]"),
        ("/x", "token", "/x?token"),  # no "=": no value to hide
        ("/x", "token=", "/x?token="),  # empty value: nothing to hide
        ("/x", "token=a=b", "/x?token=[Filtered]"),
        ("/x", "pass%77ord=hunter2", "/x?pass%77ord=[Filtered]"),  # encoded name
        (
            "/x",
            "api+key=1&api-key=2&API_KEY=3",
            "/x?api+key=1&api-key=[Filtered]&API_KEY=[Filtered]",
        ),
        (
            "/x",
            "user[password]=1&password[]=2",
            "/x?user[password]=[Filtered]&password[]=[Filtered]",
        ),
        (
            "/x",
            "csrf_token=1&X-Amz-Signature=2",
            "/x?csrf_token=[Filtered]&X-Amz-Signature=[Filtered]",
        ),
        ("/x", "PHPSESSID=1&new_password=2", "/x?PHPSESSID=[Filtered]&new_password=[Filtered]"),
        ("/x", "keyword=shoes&monkey=1&key=k", "/x?keyword=shoes&monkey=1&key=[Filtered]"),
        ("/x", "a=1&&b=2&", "/x?a=1&&b=2&"),  # empty pieces kept as sent
        # ";" separates parameters too (issue 13): many servers read it so.
        ("/x", "x=1;password=hunter2", "/x?x=1;password=[Filtered]"),
        ("/x", "a=1;token=2&b=3;c=4", "/x?a=1;token=[Filtered]&b=3;c=4"),
        ("/x", "token=a;b=2", "/x?token=[Filtered];b=2"),
        ("/x", ";;token=1;", "/x?;;token=[Filtered];"),
        # Path parameters (issue 13): the servlet session id, matrix parameters.
        ("/a;jsessionid=X", "", "/a;jsessionid=[Filtered]"),
        ("/a;jsessionid=X/b;v=1;token=t", "", "/a;jsessionid=[Filtered]/b;v=1;token=[Filtered]"),
        ("/cart;JSESSIONID=X", "q=1", "/cart;JSESSIONID=[Filtered]?q=1"),
        ("/a;b/token=1", "", "/a;b/token=1"),  # a segment's own name is never a parameter
        ("/x;jsessionid=X?token=1", "", "/x;jsessionid=[Filtered]?token=[Filtered]"),
        ("/x?token=1", "", "/x?token=[Filtered]"),  # query inside a raw path
        ("/x?ignored=1", "a=2", "/x?a=2"),  # the query string wins
        ("http://bob:pw@shop.example/x", "a=1", "/x?a=1"),  # absolute-form target
        ("https://shop.example", "", "/"),
        ("*", "", "*"),  # OPTIONS *
    ],
)
def test_url(path: str, query: str, expected: str) -> None:
    assert build_request_context(view(path, query), DEFAULT).url == expected
    assert scrub_url(path, query) == expected


def test_url_api_plus_key_decodes_plus_as_space() -> None:
    # "api+key" decodes to "api key", which is not a sensitive name: kept as sent.
    assert scrub_url("/", "api+key=1") == "/?api+key=1"


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/caf\u00e9", "/caf%C3%A9"),
        ("/a b", "/a%20b"),
        ("/a#b", "/a%23b"),
        ("/a\x00b\r\nc", "/a%00b%0D%0Ac"),
        ("/\ud800", "/%ED%A0%80"),  # lone surrogate: encoded, not raised
    ],
)
def test_url_percent_encodes_what_cannot_stand_in_a_url(path: str, expected: str) -> None:
    assert scrub_url(path, "") == expected


def test_url_query_control_characters_encoded() -> None:
    assert scrub_url("/", "a=\x01 b#c") == "/?a=%01%20b%23c"


def test_url_custom_scrub_params_replace_the_default() -> None:
    config = ContextConfig(scrub_params=["email"])
    ctx = build_request_context(view("/x", "email=a@b.c&token=t"), config)
    assert ctx.url == "/x?email=[Filtered]&token=t"


def test_url_scrub_params_extend_default() -> None:
    config = ContextConfig(scrub_params=DEFAULT_SCRUB_PARAMS | {"email"})
    assert build_request_context(view("/x", "email=a&token=t"), config).url == (
        "/x?email=[Filtered]&token=[Filtered]"
    )


@pytest.mark.parametrize(
    ("names", "query", "expected"),
    [
        (["*"], "a=1&b=2", "a=[Filtered]&b=[Filtered]"),
        (["utm_*"], "utm_source=x&source=y", "utm_source=[Filtered]&source=y"),
        (["*_id"], "user_id=1&id=2", "user_id=[Filtered]&id=2"),
        (["*mail*"], "e_mail_addr=1&x=2", "e_mail_addr=[Filtered]&x=2"),
        ("email, ssn", "SSN=1&email=2&x=3", "SSN=[Filtered]&email=[Filtered]&x=3"),
        ([], "token=1", "token=1"),
    ],
)
def test_scrub_patterns(names: list[str] | str, query: str, expected: str) -> None:
    config = ContextConfig(scrub_params=names)
    assert build_request_context(view("/", query), config).url == f"/?{expected}"


def test_url_truncated_to_bound_without_half_escape() -> None:
    url = scrub_url("/" + "%41" * 1000, "")
    assert len(url) <= MAX_URL_LENGTH
    assert not url.endswith(("%", "%4"))


def test_url_long_secret_is_scrubbed_before_truncation() -> None:
    secret = "S" * 5000
    url = scrub_url("/x", f"a=1&token={secret}&b=2")
    assert url == "/x?a=1&token=[Filtered]&b=2"
    url = scrub_url("/x", "a=" + "x" * 2030 + f"&token={secret}")
    assert "S" not in url
    assert len(url) <= MAX_URL_LENGTH
    # The same with the query inside a long raw path (WSGI REQUEST_URI).
    url = scrub_url("/x?" + "a=" + "x" * 3000 + f"&token={secret}&b=2", "")
    assert "S" not in url
    assert len(url) <= MAX_URL_LENGTH
    assert scrub_url("/x?a=1&token=" + secret, "") == "/x?a=1&token=[Filtered]"


# --------------------------------------------------------------------------- referer


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("https://google.com", "https://google.com"),
        ("https://google.com/", "https://google.com/"),
        (
            "https://shop.example/cart?session=42&step=2",
            "https://shop.example/cart?session=[Filtered]&step=2",
        ),
        ("https://bob:secret@shop.example/x", "https://shop.example/x"),
        ("https://bob@shop.example", "https://shop.example"),
        ("//bob:pw@shop.example/x", "//shop.example/x"),  # scheme-relative
        ("/a//b@c", "/a//b@c"),  # a relative path is no authority
        ("https://shop.example/x?next=a@b#frag", "https://shop.example/x?next=a@b"),
        ("https://shop.example/a@b", "https://shop.example/a@b"),  # "@" in the path stays
        ("/relative?token=1", "/relative?token=[Filtered]"),
        ("android-app://com.google.android.gm/", "android-app://com.google.android.gm/"),
        ("https://shop.example/caf\u00e9 x", "https://shop.example/caf%C3%A9%20x"),
        (
            "https://shop.example/a;jsessionid=X?x=1;password=hunter2",
            "https://shop.example/a;jsessionid=[Filtered]?x=1;password=[Filtered]",
        ),
        ("", None),
        ("   ", None),
        ("#only-fragment", None),
    ],
)
def test_referer(value: str, expected: str | None) -> None:
    assert scrub_referer(value) == expected
    ctx = build_request_context(view(headers={"referer": value}), DEFAULT)
    assert ctx.referer == expected


def test_referer_custom_names() -> None:
    assert scrub_referer("https://a.example/?email=x&token=y", ["email"]) == (
        "https://a.example/?email=[Filtered]&token=y"
    )
    assert scrub_referer(None) is None


def test_referer_bounded() -> None:
    value = "https://a.example/" + "p" * 10_000 + "?token=x"
    out = scrub_referer(value)
    assert out is not None
    assert len(out) <= MAX_REFERER_LENGTH
    assert "x" not in out.removeprefix("https://a.example/")
