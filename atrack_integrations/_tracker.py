"""RequestTracker: what a view uses to track the current request's user."""

from __future__ import annotations

import os
import uuid as _uuid
from collections.abc import Callable
from concurrent.futures import Future
from threading import Condition, get_ident
from typing import TYPE_CHECKING, Any

from atrack_core._request import RequestView, request_context_dict
from atrack_core._validate import check_name, to_json_object
from atrack_core._wire import PATH_ATTRIBUTES, PATH_INIT, WireContext, attributes_body, init_body

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

# -- a tracker's first-use steps ----------------------------------------------------------
# Asking the identify hook and deciding the /init run once per request, at the tracker's
# first use, which may come from several threads at once (a view may hand its tracker to
# threads). The first thread claims the step; another that needs it meanwhile waits until
# it is done, and the flag saying it is due is cleared only then (cleared first, such a
# thread went on: with the cookie's anonymous uuid while the hook was asked, before the
# /init while the storage answered). A claim is one dict.setdefault, atomic under the
# GIL: a thread alone takes no lock (a lock costs ~2.5k instructions, a request's whole
# lifecycle ~25k). Keyed by the tracker's id, which is not reused while its step runs.
_asking: dict[int, tuple[int]] = {}  # the hook is asked: id(tracker) -> (thread ident,)
_sending: dict[int, tuple[int]] = {}  # the /init is decided: the same
_done = Condition()  # a step ended while a thread waits for it
_waiting = 0  # threads waiting in _wait_for (changed under _done)


def _claim(claims: dict[int, tuple[int]], key: int) -> bool | None:
    """Claim the step ``claims`` of tracker ``key``: ``True``, claimed (release it with
    :func:`_release`); ``False``, this thread runs it already (the hook, a storage or a
    ``before_send`` hook uses the tracker: not run again); ``None``, another thread ran
    it, and it is done now."""
    token = (get_ident(),)
    holder = claims.setdefault(key, token)
    if holder is token:
        return True
    if holder[0] == token[0]:
        return False
    _wait_for(claims, key)
    return None


def _hold(claims: dict[int, tuple[int]], key: int) -> bool:
    """:func:`_claim`, after another thread's run if there is one: ``True``, claimed;
    ``False``, this thread runs it already."""
    while True:
        claimed = _claim(claims, key)
        if claimed is not None:
            return claimed


def _wait_for(claims: dict[int, tuple[int]], key: int) -> None:
    global _waiting
    with _done:
        _waiting += 1
        try:
            while key in claims:
                _done.wait()
        finally:
            _waiting -= 1


def _release(claims: dict[int, tuple[int]], key: int) -> None:
    del claims[key]
    # A waiter counts itself before it looks at the claim: it either sees it gone or is
    # counted here (and waits on _done, which _notify takes after it).
    if _waiting:
        _notify()


def _notify() -> None:
    with _done:
        _done.notify_all()


def _after_fork_in_child() -> None:
    global _done, _waiting
    # The threads that ran or waited for a step at the fork do not exist here; the one
    # that forked goes on (and releases its own claims).
    me = get_ident()
    for claims in (_asking, _sending):
        for key, holder in list(claims.items()):
            if holder[0] != me:
                del claims[key]
    _done = Condition()
    _waiting = 0


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
            # Passive trackers without a cookie: generated only if someone asks, once
            # also when two threads the view handed the tracker to ask at once.
            fresh = str(_uuid.uuid4())
            with _done:
                uuid = self._uuid
                if uuid is None:
                    uuid = self._uuid = fresh
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
            # What only encoding finds (a lone surrogate, the size limit) is found here
            # too, not in the worker, where it was logged and no one told.
            sdk._check_event_body(uuid, event, attrs, context)
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
        if attrs:
            # Its /init is made later (here or in the ordered worker), where a failure
            # is contained and logged only: what only encoding finds (a lone surrogate,
            # the size limit) is found here, at the call, as set_attributes() does.
            sdk = self._config.sdk
            if self.passive or self._config.init == "off":  # sent as /attributes
                sdk._check_body(PATH_ATTRIBUTES, attributes_body(uuid, "merge", attrs, {}))
            else:
                body = init_body(uuid, False, "merge", self._context_dict(), attrs, {})
                sdk._check_body(PATH_INIT, body)
        key = id(self)
        if self._identify_due or self._init_pending or key in _asking or key in _sending:
            # A hook being asked or a /init being decided in another thread ends first:
            # the view's user is the one that stays (and gets its /init).
            asked = _hold(_asking, key)
            sent = _hold(_sending, key)
            try:
                send = self._switch(uuid, attrs)
            finally:
                if sent:
                    _release(_sending, key)
                if asked:
                    _release(_asking, key)
        else:
            send = self._switch(uuid, attrs)
        if send:
            self._send_init(attrs)

    def _switch(self, uuid: str, attrs: dict[str, Any] | None) -> bool:
        """:meth:`identify`'s change of user; ``True`` when its /init goes out now."""
        self._identify_due = False  # the view knows better than the hook
        self._hook_request = None
        self._uuid = uuid
        self.is_new_user = False
        if not self.passive and is_canonical_uuid(uuid) and uuid != self._cookie_in:
            self._cookie_out = uuid
        config = self._config
        if self.passive or config.init == "off":
            if attrs:
                self._send_attributes(attrs, False)
            return False
        if not attrs:
            # The switched user's /init goes out as the init setting says (at the
            # response start, or before the next call).
            self._init_pending = True
            return False
        return True

    # -- internals --------------------------------------------------------------------

    def _resolve(self) -> None:
        """Ask the identify hook now that the uuid is needed; its user wins over the
        cookie. A user it names is no new visitor: the anonymous cookie is not set.
        Once (see "a tracker's first-use steps" above): ``_identify_due`` is cleared when
        the answer is in place."""
        # _claim inline: every request of an app with a hook comes here.
        key = id(self)
        token = (get_ident(),)
        holder = _asking.setdefault(key, token)
        if holder is not token:
            if holder[0] != token[0]:
                _wait_for(_asking, key)
            return  # answered in another thread, or the hook itself asks (uuid as it is)
        try:
            request = self._hook_request
            # None: no request was bound (Flask dispatched without its WSGI wrapper).
            if self._identify_due and request is not None:
                identified = self._config._identify_sync(request)
                if identified is not None and identified != self._uuid:
                    if self.is_new_user:
                        self._cookie_out = None
                    self._uuid = identified
                    self.is_new_user = False
        finally:
            self._hook_request = None
            self._identify_due = False
            del _asking[key]  # _release inline
            if _waiting:
                _notify()

    def _send_init(self, attributes: dict[str, Any] | None) -> None:
        """Send this user's /init (deduplicated); under an event loop with a storage
        that does I/O, from the ordered worker, and this request's later calls too.
        Once (see "a tracker's first-use steps" above): ``_init_pending`` is cleared
        when the /init is on its way, and the SPEC's order holds (a user's /init reaches
        the API before any other call of that user). With ``attributes`` (identify) it
        goes out either way, after one being decided in another thread."""
        self._tracked = True
        dedupe = self._config.dedupe
        key = id(self)
        if (
            attributes is None
            and not self._ordered
            and dedupe.recent(self._uuid)  # type: ignore[arg-type]
            and key not in _sending
        ):
            # Nothing goes out (this process sent it within init_ttl), so there is no
            # order to keep and no claim to make: the common case, a returning user. In
            # this order: a /init on its way from another thread made it recent after
            # that thread's claim.
            self._init_pending = False
            return
        if not (_hold(_sending, key) if attributes else _claim(_sending, key)):
            return  # decided in another thread, or this one is deciding it already
        try:
            if attributes or self._init_pending:  # else decided before the claim
                offload = self._offload
                if offload is None:
                    dedupe.send(self, attributes)
                elif self._ordered or attributes or not dedupe.recent(self._uuid):  # type: ignore[arg-type]
                    self._ordered = True
                    self._submit(lambda: dedupe.send(self, attributes))
        finally:
            self._init_pending = False
            _release(_sending, key)

    def _send_attributes(self, attrs: dict[str, Any], replace: bool) -> None:
        self._tracked = True
        uuid = self.uuid
        sdk = self._config.sdk
        if self._ordered:
            # What only encoding finds is found here, not in the worker (see track()).
            mode = "replace" if replace else "merge"
            sdk._check_body(PATH_ATTRIBUTES, attributes_body(uuid, mode, attrs, {}))
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
