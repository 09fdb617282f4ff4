"""SDK options: defaults, environment loading and validation."""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from ._call import Call
    from ._storage import Storage
    from ._transport import Transport

DEFAULT_API_HOST = "api.a-track.io"
DEFAULT_TIMEOUT = 5.0
# A burst of 20,000 calls from one thread fits with room to spare; the scheduler also
# bounds the bytes waiting (``_scheduler.MAX_QUEUE_BYTES``), so memory stays bounded.
DEFAULT_MAX_QUEUE_SIZE = 50_000
DEFAULT_MAX_CONCURRENCY = 128
DEFAULT_MAX_RETRIES = 5
DEFAULT_SHUTDOWN_TIMEOUT = 5.0
DEFAULT_OUTBOX_MAX_BYTES = 256 * 1024 * 1024
DEFAULT_OUTBOX_MAX_AGE = 24 * 3600.0

Delivery = Literal["background", "sync"]
TransportName = Literal["auto", "httpx", "curl"]
TRANSPORTS = ("auto", "httpx", "curl")
ErrorHook = Callable[["Call", BaseException], object]
BeforeSend = Callable[[str, dict[str, Any]], "dict[str, Any] | None"]

_GEO_RE = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\Z")
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"", "0", "false", "no", "off"})


def mask_key(key: str) -> str:
    """The only form of a public key that may appear in a log line, repr or CLI output:
    its last 4 characters, and none of a key of 8 or fewer (4 of a 5-character key
    would be most of it)."""
    if len(key) <= 8:
        return "…"
    return "…" + key[-4:]


_USERINFO = re.compile(r"(//)[^/?#]*@")
_QUERY = re.compile(r"\?[^#]*")
_FRAGMENT = re.compile(r"#.*", re.DOTALL)


def mask_url(url: str) -> str:
    """An endpoint as it may appear in an error, a log line or a repr: credentials
    (``user:password@``), query and fragment hidden, which an endpoint must not carry
    and a mistyped one may (``https://user:s3cret@proxy.example``, ``?token=...``)."""
    url = _USERINFO.sub(r"\1***@", url, count=1)
    url = _QUERY.sub("?…", url, count=1)
    return _FRAGMENT.sub("#…", url, count=1)


def is_loopback_host(host: str) -> bool:
    """``localhost``, 127.0.0.0/8 or ``::1`` (``host`` as ``urlsplit`` gives it: lower
    case, no brackets). No other name is resolved to find out: ``foo.localhost`` maps
    to loopback only in resolvers that special-case it, and an answer from DNS could
    change between this check and the connection."""
    if host == "localhost":
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # ::ffff:127.0.0.1; Python < 3.13 does not call it loopback
    return ip.is_loopback


@dataclass(repr=False, eq=False)
class Options:
    """Configuration of an :class:`~atrack_core.ATrackSdk`.

    ``Options("pub_xxxxx")`` takes the public key first; every other field is a keyword
    argument or may be set as an attribute afterwards (``options.geo = "fra"``).
    Validation happens when the SDK is built, so a bad value raises ``ValueError``
    from ``ATrackSdk(options)``.
    """

    public_key: str
    geo: str | None = None
    endpoint: str | None = None
    timeout: float = DEFAULT_TIMEOUT
    storage: Storage | None = None
    delivery: Delivery = "background"
    max_queue_size: int = DEFAULT_MAX_QUEUE_SIZE
    max_concurrency: int = DEFAULT_MAX_CONCURRENCY
    max_retries: int = DEFAULT_MAX_RETRIES
    shutdown_timeout: float = DEFAULT_SHUTDOWN_TIMEOUT
    on_error: ErrorHook | None = None
    before_send: BeforeSend | None = None
    disabled: bool = False
    allow_insecure_http: bool = False
    http2: bool = False
    # "auto": libcurl (pycurl, extra ``fast``) when installed, else httpx. A Transport
    # instance plugs in another one (atrack_core.testing does).
    transport: TransportName | Transport = "auto"
    # A directory: calls are kept on disk until delivered (docs/outbox.md).
    outbox: str | os.PathLike[str] | None = None
    outbox_max_bytes: int = DEFAULT_OUTBOX_MAX_BYTES
    outbox_max_age: float = DEFAULT_OUTBOX_MAX_AGE

    def __repr__(self) -> str:
        key = mask_key(self.public_key) if isinstance(self.public_key, str) else "?"
        endpoint = mask_url(self.endpoint) if isinstance(self.endpoint, str) else self.endpoint
        return (
            f"Options(public_key={key!r}, geo={self.geo!r}, endpoint={endpoint!r}, "
            f"delivery={self.delivery!r}, disabled={self.disabled!r})"
        )

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None, **overrides: Any) -> Options:
        """Build options from ``ATRACK_PUBLIC_KEY``, ``ATRACK_GEO``, ``ATRACK_ENDPOINT``,
        ``ATRACK_DISABLED``, ``ATRACK_DELIVERY``, ``ATRACK_TRANSPORT``, ``ATRACK_OUTBOX`` and
        ``ATRACK_ALLOW_INSECURE_HTTP``; keyword arguments win over them.

        Raises ``ValueError`` when ``ATRACK_PUBLIC_KEY`` is missing and the SDK is not
        disabled, or when ``ATRACK_DISABLED``/``ATRACK_ALLOW_INSECURE_HTTP`` is not a
        boolean word.
        """
        env = os.environ if environ is None else environ
        kwargs: dict[str, Any] = {"disabled": _env_bool(env, "ATRACK_DISABLED")}
        if _env_bool(env, "ATRACK_ALLOW_INSECURE_HTTP"):
            kwargs["allow_insecure_http"] = True
        if env.get("ATRACK_GEO"):
            kwargs["geo"] = env["ATRACK_GEO"]
        if env.get("ATRACK_ENDPOINT"):
            kwargs["endpoint"] = env["ATRACK_ENDPOINT"]
        if env.get("ATRACK_DELIVERY"):
            kwargs["delivery"] = env["ATRACK_DELIVERY"]
        if env.get("ATRACK_TRANSPORT"):
            kwargs["transport"] = env["ATRACK_TRANSPORT"].strip().lower()
        if env.get("ATRACK_OUTBOX", "").strip():
            kwargs["outbox"] = env["ATRACK_OUTBOX"].strip()
        kwargs.update(overrides)
        key = kwargs.pop("public_key", None) or env.get("ATRACK_PUBLIC_KEY", "")
        if not key and not kwargs.get("disabled"):
            raise ValueError(
                "ATRACK_PUBLIC_KEY is not set: set it, or set ATRACK_DISABLED=1 to validate "
                "calls without sending them (test runs; atrack_core.testing.capture_calls "
                "records what would be sent)"
            )
        return cls(key or "disabled", **kwargs)

    def base_url(self) -> str:
        """The validated base URL calls are posted under (no trailing slash)."""
        return validate_options(self)


def _env_bool(env: Mapping[str, str], name: str) -> bool:
    raw = env.get(name, "").strip().lower()
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    raise ValueError(f"{name} must be true/false/1/0 (or yes/no/on/off), got {raw!r}")


# The longest timeout or shutdown_timeout accepted (a day).
MAX_WAIT_SECONDS = 86400


def validate_options(options: Options) -> str:
    """Check every field; return the base URL. Raises ``ValueError``/``TypeError``."""
    key = options.public_key
    if not isinstance(key, str):
        raise TypeError(f"public_key must be a str, got {type(key).__name__}")
    if not key:
        raise ValueError("public_key must not be empty")
    if len(key) > 512 or any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127 for ch in key):
        raise ValueError(
            f"public_key {mask_key(key)!r} contains whitespace or control characters"
            if len(key) <= 512
            else "public_key is longer than 512 characters"
        )
    if not key.isascii():
        raise ValueError(f"public_key {mask_key(key)!r} must be ASCII (it travels in a header)")
    for name in ("timeout", "shutdown_timeout"):
        value = getattr(options, name)
        # Bounded: a wait of inf (or ~1e12) s overflows the thread waits at exit, which
        # then fail instead of flushing (and a SIGTERM no longer ends the process).
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not 0 < value <= MAX_WAIT_SECONDS
        ):
            raise ValueError(
                f"{name} must be a positive number of seconds up to {MAX_WAIT_SECONDS} "
                f"(a day), got {value!r}"
            )
    for name, low in (("max_queue_size", 1), ("max_concurrency", 1), ("max_retries", 0)):
        value = getattr(options, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    if options.delivery not in ("background", "sync"):
        raise ValueError(f"delivery must be 'background' or 'sync', got {options.delivery!r}")
    transport = options.transport
    if isinstance(transport, str):
        if transport not in TRANSPORTS:
            raise ValueError(f"transport must be 'auto', 'httpx' or 'curl', got {transport!r}")
    elif not callable(getattr(transport, "connection", None)):
        raise TypeError(
            f"transport must be 'auto', 'httpx', 'curl' or a Transport, got "
            f"{type(transport).__name__}"
        )
    for name in ("on_error", "before_send"):
        hook = getattr(options, name)
        if hook is not None and not callable(hook):
            raise TypeError(f"{name} must be callable or None, got {type(hook).__name__}")
    outbox = options.outbox
    if outbox is not None and (not isinstance(outbox, (str, os.PathLike)) or not str(outbox)):
        raise TypeError(f"outbox must be a directory path or None, got {outbox!r}")
    max_bytes = options.outbox_max_bytes
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 65536:
        raise ValueError(f"outbox_max_bytes must be an int >= 65536, got {max_bytes!r}")
    max_age = options.outbox_max_age
    if isinstance(max_age, bool) or not isinstance(max_age, (int, float)) or not max_age > 0:
        raise ValueError(f"outbox_max_age must be a positive number of seconds, got {max_age!r}")
    if options.storage is not None:
        for method in ("get", "set", "add", "delete"):
            if not callable(getattr(options.storage, method, None)):
                raise TypeError(f"storage must implement Storage; {method}() is missing")

    if options.endpoint is not None:
        return _validate_endpoint(options.endpoint, options.allow_insecure_http)
    if options.geo is not None:
        geo = options.geo
        if not isinstance(geo, str) or not _GEO_RE.match(geo):
            raise ValueError(
                f"geo must be one DNS label (lower-case letters, digits, '-'), got {geo!r}"
            )
        return f"https://{geo}.{DEFAULT_API_HOST}"
    return f"https://{DEFAULT_API_HOST}"


def _validate_endpoint(endpoint: str, allow_insecure_http: bool) -> str:
    if not isinstance(endpoint, str):
        raise TypeError(f"endpoint must be a str, got {type(endpoint).__name__}")
    shown = mask_url(endpoint)
    if any(ord(ch) < 33 or ord(ch) == 127 for ch in endpoint):
        raise ValueError(f"endpoint {shown!r} contains whitespace or control characters")
    if not endpoint.isascii():
        # Neither transport takes one: every call would fail in the background.
        raise ValueError(
            f"endpoint {shown!r} must be ASCII: percent-encode its path (%C3%A4 for ä) and "
            "give a host name in its IDNA form (xn--...)"
        )
    try:
        parts = urlsplit(endpoint)
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        raise ValueError(f"endpoint {shown!r} is not a valid URL: {exc}") from None
    if parts.scheme not in ("http", "https") or not host:
        raise ValueError(f"endpoint {shown!r} must be an http(s) URL with a host")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ValueError(f"endpoint {shown!r} must not carry a query, fragment or credentials")
    if parts.scheme == "http" and not allow_insecure_http and not is_loopback_host(host):
        raise ValueError(
            f"endpoint {shown!r} uses plain http to a non-loopback host; the public key "
            "would travel in clear text. Use https, or allow it: allow_insecure_http=True, "
            "ATRACK_ALLOW_INSECURE_HTTP=1 in the environment, or the integration setting "
            "allow_insecure_http (Django ATRACK['ALLOW_INSECURE_HTTP'], Flask "
            "ATRACK_ALLOW_INSECURE_HTTP)"
        )
    return endpoint.rstrip("/")
