"""Domain errors. Plain exceptions, no HTTP words: the HTTP adapter maps them to statuses in one table."""

from __future__ import annotations

import uuid
from datetime import datetime

from chatcore.model import Usage


class ChatError(Exception):
    """Base of every error chatcore raises on purpose. ``detail`` is safe to show to a client."""

    default_detail = "Chat error"

    def __init__(self, detail: str | None = None) -> None:
        self.detail = detail or self.default_detail
        super().__init__(self.detail)


class Unauthenticated(ChatError):
    default_detail = "Missing or invalid bearer token"


class AuthUnavailable(ChatError):
    """The token could not be checked (key server unreachable); not the client's fault."""

    default_detail = "Authentication service unavailable"

    def __init__(self, detail: str | None = None, retry_after: int = 5) -> None:
        super().__init__(detail)
        self.retry_after = retry_after


class Forbidden(ChatError):
    default_detail = "Access denied"


class ConversationNotFound(ChatError):
    """Also raised when the conversation exists but belongs to someone else: one answer for both."""

    default_detail = "Conversation not found"


class InvalidMessage(ChatError):
    default_detail = "Invalid message"


class TurnFailed(ChatError):
    """A turn that failed after its user message was stored; carries the conversation so the client can retry."""

    conversation_id: uuid.UUID | None = None


class TurnAbandoned(TurnFailed):
    """The end of a turn whose server stopped (killed, or cut off longer than its lease): the ``error`` event its log
    ends with when someone closes it (``ChatService.close_dead_turns``, the janitor). Its user message stays,
    marked unanswered; send it again (or a new message) to go on."""

    default_detail = "the server handling this turn stopped"


class AgentError(TurnFailed):
    """A model call that failed. ``usage`` is what the provider reported billing for it anyway (rarely), else None."""

    default_detail = "The model provider failed"

    def __init__(self, detail: str | None = None, *, provider: str | None = None, usage: Usage | None = None) -> None:
        super().__init__(detail)
        self.provider = provider
        self.usage = usage


class AgentUnavailable(AgentError):
    default_detail = "The model provider is unavailable"


class AgentTimeout(AgentError):
    default_detail = "The model provider timed out"


class AgentRateLimited(AgentError):
    default_detail = "The model provider is rate limiting requests"

    def __init__(self, detail: str | None = None, *, provider: str | None = None, retry_after: int = 10) -> None:
        super().__init__(detail, provider=provider)
        self.retry_after = retry_after


class ContextTooLong(AgentError):
    default_detail = "The conversation is too long for the model; start a new conversation"


class BudgetExhausted(ChatError):
    """The user's token budget for the current window is used up: no model call may start until it resets.

    Raised before a turn starts (nothing is stored; HTTP 429 with ``Retry-After``); inside a turn it ends the tool
    loop honestly instead (``chatcore.usage``).
    """

    default_detail = "token budget exhausted"

    def __init__(
        self,
        detail: str | None = None,
        *,
        retry_after: int = 60,
        resets_at: datetime | None = None,
        limit: int | None = None,
        used: int | None = None,
    ) -> None:
        super().__init__(detail)
        self.retry_after = retry_after
        self.resets_at = resets_at
        self.limit = limit
        self.used = used


class ToolError(ChatError):
    """Raised by a tool for a bad call; the message becomes an error result for the model, never a failed turn."""

    default_detail = "Tool failed"


class StoreUnavailable(ChatError):
    default_detail = "The database is unavailable"

    def __init__(self, detail: str | None = None, retry_after: int = 2) -> None:
        super().__init__(detail)
        self.retry_after = retry_after


class ConversationBusy(ChatError):
    """Another turn holds the conversation and did not finish within the wait."""

    default_detail = "Another turn is in progress on this conversation"

    def __init__(self, detail: str | None = None, retry_after: int = 2) -> None:
        super().__init__(detail)
        self.retry_after = retry_after


class IdempotencyKeyReused(ChatError):
    default_detail = "This Idempotency-Key was used with a different request"


class IdempotencyInProgress(ChatError):
    default_detail = "A request with this Idempotency-Key is still in progress"

    def __init__(self, detail: str | None = None, retry_after: int = 2) -> None:
        super().__init__(detail)
        self.retry_after = retry_after


class LeaseLost(ConversationBusy, TurnFailed):
    """The turn's hold on the conversation (or on its Idempotency-Key) expired and another turn took it.

    Only a turn stalled for longer than the lease (its heartbeat could not renew it) ends so; nothing it
    produced was stored, so the conversation never shows two turns interleaved.
    """

    default_detail = "This turn lost its hold on the conversation to another turn and was not stored; try again"


class InvalidRequest(ChatError):
    """A malformed request parameter other than the message (a cursor, a title)."""

    default_detail = "Invalid request"


class NothingToRegenerate(InvalidRequest):
    """A regeneration asked of a conversation without a user message to answer again."""

    default_detail = "There is no message to generate a reply to again"


class TurnNotFound(ChatError):
    """A turn id unknown to this user (or another user's): one answer for both, like conversations."""

    default_detail = "Turn not found"


class ToolCallNotFound(ChatError):
    """A decision names a tool call that is not awaiting approval in that conversation (or is another user's)."""

    default_detail = "Tool call not found, or it does not await approval in this conversation"


class DecisionConflict(ChatError):
    """A decision contradicts the one already stored for the call (or the call was denied as expired/superseded)."""

    default_detail = "This tool call was already decided otherwise"


class TurnStillOpen(ChatError):
    """A store's answer to ``begin_turn`` while the conversation's last turn still has tool calls without results
    (waiting for approval, or decided but not continued): the caller closes that turn first, then begins again.
    A signal between the store and the service; it never reaches a client."""

    default_detail = "The conversation's last turn is still open"

    def __init__(self, turn_id: uuid.UUID, detail: str | None = None) -> None:
        super().__init__(detail)
        self.turn_id = turn_id
