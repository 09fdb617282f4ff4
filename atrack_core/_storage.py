"""Pluggable key-value storage: the SDK's current user and the integrations' init dedupe.

A storage is four methods (:class:`Storage`). Implementations must be thread-safe and
must not raise for ordinary misses; the SDK treats any exception from a storage as a
miss and logs it, so a failing backend (Redis down) never breaks a request.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol, runtime_checkable

from . import _fork

try:
    import fcntl
except ImportError:  # Windows: the thread lock still serialises this process
    fcntl = None  # type: ignore[assignment]

logger = logging.getLogger("atrack.storage")

DEFAULT_MAX_ENTRIES = 100_000
# The lock file is never reached through a symlink: a link planted at the lock path
# would make the SDK create the file it points to, with the host program's rights.
_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


@runtime_checkable
class Storage(Protocol):
    """What the SDK needs from a storage. ``ttl`` is in seconds; ``None`` keeps forever."""

    def get(self, key: str) -> str | None: ...

    def set(self, key: str, value: str, ttl: float | None = None) -> None: ...

    def add(self, key: str, value: str, ttl: float | None = None) -> bool:
        """Set ``key`` only if it is absent (or expired); ``True`` when this call set it."""
        ...

    def delete(self, key: str) -> None: ...


class MemoryStorage:
    """The default storage: a thread-safe, bounded LRU dict with per-key TTLs.

    When ``max_entries`` is reached the least recently used key is evicted, so memory
    stays bounded however many users a long-running process sees.
    """

    def __init__(self, max_entries: int = DEFAULT_MAX_ENTRIES) -> None:
        if isinstance(max_entries, bool) or not isinstance(max_entries, int) or max_entries < 1:
            raise ValueError(f"max_entries must be an int >= 1, got {max_entries!r}")
        self.max_entries = max_entries
        # key -> (value, monotonic deadline or None)
        self._data: OrderedDict[str, tuple[str, float | None]] = OrderedDict()
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"MemoryStorage(entries={len(self._data)}, max_entries={self.max_entries})"

    def __len__(self) -> int:
        return len(self._data)

    def get(self, key: str) -> str | None:
        with self._lock:
            item = self._data.get(key)
            if item is None:
                return None
            value, deadline = item
            if deadline is not None and deadline <= time.monotonic():
                del self._data[key]
                return None
            self._data.move_to_end(key)
            return value

    def set(self, key: str, value: str, ttl: float | None = None) -> None:
        deadline = _deadline(ttl)
        with self._lock:
            self._store(key, value, deadline)

    def add(self, key: str, value: str, ttl: float | None = None) -> bool:
        deadline = _deadline(ttl)
        with self._lock:
            item = self._data.get(key)
            if item is not None and (item[1] is None or item[1] > time.monotonic()):
                return False
            self._store(key, value, deadline)
            return True

    def delete(self, key: str) -> None:
        with self._lock:
            self._data.pop(key, None)

    def _store(self, key: str, value: str, deadline: float | None) -> None:
        data = self._data
        data[key] = (value, deadline)
        data.move_to_end(key)
        while len(data) > self.max_entries:
            data.popitem(last=False)


def _deadline(ttl: float | None) -> float | None:
    if ttl is None:
        return None
    return time.monotonic() + ttl


class FileStorage:
    """Storage in one JSON file, for scripts and command-line tools.

    Every write replaces the file atomically (write to a temporary file, ``fsync``,
    ``os.replace``) with mode 0600, and every read re-reads it, so two processes (two
    runs of a CLI) see each other's writes; an ``fcntl`` lock on a sibling ``.lock``
    file makes ``add`` atomic across processes on POSIX. TTLs are wall-clock times.
    A file that is not UTF-8 JSON is logged and read as empty (the next write replaces
    it); the lock file is opened with ``O_NOFOLLOW``, and a symlink there is refused
    with an ``OSError``.
    Not meant for web traffic: use the default :class:`MemoryStorage` or RedisStorage.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        _fork.register(self)

    def after_fork_in_child(self) -> None:
        # Held for ever in the child if a thread of the parent was inside an operation.
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"FileStorage({str(self.path)!r})"

    def get(self, key: str) -> str | None:
        with self._locked():
            item = self._read().get(key)
        if item is None:
            return None
        value, expires = item
        if expires is not None and expires <= time.time():
            return None
        return value

    def set(self, key: str, value: str, ttl: float | None = None) -> None:
        with self._locked():
            data = self._read()
            data[key] = (value, None if ttl is None else time.time() + ttl)
            self._write(data)

    def add(self, key: str, value: str, ttl: float | None = None) -> bool:
        with self._locked():
            data = self._read()
            item = data.get(key)
            now = time.time()
            if item is not None and (item[1] is None or item[1] > now):
                return False
            data[key] = (value, None if ttl is None else now + ttl)
            self._write(data)
            return True

    def delete(self, key: str) -> None:
        with self._locked():
            data = self._read()
            if data.pop(key, None) is not None:
                self._write(data)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = _open_lock(str(self.path) + ".lock")
            try:
                if fcntl is not None:
                    fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                # Unlocked, not only closed: a child forked meanwhile holds a copy of
                # this descriptor, and the flock lasts until every copy is closed.
                if fcntl is not None:
                    with contextlib.suppress(OSError):
                        fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)

    def _read(self) -> dict[str, tuple[str, float | None]]:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return {}
        try:
            # Bytes that are not UTF-8 (UnicodeDecodeError is a ValueError), broken
            # JSON, or JSON nested past the parser's recursion limit.
            loaded = json.loads(raw.decode("utf-8"))
        except (ValueError, RecursionError):
            # A corrupt file must not break the host program: start again empty, and
            # the next write replaces it.
            logger.warning(
                "A-Track FileStorage %s is not readable JSON; starting again empty", self.path
            )
            return {}
        out: dict[str, tuple[str, float | None]] = {}
        if isinstance(loaded, dict):
            now = time.time()
            for key, item in loaded.items():
                if (
                    isinstance(item, list)
                    and len(item) == 2
                    and isinstance(item[0], str)
                    and (item[1] is None or isinstance(item[1], (int, float)))
                    and (item[1] is None or item[1] > now)
                ):
                    out[key] = (item[0], item[1])
        return out

    def _write(self, data: dict[str, tuple[str, float | None]]) -> None:
        fd, tmp = tempfile.mkstemp(prefix=".atrack-", dir=self.path.parent)
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump({k: list(v) for k, v in data.items()}, fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise


def _open_lock(path: str) -> int:
    """Open (creating) the lock file, refusing to follow a symlink at ``path``."""
    if not _O_NOFOLLOW and os.path.islink(path):  # pragma: no cover - no O_NOFOLLOW (Windows)
        raise OSError(errno.ELOOP, f"FileStorage lock {path!r} is a symlink; refusing it")
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | _O_NOFOLLOW, 0o600)
    except OSError as exc:
        # O_NOFOLLOW fails with ELOOP on a symlink (on some BSDs with EMLINK).
        if exc.errno in (errno.ELOOP, errno.EMLINK) and os.path.islink(path):
            raise OSError(
                exc.errno, f"FileStorage lock {path!r} is a symlink; refusing to follow it"
            ) from None
        raise
