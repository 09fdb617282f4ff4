"""The SDK's delivery modes: the interface, ``disabled``, ``delivery="sync"``, and the
choice among them and among transports. ``delivery="background"`` is the scheduler
(``_scheduler.py``).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
import threading
import time
from typing import TYPE_CHECKING, Protocol

from . import _fork
from ._call import Call
from ._errors import DeliveryError
from ._reporting import Reporter, Stats
from ._retry import Outcome, attempt
from ._scheduler import BackgroundDelivery
from ._transport import Connection, Endpoint, Transport, endpoint_for

if TYPE_CHECKING:
    from ._options import Options

logger = logging.getLogger("atrack")

# While ``atrack_core.testing`` captures, every SDK sends through the last transport
# here, in the caller's thread (see ``ATrackSdk._submit``). A tuple, replaced whole
# (under the lock) and never changed in place: a caller reads it once and uses what it
# read, so a capture that ends in another thread meanwhile cannot pull it from under it.
overrides: tuple[Transport, ...] = ()
_overrides_lock = threading.Lock()


def push_override(transport: Transport) -> None:
    global overrides
    with _overrides_lock:
        overrides = (*overrides, transport)


def pop_override(transport: Transport) -> None:
    """Remove ``transport``, wherever it is: captures of several threads may end in
    any order."""
    global overrides
    with _overrides_lock:
        overrides = tuple(t for t in overrides if t is not transport)


class Delivery(Protocol):
    def submit(self, call: Call) -> bool: ...

    def queued(self) -> int: ...

    def flush(self, timeout: float | None = None) -> bool: ...

    def shutdown(
        self,
        timeout: float | None = None,
        *,
        budget: float | None = None,
        since: float | None = None,
    ) -> None:
        """Flush, waiting at most ``timeout``, and stop; ``budget``: the bound to report
        when calls are left (defaults to ``timeout``); ``since``: when that bound started
        (defaults to now)."""


class NullDelivery:
    """``disabled=True``: every call is validated, then forgotten."""

    def submit(self, call: Call) -> bool:
        return True

    def queued(self) -> int:
        return 0

    def flush(self, timeout: float | None = None) -> bool:
        return True

    def shutdown(
        self,
        timeout: float | None = None,
        *,
        budget: float | None = None,
        since: float | None = None,
    ) -> None:
        return None


def curl_available() -> bool:
    return importlib.util.find_spec("pycurl") is not None


def green_patched() -> bool:
    """gevent or eventlet has monkey-patched ``socket`` (a blocking libcurl ``perform()``
    would then stall every greenlet of the process)."""
    gevent = sys.modules.get("gevent.monkey")
    if gevent is not None and gevent.is_module_patched("socket"):
        return True
    eventlet = sys.modules.get("eventlet.patcher")
    return bool(eventlet is not None and eventlet.is_monkey_patched("socket"))


def choose_transport(choice: str | Transport, *, sync: bool = False) -> Transport:
    """The transport ``Options.transport`` asks for: an instance as is; ``"auto"`` is
    libcurl when pycurl is installed (extra ``fast``), else httpx, and httpx for
    ``delivery="sync"`` under gevent/eventlet (its sockets cooperate; libcurl's
    blocking call would not)."""
    if isinstance(choice, Transport):
        return choice
    auto_curl = choice == "auto" and curl_available() and not (sync and green_patched())
    if choice == "curl" or auto_curl:
        try:
            from ._curl_transport import CurlTransport
        except ImportError as exc:
            raise ImportError(
                f"transport='curl' needs pycurl: pip install 'a-track-sdk[fast]' ({exc})"
            ) from None
        return CurlTransport()
    from ._httpx_transport import HttpxTransport

    return HttpxTransport()


class SyncDelivery:
    """``delivery="sync"``: each call is sent, with retries, before the SDK method returns.

    Raises only ``DeliveryError`` (an ``ATrackError``) when a call finally fails.
    Connections are kept for reuse, one per concurrent caller; a forked child opens
    its own (the inherited ones share their sockets with the parent)."""

    def __init__(
        self,
        options: Options,
        transport: Transport,
        endpoint: Endpoint,
        stats: Stats,
        reporter: Reporter,
    ) -> None:
        self._options = options
        self._transport = transport
        self._endpoint = endpoint
        self._stats = stats
        self._reporter = reporter
        self._idle: list[Connection] = []
        self._lock = threading.Lock()
        self._pid = os.getpid()
        _fork.register(self)

    def after_fork_in_child(self) -> None:
        self._stats.after_fork_in_child()
        self._lock = threading.Lock()
        self._idle = []  # abandoned, not closed: the parent still uses those sockets
        self._pid = os.getpid()

    def _checkout(self) -> Connection:
        with self._lock:
            if self._idle:
                return self._idle.pop()
        return self._transport.connection(self._endpoint)

    def _checkin(self, conn: Connection, pid: int) -> None:
        with self._lock:
            if pid == self._pid:
                self._idle.append(conn)
                return
        # Taken before a fork and returned in the child: not the child's to use.

    def submit(self, call: Call) -> bool:
        if not call.created:
            call.created = time.time()
        self._stats.add("enqueued")
        self._stats.add("in_flight")
        pid = os.getpid()
        conn = None
        try:
            while True:
                try:
                    if conn is None:
                        conn = self._checkout()
                    outcome = attempt(conn, call, self._options.public_key)
                except Exception as exc:  # a bug must reach the caller as an ATrackError
                    logger.exception("A-Track sync delivery failed on %r", call)
                    outcome = Outcome(False, error=DeliveryError(f"{call.path} failed: {exc!r}"))
                if outcome.resent:
                    self._stats.add("retried")
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
            if conn is not None:
                self._checkin(conn, pid)

    def queued(self) -> int:
        return 0

    def flush(self, timeout: float | None = None) -> bool:
        return True

    def shutdown(
        self,
        timeout: float | None = None,
        *,
        budget: float | None = None,
        since: float | None = None,
    ) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()


def make_delivery(options: Options, base_url: str, stats: Stats, reporter: Reporter) -> Delivery:
    """The delivery ``options`` ask for."""
    if options.disabled:
        return NullDelivery()
    transport = choose_transport(options.transport, sync=options.delivery == "sync")
    endpoint = endpoint_for(base_url, options.timeout, options.http2)
    transport.prepare(endpoint)
    if options.delivery == "sync":
        return SyncDelivery(options, transport, endpoint, stats, reporter)
    return BackgroundDelivery(options, transport, endpoint, stats, reporter)


def sync_delivery(
    options: Options, transport: Transport, base_url: str, stats: Stats
) -> SyncDelivery:
    """A sync delivery through ``transport`` (``atrack_core.testing``'s override)."""
    endpoint = endpoint_for(base_url, options.timeout, options.http2)
    return SyncDelivery(options, transport, endpoint, stats, Reporter(options, stats, base_url))
