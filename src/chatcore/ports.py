"""The ports: everything ChatService needs from the outside world, as Protocols.

Each docstring is the port's contract; ``tests/contract`` runs the same suite
against every adapter of a port, the in-memory fakes included.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from typing import Literal, Protocol

from chatcore.model import (
    AgentRequest,
    AgentResponse,
    ChatMessage,
    Conversation,
    JsonValue,
    Message,
    Principal,
    Task,
    ToolSpec,
    TurnStart,
)

TaskFilter = Literal["all", "pending", "completed"]


class TokenVerifier(Protocol):
    async def verify(self, token: str) -> Principal:
        """The principal a bearer token speaks for.

        Raises Unauthenticated for any token that is missing a claim, malformed, badly
        signed or expired, and AuthUnavailable when the token cannot be checked right now.
        """
        ...


class ConversationStore(Protocol):
    """Conversations and their messages. Every method is scoped by ``user_id``.

    A turn is two short transactions, ``begin_turn`` and ``finish_turn``, so no
    database connection is held while the model thinks.
    """

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
        """In one transaction: load the user's conversation (or create one when ``conversation_id`` is None,
        titled ``title``), read its last ``history_limit`` messages oldest first, and append ``message``.

        Raises ConversationNotFound when the id is unknown or owned by another user.
        """
        ...

    async def finish_turn(
        self,
        user_id: str,
        conversation_id: uuid.UUID,
        messages: Sequence[ChatMessage],
        *,
        turn_id: uuid.UUID,
    ) -> tuple[Message, ...]:
        """Append ``messages`` in order, all or nothing, numbered after every message already stored."""
        ...

    async def mark_unanswered(self, user_id: str, conversation_id: uuid.UUID, message_id: uuid.UUID) -> None:
        """Flag a stored user message whose turn failed, so history shows it was never answered."""
        ...

    async def get(self, user_id: str, conversation_id: uuid.UUID) -> Conversation:
        """The user's conversation. Raises ConversationNotFound, also when another user owns it."""
        ...

    async def history(self, user_id: str, conversation_id: uuid.UUID, limit: int) -> tuple[Message, ...]:
        """The last ``limit`` messages, oldest first. Raises ConversationNotFound like ``get``."""
        ...

    async def ping(self) -> None:
        """Return when the store can serve requests; raise StoreUnavailable otherwise."""
        ...


class TaskStore(Protocol):
    """The todo toolset's tasks, scoped by ``user_id``: another user's task is TaskNotFound."""

    async def add(self, user_id: str, title: str, description: str | None = None) -> Task: ...

    async def list(self, user_id: str, status: TaskFilter = "all") -> list[Task]:
        """Tasks oldest first."""
        ...

    async def update(
        self,
        user_id: str,
        task_id: int,
        *,
        title: str | None = None,
        description: str | None = None,
        completed: bool | None = None,
    ) -> Task:
        """Change the fields given (None leaves a field alone). Raises TaskNotFound."""
        ...

    async def delete(self, user_id: str, task_id: int) -> Task:
        """Remove the task and return it as it was. Raises TaskNotFound."""
        ...


class ToolRegistry(Protocol):
    """The tools a model may call. The caller binds every call to a principal; no tool takes a user argument."""

    async def list_tools(self) -> Sequence[ToolSpec]: ...

    async def call(self, principal: Principal, name: str, arguments: Mapping[str, JsonValue]) -> JsonValue:
        """Run one tool for ``principal`` and return its JSON result.

        Raises ToolError for an unknown tool, arguments that fail the tool's schema, or a
        refusal the model should hear about (e.g. TaskNotFound).
        """
        ...


class LLMAgent(Protocol):
    """One step of a model: given the conversation and tools, answer or ask for tool calls.

    Raises AgentUnavailable, AgentTimeout, AgentRateLimited or ContextTooLong; never a provider SDK's error.
    """

    provider: str

    async def complete(self, request: AgentRequest) -> AgentResponse: ...
