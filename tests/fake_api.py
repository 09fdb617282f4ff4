"""A fault-injecting stand-in for the hosted A-Track API, on loopback.

A real HTTP server (stdlib ``ThreadingHTTPServer``) in a background thread: it records
every request (path, headers, raw body, decoded JSON) and answers with planned statuses,
``Retry-After`` values, latency or a dropped connection. Used where the tests need to
inject faults; the collector (``atrack_core.collector``) is used where a realistic
validating server is wanted.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    raw: bytes
    at: float = field(default_factory=time.monotonic)

    @property
    def body(self) -> Any:
        return json.loads(self.raw)


@dataclass
class Plan:
    """One planned answer: a status, optional Retry-After, or ``drop`` the connection."""

    status: int = 200
    retry_after: str | None = None
    drop: bool = False
    delay: float = 0.0


class FakeApi:
    def __init__(self) -> None:
        self.received: list[Received] = []
        self.plans: dict[str, deque[Plan]] = defaultdict(deque)
        self.uuid_plans: dict[str, deque[Plan]] = defaultdict(deque)
        self.latency = 0.0
        self.default_status = 200
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length)
                rec = Received(self.path, {k.lower(): v for k, v in self.headers.items()}, raw)
                plan = api._next_plan(rec)
                if plan.delay or api.latency:
                    time.sleep(plan.delay or api.latency)
                if plan.drop:
                    api._record(rec)
                    # Close without answering: the client sees a connection error.
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                payload = json.dumps({"ok": plan.status < 300}).encode()
                # Recorded before answering: a sync client that got its response must
                # find its request recorded.
                api._record(rec)
                self.send_response(plan.status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(payload)))
                if plan.retry_after is not None:
                    self.send_header("retry-after", plan.retry_after)
                self.end_headers()
                self.wfile.write(payload)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    def __enter__(self) -> FakeApi:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def plan(self, path: str, *plans: Plan | int) -> None:
        """Queue answers for the next requests to ``path`` (then the default 200)."""
        with self._lock:
            for p in plans:
                self.plans[path].append(p if isinstance(p, Plan) else Plan(p))

    def plan_uuid(self, uuid: str, *plans: Plan | int) -> None:
        """Queue answers for the next requests whose body carries ``uuid``."""
        with self._lock:
            for p in plans:
                self.uuid_plans[uuid].append(p if isinstance(p, Plan) else Plan(p))

    def _next_plan(self, rec: Received) -> Plan:
        with self._lock:
            if self.uuid_plans:
                try:
                    uuid = rec.body.get("uuid")
                except ValueError:
                    uuid = None
                queue = self.uuid_plans.get(uuid) if isinstance(uuid, str) else None
                if queue:
                    return queue.popleft()
            queue = self.plans.get(rec.path)
            if queue:
                return queue.popleft()
            return Plan(self.default_status)

    def _record(self, rec: Received) -> None:
        with self._cond:
            self.received.append(rec)
            self._cond.notify_all()

    def wait_for(self, count: int, timeout: float = 10.0) -> list[Received]:
        """Block until ``count`` requests arrived; return them all."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self.received) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(
                        f"expected {count} requests, got {len(self.received)} in {timeout}s"
                    )
                self._cond.wait(remaining)
            return list(self.received)

    def bodies(self, path: str | None = None) -> list[Any]:
        with self._lock:
            return [r.body for r in self.received if path is None or r.path == path]


def closed_port_url() -> str:
    """A loopback URL on which nothing listens (connections are refused)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return f"http://127.0.0.1:{port}"
