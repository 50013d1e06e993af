"""The worker's timer confirms an assigned partition that delivers nothing from the consumer's
positions, and leaves a partition whose records are on their way to its first batch (its
position is then past them: taken for a gap, it caused a needless takeover)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from faust.types import TP

from schemas.site import load_sample_site
from streams.app import TopicNames, WorkerSettings
from streams.worker import DispatchWorker


class FakeConsumer:
    def __init__(self, topics: list[str], positions: dict[int, int], highwaters: dict[int, int | None],
                 in_hand: frozenset[int] = frozenset()) -> None:
        self.topics, self.positions, self.highwaters, self.in_hand = topics, positions, highwaters, in_hand

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
