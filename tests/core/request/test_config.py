"""ContextConfig: validation, immutability, repr."""

from __future__ import annotations

import ipaddress

import pytest

from atrack_core._request import (
    DEFAULT_SCRUB_PARAMS,
    ContextConfig,
)

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
