"""Django REST framework views: ``request.atrack`` through DRF's ``Request``, under
gunicorn (WSGI) and uvicorn (ASGI), with the lifecycle's guarantees."""

from __future__ import annotations

import pytest

pytest.importorskip("rest_framework")

from tests.fake_api import FakeApi
from tests.integrations.lifecycle_checks import check_lifecycle
from tests.integrations.test_wsgi_servers import serve

pytestmark = pytest.mark.slow

ENV = {"DJANGO_SETTINGS_MODULE": "tests.django_settings", "ATRACK_PUBLIC_KEY": "pub_test_key_1234"}


@pytest.mark.parametrize(
    ("kind", "target"),
    [
        ("gunicorn", "tests.integrations.django.wsgi:application"),
        ("uvicorn", "tests.integrations.django.asgi:application"),
    ],
)
def test_drf_view_under_a_real_server(fake_api: FakeApi, kind: str, target: str) -> None:
    env = {**ENV, "ATRACK_ENDPOINT": fake_api.url}
    with serve(kind, target, env) as port:
        check_lifecycle(f"http://127.0.0.1:{port}", fake_api, prefix="/drf")
