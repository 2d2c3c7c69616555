"""The async load generator: virtual users, each sending its turns one after another, all users at once.

Every user has its own ``httpx.AsyncClient`` with one kept-alive connection, so the client never
queues requests and the latencies measured are the server's (plus the loopback round trip).
Every user has a bounded number of turns and the whole run a deadline.

A turn is asked for in one of the ways a client can (``TurnProtocol``): ``json``, one reply body;
``sse``, ``Accept: text/event-stream``, read event by event until ``done`` (the whole turn), noting
when the first ``delta`` (text) arrived; ``sse-keyed``, the same with an ``Idempotency-Key``, sent twice (the
repeat replays the turn); ``ai-sdk`` and ``ag-ui``, the frontends' streamed protocols
(the AI SDK's UI message stream, AG-UI), read the same way to their last event; ``busy-reject``, a JSON turn
with a second request refused meanwhile (``if_busy: reject``); ``approval``, a JSON
turn whose tool calls wait for the user, approved by a second request. For a JSON reply the first
text is the whole reply. Every reply is checked in the chat reply's shape (a stream's pieces put
together).
"""

from __future__ import annotations

import asyncio
import math
import ssl
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, TypeAlias

import aiohttp
import httpx
import msgspec

from bench import sse

TurnProtocol: TypeAlias = Literal["json", "sse", "sse-keyed", "approval", "ai-sdk", "ag-ui", "busy-reject"]


@dataclass(frozen=True, slots=True)
class VirtualUser:
    """A user with a valid token; ``conversation_id`` continues an existing (e.g. seeded) conversation."""

    user_id: str
    token: str
    conversation_id: str | None = None


@dataclass(slots=True)
class LoadResult:
    """What a run produced: the latency of every successful turn, and what went wrong with the others."""

    latencies: list[float] = field(default_factory=list)
    first_text: list[float] = field(default_factory=list)
    """Per successful turn, when its first text arrived (a streamed ``delta``; the whole reply for JSON)."""
    failures: Counter[str] = field(default_factory=Counter)
    wall_seconds: float = 0.0
    timed_out: bool = False

    @property
    def turns(self) -> int:
        return len(self.latencies)

    @property
    def turns_per_second(self) -> float:
        return self.turns / self.wall_seconds if self.wall_seconds > 0 else 0.0

    def percentile_ms(self, q: float) -> float:
        return percentile(self.latencies, q) * 1000

    def first_text_percentile_ms(self, q: float) -> float:
        return percentile(self.first_text, q) * 1000

    def add(self, other: LoadResult) -> None:
        """Pool ``other`` (a later round) into this result."""
        self.latencies.extend(other.latencies)
        self.first_text.extend(other.first_text)
        self.failures.update(other.failures)
        self.wall_seconds += other.wall_seconds
        self.timed_out = self.timed_out or other.timed_out


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) with linear interpolation between closest ranks; NaN for no values."""
    if not 0 <= q <= 100:
        raise ValueError("q must be between 0 and 100")
    if not values:
        return math.nan
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def default_message(user: VirtualUser, turn: int) -> str:
    return f"Please add a task to buy item {turn} for {user.user_id} before the weekend"


ReplyCheck = Callable[[dict[str, Any]], str | None]
"""Returns why a 200 reply (or a stream's ``done`` event) is not what the scenario expects, or None when it is."""


@dataclass(frozen=True, slots=True)
class Answer:
    """A turn as the client saw it: the reply, and when its first text and its end arrived (seconds)."""

    reply: dict[str, Any]
    seconds: float
    first_text: float


class TurnClient(Protocol):
    """One user's connection to a server, asking for one turn at a time in one ``TurnProtocol``."""

    async def ask(self, url: str, headers: dict[str, str], body: dict[str, Any]) -> Answer | str:
        """Sends one turn; its answer, or why it failed (a failure's name, counted as such)."""
        ...

    async def aclose(self) -> None: ...


class JsonTurns:
    """Turns answered with one JSON body, through httpx."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client

    async def ask(self, url: str, headers: dict[str, str], body: dict[str, Any]) -> Answer | str:
        began = time.perf_counter()
        try:
            response = await self.client.post(url, json=body, headers=headers)
        except httpx.HTTPError as error:
            return type(error).__name__
        elapsed = time.perf_counter() - began
        if response.status_code != 200:
            return f"HTTP {response.status_code}"
        return Answer(response.json(), elapsed, elapsed)

    async def aclose(self) -> None:
        await self.client.aclose()


TEXT, END = "text", "end"
"""What a stream reader says of an event: text arrived, or the turn is over (else None, or why it failed)."""


class StreamReader(Protocol):
    """Reads one turn's stream in one protocol, and puts its reply together in the chat reply's shape."""

    def read(self, event: sse.Event) -> str | None:
        """``TEXT``, ``END``, None for an event that says neither, or why the turn failed."""
        ...

    def reply(self) -> dict[str, Any]: ...


class NativeEvents:
    """chatcore's own SSE dialect (and the floor's): ``delta`` events, then ``done`` with the JSON reply."""

    def __init__(self) -> None:
        self._reply: dict[str, Any] = {}

    def read(self, event: sse.Event) -> str | None:
        if event.event == b"delta":
            return TEXT
        if event.event == b"done":
            self._reply = msgspec.json.decode(event.data)
            return END
        if event.event == b"error":
            return f"error event {msgspec.json.decode(event.data).get('status_code')}"
        return None

    def reply(self) -> dict[str, Any]:
        return self._reply


class _Assembled:
    """A reply put together from a UI protocol's pieces: text, tool calls and their results."""

    def __init__(self) -> None:
        self.conversation_id: str | None = None
        self.message_id: str | None = None
        self.text: list[str] = []
        self.calls: dict[str, dict[str, Any]] = {}
        self.interrupted = False

    def call(self, call_id: str, name: str, arguments: Any) -> None:
        self.calls[call_id] = {"id": call_id, "name": name, "arguments": arguments}

    def reply(self) -> dict[str, Any]:
        return {
            "conversation_id": self.conversation_id,
            "message_id": self.message_id,
            "response": "".join(self.text),
            "tool_calls": list(self.calls.values()),
            "interrupted": self.interrupted,
        }


class AiSdkChunks(_Assembled):
    """The AI SDK's UI message stream (v1): ``data: {"type": …}`` chunks, ``finish`` last, then ``[DONE]``."""

    def read(self, event: sse.Event) -> str | None:
        if event.data == b"[DONE]":
            return None
        chunk = msgspec.json.decode(event.data)
        kind = chunk.get("type")
        if kind == "text-delta":
            self.text.append(chunk["delta"])
            return TEXT
        if kind == "start":
            self.message_id = chunk.get("messageId")
            self.conversation_id = (chunk.get("messageMetadata") or {}).get("conversationId")
        elif kind == "tool-input-available":
            self.call(chunk["toolCallId"], chunk["toolName"], chunk.get("input"))
        elif kind == "tool-output-available" and chunk["toolCallId"] in self.calls:
            self.calls[chunk["toolCallId"]]["result"] = chunk.get("output")
        elif kind == "tool-output-error" and chunk["toolCallId"] in self.calls:
            self.calls[chunk["toolCallId"]]["error"] = chunk.get("errorText")
        elif kind == "finish":
            self.interrupted = chunk.get("finishReason") == "interrupted"
            return END
        elif kind == "error":
            return "error chunk"
        return None


class AgUiEvents(_Assembled):
    """AG-UI 1.x: ``data: {"type": …}`` events, ``RUN_FINISHED`` (its ``result``) or ``RUN_ERROR`` last."""

    def read(self, event: sse.Event) -> str | None:
        message = msgspec.json.decode(event.data)
        kind = message.get("type")
        if kind == "TEXT_MESSAGE_CONTENT":
            self.text.append(message["delta"])
            return TEXT
        if kind == "TOOL_CALL_START":
            self.call(message["toolCallId"], message["toolCallName"], "")
        elif kind == "TOOL_CALL_ARGS" and message["toolCallId"] in self.calls:
            self.calls[message["toolCallId"]]["arguments"] += message["delta"]
        elif kind == "TOOL_CALL_END" and message["toolCallId"] in self.calls:
            call = self.calls[message["toolCallId"]]
            call["arguments"] = msgspec.json.decode(call["arguments"] or "{}")
        elif kind == "TOOL_CALL_RESULT" and message["toolCallId"] in self.calls:
            content = msgspec.json.decode(message["content"])
            error = content.get("error") if isinstance(content, dict) and set(content) == {"error"} else None
            self.calls[message["toolCallId"]].update({"error": error} if error is not None else {"result": content})
        elif kind == "RUN_FINISHED":
            result = message.get("result") or {}
            self.conversation_id, self.message_id = result.get("conversationId"), result.get("messageId")
            self.interrupted = (message.get("outcome") or {}).get("type") == "cancelled"
            return END
        elif kind == "RUN_ERROR":
            return f"RUN_ERROR {message.get('code')}"
        return None


class StreamedTurns:
    """Turns streamed as Server-Sent Events, read through aiohttp until the turn's last event.

    aiohttp rather than httpx here: with 200 streams of 100 events each the load generator reads
    thousands of events a second beside the server it measures, and aiohttp hands over each chunk for
    about a third of httpx's CPU (measured here: 30–40 µs an event against 75–100 µs).
    This class asks in chatcore's own dialect; its subclasses in the frontends' protocols.
    """

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self.session = session

    def request(self, url: str, body: dict[str, Any]) -> tuple[str, dict[str, Any], StreamReader]:
        """Where and what to post for one turn of the chat ``url`` (``…/api/{user}/chat``), and its reader."""
        return url, body, NativeEvents()

    async def ask(self, url: str, headers: dict[str, str], body: dict[str, Any]) -> Answer | str:
        url, payload, reader = self.request(url, body)
        began = time.perf_counter()
        first: float | None = None
        try:
            async with self.session.post(
                url, data=msgspec.json.encode(payload), headers={**headers, **SSE_REQUEST_HEADERS}
            ) as response:
                if response.status != 200:
                    return f"HTTP {response.status}"
                async for event in sse.events(response.content.iter_any()):
                    said = reader.read(event)
                    if said == TEXT:
                        if first is None:
                            first = time.perf_counter() - began
                    elif said == END:
                        elapsed = time.perf_counter() - began
                        return Answer(reader.reply(), elapsed, elapsed if first is None else first)
                    elif said is not None:
                        return said
        except (aiohttp.ClientError, TimeoutError) as error:
            return type(error).__name__
        return "stream ended before its last event"

    async def aclose(self) -> None:
        await self.session.close()


class AiSdkTurns(StreamedTurns):
    """Turns as the AI SDK's ``DefaultChatTransport`` sends them (``POST …/ai-sdk/chat``), one chat id per user."""

    def __init__(self, session: aiohttp.ClientSession) -> None:
        super().__init__(session)
        self.chat_id = str(uuid.uuid4())

    def request(self, url: str, body: dict[str, Any]) -> tuple[str, dict[str, Any], StreamReader]:
        message = {"id": str(uuid.uuid4()), "role": "user", "parts": [{"type": "text", "text": body["message"]}]}
        payload = {
            "id": body.get("conversation_id") or self.chat_id,
            "messages": [message],
            "trigger": "submit-message",
        }
        return f"{url.removesuffix('/chat')}/ai-sdk/chat", payload, AiSdkChunks()


class AgUiTurns(StreamedTurns):
    """Turns as an AG-UI client runs them (``POST …/ag-ui`` with a ``RunAgentInput``), one thread per user."""

    def __init__(self, session: aiohttp.ClientSession) -> None:
        super().__init__(session)
        self.thread_id = str(uuid.uuid4())

    def request(self, url: str, body: dict[str, Any]) -> tuple[str, dict[str, Any], StreamReader]:
        payload: dict[str, Any] = {
            "threadId": body.get("conversation_id") or self.thread_id,
            "runId": str(uuid.uuid4()),
            "messages": [{"id": str(uuid.uuid4()), "role": "user", "content": body["message"]}],
            "tools": [],
            "context": [],
            "state": {},
            "forwardedProps": {},
        }
        return f"{url.removesuffix('/chat')}/ag-ui", payload, AgUiEvents()


SSE_REQUEST_HEADERS = {"accept": "text/event-stream", "content-type": "application/json"}


class KeyedStreamedTurns(StreamedTurns):
    """SSE turns sent with an ``Idempotency-Key`` and then sent again with it, as a client whose stream broke
    does: the repeat replays the stored turn's events, and must end with the same reply. Timed from the first
    request to the repeat's last event; the first text is the first request's."""

    async def ask(self, url: str, headers: dict[str, str], body: dict[str, Any]) -> Answer | str:
        keyed = {**headers, "idempotency-key": str(uuid.uuid4())}
        began = time.perf_counter()
        first = await super().ask(url, keyed, body)
        if isinstance(first, str):
            return first
        repeat = await super().ask(url, keyed, body)
        if isinstance(repeat, str):
            return f"repeat: {repeat}"
        if repeat.reply != first.reply:
            return "the repeat's reply differs from the first"
        return Answer(first.reply, time.perf_counter() - began, first.first_text)


class ApprovalTurns(JsonTurns):
    """A turn whose tool calls wait for the user's approval (``CHATCORE_APPROVAL_TOOLS``): the chat request ends
    ``awaiting_approval``, a second request to the conversation's ``approvals`` approves every pending call, and
    its reply is the turn's. Timed from the first request to the second reply; the first text is the first
    reply (when the user sees what waits for them)."""

    async def ask(self, url: str, headers: dict[str, str], body: dict[str, Any]) -> Answer | str:
        began = time.perf_counter()
        asked = await super().ask(url, headers, body)
        if isinstance(asked, str):
            return asked
        pending = asked.reply.get("pending_approvals")
        if asked.reply.get("status") != "awaiting_approval" or not pending:
            return f"no approval asked for (status {asked.reply.get('status')})"
        approvals = f"{url.removesuffix('/chat')}/conversations/{asked.reply['conversation_id']}/approvals"
        decisions = {"decisions": [{"tool_call_id": call["id"], "approved": True} for call in pending]}
        decided = await super().ask(approvals, headers, decisions)
        if isinstance(decided, str):
            return f"approvals: {decided}"
        return Answer(decided.reply, time.perf_counter() - began, asked.seconds)


class BusyRejectTurns(JsonTurns):
    """A JSON turn, and meanwhile a second request on its conversation with ``if_busy: reject`` that must be refused
    at once (409): the turn is timed as a JSON turn; its first text is when the 409 came (from its request). A
    user's first turn makes the conversation, so it has no second request. Two connections per user."""

    def __init__(self, client: httpx.AsyncClient, second: httpx.AsyncClient) -> None:
        super().__init__(client)
        self.second = second

    async def ask(self, url: str, headers: dict[str, str], body: dict[str, Any]) -> Answer | str:
        if "conversation_id" not in body:
            return await super().ask(url, headers, body)
        running = asyncio.create_task(super().ask(url, headers, body))
        await asyncio.sleep(BUSY_PAUSE_SECONDS)
        began = time.perf_counter()
        try:
            refused = await self.second.post(url, json={**body, "if_busy": "reject"}, headers=headers)
        except httpx.HTTPError as error:
            running.cancel()
            return f"if_busy reject: {type(error).__name__}"
        refused_after = time.perf_counter() - began
        answer = await running
        if refused.status_code != 409:
            return f"if_busy reject: HTTP {refused.status_code}"
        if isinstance(answer, str):
            return answer
        return Answer(answer.reply, answer.seconds, refused_after)

    async def aclose(self) -> None:
        await asyncio.gather(super().aclose(), self.second.aclose())


BUSY_PAUSE_SECONDS = 0.25
"""How long after a turn's request the refused one is sent: half the scenario's 500 ms model, so the turn holds
its conversation by then and still does even when the machine queues requests for a while. A second request
that finds the conversation free (the turn had not begun, or had ended) runs a turn and counts as a failure."""


KEEPALIVE_EXPIRY_SECONDS = 3.0
"""Below uvicorn's 5 s keep-alive timeout: a client that reuses a connection the server is closing at that
very moment gets a ReadError, which would count as a failed turn that no server caused."""


_PLAIN_HTTP_CONTEXT = ssl.create_default_context()
"""Shared by every client: httpx would otherwise build (and load CA certificates into) one per client,
about 20 ms of CPU each, for a benchmark that only speaks plain HTTP to 127.0.0.1."""


def user_client(request_timeout: float = 60.0) -> httpx.AsyncClient:
    """One user's client: a single kept-alive connection, like a browser tab; no proxy (``trust_env=False``).

    A client per user rather than one shared client: httpx's pool does work proportional to its open
    connections on every request, so one client holding 200 connections spends about 25 ms of CPU per
    request and the load generator, not the server, would set the pace. Alone, a request costs ~0.6 ms.
    """
    return httpx.AsyncClient(
        limits=httpx.Limits(max_connections=1, max_keepalive_connections=1, keepalive_expiry=KEEPALIVE_EXPIRY_SECONDS),
        timeout=httpx.Timeout(request_timeout),
        trust_env=False,
        verify=_PLAIN_HTTP_CONTEXT,
    )


STREAMED_TURNS: dict[str, Callable[[aiohttp.ClientSession], StreamedTurns]] = {
    "sse": StreamedTurns,
    "sse-keyed": KeyedStreamedTurns,
    "ai-sdk": AiSdkTurns,
    "ag-ui": AgUiTurns,
}


def user_turns(protocol: TurnProtocol = "json", request_timeout: float = 60.0) -> TurnClient:
    """One user's ``TurnClient`` for ``protocol``: a single kept-alive connection either way."""
    if protocol in STREAMED_TURNS:
        connector = aiohttp.TCPConnector(limit=1, keepalive_timeout=KEEPALIVE_EXPIRY_SECONDS)
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=request_timeout, sock_read=request_timeout)
        session = aiohttp.ClientSession(connector=connector, timeout=timeout, trust_env=False)
        return STREAMED_TURNS[protocol](session)
    if protocol == "approval":
        return ApprovalTurns(user_client(request_timeout))
    if protocol == "busy-reject":
        return BusyRejectTurns(user_client(request_timeout), user_client(request_timeout))
    return JsonTurns(user_client(request_timeout))


async def run_load(
    base_url: str,
    users: Sequence[VirtualUser],
    turns: int,
    *,
    deadline_seconds: float,
    check: ReplyCheck | None = None,
    message: Callable[[VirtualUser, int], str] = default_message,
    client_factory: Callable[[], TurnClient] = user_turns,
) -> LoadResult:
    """Run ``turns`` turns for every user concurrently; stop (and say so) at ``deadline_seconds``."""
    if turns < 1 or not users:
        raise ValueError("a run needs at least one user and one turn")
    result = LoadResult()
    clients = [client_factory() for _ in users]
    try:
        started = time.perf_counter()
        tasks = [
            asyncio.create_task(_user_turns(client, base_url, user, turns, result, check, message))
            for client, user in zip(clients, users, strict=True)
        ]
        _, pending = await asyncio.wait(tasks, timeout=deadline_seconds)
        result.wall_seconds = time.perf_counter() - started
        if pending:
            result.timed_out = True
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
    finally:
        await asyncio.gather(*(client.aclose() for client in clients), return_exceptions=True)
    for task in tasks:
        if not task.cancelled() and task.exception() is not None:
            result.failures[f"crash: {type(task.exception()).__name__}"] += 1
    return result


async def _user_turns(
    client: TurnClient,
    base_url: str,
    user: VirtualUser,
    turns: int,
    result: LoadResult,
    check: ReplyCheck | None,
    message: Callable[[VirtualUser, int], str],
) -> None:
    url = f"{base_url}/api/{user.user_id}/chat"
    headers = {"authorization": f"Bearer {user.token}"}
    conversation_id = user.conversation_id
    for turn in range(turns):
        body: dict[str, Any] = {"message": message(user, turn)}
        if conversation_id is not None:
            body["conversation_id"] = conversation_id
        answer = await client.ask(url, headers, body)
        if isinstance(answer, str):
            result.failures[answer] += 1
            continue
        problem = check(answer.reply) if check is not None else None
        if problem is not None:
            result.failures[problem] += 1
            continue
        result.latencies.append(answer.seconds)
        result.first_text.append(answer.first_text)
        conversation_id = answer.reply["conversation_id"]
