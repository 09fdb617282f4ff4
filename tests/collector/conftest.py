from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

from atrack_core.collector import Collector, run_in_thread

KEY = "pub_test_0123456789abcd"
OTHER_KEY = "pub_other_99998888zzzz"

VALID: dict[str, dict[str, Any]] = {
    "/init": {
        "sdkVersion": "0.1.0",
        "uuid": "user-1",
        "isNewUser": True,
        "mode": "merge",
        "context": {"url": "/pricing?source=google", "locale": "en-US"},
        "attributes": {"plan": "free"},
        "profile": {},
    },
    "/attributes": {
        "sdkVersion": "0.1.0",
        "uuid": "user-1",
        "mode": "merge",
        "attributes": {"plan": "pro"},
        "profile": {},
    },
    "/event": {
        "sdkVersion": "0.1.0",
        "uuid": "user-1",
        "event": "order_created",
        "attributes": {"amount": 12},
        "timestamp": "2026-01-02T03:04:05.678Z",
        "context": {"url": "/checkout"},
    },
}


def body(path: str, **changes: Any) -> dict[str, Any]:
    """A valid body for ``path`` with ``changes`` applied."""
    result = copy.deepcopy(VALID[path])
    result.update(changes)
    return result


@pytest.fixture(scope="module")
def shared_collector() -> Iterator[Collector]:
    with run_in_thread() as running:
        yield running


@pytest.fixture
def collector(shared_collector: Collector) -> Collector:
    """A running in-memory collector, empty at the start of the test.

    One server serves a whole test module (starting one per test would dominate the run
    time); tests that need their own, e.g. to restart it, start it themselves.
    """
    shared_collector.store.reset()
    return shared_collector


@pytest.fixture
def client(collector: Collector) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=collector.url, timeout=10.0) as http:
        yield http


def post(
    client: httpx.Client,
    path: str,
    payload: object,
    *,
    key: str | None = KEY,
    request_id: str | None = None,
) -> httpx.Response:
    headers = {}
    if key is not None:
        headers["x-a-track-key"] = key
    if request_id is not None:
        headers["x-a-track-request-id"] = request_id
    return client.post(path, json=payload, headers=headers)
