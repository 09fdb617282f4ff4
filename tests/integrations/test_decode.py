"""The one decoding rule every adapter shares (``atrack_integrations._decode``)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from atrack_integrations._decode import header_text, url_text, wsgi_text, wsgi_url_text


def test_header_bytes_utf8_else_latin1() -> None:
    assert header_text(b"Mozilla/5.0") == "Mozilla/5.0"
    assert header_text("M\u00f6zilla \u2713".encode()) == "M\u00f6zilla \u2713"
    assert header_text(b"Caf\xe9") == "Caf\u00e9"
    assert header_text(b"Bad\xc3(\xff") == "Bad\u00c3(\u00ff"


def test_referer_bytes_utf8_else_percent_encoded_as_sent() -> None:
    # Valid UTF-8 is text (the context builder encodes it back: the same %C3%A9).
    assert header_text(b"https://r\xc3\xa9f.example/", "referer") == "https://r\u00e9f.example/"
    # Otherwise the bytes as sent, as in a url; the ASCII rest ("#", spaces) untouched
    # for the context builder, which treats every referer alike.
    assert header_text(b"https://x/caf\xff?q=\xe9#a b", "referer") == "https://x/caf%FF?q=%E9#a b"
    assert wsgi_text("https://x/caf\xff", "referer") == "https://x/caf%FF"
    # Other headers keep the Latin-1 reading.
    assert header_text(b"caf\xff", "user-agent") == "caf\u00ff"


def test_url_bytes_are_percent_encoded_as_sent() -> None:
    assert url_text(b"/caf\xc3\xa9?q=\xff") == "/caf%C3%A9?q=%FF"
    assert url_text(b"/a%20b?x=1") == "/a%20b?x=1"  # escapes kept
    # Text beyond Latin-1 is no PEP 3333 string: left to the context builder.
    assert wsgi_url_text("/\u20ac") == "/\u20ac"


@given(st.binary(max_size=64))
def test_wsgi_strings_read_as_the_bytes_they_carry(raw: bytes) -> None:
    # A WSGI server hands the same bytes over as Latin-1 text: same result.
    assert wsgi_text(raw.decode("latin-1")) == header_text(raw)
    assert wsgi_text(raw.decode("latin-1"), "referer") == header_text(raw, "referer")
    assert wsgi_url_text(raw.decode("latin-1")) == url_text(raw)
    assert url_text(raw).isascii()
