"""Test helpers for applications that use the SDK.

Capture what the SDK would send, with the same validation as a real send (bad input
still raises at the call), without any network::

    from atrack_core.testing import capture_calls

    def test_signup(client):
        with capture_calls() as calls:
            client.post("/signup")
        assert calls.events[0]["event"] == "signed_up"

With pytest the ``atrack_calls`` fixture (registered through the ``pytest11`` entry
point) does the same for one test.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from ._sdk import _capture_sinks


@dataclass(frozen=True, slots=True)
class CapturedCall:
    """One call that would have been sent: its path and its wire body."""

    path: str
    body: dict[str, Any]


class CapturedCalls:
    """The calls captured so far, in call order, from every SDK in the process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._calls: list[CapturedCall] = []

    def _record(self, path: str, body: dict[str, Any]) -> None:
        # A deep copy through JSON: later mutation by the caller must not change the
        # record, and the record is exactly what would have gone on the wire.
        copy = json.loads(json.dumps(body))
        with self._lock:
            self._calls.append(CapturedCall(path, copy))

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


@contextmanager
def capture_calls() -> Iterator[CapturedCalls]:
    """Divert every SDK's calls into a :class:`CapturedCalls` for the ``with`` block."""
    captured = CapturedCalls()
    sink = captured._record
    _capture_sinks.append(sink)
    try:
        yield captured
    finally:
        _capture_sinks.remove(sink)


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
