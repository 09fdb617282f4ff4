from __future__ import annotations

import logging

import pytest

from atrack_core import ATrackSdk, MemoryStorage, Options


def build(**kwargs: object) -> ATrackSdk:
    return ATrackSdk(Options("pub_test_1234", disabled=True, **kwargs))  # type: ignore[arg-type]


def test_defaults_match_the_spec() -> None:
    o = Options("pub_xxxxx")
    assert (o.geo, o.endpoint, o.timeout, o.storage, o.delivery) == (
        None,
        None,
        5.0,
        None,
        "background",
    )
    assert (o.max_queue_size, o.max_concurrency, o.max_retries, o.shutdown_timeout) == (
        50_000,
        128,
        5,
        5.0,
    )
    assert o.transport == "auto"
    assert (o.on_error, o.before_send, o.disabled, o.allow_insecure_http, o.http2) == (
        None,
        None,
        False,
        False,
        False,
    )


def test_base_url_default_and_geo_set_after_construction() -> None:
    assert build().base_url == "https://api.a-track.io"
    options = Options("pub_xxxxx", disabled=True)
    options.geo = "fra"  # the seed sets geo as an attribute
    assert ATrackSdk(options).base_url == "https://fra.api.a-track.io"


def test_default_storage_is_a_fresh_memory_storage() -> None:
    a, b = build(), build()
    assert isinstance(a.storage, MemoryStorage)
    assert a.storage is not b.storage


@pytest.mark.parametrize(
    "geo",
    [
        "FRA",
        "fra.evil.com",
        "evil.com/x",
        "-fra",
        "fra-",
        "",
        "a" * 64,
        "fr a",
        "fra\n",
        "fra:443",
        "fra@evil",
    ],
)
def test_geo_must_be_one_dns_label(geo: str) -> None:
    with pytest.raises(ValueError, match="geo") as info:
        build(geo=geo)
    assert repr(geo) in str(info.value)


def test_geo_max_length_label_is_fine() -> None:
    assert build(geo="a" * 63).base_url == f"https://{'a' * 63}.api.a-track.io"


@pytest.mark.parametrize(
    "endpoint",
    [
        "http://localhost:8787",
        "http://127.0.0.1:8787/",
        "http://127.5.6.7",
        "http://[::1]:9000",
        "http://LOCALHOST:8787",
        "http://127.255.255.254",
        "http://[::ffff:127.0.0.1]:8787",
        "https://proxy.example/atrack",
        "https://foo.localhost",
    ],
)
def test_accepted_endpoints(endpoint: str) -> None:
    assert build(endpoint=endpoint).base_url == endpoint.rstrip("/")


@pytest.mark.parametrize(
    "endpoint",
    [
        "http://api.example.com",
        "http://10.0.0.5:8080",
        "http://localhost.evil.com",
        "http://127.0.0.1.nip.io",
        # *.localhost is loopback only to resolvers that special-case it; this one
        # would ask DNS, in clear text, and send the key wherever the answer points.
        "http://foo.localhost",
        "http://foo.localhost:8787/atrack",
        "http://localhost.",
        "http://127.1",  # inet_aton shorthand: not an address literal to ipaddress
        "http://0.0.0.0:8787",
    ],
)
def test_plain_http_to_a_non_loopback_host_is_refused(endpoint: str) -> None:
    with pytest.raises(ValueError, match="clear text"):
        build(endpoint=endpoint)
    assert build(endpoint=endpoint, allow_insecure_http=True).base_url == endpoint


@pytest.mark.parametrize(
    "endpoint",
    [
        "ftp://example.com",
        "example.com",
        "https://",
        "https://ex ample.com",
        "https://example.com/?q=1",
        "https://user:pw@example.com",
        "https://example.com:99999",
        "https://example.com\r\nx: y",
    ],
)
def test_malformed_endpoints(endpoint: str) -> None:
    with pytest.raises(ValueError, match="endpoint"):
        build(endpoint=endpoint)


@pytest.mark.parametrize(
    "key",
    ["", "pub key", "pub\r\nx-evil: 1", "pub\tkey", "pub\x00", "clé_pub", "k" * 600],
)
def test_bad_public_keys(key: str) -> None:
    with pytest.raises(ValueError, match="public_key"):
        ATrackSdk(Options(key, disabled=True))


def test_public_key_must_be_a_string() -> None:
    with pytest.raises(TypeError, match="public_key"):
        ATrackSdk(Options(None, disabled=True))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("timeout", 0),
        ("timeout", -1.0),
        ("timeout", "5"),
        ("shutdown_timeout", 0),
        # A wait that overflows the thread waits of the exit flush (which then raised
        # OverflowError, and a SIGTERM left the process alive with status 1).
        ("shutdown_timeout", float("inf")),
        ("shutdown_timeout", 1e12),
        ("shutdown_timeout", float("nan")),
        ("timeout", float("inf")),
        ("max_queue_size", 0),
        ("max_queue_size", 1.5),
        ("max_concurrency", 0),
        ("max_retries", -1),
        ("max_retries", True),
        ("delivery", "async"),
    ],
)
def test_bad_numbers_and_modes(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        build(**{field: value})


def test_hooks_must_be_callable_and_storage_a_storage() -> None:
    with pytest.raises(TypeError, match="on_error"):
        build(on_error="print")
    with pytest.raises(TypeError, match="before_send"):
        build(before_send=42)
    with pytest.raises(TypeError, match="storage"):
        build(storage=object())
    with pytest.raises(TypeError, match="Options"):
        ATrackSdk("pub_xxxxx")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "endpoint",
    [
        "https://user:s3cret@proxy.example/atrack",
        "https://s3cret@proxy.example",
        "https://proxy.example/atrack?token=s3cret",
        "https://proxy.example/atrack#s3cret",
        "http://user:s3cret@example.com:99999",
        "https://user:s3cret@proxy.example/a b",
    ],
)
def test_an_endpoint_with_a_secret_is_refused_without_showing_it(endpoint: str) -> None:
    # A mistyped ATRACK_ENDPOINT (a proxy's credentials, a token in the query) was
    # echoed whole in the ValueError, and by the example apps' "A-Track disabled: ..."
    # WARNING, and repr(Options) showed it before the SDK refused it.
    options = Options("pub_live_abcdefgh_1234", endpoint=endpoint)
    assert "s3cret" not in repr(options)
    with pytest.raises(ValueError, match=r"endpoint 'https?://") as info:
        ATrackSdk(options)
    assert "s3cret" not in str(info.value)
    assert "proxy.example" in str(info.value) or "example.com" in str(info.value)


@pytest.mark.parametrize(
    "endpoint",
    [
        "https://proxy.example/\u00e4track",
        "https://b\u00fccher.example",
        "http://127.0.0.1:8787/\udcff",  # os.environ's reading of a byte that is no UTF-8
    ],
)
def test_an_endpoint_that_is_not_ascii_is_refused_when_the_sdk_is_built(endpoint: str) -> None:
    # It passed, and every call then failed in the sender (httpx: "url strings may not
    # include unicode characters", libcurl: UnicodeEncodeError), dropped one by one.
    with pytest.raises(ValueError, match="must be ASCII: percent-encode"):
        ATrackSdk(Options("pub_live_abcdefgh_1234", endpoint=endpoint))


def test_repr_never_shows_the_key() -> None:
    key = "pub_live_SECRETSECRET_9f3a"
    options = Options(key, disabled=True)
    sdk = ATrackSdk(options)
    for text in (repr(options), str(options), repr(sdk)):
        assert "SECRETSECRET" not in text
        assert "9f3a" in text


def test_a_short_key_is_not_shown_at_all() -> None:
    # Four characters of a five- to eight-character key would be most of it.
    for key in ("pub_a", "pub_abcd"):
        options = Options(key, disabled=True)
        for text in (repr(options), repr(ATrackSdk(options))):
            assert key[-4:] not in text, text
            assert "…" in text
    assert "…cdef" in repr(Options("pub_abcdef", disabled=True))


def test_bad_key_error_does_not_echo_the_key(caplog: pytest.LogCaptureFixture) -> None:
    key = "pub_live_SECRETSECRET 9f3a"
    with pytest.raises(ValueError) as info:
        ATrackSdk(Options(key, disabled=True))
    assert "SECRETSECRET" not in str(info.value)


def test_from_env_reads_the_documented_variables() -> None:
    env = {
        "ATRACK_PUBLIC_KEY": "pub_env_1",
        "ATRACK_GEO": "fra",
        "ATRACK_DISABLED": "true",
        "ATRACK_DELIVERY": "sync",
        "ATRACK_TRANSPORT": "HTTPX",
    }
    o = Options.from_env(env)
    assert (o.public_key, o.geo, o.disabled, o.delivery) == ("pub_env_1", "fra", True, "sync")
    assert o.transport == "httpx"
    o = Options.from_env({"ATRACK_PUBLIC_KEY": "k", "ATRACK_ENDPOINT": "http://127.0.0.1:1"})
    assert o.endpoint == "http://127.0.0.1:1" and o.disabled is False
    assert Options.from_env({"ATRACK_PUBLIC_KEY": "k"}, timeout=2.0).timeout == 2.0


def test_from_env_uses_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATRACK_PUBLIC_KEY", "pub_from_os")
    monkeypatch.delenv("ATRACK_DISABLED", raising=False)
    assert Options.from_env().public_key == "pub_from_os"


@pytest.mark.parametrize(
    ("transport", "error"), [("curly", ValueError), ("", ValueError), (42, TypeError)]
)
def test_transport_is_validated(transport: object, error: type[Exception]) -> None:
    with pytest.raises(error, match="transport"):
        build(transport=transport)


def test_from_env_allow_insecure_http() -> None:
    remote = {"ATRACK_PUBLIC_KEY": "k", "ATRACK_ENDPOINT": "http://collector:8787"}
    with pytest.raises(ValueError, match="ATRACK_ALLOW_INSECURE_HTTP") as refused:
        Options.from_env(remote).base_url()
    message = str(refused.value)
    assert "clear text" in message and "allow_insecure_http=True" in message
    assert "ALLOW_INSECURE_HTTP" in message.replace("ATRACK_ALLOW_INSECURE_HTTP", "")
    for word in ("1", "true", "YES", " on "):
        options = Options.from_env({**remote, "ATRACK_ALLOW_INSECURE_HTTP": word})
        assert options.allow_insecure_http is True
        assert options.base_url() == "http://collector:8787"
    for word in ("", "0", "false", "off"):
        options = Options.from_env({**remote, "ATRACK_ALLOW_INSECURE_HTTP": word})
        assert options.allow_insecure_http is False
    # A keyword argument wins over the environment.
    options = Options.from_env(
        {**remote, "ATRACK_ALLOW_INSECURE_HTTP": "1"}, allow_insecure_http=False
    )
    assert options.allow_insecure_http is False
    with pytest.raises(ValueError, match="ATRACK_ALLOW_INSECURE_HTTP must be"):
        Options.from_env({**remote, "ATRACK_ALLOW_INSECURE_HTTP": "please"})


def test_from_env_errors() -> None:
    with pytest.raises(ValueError, match="ATRACK_PUBLIC_KEY") as missing:
        Options.from_env({})
    # The message says what a test run does instead of setting a key.
    assert "ATRACK_DISABLED=1" in str(missing.value)
    assert "capture_calls" in str(missing.value)
    with pytest.raises(ValueError, match="ATRACK_DISABLED"):
        Options.from_env({"ATRACK_PUBLIC_KEY": "k", "ATRACK_DISABLED": "maybe"})
    # Disabled without a key is fine: nothing will be sent.
    assert Options.from_env({"ATRACK_DISABLED": "1"}).disabled is True


def test_context_manager_shuts_down(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, "atrack")
    with ATrackSdk(Options("pub_xxxxx", disabled=True)) as sdk:
        sdk.init()
    sdk.shutdown()  # idempotent
    assert sdk._closed
