"""Assembly of a request context, and properties over every part of it."""

from __future__ import annotations

import ast
import ipaddress
import string
import sys
import zoneinfo
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import atrack_core._request as request_module
from atrack_core._models import RequestContextInput
from atrack_core._request import (
    FILTERED,
    MAX_LOCALE_LENGTH,
    MAX_REFERER_LENGTH,
    MAX_URL_LENGTH,
    MAX_USER_AGENT_LENGTH,
    ContextConfig,
    build_request_context,
    client_ip,
    find_cookie,
    parse_cookies,
    preferred_locale,
    scrub_referer,
    scrub_url,
    valid_timezone,
)
from tests.core.request.helpers import DEFAULT, PROXIES, SEED_HEADERS, view

# --------------------------------------------------------------------------- seed


def test_module_imports_only_the_standard_library() -> None:
    # The request module is shared by every integration: it must not pull a framework
    # (or anything else) in.
    assert request_module.__file__ is not None
    modules = sorted(Path(request_module.__file__).parent.glob("*.py"))
    assert len(modules) > 5  # the package, not one module
    for module in modules:
        _assert_stdlib_only(module)


def _assert_stdlib_only(module: Path) -> None:
    tree = ast.parse(module.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        for name in names:
            assert name.partition(".")[0] in sys.stdlib_module_names | {"__future__"}, name


def test_seed_example() -> None:
    ctx = build_request_context(view("/pricing", "source=google", SEED_HEADERS), DEFAULT)
    assert ctx == RequestContextInput(
        url="/pricing?source=google",
        referer="https://google.com",
        ip_address="134.122.17.144",
        user_agent="Mozilla/5.0 (X11; Linux x86_64) Firefox/133.0",
        locale="en-US",
        timezone="America/New_York",
    )
    assert ctx.uuid is None
    assert ctx.user_attributes is None
    assert ctx.extra is None


def test_empty_request_gives_only_url() -> None:
    ctx = build_request_context(view("", "", {}, None), DEFAULT)
    assert ctx == RequestContextInput(url="/")


def test_request_view_has_slots_only() -> None:
    # Not frozen on purpose: a frozen dataclass costs ~0.6 µs more per request to build.
    v = view()
    with pytest.raises(AttributeError):
        v.not_a_field = "x"  # type: ignore[attr-defined]


# --------------------------------------------------------------------------- user agent


def test_user_agent_cut_and_cleaned() -> None:
    ua = "Mozilla/5.0 " + "x" * 1000
    ctx = build_request_context(view(headers={"user-agent": ua}), DEFAULT)
    assert ctx.user_agent == ua[:MAX_USER_AGENT_LENGTH]
    ctx = build_request_context(view(headers={"user-agent": "a\x00b\x1b[31m\x7fc\x85\n"}), DEFAULT)
    assert ctx.user_agent == "ab[31mc"
    ctx = build_request_context(view(headers={"user-agent": "\x00\t "}), DEFAULT)
    assert ctx.user_agent is None
    ctx = build_request_context(view(headers={"user-agent": "caf\u00e9 \u00a0bot"}), DEFAULT)
    assert ctx.user_agent == "caf\u00e9 \u00a0bot"  # printable non-ASCII kept
    # A lone surrogate (bytes decoded with "surrogateescape", as aiohttp decodes header
    # bytes that are not UTF-8, or an adapter of one's own): UTF-8 cannot carry it.
    ctx = build_request_context(view(headers={"user-agent": "Mozilla\udcff/5.0"}), DEFAULT)
    assert ctx.user_agent == "Mozilla/5.0"


# --------------------------------------------------------------------------- properties

_ZONES = frozenset(zoneinfo.available_timezones())

# Text with controls, separators, non-ASCII and surrogates, sometimes very long.
_any_text = st.text(
    alphabet=st.characters(codec=None, exclude_categories=()),
    max_size=40,
)
_url_text = st.text(alphabet=string.printable + "%&=?#;[]\x00\x7f\u00e9\u20ac\ud800", max_size=40)
_long = st.tuples(st.one_of(_any_text, _url_text), st.sampled_from([1, 2, 100, 3000])).map(
    lambda pair: pair[0] * pair[1]
)
_value = st.one_of(_any_text, _url_text, _long)
_header_names = st.sampled_from(
    [
        "referer",
        "user-agent",
        "accept-language",
        "cookie",
        "x-forwarded-for",
        "forwarded",
        "x-timezone",
        "host",
        "x-other",
    ]
)
_headers = st.dictionaries(_header_names, _value, max_size=9)
_peer = st.one_of(
    st.none(),
    _value,
    st.ip_addresses().map(str),
    st.sampled_from(["10.0.0.2", "::ffff:10.0.0.2", "2001:db8:ffff::1"]),
)
_configs = st.sampled_from(
    [
        DEFAULT,
        PROXIES,
        ContextConfig(trusted_proxies=["0.0.0.0/0", "::/0"], ip="anonymize"),
        ContextConfig(trusted_proxies="*"),
        ContextConfig(ip="none", scrub_params=["*"]),
    ]
)
_xff = st.lists(
    st.one_of(st.ip_addresses().map(str), st.sampled_from(["10.1.1.1", "unknown", ""]), _any_text),
    max_size=6,
).map(", ".join)


def _check_context(ctx: RequestContextInput) -> None:
    assert ctx.url is not None
    assert len(ctx.url) <= MAX_URL_LENGTH
    assert ctx.url.isascii()
    assert ctx.url.isprintable()
    assert " " not in ctx.url
    if ctx.referer is not None:
        assert 0 < len(ctx.referer) <= MAX_REFERER_LENGTH
        assert ctx.referer.isascii()
        assert ctx.referer.isprintable()
    if ctx.user_agent is not None:
        assert 0 < len(ctx.user_agent) <= MAX_USER_AGENT_LENGTH
        assert not any(ord(ch) < 0x20 or 0x7F <= ord(ch) < 0xA0 for ch in ctx.user_agent)
        ctx.user_agent.encode("utf-8")  # no lone surrogate: every call would fail
    if ctx.locale is not None:
        assert 0 < len(ctx.locale) <= MAX_LOCALE_LENGTH
        assert ctx.locale.isascii()
        assert all(part.isalnum() for part in ctx.locale.split("-"))
    if ctx.timezone is not None:
        assert ctx.timezone in _ZONES
    if ctx.ip_address is not None:
        assert str(ipaddress.ip_address(ctx.ip_address)) == ctx.ip_address
    assert ctx.uuid is None
    assert ctx.user_attributes is None
    assert ctx.extra is None


_settings = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@_settings
@given(
    path=_value,
    query=_value,
    headers=_headers,
    peer=_peer,
    config=_configs,
    xff=_xff,
)
def test_property_any_request_gives_bounded_context(
    path: str,
    query: str,
    headers: dict[str, str],
    peer: str | None,
    config: ContextConfig,
    xff: str,
) -> None:
    headers.setdefault("x-forwarded-for", xff)
    ctx = build_request_context(view(path, query, headers, peer), config)
    _check_context(ctx)
    cookies = parse_cookies(headers.get("cookie"))
    _check_context(build_request_context(view(path, query, headers, peer), config, cookies=cookies))


@_settings
@given(query=_value, secret=st.text(alphabet=string.ascii_letters, min_size=12, max_size=40))
def test_property_sensitive_values_never_leak(query: str, secret: str) -> None:
    assume(secret not in query)
    for name in ("token", "Password", "pass%77ord", "client_secret", "api-key"):
        url = scrub_url("/p", f"{query}&{name}={secret}&x=1")
        if len(scrub_url("/p", query)) < 1000:
            assert f"{name}={FILTERED}" in url
        assert f"={secret}" not in url
        referer = scrub_referer(f"https://u:{secret}@a.example/?{name}={secret}")
        assert referer == f"https://a.example/?{name}={FILTERED}"


@_settings
@given(
    query=_value,
    path=_value,
    secret=st.text(alphabet=string.ascii_letters, min_size=12, max_size=40),
    separator=st.sampled_from(["&", ";"]),
)
def test_property_semicolon_and_path_parameters_never_leak(
    query: str, path: str, secret: str, separator: str
) -> None:
    # ";" separates query parameters for many servers, and path parameters
    # ("/a;jsessionid=X") carry session ids: a secret in either never gets through.
    assume(secret not in query and secret not in path)
    for name in ("token", "jsessionid", "Password", "pass%77ord"):
        url = scrub_url(f"/a;{name}={secret}/{path}", f"{query}{separator}{name}={secret};x=1")
        assert f"={secret}" not in url
        referer = scrub_referer(f"https://a.example/p;{name}={secret}?x=1;{name}={secret}")
        assert referer == f"https://a.example/p;{name}={FILTERED}?x=1;{name}={FILTERED}"


@_settings
@given(header=_value)
def test_property_cookie_parsing_bounded(header: str) -> None:
    cookies = parse_cookies(header)
    assert len(cookies) <= 256
    for name, value in cookies.items():
        assert 0 < len(name) <= 256
        assert len(value) <= 4096
        if ";" not in name + value:
            # find_cookie and parse_cookies agree for the first 16 KiB.
            found = find_cookie(header, name)
            assert found == value


@_settings
@given(header=_value)
def test_property_helpers_never_raise(header: str) -> None:
    locale = preferred_locale(header)
    assert locale is None or len(locale) <= MAX_LOCALE_LENGTH
    zone = valid_timezone(header)
    assert zone is None or zone in _ZONES
    referer = scrub_referer(header)
    assert referer is None or len(referer) <= MAX_REFERER_LENGTH
    assert len(scrub_url(header, header)) <= MAX_URL_LENGTH
    ip = client_ip(header, {"x-forwarded-for": header, "forwarded": header}, PROXIES)
    assert ip is None or ipaddress.ip_address(ip)
