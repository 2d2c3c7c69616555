"""The domain's values: conversations, messages, tool calls, replies. No I/O here.

Every type is a frozen dataclass so that a value handed to an adapter cannot be
changed behind the service's back, and so that fakes can compare them by value.
"""

from __future__ import annotations

import enum
import json
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeAlias

if TYPE_CHECKING:
    from chatcore.usage import UsageTotals

JsonValue: TypeAlias = Any
"""A value that survives ``json.dumps``; kept loose because tool results are arbitrary JSON."""

MAX_USER_ID_LENGTH = 255
MAX_MESSAGE_LENGTH = 32_000
MAX_TOOL_CALL_ID_LENGTH = 255
MAX_REASON_LENGTH = 2_000
"""A decision's reason: shown to the model in the denied call's result."""
MAX_DECISIONS = 100


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id() -> uuid.UUID:
    return uuid.uuid4()


class Role(enum.StrEnum):
    USER = "user"
    ASSISTANT = "assistant"
    TOOL = "tool"


class MessageStatus(enum.StrEnum):
    """Why a stored message may need care when it is replayed to a model."""

    COMPLETE = "complete"
    UNANSWERED = "unanswered"
    """A user message whose turn failed: the model never answered it."""
    INTERRUPTED = "interrupted"
    """An assistant reply cut short (stopped, or a synthetic result for a call that never ran)."""
    SUPERSEDED = "superseded"
    """A reply (assistant and tool messages) generated again since: kept for the history API, never sent to a
    model again. Its tools did run; what they did stays done."""


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a verified token speaks for. ``email`` is context for the model, never stored in messages."""

    user_id: str
    email: str | None = None
    name: str | None = None


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A model's request to run one tool. ``id`` is the provider's call id, echoed back with the result."""

    id: str
    name: str
    arguments: Mapping[str, JsonValue]


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """What a model is told about a tool: its name, purpose and JSON-schema parameters.

    ``requires_approval``: a call waits for the user's yes before it runs (the tool declares it itself;
    ``@tool(requires_approval=True)`` sets it for a function tool).
    """

    name: str
    description: str
    parameters: Mapping[str, JsonValue]
    requires_approval: bool = False
    """Calls of this tool wait for the user's approval before they run (``ChatService.decide``)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ChatMessage:
    """One message as a model sees it, stored or not yet stored.

    A tool message's ``content`` is the JSON text of its result (or of ``{"error": ...}``
    when ``is_error``), which is exactly what providers want to be sent back.
    """

    id: uuid.UUID = field(default_factory=new_id)
    role: Role
    content: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None
    is_error: bool = False
    created_at: datetime = field(default_factory=utcnow)

    @classmethod
    def user(cls, content: str) -> ChatMessage:
        return cls(role=Role.USER, content=content)

    @classmethod
    def assistant(cls, content: str, tool_calls: Sequence[ToolCall] = ()) -> ChatMessage:
        return cls(role=Role.ASSISTANT, content=content, tool_calls=tuple(tool_calls))

    @classmethod
    def tool_result(cls, call: ToolCall, result: ToolResult) -> ChatMessage:
        return cls(
            role=Role.TOOL,
            content=result.to_content(),
            tool_call_id=call.id,
            is_error=result.error is not None,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class Message(ChatMessage):
    """A stored message. ``seq`` orders a conversation: timestamps can tie, sequence numbers cannot."""

    conversation_id: uuid.UUID
    seq: int
    status: MessageStatus = MessageStatus.COMPLETE
    turn_id: uuid.UUID | None = None


@dataclass(frozen=True, slots=True)
class Conversation:
    id: uuid.UUID
    user_id: str
    title: str | None
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class ToolResult:
    """The outcome of one tool call: a JSON result, or an error the model is told about."""

    result: JsonValue = None
    error: str | None = None

    def to_content(self) -> str:
        if self.error is not None:
            return json.dumps({"error": self.error}, ensure_ascii=False).replace("\\u0000", "\\ufffd")
        return json.dumps(self.result, ensure_ascii=False, default=str).replace("\\u0000", "\\ufffd")

    @classmethod
    def from_content(cls, content: str, *, is_error: bool) -> ToolResult:
        try:
            decoded = json.loads(content)
        except ValueError:
            decoded = content
        if is_error:
            error = decoded.get("error") if isinstance(decoded, dict) else decoded
            return cls(error=str(error))
        return cls(result=decoded)


@dataclass(frozen=True, slots=True)
class ToolCallRecord:
    """A tool call of a turn together with what it returned, as reported to the client.

    ``approval`` is the call's approval record when its tool needed the user's approval; a call still
    waiting for it has neither ``result`` nor ``error``.
    """

    id: str
    name: str
    arguments: Mapping[str, JsonValue]
    result: JsonValue = None
    error: str | None = None
    approval: ToolApproval | None = None

    @property
    def awaiting_approval(self) -> bool:
        return self.approval is not None and self.approval.pending


class ReplyStatus(enum.StrEnum):
    """How a turn ended, as its reply says."""

    COMPLETE = "complete"
    AWAITING_APPROVAL = "awaiting_approval"
    """Tool calls wait for the user's decision (``pending_approvals``); the turn goes on once they are decided."""
    INTERRUPTED = "interrupted"
    """The turn was stopped, or a new message closed it before it could go on."""


@dataclass(frozen=True, slots=True)
class ToolDecision:
    """The user's decision on one pending tool call: run it (with the arguments the model gave) or not."""

    tool_call_id: str
    approved: bool
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class ToolApproval:
    """A tool call that needed the user's approval, as stored: pending until decided, then approved or denied.

    ``message_id`` is the assistant message holding the call, ``turn_id`` the turn it belongs to.
    ``started_at`` is set when an approved call is about to run: a call started but without a stored
    result may or may not have run, and is never run again.
    """

    tool_call_id: str
    name: str
    arguments: Mapping[str, JsonValue]
    conversation_id: uuid.UUID
    turn_id: uuid.UUID
    message_id: uuid.UUID
    requested_at: datetime
    approved: bool | None = None
    reason: str | None = None
    decided_at: datetime | None = None
    started_at: datetime | None = None

    @property
    def pending(self) -> bool:
        return self.approved is None

    @property
    def call(self) -> ToolCall:
        return ToolCall(self.tool_call_id, self.name, self.arguments)


@dataclass(frozen=True, slots=True)
class TurnStart:
    """What a store hands back when a turn begins: the conversation, its history window, the stored user message."""

    conversation: Conversation
    history: tuple[Message, ...]
    user_message: Message
    created: bool


@dataclass(frozen=True, slots=True)
class AbandonedTurn:
    """A turn whose claim on an Idempotency-Key expired while it ran (its server died), found by a retry with the key.

    ``last``: no other turn's message follows it, so the retry can go on with it where it stopped.
    """

    turn_id: uuid.UUID
    conversation_id: uuid.UUID
    last: bool


@dataclass(frozen=True, slots=True)
class TurnResumption:
    """A turn read back under a new hold on its conversation: to go on once its calls are decided, or to close it.

    ``open``: the turn is the conversation's open turn (some of its calls still lack results).
    ``history``: the messages before the turn, oldest first; ``turn``: the turn's own messages.
    """

    conversation: Conversation
    turn_id: uuid.UUID
    open: bool
    history: tuple[Message, ...]
    turn: tuple[Message, ...]
    approvals: tuple[ToolApproval, ...]


@dataclass(frozen=True, slots=True)
class ChatReply:
    """What a turn (or a decision on its pending tool calls) answers.

    ``message_id`` is the turn's last assistant message: the final answer, or, while calls await approval,
    the message that asked for them (``pending_approvals``, never run yet). ``usage``: what the model calls of
    this request cost (None: none were made, as when a reply is read back).
    """

    conversation_id: uuid.UUID
    message_id: uuid.UUID
    response: str
    tool_calls: tuple[ToolCallRecord, ...] = ()
    status: ReplyStatus = ReplyStatus.COMPLETE
    pending_approvals: tuple[ToolCall, ...] = ()
    usage: UsageTotals | None = None


@dataclass(frozen=True, slots=True)
class AgentRequest:
    """Everything a model needs for one step: instructions, the conversation so far, the tools it may call."""

    system_prompt: str
    messages: tuple[ChatMessage, ...]
    tools: tuple[ToolSpec, ...]


@dataclass(frozen=True, slots=True)
class Usage:
    """Tokens one model call (or several, added up) cost, as the provider reported them.

    ``input_tokens`` is all the input, cached or not; ``cached_read_tokens`` and ``cache_write_tokens``
    are the parts of it read from and written to the provider's prompt cache (billed at their own
    rates). OpenAI's ``prompt_tokens`` already count their cached part; Anthropic's ``input_tokens``
    do not, so its adapter adds the cache reads and writes to make the total (docs/providers.md).
    """

    input_tokens: int = 0
    output_tokens: int = 0
    cached_read_tokens: int = 0
    cache_write_tokens: int = 0

    def __add__(self, other: Usage) -> Usage:
        if not isinstance(other, Usage):
            return NotImplemented
        return Usage(
            self.input_tokens + other.input_tokens,
            self.output_tokens + other.output_tokens,
            self.cached_read_tokens + other.cached_read_tokens,
            self.cache_write_tokens + other.cache_write_tokens,
        )

    @property
    def total_tokens(self) -> int:
        """Input and output together (what a token budget counts)."""
        return self.input_tokens + self.output_tokens

    @classmethod
    def sum(cls, usages: Iterable[Usage | None]) -> Usage:
        """Several calls' usage added up; calls that reported none count as zero."""
        total = cls()
        for usage in usages:
            if usage is not None:
                total += usage
        return total


@dataclass(frozen=True, slots=True)
class AgentResponse:
    """One model step: text, and the tools it wants run before it can answer (none means it is done).

    ``usage`` is what the provider reported the call cost (None when it reported nothing); ``model`` the model
    name the provider reported answering with, else the one the agent asked for.
    """

    text: str
    tool_calls: tuple[ToolCall, ...] = ()
    stop_reason: str | None = None
    usage: Usage | None = None
    model: str | None = None


PREVIEW_LENGTH = 120
"""Characters of the last message a conversation list shows."""


@dataclass(frozen=True, slots=True)
class ConversationSummary:
    """A conversation as a list shows it: its title, times, and the start of its last user or assistant message."""

    id: uuid.UUID
    title: str | None
    created_at: datetime
    updated_at: datetime
    preview: str | None = None
    awaiting_approval: bool = False
    """Tool calls of its last turn wait for the user's decision."""


@dataclass(frozen=True, slots=True)
class TextDelta:
    """A piece of the reply's text as the model produces it."""

    text: str


@dataclass(frozen=True, slots=True)
class ToolCallDelta:
    """A piece of a tool call as the model produces it: ``index`` says which call of the step it belongs to.

    ``id`` and ``name`` come with the call's first piece; ``arguments`` is a fragment of the JSON text.
    """

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


AgentStreamEvent: TypeAlias = TextDelta | ToolCallDelta | AgentResponse
"""What ``LLMAgent.stream`` yields: deltas, then exactly one AgentResponse, the whole step, last."""


class BusyPolicy(enum.StrEnum):
    """What a chat request does when another turn holds its conversation (the chat body's ``if_busy``)."""

    WAIT = "wait"
    """Wait for the running turn to end (up to the turn wait), then run: turns one after another."""
    REJECT = "reject"
    """Refuse at once (ConversationBusy, 409 with Retry-After): nothing is stored."""
    INTERRUPT = "interrupt"
    """Stop the running turn wherever it runs (as the stop endpoint does; its partial reply is stored as
    interrupted), then run right after it, seeing it."""

    @classmethod
    def parse(cls, value: object) -> BusyPolicy:
        """``value`` as a policy; ValueError naming the choices for anything else."""
        for policy in cls:
            if value == policy.value:
                return policy
        raise ValueError(f"if_busy must be one of {', '.join(p.value for p in cls)}, not {value!r}")


class TurnStatus(enum.StrEnum):
    RUNNING = "running"
    COMPLETE = "complete"
    FAILED = "failed"
    INTERRUPTED = "interrupted"


class TurnNotice(enum.StrEnum):
    """What woke a watcher of a streamed turn (``ports.TurnNotifications``); the facts are in the TurnEventStore."""

    EVENTS = "events"
    """New events of the turn are stored (or it ended)."""
    STOP = "stop"
    """A stop of the turn was requested."""
    CHECK = "check"
    """Notices may have been missed (none are delivered now, or the listener was reconnected): read the store."""


@dataclass(frozen=True, slots=True)
class TurnEvent:
    """One event of a streamed turn, numbered from 1 within the turn; ``data`` is a JSON object."""

    turn_id: uuid.UUID
    seq: int
    type: str
    data: Mapping[str, JsonValue]


@dataclass(frozen=True, slots=True)
class TurnState:
    """A streamed turn as its event log knows it: whose it is, whether it runs, whether a stop was asked for."""

    id: uuid.UUID
    conversation_id: uuid.UUID
    user_id: str
    status: TurnStatus
    stop_requested: bool
    created_at: datetime
