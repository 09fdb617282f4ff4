"""``ATrackSdk``: the public client."""

from __future__ import annotations

import hashlib
import json
import logging
import time
import uuid as _uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from . import _delivery, _shutdown
from ._call import Call, EventCall
from ._delivery import Delivery, SyncDelivery, make_delivery, sync_delivery
from ._errors import NoUserError
from ._models import Attributes, EventPayload, InitPayload, InitResult, User
from ._options import Options, mask_key, validate_options
from ._reporting import Reporter, Stats
from ._scheduler import BackgroundDelivery
from ._storage import MemoryStorage, Storage
from ._validate import _convert_dict, check_name, to_json_object
from ._wire import (
    PATH_ATTRIBUTES,
    PATH_EVENT,
    PATH_INIT,
    WireContext,
    attributes_body,
    event_body,
    event_bound,
    event_json,
    format_timestamp,
    init_body,
    now_timestamp,
    serialize,
    text_bound,
)

if TYPE_CHECKING:
    from ._outbox import Outbox
    from ._transport import Transport

logger = logging.getLogger("atrack")

CURRENT_USER_KEY = "atrack:user"
_MODES = ("merge", "replace")
# Event names a request tracker's calls have passed, kept per SDK (see
# _event_in_request): at most this many.
_MAX_EVENT_NAMES = 1024
T = TypeVar("T")


class ATrackSdk:
    """The A-Track client. Thread-safe; build one per process and share it.

    >>> sdk = ATrackSdk(Options("pub_xxxxx", disabled=True))
    >>> result = sdk.init()
    >>> sdk.track("order_created", {"amount": 12})
    >>> sdk.get_user().uuid == result.uuid
    True
    """

    def __init__(self, options: Options) -> None:
        if not isinstance(options, Options):
            raise TypeError(f"ATrackSdk needs an Options, got {type(options).__name__}")
        self.options = options
        self.base_url = validate_options(options)
        self._public_key = options.public_key
        self.storage: Storage = options.storage if options.storage is not None else MemoryStorage()
        # The current user this SDK last stored (its JSON): what get_user() falls back on
        # when the storage misses it (down, or an LRU that evicted it), so a Redis outage
        # after init() does not turn every track() without a uuid into a NoUserError.
        self._own_user: str | None = None
        self._stats = Stats()
        self._reporter = Reporter(options, self._stats, self.base_url)
        self._closed = False
        directory = None if options.disabled or options.outbox is None else options.outbox
        if directory is not None and options.delivery == "sync":
            logger.warning(
                "A-Track outbox %s ignored: delivery='sync' sends each call before it "
                "returns, there is nothing to keep",
                directory,
            )
            directory = None
        outbox_dir = None
        if directory is not None:
            # Imported only when used: sqlite3 stays out of `import atrack_core`.
            from . import _outbox

            # Checked before anything starts: a refused directory raises here.
            outbox_dir = _outbox.prepare_dir(directory)
        self._delivery: Delivery = make_delivery(
            options, self.base_url, self._stats, self._reporter
        )
        self._outbox: Outbox | None = None
        if outbox_dir is not None and isinstance(self._delivery, BackgroundDelivery):
            self._outbox = _outbox.Outbox(
                outbox_dir,
                self._delivery,
                max_bytes=options.outbox_max_bytes,
                max_age=options.outbox_max_age,
                owner=hashlib.sha256(self._public_key.encode()).hexdigest()[:16],
            )
        # (transport, delivery) while atrack_core.testing overrides the transport
        self._overridden: tuple[object, SyncDelivery] | None = None
        # Event names checked lately -> text_bound(name).
        self._event_names: dict[str, int] = {}
        _shutdown.register(self)

    def __repr__(self) -> str:
        return (
            f"ATrackSdk(key={mask_key(self._public_key)!r}, base_url={self.base_url!r}, "
            f"delivery={self.options.delivery!r}, disabled={self.options.disabled!r})"
        )

    # -- the public API -------------------------------------------------------------

    def init(self, payload: InitPayload | None = None) -> InitResult:
        """Send ``/init`` for a user and make them the SDK's current user.

        Without a uuid, the current user kept in the storage is reused (a CLI with a
        ``FileStorage`` keeps its anonymous uuid across runs); when there is none a
        UUID4 is generated and ``is_new_user`` is ``True``.
        """
        if payload is None:
            payload = InitPayload()
        elif not isinstance(payload, InitPayload):
            raise TypeError(f"init() takes an InitPayload or None, got {type(payload).__name__}")
        user = payload.user
        uuid = user.uuid if user is not None else None
        is_new = False
        # Read once: it gives the uuid to reuse and the attributes a merge builds on.
        current = self.get_user()
        if uuid is None:
            if current is not None:
                uuid = current.uuid
            else:
                uuid = str(_uuid.uuid4())
                is_new = True
        uuid = check_name(uuid, "InitPayload.user.uuid")
        mode = _check_mode(payload.mode, "InitPayload.mode")
        attributes = to_json_object(
            user.attributes if user else None, "InitPayload.user.attributes"
        )
        attributes.update(to_json_object(payload.attributes, "InitPayload.attributes"))
        context = to_json_object(payload.context, "InitPayload.context")
        profile = to_json_object(payload.profile, "InitPayload.profile")
        self._init_checked(uuid, is_new, mode, context, attributes, profile)

        if mode == "merge" and current is not None and current.uuid == uuid:
            merged = dict(current.attributes)
            merged.update(attributes)
            attributes = merged
        self._set_current_user(User(uuid, attributes))
        return InitResult(uuid=uuid, is_new_user=is_new)

    def get_user(self) -> User | None:
        """The current user (set by :meth:`init`), or ``None``. The storage's, which
        another process sharing it may have set; on a miss, the one this SDK last set."""
        try:
            raw = self.storage.get(CURRENT_USER_KEY)
        except Exception:
            logger.warning("A-Track storage failed on get; treating as a miss", exc_info=True)
            raw = None
        if raw is None:
            raw = self._own_user
            if raw is None:
                return None
        # Validated like input: a value some other program (or an older version, or a
        # corrupt file) left behind must not raise in init() or track() on every run.
        try:
            data = json.loads(raw)
            if not isinstance(data, dict):
                raise TypeError(f"a JSON {type(data).__name__}, not an object")
            uuid = check_name(data.get("uuid"), "uuid")
            attributes = to_json_object(data.get("attributes"), "attributes")
        except (ValueError, TypeError, RecursionError) as exc:
            logger.warning(
                "A-Track storage holds a current user that does not validate (%s); "
                "treating it as a miss",
                str(exc)[:200],
            )
            return None
        return User(uuid=uuid, attributes=attributes)

    def track(
        self, event: EventPayload | str, attributes: Attributes | None = None, **kwargs: Any
    ) -> None:
        """Send an event: ``track(EventPayload(...))`` or ``track("name", {"k": 1})``.

        The short form accepts ``uuid=``, ``timestamp=`` and ``context=`` keywords.
        Without a uuid the current user's is used (``NoUserError`` when there is none).
        """
        if isinstance(event, EventPayload):
            if attributes is not None or kwargs:
                raise TypeError("track(EventPayload) takes no other arguments")
            payload = event
        elif isinstance(event, str):
            unknown = set(kwargs) - {"uuid", "timestamp", "context"}
            if unknown:
                raise TypeError(f"track() got unexpected keyword arguments {sorted(unknown)}")
            payload = EventPayload(event, attributes=attributes, **kwargs)
        else:
            raise TypeError(
                f"track() takes an EventPayload or an event name, got {type(event).__name__}"
            )
        uuid = payload.uuid if payload.uuid is not None else self._current_uuid("track()")
        self.send_event(
            uuid,
            payload.event,
            payload.attributes,
            context=payload.context,
            timestamp=None
            if payload.timestamp is None
            else format_timestamp(payload.timestamp, "EventPayload.timestamp"),
        )

    def set_attributes(
        self,
        attributes: Attributes,
        replace: bool = False,
        *,
        uuid: str | None = None,
        profile: dict[str, Any] | None = None,
    ) -> None:
        """Send ``/attributes``: merge (default) or, with ``replace=True``, replace the
        user's attributes. Applies to the current user unless ``uuid`` is given; the
        locally kept current user is updated to match."""
        if not isinstance(replace, bool):
            raise TypeError(f"replace must be a bool, got {type(replace).__name__}")
        target = uuid if uuid is not None else self._current_uuid("set_attributes()")
        attrs = to_json_object(attributes, "attributes")
        self._attributes_checked(
            check_name(target, "uuid"), attrs, replace, to_json_object(profile, "profile")
        )
        current = self.get_user()
        if current is not None and current.uuid == target:
            merged = attrs if replace else {**current.attributes, **attrs}
            self._set_current_user(User(target, merged))

    def flush(self, timeout: float | None = 5.0) -> bool:
        """Block until every call made before this one was delivered or dropped.
        ``True`` when that happened within ``timeout`` seconds. With an outbox, calls
        it holds on disk to be sent now (spilled, adopted) count too; calls parked
        after their retries ran out do not."""
        outbox = self._outbox
        if outbox is None:
            return self._delivery.flush(timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        return outbox.drain(timeout) and self._delivery.flush(
            None if deadline is None else max(0.0, deadline - time.monotonic())
        )

    def shutdown(self, timeout: float | None = None) -> None:
        """Flush (bounded by ``timeout``, default ``shutdown_timeout``) and stop. Idempotent."""
        budget = self.options.shutdown_timeout if timeout is None else timeout
        self._close(budget, budget)

    def _close(
        self,
        timeout: float | None,
        budget: float | None,
        *,
        join: bool = False,
        since: float | None = None,
    ) -> None:
        """Shut down, waiting at most ``timeout``; ``budget`` is the bound the caller
        set (the process-wide exit flush starts every SDK's wait from one instant,
        ``since``: a server's stop when its flush ran out, so the log line's wait counts
        from there).
        ``join``: when another thread is already shutting it down, wait (within
        ``timeout``) for its calls instead of returning at once (a SIGTERM that arrives
        during an exit flush must not end the process before that flush does)."""
        if self._closed:
            if join:
                self._delivery.flush(timeout)
            return
        self._closed = True
        outbox = self._outbox
        if outbox is not None:
            start = time.monotonic()
            outbox.drain(timeout)
            if timeout is not None:
                timeout = max(0.0, timeout - (time.monotonic() - start))
        self._delivery.shutdown(timeout, budget=budget, since=since)
        if outbox is not None:
            # What was not delivered stays in the file for the next process.
            outbox.close()
        _shutdown.unregister(self)

    async def aflush(self, timeout: float | None = 5.0) -> bool:
        """:meth:`flush` for async code: waits in a worker thread, not on the event loop."""
        return await _in_thread(lambda: self.flush(timeout))

    async def ashutdown(self, timeout: float | None = None) -> None:
        """:meth:`shutdown` for async code."""
        await _in_thread(lambda: self.shutdown(timeout))

    def stats(self) -> dict[str, int]:
        """Delivery counters: enqueued, sent, failed, retried, dropped, queued, in_flight
        (and ``filtered``: calls ``before_send`` dropped); with an outbox, ``outbox_*``
        (see docs/outbox.md)."""
        snapshot = self._stats.snapshot(self._delivery.queued())
        if self._outbox is not None:
            snapshot.update(self._outbox.stats())
        return snapshot

    def __enter__(self) -> ATrackSdk:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    # -- lower level, used by the integrations ----------------------------------------
    # These never touch the SDK's current user: a web request must not change it.

    def send_init(
        self,
        uuid: str,
        is_new_user: bool,
        context: dict[str, Any] | None = None,
        attributes: Attributes | None = None,
        *,
        profile: dict[str, Any] | None = None,
        mode: str = "merge",
    ) -> None:
        """Send ``/init`` for ``uuid`` without changing the current user."""
        self._init_checked(
            check_name(uuid, "uuid"),
            is_new_user,
            _check_mode(mode, "mode"),
            to_json_object(context, "context"),
            to_json_object(attributes, "attributes"),
            to_json_object(profile, "profile"),
        )

    def send_attributes(
        self,
        uuid: str,
        attributes: Attributes,
        *,
        replace: bool = False,
        profile: dict[str, Any] | None = None,
    ) -> None:
        """Send ``/attributes`` for ``uuid`` without changing the current user."""
        self._attributes_checked(
            check_name(uuid, "uuid"),
            to_json_object(attributes, "attributes"),
            replace,
            to_json_object(profile, "profile"),
        )

    def send_event(
        self,
        uuid: str,
        event: str,
        attributes: Attributes | None = None,
        *,
        context: dict[str, Any] | None = None,
        timestamp: str | None = None,
    ) -> None:
        """Send ``/event`` for ``uuid``; every argument is validated."""
        uuid = check_name(uuid, "EventPayload.uuid")
        event = check_name(event, "EventPayload.event")
        attrs = to_json_object(attributes, "EventPayload.attributes") if attributes else {}
        ctx = to_json_object(context, "EventPayload.context") if context is not None else {}
        body = event_body(uuid, event, attrs, timestamp or now_timestamp(), ctx)
        self._dispatch(PATH_EVENT, uuid, body)

    # -- the integrations' path -------------------------------------------------------
    # One internal entry per call, for values that are validated already: the public
    # methods above validate and come here too. Only the integrations (and this class)
    # call these; nothing here changes the current user.

    def _init_checked(
        self,
        uuid: str,
        is_new_user: bool,
        mode: str,
        context: dict[str, Any],
        attributes: dict[str, Any],
        profile: dict[str, Any],
    ) -> None:
        body = init_body(uuid, is_new_user, mode, context, attributes, profile)
        self._dispatch(PATH_INIT, uuid, body)

    def _attributes_checked(
        self, uuid: str, attributes: dict[str, Any], replace: bool, profile: dict[str, Any]
    ) -> None:
        body = attributes_body(uuid, "replace" if replace else "merge", attributes, profile)
        self._dispatch(PATH_ATTRIBUTES, uuid, body)

    def _event_in_request(
        self, uuid: str, event: str, attributes: Attributes | None, context: WireContext
    ) -> None:
        """An event from a request tracker: its uuid and context are validated (the
        context once per request, its JSON reused); the event and attributes are the
        view's, validated here."""
        # An app tracks a few dozen event names, request after request: each is
        # checked once (the table is bounded; a str subclass is checked every time).
        name_bound = self._event_names.get(event) if event.__class__ is str else None
        if name_bound is None:
            event = self._check_event_name(event)
            name_bound = text_bound(event)
        if attributes.__class__ is dict:
            attrs = _convert_dict(attributes, "EventPayload.attributes", 0)
        else:
            attrs = to_json_object(attributes, "EventPayload.attributes") if attributes else {}
        timestamp = now_timestamp()
        if self.options.before_send is None:
            # Without a before_send hook, the body's bytes are joined around the
            # context's cached JSON; when it is sure to encode (ASCII, flat, small),
            # that is left to the sender (EventCall): the encoding's ~10k instructions
            # leave the request for the bound's ~4k (docs/delivery.md).
            weight = event_bound(uuid, name_bound, attrs, context)
            if weight > 0:
                call: Call = EventCall(uuid, (uuid, event, attrs, timestamp, context), weight)
            else:
                call = Call(PATH_EVENT, uuid, event_json(uuid, event, attrs, timestamp, context))
            overrides = _delivery.overrides  # read once: a capture may end meanwhile
            if overrides:
                self._override_delivery(overrides[-1]).submit(call)
            else:
                self._delivery.submit(call)
            return
        # The hook may edit the body: it gets a copy, the request's context stays.
        body = event_body(uuid, event, attrs, timestamp, dict(context.data))
        self._dispatch(PATH_EVENT, uuid, body)

    def _check_event_body(
        self, uuid: str, event: str, attributes: dict[str, Any], context: WireContext
    ) -> None:
        """Raise now what encoding this event's body would raise later: for a tracker
        whose event is validated at the call and made in the ordered worker. A body sure
        to encode (see ``_event_in_request``) costs the bound only; any other is encoded
        here once, to be told (a lone surrogate, over the size limit, an int wider than
        the interpreter's digit limit). With a ``before_send`` hook, as in
        ``_event_in_request``, what the hook returns is encoded after it, and a failure
        there is the hook's (counted, logged, ``on_error``)."""
        if self.options.before_send is not None:
            return
        if event_bound(uuid, text_bound(event), attributes, context) > 0:
            return
        event_json(uuid, event, attributes, now_timestamp(), context)

    def _check_body(self, path: str, body: dict[str, Any]) -> None:
        """Raise now what serialising ``body`` (made of validated parts) would raise
        later, in the ordered worker: a lone surrogate, the size limit, an int wider
        than the interpreter's digit limit. Nothing with a ``before_send`` hook (its
        result's failure is the hook's, as on the direct path)."""
        if self.options.before_send is None:
            serialize(path, body)

    def _check_event_name(self, event: object) -> str:
        name = check_name(event, "EventPayload.event")
        if event.__class__ is str:
            names = self._event_names
            if len(names) >= _MAX_EVENT_NAMES:
                names.clear()
            names[name] = text_bound(name)
        return name

    # -- internals --------------------------------------------------------------------

    def _dispatch(self, path: str, uuid: str, body: dict[str, Any]) -> None:
        hook = self.options.before_send
        if hook is not None:
            try:
                result = hook(path, body)
                if result is None:
                    self._stats.add("filtered")
                    return
                if not isinstance(result, dict):
                    raise TypeError(f"before_send returned {type(result).__name__}, not a dict")
                data = serialize(path, result)
            except Exception as exc:
                logger.exception("A-Track before_send failed; the %s call is dropped", path)
                self._stats.add("failed")
                self._reporter.hook(Call(path, uuid, b""), exc)
                return
            body = result
        else:
            data = serialize(path, body)
        self._submit(Call(path, uuid, data))

    def _submit(self, call: Call) -> None:
        overrides = _delivery.overrides  # read once: a capture may end meanwhile
        if overrides:
            self._override_delivery(overrides[-1]).submit(call)
        else:
            self._delivery.submit(call)

    def _override_delivery(self, transport: Transport) -> SyncDelivery:
        """A sync delivery through ``transport``, the one ``atrack_core.testing``
        plugged in, used in the caller's thread."""
        cached = self._overridden
        if cached is None or cached[0] is not transport:
            cached = self._overridden = (
                transport,
                sync_delivery(self.options, transport, self.base_url, self._stats),
            )
        return cached[1]

    def _current_uuid(self, where: str) -> str:
        user = self.get_user()
        if user is None:
            raise NoUserError(f"{where} needs a uuid: pass one, or call init() first")
        return user.uuid

    def _set_current_user(self, user: User) -> None:
        raw = json.dumps({"uuid": user.uuid, "attributes": user.attributes}, ensure_ascii=False)
        self._own_user = raw
        try:
            self.storage.set(CURRENT_USER_KEY, raw)
        except Exception:
            logger.warning("A-Track storage failed on set; current user not kept", exc_info=True)


def _check_mode(mode: object, where: str) -> str:
    if mode not in _MODES:
        raise ValueError(f"{where} must be 'merge' or 'replace', got {mode!r}")
    return str(mode)


async def _in_thread(fn: Callable[[], T]) -> T:
    """Run blocking ``fn`` in a worker thread under asyncio, so the event loop goes on;
    under another event loop (trio), where there is no asyncio executor, inline."""
    import asyncio

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return fn()
    return await asyncio.to_thread(fn)
