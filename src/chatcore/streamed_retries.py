"""Streamed retries: an ``Idempotency-Key`` on a streamed turn.

A client whose stream broke cannot tell how far its turn got; it sends the same request again with
the same key (and the ``Last-Event-ID`` it saw). The repeat never runs a second turn:

- while the first request's turn runs, on any replica, the repeat follows that turn's events (after
  ``after``, from its start by default), from the event log every replica reads;
- once the turn finished, the repeat replays its stored events;
- when they are not stored (the first request was a JSON one) or no longer are (deleted after
  ``CHATCORE_EVENT_RETENTION`` while the key still lives), the stored reply is told as events
  (``turn_events.reply_events``), ending with the ``done`` a live turn would have sent;
- the key used with another request raises IdempotencyKeyReused before the stream starts.

A JSON repeat of a streamed first request gets the stored reply, as any keyed JSON retry does:
a streamed turn stores its reply under the key like a JSON turn (``ChatService.send``). A key whose
turn died (its claim expired) is free again: the repeat runs the turn itself, streamed from its start.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from chatcore.errors import ConversationNotFound, IdempotencyKeyReused, TurnNotFound
from chatcore.idempotency import IdempotencyRecord, request_fingerprint, validate_idempotency_key
from chatcore.model import BusyPolicy, ChatReply, Principal, Role, TurnEvent
from chatcore.ports import UsageMeter
from chatcore.turn_events import TERMINAL_EVENTS, reply_events

if TYPE_CHECKING:
    from chatcore.streamed_turns import TurnStreamer


class StreamedRetries:
    """The keyed requests of a ``TurnStreamer``: run the turn once, follow or replay it for every repeat."""

    def __init__(self, streamer: TurnStreamer) -> None:
        self.streamer = streamer

    async def start(
        self,
        principal: Principal,
        text: str,
        conversation_id: uuid.UUID | None,
        key: str,
        after: int,
        *,
        meter: UsageMeter | None = None,
        if_busy: BusyPolicy | None = None,
    ) -> AsyncIterator[TurnEvent]:
        """The events of the keyed request's one turn, numbered above ``after``. Raises InvalidMessage for a
        malformed key, IdempotencyKeyReused for a key holding another request, and BudgetExhausted when a request
        that would run a turn finds the user's token budget used up, before anything streams (a repeat of a request
        that ran is followed or replayed whatever the budget says)."""
        try:
            checked = validate_idempotency_key(key)
            fingerprint = request_fingerprint(principal.user_id, text, conversation_id)
            record = await self.streamer.service.claims.idempotency_record(principal.user_id, checked)
            if record is not None and record.request_hash != fingerprint:
                raise IdempotencyKeyReused()
        except BaseException:
            if meter is not None:
                meter.close()
            raise
        if record is not None and meter is not None:
            meter.close()
            meter = None
        elif record is None and meter is None:
            meter = await self.streamer.service.meter_for(principal)
        return self._events(principal, text, conversation_id, checked, record, max(after, 0), meter, if_busy)

    async def _events(
        self,
        principal: Principal,
        text: str,
        conversation_id: uuid.UUID | None,
        key: str,
        record: IdempotencyRecord | None,
        after: int,
        meter: UsageMeter | None = None,
        if_busy: BusyPolicy | None = None,
    ) -> AsyncIterator[TurnEvent]:
        user_id, policy = principal.user_id, self.streamer.policy
        waiting_since = time.monotonic()
        while True:
            if record is None:
                # No live claim: this request runs the turn (its events from the start: ``after`` numbered another
                # turn's, one that died). The service claims the key; should a twin have claimed it a moment
                # earlier, the service waits for the twin's reply and this stream gets its ``done``.
                async for event in self._run(principal, text, conversation_id, key, meter, if_busy):
                    yield event
                return
            if record.reply is not None:
                async for event in self._replayed(user_id, record.reply, record.turn_id, after):
                    yield event
                return
            if record.turn_id is not None and await self._begun(user_id, record.turn_id):
                async for event in self.streamer.follow(user_id, record.turn_id, after):
                    yield event
                return
            # Claimed, but its events have not begun: the turn waits for its conversation, or the first request
            # is a JSON one (no events; its reply comes when it finishes).
            if time.monotonic() - waiting_since > policy.idle_seconds:
                return
            await asyncio.sleep(policy.poll_seconds)
            record = await self.streamer.service.claims.idempotency_record(user_id, key)

    def _run(
        self,
        principal: Principal,
        text: str,
        conversation_id: uuid.UUID | None,
        key: str,
        meter: UsageMeter | None,
        if_busy: BusyPolicy | None,
    ) -> AsyncIterator[TurnEvent]:
        service, stop = self.streamer.service, self.streamer.stop
        return self.streamer.launch(
            principal,
            lambda run: service.send(
                principal,
                text,
                conversation_id,
                sink=run,
                idempotency_key=key,
                meter=meter,
                if_busy=if_busy,
                interrupt=stop,
            ),
        )

    async def _begun(self, user_id: str, turn_id: uuid.UUID) -> bool:
        try:
            await self.streamer.events.state(user_id, turn_id)
        except TurnNotFound:
            return False
        return True

    async def _replayed(
        self, user_id: str, reply: ChatReply, turn_id: uuid.UUID | None, after: int
    ) -> AsyncIterator[TurnEvent]:
        """A finished keyed turn's events above ``after``: the stored ones when the log holds all of them, else
        the reply told as events (then at least its ``done``: ``after`` numbered events that are gone)."""
        stored = None if turn_id is None else await self._whole_log(user_id, turn_id)
        if stored is not None:
            for event in stored:
                if event.seq > after:
                    yield event
            return
        user_message_id = await self._user_message_id(user_id, reply, turn_id)
        told = reply_events(reply, turn_id=turn_id, user_message_id=user_message_id)
        for event in [event for event in told if event.seq > after] or [told[-1]]:
            yield event

    async def _whole_log(self, user_id: str, turn_id: uuid.UUID) -> list[TurnEvent] | None:
        """The turn's stored events when they are all there (numbered from 1 without a gap, ending with its last
        one); None when the turn left no events or the janitor deleted some."""
        events: list[TurnEvent] = []
        batch_size = self.streamer.policy.read_batch
        try:
            while True:
                last = events[-1].seq if events else 0
                batch = await self.streamer.events.read(user_id, turn_id, after=last, limit=batch_size)
                events.extend(batch)
                if len(batch) < batch_size:
                    break
        except TurnNotFound:
            return None
        whole = [event.seq for event in events] == list(range(1, len(events) + 1))
        return events if whole and events and events[-1].type in TERMINAL_EVENTS else None

    async def _user_message_id(self, user_id: str, reply: ChatReply, turn_id: uuid.UUID | None) -> uuid.UUID | None:
        if turn_id is None:
            return None
        try:
            messages = await self.streamer.service.store.turn_messages(user_id, reply.conversation_id, turn_id)
        except ConversationNotFound:
            return None
        return next((message.id for message in messages if message.role is Role.USER), None)
