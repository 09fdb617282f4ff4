"""The retry policy: what one attempt's result means, backoff, ``Retry-After``.

Shared by ``delivery="sync"`` and the background scheduler, and by every transport:
:func:`attempt` sends one attempt through a transport connection and classifies it.
Module constants are read at call time, so the test suite can shrink the backoff.
"""

from __future__ import annotations

import email.utils
import os
import random
import time
from collections.abc import Callable

from ._call import Call
from ._errors import DeliveryError, KeyRejectedError
from ._transport import Connection, Response, TransportError
from ._wire import headers, new_request_ids

# The SDK's own generator for jitter: drawing from the global one from background threads
# would change the host's random sequence (and trips Hypothesis in users' test suites).
# Reseeded in a forked child, so workers forked from one parent do not retry in step.
jitter = random.Random()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=jitter.seed)

# Request ids for first attempts, made 256 at a time (``new_request_ids``: one
# ``os.urandom`` call and a few passes in C, a quarter of ``new_request_id``'s CPU per id).
# Only the process that made them takes them: a forked child that took its parent's ids
# would send the same ids as the parent, and the API drops a repeated id as a duplicate.
# The pid check covers every fork (``os.fork``, a C extension's ``fork()``); the fork
# hook also empties the child's copy.
_ids: list[str] = []
_ids_pid = [0]
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_ids.clear)


def _request_id() -> str:
    """A new request id (a uuid4 string) from this process's own supply."""
    if _ids_pid[0] == os.getpid():
        try:
            return _ids.pop()
        except IndexError:  # empty (or emptied by another thread meanwhile)
            pass
    fresh = new_request_ids(1)
    # The supply first, then the pid that makes it this process's: the other way, a
    # thread of a child forked without Python's fork hooks could pop a parent's id
    # between the two (the API would drop its call as a duplicate).
    _ids[:] = fresh[1:]
    _ids_pid[0] = os.getpid()
    return fresh[0]


RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
BACKOFF_BASE = 0.5
BACKOFF_CAP = 30.0
RETRY_AFTER_CAP = 60.0
# The start of an error response kept in ``DeliveryError.body``.
ERROR_TEXT = 500


class Outcome:
    """The result of one attempt: delivered, retry after ``delay``, or give up."""

    __slots__ = ("delay", "error", "ok", "resent")

    def __init__(self, ok: bool, delay: float | None = None, error: DeliveryError | None = None):
        self.ok = ok
        self.delay = delay
        self.error = error
        # The transport resent the request on its own (``Response.resent``).
        self.resent = False

    @property
    def answered(self) -> bool:
        """An HTTP response came back (any status): the API is reachable."""
        return self.ok or (self.error is not None and self.error.status is not None)


# The outcome of every delivered attempt (never changed: see classify).
DELIVERED = Outcome(True)


def backoff_delay(retry: int, rng: Callable[[], float] = jitter.random) -> float:
    """Full-jitter exponential backoff: uniform in [0, min(cap, base * 2**retry))."""
    return float(rng() * min(BACKOFF_CAP, BACKOFF_BASE * 2.0 ** min(retry, 64)))


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` value: ASCII digits (delta seconds) or an
    HTTP date, capped at 60 s. ``None`` (use the backoff) for anything else; never raises."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        # float() of a few hundred digits is inf, not an error; min() caps it.
        return min(float(value), RETRY_AFTER_CAP)
    try:
        when = email.utils.parsedate_to_datetime(value)
        if when is None or when.tzinfo is None:
            return None
        delta = when.timestamp() - (time.time() if now is None else now)
    except (TypeError, ValueError, IndexError, OverflowError, AttributeError):
        return None
    return min(max(delta, 0.0), RETRY_AFTER_CAP)


def classify(call: Call, response: Response | None, exc: BaseException | None) -> Outcome:
    """Decide what one attempt's result means, per the wire protocol's retry rules. A
    request the transport resent on its own counts as one more attempt."""
    if response is not None and response.resent:
        call.attempts += 1
        outcome = _classify(call, response, None)
        if outcome is DELIVERED:
            outcome = Outcome(True)
        outcome.resent = True
        return outcome
    return _classify(call, response, exc)


def _classify(call: Call, response: Response | None, exc: BaseException | None) -> Outcome:
    if response is not None:
        status = response.status
        if 200 <= status < 300:
            return DELIVERED
        body = response.body[:ERROR_TEXT].decode("utf-8", "replace")
        if status in RETRY_STATUSES:
            delay = parse_retry_after(response.retry_after)
            return Outcome(
                False,
                delay=delay if delay is not None else backoff_delay(call.attempts - 1),
                error=DeliveryError(f"HTTP {status} from {call.path}", status=status, body=body),
            )
        cls = KeyRejectedError if status in (401, 403) else DeliveryError
        return Outcome(
            False, error=cls(f"HTTP {status} from {call.path}", status=status, body=body)
        )
    detail = f"{type(exc).__name__}: {exc}" if exc is not None else "no response"
    error = DeliveryError(f"{call.path} failed: {detail}")
    if isinstance(exc, TransportError) and not exc.retry:
        return Outcome(False, error=error)
    return Outcome(False, delay=backoff_delay(call.attempts - 1), error=error)


def prepare(call: Call, public_key: str) -> dict[str, str]:
    """Count an attempt of ``call`` and give its headers (the same request id on every
    attempt; assigned here, at the first one, unless the call came with one)."""
    call.attempts += 1
    if not call.request_id:
        call.request_id = _request_id()
    return headers(public_key, call.request_id)


def attempt(conn: Connection, call: Call, public_key: str) -> Outcome:
    """Send one attempt of ``call`` over ``conn`` and classify the result."""
    request_headers = prepare(call, public_key)
    try:
        response = conn.request(call.path, request_headers, call.body)
    except TransportError as exc:
        return classify(call, None, exc)
    return classify(call, response, None)
