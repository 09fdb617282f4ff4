"""``RedisStorage``: storage shared by every worker and host (extra ``redis``).

A slow or dead Redis never breaks a request and never holds one for long:

- the client it builds bounds every network wait (connecting, each reply) by
  ``socket_timeout`` and retries nothing, so a dead, unreachable or hung Redis costs an
  operation at most about one ``socket_timeout`` (a slow but living one a few: a new
  connection makes a handshake round trip or two before the command);
- every failure is treated as a miss (``get`` -> ``None``, ``add`` -> ``True``: a
  duplicate ``/init`` is cheaper than a user never initialised) and, for the next
  ``retry_interval`` seconds, operations are misses at once without touching the
  network, so an outage costs each request nothing rather than a timeout;
- the first failure of an outage is logged at WARNING (with the exception), the rest
  at DEBUG, and the recovery once at WARNING: an outage is a few log lines, not one per
  request.
"""

from __future__ import annotations

import logging
import math
import os
from typing import Any

from ._resting import DEFAULT_INTERVAL, Resting

try:
    import redis as _redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "RedisStorage needs the 'redis' package: pip install 'a-track-sdk[redis]'"
    ) from exc

__all__ = ["DEFAULT_RETRY_INTERVAL", "DEFAULT_SOCKET_TIMEOUT", "RedisStorage"]

logger = logging.getLogger("atrack.redis")

DEFAULT_SOCKET_TIMEOUT = 0.25
"""Seconds for connecting and for each reply."""
DEFAULT_RETRY_INTERVAL = DEFAULT_INTERVAL
"""Seconds during which Redis is not asked again after a failure."""
# A given client waiting longer than this for a reply is worth a warning.
_LONG_TIMEOUT = 1.0


class RedisStorage:
    """A :class:`~atrack_core.Storage` on Redis, shared by every process and host.

    ``RedisStorage("redis://localhost:6379/0")`` builds its own client with short
    timeouts (``socket_timeout``, 0.25 s, for connecting and for each reply) and no
    client-side retries; without ``url`` and ``client`` the URL comes from
    ``ATRACK_REDIS_URL`` (default ``redis://localhost:6379/0``), so a dotted-path
    setting (Django ``"STORAGE": "atrack_core.redis.RedisStorage"``) needs no argument.
    ``client=`` takes a ready ``redis.Redis``: its own timeouts and retry policy then
    apply, so give it a ``socket_timeout``. Keys are prefixed with ``prefix``.

    Each process uses a connection pool of its own: after ``os.fork`` (gunicorn
    ``--preload``, multiprocessing) the child builds a new client and never touches
    the parent's sockets (a given client's pool is reset by redis-py itself).
    ``add`` is ``SET key value NX PX ttl``: atomic across every process and host.

    Failures are logged and treated as misses (see the module docstring); after one,
    Redis is left alone for ``retry_interval`` seconds.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        client: Any | None = None,
        prefix: str = "atrack:",
        socket_timeout: float = DEFAULT_SOCKET_TIMEOUT,
        retry_interval: float = DEFAULT_RETRY_INTERVAL,
    ) -> None:
        if client is not None and url is not None:
            raise ValueError("give RedisStorage a url or a client, not both")
        if client is None and url is None:
            url = os.environ.get("ATRACK_REDIS_URL") or "redis://localhost:6379/0"
        for name, value in (("socket_timeout", socket_timeout), ("retry_interval", retry_interval)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise ValueError(f"{name} must be a number of seconds >= 0, got {value!r}")
        if not isinstance(prefix, str):
            raise TypeError(f"prefix must be a str, got {type(prefix).__name__}")
        if client is not None:
            timeout = _client_timeout(client)
            if timeout is None or timeout > _LONG_TIMEOUT:
                logger.warning(
                    "the Redis client given to RedisStorage waits %s for each reply: a "
                    "hung Redis would hold requests that long (times its retries); build "
                    "it with socket_timeout=0.25 or so",
                    "without limit" if timeout is None else f"up to {timeout} s",
                )
        self._url = url
        self.prefix = prefix
        self.socket_timeout = float(socket_timeout)
        # After a failure Redis is not asked for retry_interval; an outage logs once.
        self._resting = Resting("Redis", float(retry_interval), logger)
        # (pid, client): one attribute, replaced whole, so a thread never sees a client
        # with another process's pid. No lock: a lock held by another thread at fork
        # time would stay locked forever in the child.
        self._bound: tuple[int, Any] = (-1, client)
        self._given = client is not None

    @property
    def retry_interval(self) -> float:
        """Seconds during which Redis is not asked again after a failure (settable)."""
        return self._resting.interval

    @retry_interval.setter
    def retry_interval(self, value: float) -> None:
        self._resting.interval = float(value)

    def __repr__(self) -> str:
        where = "client" if self._url is None else _redact(self._url)
        return f"RedisStorage({where!r}, prefix={self.prefix!r})"

    def _client(self) -> Any:
        pid = os.getpid()
        bound_pid, client = self._bound
        if bound_pid == pid:
            return client
        if not self._given:
            # A new client (and pool) for this process. Two threads racing here build
            # two clients; one wins, the other is collected: no connection is made
            # before the first command.
            assert self._url is not None
            client = _redis.Redis.from_url(
                self._url,
                socket_timeout=self.socket_timeout,
                socket_connect_timeout=self.socket_timeout,
                retry=Retry(NoBackoff(), 0),
                decode_responses=True,
                health_check_interval=30,
            )
        self._bound = (pid, client)
        return client

    def _call(self, what: str, op: str, key: str, *args: Any, **kwargs: Any) -> tuple[bool, Any]:
        """``(True, result)``, or ``(False, None)`` when Redis failed or is resting (a
        DEBUG line names ``key`` then)."""
        return self._resting.call(
            what, lambda: getattr(self._client(), op)(key, *args, **kwargs), key
        )

    def get(self, key: str) -> str | None:
        ok, value = self._call("get", "get", self.prefix + key)
        if isinstance(value, bytes):  # a given client without decode_responses
            return value.decode("utf-8", "replace")
        return value if ok and isinstance(value, str) else None

    def set(self, key: str, value: str, ttl: float | None = None) -> None:
        self._call("set", "set", self.prefix + key, value, px=_ms(ttl))

    def add(self, key: str, value: str, ttl: float | None = None) -> bool:
        """``True`` when this call set the key. When Redis fails ``True`` too: a
        duplicate ``/init`` is cheaper than a user never initialised."""
        ok, result = self._call("add", "set", self.prefix + key, value, nx=True, px=_ms(ttl))
        return bool(result) if ok else True

    def delete(self, key: str) -> None:
        self._call("delete", "delete", self.prefix + key)

    def close(self) -> None:
        """Close this process's connections (a given client is closed too)."""
        pid, client = self._bound
        if client is not None and pid == os.getpid():
            try:
                client.close()
            except Exception:
                logger.debug("closing the Redis client failed", exc_info=True)
        if not self._given:
            self._bound = (-1, None)


def _client_timeout(client: Any) -> float | None:
    """The given client's socket timeout; ``None`` when unlimited or not set (then the
    redis-py version's default applies: none in some, 5 s in others)."""
    try:
        timeout = client.connection_pool.connection_kwargs.get("socket_timeout")
    except AttributeError:  # not a redis.Redis; trust it
        return 0.0
    return float(timeout) if isinstance(timeout, (int, float)) else None


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
