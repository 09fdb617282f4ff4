"""The one per-request lifecycle every web integration shares (SPEC section 6).

Framework-neutral: nothing here imports a web framework. A framework adapter does three
things, and nothing else:

1. Once, at set-up: ``config = IntegrationConfig(sdk=..., **settings)`` (or
   :meth:`IntegrationConfig.from_settings` for upper-case/prefixed setting dicts). Every
   value is validated here, loudly; everything the request path needs is precomputed.
2. Per request: build a :class:`~atrack_core._request.RequestView` from the framework's
   request and call ``tracker = config.begin(view, request)`` (sync code) or
   ``tracker = await config.abegin(view, request)`` (async code: awaits an async
   ``identify`` hook). Both never raise: a failure of the SDK's own work is logged and a
   tracker is returned anyway, so view code keeps working. Attach the tracker where the
   framework's views find it (``scope["state"]["atrack"]``, ``environ["atrack"]``,
   ``request.atrack``). If the marker is already there, another installation of the
   middleware did the work: do nothing (see :data:`STATE_KEY`).
3. On the response: ``value = config.set_cookie_header(tracker)``; when it is not
   ``None``, add one ``Set-Cookie: <value>`` header. Never raises. Nothing else in the
   response changes.

Example (a made-up synchronous framework)::

    config = IntegrationConfig(sdk=sdk, exclude_paths=DEFAULT_EXCLUDE_PATHS + ("/admin/",))

    def handle(request):
        view = RequestView(request.method, request.scheme, request.host, request.raw_path,
                           request.raw_query, request.lower_case_headers, request.peer)
        tracker = config.begin(view, request)
        request.atrack = tracker
        response = app(request)
        cookie = config.set_cookie_header(tracker)
        if cookie is not None:
            response.headers.add("Set-Cookie", cookie)
        return response

Decisions (also in ``docs/asgi.md``):

- Excluded paths and ``HEAD``/``OPTIONS``: a *passive* tracker is attached. It works
  (``track`` sends events), but the request sends no ``/init``, sets no cookie and does
  not call the ``identify`` hook; its uuid is the cookie's, else one generated on first
  use (so health checks cost no uuid4).
- ``respect_dnt``: with ``DNT: 1`` or ``Sec-GPC: 1`` the tracker is a *no-op*: calls are
  validated (so a bug does not hide behind a browser setting) and nothing is sent.
- Errors: bad input to ``tracker.track()``/``set_attributes()``/``identify()``
  (``ValueError``/``TypeError``) propagates to the view, like any call-site validation.
  Anything else failing inside the SDK's per-request work (storage down, delivery
  errors, a broken SDK) is logged on the ``atrack`` logger with ``exc_info`` and the
  request goes on.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import re
import threading
import time
import uuid as _uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, Literal, TypeAlias

from atrack_core import ATrackSdk, MemoryStorage, Options, Storage
from atrack_core._request import ContextConfig, RequestView, find_cookie, request_context_dict
from atrack_core._sdk import _in_thread
from atrack_core._validate import check_name, to_json_object
from atrack_core._wire import WireContext

__all__ = [
    "DEFAULT_EXCLUDE_PATHS",
    "SETTING_NAMES",
    "STATE_KEY",
    "IdentifyHook",
    "InitMode",
    "IntegrationConfig",
    "RequestTracker",
    "import_from_string",
    "resolve_sdk",
]

logger = logging.getLogger("atrack")

STATE_KEY = "atrack"
"""Where adapters attach the tracker (``scope["state"]``, ``environ``, ``request``), and the
marker that makes a second installation of a middleware do nothing."""

DEFAULT_EXCLUDE_PATHS: tuple[str, ...] = (
    "/health",
    "/healthz",
    "/readyz",
    "/livez",
    "/metrics",
    "/favicon.ico",
    "/static/",
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
)
"""Every setting name an integration accepts (lower case; Django upper-cases them, Flask
prefixes them with ``ATRACK_``)."""

INIT_KEY_PREFIX = "init:"
DEFAULT_COOKIE_NAME = "atrack_uuid"
DEFAULT_COOKIE_MAX_AGE = 365 * 24 * 3600
DEFAULT_INIT_TTL = 1800.0

# The process-local memory of recent inits (uuid -> monotonic deadline) saves a storage
# round trip (Redis) on every request of a returning user; the storage's ``add`` stays
# the one arbiter across workers. Bounded: cleared when it grows past this.
_LOCAL_SEEN_MAX = 50_000
# When another worker won the ``add``, its key expires at an unknown time within
# ``init_ttl``: ask the storage again after at most this long.
_LOCAL_SEEN_OTHER = 60.0
_STORAGE_WARN_EVERY = 60.0

# Canonical UUID text (lower-case, hyphenated), any version: the only cookie value that
# is accepted. A fullmatch on a precompiled pattern measured faster than uuid.UUID().
_CANONICAL_UUID = re.compile(
    r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
).fullmatch
# RFC 6265 / RFC 9110 token characters: a cookie name.
_TOKEN_CHARS = frozenset(
    "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
)
# A host name as a cookie Domain attribute (RFC 6265 section 4.1.2.3): labels of
# letters, digits and hyphens, an optional leading dot.
_DOMAIN_RE = re.compile(
    r"\.?(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)*"
    r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
)
_SKIPPED_METHODS = frozenset({"HEAD", "OPTIONS"})
_SAMESITE = {"lax": "Lax", "strict": "Strict", "none": "None"}
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})


def is_canonical_uuid(value: str) -> bool:
    """Whether ``value`` is a canonical (lower-case, hyphenated) UUID string."""
    return len(value) == 36 and _CANONICAL_UUID(value) is not None


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
        given["allow_insecure_http"] = _check_bool(allow_insecure_http, "allow_insecure_http")
    env = dict(environ) if environ is not None else None
    return ATrackSdk(Options.from_env(env, **given))


def _check_bool(value: object, name: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise TypeError(f"{name} must be a bool, got {value!r}")


def _check_number(value: object, name: str, *, integer: bool = False) -> float:
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


def _split(value: Iterable[str] | str, name: str) -> list[str]:
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    if isinstance(value, (bytes, Mapping)) or not isinstance(value, Iterable):
        raise TypeError(f"{name} must be a list of strings, got {type(value).__name__}")
    items = list(value)
    for item in items:
        if not isinstance(item, str):
            raise TypeError(f"{name} entries must be strings, got {item!r}")
    return items


def _compile_excludes(value: Iterable[str] | str) -> tuple[frozenset[str], tuple[str, ...]]:
    exact: set[str] = set()
    prefixes: list[str] = []
    for entry in _split(value, "exclude_paths"):
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
    return frozenset(exact), tuple(prefixes)


class IntegrationConfig:
    """Validated settings of one installed integration, and the lifecycle itself.

    Built once (by the middleware's ``__init__``, Flask's ``init_app`` …); immutable in
    practice, shared by every request and thread. Settings (SPEC section 6):

    ============================  =====================================================
    ``sdk``                       the :class:`~atrack_core.ATrackSdk`; when absent one is
                                  built by :func:`resolve_sdk` from ``public_key``,
                                  ``geo``, ``endpoint``, ``delivery``, ``storage`` and
                                  the ``ATRACK_*`` environment variables
    ``identify``                  ``identify(request) -> str | None``, sync or async, or a
                                  dotted path to one; its user wins over the cookie
    ``cookie_name``               ``"atrack_uuid"``
    ``cookie_max_age``            ``31536000`` (one year, seconds); ``None``: session
    ``cookie_domain``             ``None`` (host-only cookie)
    ``cookie_secure``             ``None``: ``Secure`` exactly on https requests
    ``cookie_samesite``           ``"Lax"`` (``"Strict"``, ``"None"``; ``None`` omits it)
    ``init``                      ``"eager"`` (default), ``"lazy"`` or ``"off"``
    ``init_ttl``                  ``1800`` seconds: one ``/init`` per user per window
    ``exclude_paths``             :data:`DEFAULT_EXCLUDE_PATHS`
    ``trusted_proxies``           ``()``: forwarding headers are ignored
    ``ip``                        ``"full"``, ``"anonymize"`` or ``"none"``
    ``scrub_params``              ``None``: the default sensitive query names
    ``timezone_cookie``           ``"atrack_tz"``
    ``timezone_header``           ``"x-timezone"``
    ``respect_dnt``               ``False``
    ============================  =====================================================

    A bad value raises ``ValueError`` (``TypeError`` for a wrong type or an unknown
    setting) naming it.
    """

    sdk: ATrackSdk
    identify: IdentifyHook | None
    context_config: ContextConfig

    def __init__(
        self,
        *,
        sdk: ATrackSdk | None = None,
        identify: IdentifyHook | str | None = None,
        cookie_name: str = DEFAULT_COOKIE_NAME,
        cookie_max_age: int | None = DEFAULT_COOKIE_MAX_AGE,
        cookie_domain: str | None = None,
        cookie_secure: bool | None = None,
        cookie_samesite: str | None = "Lax",
        init: InitMode = "eager",
        init_ttl: float = DEFAULT_INIT_TTL,
        exclude_paths: Iterable[str] | str = DEFAULT_EXCLUDE_PATHS,
        trusted_proxies: Iterable[str] | str = (),
        ip: Literal["full", "anonymize", "none"] = "full",
        scrub_params: Iterable[str] | str | None = None,
        timezone_cookie: str = "atrack_tz",
        timezone_header: str = "x-timezone",
        respect_dnt: bool = False,
        public_key: str | None = None,
        geo: str | None = None,
        endpoint: str | None = None,
        delivery: str | None = None,
        storage: Storage | str | None = None,
        allow_insecure_http: bool | str | None = None,
    ) -> None:
        # Validate everything before building an SDK, so a typo does not leave a
        # half-configured client (and its worker thread) behind.
        if isinstance(identify, str):
            identify = import_from_string(identify, "identify")
        if identify is not None and not callable(identify):
            raise TypeError(f"identify must be callable or None, got {type(identify).__name__}")

        if not isinstance(cookie_name, str) or not cookie_name:
            raise TypeError(f"cookie_name must be a non-empty str, got {cookie_name!r}")
        if len(cookie_name) > 256 or not _TOKEN_CHARS.issuperset(cookie_name):
            raise ValueError(
                f"cookie_name {cookie_name!r} is not a valid cookie name (RFC 6265 token "
                "characters only: letters, digits and !#$%&'*+-.^_`|~)"
            )
        max_age = (
            None
            if cookie_max_age is None
            else int(_check_number(cookie_max_age, "cookie_max_age", integer=True))
        )
        if cookie_domain is not None:
            if not isinstance(cookie_domain, str):
                raise TypeError(f"cookie_domain must be a str or None, got {cookie_domain!r}")
            if len(cookie_domain) > 253 or not _DOMAIN_RE.fullmatch(cookie_domain):
                raise ValueError(
                    f"cookie_domain {cookie_domain!r} is not a host name (letters, digits, "
                    "'-' and '.', optionally with a leading '.')"
                )
        secure = None if cookie_secure is None else _check_bool(cookie_secure, "cookie_secure")
        if cookie_samesite is None:
            samesite = None
        elif isinstance(cookie_samesite, str) and cookie_samesite.lower() in _SAMESITE:
            samesite = _SAMESITE[cookie_samesite.lower()]
        else:
            raise ValueError(
                f"cookie_samesite must be 'Lax', 'Strict', 'None' or None, got {cookie_samesite!r}"
            )
        if samesite == "None":
            # Browsers reject SameSite=None without Secure; auto (None) means Secure always.
            if secure is False:
                raise ValueError(
                    "cookie_samesite='None' needs a Secure cookie; cookie_secure=False"
                )
            secure = True
        if init not in ("eager", "lazy", "off"):
            raise ValueError(f"init must be 'eager', 'lazy' or 'off', got {init!r}")
        ttl = float(_check_number(init_ttl, "init_ttl"))
        excl_exact, excl_prefixes = _compile_excludes(exclude_paths)
        dnt = _check_bool(respect_dnt, "respect_dnt")
        context_config = ContextConfig(
            trusted_proxies=trusted_proxies,
            ip=ip,
            scrub_params=scrub_params,
            timezone_cookie=timezone_cookie,
            timezone_header=timezone_header,
        )

        self.sdk = resolve_sdk(
            sdk,
            public_key=public_key,
            geo=geo,
            endpoint=endpoint,
            delivery=delivery,
            storage=storage,
            allow_insecure_http=allow_insecure_http,
        )
        self.identify = identify
        self.cookie_name = cookie_name
        self.cookie_max_age = max_age
        self.cookie_domain = cookie_domain
        self.cookie_secure = secure
        self.cookie_samesite = samesite
        self.init: InitMode = init
        self.init_ttl = ttl
        self.exclude_paths: tuple[str, ...] = tuple(
            _split(exclude_paths, "exclude_paths")
        )  # as given, for repr and docs
        self.respect_dnt = dnt
        self.context_config = context_config
        #: The request headers the lifecycle reads for this configuration (lower case):
        #: adapters decode only these. Forwarding headers matter only with trusted
        #: proxies, DNT/GPC only with respect_dnt.
        names = dict.fromkeys(
            ("cookie", "referer", "user-agent", "accept-language", context_config.timezone_header)
        )
        if context_config.trusted_proxies:
            names.update(dict.fromkeys(("x-forwarded-for", "forwarded")))
        if dnt:
            names.update(dict.fromkeys(("dnt", "sec-gpc")))
        self.header_names: tuple[str, ...] = tuple(names)

        # -- precomputed for the request path ---------------------------------------
        self._exclude_exact = excl_exact
        self._exclude_prefixes = excl_prefixes
        self._eager = init == "eager"
        # The in-memory storage answers in microseconds; any other (a subclass too) may
        # do network I/O.
        self._offload_init = self._eager and type(self.sdk.storage) is not MemoryStorage
        #: Async adapters must use :meth:`abegin` (an identify hook may be async, or the
        #: init dedupe may do I/O); otherwise the cheaper :meth:`begin` does the same.
        self.async_begin = self.identify is not None or self._offload_init
        self._lazy = init == "lazy"
        attrs = "; Path=/"
        if max_age is not None:
            attrs += f"; Max-Age={max_age}"
        if cookie_domain is not None:
            attrs += f"; Domain={cookie_domain}"
        attrs += "; HttpOnly"
        if samesite is not None:
            attrs += f"; SameSite={samesite}"
        self._cookie_prefix = cookie_name + "="
        self._cookie_attrs_http = attrs + ("; Secure" if secure else "")
        self._cookie_attrs_https = attrs + ("" if secure is False else "; Secure")
        self._plain = identify is None and not dnt
        self._seen: dict[str, float] = {}
        self._storage_warned_at = -_STORAGE_WARN_EVERY
        self._warn_lock = threading.Lock()

    @classmethod
    def from_settings(
        cls, settings: Mapping[str, Any], *, prefix: str = "", **overrides: Any
    ) -> IntegrationConfig:
        """Build from a settings mapping whose keys are the setting names in any case,
        optionally prefixed: Django's ``ATRACK`` dict (``{"PUBLIC_KEY": ...}``) or Flask's
        config (``prefix="ATRACK_"``). Keys with the prefix that are not settings raise
        ``TypeError``; keys without it are ignored. ``overrides`` win."""
        kwargs: dict[str, Any] = {}
        plen = len(prefix)
        for key, value in settings.items():
            if not isinstance(key, str) or not key.upper().startswith(prefix.upper()):
                continue
            name = key[plen:].lower()
            if name not in SETTING_NAMES:
                raise TypeError(
                    f"unknown A-Track setting {key!r}; known: "
                    + ", ".join(prefix + n.upper() if prefix else n.upper() for n in SETTING_NAMES)
                )
            kwargs[name] = value
        kwargs.update(overrides)
        return cls(**kwargs)

    def __repr__(self) -> str:
        return (
            f"IntegrationConfig(sdk={self.sdk!r}, init={self.init!r}, "
            f"cookie_name={self.cookie_name!r}, exclude_paths={list(self.exclude_paths)!r}, "
            f"respect_dnt={self.respect_dnt!r})"
        )

    # -- per request ------------------------------------------------------------------

    def is_excluded(self, method: str, path: str) -> bool:
        """Whether a request gets a passive tracker (excluded path, ``HEAD``/``OPTIONS``)."""
        return (
            method in _SKIPPED_METHODS
            or path in self._exclude_exact
            or path.startswith(self._exclude_prefixes)
        )

    def begin(
        self,
        view: RequestView,
        request: Any = None,
        *,
        cookies: Mapping[str, str] | None = None,
        path: str | None = None,
    ) -> RequestTracker:
        """Start a request (SPEC section 6 steps 1-5 and 7) and return its tracker.

        ``request`` is what the ``identify`` hook receives (the framework's request).
        ``cookies``: the request's cookies when the framework has parsed them already
        (else the ``cookie`` header of ``view`` is searched). ``path``: the decoded path
        to match ``exclude_paths`` against (default: ``view.path``).

        An ``async`` identify hook cannot be awaited here: it is logged and the cookie
        is used; async adapters call :meth:`abegin`. Never raises.
        """
        try:
            if self._plain:
                # The common configuration (no hook, no DNT): steps 1 and 2 inline.
                if path is None:
                    path = view.path
                if (
                    view.method in _SKIPPED_METHODS
                    or path in self._exclude_exact
                    or path.startswith(self._exclude_prefixes)
                ):
                    return self._passive(view, cookies)
                return self._start(view, cookies, None)
            skipped = self._skipped(view, cookies, path)
            if skipped is not None:
                return skipped
            identified = None
            if self.identify is not None:
                identified = self._identify_sync(request)
            return self._start(view, cookies, identified)
        except Exception:
            logger.error(
                "A-Track could not start tracking this request; it goes on untracked",
                exc_info=True,
            )
            return self._disabled(view)

    async def abegin(
        self,
        view: RequestView,
        request: Any = None,
        *,
        cookies: Mapping[str, str] | None = None,
        path: str | None = None,
    ) -> RequestTracker:
        """:meth:`begin` for async adapters: an ``identify`` hook may be sync or async."""
        try:
            skipped = self._skipped(view, cookies, path)
            if skipped is not None:
                return skipped
            identified = None
            if self.identify is not None:
                identified = await self._identify_async(request)
            if not self._offload_init:
                return self._start(view, cookies, identified)
            # A storage that does I/O (Redis) must not hold the event loop: while it
            # hangs, every request of the worker would wait behind it. Only a user this
            # process has not initialised recently pays for the thread hop.
            tracker = self._start(view, cookies, identified, defer_init=True)
            uuid = tracker._uuid
            seen = self._seen.get(uuid) if uuid is not None else None
            if uuid is not None and (seen is None or seen <= time.monotonic()):
                await _in_thread(lambda: self._maybe_init(tracker, None))
            return tracker
        except Exception:
            logger.error(
                "A-Track could not start tracking this request; it goes on untracked",
                exc_info=True,
            )
            return self._disabled(view)

    def set_cookie_header(self, tracker: RequestTracker) -> str | None:
        """The ``Set-Cookie`` value for the response (SPEC step 6), or ``None`` when the
        uuid cookie need not change. Never raises."""
        value = tracker._cookie_out
        if value is None:
            return None
        if tracker._view.scheme == "https":
            return self._cookie_prefix + value + self._cookie_attrs_https
        return self._cookie_prefix + value + self._cookie_attrs_http

    # -- internals --------------------------------------------------------------------
    # The request path is written for the common case (a returning visitor on a tracked
    # page): few calls, no keyword arguments, no allocation that can be avoided.

    def _skipped(
        self, view: RequestView, cookies: Mapping[str, str] | None, path: str | None
    ) -> RequestTracker | None:
        """Steps 1 and 7: a passive or no-op tracker, or ``None`` for the full lifecycle."""
        method = view.method
        if path is None:
            path = view.path
        if (
            method in _SKIPPED_METHODS
            or path in self._exclude_exact
            or path.startswith(self._exclude_prefixes)
        ):
            return self._passive(view, cookies)
        if self.respect_dnt:
            headers = view.headers
            if headers.get("dnt", "").strip() == "1" or headers.get("sec-gpc", "").strip() == "1":
                tracker = RequestTracker(
                    self, view, self._read_cookie(view, cookies), False, None, True
                )
                tracker.enabled = False
                return tracker
        return None

    def _passive(self, view: RequestView, cookies: Mapping[str, str] | None) -> RequestTracker:
        return RequestTracker(self, view, self._read_cookie(view, cookies), False, None, True)

    def _start(
        self,
        view: RequestView,
        cookies: Mapping[str, str] | None,
        identified: str | None,
        defer_init: bool = False,
    ) -> RequestTracker:
        if cookies is None:
            cookie_uuid = find_cookie(view.headers.get("cookie"), self.cookie_name)
        else:
            cookie_uuid = cookies.get(self.cookie_name)
        # Only a canonical UUID is accepted (see _read_cookie).
        if cookie_uuid is not None and (
            len(cookie_uuid) != 36 or _CANONICAL_UUID(cookie_uuid) is None
        ):
            cookie_uuid = None
        if identified is not None:
            uuid = identified
            tracker = RequestTracker(self, view, uuid, False, cookie_uuid, False)
        elif cookie_uuid is not None:
            uuid = cookie_uuid
            tracker = RequestTracker(self, view, uuid, False, cookie_uuid, False)
        else:
            uuid = str(_uuid.uuid4())
            tracker = RequestTracker(self, view, uuid, True, None, False)
            tracker._cookie_out = uuid
        if self._eager and not defer_init:
            # Inline fast path: this process sent this user's /init recently.
            seen = self._seen.get(uuid)
            if seen is None or seen <= time.monotonic():
                self._maybe_init(tracker, None)
        elif self._lazy:
            tracker._init_pending = True
        return tracker

    def _disabled(self, view: RequestView) -> RequestTracker:
        tracker = RequestTracker(self, view, None, False, None, True)
        tracker.enabled = False
        return tracker

    def _read_cookie(self, view: RequestView, cookies: Mapping[str, str] | None) -> str | None:
        if cookies is not None:
            value = cookies.get(self.cookie_name)
        else:
            value = find_cookie(view.headers.get("cookie"), self.cookie_name)
        # Only a canonical UUID is accepted: anything else (forged, truncated, another
        # app's value) is ignored, and the visitor gets a fresh uuid and cookie.
        if value is not None and len(value) == 36 and _CANONICAL_UUID(value) is not None:
            return value
        return None

    def _identify_sync(self, request: Any) -> str | None:
        assert self.identify is not None
        try:
            result = self.identify(request)
            if inspect.isawaitable(result):
                if inspect.iscoroutine(result):
                    result.close()  # never awaited: close it to avoid a RuntimeWarning
                raise TypeError(
                    "the identify hook is async, but this integration runs synchronously; "
                    "use a sync hook here"
                )
            return _check_identified(result)
        except Exception:
            logger.warning(
                "A-Track identify hook failed; using the cookie for this request", exc_info=True
            )
            return None

    async def _identify_async(self, request: Any) -> str | None:
        assert self.identify is not None
        try:
            result = self.identify(request)
            if inspect.isawaitable(result):
                result = await result
            return _check_identified(result)
        except Exception:
            logger.warning(
                "A-Track identify hook failed; using the cookie for this request", exc_info=True
            )
            return None

    def _maybe_init(self, tracker: RequestTracker, attributes: dict[str, Any] | None) -> None:
        """Send ``/init`` for the tracker's user unless one went out within ``init_ttl``
        (from this process or, through the storage, any other). Never raises."""
        uuid = tracker._uuid
        assert uuid is not None
        now = time.monotonic()
        seen = self._seen.get(uuid)
        if seen is not None and seen > now and not attributes:
            return
        try:
            added = self.sdk.storage.add(INIT_KEY_PREFIX + uuid, "1", self.init_ttl)
        except Exception:  # noqa: BLE001 - logged (rate-limited) by _warn_storage
            # A failing storage is a miss: better a duplicate /init than a lost user.
            self._warn_storage()
            added = True
        if len(self._seen) >= _LOCAL_SEEN_MAX:
            self._seen.clear()
        self._seen[uuid] = now + (self.init_ttl if added else min(self.init_ttl, _LOCAL_SEEN_OTHER))
        try:
            if added:
                self.sdk.send_init(
                    uuid,
                    tracker.is_new_user,
                    tracker._context_dict(),
                    attributes,
                    checked=True,
                )
            elif attributes:
                # The user was initialised already: the attributes still go out.
                self.sdk.send_attributes(uuid, attributes, checked_attrs=True)
        except Exception:
            logger.error("A-Track /init for this request failed", exc_info=True)

    def _warn_storage(self) -> None:
        now = time.monotonic()
        with self._warn_lock:
            if now - self._storage_warned_at < _STORAGE_WARN_EVERY:
                return
            self._storage_warned_at = now
        logger.warning(
            "A-Track storage failed on add (init dedupe); treating it as a miss "
            "(logged at most once a minute)",
            exc_info=True,
        )


def _check_identified(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, _uuid.UUID):
        return str(value)
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)  # database primary keys
    return check_name(value, "the uuid returned by identify")


class RequestTracker:
    """What a view uses to track the current request's user.

    Attached by the integrations (``request.state.atrack``, ``request.atrack``,
    ``environ["atrack"]``). Events carry the request's context; the SDK's own current
    user is never changed.

    - ``uuid``: the user's id (the identify hook's, the cookie's, or a new UUID4).
    - ``is_new_user``: ``True`` when the uuid was generated for this request.
    - ``context``: the request context (wire form, camelCase keys), built on first use.
    - ``enabled``: ``False`` for a no-op tracker (``respect_dnt`` matched, or the SDK
      failed to start): calls are validated, nothing is sent.
    - ``passive``: ``True`` on excluded paths and ``HEAD``/``OPTIONS``: events are sent,
      but no ``/init`` and no cookie.

    Bad input raises ``ValueError``/``TypeError`` at the call; the SDK's own failures
    are logged, never raised into the view.

    >>> tracker = request.state.atrack          # doctest: +SKIP
    >>> tracker.track("order_created", {"amount": 12})   # doctest: +SKIP
    """

    __slots__ = (
        "_config",
        "_context",
        "_cookie_in",
        "_cookie_out",
        "_init_pending",
        "_uuid",
        "_view",
        "enabled",
        "is_new_user",
        "passive",
    )

    def __init__(
        self,
        config: IntegrationConfig,
        view: RequestView,
        uuid: str | None,
        is_new_user: bool,
        cookie_uuid: str | None = None,
        passive: bool = False,
    ) -> None:
        self._config = config
        self._view = view
        self._uuid = uuid
        self.is_new_user = is_new_user
        self._cookie_in = cookie_uuid
        self._cookie_out: str | None = None
        self._context: WireContext | None = None
        self._init_pending = False
        self.enabled = True
        self.passive = passive

    def __repr__(self) -> str:
        state = "no-op" if not self.enabled else "passive" if self.passive else "active"
        return f"<RequestTracker uuid={self._uuid!r} new={self.is_new_user} {state}>"

    @property
    def uuid(self) -> str:
        uuid = self._uuid
        if uuid is None:
            # Passive trackers without a cookie: generated only if someone asks.
            uuid = self._uuid = str(_uuid.uuid4())
            self.is_new_user = True
        return uuid

    @property
    def context(self) -> dict[str, Any]:
        """The request context sent with events and ``/init`` (a copy)."""
        return dict(self._context_dict())

    def track(self, event: str, attributes: dict[str, Any] | None = None) -> None:
        """Send an event for this request's user, with the request's context.

        >>> request.state.atrack.track("order_created", {"amount": 12})  # doctest: +SKIP
        """
        if not self.enabled:
            check_name(event, "event")
            to_json_object(attributes, "attributes")
            return
        if self._init_pending:
            self._lazy_init(None)
        context = self._context
        if context is None:
            context = self._wire_context()
        uuid = self._uuid
        if uuid is None:
            uuid = self.uuid
        try:
            # A WireContext: the SDK trusts it and this (validated) uuid, and reuses the
            # context's JSON for every event of the request.
            self._config.sdk.send_event(uuid, event, attributes, context=context)
        except (ValueError, TypeError):
            raise
        except Exception:
            logger.error("A-Track track(%r) failed", event, exc_info=True)

    def set_attributes(self, attributes: dict[str, Any], replace: bool = False) -> None:
        """Merge (or, with ``replace=True``, replace) this user's attributes."""
        if not isinstance(replace, bool):
            raise TypeError(f"replace must be a bool, got {type(replace).__name__}")
        attrs = to_json_object(attributes, "attributes")
        if not self.enabled:
            return
        if self._init_pending:
            self._lazy_init(None)
        try:
            self._config.sdk.send_attributes(self.uuid, attrs, replace=replace, checked_attrs=True)
        except (ValueError, TypeError):
            raise
        except Exception:
            logger.error("A-Track set_attributes() failed", exc_info=True)

    def identify(self, uuid: str, attributes: dict[str, Any] | None = None) -> None:
        """Switch this request to a known user (e.g. at login).

        Later calls in this request use ``uuid``; ``/init`` is sent for it as the
        ``init`` setting says (at once when ``attributes`` are given). When ``uuid`` is a
        canonical UUID the response sets the cookie to it; other ids (``"user-42"``)
        are not written to the cookie, which only carries canonical UUIDs; use the
        ``identify`` hook to recognise logged-in users on later requests.
        """
        uuid = check_name(uuid, "uuid")
        attrs = to_json_object(attributes, "attributes") if attributes is not None else None
        if not self.enabled:
            return
        self._uuid = uuid
        self.is_new_user = False
        if not self.passive and is_canonical_uuid(uuid) and uuid != self._cookie_in:
            self._cookie_out = uuid
        config = self._config
        if self.passive or config.init == "off":
            if attrs:
                self._send_attributes(attrs)
            return
        if config._lazy and not attrs:
            self._init_pending = True
            return
        self._init_pending = False
        config._maybe_init(self, attrs)

    # -- internals --------------------------------------------------------------------

    def _lazy_init(self, attributes: dict[str, Any] | None) -> None:
        self._init_pending = False
        self._config._maybe_init(self, attributes)

    def _send_attributes(self, attrs: dict[str, Any]) -> None:
        try:
            self._config.sdk.send_attributes(self.uuid, attrs, checked_attrs=True)
        except (ValueError, TypeError):
            raise
        except Exception:
            logger.error("A-Track set_attributes() failed", exc_info=True)

    def _context_dict(self) -> dict[str, Any]:
        context = self._context
        if context is None:
            context = self._wire_context()
        return context.data

    def _wire_context(self) -> WireContext:
        # Built on first use (a page that tracks nothing never pays for it), once per
        # request.
        try:
            data = request_context_dict(self._view, self._config.context_config)
        except Exception:
            # Documented never to raise; if it does, events still go out.
            logger.error("A-Track could not build the request context", exc_info=True)
            data = {}
        context = self._context = WireContext(data)
        return context
