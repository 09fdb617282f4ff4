"""docs/frameworks.md and docs/aiohttp.md, run as a new user would: each quickstart's
code block copied verbatim into ``app.py``, the run command its "Saved as" line names
started as written (only the port changed), its ``curl`` sent against a real collector;
the event must arrive for the user whose cookie the answer set.

(The frameworks' behaviour is tested under real servers in
tests/integrations/test_frameworks.py; this checks the pages a user copies from.)
"""

from __future__ import annotations

import importlib.util
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from atrack_core.collector import Collector
from tests.docs.test_readme import (
    _FENCE,
    BIN,
    collector,  # noqa: F401 - fixture
    curl,
    free_port,
    server_command,
    user_env,
    wait_for_events,
    wait_listening,
)

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
_SAVED = re.compile(
    r"Saved as `app\.py`: `(pip install [^`]+)`, then `([^`]+)` and\s+`(curl [^`]+)`"
)


def check_pip_line(line: str) -> None:
    """Every package the ``pip install`` line names is installed here (a library or a
    server command), so the run command after it works as written."""
    words = shlex.split(line)
    assert words[:2] == ["pip", "install"], line
    for word in words[2:]:
        name = word.partition("[")[0]
        if name != "a-track-sdk":
            assert (BIN / name).exists() or importlib.util.find_spec(name), line


def quickstarts(page: str) -> list[tuple[str, str, str, str, str]]:
    """(title, code, pip line, run command, curl line) of each section of ``page`` with
    a python block followed by a "Saved as `app.py`" line."""
    text = (ROOT / "docs" / page).read_text(encoding="utf-8")
    found = []
    for part in re.split(r"^## ", text, flags=re.MULTILINE):
        title = part.splitlines()[0].strip("# ")
        saved = _SAVED.search(part)
        if saved is None:
            continue
        [code] = [c for kind, c in _FENCE.findall(part[: saved.start()]) if kind == "python"][-1:]
        found.append((title, code, *saved.groups()))
    return found


CASES = [(page, *q) for page in ("frameworks.md", "aiohttp.md") for q in quickstarts(page)]


def test_every_framework_quickstart_says_how_to_run_it() -> None:
    titles = {title for page, title, *_ in CASES if page == "frameworks.md"}
    assert titles == {"Litestar", "Quart", "Falcon (WSGI)", "Falcon (ASGI)", "aiohttp"}
    assert [page for page, *_ in CASES].count("aiohttp.md") == 1


@pytest.mark.parametrize(
    ("page", "title", "code", "pip", "run", "curl_line"),
    CASES,
    ids=[f"{page}:{title}" for page, title, *_ in CASES],
)
def test_quickstart_runs_as_written(
    collector: Collector,  # noqa: F811
    tmp_path: Path,
    page: str,
    title: str,
    code: str,
    pip: str,
    run: str,
    curl_line: str,
) -> None:
    module = shlex.split(pip)[3] if len(shlex.split(pip)) > 3 else "aiohttp"
    pytest.importorskip(module)
    check_pip_line(pip)
    port = free_port()
    if run == "python app.py":
        # The page's own port (aiohttp's run_app) becomes this test's.
        code = code.replace("port=8080", f"port={port}")
        command = [sys.executable, "app.py"]
        curl_line = curl_line.replace(":8080", ":8000")
    else:
        command = server_command(run, port)
    (tmp_path / "app.py").write_text(code)
    process = subprocess.Popen(
        command, cwd=tmp_path, env=user_env(collector),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        wait_listening(port, process)
        answer = curl(curl_line, port)
    finally:
        process.send_signal(signal.SIGINT)
        try:
            _, err = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            _, err = process.communicate()
    assert answer.status_code < 300, (answer.status_code, answer.text, err)
    assert "Traceback" not in err, err
    uuid = answer.cookies.get("atrack_uuid")
    assert uuid, answer.headers
    events = wait_for_events(collector, 1)
    assert events, err
    assert {e["uuid"] for e in events} == {uuid}


def test_readme_framework_table_names_the_keys_the_middlewares_set() -> None:
    """The Falcon row said ``req.env["atrack"]``, a KeyError: the WSGI key is
    ``atrack.tracker`` (PEP 3333 extension keys carry a dotted prefix)."""
    from atrack_integrations.wsgi import ATrackWSGIMiddleware, get_tracker

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    [row] = [line for line in readme.splitlines() if line.startswith("| Falcon")]
    [key] = re.findall(r'req\.env\["([^"]+)"\]', row)
    seen = {}

    def app(environ, start_response):  # type: ignore[no-untyped-def]
        seen["tracker"] = environ.get(key)
        seen["typed"] = get_tracker(environ)
        start_response("200 OK", [])
        return [b""]

    from atrack_core import ATrackSdk, Options

    sdk = ATrackSdk(Options("pub_test_1234", disabled=True))
    wrapped = ATrackWSGIMiddleware(app, sdk=sdk)
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/", "wsgi.url_scheme": "http"}
    list(wrapped(environ, lambda *a: None))
    assert seen["tracker"] is not None and seen["tracker"] is seen["typed"]
    sdk.shutdown()
