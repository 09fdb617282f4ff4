"""RedisStorage specifics against a real redis-server (the shared contract suite is in
test_storage.py)."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import pytest

from atrack_core import ATrackSdk, Options, User
from atrack_core.testing import capture_calls
from tests.redis_server import RedisServer


@pytest.fixture
def own_redis(tmp_path: Path, redis_server: RedisServer) -> RedisServer:
    # A private server per test: these tests stop and restart it.
    return RedisServer(tmp_path).start()


def test_importable_from_atrack_core(redis_server: RedisServer) -> None:
    import atrack_core
    from atrack_core.redis import RedisStorage

    assert atrack_core.RedisStorage is RedisStorage


def test_down_and_back_is_a_logged_miss_then_works(
    own_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    from atrack_core.redis import RedisStorage

    storage = RedisStorage(own_redis.url)
    storage.set("k", "v")
    assert storage.get("k") == "v"
    own_redis.stop()
    started = time.monotonic()
    assert storage.get("k") is None
    assert storage.add("k2", "v") is True  # treated as absent: an extra /init beats none
    storage.set("k3", "v")
    storage.delete("k")
    # Bounded by the socket timeout, not hanging.
    assert time.monotonic() - started < 5
    assert any("Redis" in r.getMessage() for r in caplog.records)
    own_redis.start()
    deadline = time.monotonic() + 5
    while storage.get("k") != "v" and time.monotonic() < deadline:
        storage.set("k", "v")
        time.sleep(0.05)
    assert storage.get("k") == "v"
    own_redis.stop()


def test_sdk_keeps_working_with_redis_down(own_redis: RedisServer) -> None:
    from atrack_core.redis import RedisStorage

    storage = RedisStorage(own_redis.url)
    own_redis.stop()
    with (
        capture_calls() as calls,
        ATrackSdk(Options("pub_xxxxx", disabled=True, storage=storage)) as sdk,
    ):
        result = sdk.init()
        sdk.track("e", uuid=result.uuid)
        # The user init() made current is kept by this SDK while Redis cannot keep it:
        # track() and set_attributes() without a uuid raised NoUserError ("call init()
        # first") right after init() when the current user lived only in Redis.
        sdk.track("without_uuid")
        sdk.set_attributes({"plan": "pro"})
        assert sdk.get_user() == User(result.uuid, {"plan": "pro"})
        assert sdk.init().uuid == result.uuid  # the same user again, not a new one
    assert [(c.path, c.body["uuid"]) for c in calls.calls] == [
        ("/init", result.uuid),
        ("/event", result.uuid),
        ("/event", result.uuid),
        ("/attributes", result.uuid),
        ("/init", result.uuid),
    ]


def test_repr_hides_the_password(redis_server: RedisServer) -> None:
    from atrack_core.redis import RedisStorage

    text = repr(RedisStorage("redis://user:s3cret@127.0.0.1:1/0"))
    assert "s3cret" not in text and "user" in text


def test_given_client_and_prefix(redis_server: RedisServer) -> None:
    import redis

    from atrack_core.redis import RedisStorage

    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    storage = RedisStorage(client=client, prefix="app1:")
    storage.set("k", "v", ttl=30)
    assert client.get("app1:k") == "v"
    assert 0 < client.pttl("app1:k") <= 30_000
    with pytest.raises(ValueError, match="not both"):
        RedisStorage(redis_server.url, client=client)
    client.close()


def test_pool_is_recreated_after_fork(redis_server: RedisServer) -> None:
    from atrack_core.redis import RedisStorage

    storage = RedisStorage(redis_server.url, prefix="fork:")
    storage.set("parent", "1")
    parent_client = storage._client()
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: must not reuse the parent's client or sockets
        try:
            ok = storage._client() is not parent_client and storage.get("parent") == "1"
            storage.set("child", "1")
            os.write(write_fd, b"1" if ok else b"0")
        finally:
            os._exit(0)
    os.close(write_fd)
    _, status = os.waitpid(pid, 0)
    assert os.read(read_fd, 1) == b"1"
    os.close(read_fd)
    assert status == 0
    assert storage.get("child") == "1"
    assert storage._client() is parent_client


def test_failures_never_raise_and_log_once_per_outage(caplog: pytest.LogCaptureFixture) -> None:
    from atrack_core.redis import RedisStorage
    from tests.redis_server import free_port

    caplog.set_level(logging.DEBUG, "atrack")
    storage = RedisStorage(f"redis://127.0.0.1:{free_port()}/0", retry_interval=0)
    for _ in range(20):
        assert storage.get("k") is None
        storage.set("k", "v")
        assert storage.add("k", "v") is True
        storage.delete("k")
    warnings = [
        r for r in caplog.records if r.name == "atrack.redis" and r.levelno >= logging.WARNING
    ]
    # One line with the exception for the whole outage, not one per operation.
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert warnings[0].exc_info is not None
    debug = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    assert len([m for m in debug if " failed again: " in m]) == 79
    # And one per operation naming its key.
    assert len([m for m in debug if " atrack:k: a miss (failed: " in m]) == 80


def test_each_miss_names_its_key_at_debug(caplog: pytest.LogCaptureFixture) -> None:
    """The init dedupe's key names the user: a duplicate /init (a miss of add is sent
    as added) can be traced to the miss in a DEBUG log, failed or not asked."""
    from atrack_core.redis import RedisStorage
    from tests.redis_server import free_port

    caplog.set_level(logging.DEBUG, "atrack")
    storage = RedisStorage(f"redis://127.0.0.1:{free_port()}/0", retry_interval=600)
    assert storage.add("init:user-1", "1", 60) is True  # fails: resting from now on
    assert storage.add("init:user-2", "1", 60) is True  # not asked
    misses = [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.DEBUG and "a miss" in r.getMessage()
    ]
    assert len(misses) == 2, misses
    assert misses[0].startswith("Redis add atrack:init:user-1: a miss (failed: ")
    assert misses[1] == "Redis add atrack:init:user-2: a miss (not asked, resting after a failure)"
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "user-" not in warnings[0].getMessage()


def test_resting_after_a_failure_costs_nothing(own_redis: RedisServer) -> None:
    """After a failure Redis is left alone for retry_interval: an outage costs requests
    no time, and the storage comes back by itself afterwards."""
    import redis

    from atrack_core.redis import RedisStorage

    storage = RedisStorage(own_redis.url, retry_interval=2.0)
    storage.set("k", "v")
    own_redis.stop()
    assert storage.get("k") is None  # fails, starts resting
    own_redis.start()
    direct = redis.Redis.from_url(own_redis.url, decode_responses=True, socket_timeout=5)
    direct.set(storage.prefix + "k", "w")
    # Redis is back, but the storage rests: it does not ask (a request would find "w").
    # How little a resting call costs is a figure for bench/, not a stopwatch here.
    for _ in range(1000):
        assert storage.get("k") is None
    # Once retry_interval has passed, it asks again by itself (a hang guard, not a bound).
    deadline = time.monotonic() + 10
    while storage.get("k") != "w" and time.monotonic() < deadline:
        time.sleep(0.05)  # polling: nothing to wait on but the storage's own clock
    assert storage.get("k") == "w"
    direct.close()
    storage.close()
    own_redis.stop()


def test_hung_redis_is_bounded_by_the_socket_timeout() -> None:
    """A server that accepts but never answers (a hung Redis): one operation costs about
    one socket timeout, no client-side retries."""
    import socket

    from atrack_core.redis import RedisStorage

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        port = listener.getsockname()[1]
        storage = RedisStorage(f"redis://127.0.0.1:{port}/0", socket_timeout=0.2, retry_interval=0)
        for op in (lambda: storage.get("k"), lambda: storage.add("k", "v", 10)):
            started = time.monotonic()
            op()
            assert time.monotonic() - started < 0.6
        storage.close()


def test_given_client_is_fork_safe(redis_server: RedisServer) -> None:
    """A given client keeps working in parent and child after fork (redis-py resets its
    pool in the child), and the parent's connection is not disturbed by the child."""
    import redis

    from atrack_core.redis import RedisStorage

    client = redis.Redis.from_url(redis_server.url, decode_responses=True, socket_timeout=1)
    storage = RedisStorage(client=client, prefix="forkc:")
    storage.set("parent", "1")
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            ok = storage.get("parent") == "1" and storage.add("child", "1") is True
            os.write(write_fd, b"1" if ok else b"0")
        finally:
            os._exit(0)
    os.close(write_fd)
    os.waitpid(pid, 0)
    assert os.read(read_fd, 1) == b"1"
    os.close(read_fd)
    assert storage.get("child") == "1"
    assert storage.add("child", "2") is False
    client.close()


def test_a_given_client_without_timeout_is_warned_about(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    import redis

    from atrack_core.redis import RedisStorage

    client = redis.Redis.from_url(redis_server.url)
    RedisStorage(client=client)
    assert any("socket_timeout" in r.getMessage() for r in caplog.records)
    client.close()
    caplog.clear()
    client = redis.Redis.from_url(redis_server.url, socket_timeout=5)
    RedisStorage(client=client)
    assert any("up to 5.0 s" in r.getMessage() for r in caplog.records)
    client.close()
    caplog.clear()
    client = redis.Redis.from_url(redis_server.url, socket_timeout=0.2)
    RedisStorage(client=client)
    assert not caplog.records
    client.close()


def test_url_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from atrack_core.redis import RedisStorage

    monkeypatch.setenv("ATRACK_REDIS_URL", "redis://10.0.0.9:6380/2")
    assert "10.0.0.9:6380/2" in repr(RedisStorage())
    with pytest.raises(ValueError, match="socket_timeout"):
        RedisStorage(socket_timeout=-1)
