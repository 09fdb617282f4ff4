"""The SDK the example shops use, from ``ATRACK_*`` environment variables.

- ``ATRACK_PUBLIC_KEY``, ``ATRACK_ENDPOINT``, ``ATRACK_GEO``, ``ATRACK_DELIVERY``,
  ``ATRACK_DISABLED``, ``ATRACK_OUTBOX`` (a directory: calls kept on disk until
  delivered, docs/outbox.md; the demo and the run commands below turn it on): read by
  ``Options.from_env()``. Without a key the shop runs with
  tracking disabled rather than refuse to start.
- ``ATRACK_REDIS_URL`` (e.g. ``redis://127.0.0.1:6379/0``): the SDK's storage is a
  :class:`~atrack_core.redis.RedisStorage` there, shared by every worker process and
  host, so a user gets one ``/init`` per session however many workers serve them.
  Unset: the default per-process ``MemoryStorage``.

The Flask and Django shops use their frameworks' own settings for the same thing
(``ATRACK_STORAGE`` config key, ``ATRACK["STORAGE"]``); see ``docs/deployment.md``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

from atrack_core import ATrackSdk, Options, Storage

__all__ = ["REDIS_STORAGE", "build_sdk", "storage_from_env"]

logger = logging.getLogger("example_apps")

REDIS_STORAGE = "atrack_core.redis.RedisStorage"
"""The dotted path that framework settings take; the class reads ``ATRACK_REDIS_URL``."""


def storage_from_env(environ: Mapping[str, str] | None = None) -> Storage | None:
    """A ``RedisStorage`` on ``ATRACK_REDIS_URL`` when it is set, else ``None``."""
    env = os.environ if environ is None else environ
    url = env.get("ATRACK_REDIS_URL", "").strip()
    if not url:
        return None
    from atrack_core.redis import RedisStorage  # needs the `redis` extra

    return RedisStorage(url)


def build_sdk(environ: Mapping[str, str] | None = None) -> ATrackSdk:
    """The SDK from the ``ATRACK_*`` environment (disabled without a key)."""
    env = dict(os.environ if environ is None else environ)
    storage = storage_from_env(env)
    extra = {} if storage is None else {"storage": storage}
    try:
        return ATrackSdk(Options.from_env(env, **extra))
    except ValueError as exc:
        logger.warning("A-Track disabled: %s", exc)
        return ATrackSdk(Options.from_env(env, disabled=True, **extra))
