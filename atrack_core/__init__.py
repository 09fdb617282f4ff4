"""A-Track SDK core: options, payloads, the ``ATrackSdk`` client and storage.

Framework-free: importing this package imports no web framework.

>>> from atrack_core import ATrackSdk, Options, EventPayload
>>> sdk = ATrackSdk(Options("pub_xxxxx", disabled=True))
>>> sdk.init().is_new_user
True
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._call import Call
from ._errors import ATrackError, DeliveryError, KeyRejectedError, NoUserError, QueueFullError
from ._models import (
    Attributes,
    EventPayload,
    InitPayload,
    InitResult,
    RequestContextInput,
    User,
    UserContext,
    build_init_payload,
)
from ._options import Options
from ._request import (
    DEFAULT_SCRUB_PARAMS,
    FILTERED,
    ContextConfig,
    RequestView,
    build_request_context,
    parse_cookies,
)
from ._sdk import ATrackSdk
from ._storage import FileStorage, MemoryStorage, Storage
from ._version import __version__

if TYPE_CHECKING:
    from .redis import RedisStorage

__all__ = [
    "DEFAULT_SCRUB_PARAMS",
    "FILTERED",
    "ATrackError",
    "ATrackSdk",
    "Attributes",
    "Call",
    "ContextConfig",
    "DeliveryError",
    "EventPayload",
    "FileStorage",
    "InitPayload",
    "InitResult",
    "KeyRejectedError",
    "MemoryStorage",
    "NoUserError",
    "Options",
    "QueueFullError",
    "RedisStorage",
    "RequestContextInput",
    "RequestView",
    "Storage",
    "User",
    "UserContext",
    "__version__",
    "build_init_payload",
    "build_request_context",
    "parse_cookies",
]


def __getattr__(name: str) -> Any:
    # RedisStorage needs the optional `redis` package: import it only when asked for.
    if name == "RedisStorage":
        from .redis import RedisStorage

        return RedisStorage
    raise AttributeError(f"module 'atrack_core' has no attribute {name!r}")
