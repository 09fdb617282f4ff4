"""An eight-line WSGI app for the gevent tests: the SDK is built at import (so with
``--preload`` in the master, before the gevent worker monkey-patches), one event per
request."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any

from atrack_core import ATrackSdk, Options

sdk = ATrackSdk(
    Options(
        "pub_gevent_test_1234",
        endpoint=os.environ["ATRACK_TEST_ENDPOINT"],
        transport=os.environ.get("ATRACK_TEST_TRANSPORT", "auto"),  # type: ignore[arg-type]
    )
)


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    if environ["PATH_INFO"] != "/health":
        sdk.track("page_viewed", {"path": environ["PATH_INFO"]}, uuid=f"u{os.getpid()}")
        if environ["PATH_INFO"] == "/flush":
            sdk.flush(10)
    start_response("200 OK", [("content-type", "text/plain")])
    return [b"ok"]
