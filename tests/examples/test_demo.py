"""`make demo` (the README's first command) runs end to end and its summary counts what
the scripted visit sent."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def demo_command() -> list[str]:
    venv = ROOT / ".venv"
    # `make demo` itself where this run uses the project's .venv (make test, CI);
    # elsewhere (tox) the same module, without letting make build a second venv.
    if (
        shutil.which("make")
        and (venv / ".installed").exists()
        and Path(sys.prefix).resolve() == venv.resolve()
    ):
        return ["make", "--no-print-directory", "demo"]
    return [sys.executable, "-m", "example_apps.demo"]


@pytest.mark.slow
def test_demo_once_finishes_and_counts_users_and_events() -> None:
    env = {**os.environ, "DEMO_ONCE": "1"}
    for name in ("ATRACK_PUBLIC_KEY", "ATRACK_ENDPOINT", "ATRACK_DISABLED", "ATRACK_REDIS_URL"):
        env.pop(name, None)
    proc = subprocess.run(
        demo_command(),
        check=False,
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    # 4 visitors (one logs in as a known CRM user: 5 users); 4 landings, 2 signups,
    # 1 login, 4 orders.
    assert re.search(r"users received:\s+5\b", out), out
    # The fifth is named where the visit is listed, not left for the reader to guess.
    linus = r"Linus +from google +uuid [0-9a-f-]{36}, then logged in as crm-user-42\n"
    assert re.search(linus, out), out
    assert re.search(r"events received:\s+11 \(tracked 11\)", out), out
    assert re.search(r"order_created\s+4\b", out), out
    assert re.search(r"calls: /init 5, /attributes 2, /event 11; rejected 0", out), out
    [stats] = [line for line in out.splitlines() if line.startswith("SDK stats:")]
    assert "'sent': 18, 'failed': 0" in stats, stats
    assert "outbox_" not in stats, stats  # counts that trail the deliveries
    assert re.search(r"Inspector: http://127\.0\.0\.1:\d+/", out), out


def test_demo_says_why_a_port_changed(capsys: pytest.CaptureFixture[str]) -> None:
    from atrack_core.collector import run_in_thread
    from example_apps.demo import _port_or_free

    # Taken by a collector (a demo or `atrack collector` still running): named as such.
    with run_in_thread() as collector:
        taken = collector.port
        other = _port_or_free(taken, "collector")
        out = capsys.readouterr().out
    assert other != taken
    assert f"port {taken} is taken (an A-Track collector runs there" in out
    assert f"the collector uses port {other} instead" in out

    # Taken by something else.
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        other = _port_or_free(taken, "example app")
        out = capsys.readouterr().out
    assert other != taken
    assert f"port {taken} is taken (another program listens there" in out
    assert f"the example app uses port {other} instead" in out

    # Free: kept, and nothing said.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free = probe.getsockname()[1]
    assert _port_or_free(free, "collector") == free
    assert capsys.readouterr().out == ""
