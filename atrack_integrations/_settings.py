"""Integration settings: names, defaults, validation of each value, and the exclusion
rule (which requests get a passive tracker), written once.

Everything here runs at set-up, except :meth:`Exclusions.__call__`, which runs once per
request.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, Literal, TypeAlias

from atrack_core import ATrackSdk, Options, Storage

__all__ = [
    "DEFAULT_EXCLUDE_PATHS",
    "ENVIRON_KEY",
    "SETTING_NAMES",
    "STATE_KEY",
    "Exclusions",
    "IdentifyHook",
    "InitMode",
    "check_bool",
    "check_number",
    "import_from_string",
    "resolve_sdk",
    "split_list",
]

STATE_KEY = "atrack"
"""Where adapters attach the tracker (``scope["state"]["atrack"]``, ``request.atrack``),
and the marker that makes a second installation of a middleware do nothing."""

ENVIRON_KEY = "atrack.tracker"
"""The tracker's key in a WSGI ``environ``: PEP 3333 wants a dotted prefix on extension
keys (a key without one must hold a string; ``wsgiref.validate`` checks it)."""

DEFAULT_EXCLUDE_PATHS: tuple[str, ...] = (
    "/health",
    "/healthz",
    "/readyz",
    "/livez",
    "/metrics",
    "/favicon.ico",
    "/robots.txt",
    "/static/",
    # FastAPI's interactive documentation and schema.
    "/docs",
    "/docs/oauth2-redirect",
    "/redoc",
    "/openapi.json",
)
"""Paths that get a passive tracker. An entry ending in ``/`` or ``*`` is a prefix
(``/static/`` covers ``/static`` and everything under it); any other entry matches
exactly, with or without a trailing slash. Extend it rather than replace it::

    exclude_paths=DEFAULT_EXCLUDE_PATHS + ("/admin/",)
"""

InitMode = Literal["eager", "lazy", "off"]
IdentifyHook: TypeAlias = Callable[[Any], "str | Awaitable[str | None] | None"]
"""``identify(request) -> str | None`` (or ``async def``): the logged-in user's uuid, or
``None`` for an anonymous visitor. It receives the framework's request object."""

SETTING_NAMES: tuple[str, ...] = (
    "sdk",
    "identify",
    "cookie_name",
    "cookie_max_age",
    "cookie_domain",
    "cookie_secure",
    "cookie_samesite",
    "init",
    "init_ttl",
    "exclude_paths",
    "trusted_proxies",
    "ip",
    "scrub_params",
    "timezone_cookie",
    "timezone_header",
    "respect_dnt",
    # Only used to build an SDK when ``sdk`` is not given.
    "public_key",
    "geo",
    "endpoint",
    "delivery",
    "storage",
    "allow_insecure_http",
    "outbox",
    "outbox_max_bytes",
    "outbox_max_age",
)
"""Every setting name an integration accepts (lower case; Django upper-cases them, Flask
prefixes them with ``ATRACK_``)."""

DEFAULT_INIT_TTL = 1800.0

_SKIPPED_METHODS = frozenset({"HEAD", "OPTIONS"})
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})


def import_from_string(path: str, what: str) -> Any:
    """``"package.module.name"`` (or ``"package.module:name"``) -> the object.

    For settings given as text (Django's ``IDENTIFY``/``STORAGE``, environment).
    """
    module_name, sep, attr = path.replace(":", ".").rpartition(".")
    if not sep or not module_name or not attr:
        raise ValueError(f"{what} must be a dotted path like 'pkg.module.name', got {path!r}")
    try:
        module = importlib.import_module(module_name)
        return getattr(module, attr)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"{what} {path!r} cannot be imported: {exc}") from exc


def resolve_sdk(
    sdk: ATrackSdk | None = None,
    *,
    public_key: str | None = None,
    geo: str | None = None,
    endpoint: str | None = None,
    delivery: str | None = None,
    storage: Storage | str | None = None,
    environ: Mapping[str, str] | None = None,
    allow_insecure_http: bool | str | None = None,
    outbox: str | os.PathLike[str] | None = None,
    outbox_max_bytes: int | str | None = None,
    outbox_max_age: float | str | None = None,
) -> ATrackSdk:
    """The SDK an integration uses: ``sdk`` when given, else one built from the
    ``public_key``/``geo``/``endpoint``/``delivery``/``storage`` settings over
    ``Options.from_env()`` (``ATRACK_*`` variables; explicit settings win).

    Raises ``ValueError`` when no key can be found (and ``ATRACK_DISABLED`` is not set),
    ``TypeError`` for a wrong type. Passing ``sdk`` together with SDK settings is an
    error: they would be silently ignored.
    """
    given = {
        name: value
        for name, value in (
            ("public_key", public_key),
            ("geo", geo),
            ("endpoint", endpoint),
            ("delivery", delivery),
            ("storage", storage),
            ("allow_insecure_http", allow_insecure_http),
            ("outbox", outbox),
            ("outbox_max_bytes", outbox_max_bytes),
            ("outbox_max_age", outbox_max_age),
        )
        if value is not None
    }
    if sdk is not None:
        if not isinstance(sdk, ATrackSdk):
            raise TypeError(f"sdk must be an ATrackSdk, got {type(sdk).__name__}")
        if given:
            raise TypeError(
                f"pass either sdk or the SDK settings {sorted(given)}, not both "
                "(configure the ATrackSdk you pass instead)"
            )
        return sdk
    if isinstance(storage, str):
        loaded = import_from_string(storage, "storage")
        given["storage"] = loaded() if isinstance(loaded, type) else loaded
    if allow_insecure_http is not None:
        given["allow_insecure_http"] = check_bool(allow_insecure_http, "allow_insecure_http")
    if outbox_max_bytes is not None:
        given["outbox_max_bytes"] = int(
            check_number(outbox_max_bytes, "outbox_max_bytes", integer=True)
        )
    if outbox_max_age is not None:
        given["outbox_max_age"] = float(check_number(outbox_max_age, "outbox_max_age"))
    env = dict(environ) if environ is not None else None
    return ATrackSdk(Options.from_env(env, **given))


def check_bool(value: object, name: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise TypeError(f"{name} must be a bool, got {value!r}")


def check_number(value: object, name: str, *, integer: bool = False) -> float:
    if isinstance(value, str):
        try:
            value = int(value) if integer else float(value)
        except ValueError:
            raise ValueError(f"{name} must be a positive number, got {value!r}") from None
    ok_types = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, ok_types) or not value > 0:
        kind = "int" if integer else "number"
        raise ValueError(f"{name} must be a positive {kind}, got {value!r}")
    if not integer and value == float("inf"):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return value


def split_list(value: Iterable[str] | str, name: str) -> list[str]:
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    if isinstance(value, (bytes, Mapping)) or not isinstance(value, Iterable):
        raise TypeError(f"{name} must be a list of strings, got {type(value).__name__}")
    items = list(value)
    for item in items:
        if not isinstance(item, str):
            raise TypeError(f"{name} entries must be strings, got {item!r}")
    return items


class Exclusions:
    """Which requests get a passive tracker: ``HEAD``/``OPTIONS`` and the excluded paths.

    Compiled once from ``exclude_paths``: an entry ending in ``/`` or ``*`` is a prefix
    (``/static/`` also covers ``/static``); any other entry matches exactly, with or
    without a trailing slash. Entries must start with ``/``.
    """

    __slots__ = ("_exact", "_prefixes", "paths")

    def __init__(self, value: Iterable[str] | str) -> None:
        exact: set[str] = set()
        prefixes: list[str] = []
        paths = split_list(value, "exclude_paths")
        for entry in paths:
            if not entry.startswith("/"):
                raise ValueError(f"exclude_paths entries must start with '/', got {entry!r}")
            if entry.endswith("*"):
                prefixes.append(entry[:-1])
            elif entry.endswith("/") and entry != "/":
                prefixes.append(entry)
                exact.add(entry[:-1])  # "/static/" also covers "/static"
            else:
                exact.add(entry)
                exact.add(entry + "/" if entry != "/" else entry)
        self._exact = frozenset(exact)
        self._prefixes = tuple(prefixes)
        #: The entries as given, for repr and docs.
        self.paths: tuple[str, ...] = tuple(paths)

    def __call__(self, method: str, path: str) -> bool:
        """Whether a request to ``path`` (decoded, as the app routes it) is excluded."""
        return method in _SKIPPED_METHODS or path in self._exact or path.startswith(self._prefixes)
