"""History windows and tool-pair repair: any stored history must be valid for any provider."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from chatcore.history import INTERRUPTED_RESULT, repair_tool_pairs, window
from chatcore.model import ChatMessage, Role, ToolCall


def call(call_id: str) -> ToolCall:
    return ToolCall(call_id, "list_tasks", {})


def result(call_id: str) -> ChatMessage:
    return ChatMessage(role=Role.TOOL, content="[]", tool_call_id=call_id)


def test_dangling_call_gets_an_interrupted_result_and_orphan_result_is_dropped() -> None:
    history = [
        result("orphan"),
        ChatMessage.user("hi"),
        ChatMessage.assistant("", [call("a"), call("b")]),
        result("a"),
        ChatMessage.user("next"),
    ]
    repaired = repair_tool_pairs(history)
    assert [(m.role, m.tool_call_id) for m in repaired] == [
        (Role.USER, None),
        (Role.ASSISTANT, None),
        (Role.TOOL, "a"),
        (Role.TOOL, "b"),
        (Role.USER, None),
    ]
    assert repaired[3].content == INTERRUPTED_RESULT
    assert repaired[3].is_error


def test_window_never_starts_with_a_tool_result() -> None:
    history = [ChatMessage.user("q"), ChatMessage.assistant("", [call("a")]), result("a"), ChatMessage.assistant("ok")]
    # A cut inside the pair moves back to the assistant call that opened it.
    assert [m.role for m in window(history, max_messages=2)] == [Role.ASSISTANT, Role.TOOL, Role.ASSISTANT]
    assert len(window(history, max_messages=10)) == 4
    # When the call is not among the rows read, the orphaned result is dropped instead.
    assert [m.role for m in window(history[2:], max_messages=2)] == [Role.ASSISTANT]


def test_window_respects_the_token_budget_but_keeps_the_newest_message() -> None:
    history = [ChatMessage.user("x" * 400) for _ in range(10)]
    assert len(window(history, max_messages=50, max_tokens=250)) == 2
    assert len(window(history, max_messages=50, max_tokens=1)) == 1


messages = st.lists(
    st.one_of(
        st.builds(ChatMessage.user, st.text(max_size=5)),
        st.builds(
            lambda ids: ChatMessage.assistant("", [call(i) for i in dict.fromkeys(ids)]),
            st.lists(st.sampled_from("abcd"), max_size=3),
        ),
        st.builds(result, st.sampled_from("abcde")),
    ),
    max_size=30,
)


@given(messages, st.integers(min_value=0, max_value=30))
def test_repaired_windows_always_pair_every_call_with_exactly_one_result(history: list[ChatMessage], size: int) -> None:
    repaired = repair_tool_pairs(window(history, max_messages=size))
    open_calls: set[str] = set()
    for message in repaired:
        if message.role is Role.TOOL:
            assert message.tool_call_id in open_calls
            open_calls.remove(message.tool_call_id)
        else:
            assert not open_calls
            open_calls = {c.id for c in message.tool_calls}
    assert not open_calls
    assert repair_tool_pairs(repaired) == repaired
