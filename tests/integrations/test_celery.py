"""Celery: a real worker process (prefork) and a real redis-server broker; the tasks
are published from inside Flask requests handled by the extension."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import uuid as uuid_mod
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("celery")
pytest.importorskip("flask")

from atrack_core import ATrackSdk, Options
from atrack_integrations import current_tracker
from atrack_integrations._task_headers import (
    CONTEXT_KEYS,
    HEADER,
    OFF,
    HeaderError,
    decode,
    encode,
)
from tests.fake_api import FakeApi, Plan
from tests.integrations.test_wsgi_servers import atrack_log_guard  # noqa: F401

pytestmark = [pytest.mark.slow, pytest.mark.redis]

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def broker(redis_server: Any) -> str:
    url: str = redis_server.url
    return url.rsplit("/", 1)[0] + "/11"  # a database of its own


@pytest.fixture
def tasks(broker: str) -> Any:
    """The publishing side: the module the worker runs, pointed at the test broker."""
    from tests.integrations import celery_app

    celery_app.app.conf.broker_url = broker
    celery_app.app.conf.result_backend = broker
    return celery_app


@contextlib.contextmanager
def worker(
    broker: str, fake_api: FakeApi, tasks: Any, pool: str = "prefork"
) -> Iterator[subprocess.Popen[bytes]]:
    """A worker (prefork: two children); yields once it has run a task."""
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "ATRACK_TEST_BROKER": broker,
        "ATRACK_PUBLIC_KEY": "pub_test_key_1234",
        "ATRACK_ENDPOINT": fake_api.url,
    }
    cmd = [
        sys.executable, "-m", "celery", "-A", "tests.integrations.celery_app", "worker",
        "--pool", pool, "--concurrency", "2", "--loglevel", "WARNING",
        "--without-heartbeat", "--without-mingle", "--without-gossip",
        "--hostname", f"atrack-{uuid_mod.uuid4().hex[:8]}@%h",
    ]  # fmt: skip
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        # Published outside any request: it answers once the worker runs tasks, and
        # carries no tracker.
        assert tasks.who.delay().get(timeout=60) is None
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stdout:
            proc.stdout.close()


def flask_app(fake_api: FakeApi, tasks: Any) -> tuple[Any, ATrackSdk]:
    from flask import Flask, jsonify, request

    from atrack_integrations.flask import ATrack

    sdk = ATrackSdk(Options("pub_test_key_1234", endpoint=fake_api.url))
    app = Flask(__name__)
    ATrack(app, sdk=sdk)

    @app.post("/orders")
    def orders() -> Any:
        who = tasks.who.delay()
        paid = [tasks.order_paid.delay(12 + n) for n in range(int(request.args.get("n", 1)))]
        return jsonify(uuid=request.atrack.uuid, who=who.id, paid=[p.id for p in paid])

    return app, sdk


def test_task_published_in_a_request_tracks_for_its_user(
    broker: str, fake_api: FakeApi, tasks: Any
) -> None:
    app, sdk = flask_app(fake_api, tasks)
    with worker(broker, fake_api, tasks):
        client = app.test_client()
        response = client.post(
            "/orders?source=ad", headers={"User-Agent": "Shop/1", "Accept-Language": "de-DE"}
        )
        body = response.json
        assert current_tracker() is None
        uuid = body["uuid"]
        who = tasks.app.AsyncResult(body["who"]).get(timeout=30)
        assert tasks.app.AsyncResult(body["paid"][0]).get(timeout=30) == uuid
        assert sdk.flush(5)
        received = fake_api.wait_for(2)  # the request's /init and the task's event
    inits = [r.body for r in received if r.path == "/init"]
    events = [r.body for r in received if r.path == "/event"]
    assert [i["uuid"] for i in inits] == [uuid]  # one /init: the task sent none
    context = inits[0]["context"]
    assert context["url"] == "/orders?source=ad"
    assert context["userAgent"] == "Shop/1"
    assert who == {"uuid": uuid, "context": context}
    assert [(e["event"], e["uuid"], e["context"]) for e in events] == [
        ("order_paid", uuid, context)
    ]
    assert events[0]["attributes"] == {"amount": 12}
    sdk.shutdown()


def test_task_published_outside_a_request_gets_no_tracker(
    broker: str, fake_api: FakeApi, tasks: Any
) -> None:
    with worker(broker, fake_api, tasks):
        result = tasks.order_paid.delay(3)
        with pytest.raises(Exception, match="outside a request"):
            result.get(timeout=30)
    assert fake_api.bodies("/event") == []


def test_a_failing_task_leaves_no_tracker_for_the_next_one(
    broker: str, fake_api: FakeApi, tasks: Any
) -> None:
    from flask import Flask, jsonify

    from atrack_integrations.flask import ATrack

    app = Flask(__name__)
    ATrack(app, sdk=ATrackSdk(Options("pub_test_key_1234", disabled=True)))

    @app.post("/fail")
    def fail() -> Any:
        from flask import request

        return jsonify(uuid=request.atrack.uuid, task=tasks.boom.delay().id)

    # solo: every task runs in the worker's one thread, one after the other.
    with worker(broker, fake_api, tasks, pool="solo"):
        body = app.test_client().post("/fail").json
        with pytest.raises(Exception, match=f"boom as {body['uuid']}"):
            tasks.app.AsyncResult(body["task"]).get(timeout=30)
        # Published outside a request, run next in the same thread: no tracker left.
        assert tasks.who.delay().get(timeout=30) is None


def test_prefork_children_flush_when_the_worker_stops(
    broker: str, fake_api: FakeApi, tasks: Any
) -> None:
    app, sdk = flask_app(fake_api, tasks)
    with worker(broker, fake_api, tasks) as proc:
        # Each event's first attempt is told to retry in 3 s: still pending when the
        # worker is told to stop, and later than billiard's child waits (1 s) before it
        # exits. Only the children's exit flush delivers them.
        fake_api.plan("/event", *[Plan(503, retry_after="3")] * 4)
        body = app.test_client().post("/orders?n=4").json
        results = [tasks.app.AsyncResult(task_id) for task_id in body["paid"]]
        assert [r.get(timeout=30) for r in results] == [body["uuid"]] * 4
        proc.terminate()  # warm shutdown: the children exit, flushing first
        assert proc.wait(30) == 0
    events = [b for b in fake_api.bodies("/event") if b["event"] == "order_paid"]
    # Each amount twice: the refused attempt, and the retry the exit flush waited for.
    assert sorted(e["attributes"]["amount"] for e in events) == [12, 12, 13, 13, 14, 14, 15, 15]
    sdk.shutdown()


def test_header_format_round_trip_and_rejects() -> None:
    from atrack_core._request import RequestView
    from atrack_integrations import IntegrationConfig, RequestTracker

    config = IntegrationConfig(sdk=ATrackSdk(Options("pub_test_1234", disabled=True)))
    view = RequestView(
        "GET",
        "https",
        "shop.test",
        "/cart?x=1&token=abc",
        "",
        {
            "user-agent": "UA ö",
            "referer": "https://shop.test/a b?session=1",
            "accept-language": "de-de",
            "x-timezone": "Europe/Berlin",
        },
        "1.2.3.4",
    )
    tracker = RequestTracker(config, view, "u-1", False)
    header = encode(tracker)
    assert HEADER == "atrack" and set(header["context"]) == CONTEXT_KEYS
    assert decode(header) == ("u-1", tracker.context)
    tracker.enabled = False  # a no-op tracker (respect_dnt): the task gets one too
    assert encode(tracker) == {"v": 1, "off": True}
    assert decode(encode(tracker)) == OFF
    config.sdk.shutdown()


SECRET = "s3cr3t-VALUE"
FORGED = [
    None,
    "x",
    {},
    {"v": 2, "uuid": "u", "context": {}},
    {"v": True, "uuid": "u", "context": {}},
    {"v": 1, "uuid": "", "context": {}},
    {"v": 1, "uuid": ["u"], "context": {}},
    {"v": 1, "uuid": "u" * 10_000, "context": {}},
    {"v": 1, "uuid": f"u\n{SECRET}", "context": {}},
    {"v": 1, "uuid": "u", "context": []},
    {"v": 1, "uuid": "u", "context": {"evil": SECRET}},
    {"v": 1, "uuid": "u", "context": {"url": 1}},
    {"v": 1, "uuid": "u", "context": {"url": f"/x\r\nSet-Cookie: {SECRET}"}},
    {"v": 1, "uuid": "u", "context": {"url": "/" + "a" * 3000}},
    {"v": 1, "uuid": "u", "context": {"referer": f"\x00{SECRET}"}},
    {"v": 1, "uuid": "u", "context": {"ipAddress": f"not an ip {SECRET}"}},
    {"v": 1, "uuid": "u", "context": {"userAgent": "A" * 8000}},
    {"v": 1, "uuid": "u", "context": {"userAgent": f"A\x85{SECRET}"}},
    # A lone surrogate ('"\\udcff"' in the JSON): the request side removes them, and a
    # context holding one made every call of the task fail to encode.
    {"v": 1, "uuid": "u", "context": {"userAgent": f"A\udcff{SECRET}"}},
    {"v": 1, "uuid": "u\ud800", "context": {}},
    {"v": 1, "uuid": "u", "context": {"locale": f"<script>{SECRET}"}},
    {"v": 1, "uuid": "u", "context": {"locale": "en-us"}},  # not normalised
    {"v": 1, "uuid": "u", "context": {"timezone": f"Mars/{SECRET}"}},
]


@pytest.mark.parametrize("header", FORGED)
def test_a_header_encode_did_not_make_is_refused_without_echoing_it(header: Any) -> None:
    """A producer with broker access can write any header: nothing of it that the
    request side would not have made is sent (it used to pass any string of up to 8 KiB
    per context key: a non-IP ipAddress, control characters, a 8,000 character user
    agent), and the reason does not repeat the value."""
    with pytest.raises(HeaderError) as info:
        decode(header)
    assert SECRET not in str(info.value)


def test_forged_damaged_and_dnt_headers_leave_the_task_running_and_send_nothing(
    broker: str, fake_api: FakeApi, tasks: Any
) -> None:
    """A task whose header does not decode, or that was published by a request whose
    tracker is a no-op (respect_dnt), runs with a no-op tracker: track() neither sends
    nor raises (it raised NoRequestError before, failing the host's task), and each
    refused header is logged once by the worker."""
    from flask import Flask, jsonify

    from atrack_integrations.flask import ATrack

    app = Flask(__name__)
    ATrack(app, sdk=ATrackSdk(Options("pub_test_key_1234", disabled=True)), respect_dnt=True)

    @app.post("/pay")
    def pay() -> Any:
        return jsonify(task=tasks.order_paid.delay(99).id)

    forged = [h for h in FORGED if h is not None]
    with worker(broker, fake_api, tasks, pool="solo") as proc:
        body = app.test_client().post("/pay", headers={"DNT": "1"}).json
        results = [tasks.app.AsyncResult(body["task"])]
        results += [
            tasks.order_paid.apply_async((n,), headers={HEADER: h}) for n, h in enumerate(forged)
        ]
        assert all(isinstance(r.get(timeout=30), str) for r in results)
        # Then a well-formed header: its event is the only one to arrive (solo pool:
        # the tasks run in order, so the earlier ones sent nothing).
        legit = {"v": 1, "uuid": "legit-user", "context": {"url": "/ok"}}
        assert tasks.order_paid.apply_async((1000,), headers={HEADER: legit}).get(30)
        proc.terminate()
        assert proc.wait(30) == 0
        assert proc.stdout is not None
        log = proc.stdout.read().decode()
    events = fake_api.bodies("/event")
    assert [(e["uuid"], e["attributes"], e["context"]) for e in events] == [
        ("legit-user", {"amount": 1000}, {"url": "/ok"})
    ]
    assert log.count("A-Track ignored the 'atrack' header") == len(forged), log
    assert SECRET not in log


def test_installed_once_per_app(tasks: Any) -> None:
    from celery import Celery

    from atrack_integrations.celery import ATrackCelery

    with pytest.raises(RuntimeError, match="already installed"):
        ATrackCelery(tasks.app)
    with pytest.raises(ValueError, match="init must be"):
        ATrackCelery(Celery("other"), init="sometimes")  # settings are checked at once


_TEXT = st.text(st.characters(codec="utf-8"), max_size=3000)


@settings(max_examples=300, deadline=None)
@given(
    path=_TEXT,
    query=_TEXT,
    user_agent=_TEXT,
    referer=_TEXT,
    language=st.one_of(_TEXT, st.sampled_from(["de-de", "zh-hant-tw;q=0.5, en", "*"])),
    zone=st.one_of(_TEXT, st.sampled_from(["Europe/Berlin", "UTC", "Etc/GMT+3"])),
    peer=st.one_of(st.none(), st.ip_addresses().map(str), _TEXT),
    ip=st.sampled_from(["full", "anonymize", "none"]),
)
def test_whatever_a_request_sends_its_tasks_header_decodes(
    path: str,
    query: str,
    user_agent: str,
    referer: str,
    language: str,
    zone: str,
    peer: str | None,
    ip: str,
) -> None:
    """The worker's checks never refuse a header the publishing side made, whatever the
    client sent (a refused header would cost the task its events)."""
    from atrack_core._request import RequestView
    from atrack_integrations import IntegrationConfig, RequestTracker

    config = _PROPERTY_CONFIGS.get(ip)
    if config is None:
        sdk = ATrackSdk(Options("pub_test_1234", disabled=True))
        config = _PROPERTY_CONFIGS[ip] = IntegrationConfig(sdk=sdk, ip=ip)
    headers = {
        "user-agent": user_agent,
        "referer": referer,
        "accept-language": language,
        "x-timezone": zone,
    }
    view = RequestView("GET", "https", "shop.test", "/" + path, query, headers, peer)
    tracker = RequestTracker(config, view, "u-1", False)
    assert decode(encode(tracker)) == ("u-1", tracker.context)


_PROPERTY_CONFIGS: dict[str, Any] = {}
