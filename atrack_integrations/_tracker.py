"""RequestTracker: what a view uses to track the current request's user."""

from __future__ import annotations

import os
import uuid as _uuid
from collections.abc import Callable
from concurrent.futures import Future
from threading import Lock, RLock
from typing import TYPE_CHECKING, Any

from atrack_core._request import RequestView, request_context_dict
from atrack_core._validate import check_name, to_json_object
from atrack_core._wire import WireContext

from ._contain import CALLER_ERRORS, Contain
from ._cookie import is_canonical_uuid

if TYPE_CHECKING:
    from ._init_dedupe import OrderedOffload
    from ._lifecycle import IntegrationConfig

__all__ = ["RequestTracker"]

_TRACK_FAILED = Contain("A-Track track() failed", passes=CALLER_ERRORS)
_ATTRIBUTES_FAILED = Contain("A-Track set_attributes() failed", passes=CALLER_ERRORS)
_CONTEXT_FAILED = Contain("A-Track could not build the request context")

# The shared contexts of one configuration: at most this many, each from at most this
# many characters of input.
_MAX_CACHED_CONTEXTS = 2048
_MAX_CACHED_INPUT = 2048

# ``_hook_request`` while the identify hook is being asked (see RequestTracker._resolve).
_ASKING = object()
# Makes a tracker's RequestTracker._resolving, once: a lock made lazily without one could
# be made twice, by two threads, each then holding its own.
_making = Lock()


def _after_fork_in_child() -> None:
    global _making
    _making = Lock()  # a thread may have held it at the fork


if hasattr(os, "register_at_fork"):  # not on Windows
    os.register_at_fork(after_in_child=_after_fork_in_child)


class RequestTracker:
    """What a view uses to track the current request's user.

    Attached by the integrations (``request.state.atrack``, ``request.atrack``,
    ``environ["atrack.tracker"]``). Events carry the request's context; the SDK's own current
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
        "_hook_request",
        "_identify_due",
        "_init_pending",
        "_last",
        "_offload",
        "_ordered",
        "_resolving",
        "_timezone_cookie",
        "_tracked",
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
        timezone_cookie: str | None = None,
    ) -> None:
        self._config = config
        self._view = view
        self._uuid = uuid
        self.is_new_user = is_new_user
        self._cookie_in = cookie_uuid
        self._cookie_out: str | None = None
        self._timezone_cookie = timezone_cookie
        self._context: WireContext | None = None
        #: The /init is still to be decided for this request (eager: at the response
        #: start, or before the first call; lazy: before the first call).
        self._init_pending = False
        #: The identify hook is still to be asked (it is asked only when the uuid is
        #: needed, see IntegrationConfig.finish), with this request.
        self._identify_due = False
        self._hook_request: Any = None
        #: Held while the hook is asked (made when first needed: _resolve_lock).
        self._resolving: RLock | None = None
        #: Under an event loop with a storage that does I/O: the ordered worker that
        #: runs the init dedupe (and, once used, every later call of this request).
        self._offload: OrderedOffload | None = None
        self._ordered = False
        #: The last work handed to the worker: the response waits for it (awaited, not
        #: blocking the loop), so the user's next request, maybe on another worker,
        #: finds the init dedupe done.
        self._last: Future[None] | None = None
        #: Something was sent for this user (an event, attributes, an /init).
        self._tracked = False
        self.enabled = True
        self.passive = passive

    def __repr__(self) -> str:
        state = "no-op" if not self.enabled else "passive" if self.passive else "active"
        return f"<RequestTracker uuid={self._uuid!r} new={self.is_new_user} {state}>"

    @property
    def uuid(self) -> str:
        if self._identify_due:
            self._resolve()
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
        if self._identify_due:
            self._resolve()
        if self._init_pending:
            self._send_init(None)
        context = self._context
        if context is None:
            context = self._wire_context()
        uuid = self._uuid
        if uuid is None:
            uuid = self.uuid
        self._tracked = True
        if self._ordered:
            # Behind this request's /init in the ordered worker: validated here, sent
            # there, so the order of the user's calls is kept.
            event = check_name(event, "event")
            attrs = to_json_object(attributes, "attributes")
            sdk = self._config.sdk
            self._submit(lambda: sdk._event_in_request(uuid, event, attrs, context))
            return
        try:
            # A WireContext: the SDK trusts it and this (validated) uuid, and reuses the
            # context's JSON for every event of the request.
            self._config.sdk._event_in_request(uuid, event, attributes, context)
        except CALLER_ERRORS:
            raise
        except Exception:  # noqa: BLE001 - logged by _TRACK_FAILED.log()
            _TRACK_FAILED.log()

    def set_attributes(self, attributes: dict[str, Any], replace: bool = False) -> None:
        """Merge (or, with ``replace=True``, replace) this user's attributes."""
        if not isinstance(replace, bool):
            raise TypeError(f"replace must be a bool, got {type(replace).__name__}")
        attrs = to_json_object(attributes, "attributes")
        if not self.enabled:
            return
        if self._identify_due:
            self._resolve()
        if self._init_pending:
            self._send_init(None)
        self._send_attributes(attrs, replace)

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
        if self._identify_due:
            # The view knows better than the hook; a hook being asked in another thread
            # answers first, so the view's user is the one that stays.
            with self._resolve_lock():
                self._identify_due = False
                self._hook_request = None
        self._uuid = uuid
        self.is_new_user = False
        if not self.passive and is_canonical_uuid(uuid) and uuid != self._cookie_in:
            self._cookie_out = uuid
        config = self._config
        if self.passive or config.init == "off":
            if attrs:
                self._send_attributes(attrs, False)
            return
        if not attrs:
            # The switched user's /init goes out as the init setting says (at the
            # response start, or before the next call).
            self._init_pending = True
            return
        self._send_init(attrs)

    # -- internals --------------------------------------------------------------------

    def _resolve(self) -> None:
        """Ask the identify hook now that the uuid is needed; its user wins over the
        cookie. A user it names is no new visitor: the anonymous cookie is not set.

        Asked once, also when the view handed the tracker to threads: a call that needs
        the uuid while another thread asks the hook waits for the answer, as
        ``_identify_due`` is cleared only once the uuid is in place (cleared first, such
        a call went on with the cookie's anonymous uuid: its event and the /init went
        out for the visitor, none for the user). The hook itself may use the tracker:
        it gets the uuid as it stands, and is not asked again."""
        with self._resolve_lock():
            request = self._hook_request
            if not self._identify_due or request is _ASKING:
                return  # answered meanwhile, or the hook itself (this thread) asks
            self._hook_request = _ASKING
            try:
                # None: no request was bound (Flask dispatched without its WSGI wrapper).
                if request is not None:
                    identified = self._config._identify_sync(request)
                    if identified is not None and identified != self._uuid:
                        if self.is_new_user:
                            self._cookie_out = None
                        self._uuid = identified
                        self.is_new_user = False
            finally:
                self._hook_request = None
                self._identify_due = False

    def _resolve_lock(self) -> RLock:
        """The lock held while the hook is asked: made when first needed (most requests
        never ask the hook; a lock per request would cost ~10 % of begin and finish)."""
        lock = self._resolving
        if lock is None:
            with _making:
                lock = self._resolving
                if lock is None:
                    lock = self._resolving = RLock()
        return lock

    def _send_init(self, attributes: dict[str, Any] | None) -> None:
        """Send this user's /init (deduplicated); under an event loop with a storage
        that does I/O, from the ordered worker, and this request's later calls too."""
        self._init_pending = False
        self._tracked = True
        dedupe = self._config.dedupe
        offload = self._offload
        if offload is None:
            dedupe.send(self, attributes)
        elif self._ordered or attributes or not dedupe.recent(self._uuid):  # type: ignore[arg-type]
            self._ordered = True
            self._submit(lambda: dedupe.send(self, attributes))

    def _send_attributes(self, attrs: dict[str, Any], replace: bool) -> None:
        self._tracked = True
        uuid = self.uuid
        sdk = self._config.sdk
        if self._ordered:
            self._submit(lambda: sdk._attributes_checked(uuid, attrs, replace, {}))
            return
        with _ATTRIBUTES_FAILED:
            sdk._attributes_checked(uuid, attrs, replace, {})

    def _submit(self, work: Callable[[], None]) -> None:
        assert self._offload is not None
        self._last = self._offload.submit(work, self._last)

    def _context_dict(self) -> dict[str, Any]:
        context = self._context
        if context is None:
            context = self._wire_context()
        return context.data

    def _wire_context(self) -> WireContext:
        # Built on first use (a page that tracks nothing never pays for it), once per
        # request, and shared with every request made of the same inputs: the same
        # visitor on the same page sends the same context, and a WireContext (its data
        # and JSON text) is never modified. Documented never to raise; if it does,
        # events still go out.
        view = self._view
        config = self._config
        key = (
            view.path,
            view.query_string,
            view.client,
            self._timezone_cookie,
            *map(view.headers.get, config.context_config.header_names),
        )
        cache = config._contexts
        context = cache.get(key)
        if context is None:
            values = key[4:]
            data: dict[str, str] = {}
            with _CONTEXT_FAILED:
                data = request_context_dict(
                    view, config.context_config, timezone_cookie=self._timezone_cookie
                )
            context = WireContext(data)
            # Bounded in entries and in what a key may hold (raw header values).
            if (
                len(view.path) + len(view.query_string) + sum(map(len, filter(None, values)))
                <= _MAX_CACHED_INPUT
            ):
                if len(cache) >= _MAX_CACHED_CONTEXTS:
                    cache.clear()
                cache[key] = context
        self._context = context
        return context
