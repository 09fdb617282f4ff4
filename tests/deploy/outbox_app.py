"""A WSGI app for the outbox's kill -9 test: ``/burst?n=N`` tracks N events at once,
``/stats`` shows the SDK's counters, ``/written`` too once the writer has committed
every call it had taken when they were read, ``/health`` says it is up. The SDK comes from the
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
    elif path == "/written":
        body = {"pid": os.getpid(), **sdk.stats()}
        # outbox_unwritten counts the calls the next commit takes; those the writer
        # took are committed when the commit holding its I/O lock returns.
        outbox = sdk._outbox
        assert outbox is not None
        with outbox._io:
            pass
    else:
        body = {"ok": True}
    data = json.dumps(body).encode()
    start_response("200 OK", [("content-type", "application/json")])
    return [data]
