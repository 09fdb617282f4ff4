"""The durable outbox (``Options.outbox``): calls kept in a per-process SQLite file
until delivered, adopted by the next process when their owner is gone.

``_files``: the directory, file names, permissions and the per-file lock;
``_db``: the SQLite schema and statements; ``_outbox``: the writer thread and the
scheduler hooks. ``docs/outbox.md`` has the design and its guarantees.
"""

from __future__ import annotations

from ._files import OutboxDirError, prepare_dir
from ._outbox import DEFAULT_MAX_AGE, DEFAULT_MAX_BYTES, Outbox, describe

__all__ = [
    "DEFAULT_MAX_AGE",
    "DEFAULT_MAX_BYTES",
    "Outbox",
    "OutboxDirError",
    "describe",
    "prepare_dir",
]
