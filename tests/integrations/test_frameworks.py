"""Litestar, Quart, Falcon (WSGI and ASGI) through the generic middlewares, each under a
real server: uvicorn for ASGI, gunicorn (gthread) for WSGI. (Django REST framework:
tests/integrations/django/test_drf.py.)"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from atrack_core import ATrackSdk, Options
from tests.fake_api import FakeApi
from tests.integrations import framework_apps
from tests.integrations.asgi_helpers import serve as serve_asgi
from tests.integrations.lifecycle_checks import check_lifecycle
from tests.integrations.test_wsgi_servers import atrack_log_guard  # noqa: F401
from tests.integrations.test_wsgi_servers import serve as serve_process

pytestmark = pytest.mark.slow


@pytest.fixture
def sdk(fake_api: FakeApi) -> Iterator[ATrackSdk]:
    sdk = ATrackSdk(Options("pub_test_1234", endpoint=fake_api.url, shutdown_timeout=5.0))
    yield sdk
    sdk.shutdown()


@pytest.mark.parametrize(
    ("framework", "factory"),
    [("litestar", "litestar_app"), ("quart", "quart_app"), ("falcon", "falcon_asgi_app")],
)
def test_asgi_frameworks_under_uvicorn(
    sdk: ATrackSdk, fake_api: FakeApi, framework: str, factory: str
) -> None:
    pytest.importorskip(framework)
    app = getattr(framework_apps, factory)(sdk)
    with serve_asgi(app) as url:
        check_lifecycle(url, fake_api)


def test_falcon_wsgi_under_gunicorn(fake_api: FakeApi) -> None:
    pytest.importorskip("falcon")
    env = {"ATRACK_PUBLIC_KEY": "pub_test_key_1234", "ATRACK_ENDPOINT": fake_api.url}
    target = "tests.integrations.framework_apps:falcon_wsgi_app()"
    with serve_process("gunicorn", target, env) as port:
        check_lifecycle(f"http://127.0.0.1:{port}", fake_api)
