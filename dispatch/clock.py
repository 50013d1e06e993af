"""Event time: interval boundaries and the merge of several feeds into one event-time order.

The decision for ``[t, t+d)`` is taken once every event stamped at or before ``t`` has been
folded, i.e. when the first event stamped after ``t`` arrives. Nothing here reads the wall
clock, so a replay a year later takes exactly the decisions the live stream took.
"""

from __future__ import annotations

import heapq
import logging
from collections.abc import Callable, Hashable, Iterable
from datetime import datetime, timedelta, timezone
from typing import Any

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)

log = logging.getLogger(__name__)

#: The longest stretch of event time one event may make due. A longer jump is a hole in every
#: feed (or an upstream clock error that validation cannot tell from a real time: 2001 then
#: 2099 are both valid stamps), not decades of decisions to take at once: 10 years of 5-min
#: intervals would be a million decisions and, in the fuzz test that found it, 20 GB of
#: memory. The clock skips such a hole, counts it and starts again at the event's interval,
#: as at start-up; a day (288 intervals of 5 min) covers any broker or feed outage worth
#: catching up on, and the watchdog marks those catch-up decisions stale.
MAX_CATCH_UP = timedelta(days=1)


def floor_to_interval(t: datetime, minutes: int) -> datetime:
    step = minutes * 60
    secs = (t - _EPOCH).total_seconds()
    return _EPOCH + timedelta(seconds=(secs // step) * step)


def ceil_to_interval(t: datetime, minutes: int) -> datetime:
    f = floor_to_interval(t, minutes)
    return f if f == t else f + timedelta(minutes=minutes)


class IntervalClock:
    """Yields the interval boundaries that an event's time has moved past."""

    def __init__(self, interval_minutes: int, max_catch_up: timedelta = MAX_CATCH_UP) -> None:
        self.step = timedelta(minutes=interval_minutes)
        self.minutes = interval_minutes
        self.max_catch_up = max_catch_up
        self.next_boundary: datetime | None = None
        self.last_decided: datetime | None = None
        #: intervals never decided because event time jumped past them (see MAX_CATCH_UP)
        self.skipped_intervals = 0

    @property
    def started(self) -> bool:
        return self.next_boundary is not None

    def start(self, t: datetime) -> None:
        """Start deciding at the first boundary at or after ``t``."""
        if self.next_boundary is None:
            self.next_boundary = ceil_to_interval(t, self.minutes)

    def resume_after(self, last_decided: datetime) -> None:
        """Restore after a restart: the next boundary follows the last published one."""
        self.last_decided = last_decided
        self.next_boundary = last_decided + self.step

    def due(self, event_time: datetime) -> Iterable[datetime]:
        """Boundaries strictly before ``event_time``, each yielded once; a jump longer than
        ``max_catch_up`` skips the hole instead (counted in ``skipped_intervals``)."""
        nb = self.next_boundary
        if nb is not None and event_time - nb > self.max_catch_up:
            restart = ceil_to_interval(event_time, self.minutes)
            skipped = (restart - nb) // self.step
            self.skipped_intervals += skipped
            log.warning("event time jumped from %s to %s: %d intervals skipped, not decided (more than %s to catch up)",
                        nb.isoformat(), event_time.isoformat(), skipped, self.max_catch_up)
            self.next_boundary = restart
        while self.next_boundary is not None and self.next_boundary < event_time:
            b = self.next_boundary
            self.next_boundary = b + self.step
            self.last_decided = b
            yield b

    def is_late(self, event_time: datetime) -> bool:
        """An event stamped at or before an already decided boundary arrived too late to count."""
        return self.last_decided is not None and event_time <= self.last_decided


class FeedMerger:
    """Merges per-feed streams (each in event-time order) into one event-time order.

    Kafka gives order within a partition, not across topics: a consumer may read a week of
    telemetry before the matching prices. An event is released once no feed that still has
    unread data can bring an earlier one: the watermark is the minimum, over feeds that are
    not idle (caught up with their partition's high watermark), of the newest time seen.
    Ties are broken by feed rank, then arrival order, so the order is deterministic.
    """

    def __init__(self, feeds: Iterable[Hashable]) -> None:
        self.rank = {f: i for i, f in enumerate(feeds)}
        self.newest: dict[Hashable, datetime | None] = {f: None for f in self.rank}
        self._heap: list[tuple[datetime, int, int, Any]] = []
        self._seq = 0

    def __len__(self) -> int:
        return len(self._heap)

    def push(self, feed: Hashable, event_time: datetime, item: Any) -> None:
        n = self.newest[feed]
        if n is None or event_time > n:
            self.newest[feed] = event_time
        self._seq += 1
        heapq.heappush(self._heap, (event_time, self.rank[feed], self._seq, item))

    def watermark(self, idle: Callable[[Hashable], bool]) -> tuple[datetime, int] | None:
        """The (time, rank) up to which events can be released; None: every feed is idle.

        A blocking feed can still bring events at its newest time, but nothing earlier; of
        the feeds blocking at the minimum time, the lowest rank bounds the release, so a
        later arrival can never sort before an event already released.
        """
        w: tuple[datetime, int] | None = None
        for f, n in self.newest.items():
            if idle(f):
                continue
            if n is None:
                # a feed with unread data we have not seen yet blocks everything
                return (_EPOCH, -1)
            key = (n, self.rank[f])
            if w is None or key < w:
                w = key
        return w

    def release(self, idle: Callable[[Hashable], bool]) -> list[Any]:
        w = self.watermark(idle)
        out = []
        heap = self._heap
        while heap and (w is None or heap[0][:2] <= w):
            out.append(heapq.heappop(heap)[3])
        return out
