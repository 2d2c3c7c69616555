"""The floor: the least work a chat turn needs, so chatcore's figures can be read as ratios to it.

A bare ASGI app with the same HTTP contract as chatcore's ``POST /api/{user_id}/chat`` and the same
tables, built from raw asyncpg, httpx2, PyJWT and msgspec. A turn is

1. decode the HS256 token and check its subject against the path;
2. one query for the conversation's ownership and its history window (none for a new conversation);
3. one model call (two in a tool turn, with the ``add_task`` insert between them);
4. one statement, so one transaction, that appends every message of the turn and bumps ``last_seq``.

With ``Accept: text/event-stream`` the same turn streams (the least a streamed turn needs): the
model is called with ``stream: true``, each text piece of its stream is forwarded at once as an SSE
``delta`` event (``{"text": …}``), and when the reply is complete the turn's messages are stored
with the same one statement and a ``done`` event carries what the JSON reply would have (an
``error`` event with ``status_code`` and ``detail`` instead, once the stream has begun). No event
log, no resume, no stop: only what reaches the client and the stored turn.

No framework, no validation beyond what a correct reply needs, no logging: anything chatcore does
beyond this is its overhead. It reads the same environment as ``chatcore serve`` (``DATABASE_URL``,
``BETTER_AUTH_SECRET``, ``OPENAI_BASE_URL``, ``OPENAI_API_KEY``, ``CHATCORE_MODEL``,
``CHATCORE_HISTORY_LIMIT``, ``CHATCORE_MAX_TOOL_STEPS``, ``CHATCORE_DB_POOL_SIZE``,
``CHATCORE_DB_MAX_OVERFLOW``).

The model client is httpx2, the fork the OpenAI SDK (so chatcore) uses, on the same transport as
chatcore's (``SpreadConnectionPools``): a single httpx2 pool probes every idle connection's socket on
each request, which at 32 concurrent turns cost the floor 0.9 ms of CPU a turn, more than its
database work, and would make chatcore's ratios measure httpx2's pool rather than chatcore.
A streamed model call is read with aiohttp, chatcore's default transport for model calls
(``CHATCORE_LLM_HTTP=aiohttp``) and the cheapest well-kept client per chunk (about a third of
httpx2's CPU): the floor is the least a streamed turn needs, and a stream is a hundred chunks or more.

Run: ``python -m bench.floor --port 9200 [--workers N]``.
"""

from __future__ import annotations

import argparse
import functools
import os
import re
import uuid
from collections.abc import Awaitable, Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, TypeAlias

import aiohttp
import asyncpg  # type: ignore[import-untyped]
import httpx2
import jwt
import msgspec

from bench import sse
from chatcore.adapters.providers.transports import SDK_LIMITS, SpreadConnectionPools

Scope: TypeAlias = MutableMapping[str, Any]
Message: TypeAlias = MutableMapping[str, Any]
Receive: TypeAlias = Callable[[], Awaitable[Message]]
Send: TypeAlias = Callable[[Message], Awaitable[None]]
Row: TypeAlias = Mapping[str, Any]
OnText: TypeAlias = Callable[[str], Awaitable[None]]
Complete: TypeAlias = Callable[[list[dict[str, Any]]], Awaitable[dict[str, Any]]]
"""One model call: the context in, the assistant's message (``content``, ``tool_calls``) out."""

MAX_BODY_BYTES: Final = 256 * 1024
CHAT_PATH: Final = re.compile(r"/api/([^/]+)/chat")

SYSTEM_PROMPT: Final = (
    "You are a helpful todo assistant. You manage the user's task list with the tools you are given: "
    "add_task, list_tasks, complete_task, delete_task and update_task. "
    "When the user refers to a task by name, call list_tasks first to find its id. "
    "Confirm every change in one short, friendly sentence, and never invent task ids. "
    "The user is {email}. Today is {today}."
)


def _tool(name: str, description: str, properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    parameters = {"type": "object", "properties": properties, "required": required, "additionalProperties": False}
    return {"type": "function", "function": {"name": name, "description": description, "parameters": parameters}}


_TASK_ID: Final = {"type": "integer", "minimum": 1, "description": "The task's id, as shown by list_tasks."}
TOOLS: Final = [
    _tool(
        "add_task",
        "Create a new task on the user's todo list. Use a short imperative title such as 'Buy groceries'; "
        "put any extra detail in description. Returns the new task's id.",
        {
            "title": {"type": "string", "minLength": 1, "maxLength": 500, "description": "Short title of the task."},
            "description": {"type": "string", "maxLength": 5000, "description": "Optional longer details."},
        },
        ["title"],
    ),
    _tool(
        "list_tasks",
        "List the user's tasks, oldest first, with their ids.",
        {"status": {"type": "string", "enum": ["all", "pending", "completed"], "default": "all"}},
        [],
    ),
    _tool("complete_task", "Mark one of the user's tasks as completed.", {"task_id": _TASK_ID}, ["task_id"]),
    _tool("delete_task", "Delete one of the user's tasks permanently.", {"task_id": _TASK_ID}, ["task_id"]),
    _tool(
        "update_task",
        "Change the title and/or the description of one of the user's tasks.",
        {"task_id": _TASK_ID, "title": {"type": "string"}, "description": {"type": "string"}},
        ["task_id"],
    ),
]
"""The same five tools chatcore offers, so both servers send the model requests of the same size."""

WINDOW_SQL: Final = """
SELECT m.role, m.content, m.tool_calls, m.tool_call_id
FROM conversations AS c
LEFT JOIN LATERAL (
    SELECT role, content, tool_calls, tool_call_id, seq FROM messages
    WHERE conversation_id = c.id ORDER BY seq DESC LIMIT $3
) AS m ON true
WHERE c.id = $1 AND c.user_id = $2
ORDER BY m.seq
"""
"""Ownership and the history window in one round trip: no row at all means not found (or not yours)."""

APPEND_SQL: Final = """
WITH c AS (
    UPDATE conversations SET last_seq = last_seq + cardinality($5::uuid[]), updated_at = $3
    WHERE id = $1 AND user_id = $2
    RETURNING last_seq - cardinality($5::uuid[]) AS base
)
INSERT INTO messages (id, conversation_id, seq, role, content, tool_calls, tool_call_id, is_error, status, turn_id,
                      created_at)
SELECT m.id, $1, (c.base + m.n)::int, m.role, m.content, m.tool_calls, m.tool_call_id, m.is_error, 'complete', $4, $3
FROM c, unnest($5::uuid[], $6::text[], $7::text[], $8::jsonb[], $9::text[], $10::bool[])
    WITH ORDINALITY AS m(id, role, content, tool_calls, tool_call_id, is_error, n)
RETURNING id
"""
"""Bumping ``last_seq`` row-locks the conversation, so concurrent turns get distinct sequence numbers."""
CREATE_SQL: Final = """
WITH c AS (
    INSERT INTO conversations (id, user_id, title, created_at, updated_at, last_seq)
    VALUES ($1, $2, $11, $3, $3, cardinality($5::uuid[]))
    RETURNING 0 AS base
)
INSERT INTO messages (id, conversation_id, seq, role, content, tool_calls, tool_call_id, is_error, status, turn_id,
                      created_at)
SELECT m.id, $1, (c.base + m.n)::int, m.role, m.content, m.tool_calls, m.tool_call_id, m.is_error, 'complete', $4, $3
FROM c, unnest($5::uuid[], $6::text[], $7::text[], $8::jsonb[], $9::text[], $10::bool[])
    WITH ORDINALITY AS m(id, role, content, tool_calls, tool_call_id, is_error, n)
RETURNING id
"""
ADD_TASK_SQL: Final = (
    "INSERT INTO tasks (user_id, title, description, completed, created_at, updated_at) "
    "VALUES ($1, $2, $3, false, $4, $4) RETURNING id"
)


class ChatIn(msgspec.Struct):
    message: str
    conversation_id: uuid.UUID | None = None


class _FunctionPiece(msgspec.Struct):
    name: str | None = None
    arguments: str | None = None


class _ToolCallPiece(msgspec.Struct):
    index: int
    id: str | None = None
    function: _FunctionPiece | None = None


class _Delta(msgspec.Struct):
    content: str | None = None
    tool_calls: list[_ToolCallPiece] | None = None


class _ChunkChoice(msgspec.Struct):
    delta: _Delta


class _Chunk(msgspec.Struct):
    """The part of an OpenAI ``chat.completion.chunk`` a turn uses; msgspec skips the rest without building it."""

    choices: list[_ChunkChoice]


_decode_chunk = msgspec.json.Decoder(_Chunk).decode


class HttpError(Exception):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


@dataclass(frozen=True, slots=True)
class FloorSettings:
    dsn: str
    secret: bytes = field(repr=False)
    model_url: str
    api_key: str = field(default="bench", repr=False)
    model: str = "gpt-4o-mini"
    history_limit: int = 50
    max_tool_steps: int = 8
    max_tokens: int = 1024
    pool_size: int = 30
    """As many connections as chatcore's SQLAlchemy pool may open: ``CHATCORE_DB_POOL_SIZE`` plus overflow."""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> FloorSettings:
        env = os.environ if env is None else env
        dsn = env["DATABASE_URL"].replace("postgresql+asyncpg://", "postgresql://", 1)
        base = env.get("OPENAI_BASE_URL", "http://127.0.0.1:9100/v1").rstrip("/")
        return cls(
            dsn=dsn,
            secret=env["BETTER_AUTH_SECRET"].encode(),
            model_url=f"{base}/chat/completions",
            api_key=env.get("OPENAI_API_KEY", "bench"),
            model=env.get("CHATCORE_MODEL", "gpt-4o-mini"),
            history_limit=int(env.get("CHATCORE_HISTORY_LIMIT", "50")),
            max_tool_steps=int(env.get("CHATCORE_MAX_TOOL_STEPS", "8")),
            pool_size=int(env.get("CHATCORE_DB_POOL_SIZE", "30")) + int(env.get("CHATCORE_DB_MAX_OVERFLOW", "0")),
        )


@dataclass(slots=True)
class _Messages:
    """The messages a turn appends, as the column arrays the append statement takes."""

    ids: list[uuid.UUID] = field(default_factory=list)
    roles: list[str] = field(default_factory=list)
    contents: list[str] = field(default_factory=list)
    tool_calls: list[str | None] = field(default_factory=list)
    tool_call_ids: list[str | None] = field(default_factory=list)
    errors: list[bool] = field(default_factory=list)

    def add(self, role: str, content: str, tool_calls: str | None = None, tool_call_id: str | None = None) -> uuid.UUID:
        message_id = uuid.uuid4()
        self.ids.append(message_id)
        self.roles.append(role)
        self.contents.append(content)
        self.tool_calls.append(tool_calls)
        self.tool_call_ids.append(tool_call_id)
        self.errors.append(False)
        return message_id


def model_messages(rows: Sequence[Row]) -> list[dict[str, Any]]:
    """Stored rows (oldest first) as OpenAI messages; a window never starts with a tool result."""
    messages: list[dict[str, Any]] = []
    for row in rows:
        role = row["role"]
        if role is None or (role == "tool" and not messages):
            continue
        if role == "assistant" and row["tool_calls"]:
            calls = msgspec.json.decode(row["tool_calls"])
            messages.append(
                {
                    "role": "assistant",
                    "content": row["content"] or None,
                    "tool_calls": [
                        {
                            "id": call["id"],
                            "type": "function",
                            "function": {
                                "name": call["name"],
                                "arguments": msgspec.json.encode(call["arguments"]).decode(),
                            },
                        }
                        for call in calls
                    ],
                }
            )
        elif role == "tool":
            messages.append({"role": "tool", "tool_call_id": row["tool_call_id"], "content": row["content"]})
        else:
            messages.append({"role": role, "content": row["content"]})
    return messages


async def _keep_session(connection: asyncpg.Connection) -> None:
    """The pool's reset on release: nothing. The floor never changes a session (no SET, LISTEN or advisory
    lock, no transaction left open), so asyncpg's default reset would only add a round trip to every query."""


class FloorApp:
    """The ASGI app; its pool and HTTP client live from lifespan startup to shutdown."""

    def __init__(self, settings: FloorSettings) -> None:
        self.settings = settings
        self._pool: asyncpg.Pool[Any] | None = None
        self._http: httpx2.AsyncClient | None = None
        self._streams: aiohttp.ClientSession | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        try:
            match = CHAT_PATH.fullmatch(scope["path"])
            if match and scope["method"] == "POST" and _accepts_event_stream(scope):
                await self.chat_stream(match.group(1), scope, receive, send)
            elif match and scope["method"] == "POST":
                await _respond(send, 200, await self.chat(match.group(1), scope, receive))
            elif scope["path"] == "/health" and scope["method"] == "GET":
                await _respond(send, 200, {"status": "ok"})
            else:
                raise HttpError(404, "Not found")
        except HttpError as error:
            await _respond(send, error.status, {"status_code": error.status, "detail": error.detail})

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self._pool = await asyncpg.create_pool(
                    self.settings.dsn, min_size=1, max_size=self.settings.pool_size, reset=_keep_session
                )
                self._http = httpx2.AsyncClient(
                    timeout=60.0,
                    transport=SpreadConnectionPools(),
                    trust_env=False,
                )
                self._streams = aiohttp.ClientSession(
                    connector=aiohttp.TCPConnector(limit=SDK_LIMITS.max_connections or 0),
                    timeout=aiohttp.ClientTimeout(total=None, sock_connect=60, sock_read=60),
                    trust_env=False,
                )
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self._streams is not None:
                    await self._streams.close()
                if self._http is not None:
                    await self._http.aclose()
                if self._pool is not None:
                    await self._pool.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    def _claims(self, scope: Scope, user_id: str) -> dict[str, Any]:
        authorization = next((v for k, v in scope["headers"] if k == b"authorization"), b"").decode("latin-1")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise HttpError(401, "Missing or invalid bearer token")
        try:
            claims: dict[str, Any] = jwt.decode(
                token, self.settings.secret, algorithms=["HS256"], options={"require": ["exp", "sub"]}, leeway=30
            )
        except jwt.PyJWTError:
            raise HttpError(401, "Missing or invalid bearer token") from None
        if claims["sub"] != user_id:
            raise HttpError(403, "Access denied")
        return claims

    async def chat(self, user_id: str, scope: Scope, receive: Receive) -> dict[str, Any]:
        turn = await self._begin(user_id, scope, receive)
        final, records = await self._tool_loop(user_id, turn.context, turn.messages, turn.now, self._complete)
        return await self._store(user_id, turn, final, records)

    async def chat_stream(self, user_id: str, scope: Scope, receive: Receive, send: Send) -> None:
        """The same turn, its text forwarded as it arrives; errors before the first byte are plain HTTP errors."""
        turn = await self._begin(user_id, scope, receive)
        await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})

        async def forward(text: str) -> None:
            await send({"type": "http.response.body", "body": _event(b"delta", {"text": text}), "more_body": True})

        try:
            complete = functools.partial(self._stream, on_text=forward)
            final, records = await self._tool_loop(user_id, turn.context, turn.messages, turn.now, complete)
            last = _event(b"done", await self._store(user_id, turn, final, records))
        except HttpError as error:
            last = _event(b"error", {"status_code": error.status, "detail": error.detail})
        await send({"type": "http.response.body", "body": last})

    async def _begin(self, user_id: str, scope: Scope, receive: Receive) -> _Begun:
        """Authenticate, read the request, and load the history window (one query, none for a new conversation)."""
        claims = self._claims(scope, user_id)
        try:
            request = msgspec.json.decode(await _read_body(receive), type=ChatIn)
        except msgspec.MsgspecError as error:
            raise HttpError(400, str(error)) from None
        if not request.message.strip():
            raise HttpError(400, "message must not be empty")
        assert self._pool is not None
        now = datetime.now(UTC)

        history: list[dict[str, Any]] = []
        if request.conversation_id is not None:
            rows = await self._pool.fetch(WINDOW_SQL, request.conversation_id, user_id, self.settings.history_limit)
            if not rows:
                raise HttpError(404, "Conversation not found")
            history = model_messages(rows)

        system = SYSTEM_PROMPT.format(email=claims.get("email") or "not known", today=now.date().isoformat())
        messages = _Messages()
        messages.add("user", request.message)
        context = [{"role": "system", "content": system}, *history, {"role": "user", "content": request.message}]
        return _Begun(request, now, context, messages)

    async def _store(self, user_id: str, turn: _Begun, final: str, records: list[dict[str, Any]]) -> dict[str, Any]:
        """Append the turn's messages in one statement (creating the conversation if new); the JSON reply."""
        assert self._pool is not None
        request, messages = turn.request, turn.messages
        message_id = messages.add("assistant", final)
        conversation_id = request.conversation_id or uuid.uuid4()
        arrays = (
            messages.ids,
            messages.roles,
            messages.contents,
            messages.tool_calls,
            messages.tool_call_ids,
            messages.errors,
        )
        if request.conversation_id is None:
            stored = await self._pool.fetch(
                CREATE_SQL, conversation_id, user_id, turn.now, uuid.uuid4(), *arrays, request.message[:80]
            )
        else:
            stored = await self._pool.fetch(APPEND_SQL, conversation_id, user_id, turn.now, uuid.uuid4(), *arrays)
        if not stored:
            raise HttpError(404, "Conversation not found")
        return {"conversation_id": conversation_id, "message_id": message_id, "response": final, "tool_calls": records}

    async def _tool_loop(
        self, user_id: str, context: list[dict[str, Any]], turn: _Messages, now: datetime, complete: Complete
    ) -> tuple[str, list[dict[str, Any]]]:
        records: list[dict[str, Any]] = []
        for _ in range(self.settings.max_tool_steps):
            reply = await complete(context)
            calls = reply.get("tool_calls") or []
            if not calls:
                return reply.get("content") or "", records
            context.append({"role": "assistant", "content": reply.get("content"), "tool_calls": calls})
            stored_calls = []
            results = []
            for call in calls:
                arguments = msgspec.json.decode(call["function"]["arguments"])
                stored_calls.append({"id": call["id"], "name": call["function"]["name"], "arguments": arguments})
                result = await self._run_tool(user_id, call["function"]["name"], arguments, now)
                results.append((call["id"], result))
                records.append({**stored_calls[-1], "result": result})
            turn.add("assistant", reply.get("content") or "", msgspec.json.encode(stored_calls).decode())
            for call_id, result in results:
                content = msgspec.json.encode(result).decode()
                turn.add("tool", content, tool_call_id=call_id)
                context.append({"role": "tool", "tool_call_id": call_id, "content": content})
        return "I stopped after too many tool steps.", records

    def _model_body(self, messages: list[dict[str, Any]], *, stream: bool = False) -> bytes:
        body: dict[str, Any] = {
            "model": self.settings.model,
            "messages": messages,
            "max_tokens": self.settings.max_tokens,
        }
        body["tools"] = TOOLS
        if stream:
            body["stream"] = True
        return msgspec.json.encode(body)

    @functools.cached_property
    def _model_headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.settings.api_key}", "content-type": "application/json"}

    async def _complete(self, messages: list[dict[str, Any]]) -> dict[str, Any]:
        assert self._http is not None
        try:
            response = await self._http.post(
                self.settings.model_url, content=self._model_body(messages), headers=self._model_headers
            )
        except httpx2.HTTPError:
            raise HttpError(502, "The model provider is unavailable") from None
        if response.status_code != 200:
            raise HttpError(502, "The model provider failed")
        message: dict[str, Any] = msgspec.json.decode(response.content)["choices"][0]["message"]
        return message

    async def _stream(self, messages: list[dict[str, Any]], *, on_text: OnText) -> dict[str, Any]:
        """One streamed model call: each text piece to ``on_text`` as it comes; the message put together."""
        assert self._streams is not None
        text: list[str] = []
        calls: dict[int, dict[str, Any]] = {}
        try:
            body = self._model_body(messages, stream=True)
            async with self._streams.post(self.settings.model_url, data=body, headers=self._model_headers) as response:
                if response.status != 200:
                    raise HttpError(502, "The model provider failed")
                async for event in sse.events(response.content.iter_any()):
                    if event.data == b"[DONE]":
                        break
                    for choice in _decode_chunk(event.data).choices:
                        delta = choice.delta
                        if delta.content:
                            text.append(delta.content)
                            await on_text(delta.content)
                        for piece in delta.tool_calls or ():
                            call = calls.setdefault(
                                piece.index, {"id": "", "type": "function", "function": {"name": "", "arguments": ""}}
                            )
                            call["id"] = call["id"] or piece.id or ""
                            if piece.function is not None:
                                call["function"]["name"] += piece.function.name or ""
                                call["function"]["arguments"] += piece.function.arguments or ""
        except (aiohttp.ClientError, TimeoutError, msgspec.DecodeError):
            raise HttpError(502, "The model provider is unavailable") from None
        return {"content": "".join(text) or None, "tool_calls": [calls[i] for i in sorted(calls)] or None}

    async def _run_tool(self, user_id: str, name: str, arguments: Any, now: datetime) -> Any:
        """Only ``add_task`` does anything here: it is the one tool the fake model calls."""
        if name != "add_task" or not isinstance(arguments, dict) or not isinstance(arguments.get("title"), str):
            return {"error": f"tool {name} is not available"}
        assert self._pool is not None
        task_id = await self._pool.fetchval(
            ADD_TASK_SQL, user_id, arguments["title"], arguments.get("description"), now
        )
        return {"task_id": task_id, "status": "created", "title": arguments["title"]}


@dataclass(frozen=True, slots=True)
class _Begun:
    """A turn once its request is read and its history loaded: what the model call and the store need."""

    request: ChatIn
    now: datetime
    context: list[dict[str, Any]]
    messages: _Messages


SSE_HEADERS: Final = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache")]


def _accepts_event_stream(scope: Scope) -> bool:
    accept = next((v for k, v in scope["headers"] if k == b"accept"), b"")
    return b"text/event-stream" in accept.lower()


def _event(kind: bytes, data: object) -> bytes:
    return b"event: " + kind + b"\ndata: " + msgspec.json.encode(data) + b"\n\n"


async def _read_body(receive: Receive) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise HttpError(400, "client disconnected")
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise HttpError(413, "Request body too large")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _respond(send: Send, status: int, payload: object) -> None:
    body = msgspec.json.encode(payload)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def create_app_from_env() -> FloorApp:
    """The factory uvicorn calls in each worker."""
    return FloorApp(FloorSettings.from_env())


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    parser = argparse.ArgumentParser(prog="python -m bench.floor", description="The benchmark's floor app.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9200)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args(argv)
    uvicorn.run(
        "bench.floor:create_app_from_env",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers if args.workers > 1 else None,
        log_level="warning",
        access_log=False,
        lifespan="on",
    )


if __name__ == "__main__":
    main()
