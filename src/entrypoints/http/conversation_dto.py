"""Bodies of the history, stream and task endpoints, with the examples shown in the OpenAPI schema."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any

import msgspec

from chatcore import conversations
from chatcore.adapters.todo.model import Task
from chatcore.conversations import MAX_TITLE_LENGTH, HistoryEntry, Page
from chatcore.entrypoints.http.dto import PendingApprovalOut, ToolCallOut
from chatcore.model import Conversation, ConversationSummary


class ConversationOut(msgspec.Struct):
    id: uuid.UUID
    title: str | None
    created_at: datetime
    updated_at: Annotated[datetime, msgspec.Meta(description="When the conversation last changed; lists sort by it.")]
    preview: Annotated[
        str | None, msgspec.Meta(description="The start of the newest user or assistant message with text.")
    ] = None
    awaiting_approval: Annotated[
        bool, msgspec.Meta(description="Tool calls of its last turn wait for the user's decision.")
    ] = False

    @classmethod
    def from_summary(cls, summary: ConversationSummary) -> ConversationOut:
        s = summary
        return cls(s.id, s.title, s.created_at, s.updated_at, s.preview, s.awaiting_approval)

    @classmethod
    def from_conversation(cls, conversation: Conversation) -> ConversationOut:
        return cls(conversation.id, conversation.title, conversation.created_at, conversation.updated_at)


class ConversationDetail(ConversationOut):
    """One conversation, with the tool calls that wait for the user's decision."""

    pending_approvals: Annotated[
        list[PendingApprovalOut],
        msgspec.Meta(description="Approve or deny them at POST .../approvals; [] when none."),
    ] = msgspec.field(default_factory=list)

    @classmethod
    def from_detail(cls, detail: conversations.ConversationDetail) -> ConversationDetail:
        c = detail.conversation
        pending = [PendingApprovalOut.from_call(a.call) for a in detail.pending_approvals]
        return cls(c.id, c.title, c.created_at, c.updated_at, None, detail.awaiting_approval, pending)


class ConversationPage(msgspec.Struct):
    items: list[ConversationOut]
    next_cursor: Annotated[
        str | None, msgspec.Meta(description="Pass as `cursor` for the next page; null on the last page.")
    ]

    @classmethod
    def from_page(cls, page: Page[ConversationSummary]) -> ConversationPage:
        return cls([ConversationOut.from_summary(s) for s in page.items], page.next_cursor)


class MessageOut(msgspec.Struct):
    id: uuid.UUID
    seq: Annotated[int, msgspec.Meta(description="The message's place in the conversation, from 1.")]
    role: Annotated[str, msgspec.Meta(description="user or assistant (tool results come inside tool_calls).")]
    content: str
    status: Annotated[
        str,
        msgspec.Meta(
            description=(
                "complete; unanswered (a user message whose turn failed); interrupted (a stopped reply); superseded "
                "(a reply generated again since: no model sees it again)."
            )
        ),
    ]
    created_at: datetime
    tool_calls: list[ToolCallOut]

    @classmethod
    def from_entry(cls, entry: HistoryEntry) -> MessageOut:
        m = entry.message
        return cls(
            id=m.id,
            seq=m.seq,
            role=m.role.value,
            content=m.content,
            status=m.status.value,
            created_at=m.created_at,
            tool_calls=[ToolCallOut.from_record(c) for c in entry.tool_calls],
        )


class MessagePage(msgspec.Struct):
    items: list[MessageOut]
    next_cursor: Annotated[
        str | None, msgspec.Meta(description="Pass as `cursor` for the next page; null on the last page.")
    ]

    @classmethod
    def from_page(cls, page: Page[HistoryEntry]) -> MessagePage:
        return cls([MessageOut.from_entry(e) for e in page.items], page.next_cursor)


class RenameRequest(msgspec.Struct, kw_only=True):
    title: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_TITLE_LENGTH, examples=["Groceries for the week"])]


class StopResponse(msgspec.Struct):
    conversation_id: uuid.UUID
    stopped_turn_ids: Annotated[
        list[uuid.UUID], msgspec.Meta(description="The turns asked to stop; empty when none was running.")
    ]


class TaskOut(msgspec.Struct):
    id: int
    title: str
    description: str | None
    completed: bool
    created_at: datetime
    updated_at: datetime

    @classmethod
    def from_task(cls, task: Task) -> TaskOut:
        return cls(task.id, task.title, task.description, task.completed, task.created_at, task.updated_at)


class DevToken(msgspec.Struct):
    user_id: str
    token: str


CONVERSATION_EXAMPLE: dict[str, Any] = {
    "id": "7b0c1a52-9d3e-4f7a-8f8e-2d7c1f0e9a11",
    "title": "Add a task to buy milk",
    "created_at": "2025-03-01T09:30:00Z",
    "updated_at": "2025-03-01T09:31:12Z",
    "preview": "I've added 'Buy milk' to your tasks (task 1).",
    "awaiting_approval": False,
}
CONVERSATION_PAGE_EXAMPLE: dict[str, Any] = {"items": [CONVERSATION_EXAMPLE], "next_cursor": "YzF8MjAyNS0wMy0wMVQw"}
MESSAGE_PAGE_EXAMPLE: dict[str, Any] = {
    "items": [
        {
            "id": "2c9d4e6f-1a3b-4c5d-8e7f-9a0b1c2d3e4f",
            "seq": 1,
            "role": "user",
            "content": "Add a task to buy milk",
            "status": "complete",
            "created_at": "2025-03-01T09:30:00Z",
            "tool_calls": [],
        },
        {
            "id": "0f6e3a1b-5c2d-4e8f-9a7b-3c1d2e4f5a6b",
            "seq": 2,
            "role": "assistant",
            "content": "",
            "status": "complete",
            "created_at": "2025-03-01T09:30:01Z",
            "tool_calls": [
                {
                    "id": "call_1",
                    "name": "add_task",
                    "arguments": {"title": "Buy milk"},
                    "result": {"task_id": 1, "status": "created", "title": "Buy milk"},
                }
            ],
        },
        {
            "id": "5a6b7c8d-9e0f-4a1b-8c2d-3e4f5a6b7c8d",
            "seq": 4,
            "role": "assistant",
            "content": "I've added 'Buy milk' to your tasks (task 1).",
            "status": "complete",
            "created_at": "2025-03-01T09:30:02Z",
            "tool_calls": [],
        },
    ],
    "next_cursor": None,
}
TASKS_EXAMPLE: list[dict[str, Any]] = [
    {
        "id": 1,
        "title": "Buy milk",
        "description": None,
        "completed": False,
        "created_at": "2025-03-01T09:30:01Z",
        "updated_at": "2025-03-01T09:30:01Z",
    }
]
SSE_EXAMPLE = (
    "id: 1\nevent: turn\n"
    'data: {"conversation_id":"7b0c1a52-…","turn_id":"c3d4…","user_message_id":"2c9d…","message_id":"5a6b…"}\n\n'
    'id: 2\nevent: tool_call\ndata: {"id":"call_1","name":"add_task","arguments":{"title":"Buy milk"}}\n\n'
    'id: 3\nevent: tool_result\ndata: {"id":"call_1","name":"add_task","result":{"task_id":1,"status":"created"}}\n\n'
    'id: 4\nevent: delta\ndata: {"text":"I\'ve "}\n\n'
    'id: 5\nevent: delta\ndata: {"text":"added \'Buy milk\'."}\n\n'
    'id: 6\nevent: done\ndata: {"conversation_id":"7b0c…","message_id":"5a6b…","response":"I\'ve added \'Buy milk\'.",'
    '"tool_calls":[…],"interrupted":false}\n\n'
)
