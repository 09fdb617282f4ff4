"""A forwarding HTTP proxy on loopback: proves a client went through ``HTTP(S)_PROXY``."""

from __future__ import annotations

import http.client
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit


class LoopbackProxy:
    """Forwards absolute-form requests (``POST http://127.0.0.1:N/event``) to their
    target, loopback only, and records the URLs it forwarded.

    ``names`` stands in for a network's DNS (a docker-compose service name): a request
    for ``http://collector:N/`` with ``names={"collector": "127.0.0.1"}`` goes to
    127.0.0.1 port N, its ``Host`` header unchanged."""

    def __init__(self, names: dict[str, str] | None = None) -> None:
        self.forwarded: list[str] = []
        resolve = dict(names or {})
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                target = urlsplit(self.path)
                address = resolve.get(target.hostname or "", target.hostname)
                if address not in ("127.0.0.1", "localhost") or not target.port:
                    self.send_error(403, "loopback targets only")
                    return
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                headers = {k: v for k, v in self.headers.items() if k.lower() != "proxy-connection"}
                conn = http.client.HTTPConnection(address, target.port, timeout=10)
                try:
                    conn.request("POST", target.path, body=body, headers=headers)
                    answer = conn.getresponse()
                    data = answer.read()
                finally:
                    conn.close()
                proxy.forwarded.append(self.path)  # list.append is atomic
                self.send_response(answer.status)
                for name, value in answer.getheaders():
                    if name.lower() not in ("connection", "transfer-encoding", "content-length"):
                        self.send_header(name, value)
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        class Server(ThreadingHTTPServer):
            daemon_threads = True

        self.server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    def __enter__(self) -> LoopbackProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
