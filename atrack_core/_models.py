"""Public payload models: what callers hand to :class:`~atrack_core.ATrackSdk`.

They are plain dataclasses so that user code reads like the seed examples. Validation
happens when a model is handed to the SDK (in the caller's thread), not at construction,
because models are routinely built field by field.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

Attributes = dict[str, Any]
"""User or event attributes: string keys, JSON-compatible values."""

Mode = Literal["merge", "replace"]


@dataclass(slots=True)
class UserContext:
    """Who an ``init`` is about: a known ``uuid`` (or ``None`` to generate one)."""

    uuid: str | None = None
    attributes: Attributes | None = None


@dataclass(slots=True)
class InitPayload:
    """Argument of :meth:`ATrackSdk.init`.

    ``context`` is the request context (camelCase wire keys such as ``url`` or
    ``ipAddress``); ``attributes`` are merged over ``user.attributes``.
    """

    user: UserContext | None = None
    context: dict[str, Any] | None = None
    attributes: Attributes | None = None
    profile: dict[str, Any] | None = None
    mode: Mode = "merge"


@dataclass(slots=True)
class EventPayload:
    """Argument of :meth:`ATrackSdk.track`.

    ``uuid`` defaults to the SDK's current user; ``timestamp`` (a timezone-aware
    ``datetime``) defaults to the time of the ``track()`` call.
    """

    event: str
    uuid: str | None = None
    attributes: Attributes | None = None
    timestamp: datetime | None = None
    context: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class InitResult:
    """What :meth:`ATrackSdk.init` returns."""

    uuid: str
    is_new_user: bool


@dataclass(frozen=True, slots=True)
class User:
    """The SDK's current user, as :meth:`ATrackSdk.get_user` returns it."""

    uuid: str
    attributes: Attributes = field(default_factory=dict)


@dataclass(slots=True)
class RequestContextInput:
    """What is known about one request, turned into an :class:`InitPayload` by
    :func:`build_init_payload` (the Python form of the seed's ``build_rust_init_payload``).

    ``extra`` holds additional context keys sent as given.
    """

    url: str | None = None
    referer: str | None = None
    ip_address: str | None = None
    user_agent: str | None = None
    locale: str | None = None
    timezone: str | None = None
    uuid: str | None = None
    user_attributes: Attributes | None = None
    extra: dict[str, Any] | None = None

    def to_context(self) -> dict[str, Any]:
        """The wire ``context`` object: camelCase keys, present only when known."""
        ctx: dict[str, Any] = {}
        if self.url is not None:
            ctx["url"] = self.url
        if self.referer is not None:
            ctx["referer"] = self.referer
        if self.ip_address is not None:
            ctx["ipAddress"] = self.ip_address
        if self.user_agent is not None:
            ctx["userAgent"] = self.user_agent
        if self.locale is not None:
            ctx["locale"] = self.locale
        if self.timezone is not None:
            ctx["timezone"] = self.timezone
        if self.extra:
            for key, value in self.extra.items():
                ctx.setdefault(key, value)
        return ctx


def build_init_payload(request: RequestContextInput) -> InitPayload:
    """Turn a request's context into an :class:`InitPayload`.

    >>> p = build_init_payload(RequestContextInput(url="/pricing?source=google", uuid="u1"))
    >>> p.context, p.user.uuid
    ({'url': '/pricing?source=google'}, 'u1')
    """
    return InitPayload(
        user=UserContext(
            uuid=request.uuid,
            attributes=dict(request.user_attributes) if request.user_attributes else None,
        ),
        context=request.to_context(),
    )
