"""One test per system check id, plus the clean case."""

from __future__ import annotations

from typing import Any

import pytest
from django.conf import settings
from django.core.checks import run_checks
from django.test import override_settings

from atrack_integrations.django.checks import check_settings

AUTH = "django.contrib.auth.middleware.AuthenticationMiddleware"
OURS = "atrack_integrations.django.ATrackMiddleware"
SESSIONS = "django.contrib.sessions.middleware.SessionMiddleware"


def ids(**overrides: Any) -> list[str]:
    with override_settings(**overrides):
        return [message.id for message in check_settings()]


@pytest.fixture(autouse=True)
def _no_key_in_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ATRACK_PUBLIC_KEY", raising=False)
    monkeypatch.delenv("ATRACK_DISABLED", raising=False)


def test_clean_settings_pass() -> None:
    assert ids(MIDDLEWARE=[SESSIONS, AUTH, OURS]) == []


def test_registered_by_the_app() -> None:
    # The test settings install the app: its ready() registered the check.
    assert [m.id for m in run_checks() if m.id.startswith("atrack.")] == []


def test_e001_missing_key() -> None:
    assert ids(ATRACK={"ENDPOINT": "http://127.0.0.1:9"}) == ["atrack.E001"]
    assert ids(ATRACK={"PUBLIC_KEY": ""}) == ["atrack.E001"]


def test_e001_satisfied_by_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATRACK_PUBLIC_KEY", "pub_env_key_5678")
    assert ids(ATRACK={"ENDPOINT": "http://127.0.0.1:9"}) == []
    monkeypatch.delenv("ATRACK_PUBLIC_KEY")
    monkeypatch.setenv("ATRACK_DISABLED", "1")
    assert ids(ATRACK={}) == []


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        ({"COOKIE_NAME": "bad name"}, "cookie_name"),
        ({"INIT": "sometimes"}, "init"),
        ({"IP": "partial"}, "ip"),
        ({"TRUSTED_PROXIES": ["not-an-ip"]}, "trusted_proxies"),
        ({"IDENTIFY": "no.such.module.hook"}, "IDENTIFY"),
        ({"COOKIE_MAXAGE": 10}, "COOKIE_MAXAGE"),
        ({"GEO": "Not A Label", "ENDPOINT": None}, "geo"),
        ({"ENDPOINT": "http://shop.example"}, "endpoint"),
    ],
)
def test_e002_bad_values(extra: dict[str, Any], fragment: str) -> None:
    with override_settings(ATRACK={**settings.ATRACK, **extra}):
        messages = check_settings()
    assert [m.id for m in messages] == ["atrack.E002"]
    assert fragment in messages[0].msg


def test_allow_insecure_http_setting_admits_a_plain_http_collector_by_name() -> None:
    remote = {**settings.ATRACK, "ENDPOINT": "http://collector:8787"}
    with override_settings(ATRACK=remote):
        [refused] = check_settings()
    assert "ALLOW_INSECURE_HTTP" in refused.msg
    with override_settings(ATRACK={**remote, "ALLOW_INSECURE_HTTP": True}):
        assert check_settings() == []
    with override_settings(ATRACK={**remote, "ALLOW_INSECURE_HTTP": "maybe"}):
        [bad] = check_settings()
    assert "allow_insecure_http" in bad.msg


def test_e002_not_a_dict() -> None:
    assert ids(ATRACK=["PUBLIC_KEY"]) == ["atrack.E002"]


def test_e002_sdk_that_is_not_an_sdk() -> None:
    with override_settings(ATRACK={"SDK": "tests.integrations.django.testapp.identify"}):
        messages = check_settings()
    assert [m.id for m in messages] == ["atrack.E002"]
    assert "ATrackSdk" in messages[0].msg


def test_w001_identify_before_authentication_middleware() -> None:
    assert ids(MIDDLEWARE=[SESSIONS, OURS, AUTH]) == ["atrack.W001"]
    # Without an identify hook the order does not matter.
    no_hook = {k: v for k, v in settings.ATRACK.items() if k != "IDENTIFY"}
    assert ids(MIDDLEWARE=[SESSIONS, OURS, AUTH], ATRACK=no_hook) == []


def test_w002_middleware_missing() -> None:
    assert ids(MIDDLEWARE=[SESSIONS, AUTH]) == ["atrack.W002"]
    # The long path of the class counts as installed too.
    long_path = "atrack_integrations.django.middleware.ATrackMiddleware"
    assert ids(MIDDLEWARE=[SESSIONS, AUTH, long_path]) == []
