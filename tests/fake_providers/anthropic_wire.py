"""The Anthropic Messages API as the fake speaks it: request checks, response and error bodies.

The checks are the Messages API's rules for a conversation: it starts with a user message, roles
alternate, every ``tool_use`` is answered by a ``tool_result`` in the very next (user) message with
the results first, no ``tool_result`` answers a call the previous message did not make, no text
block is empty, and the system prompt travels apart. A mapping mistake in the adapter therefore
fails a test with the API's 400 instead of passing against a lenient fake.
"""

from __future__ import annotations

import json
from typing import Any

from .brain import Decision, ToolOutcome, digest, json_pieces, respond_to_results, respond_to_user, text_pieces

PATH = "/v1/messages"
PREAMBLE = "I'll take care of that."
"""Claude usually says a few words before its tool calls; the adapter must keep them beside the calls."""


class AnthropicRequestError(Exception):
    """A request the real API would refuse with 400 invalid_request_error."""


def check_auth(headers: dict[str, str]) -> str | None:
    """The API key, or None when it or the required ``anthropic-version`` header is missing.

    The key arrives as ``x-api-key`` (SDK 0.x/1.x) or as ``Authorization: Bearer`` (SDK 2.x).
    """
    scheme, _, bearer = headers.get("authorization", "").partition(" ")
    key = headers.get("x-api-key", "").strip() or (bearer.strip() if scheme.lower() == "bearer" else "")
    return key if key and headers.get("anthropic-version") else None


def validate(body: Any) -> None:
    """Refuse what the Messages API refuses, with its wording."""
    if not isinstance(body, dict):
        raise AnthropicRequestError("Invalid JSON body")
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise AnthropicRequestError("model: Field required")
    max_tokens = body.get("max_tokens")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise AnthropicRequestError("max_tokens: Field required")
    if "system" in body and not isinstance(body["system"], str | list):
        raise AnthropicRequestError("system: Input should be a valid list")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise AnthropicRequestError("messages: at least one message is required")
    previous_calls: set[str] = set()
    for index, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if role not in ("user", "assistant"):
            raise AnthropicRequestError(f"messages.{index}.role: Input should be 'user' or 'assistant'")
        expected = "user" if index % 2 == 0 else "assistant"
        if role != expected:
            raise AnthropicRequestError(
                f"messages.{index}: roles must alternate between 'user' and 'assistant', starting with 'user'"
            )
        blocks = message.get("content")
        if isinstance(blocks, str):
            blocks = [{"type": "text", "text": blocks}]
        if not isinstance(blocks, list) or not blocks:
            raise AnthropicRequestError(f"messages.{index}: all messages must have non-empty content")
        if role == "user":
            _check_results(index, blocks, previous_calls)
            previous_calls = set()
        else:
            previous_calls = _check_assistant(index, blocks)
    for index, tool in enumerate(body.get("tools") or []):
        if not isinstance(tool, dict) or not tool.get("name") or not isinstance(tool.get("input_schema"), dict):
            raise AnthropicRequestError(f"tools.{index}: a tool needs a name and an input_schema")


def _check_text(index: int, block: dict[str, Any]) -> None:
    if not str(block.get("text", "")).strip():
        raise AnthropicRequestError(f"messages.{index}: text content blocks must contain non-whitespace text")


def _check_results(index: int, blocks: list[Any], calls: set[str]) -> None:
    answered: set[str] = set()
    seen_other = False
    for block in blocks:
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "tool_result":
            if seen_other:
                raise AnthropicRequestError(
                    f"messages.{index}: tool_result blocks must come first in the content, before any text"
                )
            call_id = block.get("tool_use_id")
            if call_id not in calls:
                raise AnthropicRequestError(
                    f"messages.{index}.content: unexpected `tool_use_id` found in `tool_result` blocks: {call_id}. "
                    "Each `tool_result` block must have a corresponding `tool_use` block in the previous message."
                )
            answered.add(call_id)
        elif kind == "text":
            _check_text(index, block)
            seen_other = True
        else:
            raise AnthropicRequestError(f"messages.{index}.content: unexpected block type {kind!r} in a user message")
    missing = calls - answered
    if missing:
        raise AnthropicRequestError(
            f"messages.{index}: `tool_use` ids were found without `tool_result` blocks immediately after: "
            f"{', '.join(sorted(missing))}. Each `tool_use` block must have a corresponding `tool_result` block "
            "in the next message."
        )


def _check_assistant(index: int, blocks: list[Any]) -> set[str]:
    calls: set[str] = set()
    for block in blocks:
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            _check_text(index, block)
        elif kind == "tool_use":
            if not block.get("id") or not block.get("name") or not isinstance(block.get("input"), dict):
                raise AnthropicRequestError(f"messages.{index}.content: a tool_use needs an id, a name and an input")
            calls.add(block["id"])
        else:
            raise AnthropicRequestError(f"messages.{index}.content: unexpected block type {kind!r}")
    if calls and index == 0:
        raise AnthropicRequestError("messages.0: the first message must use the user role")
    return calls


def decide(body: dict[str, Any]) -> Decision:
    """Answer the last user message: its tool results if it carries any, else its text."""
    messages: list[dict[str, Any]] = body["messages"]
    offered = {tool["name"] for tool in body.get("tools") or []}
    last = _blocks(messages[-1])
    results = [block for block in last if block.get("type") == "tool_result"]
    if results:
        names = {block["id"]: block["name"] for block in _blocks(messages[-2]) if block.get("type") == "tool_use"}
        return respond_to_results(
            [
                ToolOutcome(names[block["tool_use_id"]], _result_text(block), bool(block.get("is_error")))
                for block in results
            ]
        )
    text = "\n".join(block["text"] for block in last if block.get("type") == "text")
    return respond_to_user(text, offered)


def _blocks(message: dict[str, Any]) -> list[dict[str, Any]]:
    content = message["content"]
    return [{"type": "text", "text": content}] if isinstance(content, str) else list(content)


def _result_text(block: dict[str, Any]) -> str:
    content = block.get("content", "")
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") for part in content if isinstance(part, dict))


def message(
    body: dict[str, Any], decision: Decision, *, cache_read_tokens: int = 0, cache_write_tokens: int = 0
) -> dict[str, Any]:
    """A complete ``message`` object, as the API returns it.

    Ids come from the request (``digest``), so the same request streamed or not gets the same reply. Of the
    prompt's tokens, ``cache_read_tokens`` are reported as read from the prompt cache and ``cache_write_tokens``
    as written to it; ``input_tokens`` is the rest, as the API counts it (neither cache part included).
    """
    content: list[dict[str, Any]] = []
    text = decision.text or (PREAMBLE if decision.calls else "")
    if text:
        content.append({"type": "text", "text": text, "citations": None})
    content.extend(
        {
            "type": "tool_use",
            "id": f"toolu_01{digest([body['messages'], index], 22)}",
            "name": call.name,
            "input": call.arguments,
        }
        for index, call in enumerate(decision.calls)
    )
    prompt_tokens = len(json.dumps(body["messages"])) // 4
    cache_read = min(cache_read_tokens, prompt_tokens)
    cache_write = min(cache_write_tokens, prompt_tokens - cache_read)
    return {
        "id": f"msg_01{digest(body['messages'], 22)}",
        "type": "message",
        "role": "assistant",
        "model": body["model"],
        "content": content,
        "stop_reason": "tool_use" if decision.calls else "end_turn",
        "stop_sequence": None,
        "usage": {
            "input_tokens": prompt_tokens - cache_read - cache_write,
            "output_tokens": max(1, len(json.dumps(content)) // 4),
            "cache_creation_input_tokens": cache_write,
            "cache_read_input_tokens": cache_read,
            "service_tier": "standard",
        },
    }


def _call_id(body: dict[str, Any], index: int) -> str:
    return f"toolu_01{digest([body['messages'], index], 22)}"


def events(whole: dict[str, Any], *, piece_chars: int | None = None) -> list[dict[str, Any]]:
    """The stream of ``whole`` (a ``message``), as the API sends it with ``"stream": true``.

    ``message_start`` carries the message without content and the input usage (``output_tokens`` 1 so far);
    each block is ``content_block_start``, its ``text_delta`` or ``input_json_delta`` pieces (a tool's input
    starting with an empty one), ``content_block_stop``; a ``ping`` follows the first block's start;
    ``message_delta`` brings the stop reason and the final ``output_tokens``; ``message_stop`` ends it.
    """
    usage = whole["usage"]
    start = {**whole, "content": [], "stop_reason": None, "stop_sequence": None, "usage": {**usage, "output_tokens": 1}}
    out: list[dict[str, Any]] = [{"type": "message_start", "message": start}]
    for index, block in enumerate(whole["content"]):
        if block["type"] == "text":
            out.append({"type": "content_block_start", "index": index, "content_block": {**block, "text": ""}})
            deltas = [{"type": "text_delta", "text": piece} for piece in text_pieces(block["text"], piece_chars)]
        else:
            out.append({"type": "content_block_start", "index": index, "content_block": {**block, "input": {}}})
            arguments = json.dumps(block["input"])
            deltas = [{"type": "input_json_delta", "partial_json": p} for p in ["", *json_pieces(arguments)]]
        if index == 0:
            out.append({"type": "ping"})
        out.extend({"type": "content_block_delta", "index": index, "delta": delta} for delta in deltas)
        out.append({"type": "content_block_stop", "index": index})
    out.append(
        {
            "type": "message_delta",
            "delta": {"stop_reason": whole["stop_reason"], "stop_sequence": None},
            "usage": {"output_tokens": usage["output_tokens"]},
        }
    )
    out.append({"type": "message_stop"})
    return out


def event_stream(events: list[dict[str, Any]]) -> bytes:
    """Server-sent events as Anthropic writes them: ``event:`` names the type, ``data:`` carries the JSON."""
    return "".join(f"event: {event['type']}\ndata: {json.dumps(event)}\n\n" for event in events).encode()


STREAM_ERROR = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
"""The ``error`` event of a stream that fails after it began."""


def error_body(error_type: str, message: str, request_id: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": error_type, "message": message}, "request_id": request_id}


def failure(kind: str, api_key: str | None, request_id: str) -> tuple[int, dict[str, Any]]:
    """The status and body the API sends for an injected failure ``kind``."""
    match kind:
        case "rate_limit":
            return 429, error_body(
                "rate_limit_error",
                "This request would exceed the rate limit for your organization of 50 requests per minute. "
                "For details, refer to: https://docs.claude.com/en/api/rate-limits.",
                request_id,
            )
        case "server_error":
            return 500, error_body("api_error", "Internal server error", request_id)
        case "unauthorized":
            # The real API says only "invalid x-api-key"; the fake quotes the key to prove it is never passed on.
            return 401, error_body("authentication_error", f"invalid x-api-key: {api_key}", request_id)
        case "context_length":
            return 400, error_body(
                "invalid_request_error", "prompt is too long: 208310 tokens > 200000 maximum", request_id
            )
    raise ValueError(f"unknown failure kind {kind!r}")
