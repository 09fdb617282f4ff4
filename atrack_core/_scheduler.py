"""The background scheduler (``delivery="background"``, the default): lanes, timers, senders.

The A-Track API has no batch endpoint, so every call is one HTTP request, and a 50 ms
round trip limits one connection to ~20 calls a second. The scheduler keeps up to
``max_concurrency`` requests in flight through the SDK's transport, either with
sender threads that each own a keep-alive connection (a transport without a multi
driver: httpx), or with one sender thread driving every request (a transport with a
:class:`~atrack_core._transport.Multi`: libcurl's multi interface).
``docs/delivery.md`` has the measurements behind both.

Scheduling, all under one lock (the ``Stats`` lock, so counters and queues change in
the same critical section and ``stats()`` is always consistent):

- ``_lanes``: per uuid, the calls that must wait for an earlier call of that user.
  Order only where it matters: ``/init`` and ``/attributes`` are *barriers*: one at a
  time per user, in call order, each after every earlier call of that user. An
  ``/event`` waits for the barriers made before it, not for other events (they carry
  their own timestamp), so one user's events go out concurrently.
- ``_ready``: calls that may be sent now; senders take from it, first come first served.
- ``_delayed``: a heap of (due time, seq, call) waiting out a backoff. A timer thread
  moves them back to ``_ready``; no sender sleeps through a backoff, so other users
  keep flowing while one call waits, and a barrier's later calls keep waiting for it.
- Back-pressure counts calls not in flight (waiting to be sent or retried): at most
  ``max_queue_size`` of those and ``MAX_QUEUE_BYTES`` of bodies; a call that does
  not fit goes to the store's ``overflow`` hook when there is one, else is dropped.
- ``flush()`` registers a waiter with the number of calls outstanding at that moment;
  only calls with a lower ``seq`` count it down, so calls made later never hold it.
- An outage (``OUTAGE_AFTER`` attempts in a row without any HTTP response) switches to
  one probe at a time until the API answers again.

Hooks for a persistent store (an outbox, ``_outbox``), set as ``BackgroundDelivery.hooks``:
``accepted(call)`` for every call enqueued, under the lock in ``seq`` order (the
caller's thread: a deque's append; a true result asks for ``start()``, which runs
after the lock is released, like a sender's start), ``overflow(call)`` when
it does not fit (``True``: the store keeps it), ``settled(call, delivered)`` when it
was delivered or finally rejected, ``park(call)`` when a retryable call ran out of
retries (or the SDK stops): ``True``, the store keeps it for later and it is neither
reported nor counted as failed (both under the scheduler's lock: must not block).
While ``spilling`` is true the store holds older calls on disk only, and new calls go
to ``overflow`` too, so a user's calls keep their order. ``submit(resumed=True)`` takes
a call the store loads back (with its request id and ``created``), spilling or not.
With hooks, the request id is assigned under the lock, by whichever comes first: the
sender taking the call (``_poll_locked``) or the store writing it, so the store writes
the id the API sees (and ``uuid4`` stays off the caller's thread).

Senders are daemon threads: the exit flush (``_shutdown.py``) bounds the wait by
``shutdown_timeout``, and a sender stuck on an unreachable API cannot keep the
interpreter alive. After
``os.fork()`` the child rebuilds all of this empty (``after_fork_in_child``); what the
parent had queued stays the parent's.
"""

from __future__ import annotations

import heapq
import logging
import math
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from . import _fork, _retry, _sigterm, _threads
from ._call import Call
from ._errors import DeliveryError
from ._reporting import Reporter, Stats
from ._retry import Outcome, attempt, classify, prepare
from ._transport import Connection, Endpoint, Multi, Response, Transport
from ._wire import PATH_EVENT, new_request_id

if TYPE_CHECKING:
    from ._options import Options

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
# network waits cover each other's CPU time, more threads only fight over the GIL.
# The useful number is about wall time / CPU time of a request (Little's law), doubled
# for headroom; the wall time is the minimum over a recent window, which is the
# network's latency without the time spent queueing for the GIL. Until the first
# answers, up to START_SENDERS.
MIN_SENDERS = 4
START_SENDERS = 16
SAMPLE_WINDOW = 256
# Bodies waiting (not in flight) are bounded in bytes as well as in number.
MAX_QUEUE_BYTES = 32 * 1024 * 1024


class StoreHooks(Protocol):
    """What a persistent store (an outbox) observes; see the module docstring.

    ``accepted`` and ``spilling`` are plain attributes: they are on every caller's
    path, where a method call or a property would be most of the store's cost."""

    accepted: Callable[[Call], bool | None]
    spilling: bool

    def start(self) -> None: ...

    def overflow(self, call: Call) -> bool: ...

    def settled(self, call: Call, delivered: bool) -> None: ...

    def park(self, call: Call) -> bool: ...


class _Lane:
    """One user's calls that wait for an earlier call of that user."""

    __slots__ = ("barrier", "events", "waiting")

    def __init__(self, barrier: Call | None, events: int) -> None:
        self.barrier = barrier  # the released /init or /attributes, unsettled
        self.events = events  # released events, unsettled
        self.waiting: deque[Call] | None = None  # not yet released, in call order


class _FlushWaiter:
    __slots__ = ("remaining", "seq")

    def __init__(self, seq: int, remaining: int) -> None:
        self.seq = seq
        self.remaining = remaining


class BackgroundDelivery:
    """Sends calls from sender threads; see the module docstring for the design."""

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
        self._key = options.public_key
        self._max_queue = options.max_queue_size
        self._max_bytes = MAX_QUEUE_BYTES
        self._max_senders = options.max_concurrency
        self._max_retries = options.max_retries
        # A transport with a multi driver gets one sender thread doing everything.
        self._uses_multi = type(transport).multi is not Transport.multi
        self._closed = False
        self.hooks: StoreHooks | None = None
        self._init_state()
        _fork.register(self)

    def _init_state(self) -> None:
        self._lock = self._stats._lock
        self._work = threading.Condition(self._lock)  # senders wait here for _ready
        self._tick = threading.Condition(self._lock)  # the timer waits here for _delayed
        self._done = threading.Condition(self._lock)  # flush() waits here
        self._lanes: dict[str, _Lane] = {}
        self._ready: deque[Call] = deque()
        self._delayed: list[tuple[float, int, Call]] = []
        self._waiters: list[_FlushWaiter] = []
        self._outstanding = 0  # accepted and not yet delivered or given up
        self._bytes = 0  # body bytes of the outstanding calls
        self._seq = 0
        self._senders = 0
        self._idle = 0
        self._target = min(self._max_senders, START_SENDERS)  # senders worth having
        self._samples = 0
        self._cpu_avg = 0.0
        self._wall_min = self._wall_min_prev = math.inf
        self._threads: set[threading.Thread] = set()
        self._flush_in_hook_said = False
        self._timer = False  # the retry timer thread runs (or is about to start)
        # Threads to start once the lock is released ("sender", "timer", "store": the
        # store's own, see StoreHooks): Thread.start()
        # waits for the new thread, and under gevent that wait yields to other greenlets;
        # one of them blocking on this lock (made before monkey-patching, so a real
        # lock) would block the whole worker. Nothing here yields while holding the lock.
        self._pending: list[str] = []
        self._stopping = False
        self._outage = False  # see OUTAGE_AFTER
        self._no_response = 0  # attempts in a row without an HTTP response
        self._probe: Call | None = None  # the one call in flight during an outage
        self._probe_at = 0.0
        self._probes_failed = 0
        # The latest failed attempt since the last delivered one: the shutdown line
        # names it, so "N calls not delivered" comes with a reason.
        self._last_failure: DeliveryError | None = None
        self._multi: Multi | None = None  # the multi sender's driver, while it runs
        self._loop_ident = 0  # the multi sender's thread id
        self._loop_woken = False
        self._loop_free = 0  # how many more requests the multi sender can take now
        self._stats.queued_fn = self._queued_locked

    def after_fork_in_child(self) -> None:
        # The parent's threads do not exist here and its queue is the parent's to send;
        # the inherited connections share sockets with the parent, so they are abandoned
        # (not closed: closing could disturb the parent's connections).
        self._stats.after_fork_in_child()
        self._init_state()

    # -- the interface ATrackSdk uses ---------------------------------------------------

    def submit(self, call: Call, *, resumed: bool = False) -> bool:
        """Enqueue without blocking; ``False`` (counted, reported) when it does not fit.

        A call rebuilt by a store keeps its ``request_id`` and ``created``; the store
        passes ``resumed=True`` for it."""
        stats = self._stats
        size = call.weight or len(call.body)
        if not call.created:
            call.created = time.time()
        hooks = self.hooks
        divert = hooks is not None and hooks.spilling and not resumed
        with self._lock:
            closed = self._closed
            waiting = self._outstanding - stats.in_flight
            accepted = (
                not divert
                and not closed
                and waiting < self._max_queue
                and (self._bytes + size <= self._max_bytes or waiting == 0)
            )
            if accepted:
                call.seq = self._seq
                self._seq += 1
                self._outstanding += 1
                self._bytes += size
                stats.enqueued += 1
                lane = self._lanes.get(call.uuid)
                event = call.path == PATH_EVENT
                if lane is None:
                    self._lanes[call.uuid] = _Lane(None, 1) if event else _Lane(call, 0)
                    self._ready.append(call)
                    self._wake_locked()
                elif lane.barrier is None and not lane.waiting and (event or not lane.events):
                    # Nothing earlier to wait for: ready now.
                    if event:
                        lane.events += 1
                    else:
                        lane.barrier = call
                    self._ready.append(call)
                    self._wake_locked()
                elif lane.waiting is None:
                    lane.waiting = deque((call,))
                else:
                    lane.waiting.append(call)
                if hooks is not None and hooks.accepted(call):
                    self._pending.append("store")
        if self._pending:
            self._start_pending()
        if accepted:
            return True
        if not closed and hooks is not None:
            if hooks.overflow(call):
                return True
            # The store refuses calls once shutdown() closed it, which may have happened
            # since the check above: then the call is lost to the shutdown, not to a full
            # queue (shutdown() closes the scheduler before the store).
            closed = self._closed
        limit = ""
        if not closed and waiting < self._max_queue:
            limit = f"{self._max_bytes // (1024 * 1024)} MiB of calls waiting"
        self._reporter.dropped(call, closed=closed, limit=limit)
        return False

    def queued(self) -> int:
        with self._lock:
            return self._queued_locked()

    @property
    def lock(self) -> threading.Lock:
        """The scheduler's lock (a store assigns its row ids under it)."""
        return self._lock

    def room(self) -> int:
        """How many more calls may wait now (a store loads that many back)."""
        with self._lock:
            if self._closed or self._bytes * 4 >= self._max_bytes * 3:
                return 0
            return max(0, self._max_queue - self._queued_locked())

    def _queued_locked(self) -> int:
        return self._outstanding - self._stats.in_flight

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every call accepted before this one is delivered or given up."""
        flushed = self._flush(timeout)
        if logger.isEnabledFor(logging.DEBUG):
            self._log_record("flush")
        return flushed

    def _log_record(self, after: str) -> None:
        """The process's delivery record at DEBUG (counters since the process started;
        the deployment tests read the last line of each process from a log file)."""
        totals = self._stats.snapshot(0)
        logger.debug(
            "A-Track delivery record (pid %d, after %s): %d enqueued, %d sent, "
            "%d retried, %d failed, %d dropped",
            os.getpid(),
            after,
            totals["enqueued"],
            totals["sent"],
            totals["retried"],
            totals["failed"],
            totals["dropped"],
        )

    def _flush(self, timeout: float | None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            if self._outstanding == 0:
                return True
            if threading.current_thread() in self._threads:
                # A delivery thread: user code runs here only in on_error (or a
                # transport of one's own), whose call stays outstanding until the hook
                # returns. Waiting would wait for itself (for ever with timeout=None,
                # with this sender stalled), so it does not wait. Said once: a hook that
                # flushes does so for every failure.
                if not self._flush_in_hook_said:
                    self._flush_in_hook_said = True
                    logger.warning(
                        "A-Track flush() or shutdown() called from on_error cannot wait "
                        "for the call being reported; it returns without waiting"
                    )
                return False
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

    def shutdown(
        self,
        timeout: float | None = None,
        *,
        budget: float | None = None,
        since: float | None = None,
    ) -> None:
        """Flush (bounded by ``timeout``), then stop the threads. Idempotent. ``budget``
        is the bound the log line names (the exit flush gives each SDK what is left of
        one process-wide deadline: ``timeout`` may be less than its shutdown timeout);
        ``since``, the deadline's start, is where the line's "waited" counts from (after
        a server's stop whose flush ran out, "waited 0.00 s" hid the wait that stop made)."""
        start = time.monotonic()
        with self._lock:
            if self._closed:
                return
            self._closed = True
        flushed = self._flush(timeout)
        with self._lock:
            self._stopping = True
            self._work.notify_all()
            self._tick.notify_all()
            if self._multi is not None:
                self._multi.wake()
            left = self._outstanding
            last_failure = self._last_failure
            threads = list(self._threads)
            # Without an outbox (which keeps them on disk) the calls no sender will
            # take now are lost: they leave the queue, counted and reported as dropped.
            abandoned = self._abandon_locked() if not flushed and self.hooks is None else []
        if abandoned:
            self._reporter.abandoned(abandoned)
        self._reporter.closing()
        if logger.isEnabledFor(logging.DEBUG):
            self._log_record("shutdown")
        if not flushed:
            bound = budget if budget is not None else timeout
            logger.warning(
                "A-Track shut down with %d calls not delivered to %s (shutdown timeout "
                "%s s, waited %.2f s%s)%s",
                left,
                self._endpoint.base_url,
                "none" if bound is None else f"{bound:g}",
                time.monotonic() - (start if since is None else min(since, start)),
                # Not lost: the next process using the directory adopts and sends them.
                "" if self.hooks is None else "; the outbox keeps those it wrote",
                "" if last_failure is None else f"; the last failed attempt: {last_failure}",
            )
        # After a flush the senders are idle and exit at once. After a timeout some are
        # stuck on a slow or unreachable API: they are daemons and finish (or die with
        # the process) on their own, so waiting for them would only break the bound.
        deadline = time.monotonic() + 0.5 if flushed else start + (timeout or 0.0)
        for thread in threads:
            # A thread is listed before it is started (see _start_pending): join() of
            # one not started yet raises, as does joining itself (shutdown() called
            # from on_error).
            if thread.is_alive() and thread is not threading.current_thread():
                thread.join(max(0.0, deadline - time.monotonic()))

    # -- scheduling (all *_locked methods run with self._lock held) ---------------------

    def _release_locked(self, lane: _Lane) -> None:
        """Move the lane's calls that no longer wait for anything to ``_ready``."""
        waiting = lane.waiting
        if waiting is None:
            return
        released = False
        while waiting and lane.barrier is None:
            head = waiting[0]
            if head.is_event:
                waiting.popleft()
                lane.events += 1
            elif lane.events:
                break  # a barrier waits for the events made before it
            else:
                waiting.popleft()
                lane.barrier = head
            self._ready.append(head)
            released = True
        if released:
            self._wake_locked()

    def _wake_locked(self) -> None:
        """A call became ready: wake a sender, or have one started (by
        :meth:`_start_pending`, after the lock is released) if under the limit."""
        if self._uses_multi:
            if self._senders == 0:
                if not self._stopping:
                    self._senders += 1
                    self._pending.append("sender")
            elif self._idle:
                self._work.notify()
            elif (
                self._loop_free
                and not self._loop_woken
                and threading.get_ident() != self._loop_ident
            ):
                # At capacity the loop takes more as requests finish: no wake-up.
                self._loop_woken = True
                if self._multi is not None:
                    self._multi.wake()
        elif self._idle:
            self._work.notify()
        elif self._senders < self._target and not self._stopping:
            self._senders += 1
            self._pending.append("sender")

    def _start_pending(self) -> None:
        """Start the threads :meth:`_wake_locked` asked for. Called without the lock by
        whoever may have asked (so a request is never left behind)."""
        with self._lock:
            kinds, self._pending = self._pending, []
        if kinds:
            _sigterm.on_delivery_start()  # the SIGTERM watcher, from the first delivery
        for kind in kinds:
            if kind == "store":
                if self.hooks is not None:
                    self.hooks.start()
                continue
            if kind == "timer":
                target = self._timer_main
            elif self._uses_multi:
                target = self._multi_main
            else:
                target = self._sender_main
            name = "atrack-retry" if kind == "timer" else "atrack-sender"
            thread = threading.Thread(target=_threads.quiet(target), name=name, daemon=True)
            with self._lock:
                self._threads.add(thread)
            try:
                _threads.start(thread)
            except RuntimeError:
                # "can't create new thread at interpreter shutdown": existing threads (if
                # any) carry on; otherwise the calls stay queued and flush() times out.
                logger.debug("A-Track could not start a thread", exc_info=True)
                with self._lock:
                    self._threads.discard(thread)
                    if kind == "timer":
                        self._timer = False
                    else:
                        self._senders -= 1

    def _start_pending_locked(self) -> None:
        """:meth:`_start_pending` from a method holding the lock (released meanwhile)."""
        self._lock.release()
        try:
            self._start_pending()
        finally:
            self._lock.acquire()

    def _poll_locked(self) -> tuple[Call | None, float | None]:
        """The next call to send now (counted in flight), or ``None`` and how long to
        wait before one may be due (``None``: until woken)."""
        call, wait = self._poll_ready_locked()
        if call is not None and not call.request_id and self.hooks is not None:
            call.request_id = new_request_id()  # see the module docstring: store hooks
        return call, wait

    def _poll_many_locked(self, limit: int, into: list[Call]) -> float | None:
        """:meth:`_poll_locked` up to ``limit`` times, the calls appended to ``into``;
        returns the last poll's wait. Without an outage or a store, that is taking the
        first ``limit`` ready calls, in one go."""
        if not self._outage and self.hooks is None:
            ready = self._ready
            count = min(limit, len(ready))
            if count > 0:
                self._stats.in_flight += count
                popleft = ready.popleft
                for _ in range(count):
                    into.append(popleft())
            return None
        wait: float | None = None
        while limit > 0:
            call, wait = self._poll_locked()
            if call is None:
                break
            into.append(call)
            limit -= 1
        return wait

    def _poll_ready_locked(self) -> tuple[Call | None, float | None]:
        if not self._ready:
            return None, None
        if self._outage:
            # One probe at a time; the others wait (without using up attempts).
            now = time.monotonic()
            if self._probe is None and now >= self._probe_at:
                call = self._probe = self._ready.popleft()
                self._stats.in_flight += 1
                return call, None
            return None, (None if self._probe is not None else self._probe_at - now)
        self._stats.in_flight += 1
        return self._ready.popleft(), None

    def _take_locked(self) -> Call | None:
        """The next call for a sender thread, waiting for one; ``None``: exit."""
        while True:
            if self._pending:
                self._start_pending_locked()
            if self._stopping:
                return None
            if self._senders > self._target + 2:
                return None  # latency dropped: fewer senders do the same work for less CPU
            call, wait = self._poll_locked()
            if call is not None:
                if self._ready and not self._outage:  # more work than this thread
                    self._wake_locked()
                return call
            self._idle += 1
            try:
                woken = self._work.wait(IDLE_EXIT if wait is None else wait)
            finally:
                self._idle -= 1
            if not woken and not self._ready and wait is None:
                return None

    def _settle_locked(self, call: Call, outcome: Outcome) -> DeliveryError | None:
        """Record an attempt's outcome. When the call is given up on, returns the error:
        the caller reports it, then calls :meth:`_give_up_locked`. Until then the call
        counts as in flight and its lane stays blocked, so ``flush()`` returns only after
        ``on_error`` has seen it, and the user's next call waits for the report."""
        stats = self._stats
        if outcome.resent:
            stats.retried += 1
        if outcome.ok and self._probe is None and not self._outage:
            self._no_response = 0  # all _track_reachability_locked does for this one
        else:
            self._track_reachability_locked(call, outcome)
        if outcome.ok:
            self._last_failure = None
            stats.in_flight -= 1
            stats.sent += 1
            self._finish_locked(call, True)
            return None
        if outcome.error is not None:
            self._last_failure = outcome.error
        delay = outcome.delay
        retryable = delay is not None
        if delay is not None and call.attempts <= self._max_retries and not self._stopping:
            stats.in_flight -= 1
            stats.retried += 1
            heapq.heappush(self._delayed, (time.monotonic() + delay, call.seq, call))
            if not self._timer:
                self._timer = True
                self._pending.append("timer")
            else:
                self._tick.notify()
            return None
        if retryable and self.hooks is not None and self.hooks.park(call):
            # Kept by the outbox for a later try (until its max age): not a failure.
            stats.in_flight -= 1
            self._finish_locked(call, None)
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
        # MIN_SENDERS is a floor for the estimate, never above max_concurrency.
        self._target = min(self._max_senders, max(MIN_SENDERS, useful))

    def _track_reachability_locked(self, call: Call, outcome: Outcome) -> None:
        was_probe = call is self._probe
        if was_probe:
            self._probe = None
        if outcome.answered:
            self._no_response = 0
            if self._outage:
                self._outage = False
                self._work.notify_all()
                # At the unreachable line's level: a log that shows the outage shows its end.
                logger.warning(
                    "A-Track API at %s reachable again; resuming normal sending",
                    self._endpoint.base_url,
                )
            return
        self._no_response += 1
        if self._no_response < OUTAGE_AFTER:
            return
        if not self._outage:
            self._outage = True
            self._probes_failed = 0
            logger.warning(
                "A-Track API at %s unreachable (%d attempts in a row without a response, "
                "the last: %s); probing with one call at a time until it answers",
                self._endpoint.base_url,
                self._no_response,
                outcome.error,
            )
        elif was_probe:
            self._probes_failed += 1
        # Exponential in failed probes, capped, half-jittered: never 0 (that would spin).
        step = min(_retry.BACKOFF_CAP, _retry.BACKOFF_BASE * 2.0 ** min(self._probes_failed, 64))
        self._probe_at = time.monotonic() + step * (0.5 + _retry.jitter.random() / 2)
        self._work.notify()  # a waiting sender takes the next probe when it is due

    def _give_up_locked(self, call: Call) -> None:
        self._stats.in_flight -= 1
        self._stats.failed += 1
        self._finish_locked(call, False)

    def _finish_locked(self, call: Call, delivered: bool | None) -> None:
        """``delivered``: ``None`` when the store parked the call."""
        lane = self._lanes[call.uuid]
        if call is lane.barrier:
            lane.barrier = None
        else:
            lane.events -= 1
        if lane.waiting:
            self._release_locked(lane)
        if lane.barrier is None and not lane.events and not lane.waiting:
            del self._lanes[call.uuid]
        self._forget_locked(call, delivered)

    def _abandon_locked(self) -> list[Call]:
        """After a shutdown that ran out of time (senders stopping): take out every call
        no sender will take any more (ready, backing off, or waiting in its lane behind
        another) and return them, oldest first."""
        left: list[Call] = []
        ready = self._ready
        ready.extend(call for _, _, call in sorted(self._delayed))
        self._delayed.clear()
        while ready:
            call = ready.popleft()
            left.append(call)
            self._finish_locked(call, False)  # releases the calls that waited for it
        # Calls still waiting behind one in flight: its sender, if it ever ends, would
        # release them to nobody.
        for lane in self._lanes.values():
            waiting = lane.waiting
            if waiting:
                lane.waiting = None
                for call in waiting:
                    left.append(call)
                    self._forget_locked(call, False)
        left.sort(key=lambda call: call.seq)
        return left

    def _forget_locked(self, call: Call, delivered: bool | None) -> None:
        """The call leaves the queue's counts (and flush()'s waits)."""
        self._outstanding -= 1
        self._bytes -= call.weight or len(call.body)
        if self.hooks is not None and delivered is not None:
            self.hooks.settled(call, delivered)
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
        """A sender thread: one connection, one request at a time."""
        lock = self._lock
        conn: Connection | None = None
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
                if self._pending:
                    self._start_pending()
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
                        conn = self._transport.connection(self._endpoint)
                    wall, cpu = time.perf_counter(), time.thread_time()
                    outcome = attempt(conn, call, self._key)
                    timing = (time.perf_counter() - wall, time.thread_time() - cpu)
                except Exception as exc:  # a bug must not kill the sender or strand the call
                    logger.exception("A-Track sender failed on %r", call)
                    outcome = Outcome(False, error=DeliveryError(f"{call.path} failed: {exc!r}"))
                    timing = None
                except BaseException:
                    # A host's signal handler run in this sender (under gevent it is a
                    # greenlet of the main thread) raised SystemExit: the call goes
                    # back for another attempt (settled below), the exception on.
                    done = (call, _interrupted(call))
                    raise
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
            if self._pending:
                self._start_pending()
            if conn is not None:
                conn.close()

    def _multi_main(self) -> None:
        """The one sender of a transport with a multi driver: every request from here."""
        lock = self._lock
        capacity = self._max_senders
        multi: Multi | None = None
        flying: dict[int, Call] = {}
        results: list[tuple[Call, Outcome]] = []
        failed: list[Call] = []
        new: list[Call] = []
        try:
            with lock:
                self._loop_ident = threading.get_ident()
            while True:
                errors: list[tuple[Call, DeliveryError]] = []
                new = []
                with lock:
                    for call in failed:
                        self._give_up_locked(call)
                    failed = []
                    for call, outcome in results:
                        error = self._settle_locked(call, outcome)
                        if error is not None:
                            errors.append((call, error))
                    results = []
                    self._loop_woken = False
                    wait: float | None = None
                    if not self._stopping:
                        wait = self._poll_many_locked(capacity - len(flying), new)
                    self._loop_free = capacity - len(flying) - len(new)
                    if not flying and not new and not errors:
                        if self._stopping:
                            return
                        if self._pending:
                            self._start_pending_locked()
                            continue
                        self._idle += 1
                        try:
                            woken = self._work.wait(IDLE_EXIT if wait is None else wait)
                        finally:
                            self._idle -= 1
                        if not woken and not self._ready and wait is None:
                            return
                        continue
                if self._pending:
                    self._start_pending()
                for call, error in errors:
                    # Outside the lock: logging and the user's on_error may be slow.
                    self._reporter.failed(call, error, count=False)
                    failed.append(call)
                if not new and not flying:
                    continue
                if multi is None:
                    built = self._transport.multi(self._endpoint, capacity)
                    assert built is not None
                    multi = built
                    with lock:
                        self._multi = multi
                        if self._loop_woken:
                            # A call came while there was no driver to wake: its
                            # wake-up, or run() below would wait for the first answer.
                            multi.wake()
                for call in new:
                    try:
                        multi.add(call, call.path, prepare(call, self._key), call.body)
                        flying[id(call)] = call
                    except Exception as exc:
                        logger.exception("A-Track sender failed on %r", call)
                        results.append((call, _bug(call, exc)))
                for token, result in multi.run(0.0 if results else wait):
                    call = flying.pop(id(token))
                    if isinstance(result, Response):
                        results.append((call, classify(call, result, None)))
                    else:
                        results.append((call, classify(call, None, result)))
        except Exception as exc:
            logger.exception("A-Track sender loop failed")
            for call in flying.values():
                results.append((call, _bug(call, exc)))
        except BaseException:
            # SystemExit from a host's signal handler run here (gevent): the calls taken
            # and not settled go back for another attempt, the exception on.
            settled = {id(call) for call, _ in results}
            for call in [*flying.values(), *new]:
                if id(call) not in settled:
                    settled.add(id(call))
                    results.append((call, _interrupted(call)))
            raise
        finally:
            with lock:
                for call in failed:
                    self._give_up_locked(call)
                for call, outcome in results:
                    if self._settle_locked(call, outcome) is not None:
                        self._give_up_locked(call)
                self._senders -= 1
                self._loop_ident = 0
                self._multi = None
                self._threads.discard(threading.current_thread())
                if self._ready and not self._stopping:
                    self._wake_locked()  # work came in while this loop was leaving
            if self._pending:
                self._start_pending()
            if multi is not None:
                multi.close()

    def _timer_main(self) -> None:
        with self._lock:
            try:
                while not self._stopping:
                    if self._pending:
                        self._start_pending_locked()
                        continue
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
                        _, _, due_call = heapq.heappop(self._delayed)
                        self._ready.append(due_call)
                        self._wake_locked()
            finally:
                self._timer = False
                self._threads.discard(threading.current_thread())


def _bug(call: Call, exc: BaseException) -> Outcome:
    return Outcome(False, error=DeliveryError(f"{call.path} failed: {exc!r}"))


def _interrupted(call: Call) -> Outcome:
    """An attempt cut short by an exception from a signal handler: retried at once
    (with its request id, so an API that got it counts it once)."""
    return Outcome(False, delay=0.0, error=DeliveryError(f"{call.path} interrupted"))
