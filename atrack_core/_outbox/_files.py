"""The outbox directory and its files: creation, permission checks, the per-file lock.

Each process writes its own file, ``atrack-<pid>-<random>.db``, and holds an
exclusive ``flock`` on it for as long as it lives. The kernel releases that lock when
the process ends however it ends (``kill -9`` included), so "the lock can be taken"
means "its owner is gone" and the file may be adopted. ``flock`` locks belong to the
open file, not the process: a forked child shares its parent's lock until it closes
its copy of the descriptor (``_outbox`` does so in the child).

The lock is taken on the database file itself. SQLite locks with POSIX ``fcntl``
locks, which are independent of ``flock`` on Linux and the BSDs; but closing *any*
descriptor of a file drops the process's POSIX locks on it, so a descriptor opened
here on a file that SQLite also has open stays open until SQLite's connection is closed.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
import time
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no flock; the outbox is refused when the SDK is built
    fcntl = None  # type: ignore[assignment]

PREFIX = "atrack-"
SUFFIX = ".db"
SIDE_FILES = ("-wal", "-shm", "-journal")
CORRUPT = ".corrupt-"  # a file moved aside: ``<name>.corrupt-<unix time>``


class OutboxDirError(ValueError):
    """The outbox directory cannot be used safely (raised when the SDK is built)."""


def prepare_dir(path: str | os.PathLike[str]) -> Path:
    """Create the directory (0700) when missing; refuse one others may write into, or
    one holding a symlinked outbox file."""
    if fcntl is None:
        raise OutboxDirError("the outbox needs POSIX file locks (fcntl), not available here")
    directory = Path(path).expanduser()
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = directory.stat()
    except OSError as exc:
        raise OutboxDirError(
            f"outbox directory {str(directory)!r} cannot be created: {exc}"
        ) from exc
    if not stat.S_ISDIR(info.st_mode):
        raise OutboxDirError(f"outbox {str(directory)!r} is not a directory")
    if info.st_mode & stat.S_IWOTH:
        raise OutboxDirError(
            f"outbox directory {str(directory)!r} is world-writable (mode "
            f"{stat.S_IMODE(info.st_mode):o}); another user could plant or read calls. "
            "Use a directory only this user can write (chmod 700)"
        )
    if not os.access(directory, os.W_OK | os.X_OK):
        raise OutboxDirError(f"outbox directory {str(directory)!r} is not writable by this user")
    for file in outbox_files(directory):
        if file.is_symlink():
            raise OutboxDirError(
                f"outbox file {str(file)!r} is a symlink; refusing to use the directory "
                "(remove it: outbox files are never symlinks)"
            )
    return directory


def outbox_files(directory: Path) -> list[Path]:
    """The outbox database files in ``directory``, oldest name first."""
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    return sorted(
        directory / name for name in names if name.startswith(PREFIX) and name.endswith(SUFFIX)
    )


def corrupt_files(directory: Path) -> list[Path]:
    """The files moved aside as unreadable (:func:`move_aside`), without side files."""
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    return sorted(
        directory / name
        for name in names
        if name.startswith(PREFIX)
        and CORRUPT in name
        and name.rpartition(CORRUPT)[2].isdigit()
        and name.partition(CORRUPT)[0].endswith(SUFFIX)
    )


def is_regular(path: Path) -> bool:
    """Whether ``path`` itself (not what a symlink points to) is a regular file: the
    SDK makes nothing else, and a FIFO opened for reading blocks until a writer comes."""
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def create_own(directory: Path) -> tuple[Path, int]:
    """A new file for this process (0600, never through a symlink), locked."""
    for _ in range(10):
        path = directory / f"{PREFIX}{os.getpid()}-{secrets.token_hex(4)}{SUFFIX}"
        try:
            fd = os.open(
                path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600
            )
        except FileExistsError:
            continue
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # new and unique: cannot be held
        return path, fd
    raise OSError(f"could not create a new outbox file in {str(directory)!r}")


def lock_if_orphaned(path: Path) -> int | None:
    """The locked descriptor of ``path`` when its owner is gone, else ``None`` (alive,
    vanished, replaced, or a symlink)."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        # Another adopter may have finished and unlinked it between open and lock.
        if os.stat(path, follow_symlinks=False).st_ino != os.fstat(fd).st_ino:
            raise OSError("replaced")
    except OSError:
        os.close(fd)
        return None
    return fd


def is_locked(path: Path) -> bool:
    """Whether a live process holds ``path`` (for ``atrack outbox inspect``)."""
    fd = lock_if_orphaned(path)
    if fd is None:
        return path.exists()
    os.close(fd)
    return False


def remove(path: Path) -> None:
    """The database file and SQLite's side files."""
    for name in (str(path), *(str(path) + side for side in SIDE_FILES)):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name)


def move_aside(path: Path) -> Path:
    """Rename a corrupt file (and its side files) out of the outbox's way."""
    target = path.with_name(f"{path.name}{CORRUPT}{int(time.time())}")
    for side in ("", *SIDE_FILES):
        with contextlib.suppress(FileNotFoundError):
            os.replace(str(path) + side, str(target) + side)
    return target
