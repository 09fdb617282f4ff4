"""A minimal, fast HTTP/1.1 keep-alive server for the delivery benchmarks.

It answers every POST with ``200 {"ok":true}`` after an optional added latency, counts
requests, and runs in its own process, so its CPU time is not charged to the SDK being
measured. asyncio protocols and no framework: it costs a few tens of microseconds per
request, so even on a 2-core machine the client, not the server, is what is measured.

    python bench/_server.py --latency 0.05      # prints the port, then serves
    python bench/_server.py --cert c.pem --key k.pem   # the same over TLS
    python bench/_server.py --latency 0.05 --jitter 0.2   # each answer after 40-60 ms

From Python: ``with BenchServer(latency=0.05) as server: server.url, server.count()``;
``BenchServer(tls=True)`` makes a self-signed certificate for 127.0.0.1 (with the
``openssl`` command) and serves https; ``server.cert_file`` is the CA to trust.

``BenchServer(stand_in="c")`` serves the same answers from ``bench/_fast_server.c`` (one
thread, epoll, a timerfd for the latency; plain http only), compiled on first use with
the system C compiler: it costs a few microseconds of CPU per request where this
asyncio server costs ~40-55, and its 50 ms answers are not late when the machine is
busy, so at high rates the figure is the client's, not the stand-in's.
``stand_in="uvloop"`` is this server on uvloop's event loop (http and https; uvloop is
in the ``dev`` dependency group). ``stand_in="auto"`` takes C for http when a C compiler
exists, uvloop otherwise (and for https) when it is installed, else asyncio; the
default, ``"python"``, keeps every benchmark's figures comparable with earlier ones.
``server.stand_in`` says which ran, ``server.cpu()`` is the stand-in's CPU seconds so far.
``BenchServer(jitter=0.2)`` spreads each answer's latency uniformly over +-20 % (the
asyncio stand-in only): the answers then come back one by one, as from a real API, not
in the waves of a constant latency (every request of a wave answered within the same
millisecond, a few milliseconds after the previous wave).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import random
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from typing import Any

_RESPONSE = (
    b'HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 11\r\n\r\n{"ok":true}'
)


class _Counter:
    requests = 0


class _Http(asyncio.Protocol):
    def __init__(self, latency: float, jitter: float = 0.0) -> None:
        self.latency = latency
        self.jitter = jitter
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its methods
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end].lower()
            length = 0
            pos = head.find(b"content-length:")
            if pos >= 0:
                length = int(head[pos + 15 :].split(b"\r\n", 1)[0])
            total = end + 4 + length
            if len(self.buffer) < total:
                return
            if head.startswith(b"get /count"):
                body = str(_Counter.requests).encode()
                self.buffer = self.buffer[total:]
                self._send(
                    b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body), 0.0
                )
                continue
            _Counter.requests += 1
            self.buffer = self.buffer[total:]
            self._send(_RESPONSE, self.latency)

    def _send(self, data: bytes, delay: float) -> None:
        transport = self.transport
        if transport is None:
            return
        if delay:
            if self.jitter:
                delay *= 1.0 + self.jitter * (2.0 * random.random() - 1.0)
            asyncio.get_running_loop().call_later(delay, _write, transport, data)
        else:
            transport.write(data)


def _write(transport: asyncio.Transport, data: bytes) -> None:
    if not transport.is_closing():
        transport.write(data)


async def _serve(
    port: int, latency: float, cert: str | None, key: str | None, jitter: float = 0.0
) -> None:
    loop = asyncio.get_running_loop()
    context = None
    if cert and key:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert, key)
    server = await loop.create_server(
        lambda: _Http(latency, jitter),
        "127.0.0.1",
        port,
        backlog=4096,
        reuse_address=True,
        ssl=context,
    )
    sock = server.sockets[0]
    print(sock.getsockname()[1], flush=True)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    async with server:
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added per request")
    parser.add_argument(
        "--jitter", type=float, default=0.0, help="latency spread: +- this fraction, uniform"
    )
    parser.add_argument("--cert", help="serve https with this certificate (PEM)")
    parser.add_argument("--key", help="and this private key (PEM)")
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop's event loop")
    args = parser.parse_args()
    serve = _serve(args.port, args.latency, args.cert, args.key, args.jitter)
    if args.uvloop:
        import uvloop

        uvloop.run(serve)
    else:
        asyncio.run(serve)


def has_uvloop() -> bool:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


def self_signed(directory: str) -> tuple[str, str]:
    """A certificate (its own CA) and key for 127.0.0.1, made with ``openssl``."""
    cert, key = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
    command = [
        "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key,
        "-out", cert, "-days", "2", "-subj", "/CN=127.0.0.1",
        "-addext", "subjectAltName=IP:127.0.0.1",
    ]  # fmt: skip
    subprocess.run(command, check=True, capture_output=True)
    return cert, key


_C_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_fast_server.c")


def fast_server_binary() -> str | None:
    """``bench/_fast_server.c`` compiled (once per source version, in the temp directory)
    with ``cc``/``gcc``/``clang``; None when there is no C compiler or it fails."""
    compiler = next((c for c in ("cc", "gcc", "clang") if shutil.which(c)), None)
    if compiler is None or not os.path.exists(_C_SOURCE):
        return None
    with open(_C_SOURCE, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()[:12]
    binary = os.path.join(tempfile.gettempdir(), f"atrack-bench-fast-server-{digest}")
    if os.path.exists(binary):
        return binary
    partial = f"{binary}.{os.getpid()}"
    done = subprocess.run(
        [compiler, "-O2", "-o", partial, _C_SOURCE], capture_output=True, text=True, check=False
    )
    if done.returncode:
        print(f"(bench/_fast_server.c did not compile: {done.stderr.strip()[:300]})")
        return None
    os.replace(partial, binary)
    return binary


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system) of a live process, from ``/proc``; NaN elsewhere."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class BenchServer:
    """The server in a child process (its CPU is not the benchmark's).

    ``stand_in``: "python" (this file's asyncio server), "uvloop" (the same on uvloop),
    "c" (``_fast_server.c``; http only, an error when it cannot be built), "auto" (C for
    http when it can be built, else uvloop when installed, else asyncio)."""

    def __init__(
        self,
        latency: float = 0.0,
        tls: bool = False,
        port: int = 0,
        stand_in: str = "python",
        jitter: float = 0.0,
    ) -> None:
        if stand_in not in ("auto", "c", "uvloop", "python"):
            raise ValueError(f"stand_in must be auto, c, uvloop or python, not {stand_in!r}")
        if stand_in == "c" and (tls or jitter):
            raise ValueError("the C stand-in serves plain http with a constant latency only")
        self.latency = latency
        self.jitter = jitter
        self.tls = tls
        self.port = port
        self.requested = stand_in
        self.stand_in = "python"
        self.proc: subprocess.Popen[str] | None = None
        self.url = ""
        self.cert_file: str | None = None
        self._dir: tempfile.TemporaryDirectory[str] | None = None

    def __enter__(self) -> BenchServer:
        args = [sys.executable, os.path.abspath(__file__), "--latency", str(self.latency)]
        if self.requested in ("auto", "c") and not self.tls and not self.jitter:
            binary = fast_server_binary()
            if binary is not None:
                args = [binary, "--latency", str(self.latency)]
                self.stand_in = "c"
            elif self.requested == "c":
                raise RuntimeError("stand_in='c' needs a C compiler (cc, gcc or clang)")
        if self.stand_in == "python" and self.requested in ("auto", "uvloop"):
            if has_uvloop():
                args.append("--uvloop")
                self.stand_in = "uvloop"
            elif self.requested == "uvloop":
                raise RuntimeError("stand_in='uvloop' needs uvloop (pip install uvloop)")
        if self.port:
            args += ["--port", str(self.port)]
        if self.jitter:
            args += ["--jitter", str(self.jitter)]
        if self.tls:
            self._dir = tempfile.TemporaryDirectory()
            self.cert_file, key = self_signed(self._dir.name)
            args += ["--cert", self.cert_file, "--key", key]
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        port = int(self.proc.stdout.readline())
        self.url = f"{'https' if self.tls else 'http'}://127.0.0.1:{port}"
        return self

    def count(self) -> int:
        context = ssl.create_default_context(cafile=self.cert_file) if self.tls else None
        with urllib.request.urlopen(self.url + "/count", timeout=5, context=context) as resp:
            return int(resp.read())

    def cpu(self) -> float:
        """The stand-in process's CPU seconds so far."""
        return process_cpu(self.proc.pid) if self.proc is not None else float("nan")

    def __exit__(self, *exc: Any) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            if self.proc.stdout is not None:
                self.proc.stdout.close()
        if self._dir is not None:
            self._dir.cleanup()


class CollectorServer:
    """The project's collector (``atrack collector``: Starlette, uvicorn, SQLite in
    memory) in a child process: the realistic target, which validates and stores every
    call. It costs far more CPU per request than :class:`BenchServer`, and on a 2-core
    machine it competes with the SDK for the cores."""

    def __init__(self, latency: float = 0.0) -> None:
        self.latency = latency
        self.proc: subprocess.Popen[str] | None = None
        self.url = ""

    def __enter__(self) -> CollectorServer:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "atrack_core.cli",
                "collector",
                "--port",
                str(port),
                "--latency",
                str(self.latency),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        self.url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(self.url + "/api/stats", timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError("the collector did not start") from None
                time.sleep(0.1)
        return self

    def count(self) -> int:
        with urllib.request.urlopen(self.url + "/api/stats", timeout=5) as resp:
            data = json.loads(resp.read())
        return int(data.get("calls", data.get("events", -1)))

    def __exit__(self, *exc: Any) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


if __name__ == "__main__":
    main()
