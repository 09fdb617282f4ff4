"""The background delivery engine (``delivery="background"``, the default).

The A-Track API has no batch endpoint, so every call is one HTTP request, and a 50 ms
round trip limits one connection to ~20 calls a second. The engine keeps up to
``max_concurrency`` requests in flight, each on a sender thread of its own with its
own keep-alive connection (an ``httpx.HTTPTransport`` used directly), rather than one
shared pool: a thread blocked on a socket costs nothing, sync httpx is the cheapest
httpx per request, and a shared httpcore pool (sync or async) slows down sharply as
requests queue in it. ``docs/delivery.md`` has the measurements behind that choice.

Scheduling, all under one lock (the ``Stats`` lock, so counters and queues change in
the same critical section and ``stats()`` is always consistent):

- ``_lanes``: one FIFO of calls per uuid. A uuid is *active* while its lane exists: its
  head call is either in ``_ready``, being sent, or waiting to be retried. Later calls
  of that uuid wait behind it, which gives per-user order even across retries.
- ``_ready``: uuids whose head call may be sent now; sender threads take from it.
- ``_delayed``: a heap of (due time, seq, uuid) for heads waiting to be retried. A
  timer thread moves them back to ``_ready``; no sender sleeps through a backoff, so
  other users keep flowing while one user's call waits.
- Back-pressure counts calls not in flight (waiting to be sent or to be retried);
  ``max_queue_size`` of those, and a new call is dropped at once.
- ``flush()`` registers a waiter with the number of calls outstanding at that moment;
  only calls with a lower ``seq`` count it down, so calls made later never hold it.
- An outage (``OUTAGE_AFTER`` attempts in a row without any HTTP response) switches to
  one probe at a time until the API answers again.

Sender threads are started on demand, no more than are useful (``MIN_SENDERS`` ..
``max_concurrency``), and exit after a minute idle. They are daemon threads: the exit
flush (``atexit`` in ``_sdk.py``) bounds the wait by ``shutdown_timeout``, and a sender
stuck on an unreachable API cannot keep the interpreter alive. After ``os.fork()`` the
child rebuilds all of this empty (``after_fork_in_child``); what the parent had queued
stays the parent's.
"""

from __future__ import annotations

import heapq
import logging
import math
import os
import random
import socket
import ssl
import threading
import time
import urllib.request
from collections import deque
from typing import Any

import httpx

from . import _delivery
from ._delivery import Call, Outcome, Reporter, Stats, _fork_reset, classify
from ._errors import DeliveryError
from ._options import Options
from ._wire import PATH_ATTRIBUTES, PATH_EVENT, PATH_INIT, headers, new_request_id

logger = logging.getLogger("atrack")

# An idle sender (and its keep-alive connection) goes away after this long; the same
# for the retry timer thread when nothing waits.
IDLE_EXIT = 60.0
# After this many attempts in a row got no HTTP response at all (refused, reset, timed
# out), the API is taken to be unreachable: one probe at a time, spaced by backoff, until
# one gets an answer. Without it, an outage with thousands of users queued costs most of
# a core in connection attempts (measured: 0.76 CPU s per second, 10,000 users queued).
OUTAGE_AFTER = 10
# Sender threads are started as work needs them, but no more than can be useful: with
# the GIL, one process runs one sender's Python at a time, so once the senders'
# network waits cover each other's CPU time, more threads only fight over the GIL
# (measured at 0 ms latency: 128 threads cost 0.6 CPU s per 1,000 calls, 8-16 threads
# 0.28, at the same throughput). The useful number is about wall time / CPU time of a
# request (Little's law), doubled for headroom; the wall time is the minimum over a
# recent window, which is the network's latency without the time spent queueing for
# the GIL. Until the first answers, up to START_SENDERS.
MIN_SENDERS = 4
START_SENDERS = 16
SAMPLE_WINDOW = 256


class _FlushWaiter:
    __slots__ = ("remaining", "seq")

    def __init__(self, seq: int, remaining: int) -> None:
        self.seq = seq
        self.remaining = remaining


class BackgroundDelivery:
    """Sends calls from sender threads; see the module docstring for the design."""

    def __init__(self, options: Options, base_url: str, stats: Stats, reporter: Reporter) -> None:
        self._options = options
        self._base_url = base_url
        self._stats = stats
        self._reporter = reporter
        self._key = options.public_key
        self._max_queue = options.max_queue_size
        self._max_senders = options.max_concurrency
        self._max_retries = options.max_retries
        self._closed = False
        self._init_state()
        # Done here, in the thread building the SDK, not lazily in a sender: a thread
        # importing a module when the process forks leaves that module's import lock
        # held forever in the child, whose senders then fail (seen: the first
        # connection imports encodings.idna for getaddrinfo, and in the child that
        # became "LookupError: unknown encoding: idna"). Same for loading the CA bundle.
        import encodings.idna  # noqa: F401
        import stringprep  # noqa: F401

        import httpcore

        if options.http2:
            try:
                import httpcore._sync.http2  # noqa: F401  (imports h2)
            except ImportError:
                raise ImportError(
                    "http2=True needs the h2 package: pip install 'a-track-sdk[http2]'"
                ) from None
        self._ssl: ssl.SSLContext | None = _ssl_context()
        _fork_reset(self)

    def _init_state(self) -> None:
        self._lock = self._stats._lock
        self._work = threading.Condition(self._lock)  # senders wait here for _ready
        self._tick = threading.Condition(self._lock)  # the timer waits here for _delayed
        self._done = threading.Condition(self._lock)  # flush() waits here
        self._lanes: dict[str, deque[Call]] = {}
        self._ready: deque[str] = deque()
        self._delayed: list[tuple[float, int, str]] = []
        self._waiters: list[_FlushWaiter] = []
        self._outstanding = 0  # accepted and not yet delivered or given up
        self._seq = 0
        self._senders = 0
        self._idle = 0
        self._target = min(self._max_senders, START_SENDERS)  # senders worth having
        self._samples = 0
        self._cpu_avg = 0.0
        self._wall_min = self._wall_min_prev = math.inf
        self._threads: set[threading.Thread] = set()
        self._timer: threading.Thread | None = None
        self._stopping = False
        self._outage = False  # see OUTAGE_AFTER
        self._no_response = 0  # attempts in a row without an HTTP response
        self._probe: Call | None = None  # the one call in flight during an outage
        self._probe_at = 0.0
        self._probes_failed = 0
        self._ssl = None
        self._shared: httpx.HTTPTransport | None = None
        self._stats.queued_fn = self._queued_locked

    def after_fork_in_child(self) -> None:
        # The parent's threads do not exist here and its queue is the parent's to send;
        # the inherited clients share sockets with the parent, so they are abandoned
        # (not closed: closing could disturb the parent's connections).
        self._stats.after_fork_in_child()
        self._init_state()

    # -- the interface ATrackSdk uses ---------------------------------------------------

    def submit(self, call: Call) -> bool:
        """Enqueue without blocking; ``False`` (counted, reported) when it does not fit."""
        stats = self._stats
        with self._lock:
            closed = self._closed
            accepted = not closed and self._outstanding - stats.in_flight < self._max_queue
            if accepted:
                call.seq = self._seq
                self._seq += 1
                self._outstanding += 1
                stats.enqueued += 1
                lane = self._lanes.get(call.uuid)
                if lane is None:
                    self._lanes[call.uuid] = deque((call,))
                    self._ready.append(call.uuid)
                    self._wake_locked()
                else:
                    lane.append(call)  # the uuid is active: this call waits its turn
        if not accepted:
            self._reporter.dropped(call, closed=closed)
        return accepted

    def queued(self) -> int:
        with self._lock:
            return self._queued_locked()

    def _queued_locked(self) -> int:
        return self._outstanding - self._stats.in_flight

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every call accepted before this one is delivered or given up."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            if self._outstanding == 0:
                return True
            # Every outstanding call has a seq below self._seq, and every later call a
            # seq at or above it: the waiter counts down only for the former.
            waiter = _FlushWaiter(self._seq, self._outstanding)
            self._waiters.append(waiter)
            try:
                while waiter.remaining > 0:
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        return False
                    self._done.wait(remaining)
                return True
            finally:
                self._waiters.remove(waiter)

    def shutdown(self, timeout: float | None = None) -> None:
        """Flush (bounded by ``timeout``), then stop the threads. Idempotent."""
        start = time.monotonic()
        with self._lock:
            if self._closed:
                return
            self._closed = True
        flushed = self.flush(timeout)
        with self._lock:
            self._stopping = True
            self._work.notify_all()
            self._tick.notify_all()
            left = self._outstanding
            threads = list(self._threads)
            timer = self._timer
        if not flushed:
            logger.warning(
                "A-Track shut down with %d calls not delivered (shutdown timeout %.1f s)",
                left,
                timeout if timeout is not None else float("inf"),
            )
        # After a flush the senders are idle and exit at once. After a timeout some are
        # stuck on a slow or unreachable API: they are daemons and finish (or die with
        # the process) on their own, so waiting for them would only break the bound.
        deadline = time.monotonic() + 0.5 if flushed else start + (timeout or 0.0)
        for thread in [*threads, *([timer] if timer is not None else [])]:
            thread.join(max(0.0, deadline - time.monotonic()))
        with self._lock:
            shared, self._shared = self._shared, None
            alive = any(t.is_alive() for t in threads)
        if shared is not None and not alive:
            shared.close()

    # -- scheduling (all *_locked methods run with self._lock held) ---------------------

    def _wake_locked(self) -> None:
        """A uuid became ready: wake an idle sender, or start one if under the limit."""
        if self._idle:
            self._work.notify()
        elif self._senders < self._target and not self._stopping:
            self._start_thread_locked(sender=True)

    def _start_thread_locked(self, *, sender: bool) -> threading.Thread | None:
        thread = threading.Thread(
            target=self._sender_main if sender else self._timer_main,
            name="atrack-sender" if sender else "atrack-retry",
            daemon=True,
        )
        try:
            thread.start()
        except RuntimeError:
            # "can't create new thread at interpreter shutdown": existing threads (if
            # any) carry on; otherwise the calls stay queued and flush() times out.
            logger.debug("A-Track could not start a thread", exc_info=True)
            return None
        self._threads.add(thread)
        if sender:
            self._senders += 1
        return thread

    def _take_locked(self) -> Call | None:
        """The next call to send, waiting for one; ``None`` tells the thread to exit."""
        while True:
            if self._stopping:
                return None
            wait: float | None = IDLE_EXIT
            if self._senders > self._target + 2:
                return None  # latency dropped: fewer senders do the same work for less CPU
            if self._ready:
                if self._outage:
                    # One probe at a time; the others wait (without using up attempts).
                    now = time.monotonic()
                    if self._probe is None and now >= self._probe_at:
                        call = self._lanes[self._ready.popleft()][0]
                        self._probe = call
                        self._stats.in_flight += 1
                        return call
                    wait = None if self._probe is not None else self._probe_at - now
                else:
                    call = self._lanes[self._ready.popleft()][0]
                    self._stats.in_flight += 1
                    if self._ready:  # more work than this thread: pass it on
                        self._wake_locked()
                    return call
            self._idle += 1
            try:
                woken = self._work.wait(wait)
            finally:
                self._idle -= 1
            if not woken and not self._ready and wait == IDLE_EXIT:
                return None

    def _settle_locked(self, call: Call, outcome: Outcome) -> DeliveryError | None:
        """Record an attempt's outcome. When the call is given up on, returns the error:
        the caller reports it, then calls :meth:`_give_up_locked`. Until then the call
        counts as in flight and its uuid stays blocked, so ``flush()`` returns only after
        ``on_error`` has seen it, and the user's next call waits for the report."""
        stats = self._stats
        self._track_reachability_locked(call, outcome)
        if outcome.ok:
            stats.in_flight -= 1
            stats.sent += 1
            self._finish_locked(call)
            return None
        if outcome.delay is not None and call.attempts <= self._max_retries and not self._stopping:
            stats.in_flight -= 1
            stats.retried += 1
            heapq.heappush(self._delayed, (time.monotonic() + outcome.delay, call.seq, call.uuid))
            if self._timer is None:
                self._timer = self._start_thread_locked(sender=False)
            else:
                self._tick.notify()
            return None
        return outcome.error or DeliveryError(f"{call.path} failed")

    def _observe_locked(self, wall: float, cpu: float) -> None:
        """One answered request's wall and CPU time: adjust the useful sender count."""
        self._samples += 1
        cpu = max(cpu, 1e-5)
        self._cpu_avg = cpu if self._samples == 1 else self._cpu_avg * 0.95 + cpu * 0.05
        self._wall_min = min(self._wall_min, wall)
        if self._samples % SAMPLE_WINDOW == 0:  # forget old minima: latency may rise
            self._wall_min_prev, self._wall_min = self._wall_min, math.inf
        wall_min = min(self._wall_min, self._wall_min_prev)
        useful = math.ceil(2.0 * wall_min / self._cpu_avg) + 2
        self._target = max(MIN_SENDERS, min(self._max_senders, useful))

    def _track_reachability_locked(self, call: Call, outcome: Outcome) -> None:
        was_probe = call is self._probe
        if was_probe:
            self._probe = None
        if outcome.ok or (outcome.error is not None and outcome.error.status is not None):
            # Any HTTP answer, even an error status: the API is reachable.
            self._no_response = 0
            if self._outage:
                self._outage = False
                self._work.notify_all()
                logger.info("A-Track API reachable again; resuming normal sending")
            return
        self._no_response += 1
        if self._no_response < OUTAGE_AFTER:
            return
        if not self._outage:
            self._outage = True
            self._probes_failed = 0
            logger.warning(
                "A-Track API unreachable (%d attempts in a row without a response); "
                "probing with one call at a time until it answers",
                self._no_response,
            )
        elif was_probe:
            self._probes_failed += 1
        # Exponential in failed probes, capped, half-jittered: never 0 (that would spin).
        step = min(_delivery.BACKOFF_CAP, _delivery.BACKOFF_BASE * 2.0**self._probes_failed)
        self._probe_at = time.monotonic() + step * (0.5 + random.random() / 2)
        self._work.notify()  # a waiting sender takes the next probe when it is due

    def _give_up_locked(self, call: Call) -> None:
        self._stats.in_flight -= 1
        self._stats.failed += 1
        self._finish_locked(call)

    def _finish_locked(self, call: Call) -> None:
        lane = self._lanes[call.uuid]
        lane.popleft()
        if lane:
            self._ready.append(call.uuid)  # this sender takes it (or another) next
        else:
            del self._lanes[call.uuid]
        self._outstanding -= 1
        if self._waiters:
            notify = False
            for waiter in self._waiters:
                if call.seq < waiter.seq:
                    waiter.remaining -= 1
                    notify = notify or waiter.remaining == 0
            if notify:
                self._done.notify_all()

    # -- threads ------------------------------------------------------------------------

    def _sender_main(self) -> None:
        lock = self._lock
        conn: _Connection | None = None
        done: tuple[Call, Outcome] | None = None  # the last attempt, not yet settled
        timing: tuple[float, float] | None = None  # its wall and CPU seconds
        failed: Call | None = None  # given up on and reported, not yet finished
        try:
            while True:
                error: DeliveryError | None = None
                call: Call | None = None
                with lock:
                    if failed is not None:
                        self._give_up_locked(failed)
                        failed = None
                    if done is not None:
                        call, outcome = done
                        done = None
                        if timing is not None and outcome.ok:
                            self._observe_locked(*timing)
                        error = self._settle_locked(call, outcome)
                    if error is None:
                        call = self._take_locked()
                if error is not None:
                    # Outside the lock: logging and the user's on_error may be slow.
                    assert call is not None
                    failed = call
                    self._reporter.failed(call, error, count=False)
                    continue
                if call is None:
                    return
                try:
                    if conn is None:
                        conn = self._connection()
                    wall, cpu = time.perf_counter(), time.thread_time()
                    outcome = conn.send(call)
                    timing = (time.perf_counter() - wall, time.thread_time() - cpu)
                except Exception as exc:  # a bug must not kill the sender or strand the call
                    logger.exception("A-Track sender failed on %r", call)
                    outcome = Outcome(False, error=DeliveryError(f"{call.path} failed: {exc!r}"))
                    timing = None
                done = (call, outcome)
        finally:
            with lock:
                # Only set when an exception escaped the loop: never strand a call.
                if failed is not None:
                    self._give_up_locked(failed)
                if done is not None and self._settle_locked(*done) is not None:
                    self._give_up_locked(done[0])
                self._senders -= 1
                self._threads.discard(threading.current_thread())
            if conn is not None and conn.transport is not self._shared:
                conn.close()

    def _timer_main(self) -> None:
        with self._lock:
            try:
                while not self._stopping:
                    if not self._delayed:
                        if not self._tick.wait(IDLE_EXIT) and not self._delayed:
                            return
                        continue
                    now = time.monotonic()
                    due = self._delayed[0][0]
                    if due > now:
                        self._tick.wait(due - now)
                        continue
                    while self._delayed and self._delayed[0][0] <= now:
                        _, _, uuid = heapq.heappop(self._delayed)
                        self._ready.append(uuid)
                        self._wake_locked()
            finally:
                self._timer = None
                self._threads.discard(threading.current_thread())

    def _connection(self) -> _Connection:
        if self._options.http2:
            # HTTP/2 multiplexes every sender's requests over one connection.
            with self._lock:
                if self._shared is None:
                    self._shared = _transport(
                        self._base_url, self._ssl, http2=True, connections=self._max_senders
                    )
                shared = self._shared
            return _Connection(self._options, self._base_url, shared)
        ssl_context = self._ssl
        if ssl_context is None:  # after fork: a fresh context, not one shared with the parent
            ssl_context = self._ssl = _ssl_context()
        return _Connection(
            self._options, self._base_url, _transport(self._base_url, ssl_context, http2=False)
        )


_ssl_cache: tuple[int, ssl.SSLContext] | None = None


def _ssl_context() -> ssl.SSLContext:
    """One verifying SSL context per process, shared by every SDK and sender: building
    one from the CA bundle costs ~20 ms of CPU. A forked child builds its own (OpenSSL
    state in use by the parent's threads at fork time is not safe to share)."""
    global _ssl_cache
    cached = _ssl_cache
    if cached is not None and cached[0] == os.getpid():
        return cached[1]
    # Two threads may both build one on first use; the last one wins, both work.
    context = httpx.create_ssl_context()
    _ssl_cache = (os.getpid(), context)
    return context


def _transport(
    base_url: str, ssl_context: ssl.SSLContext | None, *, http2: bool, connections: int = 1
) -> httpx.HTTPTransport:
    """An httpx transport with its own keep-alive pool, honouring proxy variables
    (``HTTPS_PROXY``, ``ALL_PROXY``, ``NO_PROXY``) the way ``httpx.Client`` does."""
    url = httpx.URL(base_url)
    proxies = urllib.request.getproxies()
    proxy = proxies.get(url.scheme) or proxies.get("all")
    if proxy and urllib.request.proxy_bypass(url.host):
        proxy = None
    return httpx.HTTPTransport(
        verify=ssl_context if ssl_context is not None else True,
        http2=http2,
        limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections),
        proxy=proxy or None,
        # httpcore writes the headers and the body in two sends; with Nagle's algorithm
        # the body waits for the peer's (possibly delayed, up to 40 ms) ACK of the
        # headers, which halved throughput in the benchmarks.
        socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
    )


class _Connection:
    """One sender's way to the API: an httpx transport used directly.

    ``httpx.Client`` adds per request what the engine does not need (base URL merging,
    cookies, auth and redirect flows, event hooks): about 40% of the CPU of a request
    on loopback. The transport keeps httpx's connection handling, TLS, proxies and
    exception mapping. URLs and the timeout are built once.
    """

    __slots__ = ("_base", "_key", "_timeout", "_urls", "transport")

    def __init__(self, options: Options, base_url: str, transport: httpx.HTTPTransport) -> None:
        self.transport = transport
        self._key = options.public_key
        self._base = base_url
        self._timeout: dict[str, Any] = httpx.Timeout(options.timeout).as_dict()
        self._urls = {p: httpx.URL(base_url + p) for p in (PATH_INIT, PATH_ATTRIBUTES, PATH_EVENT)}

    def send(self, call: Call) -> Outcome:
        """One attempt of ``call``; the same request id on every attempt."""
        call.attempts += 1
        if not call.request_id:
            call.request_id = new_request_id()
        url = self._urls.get(call.path) or httpx.URL(self._base + call.path)
        request = httpx.Request(
            "POST",
            url,
            content=call.body,
            headers=headers(self._key, call.request_id),
            extensions={"timeout": self._timeout},
        )
        try:
            response = self.transport.handle_request(request)
            try:
                response.read()
            finally:
                response.close()
        except httpx.HTTPError as exc:
            return classify(call, None, exc)
        return classify(call, response, None)

    def close(self) -> None:
        self.transport.close()
