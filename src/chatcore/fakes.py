"""In-memory adapters of every port, for library users' tests and for the offline demo.

They really work (the contract suites run against them too) and record what
happened, so tests assert on outcomes instead of on mocked calls.
"""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from chatcore.errors import (
    AgentError,
    ConversationNotFound,
    StoreUnavailable,
    TaskNotFound,
    ToolError,
    Unauthenticated,
)
from chatcore.model import (
    AgentRequest,
    AgentResponse,
    ChatMessage,
    Conversation,
    JsonValue,
    Message,
    MessageStatus,
    Principal,
    Task,
    ToolSpec,
    TurnStart,
    utcnow,
)
from chatcore.ports import TaskFilter


class InMemoryConversationStore:
    """A ConversationStore in a dict. ``available = False`` simulates an outage."""

    def __init__(self) -> None:
        self.conversations: dict[uuid.UUID, Conversation] = {}
        self.messages: dict[uuid.UUID, list[Message]] = {}
        self.available = True
        self._lock = asyncio.Lock()

    def _check(self) -> None:
        if not self.available:
            raise StoreUnavailable()

    def _owned(self, user_id: str, conversation_id: uuid.UUID) -> Conversation:
        conversation = self.conversations.get(conversation_id)
        if conversation is None or conversation.user_id != user_id:
            raise ConversationNotFound()
        return conversation

    def _append(self, conversation: Conversation, messages: Sequence[ChatMessage], turn_id: uuid.UUID) -> list[Message]:
        stored = self.messages.setdefault(conversation.id, [])
        known = {m.id for m in stored}
        new_ids = [m.id for m in messages]
        if len(set(new_ids)) != len(new_ids) or known.intersection(new_ids):
            raise ValueError("duplicate message id: nothing of this batch was stored")
        next_seq = stored[-1].seq + 1 if stored else 1
        added = [
            Message(
                id=m.id,
                role=m.role,
                content=m.content,
                tool_calls=m.tool_calls,
                tool_call_id=m.tool_call_id,
                is_error=m.is_error,
                created_at=m.created_at,
                conversation_id=conversation.id,
                seq=next_seq + i,
                turn_id=turn_id,
                status=getattr(m, "status", MessageStatus.COMPLETE),
            )
            for i, m in enumerate(messages)
        ]
        stored.extend(added)
        self.conversations[conversation.id] = replace(conversation, updated_at=utcnow())
        return added

    async def begin_turn(
        self,
        user_id: str,
        conversation_id: uuid.UUID | None,
        message: ChatMessage,
        *,
        turn_id: uuid.UUID,
        history_limit: int,
        title: str | None = None,
    ) -> TurnStart:
        async with self._lock:
            self._check()
            created = conversation_id is None
            if conversation_id is None:
                now = utcnow()
                conversation = Conversation(uuid.uuid4(), user_id, title, now, now)
                self.conversations[conversation.id] = conversation
            else:
                conversation = self._owned(user_id, conversation_id)
            existing = self.messages.get(conversation.id, [])
            window = tuple(existing[-history_limit:]) if history_limit > 0 else ()
            [user_message] = self._append(conversation, [message], turn_id)
            return TurnStart(self.conversations[conversation.id], window, user_message, created)

    async def finish_turn(
        self,
        user_id: str,
        conversation_id: uuid.UUID,
        messages: Sequence[ChatMessage],
        *,
        turn_id: uuid.UUID,
    ) -> tuple[Message, ...]:
        async with self._lock:
            self._check()
            return tuple(self._append(self._owned(user_id, conversation_id), messages, turn_id))

    async def mark_unanswered(self, user_id: str, conversation_id: uuid.UUID, message_id: uuid.UUID) -> None:
        async with self._lock:
            self._check()
            self._owned(user_id, conversation_id)
            stored = self.messages.get(conversation_id, [])
            for index, message in enumerate(stored):
                if message.id == message_id:
                    stored[index] = replace(message, status=MessageStatus.UNANSWERED)

    async def get(self, user_id: str, conversation_id: uuid.UUID) -> Conversation:
        self._check()
        return self._owned(user_id, conversation_id)

    async def history(self, user_id: str, conversation_id: uuid.UUID, limit: int) -> tuple[Message, ...]:
        self._check()
        self._owned(user_id, conversation_id)
        stored = self.messages.get(conversation_id, [])
        return tuple(stored[-limit:]) if limit > 0 else ()

    async def ping(self) -> None:
        self._check()


class InMemoryTaskStore:
    """A TaskStore in a dict, with ids that count up like a database sequence."""

    def __init__(self) -> None:
        self.tasks: dict[int, Task] = {}
        self._ids = itertools.count(1)

    def _owned(self, user_id: str, task_id: int) -> Task:
        task = self.tasks.get(task_id)
        if task is None or task.user_id != user_id:
            raise TaskNotFound(f"Task {task_id} not found")
        return task

    async def add(self, user_id: str, title: str, description: str | None = None) -> Task:
        now = utcnow()
        task = Task(next(self._ids), user_id, title, description, False, now, now)
        self.tasks[task.id] = task
        return task

    async def list(self, user_id: str, status: TaskFilter = "all") -> list[Task]:
        tasks = [t for t in self.tasks.values() if t.user_id == user_id]
        if status == "pending":
            tasks = [t for t in tasks if not t.completed]
        elif status == "completed":
            tasks = [t for t in tasks if t.completed]
        return sorted(tasks, key=lambda t: t.id)

    async def update(
        self,
        user_id: str,
        task_id: int,
        *,
        title: str | None = None,
        description: str | None = None,
        completed: bool | None = None,
    ) -> Task:
        task = self._owned(user_id, task_id)
        task = replace(
            task,
            title=task.title if title is None else title,
            description=task.description if description is None else description,
            completed=task.completed if completed is None else completed,
            updated_at=utcnow(),
        )
        self.tasks[task_id] = task
        return task

    async def delete(self, user_id: str, task_id: int) -> Task:
        return self.tasks.pop(self._owned(user_id, task_id).id)


class StaticTokenVerifier:
    """Accepts exactly the tokens it was given; every other token is Unauthenticated."""

    def __init__(self, tokens: Mapping[str, Principal] | None = None) -> None:
        self.tokens: dict[str, Principal] = dict(tokens or {})

    def issue(self, user_id: str, email: str | None = None) -> str:
        token = f"token-{uuid.uuid4().hex}"
        self.tokens[token] = Principal(user_id=user_id, email=email)
        return token

    async def verify(self, token: str) -> Principal:
        try:
            return self.tokens[token]
        except KeyError:
            raise Unauthenticated("Invalid token") from None


ToolFunction = Callable[[Principal, Mapping[str, JsonValue]], Awaitable[JsonValue]]


@dataclass
class InMemoryToolRegistry:
    """A ToolRegistry of plain async functions; records every call it ran."""

    functions: dict[str, tuple[ToolSpec, ToolFunction]] = field(default_factory=dict)
    calls: list[tuple[str, str, dict[str, JsonValue]]] = field(default_factory=list)

    def register(self, spec: ToolSpec, function: ToolFunction) -> None:
        self.functions[spec.name] = (spec, function)

    async def list_tools(self) -> Sequence[ToolSpec]:
        return [spec for spec, _ in self.functions.values()]

    async def call(self, principal: Principal, name: str, arguments: Mapping[str, JsonValue]) -> JsonValue:
        if name not in self.functions:
            raise ToolError(f"Unknown tool: {name}")
        self.calls.append((principal.user_id, name, dict(arguments)))
        _, function = self.functions[name]
        return await function(principal, arguments)


AgentFunction = Callable[[AgentRequest], AgentResponse | Awaitable[AgentResponse]]


class FunctionAgent:
    """An LLMAgent driven by a function of the request, like pydantic-ai's FunctionModel."""

    provider = "function"

    def __init__(self, function: AgentFunction) -> None:
        self.function = function
        self.requests: list[AgentRequest] = []

    async def complete(self, request: AgentRequest) -> AgentResponse:
        self.requests.append(request)
        outcome = self.function(request)
        if isinstance(outcome, AgentResponse):
            return outcome
        return await outcome


class ScriptedAgent:
    """An LLMAgent that plays back responses (or raises errors) in order, then repeats the last one."""

    provider = "scripted"

    def __init__(self, steps: Iterable[AgentResponse | AgentError]) -> None:
        self.steps = list(steps)
        self.requests: list[AgentRequest] = []

    async def complete(self, request: AgentRequest) -> AgentResponse:
        self.requests.append(request)
        step = self.steps.pop(0) if len(self.steps) > 1 else self.steps[0]
        if isinstance(step, AgentError):
            raise step
        return step
