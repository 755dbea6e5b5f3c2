"""Sending case notices to the applicant in the background, after the move committed.

``CaseStore`` hands each committed transition to ``CaseNotices.send``, which only queues
it: the RPC never waits for a webhook, and a notifier that is down never slows a case
down or undoes one. A few workers deliver the queue through the configured ``Notifier``
(``TONGBAN_CASE_NOTIFY``); a notice that finally fails is logged with its event id and
counted. The queue is bounded: when a receiver is down long enough to fill it, further
notices are dropped and logged, not held in memory without limit (the case stream,
``<department>.cases``, still carries every transition for a receiver to catch up from).
On shutdown the workers get a few seconds to empty the queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from tongban.exchange.licensing.cases import Case, CaseState, Transition
from tongban.exchange.licensing.item_store import ServiceItemStore
from tongban.exchange.licensing.notifiers import Notifier, NotifyFailed, notice_of
from tongban.exchange.licensing.ratings import RatingStore

__all__ = ["CaseNotices"]

_log = logging.getLogger(__name__)

QUEUE = 10_000
WORKERS = 4
DRAIN_SECONDS = 5.0


class CaseNotices:
    def __init__(
        self, notifier: Notifier, items: ServiceItemStore, *, ratings: RatingStore | None = None
    ) -> None:
        """With ``ratings``, the notice of a decision (办结) carries a new one-time rating
        link (好差评), made when the notice is first handed to the notifier (retries of
        the notice send the same link)."""
        self._notifier = notifier
        self._items = items
        self._ratings = ratings
        self._queue: asyncio.Queue[tuple[Case, Transition]] = asyncio.Queue(QUEUE)
        self._workers: list[asyncio.Task[None]] = []
        self.sent = 0
        self.failed = 0
        self.dropped = 0

    def start(self) -> None:
        self._workers = [asyncio.create_task(self._work()) for _ in range(WORKERS)]

    def send(self, case: Case, transition: Transition) -> None:
        """Queue the notice of ``transition`` (which brought ``case`` to its state)."""
        try:
            self._queue.put_nowait((case, transition))
        except asyncio.QueueFull:
            self.dropped += 1
            _log.warning(
                "case notice %s:%d dropped: %d notices are waiting for the notifier",
                case.number,
                transition.seq,
                QUEUE,
            )

    async def _work(self) -> None:
        while True:
            case, transition = await self._queue.get()
            try:
                await self._deliver(case, transition)
            finally:
                self._queue.task_done()

    async def _deliver(self, case: Case, transition: Transition) -> None:
        try:
            item = await self._items.get(case.item, case.item_version)
            link = None
            if self._ratings is not None and case.state is CaseState.DECIDED:
                link = await self._ratings.issue_link(case.number, transition.at)
            await self._notifier.notify(
                notice_of(case, transition, item_name=item.spec.name, rating_link=link)
            )
            self.sent += 1
        except NotifyFailed as e:
            self.failed += 1
            _log.warning("case notice not delivered: %s", e.message)
        except Exception:  # noqa: BLE001 - a bug or the database: logged, the worker goes on
            self.failed += 1
            _log.exception("case notice %s:%d failed", case.number, transition.seq)

    async def drained(self) -> None:
        """Return once every queued notice was handled (for tests and shutdown)."""
        await self._queue.join()

    async def aclose(self) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(DRAIN_SECONDS):
                await self._queue.join()
        if self._queue.qsize():
            _log.warning("%d case notices not sent at shutdown", self._queue.qsize())
        for worker in self._workers:
            worker.cancel()
        for worker in self._workers:
            with contextlib.suppress(asyncio.CancelledError):
                await worker
        self._workers = []
        await self._notifier.aclose()
