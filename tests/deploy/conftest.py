"""Fixtures for the deployment tests: a private redis-server per test, and a real
gunicorn (or uvicorn) master in a subprocess whose output is kept for failure messages."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import httpx
import pytest

from tests.gunicorn_args import no_control_socket
from tests.redis_server import RedisServer, free_port

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def own_redis(tmp_path: Path, redis_server: RedisServer) -> Iterator[RedisServer]:
    """A private redis-server for one test (``redis_server`` decides skip or fail)."""
    server = RedisServer(tmp_path).start()
    try:
        yield server
    finally:
        server.stop()


class Server:
    """A gunicorn, uvicorn or other server (``kind="python -m waitress"``) master on a
    free loopback port; :meth:`terminate` sends SIGTERM and times the exit.
    :meth:`output` is everything it wrote (both streams)."""

    def __init__(
        self, args: Sequence[str], env: Mapping[str, str], log: Path, kind: str = "gunicorn"
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self.kind = kind
        if kind == "gunicorn":
            self.cmd = [
                sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{self.port}",
                "--log-level", "info", *no_control_socket(), *args,
            ]  # fmt: skip
        elif kind == "uvicorn":
            self.cmd = [
                sys.executable, "-m", "uvicorn", "--host", "127.0.0.1",
                "--port", str(self.port), "--log-level", "info", *args,
            ]  # fmt: skip
        elif kind.startswith("python -m "):
            # Any server run as a module; "{port}" in args is the port.
            self.cmd = [
                sys.executable, "-m", kind.removeprefix("python -m "),
                *(a.replace("{port}", str(self.port)) for a in args),
            ]  # fmt: skip
        else:
            raise ValueError(kind)
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("ATRACK_")}
        full_env.update({"PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1", **env})
        self._out = log.open("wb")
        # A session of its own: on a failed test, close() can stop the master and its
        # workers together (the tests themselves signal the master only).
        self.proc = subprocess.Popen(
            self.cmd,
            cwd=ROOT,
            env=full_env,
            stdout=self._out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.exit_seconds: float | None = None

    def output(self, tail: int = 6000) -> str:
        self._out.flush()
        text = self.log.read_text(errors="replace")
        return text[-tail:]

    def fail(self, message: str) -> None:
        command = " ".join(self.cmd[2:])
        pytest.fail(f"{message}\n--- {command} ---\n{self.output()}")

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Until ``/health`` answers 200 (a worker is serving)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.fail(f"{self.kind} exited with {self.proc.returncode} while starting")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            time.sleep(0.05)
        self.fail(f"{self.kind} did not answer on {self.url} within {timeout} s")

    def wait_log(self, text: str, count: int = 1, timeout: float = 30.0) -> None:
        """Until ``text`` appears ``count`` times in the output."""
        deadline = time.monotonic() + timeout
        while self.output(1_000_000).count(text) < count:
            if self.proc.poll() is not None:
                self.fail(f"{self.kind} exited with {self.proc.returncode} while starting")
            if time.monotonic() > deadline:
                self.fail(f"{text!r} not {count} times in the output within {timeout} s")
            time.sleep(0.05)

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM to the master, then wait for it to exit; returns the exit code."""
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.fail(f"{self.kind} did not exit within {timeout} s of SIGTERM")
        self.exit_seconds = time.monotonic() - started
        return code

    def close(self) -> None:
        """If the master still runs (a test failed before stopping it): SIGTERM to its
        process group (master and workers), SIGKILL after 10 s."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self._out.close()


StartServer = Callable[..., Server]


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[StartServer]:
    """A factory: ``start_server(args, env, kind="gunicorn")`` starts one; any still
    running at the end of the test is killed."""
    started: list[Server] = []

    def start(args: Sequence[str], env: Mapping[str, str], kind: str = "gunicorn") -> Server:
        server = Server(args, env, tmp_path / f"server-{len(started)}.log", kind)
        started.append(server)
        return server

    try:
        yield start
    finally:
        for server in started:
            server.close()
