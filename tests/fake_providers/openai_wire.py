"""OpenAI chat completions as the fake speaks it: request checks, response and error bodies.

The checks are the ones the real API applies to a conversation (a tool message answers a call of
the assistant message before it; every call is answered before the conversation moves on), so a
mapping mistake in the adapter fails a test with a 400 instead of passing against a lenient fake.
Bodies follow the API reference, with every field the SDK models declare.
"""

from __future__ import annotations

import json
import time
from typing import Any

from .brain import Decision, ToolOutcome, digest, json_pieces, respond_to_results, respond_to_user, text_pieces

PATH = "/v1/chat/completions"
ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})


class OpenAIRequestError(Exception):
    """A request the real API would refuse with 400 invalid_request_error."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


def check_auth(headers: dict[str, str]) -> str | None:
    """The API key of ``Authorization: Bearer <key>``, or None when there is none."""
    scheme, _, key = headers.get("authorization", "").partition(" ")
    return key.strip() or None if scheme.lower() == "bearer" else None


def validate(body: Any) -> None:
    """Refuse what chat completions refuses, with its wording."""
    if not isinstance(body, dict):
        raise OpenAIRequestError("We could not parse the JSON body of your request.")
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise OpenAIRequestError("you must provide a model parameter", "model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise OpenAIRequestError("[] is too short - 'messages'", "messages")
    open_calls: set[str] = set()
    for index, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if role not in ROLES:
            raise OpenAIRequestError(f"Invalid value: {role!r}.", f"messages.[{index}].role")
        if role == "tool":
            call_id = message.get("tool_call_id")
            if call_id not in open_calls:
                raise OpenAIRequestError(
                    "Invalid parameter: messages with role 'tool' must be a response to a preceeding message "
                    "with 'tool_calls'.",
                    f"messages.[{index}].role",
                )
            open_calls.discard(call_id)
            if not isinstance(message.get("content"), str):
                raise OpenAIRequestError("Invalid type for tool message content.", f"messages.[{index}].content")
            continue
        if open_calls:
            raise OpenAIRequestError(
                "An assistant message with 'tool_calls' must be followed by tool messages responding to each "
                f"'tool_call_id'. The following tool_call_ids did not have response messages: "
                f"{', '.join(sorted(open_calls))}",
                "messages",
            )
        if role == "assistant":
            open_calls = _calls_of(message, index)
        elif not isinstance(message.get("content"), str):
            raise OpenAIRequestError("Invalid type for message content.", f"messages.[{index}].content")
    if open_calls:
        raise OpenAIRequestError("The last assistant message's tool calls have no responses.", "messages")
    if body.get("stream_options") is not None and body.get("stream") is not True:
        raise OpenAIRequestError(
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.", "stream_options"
        )
    for index, tool in enumerate(body.get("tools") or []):
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(function, dict) or tool.get("type") != "function" or not function.get("name"):
            raise OpenAIRequestError("Invalid tool definition.", f"tools[{index}]")


def _calls_of(message: dict[str, Any], index: int) -> set[str]:
    calls = message.get("tool_calls") or []
    if message.get("content") is None and not calls:
        raise OpenAIRequestError(
            "Invalid value for 'content': expected a string, got null.", f"messages.[{index}].content"
        )
    ids: set[str] = set()
    for call in calls:
        function = call.get("function", {})
        if call.get("type") != "function" or not call.get("id") or not isinstance(function.get("arguments"), str):
            raise OpenAIRequestError("Invalid tool call.", f"messages.[{index}].tool_calls")
        ids.add(call["id"])
    return ids


def decide(body: dict[str, Any]) -> Decision:
    """Answer the last user message, or the tool results that end the conversation."""
    messages: list[dict[str, Any]] = body["messages"]
    offered = {tool["function"]["name"] for tool in body.get("tools") or []}
    if messages[-1]["role"] == "tool":
        names: dict[str, str] = {}
        outcomes: list[ToolOutcome] = []
        for message in messages:
            for call in message.get("tool_calls") or []:
                names[call["id"]] = call["function"]["name"]
        trailing: list[dict[str, Any]] = []
        for message in reversed(messages):
            if message["role"] != "tool":
                break
            trailing.insert(0, message)
        for message in trailing:
            content = message["content"]
            outcomes.append(ToolOutcome(names[message["tool_call_id"]], content, is_error=_is_error(content)))
        return respond_to_results(outcomes)
    users = [m["content"] for m in messages if m["role"] == "user"]
    return respond_to_user(users[-1] if users else "", offered)


def _is_error(content: str) -> bool:
    """Chat completions has no error flag on tool messages; chatcore sends ``{"error": ...}``."""
    try:
        decoded = json.loads(content)
    except ValueError:
        return False
    return isinstance(decoded, dict) and set(decoded) == {"error"}


def completion(body: dict[str, Any], decision: Decision, *, cached_tokens: int = 0) -> dict[str, Any]:
    """A complete ``chat.completion`` object, as the API returns it.

    Ids come from the request (``digest``), so the same request streamed or not gets the same reply.
    ``cached_tokens`` of the prompt are reported as read from OpenAI's prompt cache (part of ``prompt_tokens``).
    """
    tool_calls = [
        {
            "id": f"call_{digest([body['messages'], index], 24)}",
            "type": "function",
            "function": {
                "name": call.name,
                "arguments": json.dumps(call.arguments, separators=(",", ":")),
            },  # compact, as OpenAI sends them
        }
        for index, call in enumerate(decision.calls)
    ]
    message: dict[str, Any] = {
        "role": "assistant",
        "content": decision.text or None,
        "refusal": None,
        "annotations": [],
    }
    if tool_calls:
        message["tool_calls"] = tool_calls
    prompt_tokens = len(json.dumps(body["messages"])) // 4
    completion_tokens = max(1, len(json.dumps(message)) // 4)
    return {
        "id": f"chatcmpl-{digest(body['messages'], 30)}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body["model"],
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": "tool_calls" if tool_calls else "stop",
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": min(cached_tokens, prompt_tokens), "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": 0,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        },
        "service_tier": "default",
        "system_fingerprint": "fp_fake0001",
    }


def chunks(whole: dict[str, Any], *, include_usage: bool, piece_chars: int | None = None) -> list[dict[str, Any]]:
    """The ``chat.completion.chunk`` objects that stream ``whole`` (a ``completion``), as the API sends them.

    The first chunk carries the role; text arrives in pieces, each tool call as a first piece with its id and
    name and then its arguments in pieces; the last chunk with choices carries the finish reason. With
    ``stream_options.include_usage`` every chunk has ``"usage": null`` and one more chunk, without choices, the
    usage.
    """
    head = {key: whole[key] for key in ("id", "created", "model", "service_tier", "system_fingerprint")}
    head["object"] = "chat.completion.chunk"
    extra: dict[str, Any] = {"usage": None} if include_usage else {}
    choice = whole["choices"][0]
    message = choice["message"]
    calls = message.get("tool_calls") or []
    out: list[dict[str, Any]] = []

    def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> None:
        out.append(
            {
                **head,
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
                **extra,
            }
        )

    first: dict[str, Any] = {"role": "assistant", "content": "" if message["content"] else None, "refusal": None}
    if message["content"] or not calls:
        chunk(first)
        first = {}
        for piece in text_pieces(message["content"] or "", piece_chars):
            chunk({"content": piece})
    for index, call in enumerate(calls):
        start = {
            "index": index,
            "id": call["id"],
            "type": "function",
            "function": {**call["function"], "arguments": ""},
        }
        chunk({**first, "tool_calls": [start]})
        first = {}
        for piece in json_pieces(call["function"]["arguments"]):
            chunk({"tool_calls": [{"index": index, "function": {"arguments": piece}}]})
    chunk({}, choice["finish_reason"])
    if include_usage:
        out.append({**head, "choices": [], "usage": whole["usage"]})
    return out


def event_stream(chunks: list[dict[str, Any]], *, done: bool = True) -> bytes:
    """Server-sent events as OpenAI writes them: one ``data:`` line per chunk, then ``data: [DONE]``."""
    text = "".join(f"data: {json.dumps(chunk)}\n\n" for chunk in chunks)
    return (text + ("data: [DONE]\n\n" if done else "")).encode()


STREAM_ERROR = {"error": {"message": "The server had an error while processing your request.", "type": "server_error"}}
"""What OpenAI sends inside a stream that fails after it began (``data: {"error": ...}``)."""


def error_body(message: str, error_type: str, code: str | None = None, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


def failure(kind: str, body: Any, api_key: str | None) -> tuple[int, dict[str, Any]]:
    """The status and body the API sends for an injected failure ``kind``."""
    model = body.get("model", "gpt-4o-mini") if isinstance(body, dict) else "gpt-4o-mini"
    match kind:
        case "rate_limit":
            return 429, error_body(
                f"Rate limit reached for {model} in organization org-fake on requests per min (RPM): "
                "Limit 3, Used 3, Requested 1. Please try again in 7s.",
                "requests",
                "rate_limit_exceeded",
            )
        case "server_error":
            return 500, error_body(
                "The server had an error while processing your request. Sorry about that!", "server_error"
            )
        case "unauthorized":
            # The real API masks the key; a careless compatible server might not, so the fake quotes it whole.
            return 401, error_body(
                f"Incorrect API key provided: {api_key}. You can find your API key at "
                "https://platform.openai.com/account/api-keys.",
                "invalid_request_error",
                "invalid_api_key",
            )
        case "context_length":
            return 400, error_body(
                "This model's maximum context length is 128000 tokens. However, your messages resulted in 131072 "
                "tokens. Please reduce the length of the messages.",
                "invalid_request_error",
                "context_length_exceeded",
                "messages",
            )
    raise ValueError(f"unknown failure kind {kind!r}")
