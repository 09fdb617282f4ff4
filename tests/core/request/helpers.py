"""Shared request views and configurations for the request-context tests."""

from __future__ import annotations

from collections.abc import Mapping

from atrack_core._request import ContextConfig, RequestView

SEED_HEADERS = {
    "host": "shop.example",
    "referer": "https://google.com",
    "user-agent": "Mozilla/5.0 (X11; Linux x86_64) Firefox/133.0",
    "accept-language": "en-US,en;q=0.9",
    "cookie": "atrack_uuid=0d54a1f2-3b4c-4d5e-8f90-123456789abc; atrack_tz=America%2FNew_York",
}


def view(
    path: str = "/pricing",
    query_string: str = "",
    headers: Mapping[str, str] | None = None,
    client: str | None = "134.122.17.144",
) -> RequestView:
    return RequestView(
        method="GET",
        scheme="https",
        host="shop.example",
        path=path,
        query_string=query_string,
        headers=headers if headers is not None else {},
        client=client,
    )


DEFAULT = ContextConfig()
PROXIES = ContextConfig(trusted_proxies=["10.0.0.0/8", "192.0.2.1", "2001:db8:ffff::/48"])
