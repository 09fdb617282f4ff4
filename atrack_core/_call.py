"""The call record: one API call on its way from the caller to the API."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ._wire import PATH_EVENT


@dataclass(slots=True, eq=False)
class Call:
    """One API call: what ``on_error`` receives when it could not be delivered.

    ``path``, ``uuid`` and ``body`` (the serialised wire body) never change. The request
    id is assigned at the first attempt (keeps ``uuid4()`` off the caller's path) and
    reused by every retry, so the API can deduplicate; a call rebuilt from a store
    (an outbox) arrives with its original id already set. ``created`` is the wall-clock
    time (``time.time()``) the call was enqueued (set then, unless already set).
    """

    path: str
    uuid: str
    body: bytes
    request_id: str = ""
    attempts: int = 0
    created: float = 0.0
    # Position in the SDK's call order (set by the scheduler at enqueue); flush() waits
    # for the calls below its own.
    seq: int = 0
    # The outbox's row for this call (see ``_outbox``): 0 not written yet, > 0 the row
    # id, < 0 settled or parked before it was written. Changed under the scheduler lock.
    stored: int = 0

    @property
    def is_event(self) -> bool:
        """Events do not order a user's later calls; ``/init`` and ``/attributes`` do."""
        return self.path == PATH_EVENT

    def json(self) -> dict[str, Any]:
        """The body as a dict."""
        result: dict[str, Any] = json.loads(self.body)
        return result

    def __repr__(self) -> str:
        return f"Call(path={self.path!r}, uuid={self.uuid!r}, attempts={self.attempts})"
