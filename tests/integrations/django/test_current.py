"""current_tracker() under the Django middleware: sync and async views, sync_to_async
and async_to_sync hops, streaming bodies, exceptions; nothing left current after."""

from __future__ import annotations

import uuid as uuid_mod
from typing import Any

import pytest
from django.test import AsyncClient, Client

from atrack_integrations import current_tracker
from tests.integrations.django.test_middleware import aget


def _cookie() -> tuple[str, dict[str, Any]]:
    uuid = str(uuid_mod.uuid4())
    return uuid, {"headers": {"cookie": f"atrack_uuid={uuid}"}}


def test_sync_view_and_async_to_sync_see_the_request_tracker() -> None:
    uuid, headers = _cookie()
    body = Client().get("/current", **headers).json()
    assert body == {"uuid": uuid, "direct": uuid, "async_to_sync": uuid}
    assert current_tracker() is None


def test_async_view_and_sync_to_async_see_the_request_tracker() -> None:
    uuid, headers = _cookie()
    body = aget(AsyncClient(), "/acurrent", **headers).json()
    assert body == {"uuid": uuid, "direct": uuid, "sync_to_async": uuid}
    # async_to_sync copies the coroutine's context back into this thread: the
    # middleware's reset must have happened for this to be None.
    assert current_tracker() is None


def test_sync_view_under_asgi_and_async_view_under_wsgi() -> None:
    uuid, headers = _cookie()
    body = aget(AsyncClient(), "/current", **headers).json()
    assert body == {"uuid": uuid, "direct": uuid, "async_to_sync": uuid}
    uuid, headers = _cookie()
    body = Client().get("/acurrent", **headers).json()
    assert body == {"uuid": uuid, "direct": uuid, "sync_to_async": uuid}
    assert current_tracker() is None


def test_streaming_body_sees_the_tracker_wsgi() -> None:
    uuid, headers = _cookie()
    response = Client().get("/cstream", **headers)
    chunks = b"".join(response.streaming_content)  # type: ignore[attr-defined]
    assert chunks.decode().split() == [uuid, uuid]
    assert current_tracker() is None


def test_async_streaming_body_sees_the_tracker_asgi() -> None:
    # (Each mode with its own kind of iterator: Django warns when it has to adapt one.)
    uuid, headers = _cookie()
    client = AsyncClient()

    async def get() -> list[str]:
        response = await client.get("/acstream", **headers)
        chunks = [c async for c in response]  # the content the server would send
        assert current_tracker() is None  # not current between the chunks
        return b"".join(chunks).decode().split()

    from asgiref.sync import async_to_sync

    assert async_to_sync(get)() == [uuid, uuid]
    assert current_tracker() is None


def test_reset_when_the_view_raises() -> None:
    uuid, headers = _cookie()
    with pytest.raises(ValueError, match=f"boom as {uuid}"):
        Client().get("/cboom", **headers)
    assert current_tracker() is None


def test_no_tracker_outside_a_request() -> None:
    from atrack_integrations import NoRequestError, track

    assert current_tracker() is None
    with pytest.raises(NoRequestError, match="outside a request"):
        track("x")
