"""Checks one ingest body against the wire contract (SPEC section 2).

Pure Python, no web framework: the app turns a :class:`BodyError` into a 400 and the
store receives only bodies that passed. Messages name the offending field, because the
collector exists to tell a developer precisely what their integration got wrong.
"""

from __future__ import annotations

import json
import math
import re
from datetime import datetime
from typing import Any, Final

__all__ = [
    "MAX_BODY_BYTES",
    "MAX_INT_DIGITS",
    "MAX_STRING_LENGTH",
    "PATHS",
    "BodyError",
    "parse_body",
]

#: Bodies above this size get a 413, as from the hosted API.
MAX_BODY_BYTES: Final = 256 * 1024
#: Longest integer accepted, in decimal digits (CPython's default conversion limit;
#: the SDK refuses longer ones at the call).
MAX_INT_DIGITS: Final = 4300
#: Longest accepted ``uuid`` or ``event`` (characters).
MAX_STRING_LENGTH: Final = 255

# Exactly the keys of each endpoint's body, in wire order (the order errors are
# reported in, so the first message is stable).
PATHS: Final[dict[str, tuple[str, ...]]] = {
    "/init": ("sdkVersion", "uuid", "isNewUser", "mode", "context", "attributes", "profile"),
    "/attributes": ("sdkVersion", "uuid", "mode", "attributes", "profile"),
    "/event": ("sdkVersion", "uuid", "event", "attributes", "timestamp", "context"),
}

# ASCII digits only: ``\d`` would also accept other scripts' digits.
_TIMESTAMP_RE: Final = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{3}Z", re.ASCII
)
# C0, DEL and C1 control characters.
_CONTROL_RE: Final = re.compile(r"[\x00-\x1f\x7f-\x9f]")
# A lone surrogate can only enter a strictly decoded UTF-8 text through a \uXXXX escape.
_SURROGATE_ESCAPE_RE: Final = re.compile(r"\\u[dD][89a-fA-F]")


class BodyError(ValueError):
    """The body breaks the wire contract; ``str(exc)`` is the client-facing message."""


def json_type(value: object) -> str:
    """The JSON name of a parsed value's type, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _reject_constant(name: str) -> Any:
    raise BodyError(f"body is not valid JSON: {name} is not a JSON value")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise BodyError(f"body is not valid JSON: number {text[:40]} is out of range")
    return value


def _bounded_int(text: str) -> int:
    # Without this, int() raises a plain ValueError past the interpreter's limit (a 500);
    # the limit is fixed here, whatever the interpreter's own setting.
    if len(text) - text.startswith("-") > MAX_INT_DIGITS:
        raise BodyError(
            f"body holds an integer of {len(text.lstrip('-'))} digits; at most "
            f"{MAX_INT_DIGITS} digits are accepted (send larger numbers as strings)"
        )
    try:
        return int(text)
    except ValueError:  # an interpreter limit set lower than ours
        raise BodyError(
            f"body holds an integer of {len(text.lstrip('-'))} digits, over this "
            "collector's limit (sys.set_int_max_str_digits)"
        ) from None


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise BodyError(f"body is not valid JSON: duplicate key {key!r} in an object")
            seen.add(key)
    return result


def _has_lone_surrogate(value: object) -> bool:
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return True
        return False
    if isinstance(value, dict):
        return any(_has_lone_surrogate(k) or _has_lone_surrogate(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_lone_surrogate(v) for v in value)
    return False


def _decode(raw: bytes) -> object:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BodyError(f"body is not valid UTF-8 (byte {exc.start})") from None
    if text.startswith("\ufeff"):
        raise BodyError("body is not valid JSON: it starts with a byte order mark")
    try:
        value = json.loads(
            text,
            parse_constant=_reject_constant,
            parse_float=_finite_float,
            parse_int=_bounded_int,
            object_pairs_hook=_no_duplicates,
        )
    except json.JSONDecodeError as exc:
        raise BodyError(f"body is not valid JSON: {exc}") from None
    except RecursionError:
        raise BodyError("body is not valid JSON: nested too deeply") from None
    if _SURROGATE_ESCAPE_RE.search(text) and _has_lone_surrogate(value):
        raise BodyError("body is not valid JSON: a string holds an unpaired UTF-16 surrogate")
    return value


def _check_name(body: dict[str, Any], field: str) -> None:
    value = body[field]
    if not isinstance(value, str):
        raise BodyError(f"{field!r} must be a string, got {json_type(value)}")
    if not value:
        raise BodyError(f"{field!r} must not be empty")
    if len(value) > MAX_STRING_LENGTH:
        raise BodyError(
            f"{field!r} is {len(value)} characters long; at most {MAX_STRING_LENGTH} are allowed"
        )
    match = _CONTROL_RE.search(value)
    if match:
        raise BodyError(
            f"{field!r} contains the control character U+{ord(match.group()):04X} "
            f"at position {match.start()}"
        )


def _check_timestamp(value: object) -> None:
    if not isinstance(value, str):
        raise BodyError(f"'timestamp' must be a string, got {json_type(value)}")
    if not _TIMESTAMP_RE.fullmatch(value):
        raise BodyError(
            "'timestamp' must be UTC with milliseconds, YYYY-MM-DDTHH:MM:SS.mmmZ; "
            f"got {value[:64]!r}"
        )
    try:
        datetime.strptime(value, "%Y-%m-%dT%H:%M:%S.%fZ")
    except ValueError:
        raise BodyError(f"'timestamp' is not a valid date and time: {value!r}") from None


def _check_field(body: dict[str, Any], field: str) -> None:
    value = body[field]
    if field == "sdkVersion":
        if not isinstance(value, str):
            raise BodyError(f"'sdkVersion' must be a string, got {json_type(value)}")
        if not value:
            raise BodyError("'sdkVersion' must not be empty")
    elif field in ("uuid", "event"):
        _check_name(body, field)
    elif field == "isNewUser":
        if not isinstance(value, bool):
            raise BodyError(f"'isNewUser' must be a boolean, got {json_type(value)}")
    elif field == "mode":
        if not isinstance(value, str) or value not in ("merge", "replace"):
            shown = json.dumps(value)[:64] if isinstance(value, str) else json_type(value)
            raise BodyError(f'\'mode\' must be "merge" or "replace", got {shown}')
    elif field == "timestamp":
        _check_timestamp(value)
    elif not isinstance(value, dict):  # context, attributes, profile
        raise BodyError(f"{field!r} must be an object, got {json_type(value)}")


def parse_body(path: str, raw: bytes) -> dict[str, Any]:
    """Parse and check the body of a ``POST`` to ``path`` (one of :data:`PATHS`).

    Returns the parsed object; raises :class:`BodyError` naming the first problem.
    """
    expected = PATHS[path]
    body = _decode(raw)
    if not isinstance(body, dict):
        raise BodyError(f"body must be a JSON object, got {json_type(body)}")
    missing = [key for key in expected if key not in body]
    if missing:
        names = ", ".join(repr(key) for key in missing)
        raise BodyError(f"missing key{'s' if len(missing) > 1 else ''} {names} for POST {path}")
    extra = sorted(key for key in body if key not in expected)
    if extra:
        names = ", ".join(repr(key[:64]) for key in extra)
        raise BodyError(f"unexpected key{'s' if len(extra) > 1 else ''} {names} for POST {path}")
    for field in expected:
        _check_field(body, field)
    return body
