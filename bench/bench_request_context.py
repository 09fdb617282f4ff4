"""Micro-benchmark: cost of turning one typical browser request into a context.

Not a test. Run from the repo root::

    .venv/bin/python bench/bench_request_context.py

Prints microseconds per call (best of several timeit repeats) for a returning browser
request, with and without trusted proxies, and for the individual helpers.
"""

from __future__ import annotations

import itertools
import sys
import timeit
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from atrack_core._request import (
    ContextConfig,
    RequestView,
    build_request_context,
    parse_cookies,
    preferred_locale,
    scrub_url,
)

HEADERS = {
    "host": "shop.example",
    "user-agent": (
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 "
        "(KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36"
    ),
    "accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
    "accept-language": "en-US,en;q=0.9,de;q=0.8",
    "accept-encoding": "gzip, deflate, br",
    "referer": "https://www.google.com/",
    "cookie": (
        "_ga=GA1.1.123456789.1700000000; "
        "atrack_uuid=0d54a1f2-3b4c-4d5e-8f90-123456789abc; atrack_tz=America%2FNew_York"
    ),
}

VIEW = RequestView(
    method="GET",
    scheme="https",
    host="shop.example",
    path="/pricing",
    query_string="source=google",
    headers=HEADERS,
    client="134.122.17.144",
)

PROXIED_VIEW = RequestView(
    method="GET",
    scheme="https",
    host="shop.example",
    path="/pricing",
    query_string="source=google",
    headers={**HEADERS, "x-forwarded-for": "134.122.17.144, 10.0.0.7"},
    client="10.0.0.2",
)


def measure(label: str, func: Callable[[], object], number: int = 100_000) -> None:
    best = min(timeit.repeat(func, number=number, repeat=5))
    print(f"{label:<58} {best / number * 1e6:6.2f} µs")


def main() -> None:
    default = ContextConfig()
    proxied = ContextConfig(trusted_proxies=["10.0.0.0/8"], ip="anonymize")
    cookies = parse_cookies(HEADERS["cookie"])

    print(f"Python {sys.version.split()[0]}")
    measure(
        "build_request_context, browser request (default config)",
        lambda: build_request_context(VIEW, default),
    )
    measure(
        "build_request_context, cookies already parsed",
        lambda: build_request_context(VIEW, default, cookies=cookies),
    )
    measure(
        "build_request_context, 2 proxies, XFF, anonymize",
        lambda: build_request_context(PROXIED_VIEW, proxied),
    )
    counter = itertools.count()

    def unique_request() -> object:
        # A query never seen before: the url cache misses, as for a one-off search.
        n = next(counter)
        v = RequestView(
            "GET",
            "https",
            "shop.example",
            "/search",
            f"q=shoes{n}&page=2",
            HEADERS,
            "134.122.17.144",
        )
        return build_request_context(v, default)

    measure("build_request_context, unseen query (url cache miss)", unique_request)
    measure("parse_cookies (3 cookies)", lambda: parse_cookies(HEADERS["cookie"]))
    measure("scrub_url with a sensitive parameter", lambda: scrub_url("/cb", "code=abc&state=xyz"))
    measure("preferred_locale (cached value)", lambda: preferred_locale("en-US,en;q=0.9"))


if __name__ == "__main__":
    main()
