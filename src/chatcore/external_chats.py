"""Frontend chat ids: which of the user's conversations a chat id from a UI protocol names.

The AI SDK names a chat with a short random id of its own; AG-UI names a thread. A UUID that is one
of the user's conversations is that conversation, so a frontend may also open a conversation it got
from the history API. Any other id, another user's conversation id included, names a conversation
of its own, created on first use and remembered per user (``ConversationAliases``): an id never
reaches another user's conversation.
"""

from __future__ import annotations

import uuid
from typing import Final

from chatcore.errors import ConversationNotFound, InvalidRequest
from chatcore.ports import ConversationAliases, ConversationReader

MAX_CHAT_ID_LENGTH: Final = 255


def valid_chat_id(chat_id: object) -> str:
    """The chat id as given, or InvalidRequest: 1-255 characters, no control characters."""
    if not isinstance(chat_id, str) or not chat_id.strip():
        raise InvalidRequest("the chat id must be a non-empty string")
    if len(chat_id) > MAX_CHAT_ID_LENGTH:
        raise InvalidRequest(f"the chat id must be at most {MAX_CHAT_ID_LENGTH} characters")
    if any(ord(character) < 32 or ord(character) == 127 for character in chat_id):
        raise InvalidRequest("the chat id must not contain control characters")
    return chat_id


class ExternalChats:
    """Resolves frontend chat ids to the user's conversations."""

    def __init__(self, conversations: ConversationReader, aliases: ConversationAliases) -> None:
        self.conversations = conversations
        self.aliases = aliases

    async def _own_conversation(self, user_id: str, chat_id: str) -> uuid.UUID | None:
        try:
            conversation_id = uuid.UUID(chat_id)
        except ValueError:
            return None
        try:
            await self.conversations.get(user_id, conversation_id)
        except ConversationNotFound:
            return None
        return conversation_id

    async def find(self, user_id: str, chat_id: str) -> uuid.UUID | None:
        """The conversation ``chat_id`` names for the user, or None when it names none yet (nothing is created)."""
        chat_id = valid_chat_id(chat_id)
        own = await self._own_conversation(user_id, chat_id)
        return own if own is not None else await self.aliases.find(user_id, chat_id)

    async def open(self, user_id: str, chat_id: str, *, title: str | None) -> uuid.UUID:
        """The conversation ``chat_id`` names for the user, created (titled ``title``) on the id's first use."""
        chat_id = valid_chat_id(chat_id)
        own = await self._own_conversation(user_id, chat_id)
        return own if own is not None else await self.aliases.find_or_create(user_id, chat_id, title=title)
