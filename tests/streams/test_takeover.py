"""Partition takeover without a broker (streams/takeover.py): which offsets a worker's state
covers, and a site rebuilt from another worker's history deciding on exactly as that worker
would have. The broker path (two workers, one killed) is tests/reliability/test_takeover.py."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta

from dispatch.processor import run_in_process
from schemas.codec import encode
from sinks.archive import Archive, ArchiveBatch
from streams.pipeline import Incoming, Pipeline
from streams.takeover import Coverage, dead_lettered, key_partition, rebuild_partition
from tests import factories as f
from tests.streams.test_pipeline import ALL_IDLE, NONE_IDLE, NOW, SITE, TOPICS, events, named, pipeline


def log_of(ev, partition: int = 0) -> list[Incoming]:
    """The events as the input topics hold them: offsets counted per topic."""
    next_offset: Counter = Counter()
    out = []
    for e in ev:
        topic = TOPICS.feed(named(e))
        out.append(Incoming(topic, partition, next_offset[topic], b"sample", encode(e)))
        next_offset[topic] += 1
    return out


def test_coverage_gap_means_records_processed_elsewhere():
    cov = Coverage()
    assert not cov.gap("t", 0, 0)                # nothing processed anywhere yet
    assert cov.gap("t", 0, 5)                    # 0..4 were processed by someone else
    cov.advance("t", 0, 10)
    assert not cov.gap("t", 0, 3)                # delivered again: we have it
    assert not cov.gap("t", 0, 10)
    assert cov.gap("t", 0, 11)
    cov.advance("t", 0, 7)                       # never moves back
    assert cov.covered("t", 0) == 10
    cov.forget(0)
    assert cov.covered("t", 0) == 0


def test_coverage_from_archive_is_the_next_offset_per_partition(tmp_path):
    msgs = log_of(events())
    p = pipeline()
    res = p.ingest(msgs, ALL_IDLE)
    p.ingest([Incoming(TOPICS.feed("grid_prices"), 0, 99, b"sample", b"{not json")], ALL_IDLE, batch=res.batch)
    archive = Archive(tmp_path / "a.duckdb")
    try:
        archive.write_batch(res.batch)
        cov = Coverage.from_archive(archive.connection())
    finally:
        archive.close()
    last = Counter()
    for m in msgs:
        last[m.topic] = m.offset + 1
    last[TOPICS.feed("grid_prices")] = 100     # the dead letter at offset 99 counts too
    assert cov.next_offset == {(t, 0): n for t, n in last.items()}


def test_a_rebuilt_partition_decides_on_exactly_like_its_first_owner():
    ev = events()
    msgs = log_of(ev)
    expected = run_in_process(SITE, ev)
    cut = len(msgs) * 2 // 3

    first_owner = pipeline()
    published = []
    for i in range(0, cut, 10):
        unread = {m.topic for m in msgs[i + 10:cut]}  # what the first owner could still fetch
        published.extend(first_owner.ingest(msgs[i:i + 10], lambda t, p: t not in unread).actions)
    assert published  # the first owner decided some intervals before it stopped

    new_owner = pipeline()
    batch = ArchiveBatch()
    on_topic = [Incoming(TOPICS.actions, 0, k, b"sample", encode(a)) for k, a in enumerate(published)]
    on_topic.append(on_topic[0])                 # a re-publication: the newest copy counts once
    (rep,) = rebuild_partition(new_owner, 0, msgs[:cut], {"sample": on_topic}, batch)
    assert (rep.mismatched, rep.resumed_after) == (0, published[-1].interval_start)
    assert rep.inputs == cut

    rest = new_owner.ingest(msgs[cut:], NONE_IDLE).actions + new_owner.flush(ALL_IDLE).actions
    assert all(a.interval_start > published[-1].interval_start for a in rest)  # nothing decided twice
    assert [encode(a) for a in published + rest] == [encode(a) for a in expected]

    # the new owner's archive gets the history and the decisions it did not take itself
    assert len(batch) == cut + len(published)


def test_a_rebuild_skips_what_the_first_owner_dead_lettered_though_the_clock_has_passed_it():
    # a price stamped a day ahead of the first owner's clock: a FutureEvent there. The takeover
    # comes two days later, when the same record is no longer ahead: judged again it would be
    # folded, so the rebuild takes the first owner's verdict from the dead-letter topic.
    ev = events()
    ahead = f.rt_price(0, 30.0, t0=NOW + timedelta(days=1))
    msgs = log_of(ev + [ahead])
    first = pipeline().ingest(msgs, ALL_IDLE)
    assert first.dead_letters == 1
    letters = [Incoming(o.topic, 0, k, o.key, o.value) for k, o in enumerate(first.outgoing)
               if o.topic == TOPICS.dead_letters]
    letters.append(Incoming(TOPICS.dead_letters, 0, 9, b"sample", b"not a dead letter"))  # ignored, logged
    dead = dead_lettered(letters, 0, set(TOPICS.inputs.values()))
    assert dead == {(msgs[-1].topic, msgs[-1].offset)}
    assert dead_lettered(letters, 1, set(TOPICS.inputs.values())) == set()  # another partition's

    def rebuilt(dead_set):
        later = Pipeline([SITE], TOPICS, now=lambda: NOW + timedelta(days=2))
        batch = ArchiveBatch()
        (rep,) = rebuild_partition(later, 0, msgs, {}, batch, dead_set)
        return rep, batch

    rep, batch = rebuilt(dead)
    assert rep.inputs == len(ev) and len(batch) == len(ev)
    rep, batch = rebuilt(set())  # the clock alone lets it in: the case the dead letters cover
    assert rep.inputs == len(ev) + 1


def test_key_partition_matches_the_producer_default():
    from aiokafka.partitioner import DefaultPartitioner

    parts = list(range(4))
    for key in (b"sample", b"site-00", b"site-01", b"x" * 40):
        assert key_partition(key, 4) == DefaultPartitioner()(key, parts, parts)
