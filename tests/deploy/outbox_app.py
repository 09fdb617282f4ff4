"""A WSGI app for the outbox's kill -9 test: ``/burst?n=N`` tracks N events at once,
``/stats`` shows the SDK's counters, ``/health`` says it is up. The SDK comes from the
environment (``ATRACK_ENDPOINT``, ``ATRACK_OUTBOX``...)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qs

from atrack_core import ATrackSdk, Options

sdk = ATrackSdk(Options.from_env())


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    path = environ.get("PATH_INFO", "")
    if path == "/burst":
        query = parse_qs(environ.get("QUERY_STRING", ""))
        n = int(query["n"][0])
        for i in range(n):
            sdk.track("burst", {"i": i}, uuid=f"user-{i % 100}")
        body: Any = {"pid": os.getpid()}
    elif path == "/stats":
        body = {"pid": os.getpid(), **sdk.stats()}
    else:
        body = {"ok": True}
    data = json.dumps(body).encode()
    start_response("200 OK", [("content-type", "application/json")])
    return [data]
