"""``RedisStorage``: storage shared by every worker and host (extra ``redis``).

Every operation is bounded by the client's socket timeouts, and every failure is
logged and treated as a miss, so a slow or dead Redis never breaks a request.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from typing import Any

try:
    import redis as _redis
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "RedisStorage needs the 'redis' package: pip install 'a-track-sdk[redis]'"
    ) from exc

logger = logging.getLogger("atrack.redis")

DEFAULT_SOCKET_TIMEOUT = 0.25


class RedisStorage:
    """A :class:`~atrack_core.Storage` on Redis.

    ``RedisStorage("redis://localhost:6379/0")`` builds its own client with short
    socket timeouts (0.25 s); ``client=`` takes a ready ``redis.Redis``. Keys are
    prefixed with ``prefix``. After ``os.fork`` the connection pool is re-created in
    the child, so workers forked by gunicorn ``--preload`` never share sockets.
    ``add`` is ``SET key value NX PX ttl``: atomic across every process and host.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        client: Any | None = None,
        prefix: str = "atrack:",
        socket_timeout: float = DEFAULT_SOCKET_TIMEOUT,
    ) -> None:
        if client is None and url is None:
            url = os.environ.get("ATRACK_REDIS_URL", "redis://localhost:6379/0")
        if client is not None and url is not None:
            raise ValueError("give RedisStorage a url or a client, not both")
        self._url = url
        self._given_client = client
        self.prefix = prefix
        self.socket_timeout = socket_timeout
        self._lock = threading.Lock()
        self._pid = -1
        self._client: Any = None

    def __repr__(self) -> str:
        where = "client" if self._url is None else _redact(self._url)
        return f"RedisStorage({where!r}, prefix={self.prefix!r})"

    def _conn(self) -> Any:
        pid = os.getpid()
        if self._pid != pid:
            with self._lock:
                if self._pid != pid:
                    if self._given_client is not None:
                        if self._pid != -1:
                            # Sockets inherited through fork belong to the parent.
                            self._given_client.connection_pool.reset()
                        self._client = self._given_client
                    else:
                        assert self._url is not None
                        self._client = _redis.Redis.from_url(
                            self._url,
                            socket_timeout=self.socket_timeout,
                            socket_connect_timeout=self.socket_timeout,
                            decode_responses=True,
                            health_check_interval=30,
                        )
                    self._pid = pid
        return self._client

    def get(self, key: str) -> str | None:
        try:
            value = self._conn().get(self.prefix + key)
        except Exception:
            logger.warning("Redis get failed; treating as a miss", exc_info=True)
            return None
        if isinstance(value, bytes):
            return value.decode("utf-8", "replace")
        return value if isinstance(value, str) else None

    def set(self, key: str, value: str, ttl: float | None = None) -> None:
        try:
            self._conn().set(self.prefix + key, value, px=_ms(ttl))
        except Exception:
            logger.warning("Redis set failed; value not kept", exc_info=True)

    def add(self, key: str, value: str, ttl: float | None = None) -> bool:
        """``True`` when this call set the key. On a Redis failure ``True`` too: a
        duplicate ``/init`` is cheaper than a user never initialised."""
        try:
            return bool(self._conn().set(self.prefix + key, value, nx=True, px=_ms(ttl)))
        except Exception:
            logger.warning("Redis add failed; treating the key as absent", exc_info=True)
            return True

    def delete(self, key: str) -> None:
        try:
            self._conn().delete(self.prefix + key)
        except Exception:
            logger.warning("Redis delete failed", exc_info=True)


def _ms(ttl: float | None) -> int | None:
    if ttl is None:
        return None
    return max(1, math.ceil(ttl * 1000))


def _redact(url: str) -> str:
    # redis://user:password@host -> redis://user:***@host
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        user = creds.split(":", 1)[0]
        return f"{scheme}://{user}:***@{host}"
    return url
