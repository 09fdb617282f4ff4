"""The README's quickstarts, run as a new user would: each code block copied verbatim
into a fresh directory, each run command started as written (only the port changed, so
tests can run side by side), each ``curl`` sent, against a real collector; then what
reached the collector is checked.

Only the subset of shell the README uses is understood (``pip install``, one server
command, ``curl [-X METHOD] URL``, ``VAR=value command``): a README line outside it fails
here, so the page cannot drift into something this test no longer runs.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from importlib.metadata import metadata
from pathlib import Path
from typing import Any

import httpx
import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

from atrack_core.collector import Collector, run_in_thread

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text(encoding="utf-8")
BIN = Path(sys.executable).parent
_FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.DOTALL | re.MULTILINE)
_DEFAULT_PORTS = (":8000", ":5000")


def section(title: str) -> str:
    """The text of the README section whose ``## `` heading starts with ``title``."""
    parts = re.split(r"^## ", README, flags=re.MULTILINE)
    [found] = [part for part in parts if part.startswith(title)]
    return found


def blocks(title: str, lang: str) -> list[str]:
    return [code for kind, code in _FENCE.findall(section(title)) if kind == lang]


def shell_blocks(title: str) -> list[list[str]]:
    """The section's ``sh`` blocks, each as its command lines (comments dropped)."""
    found = []
    for code in blocks(title, "sh"):
        lines = [raw.split("  #", 1)[0].strip() for raw in code.splitlines()]
        found.append([line for line in lines if line])
    return found


def shell_lines(title: str) -> list[str]:
    return [line for block in shell_blocks(title) for line in block]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def user_env(collector: Collector, **extra: str) -> dict[str, str]:
    """The environment of a shell where the README's set-up block ran: its ``export``
    line, pointed at this test's collector; the venv's scripts first on PATH."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATRACK_")}
    [export] = [line for line in shell_lines("Install") if line.startswith("export ")]
    for pair in shlex.split(export)[1:]:
        name, _, value = pair.partition("=")
        env[name] = value.replace("http://127.0.0.1:8787", collector.url)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.pop("PYTHONPATH", None)
    env.update(extra)
    return env


@pytest.fixture
def collector() -> Iterator[Collector]:
    with run_in_thread() as running:
        yield running


def wait_for_events(collector: Collector, count: int) -> list[dict[str, object]]:
    deadline = time.monotonic() + 15
    while len(events := collector.store.events()) < count and time.monotonic() < deadline:
        time.sleep(0.05)
    return list(reversed(events))


def check_pip_line(line: str) -> None:
    """``pip install "a-track-sdk[extra]" server``: the extra exists and every package
    named is installed here, so the commands after it work as written."""
    words = shlex.split(line)
    assert words[:2] == ["pip", "install"], line
    extras = set(metadata("a-track-sdk").get_all("Provides-Extra") or ())
    for word in words[2:]:
        name, _, extra = word.partition("[")
        if name == "a-track-sdk":
            assert not extra or extra.rstrip("]") in extras, line
        else:
            assert (BIN / name).exists(), f"{line}: {name} is not installed in {BIN}"


def server_command(line: str, port: int) -> list[str]:
    """The README's run command with this test's port."""
    words = shlex.split(line)
    if words[0] == "uvicorn":
        return [str(BIN / "uvicorn"), *words[1:], "--port", str(port)]
    if words[0] == "gunicorn":
        return [str(BIN / "gunicorn"), *words[1:], "--bind", f"127.0.0.1:{port}"]
    if words[0] == "flask":
        return [str(BIN / "flask"), *words[1:], "--port", str(port)]
    if words[:3] == ["python", "manage.py", "runserver"]:
        return [sys.executable, *words[1:], f"127.0.0.1:{port}", "--noreload"]
    raise AssertionError(f"not a run command this test knows: {line!r}")


def curl(line: str, port: int, headers: dict[str, str] | None = None) -> httpx.Response:
    words = shlex.split(line)
    assert words[0] == "curl", line
    method, rest = "GET", words[1:]
    if rest[:1] == ["-X"]:
        method, rest = rest[1], rest[2:]
    [url] = rest
    for default in _DEFAULT_PORTS:
        url = url.replace(default, f":{port}")
    return httpx.request(method, url, headers=headers, timeout=10, trust_env=False)


def wait_listening(port: int, process: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 30
    while True:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        if process.poll() is not None:
            out, err = process.communicate()
            raise AssertionError(f"the server exited ({process.returncode}):\n{out}\n{err}")
        assert time.monotonic() < deadline, "the server did not listen within 30 s"
        time.sleep(0.05)


def run_quickstart(
    title: str,
    cwd: Path,
    collector: Collector,
    lines: list[str] | None = None,
    headers: dict[str, str] | None = None,
) -> list[httpx.Response]:
    """Run the section's shell lines (default: all of them): check its ``pip install``,
    start its server, send its ``curl`` lines (with ``headers``, as a browser would add
    its cookies); return the answers."""
    port = free_port()
    lines = shell_lines(title) if lines is None else lines
    answers = []
    process: subprocess.Popen[str] | None = None
    try:
        for line in lines:
            if line.startswith("pip "):
                check_pip_line(line)
            elif line.startswith("curl "):
                assert process is not None, f"curl before a server in {title!r}"
                answers.append(curl(line, port, headers))
            else:
                assert process is None, f"two run commands in {title!r}: {line!r}"
                process = subprocess.Popen(
                    server_command(line, port), cwd=cwd, env=user_env(collector),
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                )  # fmt: skip
                wait_listening(port, process)
        assert process is not None, f"no run command in {title!r}"
    finally:
        if process is not None:
            process.send_signal(signal.SIGINT)
            try:
                _, err = process.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                _, err = process.communicate()
            assert "Traceback" not in err, err
    for answer in answers:
        assert answer.status_code < 300, (answer.request.url, answer.status_code, answer.text)
    return answers


def write_app(title: str, directory: Path) -> None:
    [code] = blocks(title, "python")
    (directory / "app.py").write_text(code)


# -- the quickstarts ---------------------------------------------------------------------


@pytest.mark.slow
def test_plain_python_quickstart(collector: Collector, tmp_path: Path) -> None:
    script = tmp_path / "quickstart.py"
    script.write_text("\n".join(blocks("Quickstart: plain Python", "python")))
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=user_env(collector),
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    # Everything was delivered at once: no exit wait on an API that is not there.
    assert time.monotonic() - started < 8
    # One user's events go out concurrently: the collector may store them in any order.
    events = sorted((e["uuid"], e["event"]) for e in wait_for_events(collector, 3))
    assert events == [
        ("server-user-42", "job_processed"),  # init() without a uuid: the current user
        ("server-user-42", "order_created"),
        ("server-user-42", "order_created"),
    ]
    users = {u["uuid"]: u for u in collector.store.users()}
    assert set(users) == {"server-user-42", "crm-user-42"}
    assert users["server-user-42"]["attributes"] == {"plan": "business", "seats": 12}
    assert users["crm-user-42"]["context"]["url"] == "/pricing?source=google"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("title", "expected"),
    [
        ("Quickstart: FastAPI", [("landing_viewed", {"source": "readme"})]),
        ("Quickstart: Starlette", [("landing_viewed", {"source": "readme"})]),
        ("Quickstart: Flask", [("order_created", {"amount": 42.5})]),
        ("Quickstart: any WSGI app", [("landing_viewed", {})]),
    ],
)
def test_framework_quickstart(
    title: str, expected: list[tuple[str, dict[str, object]]], collector: Collector, tmp_path: Path
) -> None:
    write_app(title, tmp_path)
    answers = run_quickstart(title, tmp_path, collector)
    assert answers
    events = wait_for_events(collector, len(expected))
    assert [(e["event"], e["attributes"]) for e in events] == expected
    # The request's context came along, and the visitor got the cookie.
    assert all(str(e["context"]["url"]).startswith("/") for e in events)  # type: ignore[index]
    assert "atrack_uuid=" in answers[0].headers.get("set-cookie", "")
    if title.endswith("FastAPI"):
        [user] = [u for u in collector.store.users() if u["attributes"]]
        assert user["attributes"] == {"plan": "pro"}


@pytest.mark.slow
def test_django_quickstart(collector: Collector, tmp_path: Path) -> None:
    setup, run = shell_blocks("Quickstart: Django")
    pip, startproject, cd = setup
    check_pip_line(pip)
    assert startproject == "django-admin startproject mysite", startproject
    subprocess.run(
        [str(BIN / "django-admin"), *shlex.split(startproject)[1:]], cwd=tmp_path, check=True,
        env=user_env(collector),
    )  # fmt: skip
    assert cd == "cd mysite", cd
    project = tmp_path / "mysite"
    settings, urls = blocks("Quickstart: Django", "python")
    text = section("Quickstart: Django")
    assert "to the end of `mysite/settings.py`" in text and "make `mysite/urls.py`" in text
    with (project / "mysite" / "settings.py").open("a") as file:
        file.write("\n" + settings)
    (project / "mysite" / "urls.py").write_text(urls)
    migrate, *run = run
    assert migrate == "python manage.py migrate", migrate
    subprocess.run(
        [sys.executable, *shlex.split(migrate)[1:]], cwd=project, check=True,
        env=user_env(collector), capture_output=True,
    )  # fmt: skip
    # A browser that has been to another Django app on 127.0.0.1:8000 sends its session
    # cookie: IDENTIFY reads request.user, which looks the session up in the database.
    # Without the migrate line that failed on every request (a logged traceback).
    stale_session = {"Cookie": "sessionid=" + "0" * 32}
    run_quickstart("Quickstart: Django", project, collector, run, stale_session)
    events = wait_for_events(collector, 2)
    # Two visitors (curl keeps no cookie): their events are not ordered between them.
    assert sorted((e["event"], e["attributes"]) for e in events) == [
        ("landing_viewed", {"source": "readme"}),
        ("pricing_viewed", {"plan": "pro"}),
    ]


_SAVED_TASKS = re.compile(
    r"Saved as `tasks\.py`: `(pip install [^`]+)`.*?then `(celery -A tasks worker[^`]*)`",
    re.DOTALL,
)

# The web side the README describes in words: a tracked request whose view publishes.
PUBLISH = """
from flask import Flask
from atrack_integrations.flask import ATrack
from tasks import send_receipt

app = Flask(__name__)
ATrack(app)


@app.post("/orders")
def orders():
    send_receipt.delay(7)
    return {"ok": True}


answer = app.test_client().post("/orders")
print(answer.headers["Set-Cookie"].split(";")[0].split("=", 1)[1])
"""


@pytest.mark.slow
@pytest.mark.redis
def test_celery_snippet_runs_as_saved(
    collector: Collector, tmp_path: Path, redis_server: Any
) -> None:
    # Saved as tasks.py it imports (the block once ended with a line that needs a view's
    # `order`), the pip line brings the Redis transport its broker needs, and the worker
    # command tracks for the user of the request that published the task.
    [code] = [c for c in blocks("Tracking outside the view", "python") if "Celery(" in c]
    default = "redis://127.0.0.1:6379/0"
    assert default in code
    broker = redis_server.url.rsplit("/", 1)[0] + "/12"  # a database of its own
    (tmp_path / "tasks.py").write_text(code.replace(default, broker))
    found = _SAVED_TASKS.search(section("Tracking outside the view"))
    assert found, "the Celery block says how to install and run it"
    pip, command = found.groups()
    check_pip_line(pip)
    assert "celery[redis]" in shlex.split(pip), pip
    (tmp_path / "publish.py").write_text(PUBLISH)
    published = subprocess.run(
        [sys.executable, "publish.py"], cwd=tmp_path, env=user_env(collector),
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert published.returncode == 0, published.stderr
    visitor = published.stdout.strip()
    worker = subprocess.Popen(
        [str(BIN / "celery"), *shlex.split(command)[1:]], cwd=tmp_path,
        env=user_env(collector), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not (sent := collector.store.events(event="receipt_sent")):
            assert worker.poll() is None, worker.communicate()[0]
            assert time.monotonic() < deadline, "no receipt_sent within 60 s"
            time.sleep(0.05)
    finally:
        worker.terminate()
        try:
            output, _ = worker.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()
            output, _ = worker.communicate()
    [event] = sent
    assert (event["uuid"], event["attributes"]) == (visitor, {"order_id": 7})
    assert event["context"]["url"] == "/orders"  # type: ignore[index]
    assert "Traceback" not in output, output


@pytest.mark.slow
def test_testing_snippet_passes_with_atrack_disabled(tmp_path: Path) -> None:
    write_app("Quickstart: Flask", tmp_path)
    [test_code] = blocks("Testing your app", "python")
    (tmp_path / "test_app.py").write_text(test_code)
    [command] = shell_lines("Testing your app")
    assignment, *argv = shlex.split(command)
    name, _, value = assignment.partition("=")
    assert (name, argv[0]) == ("ATRACK_DISABLED", "pytest")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATRACK_")}
    pytest_cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *argv[1:]]

    passed = subprocess.run(
        pytest_cmd, cwd=tmp_path, env={**env, name: value}, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert passed.returncode == 0, passed.stdout + passed.stderr
    assert "1 passed" in passed.stdout

    # Without it (and without a key) the app cannot be built, and the error says what
    # to do.
    failed = subprocess.run(
        pytest_cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert failed.returncode == 1
    assert "ATRACK_PUBLIC_KEY is not set" in failed.stdout
    assert "ATRACK_DISABLED=1" in failed.stdout


@pytest.mark.slow
def test_cli_section_sends_an_event(collector: Collector) -> None:
    [send] = [line for line in shell_lines("Local collector and CLI") if " send-event " in line]
    result = subprocess.run(
        [str(BIN / "atrack"), *shlex.split(send)[1:]], env=user_env(collector),
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    [event] = wait_for_events(collector, 1)
    assert (event["event"], event["uuid"]) == ("signed_up", "user-1")
    assert event["attributes"] == {"plan": "pro", "seats": 12}
