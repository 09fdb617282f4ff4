"""The preferred locale of an Accept-Language header."""

from __future__ import annotations

from functools import lru_cache

from .limits import _MAX_ACCEPT_LANGUAGE, _MAX_LANGUAGE_RANGES, MAX_LOCALE_LENGTH


def preferred_locale(accept_language: str | None) -> str | None:
    """The preferred language tag of an ``Accept-Language`` header, normalised.

    Highest ``q`` wins, the first on a tie; ``*``, ``q=0`` and malformed entries are
    skipped. Tags are normalised (``en-us`` -> ``en-US``, ``zh-hant-tw`` ->
    ``zh-Hant-TW``) and ``_`` is read as ``-``. Cached: browsers send few distinct values.

    >>> preferred_locale("fr;q=0.8, en-us, de;q=0.9")
    'en-US'
    """
    if not accept_language:
        return None
    value = accept_language
    if len(value) > _MAX_ACCEPT_LANGUAGE:
        # Cut before caching, so the cache holds bounded keys.
        value = value[:_MAX_ACCEPT_LANGUAGE]
        comma = value.rfind(",")
        value = value[:comma] if comma >= 0 else ""
    return _preferred_locale_cached(value)


@lru_cache(maxsize=1024)
def _preferred_locale_cached(value: str) -> str | None:
    best: str | None = None
    best_q = 0.0
    for entry in value.split(",", _MAX_LANGUAGE_RANGES)[:_MAX_LANGUAGE_RANGES]:
        tag, _, params = entry.partition(";")
        q = _quality(params) if params else 1.0
        if q is None or q <= best_q:
            continue
        normalised = _normalise_tag(tag.strip())
        if normalised is not None:
            best, best_q = normalised, q
            if q >= 1.0:
                break  # nothing later can beat it
    return best


def _quality(params: str) -> float | None:
    """The ``q`` of ``;q=0.8`` (other parameters ignored); ``None`` when malformed."""
    q = 1.0
    for param in params.split(";"):
        name, eq, raw = param.partition("=")
        if name.strip().lower() != "q":
            continue
        raw = raw.strip()
        # RFC 9110 qvalue: "0", "1", "0.xxx", "1.000". float() alone would take "nan",
        # "1e-3" or "1_0".
        digits = raw.replace(".", "", 1)
        if not eq or not digits or len(raw) > 5 or not (digits.isascii() and digits.isdigit()):
            return None
        q = float(raw)
        if q > 1.0:
            return None
    return q


_ALNUM = frozenset("abcdefghijklmnopqrstuvwxyz0123456789")


def _normalise_tag(tag: str) -> str | None:
    if not tag or len(tag) > MAX_LOCALE_LENGTH or not tag.isascii():
        return None
    subtags = tag.lower().replace("_", "-").split("-")
    primary = subtags[0]
    if not (2 <= len(primary) <= 8 and primary.isalpha()):
        return None  # also rejects "*", "i-…" and "x-…" private tags
    out = [primary]
    in_extension = False
    for subtag in subtags[1:]:
        if not (1 <= len(subtag) <= 8) or not _ALNUM.issuperset(subtag):
            return None
        if len(subtag) == 1:
            in_extension = True  # after "u"/"x" the casing rules stop
        elif not in_extension and subtag.isalpha():
            if len(subtag) == 2:
                out.append(subtag.upper())  # region
                continue
            if len(subtag) == 4:
                out.append(subtag.title())  # script
                continue
        out.append(subtag)
    return "-".join(out)
