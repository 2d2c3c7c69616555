"""chatcore: a stateless chat backend for tool-using AI assistants.

The domain (this package's top-level modules) works only through the ports in
``chatcore.ports``; adapters live in ``chatcore.adapters`` and the HTTP app,
container and CLI in ``chatcore.entrypoints``.
"""

from chatcore.errors import (
    AgentError,
    AgentRateLimited,
    AgentTimeout,
    AgentUnavailable,
    AuthUnavailable,
    ChatError,
    ContextTooLong,
    ConversationBusy,
    ConversationNotFound,
    Forbidden,
    IdempotencyInProgress,
    IdempotencyKeyReused,
    InvalidMessage,
    LeaseLost,
    StoreUnavailable,
    ToolError,
    Unauthenticated,
)
from chatcore.model import (
    AgentRequest,
    AgentResponse,
    ChatMessage,
    ChatReply,
    Conversation,
    Message,
    MessageStatus,
    Principal,
    Role,
    ToolCall,
    ToolCallRecord,
    ToolResult,
    ToolSpec,
    TurnStart,
)
from chatcore.ports import ConversationReader, ConversationStore, LLMAgent, TokenVerifier, ToolRegistry, TurnClaimStore
from chatcore.service import ChatPolicy, ChatService

__all__ = [
    "AgentError",
    "AgentRateLimited",
    "AgentRequest",
    "AgentResponse",
    "AgentTimeout",
    "AgentUnavailable",
    "AuthUnavailable",
    "ChatError",
    "ChatMessage",
    "ChatPolicy",
    "ChatReply",
    "ChatService",
    "ContextTooLong",
    "Conversation",
    "ConversationBusy",
    "ConversationNotFound",
    "ConversationReader",
    "ConversationStore",
    "Forbidden",
    "IdempotencyInProgress",
    "IdempotencyKeyReused",
    "InvalidMessage",
    "LLMAgent",
    "LeaseLost",
    "Message",
    "MessageStatus",
    "Principal",
    "Role",
    "StoreUnavailable",
    "TokenVerifier",
    "ToolCall",
    "ToolCallRecord",
    "ToolError",
    "ToolRegistry",
    "ToolResult",
    "ToolSpec",
    "TurnClaimStore",
    "TurnStart",
    "Unauthenticated",
]

__version__ = "0.1.0"
