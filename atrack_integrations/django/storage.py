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

from atrack_core._resting import DEFAULT_INTERVAL, Resting

logger = logging.getLogger("atrack.django")

_MISSING = object()


class DjangoCacheStorage:
    """Storage backed by the cache ``alias`` of ``settings.CACHES``.

    ``add`` is ``cache.add`` (atomic on every shared backend Django ships). A failing
    cache (server down) is logged and treated as a miss: ``get`` returns ``None``,
    ``add`` returns ``True`` (the caller goes ahead, so at worst an ``/init`` is sent
    twice, never lost) and the request goes on. After a failure the cache is not asked
    for ``retry_interval`` seconds, so an outage does not cost every request the cache
    client's timeout, and it is logged once (as ``RedisStorage`` does).
    """

    def __init__(
        self,
        alias: str = "default",
        *,
        key_prefix: str = "atrack:",
        retry_interval: float = DEFAULT_INTERVAL,
    ) -> None:
        self.alias = alias
        self.key_prefix = key_prefix
        self._resting = Resting(f"A-Track: Django cache {alias!r}", retry_interval, logger)

    def __repr__(self) -> str:
        return f"DjangoCacheStorage(alias={self.alias!r})"

    @property
    def cache(self) -> Any:
        # Looked up per call, not kept: django.core.cache.caches is per thread, and
        # override_settings(CACHES=...) swaps the backend.
        from django.core.cache import caches

        return caches[self.alias]

    def get(self, key: str) -> str | None:
        ok, value = self._resting.call(
            "get", lambda: self.cache.get(self.key_prefix + key, _MISSING), self.key_prefix + key
        )
        return value if ok and isinstance(value, str) else None

    def set(self, key: str, value: str, ttl: float | None = None) -> None:
        self._resting.call(
            "set",
            lambda: self.cache.set(self.key_prefix + key, value, timeout=_timeout(ttl)),
            self.key_prefix + key,
        )

    def add(self, key: str, value: str, ttl: float | None = None) -> bool:
        ok, added = self._resting.call(
            "add",
            lambda: self.cache.add(self.key_prefix + key, value, timeout=_timeout(ttl)),
            self.key_prefix + key,
        )
        return bool(added) if ok else True

    def delete(self, key: str) -> None:
        self._resting.call(
            "delete", lambda: self.cache.delete(self.key_prefix + key), self.key_prefix + key
        )


def _timeout(ttl: float | None) -> float | None:
    # Django reads timeout=None as "forever" and 0 as "expire now"; a TTL under one
    # second would round to 0 on some backends, so keep at least one second.
    if ttl is None:
        return None
    return max(float(ttl), 1.0)
