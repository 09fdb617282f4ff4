"""A collector on another host (a docker-compose network): ``--host 0.0.0.0`` prints
endpoints the SDK accepts, and plain http to a non-loopback name needs
``ATRACK_ALLOW_INSECURE_HTTP``.

The "other host" is a name (``collector``) that a loopback proxy resolves to 127.0.0.1,
as a compose network's DNS would: the SDK connects through ``HTTP_PROXY`` and sends
``Host: collector:PORT``, which the collector answers only when told ``--allow-host``.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from atrack_core import ATrackSdk, EventPayload, Options
from atrack_core.cli import collector_banner

from ..proxy import LoopbackProxy
from .conftest import KEY

ATRACK = Path(sys.executable).parent / "atrack"
_EXPORT = re.compile(r"export ((?:ATRACK_[A-Z_]+=\S+ ?)+)")
README = Path(__file__).parents[2] / "README.md"
ANY = {"ATRACK_PUBLIC_KEY": "pub_dev"}


def _exports(lines: list[str]) -> list[dict[str, str]]:
    """Each ``export ...`` the banner suggests, as an environment."""
    found = []
    for line in lines:
        match = _EXPORT.search(line)
        if match and "NAME" not in match.group(1):
            found.append(dict(pair.split("=", 1) for pair in match.group(1).split()))
    return found


@contextmanager
def _collector(*args: str, last: str) -> Iterator[tuple[str, list[str]]]:
    """``atrack collector --port 0 ARGS``: (port, banner lines up to the one holding
    ``last``), in an environment without ``ATRACK_*``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATRACK_")}
    process = subprocess.Popen(
        [str(ATRACK), "collector", "--port", "0", *args],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert process.stdout is not None
    lines: list[str] = []
    try:
        # The banner is printed once the socket listens.
        for line in process.stdout:
            lines.append(line.rstrip("\n"))
            if last in line:
                break
        match = re.search(r"port (\d+)|:(\d+)$", lines[0]) if lines else None
        assert match, f"no banner: {lines} {process.poll()}"
        yield match.group(1) or match.group(2), lines
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("ATRACK_") or name.lower().endswith("_proxy"):
            monkeypatch.delenv(name)


# -- the banner ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "allowed", "expected"),
    [
        ("127.0.0.1", [], [{**ANY, "ATRACK_ENDPOINT": "http://127.0.0.1:8787"}]),
        ("0.0.0.0", [], [{**ANY, "ATRACK_ENDPOINT": "http://127.0.0.1:8787"}]),
        ("::", [], [{**ANY, "ATRACK_ENDPOINT": "http://[::1]:8787"}]),
        (
            "0.0.0.0",
            ["collector", "atrack.internal"],
            [
                {**ANY, "ATRACK_ENDPOINT": "http://127.0.0.1:8787"},
                {
                    **ANY,
                    "ATRACK_ENDPOINT": "http://collector:8787",
                    "ATRACK_ALLOW_INSECURE_HTTP": "1",
                },
                {
                    **ANY,
                    "ATRACK_ENDPOINT": "http://atrack.internal:8787",
                    "ATRACK_ALLOW_INSECURE_HTTP": "1",
                },
            ],
        ),
        (
            "10.1.2.3",
            [],
            [{**ANY, "ATRACK_ENDPOINT": "http://10.1.2.3:8787", "ATRACK_ALLOW_INSECURE_HTTP": "1"}],
        ),
    ],
)
def test_every_endpoint_the_banner_suggests_is_accepted_by_the_sdk(
    host: str, allowed: list[str], expected: list[dict[str, str]]
) -> None:
    lines = collector_banner(host, 8787, None, allowed)
    suggested = _exports(lines)
    assert suggested == expected
    for env in suggested:
        # The line alone is enough: no key or other variable has to come from elsewhere.
        options = Options.from_env(env)
        assert options.base_url() == env["ATRACK_ENDPOINT"]
        if "ATRACK_ALLOW_INSECURE_HTTP" in env:
            # Without the variable the same endpoint is refused, naming it.
            bare = Options.from_env({**ANY, "ATRACK_ENDPOINT": env["ATRACK_ENDPOINT"]})
            with pytest.raises(ValueError, match="ATRACK_ALLOW_INSECURE_HTTP"):
                bare.base_url()
    # A wildcard is never offered as an address to connect to.
    assert not any("0.0.0.0:" in line or "[::]:" in line for line in lines)


def test_wildcard_banner_without_allow_host_says_how_to_reach_it_from_elsewhere() -> None:
    text = "\n".join(collector_banner("0.0.0.0", 8787, None, []))
    assert "--allow-host NAME" in text
    assert (
        "export ATRACK_PUBLIC_KEY=pub_dev ATRACK_ENDPOINT=http://NAME:8787 "
        "ATRACK_ALLOW_INSECURE_HTTP=1" in text
    )
    assert "no authentication" in text


def test_the_default_banner_exports_what_the_readme_quickstarts_use() -> None:
    (try_line,) = [line for line in collector_banner("127.0.0.1", 8787, None) if "try:" in line]
    export = try_line.split("try:", 1)[1].strip()
    assert export == "export ATRACK_PUBLIC_KEY=pub_dev ATRACK_ENDPOINT=http://127.0.0.1:8787"
    assert export in README.read_text(encoding="utf-8")


@pytest.mark.parametrize("host", ["127.0.0.1", "0.0.0.0", "10.1.2.3"])
def test_with_accept_key_the_banner_names_the_keys_masked_and_exports_none(host: str) -> None:
    keys = ["pub_live_4f8a9b2c7d1e", "pub_live_0a1b2c3d9999", "pub_live_4f8a9b2c7d1e"]
    lines = collector_banner(host, 8787, None, ["collector"], keys)
    text = "\n".join(lines)
    assert not any(key in text or key[4:] in text for key in keys)
    (key_line,) = [line for line in lines if line.startswith("  key:")]
    assert "(…7d1e, …9999)" in key_line
    assert "set ATRACK_PUBLIC_KEY to one of them" in key_line
    # Any other key would be answered 401, so no line suggests one.
    assert "ATRACK_PUBLIC_KEY=" not in text
    assert _exports(lines)


# -- a real collector on every interface, reached by a name ------------------------------


@pytest.fixture
def wildcard_collector() -> Iterator[tuple[str, list[str]]]:
    """``atrack collector --host 0.0.0.0 --allow-host collector``: (port, banner lines)."""
    # Its last line is the warning.
    with _collector("--host", "0.0.0.0", "--allow-host", "collector", last="warning:") as found:
        yield found


def _events(port: str) -> list[str]:
    answer = httpx.get(f"http://127.0.0.1:{port}/api/events", timeout=5, trust_env=False)
    return [event["event"] for event in answer.json()["events"]]


def _wait_for(port: str, names: list[str]) -> list[str]:
    deadline = time.monotonic() + 10
    while (seen := _events(port)) != names and time.monotonic() < deadline:
        time.sleep(0.05)
    return seen


@pytest.mark.slow
@pytest.mark.usefixtures("clean_env")
def test_wildcard_collector_serves_the_endpoints_its_banner_prints(
    wildcard_collector: tuple[str, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    port, lines = wildcard_collector
    local, remote = _exports(lines)
    assert local == {**ANY, "ATRACK_ENDPOINT": f"http://127.0.0.1:{port}"}
    assert remote == {
        **ANY,
        "ATRACK_ENDPOINT": f"http://collector:{port}",
        "ATRACK_ALLOW_INSECURE_HTTP": "1",
    }

    # This machine: the loopback endpoint, as printed.
    with ATrackSdk(Options.from_env(local)) as sdk:
        sdk.track(EventPayload(event="from_this_machine", uuid="u-local"))
        assert sdk.flush(10) is True
    assert _wait_for(port, ["from_this_machine"]) == ["from_this_machine"]

    # Another host of the network: by name, plain http. Refused without the option,
    # with an error that names it...
    with pytest.raises(ValueError, match="ATRACK_ALLOW_INSECURE_HTTP") as refused:
        ATrackSdk(Options.from_env({**ANY, "ATRACK_ENDPOINT": remote["ATRACK_ENDPOINT"]}))
    assert "clear text" in str(refused.value)

    # ...accepted with it, and the collector answers the name given with --allow-host.
    with LoopbackProxy(names={"collector": "127.0.0.1"}) as proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        monkeypatch.setenv("http_proxy", proxy.url)
        with ATrackSdk(Options.from_env(remote)) as sdk:
            assert sdk.stats()["failed"] == 0
            sdk.track(EventPayload(event="from_another_host", uuid="u-remote"))
            assert sdk.flush(10) is True
            assert sdk.stats()["failed"] == 0
        assert proxy.forwarded == [f"http://collector:{port}/event"]
    seen = _wait_for(port, ["from_another_host", "from_this_machine"])
    assert seen == ["from_another_host", "from_this_machine"]

    # A name the collector was not told about is refused (DNS rebinding guard).
    stranger = httpx.get(
        f"http://127.0.0.1:{port}/api/stats",
        headers={"host": f"elsewhere:{port}"},
        timeout=5,
        trust_env=False,
    )
    assert stranger.status_code == 400


@pytest.mark.slow
@pytest.mark.usefixtures("clean_env")
def test_accept_key_collector_banner_hides_the_key_it_answers() -> None:
    with _collector("--accept-key", KEY, last="key:") as (port, lines):
        text = "\n".join(lines)
        assert KEY not in text
        assert KEY[4:] not in text
        assert f"(…{KEY[-4:]})" in lines[-1]
        (env,) = _exports(lines)
        assert env == {"ATRACK_ENDPOINT": f"http://127.0.0.1:{port}"}
        # The banner's endpoint with the accepted key is delivered...
        with ATrackSdk(Options.from_env({"ATRACK_PUBLIC_KEY": KEY, **env})) as sdk:
            sdk.track(EventPayload(event="with_the_accepted_key", uuid="u-1"))
            assert sdk.flush(10) is True
            assert sdk.stats()["failed"] == 0
        assert _wait_for(port, ["with_the_accepted_key"]) == ["with_the_accepted_key"]
        # ...and the key a default banner suggests is answered 401, as printed.
        with ATrackSdk(Options.from_env({**ANY, **env})) as sdk:
            sdk.track(EventPayload(event="with_pub_dev", uuid="u-2"))
            sdk.flush(10)
            assert sdk.stats()["failed"] == 1
