"""Exceptions raised by the SDK.

The hierarchy::

    ATrackError                 every error the SDK raises on purpose
    ├── NoUserError             track()/set_attributes() with no uuid and no current user
    ├── QueueFullError          a call dropped because the delivery queue was full
    └── DeliveryError           a call that could not be delivered (``.status``, ``.body``)
        └── KeyRejectedError    the API answered 401/403: the public key was rejected

Bad input is reported with the built-in ``ValueError``/``TypeError``, as Python code
expects. ``DeliveryError`` and its subclass are raised by ``delivery="sync"`` and handed
to ``on_error`` in background mode.
"""

from __future__ import annotations


class ATrackError(Exception):
    """Base class of the SDK's own errors."""


class NoUserError(ATrackError):
    """A call needs a uuid, and neither the call nor the SDK's current user gives one."""


class QueueFullError(ATrackError):
    """The background queue held ``max_queue_size`` calls; this one was dropped."""


class DeliveryError(ATrackError):
    """A call was not delivered.

    ``status`` is the HTTP status of the last attempt, or ``None`` when no response
    came back (connection error, timeout). ``body`` is the start of the response text.
    """

    def __init__(self, message: str, *, status: int | None = None, body: str | None = None):
        super().__init__(message)
        self.status = status
        self.body = body


class KeyRejectedError(DeliveryError):
    """The API answered 401 or 403: the public key is wrong or revoked."""
