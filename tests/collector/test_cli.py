"""The ``atrack`` command: in-process through ``main()`` and as a real subprocess."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from atrack_core import __version__
from atrack_core.cli import main, parse_attribute
from atrack_core.collector import Collector, run_in_thread

from .conftest import KEY, OTHER_KEY

ROOT = Path(__file__).resolve().parents[2]
ATRACK = Path(sys.executable).parent / "atrack"


@pytest.fixture(autouse=True)
def _no_atrack_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("ATRACK_PUBLIC_KEY", "ATRACK_ENDPOINT", "ATRACK_GEO"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def strict_collector() -> Iterator[Collector]:
    """A collector that accepts KEY only, as the hosted API accepts only real keys."""
    with run_in_thread(keys=[KEY]) as running:
        yield running


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# -- send-event, in process -------------------------------------------------------


def test_send_event_success(capsys: pytest.CaptureFixture[str], collector: Collector) -> None:
    code, out, err = run(
        capsys, "send-event", "signup", "--uuid", "user-7", "--key", KEY,
        "--endpoint", collector.url, "--attr", "plan=pro", "--attr", "seats=12",
        "--attr", "trial=false", "--attr", 'tags=["a","b"]',
    )  # fmt: skip
    assert (code, err) == (0, "")
    assert f"POST {collector.url}/event" in out
    assert KEY not in out
    assert "…abcd" in out
    printed = json.loads(out[out.index("{") : out.rindex("}") + 1])
    assert printed["event"] == "signup"
    assert printed["uuid"] == "user-7"
    [event] = collector.store.events()
    assert event["attributes"] == {"plan": "pro", "seats": 12, "trial": False, "tags": ["a", "b"]}
    assert event["attributes"] == printed["attributes"]
    assert event["timestamp"] == printed["timestamp"]
    assert out.rstrip().endswith("accepted")


def test_key_and_endpoint_from_the_environment(
    capsys: pytest.CaptureFixture[str], collector: Collector, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ATRACK_PUBLIC_KEY", OTHER_KEY)
    monkeypatch.setenv("ATRACK_ENDPOINT", collector.url)
    code, out, _ = run(capsys, "send-event", "ping", "--uuid", "env-user")
    assert code == 0
    assert f"POST {collector.url}/event" in out
    [call] = collector.store.calls()
    assert call["key"] == "pub_…zzzz"
    assert call["status"] == 200


def test_rejected_key_exits_1_with_status_and_body(
    capsys: pytest.CaptureFixture[str], strict_collector: Collector
) -> None:
    code, out, err = run(
        capsys, "send-event", "signup", "--uuid", "u", "--key", OTHER_KEY,
        "--endpoint", strict_collector.url,
    )  # fmt: skip
    assert code == 1
    assert "HTTP 401" in err
    assert "the public key was rejected" in err
    assert "is not accepted by this collector" in err  # the response body
    assert OTHER_KEY not in err + out
    [call] = strict_collector.store.calls()
    assert call["status"] == 401
    assert strict_collector.store.events() == []


def test_accepted_key_passes_the_strict_collector(
    capsys: pytest.CaptureFixture[str], strict_collector: Collector
) -> None:
    code, _, _ = run(
        capsys, "send-event", "signup", "--uuid", "u", "--key", KEY,
        "--endpoint", strict_collector.url,
    )  # fmt: skip
    assert code == 0
    assert len(strict_collector.store.events()) == 1


def test_unreachable_endpoint_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    started = time.monotonic()
    code, _, err = run(capsys, "send-event", "signup", "--uuid", "u", "--key", KEY,
                       "--endpoint", url)  # fmt: skip
    assert code == 1
    assert f"no answer from {url}" in err
    assert "ConnectError" in err
    # --retries defaults to 0: a check answers at once rather than backing off.
    assert time.monotonic() - started < 5


@pytest.mark.parametrize("command", ["inspect", "flush"])
def test_outbox_commands_refuse_a_missing_directory(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "var" / "atrack-outbox"  # a mistyped path, say
    key = ["--key", KEY] if command == "flush" else []
    code, out, err = run(capsys, "outbox", command, str(missing), *key)
    assert code == 2
    assert f"{missing} is not a directory" in err
    assert not (tmp_path / "var").exists()  # not created on the way
    assert out == ""


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["send-event", "", "--uuid", "u"], "event"),
        (["send-event", "x" * 256, "--uuid", "u"], "event"),
        (["send-event", "signup", "--uuid", ""], "uuid"),
        (["send-event", "signup", "--uuid", "bad\nuuid"], "uuid"),
        (["send-event", "sign\x00up", "--uuid", "u"], "event"),
    ],
)
def test_bad_input_exits_2_and_sends_nothing(
    capsys: pytest.CaptureFixture[str], collector: Collector, argv: list[str], fragment: str
) -> None:
    code, out, err = run(capsys, *argv, "--key", KEY, "--endpoint", collector.url)
    assert code == 2
    assert err.startswith("atrack: error:")
    assert fragment in err.lower()
    assert out == ""
    assert collector.store.calls() == []


def test_missing_key_exits_2(capsys: pytest.CaptureFixture[str], collector: Collector) -> None:
    code, _, err = run(capsys, "send-event", "signup", "--uuid", "u", "--endpoint", collector.url)
    assert code == 2
    assert "ATRACK_PUBLIC_KEY" in err
    assert collector.store.calls() == []


def test_plain_http_to_a_remote_host_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "send-event", "signup", "--uuid", "u", "--key", KEY,
                       "--endpoint", "http://collector.example")  # fmt: skip
    assert code == 2
    assert "--allow-insecure-http" in err


@pytest.mark.parametrize(
    "argv",
    [
        ["send-event", "signup"],  # no --uuid
        ["send-event", "signup", "--uuid", "u", "--attr", "novalue"],
        ["send-event", "signup", "--uuid", "u", "--attr", "=v"],
        ["send-event", "signup", "--uuid", "u", "--timeout", "0"],
        ["send-event", "signup", "--uuid", "u", "--retries", "-1"],
        ["collector", "--port", "70000"],
        ["collector", "--latency", "-1"],
        ["collector", "--latency", "nan"],
        [],
        ["unknown-command"],
    ],
)
def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert "usage: atrack" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("plan=pro", ("plan", "pro")),
        ("n=12", ("n", 12)),
        ("price=9.5", ("price", 9.5)),
        ("ok=true", ("ok", True)),
        ("none=null", ("none", None)),
        ('quoted="12"', ("quoted", "12")),
        ("list=[1, 2]", ("list", [1, 2])),
        ('obj={"a": 1}', ("obj", {"a": 1})),
        ("empty=", ("empty", "")),
        ("eq=a=b", ("eq", "a=b")),
        ("nan=NaN", ("nan", "NaN")),
        ("inf=Infinity", ("inf", "Infinity")),
        ("big=1e400", ("big", "1e400")),
        ("space=hello world", ("space", "hello world")),
    ],
)
def test_parse_attribute(text: str, expected: tuple[str, Any]) -> None:
    assert parse_attribute(text) == expected


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"atrack (a-track-sdk) {__version__}"


def test_help_names_both_commands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "collector" in out
    assert "send-event" in out


def test_collector_without_the_extra_names_it(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in [m for m in sys.modules if m.startswith("atrack_core.collector")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "starlette", None)
    code, _, err = run(capsys, "collector", "--port", "0")
    assert code == 1
    assert "pip install 'a-track-sdk[collector]'" in err


def test_collector_on_a_port_in_use_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code, out, err = run(capsys, "collector", "--port", str(port))
    assert code == 1
    assert f"cannot serve on 127.0.0.1 port {port}" in err
    assert "pick another port with --port" in err
    assert out == ""


def test_collector_with_an_unusable_database_exits_1(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    db = tmp_path / "missing-dir" / "db.sqlite3"
    code, _, err = run(capsys, "collector", "--port", "0", "--db", str(db))
    assert code == 1
    assert "cannot use the database" in err


# -- the installed script, for real -----------------------------------------------


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATRACK_")}
    env.update(extra)
    return env


@pytest.mark.slow
def test_installed_atrack_script_sends_an_event(collector: Collector) -> None:
    assert ATRACK.exists(), f"{ATRACK} is missing: pip install -e ."
    result = subprocess.run(
        [str(ATRACK), "send-event", "checkout", "--uuid", "script-user", "--attr", "total=99"],
        env=_env(ATRACK_PUBLIC_KEY=KEY, ATRACK_ENDPOINT=collector.url),
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert f"POST {collector.url}/event" in result.stdout
    [event] = collector.store.events()
    assert (event["event"], event["uuid"], event["attributes"]) == (
        "checkout", "script-user", {"total": 99},
    )  # fmt: skip


@pytest.mark.slow
def test_installed_atrack_script_reports_failure(strict_collector: Collector) -> None:
    result = subprocess.run(
        [str(ATRACK), "send-event", "checkout", "--uuid", "u"],
        env=_env(ATRACK_PUBLIC_KEY=OTHER_KEY, ATRACK_ENDPOINT=strict_collector.url),
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 1
    assert "HTTP 401" in result.stderr
    assert OTHER_KEY not in result.stderr + result.stdout


@pytest.mark.slow
def test_python_dash_m_shows_the_version() -> None:
    for module in ("atrack_core", "atrack_core.cli"):
        result = subprocess.run(
            [sys.executable, "-m", module, "--version"],
            cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == f"atrack (a-track-sdk) {__version__}"


@pytest.mark.slow
def test_atrack_collector_command_serves_and_keeps_data(tmp_path: Path) -> None:
    db = tmp_path / "collector.sqlite3"
    port = closed_port()
    url = f"http://127.0.0.1:{port}"
    for round_number in (1, 2):
        # The first run also answers to one more name (--allow-host); the second does not.
        extra = ["--allow-host", "Collector.Test"] if round_number == 1 else []
        process = subprocess.Popen(
            [str(ATRACK), "collector", "--port", str(port), "--db", str(db), *extra],
            env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            _wait_until_serving(url, process)
            with httpx.Client(base_url=url) as http:
                if round_number == 1:
                    response = http.post(
                        "/event",
                        headers={"x-a-track-key": KEY},
                        json={"sdkVersion": "0.1.0", "uuid": "cli", "event": "started",
                              "attributes": {}, "timestamp": "2026-01-01T00:00:00.000Z",
                              "context": {}},
                    )  # fmt: skip
                    assert response.status_code == 200
                events = http.get("/api/events").json()["events"]
                assert [e["event"] for e in events] == ["started"]
                named = http.get("/api/stats", headers={"host": f"collector.test:{port}"})
                assert named.status_code == (200 if round_number == 1 else 400)
                assert http.get("/api/stats", headers={"host": "evil.test"}).status_code == 400
        finally:
            process.send_signal(signal.SIGINT)
            out, err = process.communicate(timeout=30)
        assert process.returncode == 0, err
        assert f"A-Track collector on {url}" in out
        assert str(db) in out


def _wait_until_serving(url: str, process: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            httpx.get(f"{url}/api/stats", timeout=1)
            return
        except httpx.TransportError:
            if process.poll() is not None:
                raise AssertionError(f"collector exited: {process.communicate()}") from None
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
