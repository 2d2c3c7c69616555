"""OfflineTodoAgent: a deterministic parser of everyday todo phrasing that plays the model's part.

It emits the same tool calls a model would, so ChatService's whole tool loop (tool calls,
results, persistence) runs with no network and no API key: for demos, local development
and end-to-end tests. It is stateless like a real model: every step is decided from
``request.messages`` alone. The last user message is the instruction; the assistant and
tool messages after it are this turn's steps so far.

The parser is a table of compiled regexes, tried in order, each with a small handler.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Final

from chatcore.history import INTERRUPTED_ERROR
from chatcore.model import (
    AgentRequest,
    AgentResponse,
    AgentStreamEvent,
    ChatMessage,
    JsonValue,
    Role,
    TextDelta,
    ToolCall,
    ToolResult,
    Usage,
)
from chatcore.turn_events import stream_of_response

MODEL: Final = "offline"
"""The model name the offline agent reports (it costs no tokens)."""

EXAMPLES: Final = (
    "- “Add a task to buy groceries”\n"
    "- “Show me all my tasks” or “What's pending?”\n"
    "- “Mark task 3 as complete” or “Complete the groceries task”\n"
    "- “Delete task 2” or “Remove the meeting task”\n"
    "- “Rename task 1 to Call mom” or “Update task 1 description to Before 6pm”"
)
HELP: Final = (
    "I'm your todo assistant (running offline). I can add, list, complete, delete and update your tasks. "
    f"Try for example:\n{EXAMPLES}"
)


@dataclass(frozen=True, slots=True)
class _Step:
    """A tool call made earlier in this turn, with what it returned."""

    call: ToolCall
    result: ToolResult


@dataclass(frozen=True, slots=True)
class _Turn:
    """The turn as far as it has got: the instruction and the steps taken for it."""

    instruction: ChatMessage
    steps: tuple[_Step, ...]
    tools: frozenset[str]

    def call(self, name: str, **arguments: JsonValue) -> AgentResponse:
        """Ask for one tool call; its id comes from the user message and the step number, so reruns repeat it."""
        if name not in self.tools:
            return AgentResponse(f"Sorry, I can't do that right now: the {name} tool is not available.", (), "end_turn")
        call_id = f"offline_{self.instruction.id.hex}_{len(self.steps) + 1}"
        return AgentResponse("", (ToolCall(call_id, name, arguments),), "tool_use")

    def reply(self, text: str) -> AgentResponse:
        return AgentResponse(text, (), "end_turn")

    def report(self) -> AgentResponse:
        """The final answer: what the last tool call did, or why it failed (or was denied, or may not have run)."""
        step = self.steps[-1]
        if step.result.error is None:
            return self.reply(_success(step))
        if step.result.error.startswith(DENIED):
            return self.reply(_kept(step, self.steps[:-1]))
        if step.result.error.startswith(MAY_NOT_HAVE_RUN):
            return self.reply(_unknown(step))
        return self.reply(_failure(step))


DENIED: Final = "denied by the user"
"""How a tool result starts when the user denied the call (``ChatService.decide``)."""
MAY_NOT_HAVE_RUN: Final = INTERRUPTED_ERROR.partition(":")[0]
"""How a tool result starts when its call was cut short: it may or may not have run."""

_Handler = Callable[[re.Match[str], _Turn], AgentResponse]


@dataclass(frozen=True, slots=True)
class _Intent:
    pattern: re.Pattern[str]
    handle: _Handler


class OfflineTodoAgent:
    """An LLMAgent that understands everyday todo phrasing without a model. Never raises, never calls out."""

    provider = "offline"

    def __init__(self, *, word_delay_seconds: float = 0.0) -> None:
        if word_delay_seconds < 0:
            raise ValueError("word_delay_seconds must not be negative")
        self.word_delay_seconds = word_delay_seconds

    async def stream(self, request: AgentRequest) -> AsyncIterator[AgentStreamEvent]:
        """The reply word by word, like a model streams it; ``word_delay_seconds`` paces a demo so it can be seen."""
        for event in stream_of_response(await self.complete(request)):
            if isinstance(event, TextDelta):
                await asyncio.sleep(self.word_delay_seconds)
            yield event

    async def complete(self, request: AgentRequest) -> AgentResponse:
        """The step, costing no tokens: usage is zero and the model is ``offline``."""
        return replace(_answer(request), usage=Usage(), model=MODEL)


def _answer(request: AgentRequest) -> AgentResponse:
    turn = _read_turn(request)
    if turn is None:
        return AgentResponse(f"Hi! {HELP}", (), "end_turn")
    line = _one_line(turn.instruction.content)
    command = _without_politeness(line)
    for intent in _INTENTS:
        match = intent.pattern.fullmatch(command)
        if match is not None:
            return intent.handle(match, turn)
    return turn.reply(_not_understood(line))


def _read_turn(request: AgentRequest) -> _Turn | None:
    """The last user message and the tool calls (paired with their results) made after it."""
    messages = request.messages
    last_user = next((i for i in range(len(messages) - 1, -1, -1) if messages[i].role is Role.USER), None)
    if last_user is None:
        return None
    after = messages[last_user + 1 :]
    results = {
        m.tool_call_id: ToolResult.from_content(m.content, is_error=m.is_error)
        for m in after
        if m.role is Role.TOOL and m.tool_call_id is not None
    }
    steps = tuple(
        _Step(call, results.get(call.id, ToolResult(error=INTERRUPTED_ERROR)))
        for m in after
        if m.role is Role.ASSISTANT
        for call in m.tool_calls
    )
    return _Turn(messages[last_user], steps, frozenset(spec.name for spec in request.tools))


# --- Normalising the instruction -------------------------------------------------------------------------------

_QUOTES = str.maketrans({"‘": "'", "’": "'", "“": '"', "”": '"', "`": "'"})
_POLITE_PREFIX = re.compile(
    r"(?:(?:hey|hi|hello|ok|okay|so|and|also|now|um+|well)\b[,!.]?\s+)*"
    r"(?:(?:please|pls|kindly)\s+)?"
    r"(?:(?:can|could|would|will)\s+you\s+(?:please\s+)?)?"
    r"(?:(?:i\s+want|i'd\s+like|i\s+would\s+like)\s+(?:you\s+)?to\s+)?",
    re.IGNORECASE,
)
_POLITE_SUFFIX = re.compile(r"(?:[\s,]+(?:please|pls|thanks|thank\s+you|thx))+$", re.IGNORECASE)
_TRAILING_PUNCTUATION = re.compile(r"[\s.!?,;:]+$")
_WRAPPING_QUOTES = re.compile(r"^[\s'\"]+|[\s'\"]+$")


def _one_line(text: str) -> str:
    """Single spaces, straight quotes, no trailing punctuation."""
    return _TRAILING_PUNCTUATION.sub("", " ".join(text.translate(_QUOTES).split()))


def _without_politeness(line: str) -> str:
    """The command the patterns are written against: "Hey, could you please add milk, thanks" -> "add milk"."""
    command = _POLITE_PREFIX.sub("", line, count=1) or line
    return _TRAILING_PUNCTUATION.sub("", _POLITE_SUFFIX.sub("", command)) or command


def _unquote(text: str) -> str:
    return _WRAPPING_QUOTES.sub("", _TRAILING_PUNCTUATION.sub("", text))


def _capitalised(text: str) -> str:
    return text[:1].upper() + text[1:]


# --- Titles and targets ----------------------------------------------------------------------------------------

_LIST_WORDS = r"(?:(?:my|the)\s+)?(?:(?:todo|to-do|to\s+do|task|tasks)\s+)?(?:list|tasks)"
_TITLE_CLEANUPS: Final = tuple(
    re.compile(pattern, re.IGNORECASE)
    for pattern in (
        # "a new task called ...", "task: ...", "a reminder to ..."
        r"^(?:(?:a|an|the|new|another|my)\s+)*(?:task|todo|to-do|reminder|item|note)s?\b"
        r"\s*(?:(?:called|named|titled|saying|that\s+says|for|about)\b|[:\-–])?\s*",
        rf"^(?:to|on|onto|in)\s+{_LIST_WORDS}\s*[:\-–]?\s*",  # "to my list: ..."
        rf"\s+(?:to|on|onto|in)\s+{_LIST_WORDS}$",  # "... to my todo list"
        r"^to\s+",  # "a task to buy milk", "remind me to ..."
    )
)
_WITH_DESCRIPTION = re.compile(
    r"\s*,?\s+with\s+(?:a\s+|the\s+)?(?:description|details|notes?)\s*[:\-–]?\s*", re.IGNORECASE
)
_TARGET_LEAD = re.compile(r"^(?:(?:the|my|a|an|that|this|all|all\s+of)\s+)+", re.IGNORECASE)
_TARGET_TAIL = re.compile(
    rf"(?:(?:^|\s+)(?:task|tasks|todo|todos|item|items|one|entry)|\s+(?:from|on|in|off)\s+{_LIST_WORDS})+$",
    re.IGNORECASE,
)
_TARGET_ID = re.compile(r"(?:(?:task|todo|to-do|item|number|no\.?)\s*)?(?:number\s*)?#?\s*(\d{1,18})", re.IGNORECASE)


def _task_title(text: str) -> tuple[str, str | None]:
    """The title (first letter capitalised) and the optional description of "add ..." phrasing."""
    parts = _WITH_DESCRIPTION.split(text, maxsplit=1)
    title, description = (parts[0], _unquote(parts[1]) or None) if len(parts) == 2 else (text, None)
    for cleanup in _TITLE_CLEANUPS:
        title = cleanup.sub("", _unquote(title), count=1)
    return _capitalised(_unquote(title)), description


@dataclass(frozen=True, slots=True)
class _Target:
    """Which task the user means: by id ("task 3"), or by words of its title ("the groceries task")."""

    task_id: int | None
    words: str

    @classmethod
    def parse(cls, text: str) -> _Target:
        text = _unquote(text)
        found = _TARGET_ID.fullmatch(text)
        if found is not None:
            return cls(int(found.group(1)), "")
        words = _unquote(_TARGET_TAIL.sub("", _TARGET_LEAD.sub("", text)))
        return cls(None, words)


# --- Handlers --------------------------------------------------------------------------------------------------

_PENDING = re.compile(
    r"\b(?:pending|incomplete|unfinished|uncompleted|outstanding|remaining|left|open|still|have\s+to|need\s+to"
    r"|not\s+(?:yet\s+)?(?:done|complete|completed|finished))\b",
    re.IGNORECASE,
)
_COMPLETED = re.compile(r"\b(?:complete|completed|finished|done|did)\b", re.IGNORECASE)
_GREETING = re.compile(
    r"(?:hi|hello|hey|hiya|howdy|yo|greetings|good\s+(?:morning|afternoon|evening)|what's\s+up|sup)\b.*",
    re.IGNORECASE,
)
_THANKS = re.compile(r"(?:thanks|thank\s+you|thx|cheers|great|perfect|awesome|nice)\b.*", re.IGNORECASE)


def _add(match: re.Match[str], turn: _Turn) -> AgentResponse:
    if turn.steps:
        return turn.report()
    title, description = _task_title(match.group("rest"))
    if not title:
        return turn.reply("What should the task be? For example: “Add a task to buy groceries”.")
    if description is None:
        return turn.call("add_task", title=title)
    return turn.call("add_task", title=title, description=description)


def _list(match: re.Match[str], turn: _Turn) -> AgentResponse:
    if turn.steps:
        return turn.report()
    text = match.group(0)
    status = "pending" if _PENDING.search(text) else "completed" if _COMPLETED.search(text) else "all"
    return turn.call("list_tasks", status=status)


def _complete(match: re.Match[str], turn: _Turn) -> AgentResponse:
    return _act(turn, "complete_task", match.group("target"), {})


def _delete(match: re.Match[str], turn: _Turn) -> AgentResponse:
    return _act(turn, "delete_task", match.group("target"), {})


def _update(match: re.Match[str], turn: _Turn) -> AgentResponse:
    field = (match.groupdict().get("field") or "title").lower()
    if field in ("description", "details", "notes"):
        value = _unquote(match.group("value"))
        return _act(turn, "update_task", match.group("target"), {"description": value})
    title = _capitalised(_unquote(match.group("value")))
    if not title:
        return turn.reply("What should the new title be? For example: “Rename task 1 to Call mom”.")
    return _act(turn, "update_task", match.group("target"), {"title": title})


def _act(turn: _Turn, tool: str, target_text: str, arguments: dict[str, JsonValue]) -> AgentResponse:
    """Run ``tool`` on the task the user named: directly by id, or by looking its title up with list_tasks first."""
    target = _Target.parse(target_text)
    if target.task_id is not None:
        return turn.report() if turn.steps else turn.call(tool, task_id=target.task_id, **arguments)
    if not target.words:
        return turn.reply(f"Which task? Tell me its number or its name, e.g. “{_EXAMPLE[tool].format(id=3)}”.")
    if not turn.steps:
        return turn.call("list_tasks", status="all")
    lookup = turn.steps[0]
    if len(turn.steps) > 1 or lookup.call.name != "list_tasks" or lookup.result.error is not None:
        return turn.report()
    tasks = _tasks(lookup.result.result)
    matches = _matching(tasks, target.words)
    if not matches:
        return turn.reply(f"I couldn't find a task matching “{target.words}”. Say “show my tasks” to see them all.")
    if len(matches) > 1:
        lines = "\n".join(_line(task) for task in matches)
        example = _EXAMPLE[tool].format(id=matches[0].id)
        return turn.reply(
            f"Several tasks match “{target.words}”:\n{lines}\n"
            f"Which one do you mean? Tell me its number, e.g. “{example}”."
        )
    return turn.call(tool, task_id=matches[0].id, **arguments)


_EXAMPLE: Final = {
    "complete_task": "complete task {id}",
    "delete_task": "delete task {id}",
    "update_task": "rename task {id} to Call mom",
}


def _intent(pattern: str, handle: _Handler) -> _Intent:
    return _Intent(re.compile(pattern, re.IGNORECASE), handle)


_DONE = r"(?:complete|completed|done|finished)"
_LIST_LEAD = (
    r"(?:show|list|display|see|view|tell|print|what|what's|whats|which|how\s+many|do\s+i\s+have|are\s+there|any)"
)
_LIST_KEYWORD = (
    r"(?:tasks?|todos?|to-?dos?|list|items?|pending|complete|completed|finished|done|left|remaining|outstanding"
    r"|incomplete|unfinished|still|have\s+to\s+do|need\s+to\s+do)"
)

# Tried in order; the first pattern that matches the whole normalised instruction wins.
_INTENTS: Final = (
    # "Update task 1 title to X", "Change task 1's description to X"
    _intent(
        r"(?:rename|change|update|edit|set)\s+(?P<target>.+?)(?:'s)?\s+(?P<field>title|name|description|details|notes)"
        r"\s+(?:to|as|into)\s*:?\s+(?P<value>.+)",
        _update,
    ),
    # "Change the description of task 1 to X"
    _intent(
        r"(?:change|update|edit|set)\s+(?:the\s+)?(?P<field>title|name|description|details|notes)\s+(?:of|for|on)\s+"
        r"(?P<target>.+?)\s+(?:to|as|into)\s*:?\s+(?P<value>.+)",
        _update,
    ),
    # "Mark task 3 as complete", "mark buy milk as done", "set task 2 to done"
    _intent(rf"(?:mark|set|change|update|flag)\s+(?P<target>.+?)\s+(?:as|to)\s+(?:being\s+)?{_DONE}", _complete),
    # "Change task 1 to 'Call mom tonight'", "Rename the milk task to Buy oat milk"
    _intent(r"(?:rename|change|update|edit)\s+(?P<target>.+?)\s+(?:to|as|into)\s*:?\s+(?P<value>.+)", _update),
    # "Complete task 3", "I finished task 3", "Done with task 3", "check off the report task"
    _intent(r"(?:complete|finish|check\s+off|tick\s+off|cross\s+off)\s+(?P<target>.+)", _complete),
    _intent(r"(?:i(?:'ve|\s+have)?\s+(?:just\s+|already\s+)?)?(?:finished|completed|did)\s+(?P<target>.+)", _complete),
    _intent(r"(?:(?:i'm|i\s+am)\s+)?done\s+with\s+(?P<target>.+)", _complete),
    # "Delete task 2", "Remove the groceries task"
    _intent(r"(?:delete|remove|erase|drop|cancel|trash|get\s+rid\s+of)\s+(?P<target>.+)", _delete),
    # "Add a task to buy groceries", "Add buy milk", "Create a task called X"
    _intent(r"(?:add|create|put)\b\s*(?P<rest>.*)", _add),
    _intent(r"(?P<rest>new\s+(?:task|todo|to-do|item|reminder)\b.*)", _add),
    # "Remind me to X", "I need to remember to pay bills", "Don't let me forget to X"
    _intent(r"remind\s+me\s+(?:to\s+|about\s+|that\s+)?(?P<rest>.+)", _add),
    _intent(r"(?:i\s+)?(?:need|have|want|got)\s+to\s+remember\s+(?:to\s+)?(?P<rest>.+)", _add),
    _intent(r"(?:don't|do\s+not)\s+let\s+me\s+forget\s+(?:to\s+)?(?P<rest>.+)", _add),
    _intent(r"remember\s+to\s+(?P<rest>.+)", _add),
    # "Show me all my tasks", "What's pending?", "What have I completed?", "my tasks"
    _intent(rf"(?=.*\b{_LIST_KEYWORD}\b){_LIST_LEAD}\b.*", _list),
    _intent(r"(?:(?:my|the|all)\s+)*(?:(?:todo|to-do|to\s+do|task)\s+)?(?:tasks|todos|list)", _list),
    # "Task 3 is done", "the groceries task is complete"
    _intent(rf"(?P<target>.+?)\s+is\s+(?:now\s+)?{_DONE}", _complete),
)


# --- Reading results and writing replies -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Task:
    id: int
    title: str
    description: str | None
    completed: bool


def _tasks(result: JsonValue) -> list[_Task]:
    """The tasks of a list_tasks result; entries that do not look like tasks are skipped, never trusted."""
    if not isinstance(result, list):
        return []
    tasks: list[_Task] = []
    for item in result:
        if isinstance(item, Mapping) and isinstance(item.get("id"), int) and isinstance(item.get("title"), str):
            description = item.get("description")
            tasks.append(
                _Task(
                    item["id"],
                    item["title"],
                    description if isinstance(description, str) and description else None,
                    item.get("completed") is True,
                )
            )
    return tasks


def _matching(tasks: Sequence[_Task], words: str) -> list[_Task]:
    """Tasks whose title contains every word (case-insensitive); an exact title wins over partial matches."""
    wanted = words.casefold()
    exact = [task for task in tasks if task.title.casefold() == wanted]
    if len(exact) == 1:
        return exact
    parts = wanted.split()
    return [task for task in tasks if all(part in task.title.casefold() for part in parts)]


def _line(task: _Task) -> str:
    marker = " ✓" if task.completed else ""
    details = f" — {task.description}" if task.description else ""
    return f"{task.id}. {task.title}{marker}{details}"


_EMPTY: Final = {
    "all": "You have no tasks yet. Try “Add a task to buy groceries”.",
    "pending": "You have no pending tasks. Nice work!",
    "completed": "You haven't completed any tasks yet.",
}
_HEADING: Final = {
    "all": "Here are your tasks (✓ = completed):",
    "pending": "Here's what's still pending:",
    "completed": "Here's what you've completed:",
}


def _success(step: _Step) -> str:
    call, result = step.call, step.result.result
    if call.name == "list_tasks":
        status = str(call.arguments.get("status", "all"))
        tasks = _tasks(result)
        if not tasks:
            return _EMPTY.get(status, _EMPTY["all"])
        return "\n".join([_HEADING.get(status, _HEADING["all"]), *(_line(task) for task in tasks)])
    fields = result if isinstance(result, Mapping) else {}
    task_id = fields.get("task_id", call.arguments.get("task_id"))
    title = fields.get("title", call.arguments.get("title", ""))
    if call.name == "add_task":
        return f"I've added '{title}' to your tasks (task {task_id})."
    if call.name == "complete_task":
        return f"Done! I've marked '{title}' (task {task_id}) as complete."
    if call.name == "delete_task":
        return f"I've deleted '{title}' (task {task_id})."
    if call.name == "update_task":
        if "title" in call.arguments:
            return f"I've renamed task {task_id} to '{title}'."
        return f"I've updated the description of '{title}' (task {task_id})."
    return "Done."


_DOING: Final = {
    "add_task": "add that task",
    "list_tasks": "list your tasks",
    "complete_task": "complete task {id}",
    "delete_task": "delete task {id}",
    "update_task": "update task {id}",
}


_KEPT: Final = {
    "add_task": "OK, I haven't added '{title}'",
    "complete_task": "OK, I've left {task} as it is, not completed",
    "delete_task": "OK, I've kept {task}: it was not deleted",
    "update_task": "OK, I've left {task} unchanged",
}


def _kept(step: _Step, earlier: Sequence[_Step]) -> str:
    """The answer when the user denied the call: nothing changed, with the task named as the user knows it."""
    task_id = step.call.arguments.get("task_id")
    title = step.call.arguments.get("title") if step.call.name == "add_task" else _title_of(task_id, earlier)
    task = f"'{title}' (task {task_id})" if title and task_id is not None else f"task {task_id}"
    template = _KEPT.get(step.call.name, "OK, I haven't done that")
    reason = step.result.error.removeprefix(DENIED).lstrip(": ") if step.result.error else ""
    said = f" (you said: {reason})" if reason else ""
    return f"{template.format(task=task, title=title)}{said}."


def _title_of(task_id: JsonValue, steps: Sequence[_Step]) -> str | None:
    """A task's title as an earlier list_tasks call of this turn returned it."""
    for step in steps:
        if step.call.name == "list_tasks" and step.result.error is None:
            for task in _tasks(step.result.result):
                if task.id == task_id:
                    return task.title
    return None


def _unknown(step: _Step) -> str:
    task_id = step.call.arguments.get("task_id")
    doing = _DOING.get(step.call.name, "do that").format(id=task_id)
    return f"I can't tell whether I managed to {doing}: {step.result.error}. Say “show my tasks” to check."


def _failure(step: _Step) -> str:
    error = step.result.error or "unknown error"
    task_id = step.call.arguments.get("task_id")
    if task_id is not None and "not found" in error.casefold():
        return f"I couldn't find task {task_id}. Say “show my tasks” to see your tasks and their numbers."
    doing = _DOING.get(step.call.name, "do that").format(id=task_id)
    return f"Sorry, I couldn't {doing}: {error}"


def _not_understood(text: str) -> str:
    if _GREETING.fullmatch(text) or text.casefold() in ("help", "?", ""):
        return f"Hi! {HELP}"
    if _THANKS.fullmatch(text):
        return f"You're welcome! {HELP}"
    return f"Sorry, I didn't understand that. {HELP}"
