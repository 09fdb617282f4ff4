"""A local, A-Track-compatible collector with an inspector page.

It checks every call as the hosted API would (401 without a key, 400 naming the field
that breaks the wire contract, 413 over 256 KiB, 415 for a non-JSON content type),
keeps users and events in SQLite, and serves an inspector page at ``/`` and a JSON
read API under ``/api/``. Point ``ATRACK_ENDPOINT`` (or ``Options(endpoint=...)``) at it.
It answers only to loopback ``Host`` names (and the ones it is told), and refuses
state-changing requests from other origins: no web page can read or wipe it.

Needs the ``collector`` extra (Starlette and uvicorn); ``import atrack_core`` never
imports this package. From the shell: ``atrack collector``. From tests::

    from atrack_core.collector import run_in_thread

    with run_in_thread() as collector:  # a free port on 127.0.0.1
        ...  # send to collector.url
        events = collector.store.events(uuid="user-1")

See ``docs/collector.md`` for the validation rules and the read API.
"""

from __future__ import annotations

try:
    import starlette  # noqa: F401
    import uvicorn  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised without the extra installed
    raise ImportError(
        "atrack_core.collector needs Starlette and uvicorn: pip install 'a-track-sdk[collector]'"
    ) from exc

from ._app import create_app
from ._keys import key_id, mask_key
from ._server import Collector, run_in_thread, serve
from ._store import Store
from ._validate import MAX_BODY_BYTES, BodyError, parse_body

__all__ = [
    "MAX_BODY_BYTES",
    "BodyError",
    "Collector",
    "Store",
    "create_app",
    "key_id",
    "mask_key",
    "parse_body",
    "run_in_thread",
    "serve",
]
