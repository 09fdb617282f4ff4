"""The call record: one API call on its way from the caller to the API."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, ClassVar

from ._wire import PATH_EVENT, WireContext, event_json


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
    # What the call counts for in the queue's byte bound: 0 means ``len(body)``.
    weight: ClassVar[int] = 0

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


# The slot that holds a Call's body (EventCall reads and fills it behind a property).
_BODY: Any = Call.__dict__["body"]

# What an EventCall's weight counts per attribute on top of its body's bound: the
# memory its held attributes take beyond their JSON (a dict entry, a key made for the
# call, a float's object). Without it 100 small-int attributes per event took 3.2 times
# the bytes the queue counted (tracemalloc); with it 0.7-1.3 times, as eager bodies
# (1.1-1.6 times: a Call and a bytes object around the body).
ATTRIBUTE_MEMORY = 64


class EventCall(Call):
    """An event from a request tracker whose body is encoded when it is first read (by
    the sender or the outbox writer), not in the caller's thread.

    Only made for an event whose body :func:`~atrack_core._wire.event_bound` showed
    to encode, within the size limit, so nothing can fail later that the caller should
    have heard of; ``weight`` is that bound plus :data:`ATTRIBUTE_MEMORY` per attribute
    (what the queue's byte bound counts for it). ``parts`` are validated copies and an
    immutable context: the body is the same whenever it is made.
    """

    __slots__ = ("_parts", "weight")

    def __init__(
        self,
        uuid: str,
        parts: tuple[str, str, dict[str, Any], str, WireContext],
        weight: int,
    ) -> None:
        self.path = PATH_EVENT
        self.uuid = uuid
        self.request_id = ""
        self.attempts = 0
        self.created = 0.0
        self.seq = 0
        self.stored = 0
        self._parts: tuple[str, str, dict[str, Any], str, WireContext] | None = parts
        weight += ATTRIBUTE_MEMORY * len(parts[2])
        self.weight = weight  # type: ignore[misc]  # per instance here; a ClassVar on Call

    @property
    def body(self) -> bytes:
        parts = self._parts
        if parts is None:
            data: bytes = _BODY.__get__(self)
            return data
        # Two threads may both get here (the sender and the outbox writer): they make
        # the same bytes, and the slot is filled before the parts are let go.
        data = event_json(*parts)
        _BODY.__set__(self, data)
        self._parts = None
        return data

    @body.setter
    def body(self, value: bytes) -> None:
        _BODY.__set__(self, value)
        self._parts = None
