"""The storage contract (every storage passes the same suite) and the specifics of
MemoryStorage and FileStorage."""

from __future__ import annotations

import json
import logging
import os
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from atrack_core import ATrackSdk, FileStorage, MemoryStorage, Options, Storage, User
from atrack_core._sdk import CURRENT_USER_KEY

StorageFactory = Callable[[], Storage]


@pytest.fixture(params=["memory", "file", "redis"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Storage]:
    if request.param == "memory":
        yield MemoryStorage()
    elif request.param == "file":
        yield FileStorage(tmp_path / "state" / "atrack.json")
    else:
        from atrack_core.redis import RedisStorage

        server = request.getfixturevalue("redis_server")
        # A prefix per test keeps tests apart on the shared server.
        yield RedisStorage(server.url, prefix=f"t{id(request)}:")


def test_is_a_storage(storage: Storage) -> None:
    assert isinstance(storage, Storage)


def test_get_set_delete(storage: Storage) -> None:
    assert storage.get("k") is None
    storage.set("k", "v")
    assert storage.get("k") == "v"
    storage.set("k", "w")
    assert storage.get("k") == "w"
    storage.delete("k")
    assert storage.get("k") is None
    storage.delete("k")  # deleting a missing key is fine


def test_add_only_when_absent(storage: Storage) -> None:
    assert storage.add("k", "1") is True
    assert storage.add("k", "2") is False
    assert storage.get("k") == "1"


def test_ttl_expires(storage: Storage) -> None:
    storage.set("short", "v", ttl=0.05)
    storage.set("long", "v", ttl=60)
    # No look at "short" before it expires: on a loaded machine 50 ms can pass before
    # the next line (CI saw it gone already). A sleep past its TTL is always enough.
    assert storage.get("long") == "v"
    time.sleep(0.08)
    assert storage.get("short") is None
    assert storage.get("long") == "v"
    # An expired key counts as absent for add.
    assert storage.add("short", "again", ttl=60) is True
    assert storage.get("short") == "again"


def test_add_is_atomic_under_threads(storage: Storage) -> None:
    winners: list[int] = []
    barrier = threading.Barrier(8)

    def worker(i: int) -> None:
        barrier.wait()
        if storage.add("init:user", str(i), ttl=30):
            winners.append(i)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(winners) == 1
    assert storage.get("init:user") == str(winners[0])


def test_memory_storage_is_bounded_lru() -> None:
    s = MemoryStorage(max_entries=3)
    for k in "abc":
        s.set(k, k)
    assert s.get("a") == "a"  # touch a: b is now the least recently used
    s.set("d", "d")
    assert s.get("b") is None
    assert [s.get(k) for k in "acd"] == ["a", "c", "d"]
    assert len(s) == 3
    for i in range(1000):
        s.add(f"x{i}", "v")
    assert len(s) == 3
    with pytest.raises(ValueError, match="max_entries"):
        MemoryStorage(0)


def test_file_storage_mode_0600_and_atomic_replace(tmp_path: Path) -> None:
    path = tmp_path / "atrack.json"
    s = FileStorage(path)
    s.set("k", "v")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    inode = os.stat(path).st_ino
    s.set("k", "w")
    # Replaced, not rewritten in place: a reader never sees a half-written file.
    assert os.stat(path).st_ino != inode
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".atrack-")]


def test_file_storage_survives_a_corrupt_file(tmp_path: Path) -> None:
    path = tmp_path / "atrack.json"
    path.write_text("{not json")
    s = FileStorage(path)
    assert s.get("k") is None
    s.set("k", "v")
    assert FileStorage(path).get("k") == "v"


CLI_SCRIPT = """
import sys
from atrack_core import ATrackSdk, FileStorage, Options
sdk = ATrackSdk(Options("pub_xxxxx", disabled=True, storage=FileStorage(sys.argv[1])))
result = sdk.init()
print(result.uuid, result.is_new_user)
"""


def test_file_storage_keeps_a_cli_uuid_across_runs(tmp_path: Path) -> None:
    path = str(tmp_path / "cli-state.json")
    runs = [
        subprocess.run(
            [sys.executable, "-c", CLI_SCRIPT, path], capture_output=True, text=True, check=True
        ).stdout.split()
        for _ in range(2)
    ]
    (uuid1, new1), (uuid2, new2) = runs
    assert uuid1 == uuid2
    assert (new1, new2) == ("True", "False")


ADD_SCRIPT = """
import sys
from atrack_core import FileStorage
s = FileStorage(sys.argv[1])
won = sum(s.add(f"k{i}", sys.argv[2]) for i in range(40))
print(won)
"""


def test_file_storage_add_is_atomic_across_processes(tmp_path: Path) -> None:
    path = str(tmp_path / "shared.json")
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", ADD_SCRIPT, path, str(n)], stdout=subprocess.PIPE, text=True
        )
        for n in range(3)
    ]
    wins = [int(p.communicate(timeout=60)[0]) for p in procs]
    assert sum(wins) == 40  # each key won by exactly one process
    s = FileStorage(path)
    assert all(s.get(f"k{i}") in {"0", "1", "2"} for i in range(40))


FORK_SCRIPT = """
import json, os, select, sys, threading, time
from pathlib import Path
from atrack_core import FileStorage

d = Path(sys.argv[1])
path = d / "users.json"
os.mkfifo(path)
os.link(path, d / "fifo")  # the same FIFO, to write to once path is a file again
storage = FileStorage(path)
got = []
reader = threading.Thread(target=lambda: got.append(storage.get("k")))
reader.start()
# The reader holds the storage's locks (thread lock, flock) and waits in the FIFO's
# open(); a writer can open it without blocking once it does.
while True:
    try:
        writer = os.open(d / "fifo", os.O_WRONLY | os.O_NONBLOCK)
        break
    except OSError:
        time.sleep(0.01)
done_r, done_w = os.pipe()
pid = os.fork()  # while the reader, in the middle of its get(), holds the locks
if pid == 0:
    os.close(writer)  # the parent's close must end the reader's read
    storage.set("child", "1")  # waits for the parent's get(), then goes through
    os.write(done_w, b"1")
    os._exit(0)
tmp = d / "tmp.json"
tmp.write_text("{}")
os.replace(tmp, path)
os.write(writer, b"{}")
os.close(writer)  # the reader's get() returns
reader.join(10)
child_done = bool(select.select([done_r], [], [], 10)[0])
parent = []
after = threading.Thread(target=lambda: parent.append(storage.get("child")), daemon=True)
after.start()
after.join(10)
if not child_done:
    os.kill(pid, 9)
os.waitpid(pid, 0)
print(json.dumps({"reader": got, "child_done": child_done, "parent_sees": parent}))
sys.stdout.flush()
os._exit(0)
"""


def test_file_storage_in_a_child_forked_during_an_operation(tmp_path: Path) -> None:
    # A fork while another thread is inside a FileStorage operation: the child's copy
    # of the thread lock is held for ever, and its copy of the lock file's descriptor
    # kept the flock after the parent's thread closed its own (both blocked for good).
    out = subprocess.run(
        [sys.executable, "-c", FORK_SCRIPT, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"reader": [None], "child_done": True, "parent_sees": ["1"]}


class BrokenStorage:
    def get(self, key: str) -> str | None:
        raise ConnectionError("down")

    def set(self, key: str, value: str, ttl: float | None = None) -> None:
        raise ConnectionError("down")

    def add(self, key: str, value: str, ttl: float | None = None) -> bool:
        raise ConnectionError("down")

    def delete(self, key: str) -> None:
        raise ConnectionError("down")


def test_a_failing_storage_is_a_logged_miss(caplog: pytest.LogCaptureFixture) -> None:
    with ATrackSdk(Options("pub_xxxxx", disabled=True, storage=BrokenStorage())) as sdk:
        result = sdk.init()  # does not raise
        assert result.is_new_user
        # Not kept by the storage, kept by the SDK that set it.
        assert sdk.get_user() == User(result.uuid, {})
        sdk.track("e", uuid=result.uuid)
        sdk.track("e")
    assert any("storage failed" in r.getMessage() for r in caplog.records)


# -- a storage that repairs itself (issue 13) ---------------------------------------


def test_file_storage_repairs_a_file_that_is_not_utf8(tmp_path: Path) -> None:
    # The repro: bytes that are no text at all, where broken JSON already repaired itself.
    path = tmp_path / "s.json"
    path.write_bytes(b"\xff\xfe")
    with ATrackSdk(Options("pub_xxxxx", disabled=True, storage=FileStorage(path))) as sdk:
        result = sdk.init()
        assert result.is_new_user
        sdk.track("e")  # the current user was kept: no NoUserError
        assert sdk.get_user() == User(result.uuid, {})
    assert json.loads(path.read_text(encoding="utf-8"))[CURRENT_USER_KEY][0]


@pytest.mark.parametrize(
    "content",
    [
        b"\xff\xfe",
        b'{"k": ["\xc3", null]}',  # a truncated UTF-8 sequence inside valid JSON
        b"[" * 100_000,  # nesting deep enough to exhaust the JSON parser's recursion
        b'{"k": "v"}',  # a value that is not a [value, expiry] pair
        b'{"k": ["v", "soon"]}',
        b"null",
        b"",
    ],
)
def test_file_storage_treats_any_unreadable_content_as_empty(
    tmp_path: Path, content: bytes
) -> None:
    path = tmp_path / "atrack.json"
    path.write_bytes(content)
    s = FileStorage(path)
    assert s.get("k") is None
    assert s.add("k", "v") is True
    assert FileStorage(path).get("k") == "v"


def test_file_storage_refuses_a_lock_path_that_is_a_symlink(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "atrack.json"
    target = tmp_path / "planted-target"
    os.symlink(target, str(path) + ".lock")
    s = FileStorage(path)
    with pytest.raises(OSError, match="symlink"):
        s.set("k", "v")
    with pytest.raises(OSError, match="symlink"):
        s.get("k")
    assert not target.exists()  # the SDK did not create the file the link points to
    # Through the SDK it is a logged miss, never an exception in the host program.
    with ATrackSdk(Options("pub_xxxxx", disabled=True, storage=s)) as sdk:
        result = sdk.init()
        sdk.track("e", uuid=result.uuid)
    assert not target.exists()
    assert any("storage failed" in r.getMessage() for r in caplog.records)


def test_file_storage_refuses_a_dangling_or_looping_lock_symlink(tmp_path: Path) -> None:
    path = tmp_path / "atrack.json"
    lock = str(path) + ".lock"
    os.symlink(lock, lock)  # a link to itself
    with pytest.raises(OSError, match="symlink"):
        FileStorage(path).get("k")


BAD_CURRENT_USERS = [
    '{"uuid": 5}',
    '{"uuid": ""}',
    '{"uuid": null}',
    '{"uuid": "' + "u" * 256 + '"}',
    '{"uuid": "line\\nbreak"}',
    '{"uuid": "u", "attributes": [1, 2]}',
    '{"uuid": "u", "attributes": {"n": NaN}}',
    '{"uuid": "u", "attributes": "plan"}',
    '{"attributes": {}}',
    "[]",
    '"u"',
    "5",
    "not json",
    "[" * 100_000,
]


@pytest.mark.parametrize("raw", BAD_CURRENT_USERS)
def test_a_stored_current_user_that_does_not_validate_is_a_logged_miss(
    storage: Storage, raw: str, caplog: pytest.LogCaptureFixture
) -> None:
    storage.set(CURRENT_USER_KEY, raw)
    with ATrackSdk(Options("pub_xxxxx", disabled=True, storage=storage)) as sdk:
        with caplog.at_level(logging.WARNING, logger="atrack"):
            assert sdk.get_user() is None
        assert any("current user" in r.getMessage() for r in caplog.records)
        result = sdk.init()  # no TypeError/ValueError: a new user replaces the bad one
        assert result.is_new_user
        sdk.track("e")
        assert sdk.get_user() == User(result.uuid, {})


# What a storage may hold is anyone's guess (another program, an older version, a disk
# error): the suite fuzzes it, so the next unreadable form is found here, not by a user.
_json_texts = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
).map(json.dumps)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(content=st.binary(max_size=200) | _json_texts.map(str.encode))
def test_file_storage_survives_any_file_content(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "fuzzed.json"
    path.write_bytes(content)
    s = FileStorage(path)
    s.get("k")
    s.delete("other")
    s.set("k", "v")
    assert s.add("k2", "w") is True
    assert (s.get("k"), FileStorage(path).get("k2")) == ("v", "w")


_stored_users = (
    st.text(max_size=100)
    | _json_texts
    | st.fixed_dictionaries(
        {"uuid": st.none() | st.integers() | st.text(max_size=300)},
        optional={
            "attributes": st.none()
            | st.integers()
            | st.text()
            | st.dictionaries(st.text(max_size=5), st.floats() | st.text(max_size=5), max_size=3)
        },
    ).map(json.dumps)
)


@settings(max_examples=200, deadline=None)
@given(raw=_stored_users)
def test_any_stored_current_user_is_either_valid_or_a_miss(raw: str) -> None:
    storage = MemoryStorage()
    storage.set(CURRENT_USER_KEY, raw)
    with ATrackSdk(Options("pub_xxxxx", disabled=True, storage=storage)) as sdk:
        user = sdk.get_user()
        result = sdk.init()  # never raises, whatever the storage held
        if user is None:
            assert result.is_new_user
        else:
            assert (result.uuid, result.is_new_user) == (user.uuid, False)
            assert json.loads(json.dumps(user.attributes, allow_nan=False)) == user.attributes
        sdk.track("e")
        sdk.set_attributes({"plan": "pro"})
