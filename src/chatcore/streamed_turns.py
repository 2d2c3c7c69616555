"""Streamed turns: run in the background, logged to the database, replayable and stoppable from any replica.

A streamed turn is an ordinary ``ChatService.send`` with a sink (``TurnRun``). It runs as its
own task, so a client that disconnects does not cancel it: the turn completes and is stored.
Text pieces arriving close together become one ``delta`` event; every event gets a number within its
turn, goes at once to the clients following on this replica, and is written to the ``TurnEventStore``
in batches (the turn's first event with its start, its last with its end), so a turn costs a few
transactions however many pieces the model sends. A client that reconnects with the last number it
saw gets the rest, replayed from the store and then followed live. A stop request is a flag in the
store that the running turn checks, so it works whichever replica receives it.

Both wait on ``TurnNotifications`` rather than asking the store again and again: on PostgreSQL a turn's
writes and stop requests notify every replica (LISTEN/NOTIFY), so a running turn and a follower read
the store only when something happened; without notifications (SQLite) they poll every
``poll_seconds``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

from chatcore.approvals import validate_decisions
from chatcore.errors import ChatError, ConversationBusy, TurnFailed, TurnNotFound
from chatcore.model import (
    AgentRequest,
    AgentResponse,
    BusyPolicy,
    ChatReply,
    JsonValue,
    Principal,
    TextDelta,
    ToolCall,
    ToolCallRecord,
    ToolDecision,
    TurnEvent,
    TurnNotice,
    TurnStatus,
)
from chatcore.ports import LLMAgent, TurnEventStore, TurnNotifications, TurnWatch, UsageMeter
from chatcore.service import ChatService, validate_message
from chatcore.streamed_retries import StreamedRetries
from chatcore.turn_events import (
    APPROVAL_REQUEST,
    DELTA,
    DONE,
    ERROR,
    TERMINAL_EVENTS,
    TOOL_CALL,
    TOOL_RESULT,
    TURN,
    ErrorBody,
    TurnStopped,
    TurnWatches,
    done_data,
    plain_error_body,
    tool_call_data,
    tool_result_data,
)

logger = logging.getLogger("chatcore.streamed_turns")


@dataclass(frozen=True, slots=True)
class StreamPolicy:
    """How often a streamed turn talks to the database, and how long followers wait."""

    flush_seconds: float = 0.1
    """Text pieces arriving within this long of the last ``delta`` event become one event (a piece after a
    quiet spell goes out at once): fewer events to send, store and replay. 0: one event per piece."""
    first_pieces: int = 8
    """The turn's first this many text pieces go out one event each, as they come (the first words appear word
    by word); ``flush_seconds`` groups the ones after."""
    write_seconds: float = 0.05
    """Events are written to the log in batches: the first batch at most this long after its first event, each
    next one twice as long after the one before, up to ``max_write_seconds`` (the turn's first event is written
    with its start, its last ones with its end). A turn costs a few transactions however many pieces the model
    sends and however long it talks. Clients following on this replica get every event at once; on another
    replica, as its batch is written."""
    max_write_seconds: float = 5.0
    poll_seconds: float = 0.25
    """Without notifications (SQLite): how often a running turn checks its stop flag, and a follower on another
    replica checks for new events."""
    idle_seconds: float = 300.0
    """A follower gives up (the client may resume again) when a running turn sends nothing for this long."""
    dead_after_seconds: float = 6.0
    """A follower of a turn running elsewhere starts asking whether the turn's server died once the turn has been
    quiet this long: longer than ``max_write_seconds``, so following a live turn (whose batches come at least that
    often) costs no query of its own, only the reads its notifications call for."""
    dead_check_seconds: float = 1.0
    """A follower of a turn running elsewhere that has sent nothing for this long checks, this often, whether the
    turn's server died (``ChatService.close_dead_turns``): its lease expired, or another turn holds it."""
    shutdown_seconds: float = 30.0
    """At shutdown, running turns get this long to finish before they are cancelled."""
    read_batch: int = 500


class TurnRun:
    """One streamed turn: the ``TurnSink`` its tool loop reports to, its events in order, its stop flag."""

    def __init__(
        self,
        events: TurnEventStore,
        notifications: TurnNotifications,
        principal: Principal,
        policy: StreamPolicy,
        error_body: ErrorBody,
        registry: dict[uuid.UUID, TurnRun],
    ) -> None:
        self._store = events
        self._notifications = notifications
        self._registry = registry
        self.principal = principal
        self.policy = policy
        self._error_body = error_body
        self.turn_id: uuid.UUID | None = None
        self.conversation_id: uuid.UUID | None = None
        self.events: list[TurnEvent] = []
        self.finished = False
        self.failure: BaseException | None = None
        """Why the turn failed, once it did (its ``error`` event says it to clients)."""
        self.stopped = False
        self.stop_requested = asyncio.Event()
        self._news = asyncio.Event()  # set (and replaced) at every new event and at the end
        self._text: list[str] = []  # pieces not in a delta event yet
        self._last_delta = -math.inf
        self._pieces = 0  # text pieces of the turn so far
        self._flush: asyncio.TimerHandle | None = None
        self._unsaved: list[TurnEvent] = []
        self._save_lock = asyncio.Lock()
        self._saver: asyncio.Task[None] | None = None
        self._write_delay = policy.write_seconds
        self._watch: TurnWatch | None = None
        self._watcher: asyncio.Task[None] | None = None

    # --- TurnSink ----------------------------------------------------------------------------------------------

    async def started(
        self, conversation_id: uuid.UUID, turn_id: uuid.UUID, user_message_id: uuid.UUID, message_id: uuid.UUID
    ) -> None:
        first = TurnEvent(
            turn_id,
            len(self.events) + 1,
            TURN,
            {
                "conversation_id": str(conversation_id),
                "turn_id": str(turn_id),
                "user_message_id": str(user_message_id),
                "message_id": str(message_id),
            },
        )
        watch = self._notifications.watch(turn_id)  # before the turn exists: no stop request can come before it
        try:
            await self._store.begin(self.principal.user_id, conversation_id, turn_id, [first])
        except BaseException:
            watch.close()
            raise
        self.turn_id, self.conversation_id = turn_id, conversation_id
        self._registry[turn_id] = self
        self.events.append(first)
        self._wake()
        self._watch = watch
        self._watcher = asyncio.create_task(self._watch_stop_flag(watch), name=f"chatcore-stop-watch-{turn_id}")

    async def step(self, agent: LLMAgent, request: AgentRequest) -> AgentResponse:
        """Stream one model step, racing it against the stop flag; a stop keeps the text produced so far."""
        if self.stop_requested.is_set():
            self.stopped = True
            raise TurnStopped()
        text: list[str] = []
        consumer = asyncio.create_task(self._consume(agent, request, text))
        stop = asyncio.create_task(self.stop_requested.wait())
        try:
            await asyncio.wait({consumer, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            if not consumer.done():
                consumer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await consumer
        if consumer.cancelled():
            self.stopped = True
            raise TurnStopped("".join(text))
        return consumer.result()

    async def tool_call(self, call: ToolCall) -> None:
        self._emit(TOOL_CALL, tool_call_data(call))

    async def tool_result(self, record: ToolCallRecord) -> None:
        self._emit(TOOL_RESULT, tool_result_data(record))

    async def approval_request(self, call: ToolCall) -> None:
        self._emit(APPROVAL_REQUEST, tool_call_data(call))

    # --- the end of the turn -----------------------------------------------------------------------------------

    async def done(self, reply: ChatReply) -> None:
        self._emit(DONE, done_data(reply, interrupted=self.stopped))
        await self._finish(TurnStatus.INTERRUPTED if self.stopped else TurnStatus.COMPLETE)

    async def failed(self, error: BaseException) -> None:
        body = dict(self._error_body(error))
        conversation_id = error.conversation_id if isinstance(error, TurnFailed) else None
        if conversation_id is None:
            conversation_id = self.conversation_id
        if conversation_id is not None:
            body["conversation_id"] = str(conversation_id)
        self._emit(ERROR, body)
        await self._finish(TurnStatus.FAILED)

    async def _finish(self, status: TurnStatus) -> None:
        """The events not written yet, with the turn's end, in one write."""
        if self._watcher is not None:
            self._watcher.cancel()
        if self._watch is not None:
            self._watch.close()
        try:
            if self.turn_id is not None:
                async with self._save_lock:
                    batch, self._unsaved = self._unsaved, []
                    await self._store.end(self.principal.user_id, self.turn_id, status, batch)
        finally:
            if self._saver is not None:
                self._saver.cancel()
            self.finished = True
            self._wake()

    # --- events ------------------------------------------------------------------------------------------------

    def _emit(self, kind: str, data: Mapping[str, JsonValue]) -> None:
        """The next event: the text not sent yet goes first, as a delta."""
        self._flush_text()
        self._publish(kind, data)

    def _publish(self, kind: str, data: Mapping[str, JsonValue]) -> None:
        event = TurnEvent(self.turn_id or uuid.UUID(int=0), len(self.events) + 1, kind, data)
        self.events.append(event)
        if self.turn_id is not None:
            self._unsaved.append(event)
            if self._saver is None or self._saver.done():
                self._saver = asyncio.create_task(self._save_soon())
        self._wake()

    def _wake(self) -> None:
        self._news.set()
        self._news = asyncio.Event()

    def _add_text(self, text: str) -> None:
        """A piece of the reply: a delta now after a quiet spell, else with the pieces that follow it soon."""
        self._text.append(text)
        self._pieces += 1
        if self._pieces <= self.policy.first_pieces:
            self._flush_text()
            return
        if self._flush is not None:
            return
        loop = asyncio.get_running_loop()
        due = self._last_delta + self.policy.flush_seconds
        if loop.time() >= due:
            self._flush_text()
        else:
            self._flush = loop.call_at(due, self._flush_text)

    def _flush_text(self) -> None:
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None
        if self._text:
            text = "".join(self._text)
            self._text.clear()
            self._last_delta = asyncio.get_running_loop().time()
            self._publish(DELTA, {"text": text})

    async def _save_soon(self) -> None:
        await asyncio.sleep(self._write_delay)
        self._write_delay = min(self._write_delay * 2, self.policy.max_write_seconds)
        await self.save()

    async def save(self) -> None:
        """Write the events not yet written. A failed write is kept for the next one: the turn goes on."""
        async with self._save_lock:
            batch, self._unsaved = self._unsaved, []
            if not batch:
                return
            try:
                await self._store.append(self.principal.user_id, batch)
            except ChatError:
                self._unsaved[:0] = batch
                logger.warning("turn events not saved yet", extra={"event": "turn_events_unsaved"})

    async def follow(self, after: int = 0) -> AsyncIterator[TurnEvent]:
        """This turn's events with a number above ``after``, as they happen, until its last one."""
        index = max(after, 0)
        while True:
            while index < len(self.events):
                index += 1
                yield self.events[index - 1]
            if self.finished:
                return
            await self._news.wait()

    # --- internals ---------------------------------------------------------------------------------------------

    async def _consume(self, agent: LLMAgent, request: AgentRequest, text: list[str]) -> AgentResponse:
        stream = agent.stream(request)
        try:
            async for item in stream:
                if isinstance(item, TextDelta):
                    if item.text:
                        text.append(item.text)
                        self._add_text(item.text)
                elif isinstance(item, AgentResponse):
                    return item
        finally:
            self._flush_text()  # what was said before the end (or a stop) is an event before anything else
            close = getattr(stream, "aclose", None)
            if close is not None:
                await close()
        raise RuntimeError(f"{agent.provider} agent's stream ended without a response")

    async def _watch_stop_flag(self, watch: TurnWatch) -> None:
        """Wait for a stop request another replica may send; read the flag only when notices may have been missed
        (or, without notifications, every ``poll_seconds``). Errors only delay the stop."""
        assert self.turn_id is not None
        while not self.stop_requested.is_set():
            notices = await watch.wait()
            if TurnNotice.STOP not in notices:
                if TurnNotice.CHECK not in notices:
                    continue  # this turn's own events
                try:
                    state = await self._store.state(self.principal.user_id, self.turn_id)
                except ChatError:
                    continue
                if not state.stop_requested:
                    continue
            self.stop_requested.set()


class TurnStreamer:
    """Starts streamed turns, lets clients follow them (here or from the event log), and stops them."""

    def __init__(
        self,
        service: ChatService,
        events: TurnEventStore,
        *,
        policy: StreamPolicy | None = None,
        error_body: ErrorBody = plain_error_body,
        notifications: TurnNotifications | None = None,
    ) -> None:
        """Without ``notifications`` every wait polls the store (every ``policy.poll_seconds``)."""
        self.service = service
        self.events = events
        if service.events is None:
            service.events = events  # the log whose dead turns the service closes (``ChatService.close_dead_turns``)
        self.policy = policy or StreamPolicy()
        self.notifications: TurnNotifications = notifications or TurnWatches(
            poll_seconds=self.policy.poll_seconds, listening=lambda: False
        )
        self.error_body = error_body
        self._runs: dict[uuid.UUID, TurnRun] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._retries = StreamedRetries(self)

    async def start(
        self,
        principal: Principal,
        message: str,
        conversation_id: uuid.UUID | None = None,
        *,
        idempotency_key: str | None = None,
        after: int = 0,
        meter: UsageMeter | None = None,
        if_busy: BusyPolicy | None = None,
    ) -> AsyncIterator[TurnEvent]:
        """Start a turn in the background and return its events, live. Closing the iterator leaves the turn running.

        A bad message raises InvalidMessage here, before anything runs, and a user whose token budget is used up
        BudgetExhausted (``meter``: one the caller opened already, ``ChatService.meter_for``); every later failure is
        the turn's last event (``error``), except a busy conversation refused by ``if_busy: reject``, raised here
        (ConversationBusy) so that it is an answer of its own; ``interrupt`` stops the running turn with ``stop``.
        With an ``idempotency_key`` a repeat of the request runs no second turn: it follows or replays the first
        one's events numbered above ``after`` (``chatcore.streamed_retries``); the key used with another request
        raises IdempotencyKeyReused here.
        """
        text = validate_message(message)
        busy = self.service.policy.busy_policy if if_busy is None else if_busy
        if idempotency_key is not None:
            return await self._retries.start(
                principal, text, conversation_id, idempotency_key, after, meter=meter, if_busy=busy
            )
        if meter is None:
            meter = await self.service.meter_for(principal)
        metered = meter
        run = self._launch(
            principal,
            lambda run: self.service.send(
                principal, text, conversation_id, sink=run, meter=metered, if_busy=busy, interrupt=self.stop
            ),
        )
        if busy is not BusyPolicy.REJECT:
            return run.follow()
        events = run.follow()
        first = await anext(events)
        if isinstance(run.failure, ConversationBusy):
            raise run.failure  # refused before anything was stored: an answer (409), not a stream
        return _prepended(first, events)

    async def decide(
        self, principal: Principal, conversation_id: uuid.UUID, decisions: Sequence[ToolDecision]
    ) -> AsyncIterator[TurnEvent]:
        """``ChatService.decide`` in the background, its events live (like ``start``): the approved calls, the model
        going on, ``done``. Malformed decisions raise InvalidRequest here, before anything runs, and a used-up
        budget BudgetExhausted."""
        checked = validate_decisions(decisions)
        meter = await self.service.meter_for(principal)
        return self.launch(
            principal, lambda run: self.service.decide(principal, conversation_id, checked, sink=run, meter=meter)
        )

    async def regenerate(self, principal: Principal, conversation_id: uuid.UUID) -> AsyncIterator[TurnEvent]:
        """``ChatService.regenerate`` as a streamed turn, started like ``start``."""
        meter = await self.service.meter_for(principal)
        return self.launch(
            principal, lambda run: self.service.regenerate(principal, conversation_id, sink=run, meter=meter)
        )

    def launch(self, principal: Principal, turn: Callable[[TurnRun], Awaitable[ChatReply]]) -> AsyncIterator[TurnEvent]:
        """Run ``turn`` in the background with a new ``TurnRun`` as its sink; its events, live."""
        return self._launch(principal, turn).follow()

    def _launch(self, principal: Principal, turn: Callable[[TurnRun], Awaitable[ChatReply]]) -> TurnRun:
        run = TurnRun(self.events, self.notifications, principal, self.policy, self.error_body, self._runs)
        task = asyncio.create_task(self._run(run, turn), name="chatcore-streamed-turn")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return run

    async def _run(self, run: TurnRun, turn: Callable[[TurnRun], Awaitable[ChatReply]]) -> None:
        try:
            reply = await turn(run)
        except Exception as error:
            if not isinstance(error, ChatError):
                logger.exception("streamed turn failed", extra={"event": "streamed_turn_error"})
            run.failure = error
            await self._record_end(run.failed(error))
        else:
            await self._record_end(run.done(reply))
        finally:
            if run.turn_id is not None:
                self._runs.pop(run.turn_id, None)

    @staticmethod
    async def _record_end(ending: Awaitable[None]) -> None:
        try:
            await ending
        except Exception:
            logger.exception("could not record the end of a streamed turn", extra={"event": "streamed_turn_error"})

    async def resume(
        self, user_id: str, conversation_id: uuid.UUID, turn_id: uuid.UUID, after: int = 0
    ) -> AsyncIterator[TurnEvent]:
        """The turn's events numbered above ``after``: replayed from the log, then live until its last one.

        Raises TurnNotFound here (not while iterating) for an unknown turn, another user's, or another conversation's.
        """
        state = await self.events.state(user_id, turn_id)
        if state.conversation_id != conversation_id:
            raise TurnNotFound()
        return self.follow(user_id, turn_id, after)

    def follow(self, user_id: str, turn_id: uuid.UUID, after: int = 0) -> AsyncIterator[TurnEvent]:
        """A begun turn's events numbered above ``after``: live when it runs here, else from the log."""
        local = self._runs.get(turn_id)
        if local is not None and local.principal.user_id == user_id:
            return local.follow(after)
        return self._replay(user_id, turn_id, after)

    async def _replay(self, user_id: str, turn_id: uuid.UUID, after: int) -> AsyncIterator[TurnEvent]:
        watch = self.notifications.watch(turn_id)  # before the first read: no write after it goes unnoticed
        try:
            async for event in self._replayed(watch, user_id, turn_id, after):
                yield event
        finally:
            watch.close()

    async def _replayed(
        self, watch: TurnWatch, user_id: str, turn_id: uuid.UUID, after: int
    ) -> AsyncIterator[TurnEvent]:
        """The log read after each notice of new events (or, without notifications, every ``poll_seconds``), and
        once the turn has been quiet ``dead_after_seconds``, whether its server died every ``dead_check_seconds``."""
        last, quiet_since = after, time.monotonic()
        checked = quiet_since
        while True:
            batch = await self.events.read(user_id, turn_id, after=last, limit=self.policy.read_batch)
            for event in batch:
                yield event
                last = event.seq
                if event.type in TERMINAL_EVENTS:
                    return
            if len(batch) == self.policy.read_batch:
                continue
            if batch:
                quiet_since = time.monotonic()
            else:
                state = await self.events.state(user_id, turn_id)
                if state.status is not TurnStatus.RUNNING:
                    # A turn writes its events before its status: whatever is left is in the log now.
                    for event in await self.events.read(user_id, turn_id, after=last, limit=self.policy.read_batch):
                        yield event
                    return
                if time.monotonic() - quiet_since > self.policy.idle_seconds:
                    return
                if time.monotonic() >= self._next_dead_check(quiet_since, checked):
                    checked = time.monotonic()
                    if await self._closed_if_dead(user_id, state.conversation_id):
                        continue  # its log now ends with an error event: read it
            while True:
                now = time.monotonic()
                left = self.policy.idle_seconds - (now - quiet_since)
                if left <= 0:
                    return
                next_check = self._next_dead_check(quiet_since, checked)
                notices = await watch.wait(min(left, max(next_check - now, 0.0)))
                if notices & {TurnNotice.EVENTS, TurnNotice.CHECK} or time.monotonic() >= next_check:
                    break

    def _next_dead_check(self, quiet_since: float, checked: float) -> float:
        """When a follower next asks whether a quiet turn's server died (``time.monotonic()`` time)."""
        policy = self.policy
        return max(quiet_since + policy.dead_after_seconds, checked + policy.dead_check_seconds)

    async def _closed_if_dead(self, user_id: str, conversation_id: uuid.UUID) -> bool:
        """Whether the conversation had dead turns, now closed; a failed check (the database is down) is a no."""
        try:
            return bool(await self.service.close_dead_turns(user_id, conversation_id))
        except ChatError:
            return False

    async def stop(self, user_id: str, conversation_id: uuid.UUID) -> tuple[uuid.UUID, ...]:
        """Ask the conversation's running turns to stop, wherever they run; returns their ids."""
        stopped = await self.events.request_stop(user_id, conversation_id)
        for turn_id in stopped:
            local = self._runs.get(turn_id)
            if local is not None:
                local.stop_requested.set()
        return stopped

    async def aclose(self) -> None:
        """Let running turns finish (they are stored), then cancel the ones that take longer than the grace period."""
        pending = set(self._tasks)
        if not pending:
            return
        _, late = await asyncio.wait(pending, timeout=self.policy.shutdown_seconds)
        for task in late:
            task.cancel()
        if late:
            await asyncio.wait(late)


async def _prepended(first: TurnEvent, rest: AsyncIterator[TurnEvent]) -> AsyncIterator[TurnEvent]:
    yield first
    async for event in rest:
        yield event
