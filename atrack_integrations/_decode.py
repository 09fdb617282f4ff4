"""One rule for turning request bytes into text, shared by every adapter.

Header values, the path and the query are bytes on the wire. Every adapter decodes
them the same way, so the same raw request gives the same context under every
framework (SPEC section 6): **UTF-8 when the bytes are valid UTF-8, else Latin-1**
(every byte one character, so nothing is lost and nothing raises). Browsers send UTF-8
user agents and referers; Latin-1 is what old clients and RFC 9110's obs-text mean.

The path and the query are URL parts: their non-ASCII bytes are percent-encoded as
they are (:func:`url_text`), so ``caf\xc3\xa9`` becomes ``caf%C3%A9`` and an invalid
``\xff`` becomes ``%FF``, under every adapter.

The ``Referer`` is a URL too, and the context's ``referer`` should read as the
referring page's ``url`` did: ``/caf%FF`` both times, not ``%FF`` in one and the
Latin-1 reading re-encoded (``%C3%BF``) in the other. Valid UTF-8 gives the same either
way (``é`` is encoded back to ``%C3%A9``); bytes that are not UTF-8 are therefore
percent-encoded as they are (:data:`URL_HEADERS`), and only those: the ASCII rest is
left to the context builder, which cuts the fragment and escapes spaces as for any
referer.

ASGI servers hand the bytes over (:func:`header_text`, :func:`url_text`); WSGI servers
hand them over as Latin-1 decoded strings, as PEP 3333 requires (:func:`wsgi_text`,
:func:`wsgi_url_text` undo that first).
"""

from __future__ import annotations

from typing import Final
from urllib.parse import quote

from atrack_core._request.text import _URL_SAFE

__all__ = ["URL_HEADERS", "header_text", "url_text", "wsgi_text", "wsgi_url_text"]

# Headers whose value is a URL: bytes that are not UTF-8 stay bytes, percent-encoded.
URL_HEADERS: Final = frozenset({"referer"})

# Every ASCII character: what the fallback for URL headers leaves as it is.
_ASCII: Final = "".join(map(chr, range(128)))


def header_text(raw: bytes, name: str = "") -> str:
    """Request bytes as text: UTF-8 if valid, else Latin-1, or for a header ``name`` in
    :data:`URL_HEADERS` the non-ASCII bytes percent-encoded. ASCII takes the first try."""
    try:
        return raw.decode()  # UTF-8, strict (without the argument: a shorter path in C)
    except UnicodeDecodeError:
        if name in URL_HEADERS:
            return quote(raw, safe=_ASCII)
        return raw.decode("latin-1")


def wsgi_text(value: str, name: str = "") -> str:
    """A PEP 3333 string (bytes decoded as Latin-1) as :func:`header_text` reads the
    bytes. A value that is real text already (Django under ASGI decodes its query string
    as UTF-8) comes back unchanged. ASCII, the common case, costs one ``isascii()``."""
    if value.isascii():
        return value
    try:
        raw = value.encode("latin-1")
    except UnicodeEncodeError:
        return value
    return header_text(raw, name)


def url_text(raw: bytes) -> str:
    """A raw path or query as text, non-ASCII bytes percent-encoded as they are."""
    if raw.isascii():
        return raw.decode("ascii")
    return quote(raw, safe=_URL_SAFE)


def wsgi_url_text(value: str) -> str:
    """:func:`url_text` for a PEP 3333 string. A value that is real text already
    (beyond Latin-1) comes back unchanged; the context builder encodes it as UTF-8."""
    if value.isascii():
        return value
    try:
        return quote(value.encode("latin-1"), safe=_URL_SAFE)
    except UnicodeError:
        return value
