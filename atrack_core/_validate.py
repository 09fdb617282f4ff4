"""Input validation and conversion to JSON-ready values, in the caller's thread.

Everything here raises ``ValueError``/``TypeError`` whose message names the offending
value and where it sits (``attributes['when']``), so a mistake surfaces at the call
instead of as a lost event in the background.
"""

from __future__ import annotations

import math
import re
from datetime import date, datetime
from decimal import Decimal
from enum import Enum
from typing import Any
from uuid import UUID

MAX_NAME_LENGTH = 255
MAX_BODY_BYTES = 256 * 1024
MAX_DEPTH = 32
#: Longest integer accepted, in decimal digits: CPython's default int/str conversion
#: limit, so a body always serialises (whatever the interpreter's own setting) and
#: the collector, which parses with that limit, can read it back.
MAX_INT_DIGITS = 4300

_SCALARS = (str, bool, type(None))
# Integers strictly between these have at most MAX_INT_DIGITS digits (both bounds
# precomputed: negating one per check would copy ~1.8 KB).
_INT_BOUND = 10**MAX_INT_DIGITS
_NEG_INT_BOUND = -_INT_BOUND
# Every int of at most this many bits is below _INT_BOUND (2**14284 < 10**4300).
_INT_FAST_BITS = _INT_BOUND.bit_length() - 1
# C0 controls, DEL and C1 controls: never legitimate inside a name or a uuid.
_CONTROL = frozenset(chr(c) for c in (*range(32), *range(127, 160)))
# Lone surrogates: a str can hold them (json.loads('"\\ud800"'), os.fsdecode, the
# surrogateescape handler), UTF-8 cannot, so a body holding one can never be sent.
_SURROGATE = re.compile(r"[\ud800-\udfff]")


def check_name(value: object, what: str) -> str:
    """An event name, uuid or attribute key: a non-empty str of at most 255 characters
    with no control characters."""
    if type(value) is not str:
        if isinstance(value, UUID):
            return str(value)
        raise TypeError(f"{what} must be a str, got {type(value).__name__}")
    if not value:
        raise ValueError(f"{what} must not be empty")
    if len(value) > MAX_NAME_LENGTH:
        raise ValueError(f"{what} is {len(value)} characters long; the limit is {MAX_NAME_LENGTH}")
    if not value.isprintable():
        if not _CONTROL.isdisjoint(value):
            raise ValueError(f"{what} {value[:40]!r} contains control characters")
        _check_surrogates(value, what)
    return value


def _check_surrogates(value: str, what: str) -> None:
    found = _SURROGATE.search(value)
    if found is not None:
        raise ValueError(
            f"{what} {value[:40]!r} contains a lone surrogate ({found.group()!r} at index "
            f"{found.start()}), which UTF-8 cannot carry"
        )


def check_encodable(body: dict[str, Any], where: str) -> None:
    """Raise the :func:`check_name`-style ``ValueError`` for the first str in ``body``
    (a key or a value, at any depth) that holds a lone surrogate.

    For after a failed UTF-8 encoding: string values are not searched on the way in
    (that would cost every call), the encoding finds them for free, and this names
    where the culprit sits.
    """
    for key, item in body.items():
        path = f"{where}[{key!r}]"
        _check_surrogates(key, f"{where} key")
        _check_encodable_value(item, path)


def _check_encodable_value(value: Any, path: str) -> None:
    if isinstance(value, str):
        _check_surrogates(value, path)
    elif isinstance(value, dict):
        check_encodable(value, path)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _check_encodable_value(item, f"{path}[{i}]")


def to_json_object(value: object, where: str) -> dict[str, Any]:
    """Convert a mapping of attributes/context/profile into a JSON-ready dict (a copy)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise TypeError(f"{where} must be a dict, got {type(value).__name__}")
    return _convert_dict(value, where, 0)


def _convert_dict(value: dict[Any, Any], where: str, depth: int) -> dict[str, Any]:
    if depth >= MAX_DEPTH:
        raise ValueError(f"{where} nests deeper than {MAX_DEPTH} levels (a cycle?)")
    out: dict[str, Any] = {}
    for key, item in value.items():
        if type(key) is not str:
            raise TypeError(f"{where} has a non-string key {key!r} ({type(key).__name__})")
        if not key.isprintable():
            if not _CONTROL.isdisjoint(key):
                raise ValueError(f"{where} key {key[:40]!r} contains control characters")
            _check_surrogates(key, f"{where} key")
        # The common case (flat str/int/bool/None values) skips the recursive call. An
        # int is tested first, by bit length (cheaper than comparing with the bounds);
        # the few that fail that go to the exact check in _convert.
        tp = type(item)
        if tp is int:
            fits = item.bit_length() <= _INT_FAST_BITS
            out[key] = item if fits else _convert(item, where, key, depth)
        elif tp in _SCALARS:
            out[key] = item
        else:
            out[key] = _convert(item, where, key, depth)
    return out


def _convert(value: Any, where: str, key: object, depth: int) -> Any:
    path = f"{where}[{key!r}]"
    tp = type(value)
    if tp in _SCALARS:
        return value
    if tp is int:
        return _check_int(value, path)
    if tp is float:
        if math.isfinite(value):
            return value
        raise ValueError(f"{path} is {value!r}; JSON cannot carry NaN or infinities")
    if isinstance(value, dict):
        return _convert_dict(value, path, depth + 1)
    if isinstance(value, (list, tuple, set, frozenset)):
        if depth + 1 >= MAX_DEPTH:
            raise ValueError(f"{path} nests deeper than {MAX_DEPTH} levels (a cycle?)")
        items = sorted(value, key=repr) if isinstance(value, (set, frozenset)) else value
        return [_convert(item, path, i, depth + 1) for i, item in enumerate(items)]
    if isinstance(value, Enum):
        return _convert(value.value, where, key, depth)
    if isinstance(value, datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"{path} is a naive datetime; give it a timezone (e.g. UTC)")
        return value.isoformat()
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise ValueError(f"{path} is {value!r}; JSON cannot carry NaN or infinities")
        if value == value.to_integral_value():
            # Checked before int(): Decimal("1E+999999999") would take gigabytes.
            return _check_int(int(value) if value.adjusted() < MAX_INT_DIGITS else _INT_BOUND, path)
        return float(value)
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, (str, int)):  # subclasses (IntEnum handled above, str subclasses)
        return str(value) if isinstance(value, str) else _check_int(int(value), path)
    if isinstance(value, float):
        return _convert(float(value), where, key, depth)
    raise TypeError(
        f"{path} is a {tp.__name__}, which has no JSON form; convert it to "
        "str/int/float/bool/None/list/dict first"
    )


def _check_int(value: int, path: str) -> int:
    if _NEG_INT_BOUND < value < _INT_BOUND:
        return value
    raise ValueError(
        f"{path} is an integer of more than {MAX_INT_DIGITS} digits; the limit is "
        f"{MAX_INT_DIGITS} digits (send it as a string)"
    )
