"""SQLite storage for the collector: users, events and the raw call log.

One connection guarded by a lock serves every thread. A write is tens of microseconds,
so the event loop writes inline rather than hopping to a thread per request (the hop
would cost more than the write).

The collector is also a benchmark target taking thousands of calls a second, and a
commit per call halved its throughput on a file database. So writes share a
transaction that a small background thread commits every ``commit_interval`` seconds
(group commit); each call sits in its own savepoint, so one failing call never undoes
another. Readers use the same connection and see every write at once; only durability
lags, by at most ``commit_interval``. WAL with ``synchronous=NORMAL`` means a commit
appends to the log without an fsync: a crash can lose the last moments of data but
never corrupts the file, the right trade for a development tool.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import uuid as uuid_module
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any, Final

from ._keys import key_id, mask_key

__all__ = ["Store", "utc_now"]

logger = logging.getLogger("atrack.collector")

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS calls (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    path TEXT NOT NULL,
    key_id TEXT,
    key_hint TEXT,
    request_id TEXT,
    uuid TEXT,
    status INTEGER NOT NULL,
    error TEXT,
    duplicate INTEGER NOT NULL DEFAULT 0,
    body TEXT,
    received_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS calls_by_request ON calls (key_id, path, request_id)
    WHERE request_id IS NOT NULL;
CREATE TABLE IF NOT EXISTS users (
    key_id TEXT NOT NULL,
    key_hint TEXT NOT NULL,
    uuid TEXT NOT NULL,
    first_seen TEXT NOT NULL,
    last_seen TEXT NOT NULL,
    is_new_user INTEGER,
    sdk_version TEXT,
    attributes TEXT NOT NULL DEFAULT '{}',
    profile TEXT NOT NULL DEFAULT '{}',
    context TEXT NOT NULL DEFAULT '{}',
    PRIMARY KEY (key_id, uuid)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS users_by_last_seen ON users (last_seen);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    key_id TEXT NOT NULL,
    key_hint TEXT NOT NULL,
    uuid TEXT NOT NULL,
    event TEXT NOT NULL,
    attributes TEXT NOT NULL,
    timestamp TEXT NOT NULL,
    context TEXT NOT NULL,
    sdk_version TEXT NOT NULL,
    received_at TEXT NOT NULL,
    request_id TEXT
);
CREATE INDEX IF NOT EXISTS events_by_user ON events (key_id, uuid, id);
CREATE INDEX IF NOT EXISTS events_by_name ON events (event, id);
"""

#: Seconds between group commits (see the module docstring).
DEFAULT_COMMIT_INTERVAL: Final = 0.05

_JSON_COLUMNS: Final = frozenset({"attributes", "profile", "context"})


def utc_now() -> str:
    """The current UTC time in the wire format, ``YYYY-MM-DDTHH:MM:SS.mmmZ``."""
    now = datetime.now(timezone.utc)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"


def _dumps(value: object) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _row(names: tuple[str, ...], values: tuple[Any, ...]) -> dict[str, Any]:
    row: dict[str, Any] = {}
    for name, value in zip(names, values, strict=True):
        if name in _JSON_COLUMNS:
            row[name] = json.loads(value)
        elif name == "key_hint":
            row["key"] = value
        elif name in ("duplicate", "is_new_user") and value is not None:
            row[name] = bool(value)
        else:
            row[name] = value
    return row


class Store:
    """Everything the collector received, in SQLite.

    ``db_path=None`` keeps it in memory (gone when the store closes); a path keeps it in
    a file that later collectors reopen. Thread-safe. Rows come back as plain dicts with
    JSON columns decoded and keys shown only as ``key_id`` and a masked ``key``.
    """

    def __init__(
        self,
        db_path: str | os.PathLike[str] | None = None,
        *,
        commit_interval: float = DEFAULT_COMMIT_INTERVAL,
    ) -> None:
        self.path: str | None = os.fspath(db_path) if db_path is not None else None
        self._lock = threading.Lock()
        self._commit_interval = commit_interval
        self._in_transaction = False
        self._stopping = threading.Event()
        # isolation_level=None: the store opens and commits transactions itself.
        self._db = sqlite3.connect(
            self.path if self.path is not None else ":memory:",
            check_same_thread=False,
            isolation_level=None,
        )
        self._closed = False
        try:
            if self.path is not None:
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
        except BaseException:
            self._db.close()
            raise
        # Changes whenever data changes, and across restarts, so the inspector can poll
        # one cheap value and refetch only when something happened.
        self._boot = uuid_module.uuid4().hex[:8]
        self._changes = 0
        self._committer = threading.Thread(
            target=self._commit_periodically, name="collector-commit", daemon=True
        )
        self._committer.start()

    # -- lifecycle ------------------------------------------------------------------

    def close(self) -> None:
        """Commit what is pending and close the database; idempotent."""
        self._stopping.set()
        if self._committer is not threading.current_thread():
            self._committer.join()
        with self._lock:
            if not self._closed:
                self._closed = True
                self._commit_locked()
                self._db.close()

    def commit(self) -> None:
        """Make every write so far durable now rather than within ``commit_interval``."""
        with self._lock:
            self._commit_locked()

    def _commit_locked(self) -> None:
        if self._in_transaction:
            self._in_transaction = False
            self._db.execute("COMMIT")

    def _commit_periodically(self) -> None:
        while not self._stopping.wait(self._commit_interval):
            with self._lock:
                if self._closed:
                    continue
                try:
                    self._commit_locked()
                except sqlite3.Error:
                    # A full disk, say: keep the thread alive and try again next time,
                    # by when the cause may be gone.
                    logger.warning("collector: commit failed", exc_info=True)
                    self._in_transaction = self._db.in_transaction

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            if self._closed:
                raise RuntimeError("the collector's store is closed")
            if not self._in_transaction:
                self._db.execute("BEGIN IMMEDIATE")
                self._in_transaction = True
            self._db.execute("SAVEPOINT call")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK TO call")
                self._db.execute("RELEASE call")
                raise
            self._db.execute("RELEASE call")
            self._changes += 1

    def reset(self) -> None:
        """Delete every user, event and call."""
        with self._transaction() as db:
            db.execute("DELETE FROM calls")
            db.execute("DELETE FROM users")
            db.execute("DELETE FROM events")

    # -- writing --------------------------------------------------------------------

    def record(
        self,
        *,
        path: str,
        key: str | None,
        request_id: str | None,
        raw_body: str | None,
        status: int,
        error: str | None = None,
        body: Mapping[str, Any] | None = None,
        received_at: str | None = None,
    ) -> bool:
        """Log one ingest call and, when ``status`` is 200, apply it.

        ``body`` is the validated body (required when ``status`` is 200). A call whose
        ``request_id`` was already accepted on the same path with the same key is a
        retry: it is logged as a duplicate and not applied again. Returns ``True`` when
        the call was such a duplicate.
        """
        received_at = received_at or utc_now()
        kid = key_id(key) if key else None
        hint = mask_key(key) if key else None
        uuid = body.get("uuid") if body is not None else None
        with self._transaction() as db:
            duplicate = False
            if status == 200 and request_id is not None:
                duplicate = (
                    db.execute(
                        "SELECT 1 FROM calls WHERE key_id = ? AND path = ? AND request_id = ?"
                        " AND status = 200 AND duplicate = 0 LIMIT 1",
                        (kid, path, request_id),
                    ).fetchone()
                    is not None
                )
            db.execute(
                "INSERT INTO calls (path, key_id, key_hint, request_id, uuid, status, error,"
                " duplicate, body, received_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    path,
                    kid,
                    hint,
                    request_id,
                    uuid,
                    status,
                    error,
                    duplicate,
                    raw_body,
                    received_at,
                ),
            )
            if status == 200 and not duplicate:
                if body is None or kid is None or hint is None:
                    raise ValueError("an accepted call needs its key and validated body")
                self._apply(db, path, kid, hint, body, received_at, request_id)
        return duplicate

    def _apply(
        self,
        db: sqlite3.Connection,
        path: str,
        kid: str,
        hint: str,
        body: Mapping[str, Any],
        received_at: str,
        request_id: str | None,
    ) -> None:
        uuid = body["uuid"]
        if path == "/event":
            db.execute(
                "INSERT INTO events (key_id, key_hint, uuid, event, attributes, timestamp,"
                " context, sdk_version, received_at, request_id)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    kid,
                    hint,
                    uuid,
                    body["event"],
                    _dumps(body["attributes"]),
                    body["timestamp"],
                    _dumps(body["context"]),
                    body["sdkVersion"],
                    received_at,
                    request_id,
                ),
            )
            # An event for a user the collector never saw an /init for still makes that
            # user visible, with empty attributes.
            db.execute(
                "INSERT INTO users (key_id, key_hint, uuid, first_seen, last_seen, sdk_version)"
                " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (key_id, uuid) DO UPDATE SET"
                " last_seen = excluded.last_seen, sdk_version = excluded.sdk_version",
                (kid, hint, uuid, received_at, received_at, body["sdkVersion"]),
            )
            return

        row = db.execute(
            "SELECT attributes, profile FROM users WHERE key_id = ? AND uuid = ?", (kid, uuid)
        ).fetchone()
        if row is None or body["mode"] == "replace":
            attributes: dict[str, Any] = dict(body["attributes"])
            profile: dict[str, Any] = dict(body["profile"])
        else:
            # "merge" is shallow: top-level keys of the call win, the rest stay.
            attributes = {**json.loads(row[0]), **body["attributes"]}
            profile = {**json.loads(row[1]), **body["profile"]}
        is_new = body.get("isNewUser")
        context = body.get("context")
        db.execute(
            "INSERT INTO users (key_id, key_hint, uuid, first_seen, last_seen, is_new_user,"
            " sdk_version, attributes, profile, context) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (key_id, uuid) DO UPDATE SET last_seen = excluded.last_seen,"
            " is_new_user = coalesce(users.is_new_user, excluded.is_new_user),"
            " sdk_version = excluded.sdk_version, attributes = excluded.attributes,"
            " profile = excluded.profile,"
            " context = CASE WHEN ? THEN excluded.context ELSE users.context END",
            (
                kid,
                hint,
                uuid,
                received_at,
                received_at,
                is_new,
                body["sdkVersion"],
                _dumps(attributes),
                _dumps(profile),
                _dumps(context if context is not None else {}),
                # Only /init carries a context; /attributes keeps the last one.
                context is not None,
            ),
        )

    # -- reading --------------------------------------------------------------------

    def _query(self, sql: str, params: list[Any]) -> list[dict[str, Any]]:
        # Only the read holds the lock, not the making of the dicts: record(), which
        # ingest calls on the event loop, waits for it (10,000 calls: held ~50 ms, was
        # ~135 ms, the whole read).
        with self._lock:
            cursor = self._db.execute(sql, params)
            names = tuple(column[0] for column in cursor.description)
            rows = cursor.fetchall()
        return [_row(names, values) for values in rows]

    def users(
        self, *, key_id: str | None = None, uuid: str | None = None, limit: int = 500
    ) -> list[dict[str, Any]]:
        """Users, most recently seen first, each with its ``event_count``."""
        where, params = _where(("key_id", key_id), ("uuid", uuid))
        return self._query(
            "SELECT key_id, key_hint, uuid, first_seen, last_seen, is_new_user, sdk_version,"
            " attributes, profile, context, (SELECT count(*) FROM events e"
            " WHERE e.key_id = users.key_id AND e.uuid = users.uuid) AS event_count"
            f" FROM users{where} ORDER BY last_seen DESC, uuid LIMIT ?",
            [*params, limit],
        )

    def events(
        self,
        *,
        key_id: str | None = None,
        event: str | None = None,
        uuid: str | None = None,
        after_id: int | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        """Events, newest (last received) first; ``after_id`` keeps only later ones."""
        where, params = _where(("key_id", key_id), ("event", event), ("uuid", uuid))
        if after_id is not None:
            where += " AND id > ?" if where else " WHERE id > ?"
            params.append(after_id)
        return self._query(
            "SELECT id, key_id, key_hint, uuid, event, attributes, timestamp, context,"
            f" sdk_version, received_at, request_id FROM events{where}"
            " ORDER BY id DESC LIMIT ?",
            [*params, limit],
        )

    def calls(
        self,
        *,
        path: str | None = None,
        uuid: str | None = None,
        key_id: str | None = None,
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        """The raw call log, oldest first, rejected calls and duplicates included.

        ``limit`` keeps the most recent ``limit`` calls (still oldest first).
        """
        where, params = _where(("path", path), ("uuid", uuid), ("key_id", key_id))
        sql = (
            "SELECT id, path, key_id, key_hint, request_id, uuid, status, error, duplicate,"
            f" body, received_at FROM calls{where}"
        )
        if limit is None:
            return self._query(sql + " ORDER BY id", params)
        rows = self._query(sql + " ORDER BY id DESC LIMIT ?", [*params, limit])
        rows.reverse()
        return rows

    def stats(self) -> dict[str, Any]:
        """Counts, the keys and event names seen, and a ``version`` that changes on writes."""
        with self._lock:
            db = self._db
            users = db.execute("SELECT count(*) FROM users").fetchone()[0]
            events = db.execute("SELECT count(*) FROM events").fetchone()[0]
            calls, rejected, duplicates = db.execute(
                "SELECT count(*), count(*) FILTER (WHERE status != 200),"
                " count(*) FILTER (WHERE duplicate) FROM calls"
            ).fetchone()
            keys = [
                {"key_id": kid, "key": hint}
                for kid, hint in db.execute(
                    "SELECT key_id, key_hint FROM users GROUP BY key_id ORDER BY key_hint"
                )
            ]
            names = [
                name
                for (name,) in db.execute(
                    "SELECT event FROM events GROUP BY event ORDER BY event LIMIT 500"
                )
            ]
            version = f"{self._boot}-{self._changes}"
        return {
            "users": users,
            "events": events,
            "calls": calls,
            "rejected_calls": rejected,
            "duplicate_calls": duplicates,
            "keys": keys,
            "event_names": names,
            "version": version,
        }


def _where(*filters: tuple[str, object]) -> tuple[str, list[Any]]:
    clauses = [f"{column} = ?" for column, value in filters if value is not None]
    params = [value for _, value in filters if value is not None]
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), params
