"""The demo behind ``make demo``: see what an app sends, end to end, on this machine.

1. starts the local collector (``atrack collector``) on 127.0.0.1:8787,
2. runs the FastAPI example shop under uvicorn with the middleware, pointed at it,
3. drives a short scripted visit through real HTTP (several users with their own
   cookies: a landing page from Google, a signup with attributes, a login, orders),
4. prints what the collector received and where the inspector page is,
5. keeps both serving until Ctrl-C (``--once`` or ``DEMO_ONCE=1`` stops after step 4).

Ports in use are replaced by free ones, so a second demo still starts.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import tempfile
import threading
import time
from collections import Counter
from typing import Any

import httpx

DEMO_KEY = "pub_demo_local_0001"
COLLECTOR_PORT = 8787
APP_PORT = 8000

# (who, source, steps): each visitor is one browser with its own cookie jar.
SCRIPT: list[tuple[str, str, list[tuple[str, str, dict[str, Any] | None]]]] = [
    (
        "Ada",
        "google",
        [
            ("POST", "/signup", {"email": "ada@example.com", "plan": "pro"}),
            ("POST", "/orders", {"amount": 42.5, "currency": "EUR"}),
            ("POST", "/orders", {"amount": 12.0, "currency": "EUR"}),
        ],
    ),
    (
        "Grace",
        "newsletter",
        [
            ("POST", "/signup", {"email": "grace@example.org", "plan": "business"}),
            ("POST", "/orders", {"amount": 99.0, "currency": "USD"}),
        ],
    ),
    (
        "Linus",
        "google",
        [
            ("POST", "/login", {"user_id": "crm-user-42"}),
            ("POST", "/orders", {"amount": 7.5, "currency": "EUR"}),
        ],
    ),
    ("Margaret", "direct", []),
]


def _port_or_free(port: int, what: str) -> int:
    """``port`` when it is free, else a free one, saying why the port changed."""
    with socket.socket() as sock:
        # As the servers will: a port in TIME_WAIT from a previous demo is still usable.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError as exc:
            sock.bind(("127.0.0.1", 0))
            other = sock.getsockname()[1]
            print(
                f"demo: port {port} is taken ({_holder(port, exc)}); the {what} uses "
                f"port {other} instead",
                flush=True,
            )
        return int(sock.getsockname()[1])


def _holder(port: int, exc: OSError) -> str:
    """What is on ``port``, as far as one quick request tells."""
    try:
        answer = httpx.get(f"http://127.0.0.1:{port}/api/stats", timeout=0.5, trust_env=False)
        if answer.status_code == 200 and "calls" in answer.text:
            return "an A-Track collector runs there: another 'make demo' or 'atrack collector'"
    except httpx.HTTPError:
        pass
    return f"another program listens there: {exc.strerror or exc}"


def _start_app(port: int) -> tuple[Any, threading.Thread, Any]:
    import uvicorn

    # Imported here: the example builds its SDK from ATRACK_* at import time.
    from example_apps.fastapi_shop.app import app, sdk

    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="warning", ws="none", lifespan="on"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="demo-app", daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the example app did not start")
        time.sleep(0.01)
    return server, thread, sdk


def _visit(app_url: str) -> tuple[int, int]:
    """Drive the script; return (requests made, events the app tracked)."""
    requests = events = 0
    for who, source, steps in SCRIPT:
        logged_in = ""
        with httpx.Client(base_url=app_url, timeout=10) as browser:
            r = browser.get("/", params={"source": source}, headers=_browser(who))
            r.raise_for_status()
            requests += 1
            events += 1  # landing_viewed
            for method, path, body in steps:
                r = browser.request(method, path, json=body, headers=_browser(who))
                r.raise_for_status()
                requests += 1
                events += 1  # signed_up, logged_in or order_created
                if path == "/login":  # a second user in the collector: the known one
                    logged_in = f", then logged in as {body['user_id']}"
            browser.get("/health").raise_for_status()  # excluded: tracks nothing
            requests += 1
            uuid = browser.cookies.get("atrack_uuid")
            print(f"  {who:<9} from {source:<10} uuid {uuid}{logged_in}")
    return requests, events


def _browser(who: str) -> dict[str, str]:
    return {
        "user-agent": f"Mozilla/5.0 (demo; {who})",
        "accept-language": "en-US,en;q=0.8,fr;q=0.5",
        "referer": "https://www.google.com/search?q=a-track&token=secret",
        "x-timezone": "Europe/Paris",
    }


def _summary(collector: Any) -> dict[str, Any]:
    store = collector.store
    events = store.events(limit=10_000)
    users = store.users()
    calls = store.calls()
    return {
        "users": len(users),
        "events": len(events),
        "calls": Counter(c["path"] for c in calls),
        "rejected": sum(1 for c in calls if c["status"] != 200),
        "names": Counter(e["event"] for e in events),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--once",
        action="store_true",
        default=os.environ.get("DEMO_ONCE", "") not in ("", "0"),
        help="exit after the summary (also DEMO_ONCE=1)",
    )
    args = parser.parse_args(argv)

    from atrack_core.collector import Collector

    print("demo: starting the local collector and the example app...", flush=True)
    collector = Collector(port=_port_or_free(COLLECTOR_PORT, "collector")).start()
    os.environ.update(
        {
            "ATRACK_PUBLIC_KEY": DEMO_KEY,
            "ATRACK_ENDPOINT": collector.url,
            "ATRACK_DISABLED": "0",
            # The outbox on, as in production (docs/outbox.md): calls are kept on disk
            # until delivered. A fresh directory per demo run.
            "ATRACK_OUTBOX": os.path.join(tempfile.mkdtemp(prefix="atrack-demo-"), "outbox"),
        }
    )
    os.environ.pop("ATRACK_REDIS_URL", None)
    app_port = _port_or_free(APP_PORT, "example app")
    server, thread, sdk = _start_app(app_port)
    app_url = f"http://127.0.0.1:{app_port}"
    try:
        print(f"collector: {collector.url}   example app (FastAPI): {app_url}")
        print("scripted visit:")
        requests, tracked = _visit(app_url)
        if not sdk.flush(timeout=10):
            print("warning: not everything was delivered within 10 s", file=sys.stderr)
        # The collector commits each call as it answers it; give it a moment.
        collector.wait_for_calls(1, path="/event", timeout=5)
        deadline = time.monotonic() + 5
        summary = _summary(collector)
        while summary["events"] < tracked and time.monotonic() < deadline:
            time.sleep(0.05)
            summary = _summary(collector)
        print()
        print(f"requests made:        {requests}")
        print(f"users received:       {summary['users']}")
        print(f"events received:      {summary['events']} (tracked {tracked})")
        for name, count in sorted(summary["names"].items()):
            print(f"  {name:<20}{count}")
        calls = summary["calls"]
        print(
            f"calls: /init {calls['/init']}, /attributes {calls['/attributes']}, "
            f"/event {calls['/event']}; rejected {summary['rejected']}"
        )
        # The delivery counters only: the outbox_* ones trail the deliveries by a group
        # commit and a batch of deletions (250 ms), so right after the flush they showed
        # calls already delivered as pending ('outbox_pending': 3 with 'sent': 18 of 18).
        stats = {name: n for name, n in sdk.stats().items() if not name.startswith("outbox_")}
        print(f"SDK stats:            {stats}")
        print()
        print(f"Inspector: {collector.url}/   (users, attributes, events; live)")
        print(f"Try the shop yourself: {app_url}/?source=demo")
        if summary["events"] != tracked or summary["rejected"]:
            print("demo: the collector did not receive what the app tracked", file=sys.stderr)
            return 1
        if args.once:
            return 0
        print("Serving until Ctrl-C.")
        try:
            while thread.is_alive():
                time.sleep(0.5)
        except KeyboardInterrupt:
            print()
        return 0
    finally:
        server.should_exit = True
        thread.join(10)
        sdk.shutdown()
        collector.stop()


if __name__ == "__main__":
    raise SystemExit(main())
