"""Group commit for usage batches (``POST /v1/usage/batch``, CloudEvents batches), across requests.

Each batch is written in a transaction that locks the balances of the organizations it names. Two
batches for the same organization therefore run one after the other (PostgreSQL's row lock; SQLite
runs every write transaction alone anyway), and each pays a whole transaction — begin, locks, lookups,
journal, inserts, commit — for what may be a hundred events. One busy organization then got less than
half the throughput of the same load spread over several.

Here, batches of one scope (environment and caller) that arrive while one of them is being written wait
for that transaction and then go together in the next one: the thread whose batch is first in line
writes it with every batch queued behind it (at most ``MAX_EVENTS`` events), and hands the rest to the
next thread in line. A batch that arrives when nothing is being written goes at once (no timer, no
added latency when idle). Each thread writes at most one transaction, so no request waits on work
that arrived after it beyond the transaction it joined.

Every batch keeps its own answer and its own fate: the results are cut back to each batch in order,
and when a merged transaction fails (it was rolled back whole), each of its batches is written again on
its own, so a failure in one request never fails another.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

#: The most events one merged transaction carries (a batch larger than this goes alone).
MAX_EVENTS = 10_000

Work = TypeVar("Work")
Result = TypeVar("Result")


@dataclass(eq=False)
class _Item(Generic[Work, Result]):
    work: Work
    size: int
    done: threading.Event = field(default_factory=threading.Event)
    lead: bool = False  # set when this item's thread must write the next group
    result: Result | None = None
    error: BaseException | None = None


@dataclass
class _Lane(Generic[Work, Result]):
    waiting: list[_Item[Work, Result]] = field(default_factory=list)
    writing: bool = False


class GroupCommit(Generic[Work, Result]):
    """Runs ``write`` over groups of concurrent items of one scope; ``write`` takes the works of a
    group and returns one result per work, in order (all in one transaction), or raises."""

    def __init__(self, write: Callable[[Sequence[Work]], list[Result]]) -> None:
        self._write = write
        self._lock = threading.Lock()
        self._lanes: dict[Hashable, _Lane[Work, Result]] = {}

    def run(self, scope: Hashable, work: Work, size: int) -> Result:
        """Write ``work`` (of ``size`` events) in the next transaction of its scope; its result."""
        item: _Item[Work, Result] = _Item(work, size)
        with self._lock:
            lane = self._lanes.setdefault(scope, _Lane())
            lane.waiting.append(item)
            item.lead = not lane.writing
            lane.writing = True
        if not item.lead:
            item.done.wait()
            if not item.lead:  # written by another thread's group
                return self._outcome(item)
        self._lead(scope, lane)
        return self._outcome(item)

    @staticmethod
    def _outcome(item: _Item[Work, Result]) -> Result:
        if item.error is not None:
            raise item.error
        assert item.result is not None
        return item.result

    def _lead(self, scope: Hashable, lane: _Lane[Work, Result]) -> None:
        """Write the group at the head of the lane, then pass the lead to the next item waiting."""
        with self._lock:
            group: list[_Item[Work, Result]] = []
            total = 0
            while lane.waiting and (not group or total + lane.waiting[0].size <= MAX_EVENTS):
                total += lane.waiting[0].size
                group.append(lane.waiting.pop(0))
        try:
            self._write_group(group)
        finally:
            with self._lock:
                if lane.waiting:
                    successor = lane.waiting[0]
                    successor.lead = True
                    successor.done.set()
                else:
                    lane.writing = False
                    self._lanes.pop(scope, None)
            for item in group:
                item.lead = False
                item.done.set()

    def _write_group(self, group: list[_Item[Work, Result]]) -> None:
        try:
            results = self._write([i.work for i in group])
        except BaseException as exc:
            if len(group) == 1:
                group[0].error = exc
                return
            for item in group:  # rolled back whole: each batch again, on its own
                self._write_group([item])
            return
        for item, result in zip(group, results, strict=True):
            item.result = result
