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
   framework's views find it (``scope["state"]["atrack"]``, ``environ["atrack.tracker"]``,
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

One concern per module: ``_settings`` (names, defaults, validation, the exclusion
rule), ``_cookie`` (the uuid cookie: read once per request, the ``Set-Cookie`` line),
``_init_dedupe`` (one ``/init`` per user per ``init_ttl``), ``_tracker``
(:class:`RequestTracker`), ``_contain`` (the SDK's own failures are logged, never
raised into a request). This module holds :class:`IntegrationConfig`, which composes
them, and the per-request entry points adapters call.

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

import asyncio
import inspect
import logging
import os
import uuid as _uuid
from collections.abc import Iterable, Mapping
from time import monotonic as _monotonic
from typing import Any, Literal

from atrack_core import ATrackSdk, MemoryStorage, Storage
from atrack_core._request import ContextConfig, RequestView
from atrack_core._validate import check_name
from atrack_core._wire import WireContext

from ._contain import Contain
from ._cookie import DEFAULT_COOKIE_MAX_AGE, DEFAULT_COOKIE_NAME, CookiePolicy, is_canonical_uuid
from ._init_dedupe import INIT_KEY_PREFIX, InitDedupe, OrderedOffload
from ._settings import (
    DEFAULT_EXCLUDE_PATHS,
    DEFAULT_INIT_TTL,
    ENVIRON_KEY,
    SETTING_NAMES,
    STATE_KEY,
    Exclusions,
    IdentifyHook,
    InitMode,
    check_bool,
    check_number,
    import_from_string,
    resolve_sdk,
)
from ._tracker import RequestTracker

__all__ = [
    "DEFAULT_EXCLUDE_PATHS",
    "ENVIRON_KEY",
    "INIT_KEY_PREFIX",
    "SETTING_NAMES",
    "STATE_KEY",
    "IdentifyHook",
    "InitMode",
    "IntegrationConfig",
    "RequestTracker",
    "import_from_string",
    "is_canonical_uuid",
    "resolve_sdk",
]

_BEGIN_FAILED = Contain("A-Track could not start tracking this request; it goes on untracked")
_FINISH_FAILED = Contain("A-Track could not finish tracking this request")
_IDENTIFY_FAILED = Contain(
    "A-Track identify hook failed; using the cookie for this request", level=logging.WARNING
)


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
        outbox: str | os.PathLike[str] | None = None,
        outbox_max_bytes: int | str | None = None,
        outbox_max_age: float | str | None = None,
    ) -> None:
        # Validate everything before building an SDK, so a typo does not leave a
        # half-configured client (and its worker thread) behind.
        if isinstance(identify, str):
            identify = import_from_string(identify, "identify")
        if identify is not None and not callable(identify):
            raise TypeError(f"identify must be callable or None, got {type(identify).__name__}")
        context_config = ContextConfig(
            trusted_proxies=trusted_proxies,
            ip=ip,
            scrub_params=scrub_params,
            timezone_cookie=timezone_cookie,
            timezone_header=timezone_header,
        )
        cookie = CookiePolicy(
            name=cookie_name,
            max_age=cookie_max_age,
            domain=cookie_domain,
            secure=cookie_secure,
            samesite=cookie_samesite,
            timezone_name=context_config.timezone_cookie,
        )
        if init not in ("eager", "lazy", "off"):
            raise ValueError(f"init must be 'eager', 'lazy' or 'off', got {init!r}")
        ttl = float(check_number(init_ttl, "init_ttl"))
        exclusions = Exclusions(exclude_paths)
        dnt = check_bool(respect_dnt, "respect_dnt")

        self.sdk = resolve_sdk(
            sdk,
            public_key=public_key,
            geo=geo,
            endpoint=endpoint,
            delivery=delivery,
            storage=storage,
            allow_insecure_http=allow_insecure_http,
            outbox=outbox,
            outbox_max_bytes=outbox_max_bytes,
            outbox_max_age=outbox_max_age,
        )
        self.identify = identify
        self.cookie = cookie
        self._cookie_cached = cookie.cached
        self.cookie_name = cookie.name
        self.cookie_max_age = cookie.max_age
        self.cookie_domain = cookie.domain
        self.cookie_secure = cookie.secure
        self.cookie_samesite = cookie.samesite
        self.init: InitMode = init
        self.init_ttl = ttl
        self.exclude_paths = exclusions.paths  # as given, for repr and docs
        #: ``is_excluded(method, path)``: whether a request gets a passive tracker
        #: (excluded path, ``HEAD``/``OPTIONS``). The one place that rule is written.
        self.is_excluded = exclusions
        # Its bound method: calling it costs less than calling the instance.
        self._excluded = exclusions.__call__
        self.respect_dnt = dnt
        self.context_config = context_config
        self.dedupe = InitDedupe(self.sdk, ttl)
        self._seen_get = self.dedupe.deadline
        # Request inputs -> their WireContext, shared by requests made of the same
        # inputs (see RequestTracker._wire_context).
        self._contexts: dict[tuple[str | None, ...], WireContext] = {}
        #: The request headers the lifecycle reads (lower case): adapters decode only
        #: these. The context configuration's, the cookie, DNT/GPC with respect_dnt.
        names = ("cookie", *context_config.header_names)
        if dnt:
            names += ("dnt", "sec-gpc")
        self.header_names: tuple[str, ...] = names

        # -- precomputed for the request path ---------------------------------------
        self._eager = init == "eager"
        self._lazy = init == "lazy"
        self._init_on = init != "off"
        # The in-memory storage answers in microseconds; any other (a subclass too) may
        # do network I/O, which must not run on an event loop.
        self._offloader = OrderedOffload() if type(self.sdk.storage) is not MemoryStorage else None
        self._async_hook = identify is not None and _is_async_callable(identify)
        #: Async adapters must use :meth:`abegin` (a coroutine identify hook is awaited
        #: there); otherwise ``begin(..., in_event_loop=True)`` does the same, cheaper.
        self.async_begin = self._async_hook

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

    # -- per request ------------------------------------------------------------------
    # Written for the common case (a returning visitor on a tracked page): few calls, no
    # keyword arguments, no allocation that can be avoided.

    def begin(
        self,
        view: RequestView,
        request: Any = None,
        *,
        cookies: Mapping[str, str] | None = None,
        path: str | None = None,
        in_event_loop: bool = False,
    ) -> RequestTracker:
        """Start a request (SPEC section 6 steps 1, 2, 5 and 7) and return its tracker.

        ``request`` is what the ``identify`` hook receives (the framework's request); the
        hook is called only once the uuid is needed (a call on the tracker, the eager
        ``/init`` at :meth:`finish`), so ``None`` may be passed and the request bound
        later with :meth:`bind_request`. ``cookies``: the request's cookies when the
        framework has parsed them already (else the ``cookie`` header of ``view`` is
        read, once). ``path``: the decoded path to match ``exclude_paths`` against
        (default: ``view.path``). ``in_event_loop``: the tracker is used on an event
        loop (ASGI): its storage round trips go to a worker thread.

        A coroutine ``identify`` hook cannot be awaited here: async adapters call
        :meth:`abegin`. Never raises.
        """
        try:
            # Steps 1 and 7 first: a passive or no-op tracker, else the full lifecycle.
            if self._excluded(view.method, view.path if path is None else path):
                return self._passive(view, cookies)
            if self.respect_dnt:
                tracker = self._dnt(view, cookies)
                if tracker is not None:
                    return tracker
            tracker = self._start(view, cookies)
            if self.identify is not None:
                tracker._identify_due = True
                tracker._hook_request = request
            if in_event_loop and self._offloader is not None:
                tracker._offload = self._offloader
            return tracker
        except Exception:  # noqa: BLE001 - logged by _BEGIN_FAILED.log()
            _BEGIN_FAILED.log()
            return self._disabled(view)

    async def abegin(
        self,
        view: RequestView,
        request: Any = None,
        *,
        cookies: Mapping[str, str] | None = None,
        path: str | None = None,
    ) -> RequestTracker:
        """:meth:`begin` for async adapters (the tracker is used on the event loop). A
        coroutine ``identify`` hook is awaited here (a view's sync ``track()`` could not
        await it later); a sync one is called when the uuid is needed, as in
        :meth:`begin`."""
        tracker = self.begin(view, request, cookies=cookies, path=path, in_event_loop=True)
        if tracker._identify_due and self._async_hook:
            await self.await_identity(tracker)
        return tracker

    async def await_identity(self, tracker: RequestTracker) -> None:
        """Await a coroutine identify hook for ``tracker`` now (async adapters that call
        :meth:`begin` themselves; :meth:`abegin` does it). Never raises."""
        if not tracker._identify_due:
            return
        request = tracker._hook_request
        tracker._identify_due = False
        tracker._hook_request = None
        with _BEGIN_FAILED:
            identified = await self._identify_async(request)
            if identified is not None and identified != tracker._uuid:
                if tracker.is_new_user:
                    tracker._cookie_out = None
                tracker._uuid = identified
                tracker.is_new_user = False
                if self._init_on:
                    tracker._init_pending = not self.dedupe.recent(identified)

    def bind_request(self, tracker: RequestTracker, request: Any) -> None:
        """Give the identify hook the framework's request once the adapter has it
        (Flask's request exists only inside the WSGI call), if the hook has not been
        asked yet. Never raises."""
        if tracker._identify_due:
            tracker._hook_request = request

    def finish(self, tracker: RequestTracker, status: int, https: bool | None = None) -> str | None:
        """The response starts with ``status``: send the eager ``/init`` if it is due
        (statuses below 400 only, unless the view tracked something: pages that do not
        exist create no user), and return the ``Set-Cookie`` value for the response, or
        ``None`` when the uuid cookie need not change (SPEC step 6), or when a
        uuid made for this request goes with no user (an error page the view
        tracked nothing on, under eager init). Never raises.

        ``https``: whether the request came over https, for the cookie's ``Secure``
        flag (default: the view's scheme). Django passes its ``request.scheme``, which
        honours ``SECURE_PROXY_SSL_HEADER`` and is read only when a cookie goes out.

        Cheap when nothing is due: a returning user's tracker has no pending ``/init``.
        """
        if tracker._init_pending and self._eager:
            if status >= 400:
                # A page that does not exist, and the view tracked nothing: no user is
                # made, so a uuid generated for this request is not handed out either
                # (the visitor's next real page makes one, with isNewUser true).
                return None if tracker.is_new_user else self._cookie_value(tracker, https)
            with _FINISH_FAILED:
                if tracker._identify_due:
                    tracker._resolve()
                if tracker._init_pending:
                    tracker._send_init(None)
        elif tracker._identify_due and tracker.is_new_user:
            # No cookie came in: whether one goes out depends on who the hook says
            # this is (a user it names gets none, as before the hook was deferred).
            with _FINISH_FAILED:
                tracker._resolve()
        return self._cookie_value(tracker, https)

    def _cookie_value(self, tracker: RequestTracker, https: bool | None) -> str | None:
        value = tracker._cookie_out
        if value is None:
            return None
        if https is None:
            https = tracker._view.scheme == "https"
        return self.cookie.header(value, https)

    async def settle(self, tracker: RequestTracker) -> None:
        """Async adapters, before the response starts: wait (awaiting, the loop runs on)
        until the work this tracker handed to the background worker has run, so the
        user's next request, maybe on another worker, finds the init dedupe done.
        Only new users (or a storage the process has not asked recently) wait, for one
        storage round trip, as they did when that ran in ``abegin``. Never raises."""
        last = tracker._last
        if last is None or last.done():
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # not asyncio (trio): the work still runs, in order
        with _FINISH_FAILED:
            await asyncio.wrap_future(last, loop=loop)

    def drain(self, timeout: float | None = 5.0) -> bool:
        """Wait until the storage-bound work trackers handed to the background worker
        (under an event loop) has run, so that its calls are queued in the SDK: call it
        before ``sdk.flush()`` at shutdown (the ASGI middleware does) and in tests.
        ``False`` on timeout."""
        if self._offloader is None:
            return True
        return self._offloader.drain(timeout)

    def set_cookie_header(self, tracker: RequestTracker) -> str | None:
        """The ``Set-Cookie`` value for the response (SPEC step 6), or ``None`` when the
        uuid cookie need not change. Never raises. Adapters call :meth:`finish`, which
        also sends the eager ``/init``; this is for tests and tools."""
        value = tracker._cookie_out
        if value is None:
            return None
        return self.cookie.header(value, tracker._view.scheme == "https")

    # -- internals --------------------------------------------------------------------

    def _read_cookies(
        self, view: RequestView, cookies: Mapping[str, str] | None
    ) -> tuple[str | None, str | None]:
        # The one read of the cookies per request: the uuid and the timezone cookie.
        if cookies is None:
            return self.cookie.read(view.headers.get("cookie"))
        return self.cookie.read_parsed(cookies)

    def _passive(self, view: RequestView, cookies: Mapping[str, str] | None) -> RequestTracker:
        """Step 1: an excluded path or ``HEAD``/``OPTIONS`` gets a passive tracker."""
        uuid, timezone = self._read_cookies(view, cookies)
        return RequestTracker(self, view, uuid, False, None, True, timezone)

    def _dnt(self, view: RequestView, cookies: Mapping[str, str] | None) -> RequestTracker | None:
        """Step 7 (``respect_dnt``): a no-op tracker when the browser asks, else ``None``."""
        headers = view.headers
        if _asks(headers.get("dnt")) or _asks(headers.get("sec-gpc")):
            uuid, timezone = self._read_cookies(view, cookies)
            tracker = RequestTracker(self, view, uuid, False, None, True, timezone)
            tracker.enabled = False
            return tracker
        return None

    def _start(self, view: RequestView, cookies: Mapping[str, str] | None) -> RequestTracker:
        if cookies is None:
            header = view.headers.get("cookie")
            # A returning visitor's Cookie header was read before: one dict lookup.
            found = self._cookie_cached(header) if header else None
            cookie_uuid, timezone = self.cookie.read(header) if found is None else found
        else:
            cookie_uuid, timezone = self.cookie.read_parsed(cookies)
        if cookie_uuid is not None:
            tracker = RequestTracker(self, view, cookie_uuid, False, cookie_uuid, False, timezone)
            # A returning user this process initialised recently: nothing is due
            # (InitDedupe.recent, inline: every returning visitor's request asks).
            if self._init_on:
                seen = self._seen_get(cookie_uuid)
                if self.identify is not None or seen is None or seen <= _monotonic():
                    tracker._init_pending = True
        else:
            uuid = str(_uuid.uuid4())
            tracker = RequestTracker(self, view, uuid, True, None, False, timezone)
            tracker._cookie_out = uuid
            tracker._init_pending = self._init_on
        return tracker

    def _disabled(self, view: RequestView) -> RequestTracker:
        tracker = RequestTracker(self, view, None, False, None, True)
        tracker.enabled = False
        return tracker

    def _identify_sync(self, request: Any) -> str | None:
        assert self.identify is not None
        with _IDENTIFY_FAILED:
            result = self.identify(request)
            if inspect.isawaitable(result):
                if inspect.iscoroutine(result):
                    result.close()  # never awaited: close it to avoid a RuntimeWarning
                raise TypeError(
                    "the identify hook is async, but this integration runs synchronously; "
                    "use a sync hook here"
                )
            return _check_identified(result)
        return None

    async def _identify_async(self, request: Any) -> str | None:
        assert self.identify is not None
        with _IDENTIFY_FAILED:
            result = self.identify(request)
            if inspect.isawaitable(result):
                result = await result
            return _check_identified(result)
        return None


def _asks(value: str | None) -> bool:
    """A ``DNT`` or ``Sec-GPC`` value that says "1". A header sent twice reaches the
    view joined ("1, 1"; gunicorn and Django join with ","): any "1" in it counts."""
    if not value:
        return False
    value = value.strip()
    return value == "1" or ("," in value and any(p.strip() == "1" for p in value.split(",")))


def _is_async_callable(fn: object) -> bool:
    call = getattr(fn, "__call__", None)  # noqa: B004 - an object with an async __call__
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(call)


def _check_identified(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, _uuid.UUID):
        return str(value)
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)  # database primary keys
    return check_name(value, "the uuid returned by identify")
