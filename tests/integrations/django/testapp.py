"""Views, URLs, a fake auth middleware and identify hooks for the Django tests.

``FakeAuthMiddleware`` behaves like Django's ``AuthenticationMiddleware`` without a
database: the user named by an ``X-Test-User`` header is loaded lazily by
``request.user`` or awaited through ``request.auser()``. Like a real database lookup,
the synchronous load refuses to run inside an event loop, so a test fails if anything
touches ``request.user`` synchronously under ASGI.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.core.exceptions import SynchronousOnlyOperation
from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.urls import path
from django.utils.functional import SimpleLazyObject

SYNC_USER_LOADS: list[str] = []  # every synchronous user load, for the assertions


@dataclass
class FakeUser:
    pk: str | None

    @property
    def is_authenticated(self) -> bool:
        return self.pk is not None


def _load_user(request: HttpRequest) -> FakeUser:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        raise SynchronousOnlyOperation("request.user loaded synchronously in an event loop")
    SYNC_USER_LOADS.append(request.path)
    return FakeUser(request.headers.get("x-test-user") or None)


class FakeAuthMiddleware:
    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def _attach(self, request: HttpRequest) -> None:
        async def auser() -> FakeUser:
            return FakeUser(request.headers.get("x-test-user") or None)

        request.user = SimpleLazyObject(lambda: _load_user(request))  # type: ignore[attr-defined]
        request.auser = auser  # type: ignore[attr-defined]

    def __call__(self, request: HttpRequest) -> Any:
        self._attach(request)
        # In async mode get_response returns a coroutine that Django awaits.
        return self.get_response(request)


def identify(request: HttpRequest) -> str | None:
    """Sync hook: the logged-in user's id."""
    user = request.user  # type: ignore[attr-defined]
    return str(user.pk) if user.is_authenticated else None


async def aidentify(request: HttpRequest) -> str | None:
    """Async hook: the logged-in user's id through ``auser()``."""
    user = await request.auser()  # type: ignore[attr-defined]
    return str(user.pk) if user.is_authenticated else None


def _state(request: HttpRequest) -> dict[str, Any]:
    tracker = request.atrack  # type: ignore[attr-defined]
    return {"uuid": tracker.uuid, "is_new_user": tracker.is_new_user}


def whoami(request: HttpRequest) -> HttpResponse:
    return JsonResponse(_state(request))


def track(request: HttpRequest) -> HttpResponse:
    request.atrack.track("sync_event", {"path": request.path})  # type: ignore[attr-defined]
    return JsonResponse(_state(request))


async def atrack_view(request: HttpRequest) -> HttpResponse:
    request.atrack.track("async_event", {"path": request.path})  # type: ignore[attr-defined]
    return JsonResponse(_state(request))


def slow(request: HttpRequest) -> HttpResponse:
    # Interleaves concurrent requests so that any shared per-request state would show.
    time.sleep(float(request.GET.get("s", "0.01")))
    request.atrack.track("slow_event", {"tag": request.GET.get("tag", "")})  # type: ignore[attr-defined]
    return JsonResponse(_state(request))


async def aslow(request: HttpRequest) -> HttpResponse:
    await asyncio.sleep(float(request.GET.get("s", "0.01")))
    request.atrack.track("slow_event", {"tag": request.GET.get("tag", "")})  # type: ignore[attr-defined]
    return JsonResponse(_state(request))


def login(request: HttpRequest) -> HttpResponse:
    request.atrack.identify(request.GET.get("as", "user-42"), {"plan": "pro"})  # type: ignore[attr-defined]
    return JsonResponse(_state(request))


def boom(request: HttpRequest) -> HttpResponse:
    raise ValueError("boom from the view")


async def aboom(request: HttpRequest) -> HttpResponse:
    raise ValueError("boom from the async view")


def health(request: HttpRequest) -> HttpResponse:
    return HttpResponse("ok")


def stream(request: HttpRequest) -> HttpResponse:
    def chunks() -> Iterator[bytes]:
        for i in range(3):
            yield f"chunk{i}\n".encode()

    return StreamingHttpResponse(chunks())


urlpatterns = [
    path("", whoami),
    path("whoami", whoami),
    path("track", track),
    path("atrack", atrack_view),
    path("slow", slow),
    path("aslow", aslow),
    path("login", login),
    path("boom", boom),
    path("aboom", aboom),
    path("health", health),
    path("stream", stream),
]


def plain(request: HttpRequest) -> HttpResponse:
    return HttpResponse("plain")


urlpatterns.append(path("plain", plain))


def context(request: HttpRequest) -> HttpResponse:
    """The request's context as the tracker sends it (the same-context tests)."""
    return JsonResponse(request.atrack.context)  # type: ignore[attr-defined]


urlpatterns.append(path("ctx", context))


# ------------------------------------------------- current_tracker() from service code


def _who() -> str:
    """Service code that never sees the request."""
    from atrack_integrations import current_tracker

    tracker = current_tracker()
    return "none" if tracker is None else tracker.uuid


def current(request: HttpRequest) -> HttpResponse:
    from asgiref.sync import async_to_sync

    async def awho() -> str:
        return _who()

    time.sleep(float(request.GET.get("s", "0")))
    return JsonResponse(
        {"uuid": request.atrack.uuid, "direct": _who(), "async_to_sync": async_to_sync(awho)()}  # type: ignore[attr-defined]
    )


async def acurrent(request: HttpRequest) -> HttpResponse:
    from asgiref.sync import sync_to_async

    await asyncio.sleep(float(request.GET.get("s", "0")))
    return JsonResponse(
        {
            "uuid": request.atrack.uuid,  # type: ignore[attr-defined]
            "direct": _who(),
            "sync_to_async": await sync_to_async(_who)(),
        }
    )


def cstream(request: HttpRequest) -> HttpResponse:
    def chunks() -> Iterator[bytes]:
        for _ in range(2):
            yield f"{_who()}\n".encode()

    return StreamingHttpResponse(chunks())


async def acstream(request: HttpRequest) -> HttpResponse:
    async def chunks() -> Any:
        for _ in range(2):
            await asyncio.sleep(0)
            yield f"{_who()}\n".encode()

    return StreamingHttpResponse(chunks())


def cboom(request: HttpRequest) -> HttpResponse:
    raise ValueError(f"boom as {_who()}")


urlpatterns += [
    path("current", current),
    path("acurrent", acurrent),
    path("cstream", cstream),
    path("acstream", acstream),
    path("cboom", cboom),
]

try:  # Django REST framework, when installed (the dev group has it)
    from tests.integrations.django.drf_views import WhoView
except ImportError:  # pragma: no cover - depends on the environment
    pass
else:
    urlpatterns.append(path("drf/who", WhoView.as_view()))
