"""Turns that happen exactly once: one turn at a time per conversation, idempotent retries.

Several replicas serve one database and clients retry, so a turn first claims what it
needs through the store: the request's Idempotency-Key (when it has one) and the
conversation's lease. Both are rows with an expiry, not open transactions, so no
database connection is held while the model thinks; a heartbeat renews them while the
turn runs, and a turn that dies (kill -9) simply lets them expire. A turn that finds
them taken polls with jittered backoff until its wait runs out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from types import TracebackType

from chatcore.errors import ConversationBusy, IdempotencyInProgress, TurnFailed
from chatcore.idempotency import IdempotentReply
from chatcore.model import AbandonedTurn, BusyPolicy, ChatMessage, ChatReply, TurnResumption, TurnStart
from chatcore.ports import ConversationStore, TurnClaimStore

Interrupt = Callable[[str, uuid.UUID], Awaitable[object]]
"""Ask the running turns of a user's conversation to stop, wherever they run (``TurnStreamer.stop``)."""

logger = logging.getLogger("chatcore.service")

FIRST_PAUSE_SECONDS = 0.02
MAX_PAUSE_SECONDS = 0.5
"""Polling a busy conversation: from 20 ms, growing with decorrelated jitter to at most 0.5 s a try."""


REJECTED = "Another turn is in progress on this conversation (if_busy: reject)"


def pauses(first: float = FIRST_PAUSE_SECONDS, cap: float = MAX_PAUSE_SECONDS) -> Iterator[float]:
    """Jittered pauses ("decorrelated jitter"), so waiters on one conversation spread out instead of stampeding."""
    pause = first
    while True:
        pause = min(cap, random.uniform(first, pause * 3))  # noqa: S311 - jitter, not a secret
        yield pause


class TurnLease:
    """What one turn holds in the store — a conversation lease, an Idempotency-Key claim — and its heartbeat.

    Use as ``async with``: the heartbeat renews the holds every third of the lease while the turn runs;
    leaving without ``finished`` (the turn failed, was cancelled, or the process is shutting down) gives
    them back, so the conversation is free at once and a retry with the key runs.
    """

    def __init__(
        self,
        store: ConversationStore,
        claims: TurnClaimStore,
        user_id: str,
        turn_id: uuid.UUID,
        *,
        lease_seconds: float,
        wait_seconds: float,
        idempotency_ttl_seconds: float,
        if_busy: BusyPolicy = BusyPolicy.WAIT,
        interrupt: Interrupt | None = None,
    ) -> None:
        self.store = store
        self.claims = claims
        self.user_id = user_id
        self.turn_id = turn_id
        self.lease_seconds = lease_seconds
        self.idempotency_ttl_seconds = idempotency_ttl_seconds
        self.conversation_id: uuid.UUID | None = None
        self.idempotency_key: str | None = None
        self.taken_over: AbandonedTurn | None = None
        """The turn whose expired claim on the key this one took over (its server died): see ``claim``."""
        self.finished = False
        self.if_busy = if_busy
        self._interrupt = interrupt
        self._deadline = time.monotonic() + wait_seconds
        self._stop = asyncio.Event()
        self._heartbeat: asyncio.Task[None] | None = None
        self._first_beat: asyncio.TimerHandle | None = None

    async def __aenter__(self) -> TurnLease:
        # A timer rather than a task: most turns end before the first beat is due, and never pay for a task.
        self._first_beat = asyncio.get_running_loop().call_later(self.lease_seconds / 3, self._start_heartbeat)
        return self

    def _start_heartbeat(self) -> None:
        self._first_beat = None
        if not self._stop.is_set():
            self._heartbeat = asyncio.create_task(self._beat(), name=f"turn-heartbeat-{self.turn_id}")

    async def __aexit__(
        self, exc_type: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        await self._stop_heartbeat()
        if isinstance(error, TurnFailed) and error.conversation_id is None:
            error.conversation_id = self.conversation_id
        if self.finished or (self.conversation_id is None and self.idempotency_key is None):
            return
        try:
            await self.claims.release_turn(
                self.user_id, self.turn_id, conversation_id=self.conversation_id, idempotency_key=self.idempotency_key
            )
        except Exception:
            # The holds expire by themselves; a failed release only delays the next turn.
            logger.warning(
                "could not release turn %s; its holds will expire",
                self.turn_id,
                exc_info=True,
                extra={"event": "turn_release_failed", "turn_id": str(self.turn_id)},
            )

    async def claim(self, key: str, request_hash: str) -> ChatReply | None:
        """Claim ``key`` for this turn (None), or the same request's stored reply; waits while it runs elsewhere.

        A claim taken over from a turn whose server died names that turn in ``taken_over``, to go on with it.
        """
        waits = pauses()
        while True:
            self.taken_over = await self.claims.abandoned_turn(self.user_id, key)
            try:
                replay = await self.claims.claim_idempotency_key(
                    self.user_id, key, request_hash, turn_id=self.turn_id, hold_seconds=self.lease_seconds
                )
            except IdempotencyInProgress:
                await self._pause(waits, IdempotencyInProgress)
                continue
            if replay is None:
                self.idempotency_key = key
            return replay

    async def begin(
        self, conversation_id: uuid.UUID | None, text: str, *, history_limit: int, title: str | None
    ) -> TurnStart:
        """Store the user's message and take the conversation's lease; while another turn holds it, wait, refuse
        or interrupt that turn, as ``if_busy`` says."""
        return await self._take_lease(
            conversation_id,
            lambda: self.store.begin_turn(
                self.user_id,
                conversation_id,
                ChatMessage.user(text),  # made per try, so its created_at is when it is stored
                turn_id=self.turn_id,
                history_limit=history_limit,
                title=title,
                lease_seconds=self.lease_seconds,
            ),
        )

    async def begin_regeneration(self, conversation_id: uuid.UUID, *, history_limit: int) -> TurnStart:
        """Take the conversation's lease to answer its last user message again (the reply so far is superseded)."""
        return await self._take_lease(
            conversation_id,
            lambda: self.store.begin_regeneration(
                self.user_id,
                conversation_id,
                turn_id=self.turn_id,
                history_limit=history_limit,
                lease_seconds=self.lease_seconds,
            ),
        )

    async def _take_lease(
        self, conversation_id: uuid.UUID | None, attempt: Callable[[], Awaitable[TurnStart]]
    ) -> TurnStart:
        waits = pauses()
        interrupted = False
        while True:
            try:
                start = await attempt()
            except ConversationBusy:
                if self.if_busy is BusyPolicy.REJECT:
                    raise ConversationBusy(REJECTED) from None
                if self.if_busy is BusyPolicy.INTERRUPT and not interrupted and conversation_id is not None:
                    interrupted = True  # the turn running now; one that starts meanwhile is waited for
                    if self._interrupt is not None:
                        await self._interrupt(self.user_id, conversation_id)
                await self._pause(waits, ConversationBusy)
                continue
            self.conversation_id = start.conversation.id
            return start

    async def resume(self, conversation_id: uuid.UUID, turn_id: uuid.UUID, *, history_limit: int) -> TurnResumption:
        """Take the conversation's lease to take turn ``turn_id`` up again, waiting while another turn holds it."""
        waits = pauses()
        while True:
            try:
                resumed = await self.store.resume_turn(
                    self.user_id,
                    conversation_id,
                    turn_id,
                    holder=self.turn_id,
                    lease_seconds=self.lease_seconds,
                    history_limit=history_limit,
                )
            except ConversationBusy:
                await self._pause(waits, ConversationBusy)
                continue
            self.conversation_id = conversation_id
            return resumed

    def completion(self, reply: ChatReply) -> IdempotentReply | None:
        """What ``finish_turn`` stores beside the messages: the reply under the claimed key, if there is one."""
        if self.idempotency_key is None:
            return None
        return IdempotentReply(self.idempotency_key, reply, self.idempotency_ttl_seconds)

    async def _pause(self, waits: Iterator[float], busy: type[ConversationBusy] | type[IdempotencyInProgress]) -> None:
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            raise busy()
        await asyncio.sleep(min(next(waits), remaining))

    async def _beat(self) -> None:
        """Renew now (a third of the lease has passed), then every third of the lease until stopped."""
        interval = self.lease_seconds / 3
        while not self._stop.is_set():
            if self.conversation_id is None and self.idempotency_key is None:
                await self._wait_for_stop(interval)
                continue
            try:
                held = await self.claims.renew_turn(
                    self.user_id,
                    self.turn_id,
                    conversation_id=self.conversation_id,
                    idempotency_key=self.idempotency_key,
                    lease_seconds=self.lease_seconds,
                )
            except Exception as error:  # a heartbeat must outlive an outage: the next beat tries again
                logger.warning(
                    "could not renew turn %s: %s",
                    self.turn_id,
                    type(error).__name__,
                    extra={"event": "turn_renew_failed", "turn_id": str(self.turn_id)},
                )
                await self._wait_for_stop(interval)
                continue
            if not held:
                logger.warning(
                    "turn %s lost its lease; it will not be stored",
                    self.turn_id,
                    extra={"event": "turn_lease_lost", "turn_id": str(self.turn_id)},
                )
                return
            await self._wait_for_stop(interval)

    async def _wait_for_stop(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)

    async def _stop_heartbeat(self) -> None:
        """Let a renewal in flight finish (cancelling it mid-statement would cost a pooled connection), then stop."""
        self._stop.set()
        if self._first_beat is not None:
            self._first_beat.cancel()
            self._first_beat = None
        if self._heartbeat is not None:
            await asyncio.wait({self._heartbeat})  # never raises: a renewal's own failure was logged
