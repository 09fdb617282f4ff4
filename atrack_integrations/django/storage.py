"""A :class:`~atrack_core.Storage` on Django's cache framework.

Use it when several workers or hosts serve the site, so that they share the
"``/init`` already sent for this user" marks (one ``/init`` per user session, not one
per worker)::

    ATRACK = {"STORAGE": "atrack_integrations.django.storage.DjangoCacheStorage"}

It needs a cache shared between the processes (Redis, Memcached, the database cache);
with Django's default per-process ``LocMemCache`` it works but dedupes per process.
"""

from __future__ import annotations

import logging
from typing import Any

from .._contain import Contain

logger = logging.getLogger("atrack.django")

_GET_FAILED = "A-Track: cache %r failed on get; treating as a miss"
_ADD_FAILED = "A-Track: cache %r failed on add; treating as a miss"
_SET_FAILED = "A-Track: cache %r failed on set"
_DELETE_FAILED = "A-Track: cache %r failed on delete"

_MISSING = object()


class DjangoCacheStorage:
    """Storage backed by the cache ``alias`` of ``settings.CACHES``.

    ``add`` is ``cache.add`` (atomic on every shared backend Django ships). A failing
    cache (server down) is logged and treated as a miss: ``get`` returns ``None``,
    ``add`` returns ``True`` (the caller goes ahead, so at worst an ``/init`` is sent
    twice, never lost) and the request goes on.
    """

    def __init__(self, alias: str = "default", *, key_prefix: str = "atrack:") -> None:
        self.alias = alias
        self.key_prefix = key_prefix

    def __repr__(self) -> str:
        return f"DjangoCacheStorage(alias={self.alias!r})"

    @property
    def cache(self) -> Any:
        # Looked up per call, not kept: django.core.cache.caches is per thread, and
        # override_settings(CACHES=...) swaps the backend.
        from django.core.cache import caches

        return caches[self.alias]

    def _contained(self, message: str) -> Contain:
        # A failing cache is a miss, logged at WARNING (SPEC: storage never breaks the app).
        return Contain(message, self.alias, level=logging.WARNING, log=logger)

    def get(self, key: str) -> str | None:
        with self._contained(_GET_FAILED):
            value = self.cache.get(self.key_prefix + key, _MISSING)
            return value if isinstance(value, str) else None
        return None

    def set(self, key: str, value: str, ttl: float | None = None) -> None:
        with Contain(
            "A-Track: cache %r failed on set", self.alias, level=logging.WARNING, log=logger
        ):
            self.cache.set(self.key_prefix + key, value, timeout=_timeout(ttl))

    def add(self, key: str, value: str, ttl: float | None = None) -> bool:
        with self._contained(_ADD_FAILED):
            return bool(self.cache.add(self.key_prefix + key, value, timeout=_timeout(ttl)))
        return True

    def delete(self, key: str) -> None:
        with Contain(
            "A-Track: cache %r failed on delete", self.alias, level=logging.WARNING, log=logger
        ):
            self.cache.delete(self.key_prefix + key)


def _timeout(ttl: float | None) -> float | None:
    # Django reads timeout=None as "forever" and 0 as "expire now"; a TTL under one
    # second would round to 0 on some backends, so keep at least one second.
    if ttl is None:
        return None
    return max(float(ttl), 1.0)
