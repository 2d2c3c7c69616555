"""Helpers both provider adapters use when they turn an SDK error into a domain error.

Kept free of any SDK import so each provider module keeps its own SDK's types to itself.
"""

from __future__ import annotations

import email.utils
import math
import re
import time
from collections.abc import Mapping

DEFAULT_RETRY_AFTER = 10
"""Seconds a client is told to wait when a rate-limited provider gave no usable Retry-After."""

_SAFE_TOKEN = re.compile(r"[A-Za-z0-9_.\-]{1,64}")


def retry_after_seconds(headers: Mapping[str, str], default: int = DEFAULT_RETRY_AFTER) -> int:
    """Whole seconds from a Retry-After header (seconds or an HTTP date), else ``default``."""
    value = headers.get("retry-after")
    if not value:
        return default
    try:
        seconds = float(value)
    except ValueError:
        parsed = email.utils.parsedate_tz(value)
        if parsed is None:
            return default
        seconds = email.utils.mktime_tz(parsed) - time.time()
    if not math.isfinite(seconds):
        return default
    return max(1, math.ceil(seconds))


def safe_token(value: object) -> str | None:
    """A provider's short error code, or None when it is missing or not a plain identifier (never free text)."""
    return value if isinstance(value, str) and _SAFE_TOKEN.fullmatch(value) else None
