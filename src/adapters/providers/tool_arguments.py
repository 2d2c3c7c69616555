"""A tool call's arguments as a model wrote them, made into the JSON object a tool is called with.

Models sometimes emit broken JSON (often when cut off by ``max_tokens``). Dropping the call would
leave the model waiting for a result; guessing would run a tool with made-up arguments. Passing
``{"_invalid_json": raw}`` lets the tool's schema validation reject it, so the model receives an
error result naming the problem and can retry with valid arguments. Both provider adapters read
arguments this way: OpenAI's as JSON text (or an object, from a lenient server), Anthropic's as an
object (or, streamed, as the JSON text its pieces add up to).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Final

from chatcore.model import JsonValue

INVALID_JSON_KEY: Final = "_invalid_json"
"""The key under which arguments that are not a JSON object are passed on, as their text."""


def tool_arguments(value: object) -> dict[str, JsonValue]:
    """``value`` as a JSON object: an object as it is, JSON text parsed (empty text is no arguments), and
    anything else — text that is not a JSON object, or another JSON value — under ``INVALID_JSON_KEY``."""
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, str):
        if not value.strip():
            return {}
        try:
            parsed = json.loads(value)
        except ValueError:
            return {INVALID_JSON_KEY: value}
        return parsed if isinstance(parsed, dict) else {INVALID_JSON_KEY: value}
    return {INVALID_JSON_KEY: json.dumps(value, ensure_ascii=False, default=str)}
