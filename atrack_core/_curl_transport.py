"""The libcurl transport (pycurl, extra ``fast``): a tenth of httpx's CPU per request.

Connections (sync mode) are one reused easy handle each. Background delivery uses
:class:`CurlMulti`: every request of the SDK driven from one thread through libcurl's
multi interface, with ``socket_action`` and a selector (epoll on Linux) that also
watches a wake-up pipe, so the scheduler can hand it new calls at any time.

Every handle gets the same settings as the httpx transport, from the same
:class:`~atrack_core._transport.Endpoint`: ``CAINFO`` always (the manylinux wheel's
built-in CA path does not exist on Debian/Ubuntu), ``PROXY``/``NOPROXY`` from the SDK's
own lookup (libcurl reads proxy variables by its own rules otherwise), ``TIMEOUT_MS``
(a deadline for the whole attempt) with ``CONNECTTIMEOUT_MS``, ``NOSIGNAL`` (threads),
``TCP_NODELAY``, HTTP(S) only, no redirects. At most 64 KiB of a body is kept: the
write callback aborts the transfer past it (the status still decides the outcome).
A handle is never used in a process other than the one that made it.
"""

from __future__ import annotations

import contextlib
import math
import os
import select
import selectors
import sys
import time
from collections.abc import Mapping
from typing import Any

import pycurl

from ._transport import (
    MAX_RESPONSE_BODY,
    Connection,
    Endpoint,
    Multi,
    Response,
    Transport,
    TransportError,
)

# Errors a retry cannot fix; every other curl error is retried like a network error.
_FATAL = frozenset(
    {
        pycurl.E_UNSUPPORTED_PROTOCOL,
        pycurl.E_FAILED_INIT,
        pycurl.E_URL_MALFORMAT,
        pycurl.E_NOT_BUILT_IN,
        pycurl.E_BAD_FUNCTION_ARGUMENT,
        pycurl.E_UNKNOWN_OPTION,
    }
)
# The names httpx users know, for the same failures.
_NAMES = {
    pycurl.E_OPERATION_TIMEDOUT: "Timeout",
    pycurl.E_COULDNT_CONNECT: "ConnectError",
    pycurl.E_COULDNT_RESOLVE_HOST: "ConnectError",
    pycurl.E_COULDNT_RESOLVE_PROXY: "ProxyError",
    pycurl.E_SSL_CONNECT_ERROR: "ConnectError",
    pycurl.E_PEER_FAILED_VERIFICATION: "ConnectError",
    pycurl.E_SSL_CACERT_BADFILE: "ConnectError",
    pycurl.E_SEND_ERROR: "WriteError",
    pycurl.E_RECV_ERROR: "ReadError",
    pycurl.E_GOT_NOTHING: "RemoteProtocolError",
    pycurl.E_PARTIAL_FILE: "RemoteProtocolError",
}


_RESPONSE_CODE = pycurl.RESPONSE_CODE
_PRIMARY_IP = pycurl.PRIMARY_IP
_UNSUPPORTED_PROTOCOL = pycurl.E_UNSUPPORTED_PROTOCOL
_REQUEST_SIZE = pycurl.REQUEST_SIZE
_HTTPHEADER = pycurl.HTTPHEADER
_POSTFIELDS = pycurl.POSTFIELDS
# A transfer that ended in these errors may still have an answer (status) to report:
# the body cut at 64 KiB (write error), by the deadline, by the server closing early
# (partial file) or by a reset (receive error). The status decides, as with httpx.
_ANSWERED_ERRORS = (
    pycurl.E_WRITE_ERROR,
    pycurl.E_OPERATION_TIMEDOUT,
    pycurl.E_PARTIAL_FILE,
    pycurl.E_RECV_ERROR,
)


class _State:
    """One handle's per-request results, filled by libcurl's callbacks."""

    __slots__ = ("began", "body", "floor", "lines", "size", "token", "url")

    def __init__(self) -> None:
        self.token: object = None
        self.body: list[bytes] = []
        self.size = 0
        # The response's header lines, as libcurl hands them over: the handle's header
        # callback is this list's own ``append`` (no Python frame per line), and
        # ``Retry-After`` is looked up only in an answer that can carry a meaningful one.
        self.lines: list[bytes] = []
        # A lower bound of the bytes one sending of the request takes (see _result).
        self.floor = 0
        self.url = ""  # the URL set on the handle (set again only when it changes)
        self.began = 0.0  # the multi loop's wake-up after which the request was added

    def reset(self, token: object) -> None:
        self.token = token
        self.body = []
        self.size = 0
        self.lines.clear()  # the same list: the handle's callback is bound to it

    def write(self, data: bytes) -> int | None:
        room = MAX_RESPONSE_BODY - self.size
        if room <= 0:
            return 0  # not len(data): libcurl aborts the transfer (CURLE_WRITE_ERROR)
        self.body.append(data[:room])
        self.size += min(len(data), room)
        return None

    def retry_after(self) -> str | None:
        """The last response's ``Retry-After`` (after a 100 or a proxy's CONNECT answer,
        a new status line starts a new response)."""
        value = None
        for line in self.lines:
            if line[:1] not in b"RrH":
                continue
            if line[:12].lower() == b"retry-after:":
                value = line[12:].decode("latin-1").strip()
            elif line[:5] == b"HTTP/":
                value = None
        return value


def _handle(endpoint: Endpoint, state: _State) -> Any:
    h = pycurl.Curl()
    h.setopt(pycurl.NOSIGNAL, 1)
    h.setopt(pycurl.POST, 1)
    timeout_ms = max(1, int(endpoint.timeout * 1000))
    h.setopt(pycurl.TIMEOUT_MS, timeout_ms)
    h.setopt(pycurl.CONNECTTIMEOUT_MS, timeout_ms)
    h.setopt(pycurl.TCP_NODELAY, 1)
    h.setopt(pycurl.PROTOCOLS, pycurl.PROTO_HTTP | pycurl.PROTO_HTTPS)
    h.setopt(pycurl.FOLLOWLOCATION, 0)
    if endpoint.ca_file:
        h.setopt(pycurl.CAINFO, endpoint.ca_file)
    h.setopt(pycurl.PROXY, endpoint.proxy or "")  # "": no proxy, whatever the env says
    h.setopt(pycurl.NOPROXY, "")
    h.setopt(
        pycurl.HTTP_VERSION,
        pycurl.CURL_HTTP_VERSION_2TLS if endpoint.http2 else pycurl.CURL_HTTP_VERSION_1_1,
    )
    h.setopt(pycurl.WRITEFUNCTION, state.write)
    h.setopt(pycurl.HEADERFUNCTION, state.lines.append)
    return h


def _prepare(h: Any, state: _State, url: str, headers: Mapping[str, str], body: bytes) -> int:
    """Set the request on ``h``; returns a lower bound of its size on the wire (the body
    and the header lines this code sets: libcurl adds only its own few on top)."""
    if url != state.url:
        h.setopt(pycurl.URL, url)
        state.url = url
    # "Expect:" turns off libcurl's 100-continue round trip for larger bodies.
    lines = [f"{k}: {v}" for k, v in headers.items()]
    lines.append("Expect:")
    h.setopt(_HTTPHEADER, lines)
    # POSTFIELDS sets the size too (binary-safe) and keeps the bytes object alive.
    h.setopt(_POSTFIELDS, body)
    return len(body) + sum(map(len, lines))


def _result(h: Any, state: _State, code: int, message: str) -> Response | TransportError:
    status: int = h.getinfo(_RESPONSE_CODE) or 0
    if status and (code == 0 or code in _ANSWERED_ERRORS):
        # Answered: a body cut at 64 KiB, by the deadline or by the connection is kept
        # as far as it came.
        # libcurl sends a request again, on its own and once, when the reused keep-alive
        # connection it went out on turns out closed before any byte of an answer (the
        # server may have processed it). Its request size then counts both sendings:
        # reported, so the engine counts the resend as the retry it is.
        resent = (h.getinfo(_REQUEST_SIZE) or 0) >= 2 * state.floor > 0
        # Retry-After means something only in an answer that is not a success.
        retry_after = None if 200 <= status < 300 else state.retry_after()
        return Response(status, retry_after, b"".join(state.body), resent)
    if code == 0:  # pragma: no cover - libcurl always has a status after a transfer
        return TransportError("RemoteProtocolError: no status line")
    if code == _UNSUPPORTED_PROTOCOL and h.getinfo(_PRIMARY_IP):
        # Connected: the server's answer was no HTTP ("Received HTTP/0.9 when not
        # allowed"), a protocol error as httpx sees it, and retried as it retries one.
        # (A URL or proxy scheme libcurl cannot speak fails before any connection.)
        return TransportError(f"RemoteProtocolError: curl error {code}: {message}")
    name = _NAMES.get(code, "CurlError")
    return TransportError(f"{name}: curl error {code}: {message}", retry=code not in _FATAL)


def _cselect(events: int) -> int:
    flags = 0
    if events & (select.EPOLLIN | select.EPOLLHUP):
        flags |= pycurl.CSELECT_IN
    if events & select.EPOLLOUT:
        flags |= pycurl.CSELECT_OUT
    if events & select.EPOLLERR:
        flags |= pycurl.CSELECT_ERR
    return flags


_POLL_REMOVE = pycurl.POLL_REMOVE
_SOCKET_TIMEOUT = pycurl.SOCKET_TIMEOUT
# Paced waiting (see CurlMulti.run): while answers trickle in (the loop woken more often
# than every HOLD / 2, with fewer than HOLD_EVENTS events each, on average) and at least
# HOLD_BUSY requests fly, the loop waits out HOLD after each wake-up, then takes
# everything ready at once. Only when the shortest recent round trip is at least HOLD_RTT
# times HOLD: each answer then waits HOLD / 2 on average, a few % of its round trip.
HOLD = 0.002
HOLD_BUSY = 32
HOLD_EVENTS = 4
HOLD_RTT = 20
# libcurl's POLL_IN (1) / POLL_OUT (2) / both -> a one-shot epoll mask.
_EPOLL_MASKS = tuple(
    (select.EPOLLIN if what & pycurl.POLL_IN else 0)
    | (select.EPOLLOUT if what & pycurl.POLL_OUT else 0)
    | select.EPOLLONESHOT
    for what in range(4)
)
# epoll's event bits (IN 0x1, PRI 0x2, OUT 0x4, ERR 0x8, HUP 0x10) -> libcurl's flags.
_CSELECT = tuple(_cselect(events) for events in range(0x20))


def _raw_epoll() -> Any:
    """A plain epoll when there is one and no green library has patched ``select``
    (under gevent/eventlet the loop must wait in their selector, or it blocks the hub);
    ``None`` otherwise. epoll directly costs less per request than ``selectors``."""
    gevent = sys.modules.get("gevent.monkey")
    if gevent is not None and gevent.is_module_patched("select"):
        return None
    eventlet = sys.modules.get("eventlet.patcher")
    if eventlet is not None and eventlet.is_monkey_patched("select"):
        return None
    epoll = getattr(select, "epoll", None)
    return epoll() if epoll is not None else None


# Handles inherited through fork: never used, never closed (cleanup could send a TLS
# close_notify on a socket the parent still uses); kept so nothing frees them.
_inherited: list[Any] = []


class CurlConnection(Connection):
    """One reused easy handle: one request at a time, blocking (``perform``)."""

    def __init__(self, endpoint: Endpoint) -> None:
        self._endpoint = endpoint
        self._base = endpoint.base_url
        self._state = _State()
        self._handle = _handle(endpoint, self._state)
        self._pid = os.getpid()

    def request(self, path: str, headers: Mapping[str, str], body: bytes) -> Response:
        if self._pid != os.getpid():  # made before a fork: a fresh handle here
            _inherited.append(self._handle)
            self._state = _State()
            self._handle = _handle(self._endpoint, self._state)
            self._pid = os.getpid()
        h = self._handle
        self._state.reset(None)
        self._state.floor = _prepare(h, self._state, self._base + path, headers, body)
        try:
            h.perform()
            result = _result(h, self._state, 0, "")
        except pycurl.error as exc:
            code = int(exc.args[0])
            message = str(exc.args[1]) if len(exc.args) > 1 else ""
            result = _result(h, self._state, code, message)
        self._state.lines.clear()
        if isinstance(result, TransportError):
            raise result
        return result

    def close(self) -> None:
        if self._pid == os.getpid():
            self._handle.close()


class CurlMulti(Multi):
    """Up to ``capacity`` requests at once on libcurl's multi interface, from one thread."""

    def __init__(self, endpoint: Endpoint, capacity: int) -> None:
        self._endpoint = endpoint
        self._base = endpoint.base_url
        self._pid = os.getpid()
        self._multi = pycurl.CurlMulti()
        self._multi.setopt(pycurl.M_MAX_HOST_CONNECTIONS, capacity)
        self._multi.setopt(pycurl.M_MAX_TOTAL_CONNECTIONS, capacity)
        self._multi.setopt(pycurl.M_MAXCONNECTS, capacity)
        self._multi.setopt(pycurl.M_SOCKETFUNCTION, self._on_socket)
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._epoll = _raw_epoll()
        # epoll, one-shot: see _on_socket.
        self._fds: dict[int, int] = {}  # the sockets libcurl watches -> their mask
        self._armed: set[int] = set()  # registered and armed (no event reported since)
        self._known: set[int] = set()  # registered, armed or not
        self._selector = selectors.DefaultSelector()
        if self._epoll is not None:
            self._epoll.register(self._wake_r, select.EPOLLIN)
        else:
            self._selector.register(self._wake_r, selectors.EVENT_READ)
        self._free: list[tuple[Any, _State]] = []
        self._busy: dict[Any, _State] = {}  # handle -> its state, while added
        # Paced waiting (HOLD): the last wake-up; the average time between wake-ups that
        # brought socket events, and their average number of events; the shortest round
        # trips of this and the last window of 512 answers; the pause in force (0: none).
        self._woke = 0.0
        self._gap = 1.0
        self._per_wake = float(HOLD_EVENTS)
        self._rtt = self._rtt_last = math.inf
        self._answers = 0
        self._hold = 0.0

    # libcurl's callbacks (run inside socket_action, in the loop thread)

    def _on_socket(self, what: int, fd: int, multi: Any, data: Any) -> None:
        epoll = self._epoll
        if epoll is not None:
            # Sockets are registered one-shot: an event disarms its socket in the kernel.
            # A keep-alive connection's socket is usually given up by libcurl right after
            # the event that completed its response (POLL_REMOVE), and asked for again
            # when the next request goes out on it: leaving the disarmed registration in
            # place and re-arming it then is one epoll_ctl per request instead of two
            # (DEL, ADD). A disarmed registration reports nothing, not even a hang-up, so
            # nothing stale can wake the loop; an armed one is taken out at once.
            if what == _POLL_REMOVE:
                if self._fds.pop(fd, None) is not None and fd in self._armed:
                    self._armed.discard(fd)
                    self._known.discard(fd)
                    with contextlib.suppress(OSError):  # closed already: epoll forgot it
                        epoll.unregister(fd)
                return
            mask = _EPOLL_MASKS[what & 3]
            if self._fds.get(fd) == mask and fd in self._armed:
                return
            self._fds[fd] = mask
            self._arm(epoll, fd, mask)
            return
        if what == pycurl.POLL_REMOVE:
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(fd)
            return
        events = 0
        if what & pycurl.POLL_IN:
            events |= selectors.EVENT_READ
        if what & pycurl.POLL_OUT:
            events |= selectors.EVENT_WRITE
        try:
            self._selector.modify(fd, events)
        except KeyError:
            self._selector.register(fd, events)

    def _arm(self, epoll: Any, fd: int, mask: int) -> None:
        try:
            if fd in self._known:
                epoll.modify(fd, mask)
            else:
                epoll.register(fd, mask)
        except FileExistsError:  # a reused fd number epoll still had
            epoll.modify(fd, mask)
        except FileNotFoundError:  # closed (epoll forgot it) and the number reused
            epoll.register(fd, mask)
        self._known.add(fd)
        self._armed.add(fd)

    # the Multi interface

    def add(self, token: object, path: str, headers: Mapping[str, str], body: bytes) -> None:
        if self._free:
            h, state = self._free.pop()
            state.token = token  # the rest was reset when its last request finished
        else:
            state = _State()
            state.token = token
            h = _handle(self._endpoint, state)
        state.floor = _prepare(h, state, self._base + path, headers, body)
        state.began = self._woke
        self._busy[h] = state
        self._multi.add_handle(h)

    def run(self, wait: float | None) -> list[tuple[object, Response | TransportError]]:
        multi = self._multi
        end = None if wait is None else time.monotonic() + wait
        while True:
            # New requests (added since) start, and libcurl's due deadlines fire, here:
            # libcurl asks for this with a deadline of 0 ms.
            if multi.timeout() == 0:
                multi.socket_action(_SOCKET_TIMEOUT, 0)
            done = self._collect()
            if done:
                return done
            timeout = None if end is None else max(0.0, end - time.monotonic())
            # libcurl's next deadline in ms (-1: none), asked for when it matters rather
            # than followed through a timer callback (two Python calls per request).
            due_ms = multi.timeout()
            if due_ms >= 0:
                due = due_ms / 1000
                timeout = due if timeout is None else min(timeout, due)
            woken = False
            epoll = self._epoll
            if epoll is not None:
                hold = self._hold
                if hold and (timeout is None or timeout > 0):
                    pause = self._woke + hold - time.monotonic()
                    if pause > 0:
                        # Answers trickle in: one wake-up for all that come meanwhile.
                        time.sleep(pause if timeout is None else min(pause, timeout))
                        timeout = 0.0
                fds, armed = self._fds, self._armed
                ready = epoll.poll(-1 if timeout is None else timeout)
                self._paced(ready, hold)
                for fd, events in ready:
                    if fd == self._wake_r:
                        woken = True
                        self._drain()
                        continue
                    armed.discard(fd)  # one-shot: reported, so disarmed
                    if fd not in fds:
                        continue  # given up by libcurl meanwhile (taken out of epoll too)
                    multi.socket_action(fd, _CSELECT[events & 0x1F])
                    if fd not in armed:  # still watched and not re-armed by the callback
                        mask = fds.get(fd)
                        if mask is not None:
                            self._arm(epoll, fd, mask)
            else:
                for fd, flags in self._select(timeout):
                    if fd == self._wake_r:
                        woken = True
                        self._drain()
                        continue
                    multi.socket_action(fd, flags)
            if woken or (end is not None and time.monotonic() >= end):
                if multi.timeout() == 0:
                    multi.socket_action(_SOCKET_TIMEOUT, 0)
                return self._collect()

    def _paced(self, ready: list[tuple[int, int]], held: float) -> None:
        """After a wait: keep or change the pause before the next one (see HOLD)."""
        now = time.monotonic()
        if held:
            # Paced: carry on while each pause brings answers and enough requests fly.
            if not ready or len(self._busy) < HOLD_BUSY:
                self._hold = 0.0
        elif ready:
            self._gap += (now - self._woke - self._gap) / 8
            self._per_wake += (len(ready) - self._per_wake) / 8
            if (
                self._gap < HOLD / 2
                and self._per_wake < HOLD_EVENTS
                and len(self._busy) >= HOLD_BUSY
                and min(self._rtt, self._rtt_last) >= HOLD_RTT * HOLD
            ):
                self._hold = HOLD
        self._woke = now

    def _drain(self) -> None:
        try:
            while os.read(self._wake_r, 512):
                pass
        except BlockingIOError:
            pass

    def _select(self, timeout: float | None) -> list[tuple[int, int]]:
        """Ready sockets as (fd, libcurl's CSELECT flags), without epoll."""
        out: list[tuple[int, int]] = []
        for key, mask in self._selector.select(timeout):
            flags = 0
            if mask & selectors.EVENT_READ:
                flags |= pycurl.CSELECT_IN
            if mask & selectors.EVENT_WRITE:
                flags |= pycurl.CSELECT_OUT
            out.append((key.fd, flags))
        return out

    def _collect(self) -> list[tuple[object, Response | TransportError]]:
        done: list[tuple[object, Response | TransportError]] = []
        multi, busy, free = self._multi, self._busy, self._free
        while True:
            queued, ok, failed = multi.info_read()
            for h in ok:
                state = busy.pop(h)
                # The shortest round trip over the last 512-1024 answers (HOLD).
                rtt = self._woke - state.began
                self._rtt = min(self._rtt, rtt)
                self._answers += 1
                if not self._answers & 511:
                    self._rtt_last, self._rtt = self._rtt, math.inf
                multi.remove_handle(h)
                done.append((state.token, _result(h, state, 0, "")))
                state.reset(None)  # ready for the next request, and holds nothing meanwhile
                free.append((h, state))
            for h, code, message in failed:
                state = busy.pop(h)
                multi.remove_handle(h)
                done.append((state.token, _result(h, state, code, str(message))))
                state.reset(None)
                free.append((h, state))
            if not queued:
                return done

    def wake(self) -> None:
        # BlockingIOError: the pipe is full, so a wake-up is pending anyway.
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"\0")

    def close(self) -> None:
        if self._pid != os.getpid():
            _inherited.append(self._multi)
            return
        for h in list(self._busy):
            self._multi.remove_handle(h)
            h.close()
        for h, _ in self._free:
            h.close()
        self._busy.clear()
        self._free.clear()
        self._fds.clear()
        self._armed.clear()
        self._known.clear()
        self._multi.close()
        self._selector.close()
        if self._epoll is not None:
            self._epoll.close()
        os.close(self._wake_r)
        os.close(self._wake_w)


class CurlTransport(Transport):
    """libcurl through pycurl: used by ``transport="auto"`` when pycurl is installed."""

    name = "curl"

    def connection(self, endpoint: Endpoint) -> Connection:
        return CurlConnection(endpoint)

    def multi(self, endpoint: Endpoint, capacity: int) -> Multi | None:
        return CurlMulti(endpoint, capacity)
