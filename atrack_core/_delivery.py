"""Getting calls to the API: the call record, retry policy, counters, reporting.

``SyncDelivery`` sends in the caller's thread. ``BackgroundDelivery`` (the engine, in
``_engine.py``) hands calls to sender threads. Both share one retry policy
(:func:`classify`, :func:`attempt`) and one way of reporting failures (:class:`Reporter`).

Module constants are read at call time, so the test suite can shrink the backoff.
"""

from __future__ import annotations

import email.utils
import json
import logging
import os
import random
import socket
import ssl
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from ._errors import ATrackError, DeliveryError, KeyRejectedError, QueueFullError
from ._options import Options, mask_key
from ._wire import headers, new_request_id

logger = logging.getLogger("atrack")

RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
BACKOFF_BASE = 0.5
BACKOFF_CAP = 30.0
RETRY_AFTER_CAP = 60.0
DROP_LOG_INTERVAL = 10.0


@dataclass(slots=True, eq=False)
class Call:
    """One API call: what ``on_error`` receives when it could not be delivered."""

    path: str
    uuid: str
    body: bytes
    # Assigned at the first attempt (keeps uuid4() off the caller's path), then reused
    # by every retry so the API can deduplicate.
    request_id: str = ""
    attempts: int = 0
    # Position in the SDK's call order; flush() waits for the calls below its own.
    seq: int = 0

    def json(self) -> dict[str, Any]:
        """The body as a dict."""
        result: dict[str, Any] = json.loads(self.body)
        return result

    def __repr__(self) -> str:
        return f"Call(path={self.path!r}, uuid={self.uuid!r}, attempts={self.attempts})"


class Stats:
    """Thread-safe delivery counters; :meth:`snapshot` is what ``ATrackSdk.stats()`` returns."""

    __slots__ = (
        "__weakref__",
        "_lock",
        "_pid",
        "dropped",
        "enqueued",
        "failed",
        "filtered",
        "in_flight",
        "queued_fn",
        "retried",
        "sent",
    )

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self.enqueued = 0
        self.sent = 0
        self.failed = 0
        self.retried = 0
        self.dropped = 0
        self.in_flight = 0
        self.filtered = 0
        # Set by the background engine, which shares ``_lock`` and keeps its queue
        # under it: the snapshot then reads the queue length in the same critical section.
        self.queued_fn: Callable[[], int] | None = None
        _fork_reset(self)

    def after_fork_in_child(self) -> None:
        """Fresh lock and zero counters: the child starts with none of the parent's calls.

        Idempotent per process, so every holder of this object may call it."""
        if self._pid == os.getpid():
            return
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self.enqueued = self.sent = self.failed = self.retried = 0
        self.dropped = self.in_flight = self.filtered = 0

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + n)

    def snapshot(self, queued: int) -> dict[str, int]:
        with self._lock:
            if self.queued_fn is not None:
                queued = self.queued_fn()
            return {
                "enqueued": self.enqueued,
                "sent": self.sent,
                "failed": self.failed,
                "retried": self.retried,
                "dropped": self.dropped,
                "queued": queued,
                "in_flight": self.in_flight,
                "filtered": self.filtered,
            }


def backoff_delay(retry: int, rng: Callable[[], float] = random.random) -> float:
    """Full-jitter exponential backoff: uniform in [0, min(cap, base * 2**retry))."""
    return float(rng() * min(BACKOFF_CAP, BACKOFF_BASE * 2.0**retry))


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` value (delta seconds or HTTP date), capped
    at 60 s; ``None`` when absent or unparseable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), RETRY_AFTER_CAP)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None or when.tzinfo is None:
        return None
    delta = when.timestamp() - (time.time() if now is None else now)
    return min(max(delta, 0.0), RETRY_AFTER_CAP)


class Outcome:
    """The result of one attempt: delivered, retry after ``delay``, or give up."""

    __slots__ = ("delay", "error", "ok")

    def __init__(self, ok: bool, delay: float | None = None, error: DeliveryError | None = None):
        self.ok = ok
        self.delay = delay
        self.error = error


class Reporter:
    """Logs and forwards failures: the 401/403 line once per SDK, ``on_error`` always."""

    def __init__(self, options: Options, stats: Stats) -> None:
        self._options = options
        self._stats = stats
        self._key_logged = False
        self._last_drop_log = -DROP_LOG_INTERVAL
        self._last_closed_log = -DROP_LOG_INTERVAL
        self._last_fail_log = -DROP_LOG_INTERVAL
        self._fails_not_logged = 0
        self._lock = threading.Lock()
        _fork_reset(self)

    def after_fork_in_child(self) -> None:
        self._lock = threading.Lock()

    def failed(self, call: Call, error: DeliveryError, *, count: bool = True) -> None:
        """Report a call given up on. ``count=False`` when the caller already counted
        it in ``stats().failed`` (the engine does, under its own lock)."""
        if count:
            self._stats.add("failed")
        if isinstance(error, KeyRejectedError):
            with self._lock:
                first = not self._key_logged
                self._key_logged = True
            if first:
                logger.error(
                    "A-Track rejected the public key %s (HTTP %s); nothing will be accepted "
                    "until the key is fixed",
                    mask_key(self._options.public_key),
                    error.status,
                )
        else:
            # During an outage every call fails: one line per 10 s (with a count of the
            # others) keeps the log readable; each one is still at DEBUG and on_error.
            now = time.monotonic()
            with self._lock:
                log = now - self._last_fail_log >= DROP_LOG_INTERVAL
                if log:
                    self._last_fail_log = now
                    others, self._fails_not_logged = self._fails_not_logged, 0
                else:
                    self._fails_not_logged += 1
            if log:
                logger.warning(
                    "A-Track call %s for uuid %r dropped: %s%s",
                    call.path,
                    call.uuid,
                    error,
                    f" ({others} other calls dropped since the last such message)"
                    if others
                    else "",
                )
            else:
                logger.debug("A-Track call %s for uuid %r dropped: %s", call.path, call.uuid, error)
        self.hook(call, error)

    def dropped(self, call: Call, *, closed: bool = False) -> None:
        """Report a call refused at submit: the queue was full, or the SDK shut down.
        Counted in ``stats().dropped``; logged at most once per 10 s."""
        self._stats.add("dropped")
        now = time.monotonic()
        with self._lock:
            if closed:
                log = now - self._last_closed_log >= DROP_LOG_INTERVAL
                if log:
                    self._last_closed_log = now
            else:
                log = now - self._last_drop_log >= DROP_LOG_INTERVAL
                if log:
                    self._last_drop_log = now
        error: ATrackError
        if closed:
            if log:
                logger.warning("A-Track SDK is shut down; dropping calls made after shutdown()")
            error = ATrackError("the SDK was shut down; call dropped")
        else:
            if log:
                logger.warning(
                    "A-Track queue is full (%d calls waiting); dropping calls "
                    "(see stats().dropped)",
                    self._options.max_queue_size,
                )
            error = QueueFullError(f"queue full ({self._options.max_queue_size}); dropped")
        self.hook(call, error)

    def hook(self, call: Call, error: BaseException) -> None:
        on_error = self._options.on_error
        if on_error is None:
            return
        try:
            on_error(call, error)
        except Exception:
            logger.exception("A-Track on_error hook raised")


def classify(call: Call, response: httpx.Response | None, exc: Exception | None) -> Outcome:
    """Decide what one attempt's result means, per the wire protocol's retry rules."""
    if response is not None:
        status = response.status_code
        if 200 <= status < 300:
            return Outcome(True)
        body = response.text[:500]
        if status in RETRY_STATUSES:
            delay = parse_retry_after(response.headers.get("retry-after"))
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
    return Outcome(
        False,
        delay=backoff_delay(call.attempts - 1),
        error=DeliveryError(f"{call.path} failed: {detail}"),
    )


def make_client(
    options: Options, base_url: str, verify: ssl.SSLContext | None = None, **limits: int
) -> httpx.Client:
    """A client for ``base_url``. Pass a shared ``verify`` context when making many:
    building one from the CA bundle costs ~20 ms of CPU, a client around it ~0.5 ms."""
    ssl_context = verify if verify is not None else httpx.create_ssl_context()
    return httpx.Client(
        base_url=base_url + "/",
        timeout=options.timeout,
        verify=ssl_context,
        follow_redirects=False,
        transport=httpx.HTTPTransport(
            verify=ssl_context,
            http2=options.http2,
            limits=httpx.Limits(**limits) if limits else httpx.Limits(),
            # httpcore sends headers and body separately: without this, Nagle's
            # algorithm holds the body until the peer ACKs the headers (up to 40 ms).
            socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
        ),
    )


def attempt(client: httpx.Client, call: Call, public_key: str) -> Outcome:
    """Send one attempt of ``call`` and classify the result."""
    call.attempts += 1
    if not call.request_id:
        call.request_id = new_request_id()
    try:
        response = client.post(
            call.path.lstrip("/"), content=call.body, headers=headers(public_key, call.request_id)
        )
    except httpx.HTTPError as exc:
        return classify(call, None, exc)
    return classify(call, response, None)


class SyncDelivery:
    """``delivery="sync"``: each call is sent, with retries, before the SDK method returns."""

    def __init__(self, options: Options, base_url: str, stats: Stats, reporter: Reporter) -> None:
        self._options = options
        self._base_url = base_url
        self._stats = stats
        self._reporter = reporter
        self._client: httpx.Client | None = None
        self._pid = os.getpid()
        self._lock = threading.Lock()
        _fork_reset(self)

    def after_fork_in_child(self) -> None:
        # Another thread may have held the lock at fork time; the inherited client
        # shares its sockets with the parent and is replaced on next use (PID check).
        self._stats.after_fork_in_child()
        self._lock = threading.Lock()

    def _get_client(self) -> httpx.Client:
        with self._lock:
            if self._client is None or self._pid != os.getpid():
                # A client inherited through fork shares sockets with the parent.
                self._client = make_client(self._options, self._base_url)
                self._pid = os.getpid()
            return self._client

    def submit(self, call: Call) -> bool:
        self._stats.add("enqueued")
        client = self._get_client()
        self._stats.add("in_flight")
        try:
            while True:
                outcome = attempt(client, call, self._options.public_key)
                if outcome.ok:
                    self._stats.add("sent")
                    return True
                assert outcome.error is not None
                if outcome.delay is None or call.attempts > self._options.max_retries:
                    self._reporter.failed(call, outcome.error)
                    raise outcome.error
                self._stats.add("retried")
                time.sleep(outcome.delay)
        finally:
            self._stats.add("in_flight", -1)

    def queued(self) -> int:
        return 0

    def flush(self, timeout: float | None = None) -> bool:
        return True

    def shutdown(self, timeout: float | None = None) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None


# Objects whose locks (and, for the engine, queues and threads) must be rebuilt in a
# forked child: a lock held by another thread at fork time stays locked forever there.
_fork_safe: weakref.WeakSet[Any] = weakref.WeakSet()


def _fork_reset(obj: Any) -> None:
    _fork_safe.add(obj)


def _after_fork_in_child() -> None:
    for obj in list(_fork_safe):
        try:
            obj.after_fork_in_child()
        except Exception:
            logger.exception("A-Track could not reset %s after fork", type(obj).__name__)


if hasattr(os, "register_at_fork"):  # not on Windows
    os.register_at_fork(after_in_child=_after_fork_in_child)


# The engine lives in its own module; re-exported here, where the SDK imports it from.
from ._engine import BackgroundDelivery  # noqa: E402

__all__ = [
    "BackgroundDelivery",
    "Call",
    "Outcome",
    "Reporter",
    "Stats",
    "SyncDelivery",
    "attempt",
    "backoff_delay",
    "classify",
    "make_client",
    "parse_retry_after",
]
