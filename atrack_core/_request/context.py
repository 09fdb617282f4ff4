"""Assembly: one request's context from its view and the configuration."""

from __future__ import annotations

from collections.abc import Mapping

from .._models import RequestContextInput
from .config import ContextConfig
from .cookies import find_cookie
from .ip import client_ip
from .language import preferred_locale
from .scrub import _build_url, _scrub_referer
from .text import _clean_user_agent
from .timezone import valid_timezone
from .view import RequestView


class _Unread:
    """The type of :data:`UNREAD`."""


UNREAD = _Unread()
"""``timezone_cookie`` not given: the ``Cookie`` header is searched."""


def build_request_context(
    view: RequestView,
    config: ContextConfig,
    *,
    cookies: Mapping[str, str] | None = None,
) -> RequestContextInput:
    """The context of one request (SPEC section 5), ready for ``build_init_payload``.

    ``cookies`` may be passed when the integration has parsed them already; otherwise
    the ``cookie`` header is searched for the timezone cookie only. ``uuid`` and
    ``user_attributes`` are left ``None`` for the caller to fill; ``extra`` is ``None``.

    >>> view = RequestView("GET", "https", "shop.example", "/pricing", "source=google",
    ...                    {"referer": "https://google.com"}, "134.122.17.144")
    >>> ctx = build_request_context(view, ContextConfig())
    >>> ctx.url, ctx.referer, ctx.ip_address
    ('/pricing?source=google', 'https://google.com', '134.122.17.144')
    """
    get = request_context_dict(view, config, cookies=cookies).get
    return RequestContextInput(
        url=get("url"),
        referer=get("referer"),
        ip_address=get("ipAddress"),
        user_agent=get("userAgent"),
        locale=get("locale"),
        timezone=get("timezone"),
    )


def request_context_dict(
    view: RequestView,
    config: ContextConfig,
    *,
    cookies: Mapping[str, str] | None = None,
    timezone_cookie: str | _Unread | None = UNREAD,
) -> dict[str, str]:
    """:func:`build_request_context` in wire form (``RequestContextInput.to_context()``:
    camelCase keys, present only when known), built directly: the integrations' request
    path skips the dataclass and its conversion (~0.6 µs).

    ``timezone_cookie``: the raw value of the timezone cookie (``None``: absent) when
    the caller has read the ``Cookie`` header already (the integrations read it once per
    request, with the uuid cookie).

    Every value is a printable ``str`` bounded in length; the integrations send it
    without validating it again.
    """
    headers = view.headers
    matcher = config._matcher
    ctx: dict[str, str] = {"url": _build_url(view.path, view.query_string, matcher)}

    referer = headers.get("referer")
    if referer:
        referer = _scrub_referer(referer, matcher)
        if referer is not None:
            ctx["referer"] = referer
    ip = client_ip(view.client, headers, config)
    if ip is not None:
        ctx["ipAddress"] = ip
    user_agent = headers.get("user-agent")
    if user_agent:
        user_agent = _clean_user_agent(user_agent)
        if user_agent is not None:
            ctx["userAgent"] = user_agent
    locale = preferred_locale(headers.get("accept-language"))
    if locale is not None:
        ctx["locale"] = locale

    tz_raw: str | None
    if not isinstance(timezone_cookie, _Unread):
        tz_raw = timezone_cookie
    elif cookies is not None:
        tz_raw = cookies.get(config.timezone_cookie)
    else:
        tz_raw = find_cookie(headers.get("cookie"), config.timezone_cookie)
    timezone = valid_timezone(tz_raw) if tz_raw else None
    if timezone is None:
        tz_raw = headers.get(config.timezone_header)
        timezone = valid_timezone(tz_raw) if tz_raw else None
    if timezone is not None:
        ctx["timezone"] = timezone
    return ctx
