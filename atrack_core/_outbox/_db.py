"""The outbox's SQLite file: schema and the statements the writer runs.

WAL mode with ``synchronous=NORMAL``: a commit is in the WAL file when it returns, so
it survives the process being killed; only a power cut or kernel crash can lose the
last commits (fsync happens at checkpoints). ``auto_vacuum=INCREMENTAL`` gives freed
pages back to the file system as the backlog drains, so the file's size follows what
it holds.

``held``: 1 while the call is in the scheduler's memory, 0 while it is only here
(spilled, parked, adopted); a held-0 row is loaded back once ``due`` has passed.
"""

from __future__ import annotations

import contextlib
import functools
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from .._call import Call

SCHEMA = """
CREATE TABLE IF NOT EXISTS calls (
    id INTEGER PRIMARY KEY,
    path TEXT NOT NULL,
    uuid TEXT NOT NULL,
    body BLOB NOT NULL,
    request_id TEXT NOT NULL,
    created REAL NOT NULL,
    held INTEGER NOT NULL,
    due REAL NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS calls_waiting ON calls (id) WHERE held = 0;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
# Bytes a row costs beyond its body (columns, index entry, page slack): used for the
# size bound, which then holds for the file itself (measured in the outbox tests).
ROW_OVERHEAD = 160
COLUMNS = "id, path, uuid, body, request_id, created"
Row = tuple[int, str, str, bytes, str, float]


def connect(path: Path, *, readonly: bool = False) -> sqlite3.Connection:
    """Open (creating the schema) an outbox file; raises ``sqlite3.Error`` if corrupt.

    SQLite's 4 KiB pages: 16 KiB ones cost 15% less CPU per row appended (fewer WAL
    frames per commit) but 15% more when rows are written and deleted (a slow API:
    every row), and would let the WAL grow to 16 MiB between checkpoints."""
    if readonly:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
        db.execute("SELECT count(*) FROM calls").fetchone()
        return db
    db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
    try:
        db.execute("PRAGMA auto_vacuum = INCREMENTAL")
        mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise sqlite3.DatabaseError(f"journal_mode is {mode}, not wal")
        db.execute("PRAGMA synchronous = NORMAL")
        db.execute("PRAGMA journal_size_limit = 4194304")
        db.executescript(SCHEMA)
        db.execute("PRAGMA quick_check").fetchone()
    except BaseException:
        db.close()
        raise
    return db


def size_of(call: Call) -> int:
    return len(call.body) + len(call.uuid) + ROW_OVERHEAD


def stored_bytes(db: sqlite3.Connection) -> tuple[int, int]:
    """(rows, their size as :func:`size_of` counts it)."""
    rows, size = db.execute(
        f"SELECT count(*), coalesce(sum(length(body) + length(uuid) + {ROW_OVERHEAD}), 0)"
        " FROM calls"
    ).fetchone()
    return int(rows), int(size)


# Rows per INSERT statement, and ids per DELETE: one statement for many rows runs in
# one ``sqlite3_step``, which releases the GIL once for all of them, where
# ``executemany`` releases and takes it back around every row (and binds and resets
# per row): about a third less CPU per row, and the host's threads get the GIL back
# for the whole of SQLite's work. Each time the writer wants the GIL back it may wait
# for the host's thread to give it up (up to the 5 ms switch interval), so fewer,
# larger statements also mean fewer such hand-overs: 1,000 rows x 8 parameters where
# SQLite allows 32,766 parameters (3.32 and later), 100 under the 999 of older builds.
# Smaller batches go in halves (512, 256 ... 1), so only a few statements are ever
# prepared (and cached by ``sqlite3``).
_MANY_PARAMETERS = sqlite3.sqlite_version_info >= (3, 32, 0)
INSERT_ROWS = 1000 if _MANY_PARAMETERS else 100
DELETE_IDS = 5000 if _MANY_PARAMETERS else 500
ROW_FIELDS = 8  # id, path, uuid, body, request_id, created, held, due


def _batches(count: int, most: int) -> Iterator[tuple[int, int]]:
    """``(start, size)`` covering ``count`` items: ``most`` at a time, then halves."""
    start = 0
    while start < count:
        size = count - start
        size = most if size >= most else 1 << (size.bit_length() - 1)
        yield start, size
        start += size


@functools.cache
def _insert_sql(rows: int) -> str:
    return (
        "INSERT OR REPLACE INTO calls (id, path, uuid, body, request_id, created, held, due)"
        " VALUES " + ",".join(("(?,?,?,?,?,?,?,?)",) * rows)
    )


@functools.cache
def _delete_sql(ids: int) -> str:
    return "DELETE FROM calls WHERE id IN (" + ",".join("?" * ids) + ")"


def row_values(call: Call, held: int, due: float) -> tuple[Any, ...]:
    """One row for :func:`insert` (``call.stored`` is its id)."""
    return (call.stored, call.path, call.uuid, call.body, call.request_id, call.created, held, due)


def insert(db: sqlite3.Connection, values: Sequence[Any]) -> None:
    """Rows as :func:`row_values` gives them, one after the other in one flat list."""
    for start, rows in _batches(len(values) // ROW_FIELDS, INSERT_ROWS):
        db.execute(_insert_sql(rows), values[start * ROW_FIELDS : (start + rows) * ROW_FIELDS])


def insert_committed(db: sqlite3.Connection, values: Sequence[Any]) -> None:
    """:func:`insert` in a transaction of its own: committed, or rolled back and raised."""
    db.execute("BEGIN")
    try:
        insert(db, values)
        db.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            db.execute("ROLLBACK")
        raise


def delete(db: sqlite3.Connection, ids: Sequence[int]) -> None:
    for start, count in _batches(len(ids), DELETE_IDS):
        db.execute(_delete_sql(count), ids[start : start + count])


def set_waiting(db: sqlite3.Connection, rows: Iterable[tuple[int, float]]) -> None:
    """Back to disk only: ``(id, due)``."""
    db.executemany("UPDATE calls SET held = 0, due = ? WHERE id = ?", ((d, i) for i, d in rows))


def due(db: sqlite3.Connection, now: float, limit: int) -> list[Row]:
    """The oldest waiting rows that may be loaded now, in call order."""
    return db.execute(
        f"SELECT {COLUMNS} FROM calls WHERE held = 0 AND due <= ? ORDER BY id LIMIT ?",
        (now, limit),
    ).fetchall()


def mark_held(db: sqlite3.Connection, ids: Iterable[int]) -> None:
    db.executemany("UPDATE calls SET held = 1 WHERE id = ?", ((i,) for i in ids))


def waiting_due(db: sqlite3.Connection, now: float) -> bool:
    return (
        db.execute("SELECT 1 FROM calls WHERE held = 0 AND due <= ? LIMIT 1", (now,)).fetchone()
        is not None
    )


def expire(db: sqlite3.Connection, before: float) -> tuple[int, int]:
    """Delete waiting rows created before ``before``: (rows, bytes)."""
    rows, size = db.execute(
        f"SELECT count(*), coalesce(sum(length(body) + length(uuid) + {ROW_OVERHEAD}), 0)"
        " FROM calls WHERE held = 0 AND created < ?",
        (before,),
    ).fetchone()
    if rows:
        db.execute("DELETE FROM calls WHERE held = 0 AND created < ?", (before,))
    return int(rows), int(size)


def all_rows(db: sqlite3.Connection) -> list[Row]:
    return db.execute(f"SELECT {COLUMNS} FROM calls ORDER BY id").fetchall()


# A row read back from a file SQLite failed on: a :data:`Row`, then ``held`` and ``due``.
Salvaged = tuple[int, str, str, bytes, str, float, int, float]


def salvage(path: Path, owner: str | None) -> tuple[list[Salvaged], bool] | None:
    """The rows that can still be read from a file SQLite failed on (a corrupt page, an
    I/O error), in id order, and whether that is all of them: reading stops at the
    first error (a file whose owner cannot be read gives none). ``None`` when the file
    is another key's than ``owner`` (``None``: anyone's): its calls are not ours to send."""
    rows: list[Salvaged] = []
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
    except sqlite3.Error:
        return rows, False
    try:
        # A file cut short (its header counts more pages than it has) is refused
        # whole, as corrupt, unless the schema is "writable"; nothing is written here.
        db.execute("PRAGMA writable_schema = ON")
        recorded = owner_of(db)
        if owner is not None and recorded not in (None, owner):
            return None
        # One row at a time: a failing fetch of several loses those it had read.
        rows.extend(db.execute(f"SELECT {COLUMNS}, held, due FROM calls ORDER BY id"))
        return rows, True
    except sqlite3.Error:
        return rows, False
    finally:
        db.close()


def max_id(db: sqlite3.Connection) -> int:
    return int(db.execute("SELECT coalesce(max(id), 0) FROM calls").fetchone()[0])


def call_of(row: Row) -> Call:
    rowid, path, uuid, body, request_id, created = row
    return Call(path, uuid, bytes(body), request_id=request_id, created=created, stored=rowid)


def vacuum(db: sqlite3.Connection, max_bytes: int) -> None:
    """Give free pages back once many are free: past 1 MiB, or an eighth of the bound.

    The size bound counts rows; pages freed by delivered rows stay in the file until
    given back, so a small ``outbox_max_bytes`` needs them given back sooner.
    """
    free = db.execute("PRAGMA freelist_count").fetchone()[0]
    page = db.execute("PRAGMA page_size").fetchone()[0]
    if free > 0 and free * page > min(1 << 20, max_bytes // 8):
        # Each step of this pragma frees one page, and ``execute`` steps a statement
        # without result columns once: it gave back a single page per call.
        # ``executescript`` steps it to the end (no transaction is open here).
        db.executescript("PRAGMA incremental_vacuum;")


def set_owner(db: sqlite3.Connection, owner: str) -> None:
    """Whose calls these are (a digest of the public key)."""
    db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('owner', ?)", (owner,))


def owner_of(db: sqlite3.Connection) -> str | None:
    row = db.execute("SELECT value FROM meta WHERE key = 'owner'").fetchone()
    return None if row is None else str(row[0])
