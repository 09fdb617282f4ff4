"""The wire protocol in one place: the three bodies, their serialisation, the headers.

Bodies carry exactly the keys of the hosted API, every key always present.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from datetime import date, datetime, timezone
from typing import Any

from ._validate import MAX_BODY_BYTES, check_encodable
from ._version import __version__

SDK_VERSION = __version__
USER_AGENT = f"a-track-sdk-python/{__version__}"

PATH_INIT = "/init"
PATH_ATTRIBUTES = "/attributes"
PATH_EVENT = "/event"


def _no_default(value: object) -> Any:
    raise TypeError(f"{type(value).__name__} has no JSON form")


def _make_encoder() -> Callable[[dict[str, Any], int], Any] | None:
    # JSONEncoder.encode() builds a new C encoder on every call; on the request path
    # that costs about 1 µs of a ~10 µs budget, so one C encoder is built once and
    # reused. Bodies are validated (bounded depth, no cycles) before they get here, so
    # the encoder's own cycle check (markers=None) is not needed.
    c_make_encoder = getattr(json.encoder, "c_make_encoder", None)
    c_encode = getattr(json.encoder, "c_encode_basestring", None)
    if c_make_encoder is None or c_encode is None:  # no C accelerator: plain json
        return None
    encoder: Callable[[dict[str, Any], int], Any] = c_make_encoder(
        None, _no_default, c_encode, None, ":", ",", False, False, False
    )
    return encoder


# The C encoder: ``"".join(_encoder(body, 0))`` is the JSON text (None without the C
# accelerator; then _dumps is the pure-Python encoder's).
_encoder = _make_encoder()


def _make_dumps() -> Callable[[dict[str, Any]], str]:
    encode = _encoder
    if encode is None:
        return json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode

    def dumps(body: dict[str, Any]) -> str:
        return "".join(encode(body, 0))

    return dumps


_dumps = _make_dumps()
# A str as a JSON string literal (C, escapes only what JSON must: quote, backslash,
# controls; non-ASCII stays as is, like _dumps).
_encode_str: Callable[[str], str] = getattr(
    json.encoder, "c_encode_basestring", json.encoder.py_encode_basestring
)


class WireContext:
    """A request context that an integration built (and so validated) itself, with its
    JSON text computed once and shared by every event of the request.

    Only the integrations make these (``RequestTracker``); a context a caller passes
    is a plain dict and is validated like any other input. ``data`` is never modified.
    """

    __slots__ = ("_json", "ascii_size", "data")

    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data
        self._json: str | None = None
        # The JSON text's length if it is ASCII, -1 if not, -2 before json().
        self.ascii_size = -2

    def json(self) -> str:
        text = self._json
        if text is None:
            # Benign race: two threads sharing one request's tracker compute the same text.
            text = _dumps(self.data)
            self.ascii_size = len(text) if text.isascii() else -1
            self._json = text
        return text


_EVENT_HEAD = '{"sdkVersion":' + _encode_str(SDK_VERSION) + ',"uuid":'

# JSON string literals of the uuids and event names seen lately: a request path sends
# the same few again and again, and a lookup costs a tenth of encoding a uuid.
_literals: dict[str, str] = {}
_MAX_LITERALS = 4096
_MAX_LITERAL_INPUT = 128


def _literal(text: str) -> str:
    """``text`` as a JSON string literal, kept in :data:`_literals` when short."""
    encoded = _encode_str(text)
    if text.__class__ is str and len(text) <= _MAX_LITERAL_INPUT:
        if len(_literals) >= _MAX_LITERALS:
            _literals.clear()
        _literals[text] = encoded
    return encoded


def event_json(
    uuid: str, event: str, attributes: dict[str, Any], timestamp: str, context: WireContext
) -> bytes:
    """``serialize(PATH_EVENT, event_body(...))``, byte for byte, for a context whose JSON
    is known: the event's own parts are encoded and the context's text is reused.

    Encoding the whole body costs ~2.5 µs, over half of it the context (user agent,
    url, referer …); joining the parts costs ~0.8 µs. ``timestamp`` must be in the
    :func:`now_timestamp` form (nothing in it needs escaping).
    """
    uuid_json = _literals.get(uuid)
    if uuid_json is None:
        uuid_json = _literal(uuid)
    event_literal = _literals.get(event)
    if event_literal is None:
        event_literal = _literal(event)
    # _dumps and context.json() inline: a Python call each saved on the request path.
    if not attributes:
        attributes_json = "{}"
    elif _encoder is not None:
        attributes_json = "".join(_encoder(attributes, 0))
    else:
        attributes_json = _dumps(attributes)
    context_json = context._json
    if context_json is None:
        context_json = context.json()
    text = "".join(
        (
            _EVENT_HEAD,
            uuid_json,
            ',"event":',
            event_literal,
            ',"attributes":',
            attributes_json,
            ',"timestamp":"',
            timestamp,
            '","context":',
            context_json,
            "}",
        )
    )
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError:
        parts = {"uuid": uuid, "event": event, "attributes": attributes, "context": context.data}
        check_encodable(parts, f"the {PATH_EVENT} body")
        raise
    if len(data) > MAX_BODY_BYTES:
        raise ValueError(
            f"the {PATH_EVENT} body is {len(data)} bytes of JSON; the limit is {MAX_BODY_BYTES}"
        )
    return data


def init_body(
    uuid: str,
    is_new_user: bool,
    mode: str,
    context: dict[str, Any],
    attributes: dict[str, Any],
    profile: dict[str, Any],
) -> dict[str, Any]:
    return {
        "sdkVersion": SDK_VERSION,
        "uuid": uuid,
        "isNewUser": is_new_user,
        "mode": mode,
        "context": context,
        "attributes": attributes,
        "profile": profile,
    }


def attributes_body(
    uuid: str, mode: str, attributes: dict[str, Any], profile: dict[str, Any]
) -> dict[str, Any]:
    return {
        "sdkVersion": SDK_VERSION,
        "uuid": uuid,
        "mode": mode,
        "attributes": attributes,
        "profile": profile,
    }


def event_body(
    uuid: str, event: str, attributes: dict[str, Any], timestamp: str, context: dict[str, Any]
) -> dict[str, Any]:
    return {
        "sdkVersion": SDK_VERSION,
        "uuid": uuid,
        "event": event,
        "attributes": attributes,
        "timestamp": timestamp,
        "context": context,
    }


def serialize(path: str, body: dict[str, Any]) -> bytes:
    """UTF-8 JSON of a body; ``ValueError`` past 256 KiB (the API's limit), or naming
    the str that holds a lone surrogate."""
    text = _dumps(body)
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError:
        check_encodable(body, f"the {path} body")
        raise
    if len(data) > MAX_BODY_BYTES:
        raise ValueError(
            f"the {path} body is {len(data)} bytes of JSON; the limit is {MAX_BODY_BYTES}"
        )
    return data


def headers(public_key: str, request_id: str) -> dict[str, str]:
    return {
        "x-a-track-key": public_key,
        "content-type": "application/json",
        "user-agent": USER_AGENT,
        "x-a-track-request-id": request_id,
    }


def new_request_id() -> str:
    """A random (version 4) UUID string: what ``str(uuid.uuid4())`` gives, in a third
    of its time (one per delivered call, on the sender's CPU budget)."""
    h = os.urandom(16).hex()
    variant = "89ab"[int(h[16], 16) & 3]
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{variant}{h[17:20]}-{h[20:]}"


def _uuid_masks(count: int) -> tuple[int, int]:
    """AND and OR masks over ``count`` records of 37 random bytes: each byte becomes a
    hex digit's value (0-15), a dash (16), the version 4, the variant (8-11) or, last,
    a separator (17); see :func:`new_request_ids`."""
    keep, put = bytearray(), bytearray()
    for pos in range(36):
        if pos in (8, 13, 18, 23):
            keep.append(0)
            put.append(16)
        elif pos == 14:  # the version
            keep.append(0)
            put.append(4)
        elif pos == 19:  # the variant: 8, 9, a or b
            keep.append(3)
            put.append(8)
        else:
            keep.append(15)
            put.append(0)
    keep.append(0)
    put.append(17)
    return int.from_bytes(bytes(keep) * count, "big"), int.from_bytes(bytes(put) * count, "big")


_IDS_PER_BLOCK = 256
_ID_KEEP, _ID_PUT = _uuid_masks(_IDS_PER_BLOCK)
_ID_CHARS = b"0123456789abcdef- " + bytes(238)


def new_request_ids(count: int) -> list[str]:
    """At least ``count`` ids like :func:`new_request_id` (a multiple of 256), built
    together in C (random bytes masked as one integer, mapped to characters, split):
    about a fifth of the time per id. For the outbox's writer, which names thousands
    of calls per group commit while the host's requests want the GIL. Each digit is
    the low nibble of its own random byte: 122 random bits per id, as in a uuid4."""
    ids: list[str] = []
    size = 37 * _IDS_PER_BLOCK
    for _ in range(-(-count // _IDS_PER_BLOCK)):
        raw = int.from_bytes(os.urandom(size), "big") & _ID_KEEP | _ID_PUT
        ids += raw.to_bytes(size, "big").translate(_ID_CHARS).decode("ascii").split()
    return ids


# track() runs on request paths: formatting a timestamp from scratch costs more than
# the rest of the call, so the part up to the second is cached.
_ts_cache: tuple[float, str] = (0.0, "")
_time = time.time
# ".000Z" … ".999Z": a list index instead of a format per call.
_MS_SUFFIX = tuple(f".{ms:03d}Z" for ms in range(1000))


# What an event body holds besides its parts' text: the keys, quotes and punctuation
# around them and the timestamp, with room to spare.
_EVENT_FRAME = len(_EVENT_HEAD) + 96


# Ints of at most this many bits (at most 603 digits) are below the interpreter's
# int-to-str check threshold (sys.int_info.str_digits_check_threshold, 640 digits; the
# lowest limit sys.set_int_max_str_digits() or PYTHONINTMAXSTRDIGITS accepts): they
# encode whatever the limit is, then or later. A wider int (validation allows 4,300
# digits) fails to encode under a lower limit, so it is encoded at the call.
_SURE_INT_BITS = 2000


def text_bound(text: str) -> int:
    """The most bytes ``text`` takes in a body's JSON (every character a six-byte
    escape), or ``-1`` when it is not ASCII (it could hold a lone surrogate, which only
    encoding finds)."""
    return 6 * len(text) if text.isascii() else -1


def event_bound(uuid: str, name_size: int, attributes: dict[str, Any], context: WireContext) -> int:
    """The most bytes :func:`event_json` makes of these parts when that is sure to
    encode within :data:`MAX_BODY_BYTES`, else ``-1``. ``name_size`` is
    :func:`text_bound` of the event's name (callers keep it per name).

    Sure means: ASCII text (nothing UTF-8 could refuse) and flat attributes of str, int
    (of at most 603 digits), float, bool or None, short enough even if every character
    needed a six-byte escape. An event body known sure to encode can be encoded later,
    off the caller's thread (``EventCall``); any other is encoded at once, where a
    failure reaches the caller.
    ``attributes`` must be validated already (exact types, finite floats, bounded ints).
    """
    context_size = context.ascii_size
    if context_size == -2:
        context.json()
        context_size = context.ascii_size
    if context_size < 0 or name_size < 0 or not uuid.isascii():
        return -1
    size = _EVENT_FRAME + context_size + name_size + 6 * len(uuid)
    for key, value in attributes.items():
        if not key.isascii():
            return -1
        tp = value.__class__
        if tp is str:
            if not value.isascii():
                return -1
            size += 6 * (len(key) + len(value)) + 6
        elif tp is int:
            bits = value.bit_length()
            if bits > _SURE_INT_BITS:
                return -1  # its decimal form depends on sys.set_int_max_str_digits()
            # Decimal digits are at most bits * 0.302 + 1, plus a sign.
            size += 6 * len(key) + bits // 3 + 6
        elif tp is bool or tp is float or value is None:
            size += 6 * len(key) + 30  # the longest float repr has 24 characters
        else:
            return -1  # nested or converted values: encoded at once
    return size if size <= MAX_BODY_BYTES else -1


def now_timestamp() -> str:
    """The current UTC time as ``YYYY-MM-DDTHH:MM:SS.mmmZ``."""
    global _ts_cache
    now = _time()
    # Float arithmetic only on the common path (within the cached second): time_ns()'s
    # ~1.7e18 is a two-digit int, and mixing ints into float arithmetic converts them.
    start, prefix = _ts_cache
    ms = int((now - start) * 1000.0)
    if ms >= 1000 or ms < 0:
        sec = int(now)
        start = float(sec)
        prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
        _ts_cache = (start, prefix)
        ms = min(int((now - start) * 1000.0), 999)
    return prefix + _MS_SUFFIX[ms]


def format_timestamp(value: object, where: str = "timestamp") -> str:
    """An aware ``datetime`` as ``YYYY-MM-DDTHH:MM:SS.mmmZ`` in UTC.

    Anything else raises, naming ``where``: a ``str``, a number or a ``date`` is a
    ``TypeError`` (a date has no time of day and no zone; which midnight it means is
    the caller's to say), a naive or out-of-range datetime a ``ValueError``.
    """
    if not isinstance(value, datetime):
        if isinstance(value, date):
            raise TypeError(
                f"{where} is a date, not a datetime; pass an aware datetime, e.g. "
                "datetime.combine(day, time(), timezone.utc) for midnight UTC"
            )
        raise TypeError(f"{where} must be a timezone-aware datetime, got {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{where} is a naive datetime; give it a timezone (e.g. UTC)")
    try:
        utc = value.astimezone(timezone.utc)
    except OverflowError:
        raise ValueError(f"{where} {value.isoformat()} is out of range in UTC") from None
    # Fields by hand: strftime's %Y gives "5", not "0005", on glibc.
    return (
        f"{utc.year:04d}-{utc.month:02d}-{utc.day:02d}T{utc.hour:02d}:{utc.minute:02d}:"
        f"{utc.second:02d}.{utc.microsecond // 1000:03d}Z"
    )
