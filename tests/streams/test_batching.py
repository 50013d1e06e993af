"""streams.batching.split_steps: how one fetch is cut into pipeline steps (no broker needed)."""

from __future__ import annotations

import random

import pytest
from faust.types import TP

from streams.batching import split_steps

PRICE, TELE, DR = TP("prices", 0), TP("telemetry", 0), TP("dr", 0)


def _fetch(sizes: dict[TP, int]) -> dict[TP, list[int]]:
    return {tp: list(range(100, 100 + n)) for tp, n in sizes.items()}  # record = its offset


def _rejoin(steps: list[dict[TP, list[int]]]) -> dict[TP, list[int]]:
    out: dict[TP, list[int]] = {}
    for step in steps:
        for tp, recs in step.items():
            out.setdefault(tp, []).extend(recs)
    return out


def test_a_fetch_within_the_limit_is_one_step_untouched():
    fetch = _fetch({PRICE: 1, TELE: 700})
    assert split_steps(fetch, 1_000) == [fetch]
    assert split_steps(fetch, None) == [fetch]


def test_the_price_rides_in_the_first_step_not_behind_the_telemetry():
    steps = split_steps(_fetch({TELE: 3_500, PRICE: 1}), 1_000)
    assert steps[0][PRICE] == [100]
    assert [sum(map(len, s.values())) for s in steps] == [1_000, 1_000, 1_000, 501]
    assert _rejoin(steps)[TELE] == list(range(100, 3_600))  # in order, nothing lost or repeated


def test_every_partition_starts_in_the_first_step_sharing_the_room():
    tele1 = TP("telemetry", 1)
    steps = split_steps(_fetch({TELE: 1_500, tele1: 999, PRICE: 1}), 1_000)
    # price whole (1), then the two large partitions share the 999 left: 499 and 500
    assert {tp: len(r) for tp, r in steps[0].items()} == {PRICE: 1, tele1: 499, TELE: 500}
    assert _rejoin(steps) == _fetch({TELE: 1_500, tele1: 999, PRICE: 1})


@pytest.mark.parametrize("seed", range(20))
def test_random_fetches_are_cut_into_contiguous_runs_within_the_limit(seed):
    rng = random.Random(seed)
    tps = [TP(t, p) for t in ("prices", "dr", "telemetry") for p in range(rng.randint(1, 4))]
    fetch = _fetch({tp: rng.choice([1, 3, rng.randint(1, 5_000)]) for tp in tps})
    step_max = rng.choice([1, 7, 500, 1_000])
    steps = split_steps(fetch, step_max)
    assert _rejoin(steps) == fetch
    assert set(steps[0]) == set(fetch)
    for step in steps[1:]:
        assert sum(map(len, step.values())) <= step_max
        for recs in step.values():
            assert recs == list(range(recs[0], recs[0] + len(recs)))  # one ack range per step
    assert sum(map(len, steps[0].values())) <= max(step_max, len(fetch))


@pytest.mark.parametrize("fetch_size, step_max", [(7, 5), (40, 16), (200, 50), (1_000, 1_000)])
def test_decisions_do_not_depend_on_how_fetches_are_cut_into_steps(fetch_size, step_max):
    """A worker in miniature: each topic is one partition, every fetch takes up to
    ``fetch_size`` records of each topic, steps come from split_steps, and a partition counts
    as idle once all of it was delivered (as the worker's high-watermark check does)."""
    from dispatch.processor import run_in_process
    from schemas.codec import encode
    from tests.streams.test_pipeline import SITE, events, msg, named, pipeline

    ev = events()
    log: dict[str, list] = {}
    for e in ev:
        topic_log = log.setdefault(named(e), [])
        topic_log.append(msg(named(e), encode(e), offset=len(topic_log)))
    p, got = pipeline(), []
    fetched = {feed: 0 for feed in log}     # the consumer's position
    delivered = {feed: 0 for feed in log}   # what the pipeline has been handed
    while any(fetched[feed] < len(log[feed]) for feed in log):
        fetch = {TP(feed, 0): log[feed][fetched[feed]:fetched[feed] + fetch_size]
                 for feed in log if fetched[feed] < len(log[feed])}
        for feed in log:
            fetched[feed] = min(len(log[feed]), fetched[feed] + fetch_size)
        for step in split_steps(fetch, step_max):
            for tp, recs in step.items():
                delivered[tp.topic] = recs[-1].offset + 1
            caught_up = frozenset(log[feed][0].topic for feed in log if delivered[feed] == len(log[feed]))
            got += p.ingest([m for recs in step.values() for m in recs],
                            lambda topic, partition, done=caught_up: topic in done).actions
    got += p.flush(lambda topic, partition: True).actions
    expected = run_in_process(SITE, ev)
    assert len(expected) > 5
    assert [encode(a) for a in got] == [encode(a) for a in expected]
