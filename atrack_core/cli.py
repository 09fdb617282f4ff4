"""The ``atrack`` command (``atrack COMMAND --help`` has every option).

::

    atrack collector [--host 127.0.0.1] [--port 8787] [--db PATH] [--latency SECONDS]
                     [--accept-key KEY ...] [--allow-host NAME ...] [--access-log]
    atrack send-event NAME --uuid U [--attr k=v ...] [--key K] [--endpoint URL]
                      [--geo G] [--timeout S] [--retries N] [--allow-insecure-http] [-v]
    atrack outbox inspect DIR [--json]
    atrack outbox flush DIR [--key K] [--endpoint URL] [--geo G] [--timeout S]
                            [--allow-insecure-http] [-v]
    atrack --version

``collector --host 0.0.0.0`` listens on every interface; the banner then prints the
loopback endpoint for this machine and, per ``--allow-host`` name, the endpoint other
hosts (a docker-compose network) use with ``ATRACK_ALLOW_INSECURE_HTTP=1``.

``send-event`` makes one synchronous call through the SDK, to check a key and a
network path from the shell. Exit status: 0 when the call was accepted, 1 when it was
not (network error, HTTP error status), 2 for bad input or usage.
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import math
import os
import sqlite3
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Final
from urllib.parse import urlsplit

from ._options import mask_key
from ._version import __version__

__all__ = ["main"]

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_USAGE: Final = 2

_COLLECTOR_EXTRA_HINT: Final = (
    "the collector needs Starlette and uvicorn: pip install 'a-track-sdk[collector]'"
)


def _error(message: str) -> None:
    print(f"atrack: error: {message}", file=sys.stderr)


# -- argument parsing ---------------------------------------------------------------


def _reject_constant(name: str) -> Any:
    raise ValueError(name)


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(text)
    return value


def parse_attribute(text: str) -> tuple[str, Any]:
    """``k=v`` to ``("k", value)``: the value as JSON when it parses as JSON (numbers,
    ``true``, ``null``, ``[1,2]``, ``"quoted"``), otherwise as the plain string."""
    name, sep, raw = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    if not name:
        raise argparse.ArgumentTypeError(f"the attribute name is empty in {text!r}")
    try:
        # NaN/Infinity are Python's JSON extensions, not JSON: keep them as strings.
        value: Any = json.loads(raw, parse_constant=_reject_constant, parse_float=_finite_float)
    except ValueError:
        value = raw
    return name, value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
    return value


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text!r}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text!r}")
    return value


def _port(text: str) -> int:
    value = _non_negative_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"not a TCP port: {text!r}")
    return value


Handler = Callable[[argparse.Namespace], int]


def build_parser() -> argparse.ArgumentParser:
    """The ``atrack`` argument parser (exposed for documentation and tests)."""
    parser = argparse.ArgumentParser(
        prog="atrack",
        description="A-Track SDK tools: a local collector and a one-shot event sender.",
    )
    parser.add_argument(
        "--version", action="version", version=f"atrack (a-track-sdk) {__version__}"
    )
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)

    collector = commands.add_parser(
        "collector",
        help="run a local A-Track-compatible collector with an inspector page",
        description=(
            "Run a local collector that checks every call as the hosted API would, keeps "
            "users and events in SQLite and shows them at http://HOST:PORT/. Point "
            "ATRACK_ENDPOINT at it. Needs the 'collector' extra."
        ),
    )
    collector.add_argument("--host", default="127.0.0.1", help="address to bind (%(default)s)")
    collector.add_argument("--port", type=_port, default=8787, help="port (%(default)s)")
    collector.add_argument(
        "--db",
        metavar="PATH",
        help="SQLite file to keep data in across restarts (default: in memory)",
    )
    collector.add_argument(
        "--latency",
        type=_non_negative_float,
        default=0.0,
        metavar="SECONDS",
        help="delay added to every ingest call, to imitate a distant API (%(default)s)",
    )
    collector.add_argument(
        "--accept-key",
        dest="keys",
        action="append",
        metavar="KEY",
        help="accept only this public key, answering 401 to others as the hosted API "
        "does (repeatable; default: any non-empty key)",
    )
    collector.add_argument(
        "--allow-host",
        dest="allowed_hosts",
        action="append",
        default=[],
        metavar="NAME",
        help="also answer requests whose Host is NAME (repeatable; by default only "
        "loopback names and --host are, against DNS rebinding)",
    )
    collector.add_argument(
        "--access-log", action="store_true", help="log every request (off: it is costly)"
    )
    collector.set_defaults(handler=_run_collector)

    send = commands.add_parser(
        "send-event",
        help="send one event synchronously, to check a key and a network path",
        description=(
            "Send one event through the SDK and wait for the answer. Exits 0 when it was "
            "accepted, 1 when not (the reason goes to stderr), 2 for bad input."
        ),
    )
    send.add_argument("name", metavar="NAME", help="event name")
    send.add_argument("--uuid", required=True, help="the user's id")
    send.add_argument(
        "--attr",
        dest="attrs",
        action="append",
        default=[],
        type=parse_attribute,
        metavar="KEY=VALUE",
        help="an event attribute; VALUE is JSON when it parses as JSON, else a string "
        "(repeatable; a repeated KEY keeps the last value)",
    )
    send.add_argument("--key", help="public key (default: $ATRACK_PUBLIC_KEY)")
    send.add_argument(
        "--endpoint",
        metavar="URL",
        help="base URL, e.g. http://127.0.0.1:8787 (default: $ATRACK_ENDPOINT, else the "
        "hosted API)",
    )
    send.add_argument("--geo", help="API region (default: $ATRACK_GEO)")
    send.add_argument(
        "--timeout",
        type=_positive_float,
        default=5.0,
        metavar="SECONDS",
        help="per attempt (%(default)s)",
    )
    send.add_argument(
        "--retries",
        type=_non_negative_int,
        default=0,
        help="retries of a retryable failure; a check wants the first answer (%(default)s)",
    )
    send.add_argument(
        "--allow-insecure-http",
        action="store_true",
        help="allow plain http:// to a host other than loopback (the key travels in clear)",
    )
    send.add_argument("-v", "--verbose", action="store_true", help="show the SDK's log lines")
    send.set_defaults(handler=_send_event)

    outbox = commands.add_parser(
        "outbox",
        help="look into or deliver an outbox directory (Options.outbox)",
        description="Pending calls kept in an outbox directory (docs/outbox.md).",
    )
    outbox_commands = outbox.add_subparsers(dest="outbox_command", required=True)
    inspect = outbox_commands.add_parser("inspect", help="pending calls per file")
    inspect.add_argument("directory", metavar="DIR")
    inspect.add_argument("--json", action="store_true", help="machine-readable output")
    inspect.set_defaults(handler=_outbox_inspect)
    flush = outbox_commands.add_parser(
        "flush",
        help="deliver the calls of files whose process is gone (a host being retired)",
    )
    flush.add_argument("directory", metavar="DIR")
    flush.add_argument("--key", help="public key (default: $ATRACK_PUBLIC_KEY)")
    flush.add_argument(
        "--endpoint",
        metavar="URL",
        help="base URL (default: $ATRACK_ENDPOINT, else the hosted API)",
    )
    flush.add_argument("--geo", help="API region (default: $ATRACK_GEO)")
    flush.add_argument(
        "--timeout",
        type=_positive_float,
        default=300.0,
        metavar="SECONDS",
        help="give up after this long; what is left stays in DIR (%(default)s)",
    )
    flush.add_argument(
        "--allow-insecure-http",
        action="store_true",
        help="allow plain http:// to a host other than loopback (the key travels in clear)",
    )
    flush.add_argument("-v", "--verbose", action="store_true", help="show the SDK's log lines")
    flush.set_defaults(handler=_outbox_flush)
    return parser


# -- commands -----------------------------------------------------------------------


def _run_collector(args: argparse.Namespace) -> int:
    try:
        from .collector import serve
    except ImportError as exc:
        _error(f"{_COLLECTOR_EXTRA_HINT} ({exc.__cause__ or exc})")
        return EXIT_FAILED
    host = args.host

    def banner(url: str) -> None:
        port = urlsplit(url).port or args.port
        for line in collector_banner(host, port, args.db, args.allowed_hosts, args.keys):
            print(line, flush=True)

    try:
        serve(
            host=host,
            port=args.port,
            db_path=args.db,
            latency=args.latency,
            keys=args.keys,
            # The banner already says where it listens; uvicorn's INFO lines repeat it.
            log_level="info" if args.access_log else "warning",
            access_log=args.access_log,
            on_listening=banner,
            allowed_hosts=args.allowed_hosts,
        )
    except OSError as exc:
        hint = ""
        if exc.errno == errno.EADDRINUSE:
            # Most often a collector started earlier, or `make demo` still serving.
            hint = (
                " (another program listens there, an earlier 'atrack collector' or "
                "'make demo'?): stop it, or pick another port with --port"
            )
        _error(f"cannot serve on {host} port {args.port}: {exc}{hint}")
        return EXIT_FAILED
    except sqlite3.Error as exc:
        _error(f"cannot use the database {args.db!r}: {exc}")
        return EXIT_FAILED
    except KeyboardInterrupt:
        # uvicorn re-raises the Ctrl-C it handled; by then shutdown was clean, and
        # `make` would call a 130 a failure.
        pass
    print("collector stopped", flush=True)
    return EXIT_OK


_LOOPBACK_NAMES: Final = ("127.0.0.1", "localhost", "::1")
_WILDCARD_HOSTS: Final = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}


def _http_url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


# What the banner tells an app to export as its key when the collector takes any key:
# the README's quickstarts use the same one, so its lines and the banner's agree.
_ANY_KEY_EXAMPLE: Final = "pub_dev"


def collector_banner(
    host: str,
    port: int,
    db: str | None,
    allowed_hosts: Sequence[str] = (),
    keys: Sequence[str] | None = None,
) -> list[str]:
    """The lines ``atrack collector`` prints once it listens. Every ``export`` line is
    all an app needs to send here: a public key and an ``ATRACK_ENDPOINT`` the SDK
    accepts and the collector's ``Host`` check answers. A wildcard bind (``0.0.0.0``,
    ``::``) is no address to connect to, so this machine is told the loopback URL, and
    other hosts a name from ``--allow-host`` with ``ATRACK_ALLOW_INSECURE_HTTP=1``
    (plain http to a non-loopback host).

    With no ``keys`` (``--accept-key``) any non-empty key is accepted, so the lines
    export ``pub_dev``. With ``keys`` they export only the endpoint and a ``key:``
    line names the accepted keys masked: the banner never prints a full key (it ends
    up in terminal scrollback, CI logs and ``docker compose logs``)."""
    storage = os.path.abspath(db) if db else "memory (lost on exit; --db keeps it)"
    key_part = "" if keys else f"ATRACK_PUBLIC_KEY={_ANY_KEY_EXAMPLE} "

    def export(url: str, *, insecure: bool) -> str:
        suffix = " ATRACK_ALLOW_INSECURE_HTTP=1" if insecure else ""
        return f"export {key_part}ATRACK_ENDPOINT={url}{suffix}"

    if host in _WILDCARD_HOSTS:
        local = _http_url(_WILDCARD_HOSTS[host], port)
        lines = [
            f"A-Track collector on every interface ({host or '*'}), port {port}",
            f"  inspector:  {local}/",
            f"  storage:    {storage}",
            f"  try:        {export(local, insecure=False)}",
        ]
        if allowed_hosts:
            lines += [
                f"  other hosts: {export(_http_url(name, port), insecure=True)}"
                for name in allowed_hosts
            ]
        else:
            lines += [
                "  other hosts: only loopback Host names are answered (against DNS "
                "rebinding): restart",
                "              with --allow-host NAME (the name they reach this machine "
                "by, e.g. a compose service)",
                f"              and {export(_http_url('NAME', port), insecure=True)}",
            ]
    else:
        url = _http_url(host, port)
        lines = [
            f"A-Track collector on {url}",
            f"  inspector:  {url}/",
            f"  storage:    {storage}",
        ]
        if host in _LOOPBACK_NAMES:
            lines.append(f"  try:        {export(url, insecure=False)}")
        else:
            lines.append(f"  try:        {export(url, insecure=True)}")
            lines += [
                f"  or:         {export(_http_url(name, port), insecure=True)}"
                for name in allowed_hosts
            ]
    if keys:
        masked = ", ".join(dict.fromkeys(mask_key(key) for key in keys))
        lines.append(
            f"  key:        only the --accept-key keys ({masked}) are answered: set "
            "ATRACK_PUBLIC_KEY to one of them"
        )
    if host not in _LOOPBACK_NAMES:
        lines.append(
            "  warning:    the inspector and read API have no authentication; anyone who "
            f"can reach this machine on port {port} can read what was sent"
        )
    return lines


def _send_event(args: argparse.Namespace) -> int:
    # Imported here: `atrack collector` and `--help` do not need the SDK loaded.
    from . import ATrackSdk, DeliveryError, EventPayload, Options

    key = args.key or os.environ.get("ATRACK_PUBLIC_KEY", "")
    if not key:
        _error("no public key: pass --key or set ATRACK_PUBLIC_KEY")
        return EXIT_USAGE
    endpoint = args.endpoint or os.environ.get("ATRACK_ENDPOINT") or None
    geo = args.geo or os.environ.get("ATRACK_GEO") or None
    if args.verbose:
        logging.basicConfig(level=logging.DEBUG, format="%(levelname)s %(name)s: %(message)s")

    sent: list[tuple[str, dict[str, Any]]] = []

    def record(path: str, body: dict[str, Any]) -> dict[str, Any]:
        sent.append((path, body))
        return body

    try:
        sdk = ATrackSdk(
            Options(
                key,
                endpoint=endpoint,
                geo=geo,
                delivery="sync",
                timeout=args.timeout,
                max_retries=args.retries,
                before_send=record,
                allow_insecure_http=args.allow_insecure_http,
            )
        )
    except (ValueError, TypeError) as exc:
        message = str(exc)
        if "allow_insecure_http" in message:
            message += " (here: --allow-insecure-http)"
        _error(message)
        return EXIT_USAGE

    with sdk, _sdk_logs(shown=args.verbose):
        try:
            sdk.track(EventPayload(event=args.name, uuid=args.uuid, attributes=dict(args.attrs)))
        except (ValueError, TypeError) as exc:
            _error(str(exc))
            return EXIT_USAGE
        except DeliveryError as exc:
            _print_sent(sdk.base_url, key, sent)
            _error(_failure(exc, sdk.base_url))
            return EXIT_FAILED
    _print_sent(sdk.base_url, key, sent)
    print("accepted")
    return EXIT_OK


@contextmanager
def _sdk_logs(*, shown: bool) -> Iterator[None]:
    """Hide the SDK's log lines unless ``shown``: the reason for a failure is printed
    anyway, and Python's last-resort handler would print it a second time."""
    logger = logging.getLogger("atrack")
    if shown:
        yield
        return
    # A handler of its own, or Python's last-resort handler would still print it.
    null = logging.NullHandler()
    propagate = logger.propagate
    logger.addHandler(null)
    logger.propagate = False
    try:
        yield
    finally:
        logger.propagate = propagate
        logger.removeHandler(null)


def _print_sent(base_url: str, key: str, sent: list[tuple[str, dict[str, Any]]]) -> None:
    for path, body in sent:
        print(f"POST {base_url}{path}  (key {mask_key(key)})")
        print(json.dumps(body, indent=2, ensure_ascii=False))


def _failure(exc: Exception, base_url: str) -> str:
    status = getattr(exc, "status", None)
    body = getattr(exc, "body", None)
    if status is None:
        return f"no answer from {base_url}: {exc}"
    message = f"{base_url} answered HTTP {status}"
    if status in (401, 403):
        message += " (the public key was rejected)"
    if body:
        message += f": {body.strip()}"
    return message


def _is_directory(path: str) -> bool:
    """Whether the outbox directory ``path`` exists; if not, says so."""
    if os.path.isdir(path):
        return True
    _error(f"{path} is not a directory")
    return False


def _outbox_inspect(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ._outbox import describe

    if not _is_directory(args.directory):
        return 2
    directory = Path(args.directory)
    files = describe(directory)
    if args.json:
        print(json.dumps(files, indent=2))
        return 0
    if not files:
        print(f"{directory}: no outbox files")
        return 0
    total = 0
    for entry in files:
        if entry.get("corrupt"):
            rest = ", the rest cannot be read" if "error" in entry else ""
            print(
                f"{entry['file']}  (moved aside: could not be used)  {entry['readable']} "
                f"calls readable, adopted when it was moved aside{rest}"
            )
            continue
        alive = entry["owner_alive"]
        owner = "process alive" if alive else "process gone"
        if "error" in entry:
            said = "" if alive is None else f"({owner})  "
            print(f"{entry['file']}  {said}unreadable: {entry['error']}")
            continue
        total += entry["pending"]
        oldest = entry["oldest"]
        age = f", oldest {time.time() - oldest:.0f} s ago" if oldest else ""
        paths = ", ".join(f"{path} {n}" for path, n in sorted(entry["by_path"].items()))
        print(
            f"{entry['file']}  ({owner})  {entry['pending']} calls, {entry['bytes']} bytes"
            f"{age}{'  [' + paths + ']' if paths else ''}"
        )
    print(f"{total} calls pending in {len(files)} files")
    return 0


def _outbox_flush(args: argparse.Namespace) -> int:
    from ._options import Options
    from ._sdk import ATrackSdk

    # An SDK would create a missing directory, so a mistyped path would be made (with
    # its parents) and reported as an empty outbox.
    if not _is_directory(args.directory):
        return 2
    key = args.key or os.environ.get("ATRACK_PUBLIC_KEY", "")
    if not key:
        _error("no public key: pass --key or set ATRACK_PUBLIC_KEY")
        return 2
    endpoint = args.endpoint or os.environ.get("ATRACK_ENDPOINT") or None
    geo = args.geo or os.environ.get("ATRACK_GEO") or None
    try:
        options = Options(
            key,
            endpoint=endpoint,
            geo=geo,
            outbox=args.directory,
            allow_insecure_http=args.allow_insecure_http,
            shutdown_timeout=args.timeout,
        )
        with _sdk_logs(shown=args.verbose):
            sdk = ATrackSdk(options)
            # Starting with the directory adopts every file whose process is gone.
            delivered = sdk.flush(args.timeout)
            stats = sdk.stats()
            sdk.shutdown(timeout=1.0)
    except (ValueError, TypeError) as exc:
        _error(str(exc))
        return 2
    left = stats.get("outbox_pending", 0)
    print(
        f"adopted {stats.get('outbox_adopted', 0)} calls, delivered {stats['sent']}, "
        f"rejected {stats['failed']}, parked for later {stats.get('outbox_parked', 0)}"
    )
    if not delivered or stats.get("outbox_parked", 0):
        print(f"not everything was delivered; {left} calls stay in {args.directory}")
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``atrack`` command with ``argv`` (default: ``sys.argv[1:]``); return the
    exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler = args.handler
    try:
        return handler(args)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
