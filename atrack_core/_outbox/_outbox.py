"""The outbox: what the scheduler hands it, a writer thread, adoption of orphaned files.

The caller's thread only appends to a deque (``accepted`` is the deque's own
``append``, called by the scheduler under its lock; ``overflow``); everything that
touches the disk runs in one writer thread per process:

- every ``COMMIT_INTERVAL`` it writes the calls accepted since the last commit, in one
  transaction, skipping those already settled (with a healthy API most calls are
  delivered before they are ever written), and deletes the rows of calls delivered or
  finally rejected meanwhile. Everything per call that needs the GIL is kept small
  (request ids made 256 at a time, rows bound 1,000 to a statement): the host's request
  threads want the GIL meanwhile;
- it loads calls that wait on disk only (spilled, parked, adopted) back into the
  scheduler, oldest first, as the scheduler has room;
- it adopts the files of processes that are gone (see ``_files``), expires calls older
  than ``outbox_max_age`` and gives free pages back.

Row ids and ``Call.stored`` are assigned under the scheduler's lock, the same lock
``settled``/``park`` run under, so a call settled before it was written is never
written, and one settled after is deleted by the next commit.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import _fork, _threads
from .._call import Call
from .._wire import new_request_id, new_request_ids
from . import _db, _files

if TYPE_CHECKING:
    from .._scheduler import BackgroundDelivery

logger = logging.getLogger("atrack.outbox")

COMMIT_INTERVAL = 0.05
# Rows of settled calls are deleted at most this often (or once this many wait, or at
# close): a slow API has every call written and then deleted, and deleting a quarter
# second's rows at once touches each page once where every commit's share would
# rewrite it (measured: a third less writer CPU per call). The cost: after a kill -9,
# calls delivered in that quarter second are sent again, with the same request id.
DELETE_INTERVAL = 0.25
DELETE_AT = 5000
LOAD_BATCH = 2000
# A call that ran out of retries waits this long on disk before it is tried again.
PARK_DELAY = 10.0
# A loaded call that found the scheduler full again waits this long.
BOUNCE_DELAY = 0.2
MAINTAIN_INTERVAL = 5.0  # adoption scan, expiry, vacuum
# Calls spilled but not yet written are memory too: beyond this, a spill is a drop.
MAX_SPILL_MEMORY = 16 * 1024 * 1024
# Calls accepted and not yet looked at by the writer, at most (memory: each holds a
# call the scheduler may already have let go of). Beyond it the oldest make room (a
# bounded deque): the writer sees the gap in their ``seq`` and counts them as dropped.
MAX_UNWRITTEN = 200_000
DEFAULT_MAX_BYTES = 256 * 1024 * 1024
DEFAULT_MAX_AGE = 24 * 3600.0

_PARKED = -2
_SETTLED = -1
_ROW_OVERHEAD = _db.ROW_OVERHEAD


def _discard(call: Call) -> None:
    """``accepted`` once the writer is gone: nothing to write."""


# Connections inherited across fork: never used or closed in the child (closing could
# checkpoint or delete the parent's WAL), kept referenced so no finaliser closes them.
_abandoned: list[sqlite3.Connection] = []

# A fork while a writer is inside SQLite could leave one of SQLite's own mutexes locked
# in the child, and the child's writer would hang on its first statement (gunicorn
# --preload forks workers from a master whose SDK has a writer). Each writer holds its
# ``_io`` lock around all SQLite work, and a fork waits for it (one commit at most).
_writers: weakref.WeakSet[Outbox] = weakref.WeakSet()
_held_for_fork: list[threading.Lock] = []


def _before_fork() -> None:
    for outbox in list(_writers):
        lock = outbox._io
        lock.acquire()
        _held_for_fork.append(lock)


def _after_fork() -> None:
    while _held_for_fork:
        _held_for_fork.pop().release()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(
        before=_before_fork, after_in_parent=_after_fork, after_in_child=_after_fork
    )


class Outbox:
    """A per-process durable store for a :class:`BackgroundDelivery`; see the module
    docstring. Built by ``ATrackSdk`` when ``Options.outbox`` is set."""

    def __init__(
        self,
        directory: Path,
        delivery: BackgroundDelivery,
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        max_age: float = DEFAULT_MAX_AGE,
        owner: str = "",
    ) -> None:
        self.directory = directory
        # Only files of the same owner (a digest of the public key) are adopted: a
        # shared directory never sends one project's calls with another project's key.
        self._owner = owner
        self._delivery = delivery
        self._max_bytes = max_bytes
        self._max_age = max_age
        self._init_state()
        delivery.hooks = self
        _fork.register(self)
        _writers.add(self)
        self._start()

    def _init_state(self) -> None:
        # Accepted, not yet looked at by the writer, in ``seq`` order (appended under
        # the scheduler's lock); ``_last_seq``: the last one it looked at.
        self._new: deque[Call] = deque(maxlen=MAX_UNWRITTEN)
        self._last_seq = -1  # the scheduler numbers calls from 0 (after a fork too)
        # The scheduler calls this for every call it accepts: until the writer is
        # started, a function that asks for it; then the deque's own append.
        self.accepted: Callable[[Call], bool | None] = self._accept_first
        self._ids: list[str] = []  # request ids made ahead (never shared across a fork)
        self._spill: deque[Call] = deque()  # to be written as waiting (or put back)
        self._removed: list[tuple[int, int]] = []  # (row id, size) settled
        self._parked: list[int] = []  # row ids parked
        # Calls parked before the writer looked at them: written as waiting even if
        # later pushed out of the bounded ``_new`` (they are in nobody else's hands).
        self._parked_new: list[Call] = []
        self._spill_lock = threading.Lock()
        self._io = threading.Lock()  # held around SQLite work; see _before_fork
        self._spill_bytes = 0
        # Taken by the writer and not yet committed: still counted against the bound
        # (``overflow`` runs in callers' threads while the writer commits).
        self._writing_bytes = 0
        self._writing = 0  # and how many calls that is
        # Calls wait on disk to be loaded: new calls go there too (``overflow``), behind
        # them. A plain attribute: the scheduler reads it on every call.
        self.spilling = False
        self._wake = threading.Event()
        self._opened = threading.Event()  # the file is open and orphans adopted (or failed)
        self._idle = threading.Condition()  # drain() waits here
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        # Taken by whoever does the writer's work: its thread, or close() when it finds
        # the thread not yet running (see close).
        self._ran = threading.Lock()
        self._stop = False
        self._db: sqlite3.Connection | None = None
        self._path: Path | None = None
        self._fd: int | None = None
        self._next_id = 1
        # Row ids below this are in a file that failed (see _recover); the rows carried
        # over from it to the current file, by their old id, for the calls still in the
        # scheduler's hands (settled, parked or bounced back under their old id).
        self._first_id = 1
        self._moved: dict[int, int] = {}
        self._next_due = 0.0  # when a waiting row may next be due (0: check now)
        self._delete_due = 0.0  # when settled calls' rows are next deleted
        self._full_logged = -10.0
        self._dropped_logged = 0
        self.counts: dict[str, int] = dict.fromkeys(
            (
                "rows",
                "bytes",
                "spilled",
                "parked",
                "adopted",
                "expired",
                "dropped",
                "loaded",
            ),
            0,
        )

    def after_fork_in_child(self) -> None:
        # The parent's file, lock and thread are the parent's; closing the inherited
        # descriptor leaves the parent's lock in place (it belongs to the open file).
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
        if self._db is not None:
            _abandoned.append(self._db)
        stop = self._stop
        self._init_state()
        self._stop = stop  # if still open, started again by the child's first call
        if stop:
            self.accepted = _discard

    # -- hooks (see _scheduler.StoreHooks) ------------------------------------------

    def _accept_first(self, call: Call) -> bool:
        """``accepted`` until the writer runs (built, or forked): the scheduler starts
        it through :meth:`start` once its lock is released."""
        self._new.append(call)
        return self._thread is None and not self._stop

    def start(self) -> None:
        self._start()

    def overflow(self, call: Call) -> bool:
        """A call the scheduler has no room for (or, while spilling, any new call)."""
        if self._stop:
            return False
        if call.stored > 0:  # loaded back, and the scheduler filled up again
            self._spill.append(call)
            return True
        size = _db.size_of(call)
        with self._spill_lock:
            full = (
                self.counts["bytes"] + self._writing_bytes + self._spill_bytes + size
                > self._max_bytes
                or self._spill_bytes + size > MAX_SPILL_MEMORY
                or not self._usable(starting=True)
            )
            if not full:
                self._spill_bytes += size
                self._spill.append(call)
                self.spilling = True
                self.counts["spilled"] += 1
        if full:
            return False
        if self._thread is None:
            self._start()
        return True

    def settled(self, call: Call, delivered: bool) -> None:
        stored = call.stored
        if stored > 0:
            if stored < self._first_id:  # in a file that failed: carried over, or lost
                stored = self._moved.pop(stored, 0)
                if not stored:
                    return
            self._removed.append((stored, len(call.body) + len(call.uuid) + _ROW_OVERHEAD))
        elif stored == 0:
            call.stored = _SETTLED

    def _usable(self, *, starting: bool = False) -> bool:
        thread = self._thread
        if self._stop:
            return False
        if thread is None:
            return starting  # started by the caller (never under the scheduler's lock)
        return thread.is_alive() or thread.ident is None

    def park(self, call: Call) -> bool:
        stored = call.stored
        if stored > 0:
            # Its row is in the file even when the writer has stopped (a call in flight
            # at close): the next process adopts it. Refused, the call was reported
            # failed here and delivered by the next process all the same.
            if stored < self._first_id:  # in a file that failed (see _recover)
                stored = call.stored = self._moved.pop(stored, 0)
                if not stored:
                    return False  # its row could not be read back
            self._parked.append(stored)
        elif not self._usable():
            return False
        elif stored == 0:
            # Not written yet: the writer will write it as waiting, unless it was
            # pushed out of the full unwritten deque (its ``seq`` is below what the
            # writer took or what the deque still holds), which nothing will write:
            # then it is not kept, and the scheduler reports it failed.
            new = self._new
            if call.seq <= self._last_seq or (new and call.seq < new[0].seq):
                return False
            if len(self._parked_new) >= MAX_UNWRITTEN:  # the writer far behind
                return False
            call.stored = _PARKED
            self._parked_new.append(call)
        else:
            return False
        self.counts["parked"] += 1
        return True

    # -- for the SDK ------------------------------------------------------------------

    def stats(self) -> dict[str, int]:
        counts = self.counts
        return {
            "outbox_pending": counts["rows"],
            # Accepted or spilled, not yet looked at by the writer (the next commit).
            "outbox_unwritten": len(self._new) + len(self._spill),
            "outbox_bytes": counts["bytes"],
            "outbox_spilled": counts["spilled"],
            "outbox_parked": counts["parked"],
            "outbox_adopted": counts["adopted"],
            "outbox_expired": counts["expired"],
            "outbox_dropped": counts["dropped"],
        }

    def drain(self, timeout: float | None) -> bool:
        """Wait until no call waits on disk to be loaded now (spilled or adopted);
        parked calls (waiting out ``PARK_DELAY``) do not count."""
        deadline = None if timeout is None else time.monotonic() + timeout
        if self._thread is not None and not self._opened.wait(timeout):
            return False
        with self._idle:
            while self.spilling or self._spill:
                if self._thread is None or not self._thread.is_alive():
                    return False
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._wake.set()
                self._idle.wait(0.05 if left is None else min(left, 0.05))
        return True

    def close(self, timeout: float = 2.0) -> None:
        """Write what is still in memory, release the file (the next SDK using the
        directory adopts what is left in it; an empty file is removed)."""
        self._stop = True
        self.accepted = _discard  # the writer's last commit takes what came before
        thread = self._thread
        self._wake.set()
        if (thread is None and self._new) or (thread is not None and not thread.is_alive()):
            # No writer running: published and not yet started (close() from another
            # thread at that moment, or from a signal handler that interrupted the
            # start; a start that failed), or never asked for (a forked child closing
            # before its first call's writer started). Nothing would write what it was
            # handed, and waiting for that start could wait on the very thread that is
            # making it: a writer of close()'s own does the work, once (whichever runs
            # first, see _run; one that finished already leaves nothing to do).
            thread = threading.Thread(
                target=_threads.quiet(self._run), name="atrack-outbox-close", daemon=True
            )
            try:
                _threads.start(thread)
            except RuntimeError:  # interpreter shutting down: no new thread
                self._run()
                return
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                self._log_unwritten_at_close(timeout)

    def _log_unwritten_at_close(self, timeout: float) -> None:
        """The writer outlasted ``close()`` (a stalled disk): the calls it has not
        committed are in this process's memory only, and an exit now loses them."""
        waiting = (_PARKED, 0)
        left = (
            self._writing
            + sum(1 for call in list(self._new) if call.stored in waiting)
            + len(self._spill)
            + len(self._parked_new)
        )
        if left:
            logger.warning(
                "A-Track outbox in %s: the writer did not finish within %g s at shutdown "
                "(a stalled disk?); %d calls not yet written are lost if the process "
                "exits before it does",
                self.directory,
                timeout,
                left,
            )

    # -- the writer thread ------------------------------------------------------------

    def _start(self) -> None:
        with self._start_lock:
            if self._thread is not None or self._stop:
                return
            thread = threading.Thread(
                target=_threads.quiet(self._run), name="atrack-outbox", daemon=True
            )
            self._thread = thread
            self.accepted = self._new.append
        try:
            _threads.start(thread)
        except RuntimeError:  # interpreter shutting down
            logger.debug("A-Track outbox writer could not start", exc_info=True)

    def _run(self) -> None:
        """The writer thread: its work, unless close() did it first (see close)."""
        if self._ran.acquire(blocking=False):
            self._main()

    def _main(self) -> None:
        try:
            with self._io:
                self._open()
        except Exception:
            logger.exception(
                "A-Track outbox in %s cannot be used; calls are kept in memory only",
                self.directory,
            )
            self._stop = True
            self.accepted = _discard
            self._new.clear()
            self._detach()
            with self._io:
                self._release()
            return
        finally:
            self._opened.set()
        last_maintained = 0.0
        while True:
            self._wake.wait(COMMIT_INTERVAL)
            self._wake.clear()
            stop = self._stop
            if self._db is None:  # could not start a fresh file (see _recover)
                break
            try:
                with self._io:
                    self._commit()
                    now = time.monotonic()
                    if not stop and now - last_maintained >= MAINTAIN_INTERVAL:
                        last_maintained = now
                        self._maintain()
                    if not stop:
                        self._load()
            except sqlite3.Error:
                with self._io:
                    self._recover()
            except Exception:
                logger.exception("A-Track outbox writer failed; going on")
            with self._idle:
                self._idle.notify_all()
            if stop:
                break
        with self._io:
            self._release()

    def _open(self) -> None:
        path, fd = _files.create_own(self.directory)
        self._path, self._fd = path, fd
        self._db = _db.connect(path)
        _db.set_owner(self._db, self._owner)
        if not self._stop:  # closing already (see close): the next process adopts
            self._adopt_all()
        corrupt = _files.corrupt_files(self.directory)
        if corrupt:
            logger.warning(
                "A-Track outbox in %s holds %d files moved aside as unreadable (%s): the "
                "calls that could be read from them were adopted when they were moved "
                "aside, the others are not delivered. 'atrack outbox inspect' lists them; "
                "remove them once looked at",
                self.directory,
                len(corrupt),
                ", ".join(path.name for path in corrupt),
            )

    def _recover(self) -> None:
        """A SQLite error on our own file: a fresh file takes over every row of the old
        one that can still be read (see _carry_over), then the old one is removed, or
        moved aside (``*.corrupt-<time>``) when not all of it could be read; the
        waiting calls lost with the unread part are counted in ``outbox_dropped``.
        Without a fresh file the old one stays where it is, for the next process."""
        old_db, old_fd, old_path = self._db, self._fd, self._path
        self._db = None
        waiting: int | None = None
        if old_db is not None:
            with contextlib.suppress(sqlite3.Error):  # best effort: the file failed
                waiting = old_db.execute("SELECT count(*) FROM calls WHERE held = 0").fetchone()[0]
            with contextlib.suppress(sqlite3.Error):
                old_db.close()
        try:
            self._path, self._fd = _files.create_own(self.directory)
            self._db = _db.connect(self._path)
            _db.set_owner(self._db, self._owner)
        except Exception:
            logger.exception(
                "A-Track outbox file %s failed, and a fresh file cannot be started; calls "
                "are kept in memory only (the failed file is left for the next process)",
                old_path,
            )
            if self._db is not None:
                with contextlib.suppress(sqlite3.Error):
                    self._db.close()
                self._db = None
            if self._fd is not None and self._fd != old_fd:
                os.close(self._fd)
                if self._path is not None:
                    _files.remove(self._path)
            self._fd = self._path = None
            if old_fd is not None:
                os.close(old_fd)
            self._stop = True
            self.accepted = _discard
            self._detach()
            return
        carried, carried_waiting, complete = 0, 0, False
        if old_path is not None:
            try:
                carried, carried_waiting, complete = self._carry_over(old_path)
            except sqlite3.Error:
                logger.exception("A-Track outbox could not carry over the rows of %s", old_path)
        lost = 0 if complete or waiting is None else max(0, waiting - carried_waiting)
        self.counts["dropped"] += lost
        self._dropped_logged += lost  # said here, not again by _log_dropped
        where = ""
        if old_path is not None:
            if complete:
                _files.remove(old_path)  # every row is in the fresh file
                where = "; it was removed"
            else:
                where = f"; moved aside to {_files.move_aside(old_path).name}"
        if old_fd is not None:
            os.close(old_fd)
        assert self._path is not None
        logger.error(
            "A-Track outbox file %s failed; %d calls read from it were carried over to a "
            "fresh file %s%s%s",
            old_path,
            carried,
            self._path.name,
            ""
            if complete
            else ", the rest could not be read ("
            + (f"{lost} calls" if waiting is not None else "an unknown number of calls")
            + " waiting in it are not delivered, see stats()['outbox_dropped'])",
            where,
            exc_info=True,
        )

    def _carry_over(self, old: Path) -> tuple[int, int, bool]:
        """The rows of the failed file ``old`` that can be read, into the fresh one:
        waiting rows (and parked ones) as waiting, rows of calls in the scheduler's hands
        as such, mapped from their old id (see ``_moved``), rows of calls settled
        meanwhile not at all. Returns (rows carried, waiting ones, all of it read)."""
        db = self._db
        assert db is not None
        got = _db.salvage(old, self._owner)
        rows, complete = got if got is not None else ([], False)
        now = time.time()
        values: list[Any] = []
        size = waiting = 0
        with self._delivery.lock:  # where ``stored``, ``_moved`` and ``_first_id`` are read
            removed = {rowid for rowid, _ in self._removed}
            parked = set(self._parked)
            self._removed.clear()
            self._parked.clear()
            moved: dict[int, int] = {}
            next_id = self._first_id = self._next_id
            for rowid, path, uuid, body, rid, created, was_held, was_due in rows:
                if rowid in removed:
                    continue  # delivered or rejected meanwhile
                held, due = (0, now + PARK_DELAY) if rowid in parked else (was_held, was_due)
                if held:
                    moved[rowid] = next_id
                else:
                    waiting += 1
                values += (next_id, path, uuid, body, rid, created, held, due)
                size += len(body) + len(uuid) + _ROW_OVERHEAD
                next_id += 1
            # Calls still known by an id of an earlier failed file follow their row.
            for first, then in self._moved.items():
                if then in moved:
                    moved[first] = moved[then]
            self._moved = moved
            self._next_id = next_id
            self.counts["rows"] = self.counts["bytes"] = 0
        if values:
            try:
                _db.insert_committed(db, values)
            except BaseException:
                with self._delivery.lock:
                    self._moved = {}
                raise
        self.counts["rows"] += len(values) // _db.ROW_FIELDS
        self.counts["bytes"] += size
        if waiting:
            self._next_due = 0.0
            self.spilling = True  # new calls queue up behind the waiting ones
        return len(values) // _db.ROW_FIELDS, waiting, complete

    def _detach(self) -> None:
        """The store cannot be used any more (``_stop`` set): the scheduler goes on as
        without one (a shutdown that runs out of time counts and reports the calls it
        leaves as dropped; nothing is parked), and gets back what only the store held."""
        with self._delivery.lock:
            if self._delivery.hooks is self:
                self._delivery.hooks = None
        self._give_back()

    def _give_back(self) -> None:
        """The store cannot be used (``_stop`` set): the calls only it holds in memory,
        spilled or parked and not yet written, go back to the scheduler, past the
        spilling diversion; the scheduler counts and reports those it has no room for
        as dropped (``overflow`` refuses them now). Left here they were in nobody's
        hands: not sent, not counted, ``flush()`` false for ever."""
        with self._delivery.lock:
            parked, self._parked_new = self._parked_new, []
        with self._spill_lock:
            spilled = list(self._spill)
            self._spill.clear()
            self._spill_bytes = 0
            self.spilling = False
        calls = sorted(parked, key=lambda call: call.seq) + spilled
        for call in calls:
            self._delivery.submit(call, resumed=True)
        if calls:
            logger.warning(
                "A-Track outbox in %s gave %d calls it held in memory back to the queue",
                self.directory,
                len(calls),
            )

    def _commit(self) -> None:
        db = self._db
        if db is None:  # no file any more (see _recover)
            self._new.clear()
            return
        now = time.time()
        new, spill, ids = self._new, self._spill, self._ids
        wanted = len(new) + len(spill)
        if len(ids) < wanted:  # made here, before the lock: the callers want it
            ids += new_request_ids(wanted - len(ids))
        if new:
            # Bodies a request tracker's events left to be encoded (EventCall: ~5 µs
            # each) are made here too, before the lock that every caller's submit takes;
            # what arrives meanwhile is encoded under it, below.
            with self._delivery.lock:
                pending = list(new)
            for call in pending:
                call.body  # noqa: B018 - encodes it (a property)
            del pending
        values: list[Any] = []  # the rows to insert, flat (see _db.insert)
        put_back: list[tuple[int, float]] = []
        # Calls only this commit holds (spilled, parked before written, bounced back):
        # given back to the spill if it fails (see _take_back).
        taken: list[Call] = []
        counts = self.counts
        written = added = spilled_bytes = evicted = full = 0
        waiting = False
        park_due = now + PARK_DELAY
        overhead = _ROW_OVERHEAD
        take_id = ids.pop
        spill_lock = self._spill_lock
        with self._delivery.lock:
            # Appended under this lock: a consistent cut, taken whole.
            calls = list(new)
            new.clear()
            parked_new, self._parked_new = self._parked_new, []
            next_id = first_new = self._next_id
            if calls:
                # Calls pushed out of the bounded deque left a gap in the numbering.
                last_seq = calls[-1].seq
                evicted = last_seq - self._last_seq - len(calls)
                self._last_seq = last_seq
                if evicted:
                    # Parked, then pushed out before this cut: written all the same
                    # (as waiting, below), so not counted as not written.
                    first_seq = calls[0].seq
                    pushed_out = [c for c in parked_new if c.seq < first_seq]
                    evicted -= len(pushed_out)
                    calls[:0] = pushed_out
            # The room and what the new calls take of it are one step under the spill
            # lock, so that ``overflow`` cannot promise the same room to a spilled call.
            # Spilled calls had their room reserved when they were taken.
            with spill_lock:
                room = self._max_bytes - counts["bytes"] - self._spill_bytes
                for call in calls:
                    stored = call.stored
                    if stored and stored != _PARKED:
                        continue  # settled already, or loaded back from its row
                    size = len(call.body) + len(call.uuid) + overhead
                    if added + size > room:
                        # In memory still, but not durable: counted, logged sometimes.
                        full += 1
                        call.stored = _SETTLED
                        continue
                    rid = call.request_id
                    if not rid:  # not yet taken by a sender (same lock)
                        rid = call.request_id = take_id() if ids else new_request_id()
                    call.stored = next_id
                    held, due = 1, 0.0
                    if stored:  # parked before it was written: written as waiting
                        held, due = 0, park_due
                        waiting = True
                        taken.append(call)
                    values += (
                        next_id,
                        call.path,
                        call.uuid,
                        call.body,
                        rid,
                        call.created,
                        held,
                        due,
                    )
                    next_id += 1
                    added += size
                    written += 1
                self._writing_bytes = added
            while spill:
                call = spill.popleft()
                taken.append(call)
                stored = call.stored
                size = len(call.body) + len(call.uuid) + overhead
                if stored > 0:  # loaded back, bounced: its row waits again
                    if stored < self._first_id:  # in a file that failed (see _recover)
                        stored = call.stored = self._moved.pop(stored, 0)
                    if stored:
                        put_back.append((stored, now + BOUNCE_DELAY))
                        continue
                    # Its row could not be read back: written anew (no room was
                    # reserved for it, see overflow).
                else:
                    spilled_bytes += size
                rid = call.request_id
                if not rid:
                    rid = call.request_id = take_id() if ids else new_request_id()
                call.stored = next_id
                values += (next_id, call.path, call.uuid, call.body, rid, call.created, 0, 0.0)
                waiting = True
                next_id += 1
                added += size
                written += 1
            self._next_id = next_id
            self._writing = written
            removed = self._removed
            if len(removed) >= DELETE_AT or self._stop or time.monotonic() >= self._delete_due:
                self._removed = []
                self._delete_due = time.monotonic() + DELETE_INTERVAL
            else:
                removed = []
            parked, self._parked = self._parked, []
        if evicted or full:
            counts["dropped"] += evicted + full
        if spilled_bytes:
            with spill_lock:  # from reserved to being written
                self._spill_bytes -= spilled_bytes
                self._writing_bytes += spilled_bytes
        self._log_dropped()
        if not (values or removed or parked or put_back):
            return
        db.execute("BEGIN")
        try:
            if values:
                _db.insert(db, values)
            if removed:
                _db.delete(db, [rowid for rowid, _ in removed])
            if parked:
                _db.set_waiting(db, ((rowid, park_due) for rowid in parked))
            if put_back:
                _db.set_waiting(db, put_back)
            db.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            self._writing_bytes = self._writing = 0
            with self._delivery.lock:  # to be carried over, or not (see _recover)
                self._removed[:0] = removed
                self._parked[:0] = parked
            self._take_back(taken, first_new)
            raise
        counts["rows"] += written - len(removed)
        with spill_lock:
            counts["bytes"] += added - sum(size for _, size in removed)
            self._writing_bytes = self._writing = 0
        # ``counts["bytes"]`` includes this commit's rows already (it added them twice).
        if removed and counts["bytes"] > self._max_bytes // 2:
            _db.vacuum(db, self._max_bytes)  # near the bound: the file follows the rows
        if parked or put_back or waiting:
            self._next_due = 0.0  # look for due rows at the next load

    def _take_back(self, taken: list[Call], first_new: int) -> None:
        """A commit failed: the calls it took that nobody else holds (spilled, parked
        before they were written, bounced back after a load) go back to the front of
        the spill, to be written by the next commit (to a fresh file, see _recover):
        those it gave a row id (from ``first_new``) as new calls, their room reserved
        again; those bounced back keep the row they had. Dropped with the commit, they
        were lost uncounted."""
        if not taken:
            return
        size = 0
        with self._delivery.lock:  # where ``stored`` is read (settled, park)
            for call in taken:
                if call.stored >= first_new:  # a row id of the rolled-back transaction
                    call.stored = 0
                    size += _db.size_of(call)
        with self._spill_lock:
            self._spill.extendleft(reversed(taken))
            self._spill_bytes += size
            self.spilling = True

    def _log_dropped(self) -> None:
        """At most every 10 s: calls not written since the last such line."""
        dropped = self.counts["dropped"]
        now = time.monotonic()
        if dropped > self._dropped_logged and now - self._full_logged >= 10.0:
            self._full_logged = now
            logger.warning(
                "A-Track outbox in %s did not write %d calls (outbox_max_bytes %d reached, "
                "or the writer far behind); they are sent from memory only (see "
                "stats()['outbox_dropped'])",
                self.directory,
                dropped - self._dropped_logged,
                self._max_bytes,
            )
            self._dropped_logged = dropped

    def _load(self) -> None:
        """Hand waiting rows back to the scheduler, oldest first, as it has room."""
        db = self._db
        assert db is not None
        now = time.time()
        if not self.spilling and now < self._next_due:
            return
        room = self._delivery.room()
        if room <= 0:
            return
        rows = _db.due(db, now, min(room, LOAD_BATCH))
        if rows:
            db.execute("BEGIN")
            _db.mark_held(db, (row[0] for row in rows))
            db.execute("COMMIT")
            self.counts["loaded"] += len(rows)
            for row in rows:
                self._delivery.submit(_db.call_of(row), resumed=True)
        if len(rows) < min(room, LOAD_BATCH):
            with self._spill_lock:
                if not self._spill:
                    self.spilling = False
            nxt = db.execute("SELECT min(due) FROM calls WHERE held = 0").fetchone()[0]
            self._next_due = float(nxt) if nxt is not None else float("inf")

    def _maintain(self) -> None:
        db = self._db
        assert db is not None
        if self._max_age:
            db.execute("BEGIN")
            rows, size = _db.expire(db, time.time() - self._max_age)
            db.execute("COMMIT")
            if rows:
                self.counts["rows"] -= rows
                self.counts["bytes"] -= size
                self.counts["expired"] += rows
                logger.warning(
                    "A-Track outbox dropped %d calls older than outbox_max_age (%g s)",
                    rows,
                    self._max_age,
                )
        self._adopt_all()
        _db.vacuum(db, self._max_bytes)

    # -- adoption ---------------------------------------------------------------------

    def _adopt_all(self) -> None:
        for path in _files.outbox_files(self.directory):
            if path == self._path:
                continue
            fd = _files.lock_if_orphaned(path)
            if fd is None:
                continue
            try:
                self._adopt(path)
            finally:
                os.close(fd)  # after its SQLite connection is closed (see _files)

    def _adopt(self, path: Path) -> None:
        """Move the rows of an orphaned file into ours (one transaction), then remove it.
        If this process dies in between, the rows are in both files: delivered twice
        with the same request id, which the API deduplicates."""
        db = self._db
        assert db is not None
        try:
            other = _db.connect(path)
            try:
                owner = _db.owner_of(other)
                rows = _db.all_rows(other) if owner in (None, self._owner) else None
            finally:
                other.close()
        except sqlite3.Error as exc:
            self._adopt_unreadable(path, exc)
            return
        if rows is None:
            logger.debug("A-Track outbox leaves %s: calls of another public key", path.name)
            return
        if rows:
            self._take_rows(rows)
            logger.info("A-Track outbox adopted %d calls from %s", len(rows), path.name)
        _files.remove(path)

    def _take_rows(self, rows: list[_db.Row]) -> None:
        """Rows of another file into ours as waiting, in their order (one transaction)."""
        db = self._db
        assert db is not None
        values: list[Any] = []
        size = 0
        with self._delivery.lock:
            for row in rows:
                call = _db.call_of(row)
                call.stored = self._next_id
                self._next_id += 1
                values += _db.row_values(call, 0, 0.0)
                size += _db.size_of(call)
        _db.insert_committed(db, values)
        self.counts["rows"] += len(rows)
        self.counts["bytes"] += size
        self.counts["adopted"] += len(rows)
        self._next_due = 0.0
        self.spilling = True  # new calls queue up behind the adopted ones

    def _adopt_unreadable(self, path: Path, exc: sqlite3.Error) -> None:
        """An orphaned file SQLite cannot use (a corrupt page, not a database at all):
        the rows that can still be read are adopted, then it is removed if that was all
        of it, else renamed ``*.corrupt-<time>`` and left for the user to look at
        (``atrack outbox inspect`` lists it, and each SDK starting says it is there)."""
        got = _db.salvage(path, self._owner)
        if got is None:  # another key's: not ours to send
            target = _files.move_aside(path)
            logger.error(
                "A-Track outbox file %s cannot be read (%s); it holds calls of another "
                "public key; moved aside to %s",
                path,
                exc,
                target.name,
            )
            return
        rows: list[_db.Row] = [row[:6] for row in got[0]]
        complete = got[1]
        if rows:
            self._take_rows(rows)
        if complete:
            _files.remove(path)
            logger.error(
                "A-Track outbox file %s could not be used (%s); its %d calls were read and "
                "adopted, and it was removed",
                path,
                exc,
                len(rows),
            )
            return
        target = _files.move_aside(path)
        logger.error(
            "A-Track outbox file %s cannot be read (%s); %d calls that could be read were "
            "adopted, the rest are not delivered; moved aside to %s (see 'atrack outbox "
            "inspect')",
            path,
            exc,
            len(rows),
            target.name,
        )

    def _release(self) -> None:
        db, fd, path = self._db, self._fd, self._path
        self._db = None
        if db is not None:
            try:
                empty = self.counts["rows"] <= 0 and _db.stored_bytes(db)[0] == 0
            except sqlite3.Error:
                empty = False
            with contextlib.suppress(sqlite3.Error):
                db.close()
            if empty and path is not None:
                _files.remove(path)
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fd = None


_NOT_REGULAR = "not a regular file (a symlink, FIFO or device): not read"


def describe(directory: Path) -> list[dict[str, Any]]:
    """Per file: name, owner alive or not, pending calls and bytes (``atrack outbox
    inspect``). Read-only; a live owner's file is read through SQLite's own locking.
    What is not a regular file is named with an ``error`` and ``owner_alive`` None.
    Files moved aside as unreadable come last, ``corrupt`` true, with how many calls
    can still be read from them (``readable``: adopted when they were moved aside)
    and an ``error`` when not all of it can."""
    result: list[dict[str, Any]] = []
    for path in _files.outbox_files(directory):
        if not _files.is_regular(path):
            # A symlink, FIFO or device under an outbox file's name was never written by
            # an SDK (which refuses a symlinked one); reading a FIFO would hang here.
            result.append({"file": path.name, "owner_alive": None, "error": _NOT_REGULAR})
            continue
        entry: dict[str, Any] = {"file": path.name, "owner_alive": _files.is_locked(path)}
        try:
            db = _db.connect(path, readonly=True)
            try:
                rows, size = _db.stored_bytes(db)
                oldest = db.execute("SELECT min(created) FROM calls").fetchone()[0]
                paths = dict(
                    db.execute("SELECT path, count(*) FROM calls GROUP BY path").fetchall()
                )
            finally:
                db.close()
            entry.update(pending=rows, bytes=size, oldest=oldest, by_path=paths)
        except sqlite3.Error as exc:
            entry["error"] = str(exc)
        result.append(entry)
    for path in _files.corrupt_files(directory):
        if not _files.is_regular(path):
            result.append({"file": path.name, "owner_alive": None, "error": _NOT_REGULAR})
            continue
        got = _db.salvage(path, None)  # anyone's: never None
        readable, complete = got if got is not None else ([], False)
        corrupt: dict[str, Any] = {"file": path.name, "owner_alive": None, "corrupt": True}
        corrupt["readable"] = len(readable)
        if not complete:
            corrupt["error"] = "not all of it can be read"
        result.append(corrupt)
    return result
