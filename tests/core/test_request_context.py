"""SPEC section 5: from a framework-neutral request view to a RequestContextInput."""

from __future__ import annotations

import ast
import ipaddress
import string
import sys
import zoneinfo
from collections.abc import Mapping

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import atrack_core._request as request_module
from atrack_core._models import RequestContextInput
from atrack_core._request import (
    DEFAULT_SCRUB_PARAMS,
    FILTERED,
    MAX_LOCALE_LENGTH,
    MAX_REFERER_LENGTH,
    MAX_URL_LENGTH,
    MAX_USER_AGENT_LENGTH,
    ContextConfig,
    RequestView,
    anonymize_ip,
    build_request_context,
    client_ip,
    find_cookie,
    parse_cookies,
    preferred_locale,
    scrub_referer,
    scrub_url,
    valid_timezone,
)

SEED_HEADERS = {
    "host": "shop.example",
    "referer": "https://google.com",
    "user-agent": "Mozilla/5.0 (X11; Linux x86_64) Firefox/133.0",
    "accept-language": "en-US,en;q=0.9",
    "cookie": "atrack_uuid=0d54a1f2-3b4c-4d5e-8f90-123456789abc; atrack_tz=America%2FNew_York",
}


def view(
    path: str = "/pricing",
    query_string: str = "",
    headers: Mapping[str, str] | None = None,
    client: str | None = "134.122.17.144",
) -> RequestView:
    return RequestView(
        method="GET",
        scheme="https",
        host="shop.example",
        path=path,
        query_string=query_string,
        headers=headers if headers is not None else {},
        client=client,
    )


DEFAULT = ContextConfig()
PROXIES = ContextConfig(trusted_proxies=["10.0.0.0/8", "192.0.2.1", "2001:db8:ffff::/48"])


# --------------------------------------------------------------------------- seed


def test_module_imports_only_the_standard_library() -> None:
    # The request module is shared by every integration: it must not pull a framework
    # (or anything else) in.
    assert request_module.__file__ is not None
    with open(request_module.__file__, encoding="utf-8") as file:
        tree = ast.parse(file.read())
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
        ("/x", "a=1;token=2", "/x?a=1;token=2"),  # ";" is not a separator
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


# --------------------------------------------------------------------------- ip


def ip_of(
    config: ContextConfig, peer: str | None, headers: Mapping[str, str] | None = None
) -> str | None:
    headers = headers or {}
    result = client_ip(peer, headers, config)
    assert build_request_context(view(headers=headers, client=peer), config).ip_address == result
    return result


def test_ip_is_the_peer_by_default() -> None:
    assert ip_of(DEFAULT, "134.122.17.144") == "134.122.17.144"


def test_forged_forwarding_headers_ignored_by_default() -> None:
    headers = {"x-forwarded-for": "1.2.3.4", "forwarded": "for=5.6.7.8"}
    assert ip_of(DEFAULT, "134.122.17.144", headers) == "134.122.17.144"
    # Even when the peer is a private address: nothing is trusted unless configured.
    assert ip_of(DEFAULT, "10.0.0.2", headers) == "10.0.0.2"


def test_forwarding_headers_ignored_when_peer_not_trusted() -> None:
    headers = {"x-forwarded-for": "1.2.3.4"}
    assert ip_of(PROXIES, "134.122.17.144", headers) == "134.122.17.144"


def test_trusted_proxy_single_hop() -> None:
    headers = {"x-forwarded-for": "134.122.17.144"}
    assert ip_of(PROXIES, "10.0.0.2", headers) == "134.122.17.144"


def test_trusted_proxy_several_hops_skip_trusted_stop_at_first_untrusted() -> None:
    # The client forged "6.6.6.6"; the real client is the first untrusted from the right.
    headers = {"x-forwarded-for": "6.6.6.6, 134.122.17.144, 10.1.2.3, 192.0.2.1"}
    assert ip_of(PROXIES, "10.0.0.2", headers) == "134.122.17.144"


def test_trusted_proxy_all_hops_trusted_uses_left_most() -> None:
    headers = {"x-forwarded-for": "10.9.9.9, 10.1.2.3"}
    assert ip_of(PROXIES, "10.0.0.2", headers) == "10.9.9.9"


def test_trusted_proxy_no_header_keeps_peer() -> None:
    assert ip_of(PROXIES, "10.0.0.2", {}) == "10.0.0.2"


@pytest.mark.parametrize("bad", ["unknown", "not-an-ip", "", "999.1.1.1", "_hidden"])
def test_invalid_hop_stops_walk_at_last_good(bad: str) -> None:
    headers = {"x-forwarded-for": f"134.122.17.144, {bad}, 10.1.2.3"}
    assert ip_of(PROXIES, "10.0.0.2", headers) == "10.1.2.3"


def test_xff_with_ports_and_ipv6() -> None:
    headers = {"x-forwarded-for": "[2001:db8::1]:4711, 10.1.2.3:80"}
    assert ip_of(PROXIES, "10.0.0.2", headers) == "2001:db8::1"
    headers = {"x-forwarded-for": "134.122.17.144:5555"}
    assert ip_of(PROXIES, "10.0.0.2", headers) == "134.122.17.144"


def test_forwarded_header() -> None:
    headers = {
        "forwarded": 'for=6.6.6.6, for="[2001:db8:cafe::17]:4711";proto=https, '
        "For=10.1.2.3;by=10.0.0.1"
    }
    assert ip_of(PROXIES, "10.0.0.2", headers) == "2001:db8:cafe::17"


@pytest.mark.parametrize("node", ["unknown", "_hidden", '"_SEVKISEK"', "", "by=1.2.3.4"])
def test_forwarded_unknown_or_obfuscated_stops(node: str) -> None:
    element = node if node.startswith("by=") else f"for={node}"
    headers = {"forwarded": f"for=1.2.3.4, {element}, for=10.1.2.3"}
    assert ip_of(PROXIES, "10.0.0.2", headers) == "10.1.2.3"


def test_x_forwarded_for_preferred_over_forwarded() -> None:
    headers = {"x-forwarded-for": "134.122.17.144", "forwarded": "for=5.6.7.8"}
    assert ip_of(PROXIES, "10.0.0.2", headers) == "134.122.17.144"


def test_ipv6_trusted_proxy_range() -> None:
    headers = {"x-forwarded-for": "134.122.17.144, 2001:db8:ffff:1::9"}
    assert ip_of(PROXIES, "2001:db8:ffff::1", headers) == "134.122.17.144"
    assert ip_of(PROXIES, "2001:db8:eeee::1", headers) == "2001:db8:eeee::1"


def test_ipv4_mapped_peer_normalised() -> None:
    assert ip_of(DEFAULT, "::ffff:134.122.17.144") == "134.122.17.144"
    headers = {"x-forwarded-for": "::ffff:134.122.17.144"}
    assert ip_of(PROXIES, "::ffff:10.0.0.2", headers) == "134.122.17.144"


def test_trust_all_also_trusts_unix_socket_peers() -> None:
    config = ContextConfig(trusted_proxies="*")
    headers = {"x-forwarded-for": "134.122.17.144, 10.1.1.1"}
    # Every hop is trusted, so the left-most is the client.
    assert ip_of(config, None, headers) == "134.122.17.144"
    assert ip_of(config, "unix:/run/app.sock", {"forwarded": "for=1.2.3.4"}) == "1.2.3.4"
    assert ip_of(config, None, {}) is None
    assert ip_of(config, None, {"x-forwarded-for": "unknown"}) is None
    assert ip_of(config, "10.0.0.2", {}) == "10.0.0.2"
    # Without "*", a non-IP peer gives no address whatever the headers say.
    assert ip_of(PROXIES, None, headers) is None


def test_mapped_trusted_range_means_ipv4_range() -> None:
    config = ContextConfig(trusted_proxies=["::ffff:10.0.0.0/104"])
    assert ip_of(config, "10.0.0.2", {"x-forwarded-for": "1.2.3.4"}) == "1.2.3.4"


@pytest.mark.parametrize("peer", [None, "", "testclient", "unix:/tmp/sock", "1.2.3", "[::1"])
def test_unusable_peer_gives_no_ip(peer: str | None) -> None:
    assert ip_of(DEFAULT, peer) is None


def test_peer_with_port_or_zone() -> None:
    assert ip_of(DEFAULT, "134.122.17.144:443") == "134.122.17.144"
    assert ip_of(DEFAULT, "fe80::1%eth0") == "fe80::1"
    assert ip_of(DEFAULT, "2001:DB8:0::1") == "2001:db8::1"  # normalised


def test_ip_anonymize() -> None:
    config = ContextConfig(ip="anonymize")
    assert ip_of(config, "134.122.17.144") == "134.122.17.0"
    assert ip_of(config, "2001:db8:85a3:8d3:1319:8a2e:370:7348") == "2001:db8:85a3::"
    proxied = ContextConfig(ip="anonymize", trusted_proxies="10.0.0.0/8")
    assert ip_of(proxied, "10.0.0.2", {"x-forwarded-for": "134.122.17.144"}) == "134.122.17.0"


def test_ip_none() -> None:
    config = ContextConfig(ip="none", trusted_proxies=["10.0.0.0/8"])
    assert ip_of(config, "134.122.17.144") is None
    assert ip_of(config, "10.0.0.2", {"x-forwarded-for": "1.2.3.4"}) is None


def test_anonymize_ip_function() -> None:
    assert anonymize_ip("134.122.17.144") == "134.122.17.0"
    assert anonymize_ip("::ffff:1.2.3.4") == "1.2.3.0"
    assert anonymize_ip("2001:db8:1:2::3") == "2001:db8:1::"
    with pytest.raises(ValueError, match="not an IP address"):
        anonymize_ip("nope")


def test_long_forwarding_header_is_bounded_and_safe() -> None:
    hops = ", ".join(["10.1.1.1"] * 5000)
    assert ip_of(PROXIES, "10.0.0.2", {"x-forwarded-for": "1.2.3.4, " + hops}) == "10.1.1.1"
    junk = "x" * 100_000
    assert ip_of(PROXIES, "10.0.0.2", {"x-forwarded-for": junk}) == "10.0.0.2"


# --------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"ip": "partial"}, "'partial'"),
        ({"trusted_proxies": ["10.0.0.0/8", "10.0.0.0/33"]}, "'10.0.0.0/33'"),
        ({"trusted_proxies": ["proxy.internal"]}, "'proxy.internal'"),
        ({"trusted_proxies": "10.0.0.1, bogus"}, "'bogus'"),
        ({"scrub_params": ["to*ken"]}, "'to\\*ken'"),
        ({"scrub_params": ["**"]}, "'\\*\\*'"),
        ({"timezone_cookie": "tz cookie"}, "'tz cookie'"),
        ({"timezone_cookie": ""}, "''"),
        ({"timezone_header": "x:tz"}, "'x:tz'"),
    ],
)
def test_config_rejects_bad_values(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ContextConfig(**kwargs)  # type: ignore[arg-type]


def test_config_rejects_wrong_types() -> None:
    with pytest.raises(TypeError):
        ContextConfig(trusted_proxies=[42])  # type: ignore[list-item]
    with pytest.raises(TypeError):
        ContextConfig(scrub_params=[None])  # type: ignore[list-item]


def test_config_accepts_strings_and_ip_objects() -> None:
    config = ContextConfig(
        trusted_proxies=["10.0.0.1/8", ipaddress.ip_network("::1/128"), " 192.0.2.7 "]  # type: ignore[list-item]
    )
    assert config.trusted_proxies == ("10.0.0.0/8", "::1/128", "192.0.2.7/32")
    assert ContextConfig(trusted_proxies="10.0.0.0/8, *").trusted_proxies == ("*", "10.0.0.0/8")
    assert ContextConfig(timezone_header="X-TZ").timezone_header == "x-tz"
    assert ContextConfig().scrub_params == DEFAULT_SCRUB_PARAMS


def test_config_is_immutable_and_has_readable_repr() -> None:
    config = ContextConfig(trusted_proxies=["10.0.0.0/8"])
    with pytest.raises(AttributeError):
        config.ip = "none"
    with pytest.raises(AttributeError):
        del config.ip
    assert "10.0.0.0/8" in repr(config)
    assert "ip='full'" in repr(config)


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
