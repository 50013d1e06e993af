"""Event time: boundaries, lateness, and the cross-feed merge."""

from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone

from dispatch.clock import FeedMerger, IntervalClock, ceil_to_interval, floor_to_interval

T0 = datetime(2024, 8, 5, tzinfo=timezone.utc)
M = timedelta(minutes=1)


def test_floor_and_ceil():
    t = T0 + 7 * M
    assert floor_to_interval(t, 15) == T0
    assert ceil_to_interval(t, 15) == T0 + 15 * M
    assert ceil_to_interval(T0, 15) == T0


def test_boundary_is_due_only_after_an_event_past_it():
    c = IntervalClock(15)
    c.start(T0 + 15 * M)
    assert list(c.due(T0 + 15 * M)) == []  # an event stamped exactly at the boundary is folded first
    assert list(c.due(T0 + 16 * M)) == [T0 + 15 * M]
    assert list(c.due(T0 + 61 * M)) == [T0 + 30 * M, T0 + 45 * M, T0 + 60 * M]
    assert list(c.due(T0 + 61 * M)) == []


def test_a_day_of_missed_intervals_is_caught_up():
    c = IntervalClock(15)
    c.start(T0)
    due = list(c.due(T0 + timedelta(days=1)))  # exactly the catch-up bound past the next boundary
    assert len(due) == 96 and due[0] == T0 and due[-1] == T0 + timedelta(days=1) - 15 * M
    assert c.skipped_intervals == 0


def test_a_jump_past_the_catch_up_bound_skips_the_hole_and_restarts(caplog):
    # an event in 2099 after one in 2024 (both valid stamps) must not make 75 years of
    # intervals due: the clock restarts at the event's interval, as at start-up
    c = IntervalClock(15)
    c.start(T0)
    jump = datetime(2099, 1, 1, 0, 7, tzinfo=timezone.utc)
    assert list(c.due(jump)) == []
    assert c.next_boundary == datetime(2099, 1, 1, 0, 15, tzinfo=timezone.utc)
    assert c.skipped_intervals == (c.next_boundary - T0) // (15 * M)
    assert "intervals skipped" in caplog.text
    assert list(c.due(jump + 10 * M)) == [datetime(2099, 1, 1, 0, 15, tzinfo=timezone.utc)]
    assert c.is_late(T0 + 16 * M)  # the old times stay late


def test_late_events():
    c = IntervalClock(15)
    c.start(T0)
    list(c.due(T0 + 20 * M))
    # boundaries 00:00 and 00:15 are decided: anything stamped at or before 00:15 is late
    assert c.is_late(T0) and c.is_late(T0 + 15 * M)
    assert not c.is_late(T0 + 16 * M)


def test_resume_after_restart():
    c = IntervalClock(15)
    c.resume_after(T0 + 30 * M)
    assert c.is_late(T0 + 30 * M)
    assert list(c.due(T0 + 50 * M)) == [T0 + 45 * M]


def _feeds_in_random_interleave(seed):
    rng = random.Random(seed)
    streams = {
        "prices": [(T0 + 15 * i * M, f"p{i}") for i in range(40)],
        "telemetry": [(T0 + (3 * i + 1) * M, f"g{i}") for i in range(200)],
        "dr": [(T0 + 100 * M, "dr0")],
    }
    cursors = {k: 0 for k in streams}
    arrivals = []
    while any(cursors[k] < len(v) for k, v in streams.items()):
        k = rng.choice([k for k in streams if cursors[k] < len(streams[k])])
        take = rng.randint(1, 30)
        for _ in range(take):
            if cursors[k] < len(streams[k]):
                arrivals.append((k, *streams[k][cursors[k]]))
                cursors[k] += 1
    return streams, arrivals


def test_merge_restores_event_time_order_whatever_the_interleave():
    expected = None
    for seed in range(20):
        streams, arrivals = _feeds_in_random_interleave(seed)
        m = FeedMerger(["prices", "dr", "telemetry"])
        remaining = {k: len(v) for k, v in streams.items()}
        out = []
        for feed, t, item in arrivals:
            m.push(feed, t, item)
            remaining[feed] -= 1
            # a feed is idle once all of its data has been read
            out.extend(m.release(lambda f: remaining[f] == 0))
        out.extend(m.release(lambda f: True))
        times = {item: t for s in streams.values() for t, item in s}
        assert [times[x] for x in out] == sorted(times[x] for x in out)
        assert len(out) == sum(len(v) for v in streams.values())
        if expected is None:
            expected = out
        assert out == expected  # same order for every interleave: deterministic tie-breaks


def test_feed_with_unread_data_blocks_until_seen():
    m = FeedMerger(["a", "b"])
    m.push("a", T0 + 5 * M, "a1")
    assert m.release(lambda f: False) == []  # b has unread data and nothing seen yet
    m.push("b", T0 + 10 * M, "b1")
    assert m.release(lambda f: False) == ["a1"]
    assert m.release(lambda f: True) == ["b1"]
