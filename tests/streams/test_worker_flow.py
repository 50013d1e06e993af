"""The worker's flow control without a broker: the timer confirms an assigned partition that
delivers nothing from the consumer's positions, and leaves a partition whose records are on
their way to its first batch (its position is then past them: taken for a gap, it caused a
needless takeover); the fetch loop waits while too many messages or archive rows are pending."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from faust.types import TP

from schemas.site import load_sample_site
from streams.app import TopicNames, WorkerSettings
from sinks.archive import ArchiveBatch
from streams.worker import DispatchWorker
from tests import factories as f


class FakeConsumer:
    def __init__(self, topics: list[str], positions: dict[int, int], highwaters: dict[int, int | None],
                 in_hand: frozenset[int] = frozenset(), in_hand_firsts: dict | None = None) -> None:
        self.topics, self.positions, self.highwaters, self.in_hand = topics, positions, highwaters, in_hand
        self.in_hand_firsts = in_hand_firsts or {}

    def assignment(self) -> set[TP]:
        return {TP(t, p) for t in self.topics for p in self.positions}

    async def position(self, tp: TP) -> int:
        return self.positions[tp.partition]

    def highwater(self, tp: TP) -> int | None:
        return self.highwaters[tp.partition]


@pytest.fixture
def worker(tmp_path: Path):
    w = DispatchWorker(WorkerSettings(kafka="127.0.0.1:1", db=str(tmp_path / "a.duckdb"),
                                      sites=(load_sample_site(),), topics=TopicNames(".own")))
    yield w
    w.close()


def confirmed_after_tick(worker: DispatchWorker, consumer: FakeConsumer) -> dict[int, dict[str, int]]:
    worker.app.consumer = consumer
    seen: dict[int, dict[str, int]] = {}

    async def confirm(partition, firsts, group):
        seen[partition] = dict(firsts)

    worker._confirm_ownership = confirm  # type: ignore[method-assign]
    asyncio.run(worker._check_assigned())
    return seen


def test_caught_up_or_not_yet_fetched_partitions_are_confirmed_from_their_positions(worker):
    topics = list(worker.settings.topics.inputs.values())
    seen = confirmed_after_tick(worker, FakeConsumer(topics, {0: 7, 1: 3}, {0: 7, 1: None}))
    assert seen == {0: dict.fromkeys(topics, 7), 1: dict.fromkeys(topics, 3)}


def test_a_partition_with_records_on_their_way_waits_for_its_first_batch(worker):
    topics = list(worker.settings.topics.inputs.values())
    # partition 0: fetched, not caught up (records in the consumer thread's hands);
    # partition 1: its records are with the batch handler already; partition 2: idle
    seen = confirmed_after_tick(worker, FakeConsumer(topics, {0: 53, 1: 1440, 2: 9}, {0: 1440, 1: 1440, 2: 9},
                                                     in_hand=frozenset({1})))
    assert seen == {2: dict.fromkeys(topics, 9)}


class Rec:
    def __init__(self, offset: int) -> None:
        self.offset = offset


def test_a_first_batch_confirms_from_every_topic_of_its_partition(worker):
    # the step brings telemetry only; the fetch in hand has prices for a later step; the other
    # feeds have nothing in hand: their positions are where their deliveries start
    t = worker.settings.topics
    gpu, prices = t.feed("gpu_telemetry"), t.feed("grid_prices")
    others = [x for x in t.inputs.values() if x not in (gpu, prices)]
    worker.app.consumer = FakeConsumer([], {2: 40}, {}, in_hand=frozenset({2}),
                                       in_hand_firsts={TP(gpu, 2): 7, TP(prices, 2): 12})
    starts = asyncio.run(worker._delivery_starts(2, {TP(gpu, 2): [Rec(7), Rec(8)]}))
    assert starts == {gpu: 7, prices: 12, **dict.fromkeys(others, 40)}


def _rows(n: int) -> ArchiveBatch:
    b = ArchiveBatch()
    b.add_inputs("gpu_telemetry", [f.gpu_sample(f"j{i}") for i in range(n)])
    return b


@pytest.mark.parametrize("open_rows, writing_rows, open_events, writing_events, waits", [
    (3, 0, 1, 0, False), (2, 2, 1, 1, True), (0, 5, 0, 1, True),   # rows over max_inflight_rows (3)
    (1, 0, 3, 2, True), (1, 1, 2, 1, False),                          # messages over max_inflight_events (3)
])
def test_the_fetch_loop_waits_while_too_many_rows_or_messages_are_pending(tmp_path, open_rows, writing_rows,
                                                                         open_events, writing_events, waits):
    w = DispatchWorker(WorkerSettings(kafka="127.0.0.1:1", db=str(tmp_path / "a.duckdb"), sites=(load_sample_site(),),
                                      topics=TopicNames(".flow"), max_inflight_events=3, max_inflight_rows=3))
    try:
        w.app.consumer = FakeConsumer([], {}, {})
        w._open.batch, w._open.events = _rows(open_rows), open_events
        w._writing_rows, w._writing_events = writing_rows, writing_events

        async def one_batch() -> bool:
            try:
                await asyncio.wait_for(w._on_batch({}, 0), timeout=0.3)
            except asyncio.TimeoutError:
                return True
            return False

        assert asyncio.run(one_batch()) is waits
    finally:
        w.close()
