"""Django settings for A-Track, read lazily from ``settings.ATRACK``.

Nothing is read at import time, so ``import atrack_integrations.django`` works before
settings are configured. The validated configuration (and the SDK built from it) is
made once per value of ``settings.ATRACK`` and rebuilt when ``override_settings`` (or
anything else sending ``setting_changed``) changes it.

Keys are the spec's setting names in upper case (``PUBLIC_KEY``, ``IDENTIFY``,
``COOKIE_NAME`` …). ``SDK``, ``IDENTIFY`` and ``STORAGE`` may be objects or dotted
paths; a ``STORAGE`` path naming a class is instantiated with no arguments.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from asgiref.sync import async_to_sync, iscoroutinefunction, sync_to_async
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.handlers.asgi import ASGIRequest
from django.core.signals import setting_changed
from django.db import connections

from atrack_core import ATrackSdk

from .._contain import Contain
from .._lifecycle import IntegrationConfig, import_from_string

__all__ = ["DjangoIdentify", "atrack_settings", "build_config", "get_config", "get_sdk", "reset"]

logger = logging.getLogger("atrack.django")

SETTINGS_NAME = "ATRACK"

_lock = threading.Lock()
_config: IntegrationConfig | None = None
_owns_sdk = False  # whether _config.sdk was built here (and so is ours to shut down)


def atrack_settings() -> dict[str, Any]:
    """``settings.ATRACK`` as a dict with upper-case keys (empty when unset)."""
    raw = getattr(settings, SETTINGS_NAME, None)
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise ImproperlyConfigured(
            f"settings.ATRACK must be a dict of A-Track settings, got {type(raw).__name__}"
        )
    # The lifecycle reads names in any case; so do the Django-only steps below.
    return {key.upper() if isinstance(key, str) else key: value for key, value in raw.items()}


def build_config(values: Mapping[str, Any]) -> IntegrationConfig:
    """A validated :class:`IntegrationConfig` from an ``ATRACK`` dict (upper-case keys,
    as :func:`atrack_settings` gives). Raises ``ImproperlyConfigured`` naming the bad
    setting."""
    values = dict(values)
    try:
        if isinstance(values.get("SDK"), str):
            values["SDK"] = import_from_string(values["SDK"], "ATRACK['SDK']")
        identify = values.get("IDENTIFY")
        if isinstance(identify, str):
            identify = import_from_string(identify, "ATRACK['IDENTIFY']")
        if identify is not None:
            if not callable(identify):
                raise TypeError(f"ATRACK['IDENTIFY'] must be callable, got {identify!r}")
            values["IDENTIFY"] = DjangoIdentify(identify)
        return IntegrationConfig.from_settings(values)
    except (ValueError, TypeError) as exc:
        raise ImproperlyConfigured(f"ATRACK: {exc}") from exc


def get_config() -> IntegrationConfig:
    """The configuration in use, built on first use from ``settings.ATRACK``."""
    config = _config
    if config is None:
        config = _build()
    return config


def _build() -> IntegrationConfig:
    global _config, _owns_sdk
    with _lock:
        if _config is None:
            values = atrack_settings()
            _config = build_config(values)
            _owns_sdk = values.get("SDK") is None
        return _config


def get_sdk() -> ATrackSdk:
    """The :class:`~atrack_core.ATrackSdk` the middleware uses: ``ATRACK["SDK"]``, or the
    one built from ``PUBLIC_KEY``/``GEO``/``ENDPOINT``/``DELIVERY``/``STORAGE`` (or the
    ``ATRACK_*`` environment). For flushing and for tests."""
    return get_config().sdk


def reset() -> None:
    """Forget the configuration; an SDK built from the settings is shut down (flushed,
    bounded by its ``shutdown_timeout``). The next request builds them again."""
    global _config, _owns_sdk
    with _lock:
        old, owned = _config, _owns_sdk
        _config, _owns_sdk = None, False
    if old is not None and owned:
        with Contain("A-Track SDK shutdown failed"):
            old.sdk.shutdown()


def _on_setting_changed(*, setting: str, **kwargs: Any) -> None:
    if setting == SETTINGS_NAME:
        reset()


setting_changed.connect(_on_setting_changed)


def _in_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


class DjangoIdentify:
    """Runs an ``IDENTIFY`` hook the way the current mode needs, so any hook works
    under WSGI and ASGI alike and ``request.user`` is never evaluated on the event loop.

    - an ``async def`` hook: awaited under ASGI; under WSGI run through
      ``async_to_sync`` (works, but costs an event loop per request: prefer sync there);
    - a plain hook: called directly under WSGI; under ASGI run through ``sync_to_async``
      in Django's sync thread, exactly as Django runs a sync view (a lazy
      ``request.user`` may hit the database there);
    - an object with a sync ``__call__`` and an ``async def acall`` (like
      :data:`identify_user`): the matching method, no thread hop in either mode.

    The lifecycle calls it synchronously and awaits the result when it is awaitable;
    which mode applies is told by whether an event loop runs in this thread.
    """

    __slots__ = ("_acall", "_is_async", "_to_async", "_to_sync", "hook")

    def __init__(self, hook: Any) -> None:
        self.hook = hook
        acall = getattr(hook, "acall", None)
        self._acall = acall if iscoroutinefunction(acall) else None
        self._is_async = iscoroutinefunction(hook) or iscoroutinefunction(
            getattr(hook, "__call__", None)  # noqa: B004 - async callable objects
        )
        # Built lazily: most sites only ever run in one of the two modes.
        self._to_async: Any = None
        self._to_sync: Any = None

    def __repr__(self) -> str:
        return f"DjangoIdentify({self.hook!r})"

    def __call__(self, request: Any) -> Any:
        if _in_event_loop():
            if not isinstance(request, ASGIRequest):
                # An async view under WSGI: Django runs it in an event loop of its own,
                # where neither request.user nor async_to_sync may run. The sync answer,
                # in a thread of its own (prefer a sync view under WSGI: no hop).
                return _in_own_thread(self._sync, request)
            if self._acall is not None:
                return self._acall(request)
            if self._is_async:
                return self.hook(request)
            if self._to_async is None:
                self._to_async = sync_to_async(self.hook)
            return self._to_async(request)
        return self._sync(request)

    def _sync(self, request: Any) -> Any:
        if self._is_async:
            if self._to_sync is None:
                self._to_sync = async_to_sync(self.hook)
            return self._to_sync(request)
        return self.hook(request)


def _in_own_thread(call: Any, request: Any) -> Any:
    """``call(request)`` in a new thread, waited for (its exception re-raised here); the
    database connections that thread opened are closed before it ends."""

    def run() -> Any:
        try:
            return call(request)
        finally:
            connections.close_all()

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="atrack-identify") as pool:
        return pool.submit(run).result()


def _user_id(user: Any) -> str | None:
    if user is None or not getattr(user, "is_authenticated", False):
        return None
    return str(user.pk)


class UserIdentify:
    """The logged-in Django user's primary key as the A-Track uuid (``None`` for an
    anonymous visitor). Use it as ``"IDENTIFY": "atrack_integrations.django.identify_user"``.

    Under WSGI it reads ``request.user``; under ASGI it awaits ``request.auser()``
    (Django 5.0+; on 4.2 ``request.user`` is read in Django's sync thread), never
    touching the lazy user on the event loop. Needs ``AuthenticationMiddleware`` above
    ``ATrackMiddleware`` (system check ``atrack.W001``).
    """

    def __repr__(self) -> str:
        return "identify_user"

    def __call__(self, request: Any) -> str | None:
        return _user_id(getattr(request, "user", None))

    async def acall(self, request: Any) -> str | None:
        auser = getattr(request, "auser", None)
        if auser is not None:
            return _user_id(await auser())
        return await sync_to_async(self.__call__)(request)


identify_user = UserIdentify()
