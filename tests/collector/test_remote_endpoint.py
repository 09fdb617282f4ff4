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
from pathlib import Path

import httpx
import pytest

from atrack_core import ATrackSdk, EventPayload, Options
from atrack_core.cli import collector_banner

from ..proxy import LoopbackProxy
from .conftest import KEY

ATRACK = Path(sys.executable).parent / "atrack"
_EXPORT = re.compile(r"export (ATRACK_ENDPOINT=\S+(?: ATRACK_ALLOW_INSECURE_HTTP=1)?)")


def _exports(lines: list[str]) -> list[dict[str, str]]:
    """Each ``export ...`` the banner suggests, as an environment."""
    found = []
    for line in lines:
        match = _EXPORT.search(line)
        if match and "NAME" not in match.group(1):
            found.append(dict(pair.split("=", 1) for pair in match.group(1).split()))
    return found


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("ATRACK_") or name.lower().endswith("_proxy"):
            monkeypatch.delenv(name)


# -- the banner ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "allowed", "expected"),
    [
        ("127.0.0.1", [], [{"ATRACK_ENDPOINT": "http://127.0.0.1:8787"}]),
        ("0.0.0.0", [], [{"ATRACK_ENDPOINT": "http://127.0.0.1:8787"}]),
        ("::", [], [{"ATRACK_ENDPOINT": "http://[::1]:8787"}]),
        (
            "0.0.0.0",
            ["collector", "atrack.internal"],
            [
                {"ATRACK_ENDPOINT": "http://127.0.0.1:8787"},
                {"ATRACK_ENDPOINT": "http://collector:8787", "ATRACK_ALLOW_INSECURE_HTTP": "1"},
                {
                    "ATRACK_ENDPOINT": "http://atrack.internal:8787",
                    "ATRACK_ALLOW_INSECURE_HTTP": "1",
                },
            ],
        ),
        (
            "10.1.2.3",
            [],
            [{"ATRACK_ENDPOINT": "http://10.1.2.3:8787", "ATRACK_ALLOW_INSECURE_HTTP": "1"}],
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
        options = Options.from_env({"ATRACK_PUBLIC_KEY": KEY, **env})
        assert options.base_url() == env["ATRACK_ENDPOINT"]
        if "ATRACK_ALLOW_INSECURE_HTTP" in env:
            # Without the variable the same endpoint is refused, naming it.
            bare = Options.from_env(
                {"ATRACK_PUBLIC_KEY": KEY, "ATRACK_ENDPOINT": env["ATRACK_ENDPOINT"]}
            )
            with pytest.raises(ValueError, match="ATRACK_ALLOW_INSECURE_HTTP"):
                bare.base_url()
    # A wildcard is never offered as an address to connect to.
    assert not any("0.0.0.0:" in line or "[::]:" in line for line in lines)


def test_wildcard_banner_without_allow_host_says_how_to_reach_it_from_elsewhere() -> None:
    text = "\n".join(collector_banner("0.0.0.0", 8787, None, []))
    assert "--allow-host NAME" in text
    assert "ATRACK_ENDPOINT=http://NAME:8787 ATRACK_ALLOW_INSECURE_HTTP=1" in text
    assert "no authentication" in text


# -- a real collector on every interface, reached by a name ------------------------------


@pytest.fixture
def wildcard_collector() -> Iterator[tuple[str, list[str]]]:
    """``atrack collector --host 0.0.0.0 --allow-host collector``: (port, banner lines)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATRACK_")}
    process = subprocess.Popen(
        [str(ATRACK), "collector", "--host", "0.0.0.0", "--port", "0", "--allow-host", "collector"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert process.stdout is not None
    lines: list[str] = []
    try:
        # The banner is printed once the socket listens; its last line is the warning.
        for line in process.stdout:
            lines.append(line.rstrip("\n"))
            if "warning:" in line:
                break
        match = re.search(r"port (\d+)", lines[0]) if lines else None
        assert match, f"no banner: {lines} {process.poll()}"
        yield match.group(1), lines
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()


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
    assert local == {"ATRACK_ENDPOINT": f"http://127.0.0.1:{port}"}
    assert remote == {
        "ATRACK_ENDPOINT": f"http://collector:{port}",
        "ATRACK_ALLOW_INSECURE_HTTP": "1",
    }

    # This machine: the loopback endpoint, as printed.
    with ATrackSdk(Options.from_env({"ATRACK_PUBLIC_KEY": KEY, **local})) as sdk:
        sdk.track(EventPayload(event="from_this_machine", uuid="u-local"))
        assert sdk.flush(10) is True
    assert _wait_for(port, ["from_this_machine"]) == ["from_this_machine"]

    # Another host of the network: by name, plain http. Refused without the option,
    # with an error that names it...
    with pytest.raises(ValueError, match="ATRACK_ALLOW_INSECURE_HTTP") as refused:
        ATrackSdk(
            Options.from_env(
                {"ATRACK_PUBLIC_KEY": KEY, "ATRACK_ENDPOINT": remote["ATRACK_ENDPOINT"]}
            )
        )
    assert "clear text" in str(refused.value)

    # ...accepted with it, and the collector answers the name given with --allow-host.
    with LoopbackProxy(names={"collector": "127.0.0.1"}) as proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        monkeypatch.setenv("http_proxy", proxy.url)
        with ATrackSdk(Options.from_env({"ATRACK_PUBLIC_KEY": KEY, **remote})) as sdk:
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
