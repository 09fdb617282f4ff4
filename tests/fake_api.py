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
import sys
import threading
import time
from collections import defaultdict, deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    raw: bytes
    at: float = field(default_factory=time.monotonic)
    # The status answered (0 for a dropped connection), set when the answer is decided.
    status: int = 0

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
    # Hold the request unanswered until the server closes (a blackholed API).
    hang: bool = False
    # Answer only once this event is set (or the server closes): a call kept in flight
    # for exactly as long as a test needs it.
    hold: threading.Event | None = None
    # Send the answer one byte every ``trickle`` seconds (a slow-loris API).
    trickle: float = 0.0
    # An error body of this many bytes (written until the client goes away).
    body_size: int = 0
    # A chunked body that never ends: one chunk every ``endless`` seconds.
    endless: float = 0.0
    # This text as the body instead of ``{"ok": ...}`` (an API's error message).
    text: str | None = None
    # Announce a body this many bytes longer than the one written, then close: an
    # answer cut short (a proxy or load balancer closing the connection mid-body).
    cut: int = 0
    # Answer bytes that are no HTTP at all, then close (a broken middlebox).
    garbage: bool = False


class FakeApi:
    def __init__(self) -> None:
        self.received: list[Received] = []
        self.plans: dict[str, deque[Plan]] = defaultdict(deque)
        self.uuid_plans: dict[str, deque[Plan]] = defaultdict(deque)
        self.latency = 0.0
        self.default_status = 200
        # Answer for requests no plan matches; None means ``Plan(default_status)``.
        self.default: Plan | None = None
        # Bytes of hostile answers (Plan.trickle, body_size, endless) written so far.
        self.bytes_written = 0
        # Requests received and not yet answered, and the most there were at once (see
        # reset_max_open): what the API saw of the client's concurrency.
        self.open = 0
        self.max_open = 0
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
                if len(raw) < length:
                    # The client went away mid-body (a process shutting down): a real
                    # server processes nothing, so nothing is recorded.
                    self.close_connection = True
                    return
                rec = Received(self.path, {k.lower(): v for k, v in self.headers.items()}, raw)
                plan = api._next_plan(rec)
                lost = plan.drop or plan.hang or plan.trickle or plan.garbage
                rec.status = 0 if lost else plan.status
                # Recorded on arrival, before any delay or answer: a client that got its
                # response, or gave up waiting for it, finds its request recorded.
                api._record(rec)
                try:
                    if plan.hang:
                        api._closing.wait()
                        self.close_connection = True
                        return
                    if plan.hold is not None:
                        while not plan.hold.wait(0.02) and not api._closing.is_set():
                            pass
                    if plan.delay or api.latency:
                        # Interruptible, so closing the server does not wait for sleepers.
                        api._closing.wait(plan.delay or api.latency)
                finally:
                    # Before the client can learn of the answer (or the drop), so the
                    # request it sends next never overlaps this one in the count.
                    api._answered()
                if plan.garbage:
                    self.close_connection = True
                    self.wfile.write(b"\x00\xffNOT HTTP AT ALL\r\n\r\n")
                    self.wfile.flush()
                    return
                if plan.drop:
                    # Close without answering: the client sees a connection error.
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if plan.trickle or plan.body_size or plan.endless:
                    api._answer_slowly(self, plan)
                    return
                payload = (
                    json.dumps({"ok": plan.status < 300}).encode()
                    if plan.text is None
                    else plan.text.encode()
                )
                if plan.cut:
                    self.close_connection = True
                try:
                    self.send_response(plan.status)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(payload) + plan.cut))
                    if plan.retry_after is not None:
                        self.send_header("retry-after", plan.retry_after)
                    self.end_headers()
                    self.wfile.write(payload)
                except OSError:
                    # The client timed out and went away (a test of timeouts).
                    self.close_connection = True

        class Server(ThreadingHTTPServer):
            # The default backlog of 5 refuses connections when a hundred senders
            # connect at once; the engine would see that as connection errors.
            request_queue_size = 512
            daemon_threads = True

            def handle_error(self, request: Any, client_address: Any) -> None:
                # A client that went away (a process the test killed, a keep-alive
                # connection reset at exit) is what many tests do on purpose; the
                # default prints its traceback. Any other error still is printed.
                if isinstance(sys.exc_info()[1], (ConnectionResetError, BrokenPipeError)):
                    return
                super().handle_error(request, client_address)

        self._closing = threading.Event()
        self.server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    def __enter__(self) -> FakeApi:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._closing.set()
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
            return self.default if self.default is not None else Plan(self.default_status)

    def _answer_slowly(self, handler: BaseHTTPRequestHandler, plan: Plan) -> None:
        """The hostile answers: trickled, huge or endless. Counts what it could write."""
        handler.close_connection = True
        out = handler.wfile
        try:
            if plan.trickle:
                head = f"HTTP/1.1 {plan.status} OK\r\ncontent-length: 2\r\n\r\n{{}}".encode()
                for byte in head:
                    if self._closing.wait(plan.trickle):
                        return
                    out.write(bytes([byte]))
                    out.flush()
                    self.bytes_written += 1
            elif plan.body_size:
                out.write(
                    f"HTTP/1.1 {plan.status} Boom\r\ncontent-length: {plan.body_size}\r\n"
                    "content-type: text/plain\r\n\r\n".encode()
                )
                chunk = b"x" * 65536
                left = plan.body_size
                while left > 0 and not self._closing.is_set():
                    out.write(chunk[:left])
                    left -= len(chunk[:left])
                    self.bytes_written += len(chunk)
            else:
                out.write(
                    f"HTTP/1.1 {plan.status} OK\r\ntransfer-encoding: chunked\r\n\r\n".encode()
                )
                while not self._closing.wait(plan.endless):
                    out.write(b"1\r\nx\r\n")
                    out.flush()
                    self.bytes_written += 1
        except OSError:
            pass  # the client went away, as it should

    def _record(self, rec: Received) -> None:
        with self._cond:
            self.received.append(rec)
            self.open += 1
            self.max_open = max(self.max_open, self.open)
            self._cond.notify_all()

    def _answered(self) -> None:
        with self._lock:
            self.open -= 1

    def reset_max_open(self) -> None:
        """Count the most requests open at once from now on."""
        with self._lock:
            self.max_open = self.open

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

    def request_ids(self) -> list[str]:
        """The ``x-a-track-request-id`` of every request received, in arrival order."""
        with self._lock:
            return [r.headers["x-a-track-request-id"] for r in self.received]

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


@contextmanager
def blackhole_url() -> Iterator[str]:
    """A loopback URL that accepts TCP connections (the kernel completes the handshake)
    and never answers: a client waits until its own timeout."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(512)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        sock.close()
