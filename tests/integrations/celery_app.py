"""The Celery app the Celery tests run in a real worker process (and publish from).

Broker and result backend: ``ATRACK_TEST_BROKER`` (the tests' redis-server). The
worker's SDK comes from the ``ATRACK_*`` environment, like a deployment's.
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery

from atrack_integrations import current_tracker, track
from atrack_integrations.celery import ATrackCelery

broker = os.environ.get("ATRACK_TEST_BROKER", "redis://127.0.0.1:9/0")
app = Celery("atrack_test", broker=broker, backend=broker)
app.conf.update(
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
    task_acks_late=False,
    result_expires=60,
)
atrack = ATrackCelery(app)


@app.task
def who() -> dict[str, Any] | None:
    tracker = current_tracker()
    if tracker is None:
        return None
    return {"uuid": tracker.uuid, "context": tracker.context}


@app.task
def order_paid(amount: int) -> str:
    track("order_paid", {"amount": amount})  # raises NoRequestError without a request
    tracker = current_tracker()
    assert tracker is not None
    return tracker.uuid


@app.task
def boom() -> None:
    tracker = current_tracker()
    raise ValueError(f"boom as {None if tracker is None else tracker.uuid}")
