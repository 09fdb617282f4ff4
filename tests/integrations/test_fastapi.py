"""The FastAPI dependency, the Starlette accessor, and clean ImportErrors."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Iterator

import pytest

pytest.importorskip("fastapi")

from fastapi import FastAPI

from atrack_core import ATrackSdk
from atrack_core.testing import CapturedCalls, capture_calls
from atrack_integrations.fastapi import ATrackMiddleware, ATrackTracker
from tests.integrations.asgi_helpers import KNOWN, call, cookie_value, record_atrack_logs


@pytest.fixture
def calls() -> Iterator[CapturedCalls]:
    with record_atrack_logs(), capture_calls() as captured:
        yield captured


def shop(sdk: ATrackSdk | None) -> FastAPI:
    app = FastAPI()
    if sdk is not None:
        app.add_middleware(ATrackMiddleware, sdk=sdk)

    @app.post("/orders", status_code=201)
    def create_order(amount: float, tracker: ATrackTracker) -> dict[str, str]:
        tracker.track("order_created", {"amount": amount})
        return {"uuid": tracker.uuid}

    @app.get("/async")
    async def async_view(tracker: ATrackTracker) -> dict[str, bool]:
        return {"new": tracker.is_new_user}

    return app


def test_dependency_gives_the_request_tracker(sdk: ATrackSdk, calls: CapturedCalls) -> None:
    response = call(shop(sdk), "POST", "/orders?amount=12.5", cookie=f"atrack_uuid={KNOWN}")
    assert response.status_code == 201
    assert response.json() == {"uuid": KNOWN}
    (event,) = calls.events
    assert event["event"] == "order_created"
    assert event["uuid"] == KNOWN
    assert event["attributes"] == {"amount": 12.5}
    assert event["context"]["url"] == "/orders?amount=12.5"


def test_dependency_in_async_views(sdk: ATrackSdk, calls: CapturedCalls) -> None:
    response = call(shop(sdk), "GET", "/async")
    assert response.json() == {"new": True}
    assert cookie_value(response) is not None


def test_missing_middleware_is_a_clear_error(calls: CapturedCalls) -> None:
    with pytest.raises(RuntimeError, match=r"add_middleware\(ATrackMiddleware") as missing:
        call(shop(None), "POST", "/orders?amount=1")
    # The import the FastAPI quickstart uses, not the ASGI module it re-exports from.
    assert "(from atrack_integrations.fastapi import ATrackMiddleware)" in str(missing.value)
    assert "atrack_integrations.asgi" not in str(missing.value)


def test_starlette_accessor(sdk: ATrackSdk, calls: CapturedCalls) -> None:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    from atrack_integrations.starlette import ATrackMiddleware as StarletteMiddleware
    from atrack_integrations.starlette import get_tracker

    async def view(request: Request) -> PlainTextResponse:
        return PlainTextResponse(get_tracker(request).uuid)

    app = Starlette(routes=[Route("/", view)])
    with pytest.raises(RuntimeError, match="no A-Track tracker") as missing:
        call(app)
    assert "(from atrack_integrations.starlette import ATrackMiddleware)" in str(missing.value)
    app = Starlette(routes=[Route("/", view)])
    app.add_middleware(StarletteMiddleware, sdk=sdk)
    assert call(app, cookie=f"atrack_uuid={KNOWN}").text == KNOWN


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def test_core_modules_import_no_framework() -> None:
    result = run_python(
        """
        import sys
        import atrack_integrations, atrack_integrations.asgi
        loaded = {"starlette", "fastapi", "django", "flask"} & set(sys.modules)
        assert not loaded, loaded
        """
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    ("module", "blocked", "extra"),
    [
        ("atrack_integrations.fastapi", "fastapi", "a-track-sdk[fastapi]"),
        ("atrack_integrations.starlette", "starlette", "a-track-sdk[starlette]"),
    ],
)
def test_missing_framework_is_one_clear_import_error(module: str, blocked: str, extra: str) -> None:
    result = run_python(
        f"""
        import sys
        sys.modules[{blocked!r}] = None  # as if it were not installed
        try:
            import {module}
        except ImportError as exc:
            print(exc)
        else:
            raise SystemExit("imported")
        """
    )
    assert result.returncode == 0, result.stderr
    assert f"pip install '{extra}'" in result.stdout
