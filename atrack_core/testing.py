"""Test helpers for applications that use the SDK.

Capture what the SDK would send, with the same validation as a real send (bad input
still raises at the call), without any network. Capturing plugs a transport
(:class:`CaptureTransport`) into every SDK of the process: each call is serialised,
given its headers and request id, and "sent" in the caller's thread to a transport
that records it and answers 200::

    from atrack_core.testing import capture_calls

    def test_signup(client):
        with capture_calls() as calls:
            client.post("/signup")
        assert calls.events[0]["event"] == "signed_up"

With pytest the ``atrack_calls`` fixture (registered through the ``pytest11`` entry
point) does the same for one test. ``Options(transport=CaptureTransport())`` captures
the calls of one SDK only (they are then sent like any other: in the background
unless ``delivery="sync"``).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from . import _delivery
from ._transport import Connection, Endpoint, Response, Transport


@dataclass(frozen=True, slots=True)
class CapturedCall:
    """One call that would have been sent: its path and its wire body."""

    path: str
    body: dict[str, Any]
    # The request's headers (the public key, the request id, ...).
    headers: dict[str, str] = field(default_factory=dict, compare=False, repr=False)


class CapturedCalls:
    """The calls captured so far, in call order, from every SDK in the process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._calls: list[CapturedCall] = []

    def _record(self, path: str, headers: Mapping[str, str], body: bytes) -> None:
        # Decoded from the bytes that would have gone on the wire.
        call = CapturedCall(path, json.loads(body), dict(headers))
        with self._lock:
            self._calls.append(call)

    @property
    def calls(self) -> list[CapturedCall]:
        with self._lock:
            return list(self._calls)

    def bodies(self, path: str) -> list[dict[str, Any]]:
        """The bodies sent to ``path`` (``"/init"``, ``"/attributes"``, ``"/event"``)."""
        return [c.body for c in self.calls if c.path == path]

    @property
    def inits(self) -> list[dict[str, Any]]:
        return self.bodies("/init")

    @property
    def attributes(self) -> list[dict[str, Any]]:
        return self.bodies("/attributes")

    @property
    def events(self) -> list[dict[str, Any]]:
        return self.bodies("/event")

    def event_names(self) -> list[str]:
        return [b["event"] for b in self.events]

    def clear(self) -> None:
        with self._lock:
            self._calls.clear()

    def __len__(self) -> int:
        return len(self._calls)

    def __iter__(self) -> Iterator[CapturedCall]:
        return iter(self.calls)


class _CaptureConnection(Connection):
    def __init__(self, calls: CapturedCalls) -> None:
        self._calls = calls

    def request(self, path: str, headers: Mapping[str, str], body: bytes) -> Response:
        self._calls._record(path, headers, body)
        return Response(200)


class CaptureTransport(Transport):
    """A transport that records every request into :attr:`calls` and answers 200."""

    name = "capture"

    def __init__(self, calls: CapturedCalls | None = None) -> None:
        self.calls = calls if calls is not None else CapturedCalls()

    def connection(self, endpoint: Endpoint) -> Connection:
        return _CaptureConnection(self.calls)


@contextmanager
def capture_calls() -> Iterator[CapturedCalls]:
    """Send every SDK's calls to a :class:`CaptureTransport` for the ``with`` block,
    in the caller's thread; the calls are in the returned :class:`CapturedCalls`."""
    transport = CaptureTransport()
    _delivery.push_override(transport)
    try:
        yield transport.calls
    finally:
        _delivery.pop_override(transport)


try:
    import pytest
except ImportError:  # pragma: no cover - the plugin only matters under pytest
    pass
else:

    @pytest.fixture
    def atrack_calls() -> Iterator[CapturedCalls]:
        """Everything the SDK would send during the test, with nothing sent."""
        with capture_calls() as captured:
            yield captured
