"""Bounds on what a request context holds and on how much of an input is read."""

from __future__ import annotations

# Bounds on what ends up in the context. The wire format sets no limits; these keep one
# request from blowing up a payload (the body limit is 256 KiB) and match what
# analytics back ends usually keep.
MAX_URL_LENGTH = 2048
MAX_REFERER_LENGTH = 2048
MAX_USER_AGENT_LENGTH = 512
MAX_LOCALE_LENGTH = 64

# Bounds on how much of an input is looked at. Past these, work would be wasted (the
# result is cut anyway) or the input is not something a browser sends.
_MAX_ACCEPT_LANGUAGE = 1024
_MAX_LANGUAGE_RANGES = 32
_MAX_FORWARDED = 4096
# A query is scrubbed before it is cut to MAX_URL_LENGTH, so a long secret does not push
# the parameters after it out; past this much, the rest is dropped unread.
_MAX_SCRUBBED = 16384
_MAX_HOPS = 32
_MAX_COOKIE_HEADER = 16384
_MAX_COOKIES = 256
_MAX_COOKIE_NAME = 256
_MAX_COOKIE_VALUE = 4096
_MAX_TIMEZONE = 64
_CACHE_SIZE = 4096
_MAX_CACHED_KEY = 64  # longer keys are computed, not cached: caches stay small
_MAX_CACHED_URL = 256
_MAX_CACHED_TEXT = 1024
