"""The worker's pure pipeline (streams/pipeline.py) without Kafka: decode -> dead letter with a
reason, unknown sites, the event-time merge, what goes into the archive batch, batched GPU
telemetry, and the boundary fast path's query."""

from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dispatch.processor import SiteProcessor, run_in_process
from schemas.codec import decode_gpu, decode_samples, encode, encode_gpu_columns
from schemas.feeds import GpuTelemetry, GpuTelemetryBatch
from schemas.site import load_sample_site
from schemas.topics import INPUT_FEEDS
from sinks.archive import Archive
from streams.app import TopicNames
from streams.pipeline import Incoming, Pipeline
from tests import factories as f
from wattmix.errors import DecodeError
from wattmix.scenario import build_demo_scenario

SITE = load_sample_site()
TOPICS = TopicNames(".t")
NOW = datetime(2025, 1, 1, tzinfo=timezone.utc)
ALL_IDLE = lambda topic, partition: True  # noqa: E731
NONE_IDLE = lambda topic, partition: False  # noqa: E731


def pipeline() -> Pipeline:
    return Pipeline([SITE], TOPICS, now=lambda: NOW)


def msg(feed: str, value: bytes | None, offset: int = 0, partition: int = 0, key: bytes | None = b"sample") -> Incoming:
    return Incoming(TOPICS.feed(feed), partition, offset, key, value)


def named(rec) -> str:
    return {"GridPrice": "grid_prices", "Hashprice": "hashprice", "DemandResponseEvent": "dr_events",
            "GpuTelemetry": "gpu_telemetry", "GpuTelemetryBatch": "gpu_telemetry"}[type(rec).__name__]


def events():
    ev = [f.hashprice(50.0)] + [f.rt_price(i, 30.0 + 100 * (i == 5)) for i in range(10)]
    ev += [f.gpu_sample(f"j{j}", ("inference", "training", "batch")[j % 3], minute=m)
           for j in range(6) for m in range(0, 150, 5)]
    ev.sort(key=lambda e: e.event_time())
    return ev


# -- dead letters -------------------------------------------------------------------------

@pytest.mark.parametrize("value, error_type, needle", [
    (b"{not json", "DecodeError", "not valid JSON"),
    (None, "DecodeError", "empty message"),
    (orjson.dumps({k: v for k, v in orjson.loads(encode(f.rt_price(0, 30))).items() if k != "price_usd_mwh"}),
     "DecodeError", "price_usd_mwh: required field missing"),
    (encode(f.rt_price(0, 30)).replace(b'"interval_minutes":15', b'"interval_minutes":7'), "DecodeError",
     "does not divide the hour"),
    (encode(f.rt_price(0, 30, site="elsewhere")), "UnknownSite", "site_id 'elsewhere' is not configured"),
])
def test_bad_messages_become_dead_letters_with_a_reason(value, error_type, needle):
    p = pipeline()
    res = p.ingest([msg("grid_prices", value, offset=7, partition=2)], ALL_IDLE)
    assert res.accepted == 0 and res.dead_letters == 1 and not res.actions
    (out,) = res.outgoing
    assert out.topic == TOPICS.dead_letters
    dl = orjson.loads(out.value)
    assert dl["error_type"] == error_type and needle in dl["reason"]
    assert (dl["source_topic"], dl["source_partition"], dl["source_offset"]) == (TOPICS.feed("grid_prices"), 2, 7)
    assert res.batch.counts() == {"dead_letters": 1}
    (table,) = res.batch.to_arrow().values()
    assert table.column("raw").to_pylist() == [value or b""]


def test_unknown_topic_is_dead_lettered():
    p = pipeline()
    res = p.ingest([Incoming("some.other.topic", 0, 3, None, b"{}")], ALL_IDLE)
    assert res.dead_letters == 1
    assert orjson.loads(res.outgoing[0].value)["error_type"] == "UnknownTopic"


def test_a_bad_message_does_not_stop_the_others():
    p = pipeline()
    good = [msg(named(e), encode(e), offset=i) for i, e in enumerate(events())]
    res = p.ingest(good[:5] + [msg("grid_prices", b"garbage")] + good[5:], ALL_IDLE)
    assert res.dead_letters == 1 and res.accepted == len(good)


def test_an_event_stamped_ahead_of_the_clock_is_dead_lettered_and_decisions_go_on():
    # a price stamped in 2099 (a valid timestamp) among real ones: accepted, it would move the
    # site's clock past every real event and nothing would be decided again
    now = f.T0 + timedelta(hours=3)
    p = Pipeline([SITE], TOPICS, now=lambda: now)
    ev = events()
    bad = f.rt_price(0, 30.0, t0=datetime(2099, 1, 1, tzinfo=timezone.utc))
    soon = f.rt_price(0, 30.0, t0=now + timedelta(minutes=30))  # published 45 min ahead: clock skew
    msgs = [msg(named(e), encode(e), offset=i) for i, e in enumerate(ev)]
    res = p.ingest(msgs[:3] + [msg("grid_prices", encode(bad), offset=99)] + msgs[3:], ALL_IDLE)
    assert res.dead_letters == 1 and res.accepted == len(ev)
    (dl,) = [orjson.loads(o.value) for o in res.outgoing if o.topic == TOPICS.dead_letters]
    assert dl["error_type"] == "FutureEvent" and dl["source_offset"] == 99
    assert "GridPrice: event time 2099-01-01T00:15:00+00:00 is" in dl["reason"] and "h ahead" in dl["reason"]
    assert [a.interval_start for a in res.actions] == [a.interval_start for a in run_in_process(SITE, ev)]
    assert p.ingest([msg("grid_prices", encode(soon), offset=100)], ALL_IDLE).dead_letters == 0


def test_a_batch_with_one_sample_ahead_of_the_clock_is_dead_lettered_whole():
    now = f.T0 + timedelta(hours=3)
    samples = [f.gpu_sample("j1", minute=0), f.gpu_sample("j2", minute=24 * 60)]
    raw = encode(GpuTelemetryBatch(site_id="sample", samples=samples))
    res = Pipeline([SITE], TOPICS, now=lambda: now).ingest([msg("gpu_telemetry", raw)], ALL_IDLE)
    assert res.dead_letters == 1 and res.accepted == 0
    assert orjson.loads(res.outgoing[0].value)["reason"].startswith(
        "GpuTelemetry batch of 2 samples, newest: event time 2024-08-06T00:00:00+00:00 is 21.0 h ahead")
    # a simulation running ahead of the wall clock turns the check off
    res = Pipeline([SITE], TOPICS, now=lambda: now, max_future_s=None).ingest([msg("gpu_telemetry", raw)], ALL_IDLE)
    assert res.dead_letters == 0 and res.accepted == 2


# -- event-time merge -----------------------------------------------------------------------

def test_merge_holds_events_until_every_feed_is_idle_or_past_them():
    p = pipeline()
    ev = events()
    prices = [e for e in ev if named(e) == "grid_prices"]
    gpu = [e for e in ev if named(e) == "gpu_telemetry"]
    # telemetry for the whole 2.5 h arrives first, the prices are not there yet: nothing may be
    # released (prices could still bring earlier events)
    res = p.ingest([msg("gpu_telemetry", encode(g), offset=i) for i, g in enumerate(gpu)], NONE_IDLE)
    assert not res.actions and p.lanes["sample"].processor.state.events_folded == 0
    # held back as one merge item per instant (consecutive samples of one scrape)
    assert p.pending() == len({g.observed_at for g in gpu}) < len(gpu)
    # every event is archived at once, whether released or not
    assert res.batch.counts() == {"gpu_telemetry": len(gpu)}
    # prices arrive; DR and hashprice partitions idle: released up to the newest telemetry (02:25)
    quiet = {TOPICS.feed("dr_events"), TOPICS.feed("hashprice")}
    res = p.ingest([msg("hashprice", encode(ev[0]))] + [msg("grid_prices", encode(x), offset=i)
                                                        for i, x in enumerate(prices)],
                   lambda topic, partition: topic in quiet)
    newest_gpu = max(g.observed_at for g in gpu)
    assert res.actions and all(a.interval_start < newest_gpu for a in res.actions)
    assert p.pending() == sum(1 for e in ev if e.event_time() > newest_gpu)
    p.flush(ALL_IDLE)
    assert p.pending() == 0


def test_live_decisions_equal_the_in_process_engine_whatever_the_batching():
    ev = events()
    expected = run_in_process(SITE, ev)
    for size in (1, 7, 1000):
        p = pipeline()
        msgs = [msg(named(e), encode(e), offset=i) for i, e in enumerate(ev)]
        got = []
        for i in range(0, len(msgs), size):
            got.extend(p.ingest(msgs[i:i + size], NONE_IDLE).actions)
        got.extend(p.flush(ALL_IDLE).actions)
        assert [encode(a) for a in got] == [encode(a) for a in expected], size


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 4), st.sampled_from(["running", "paused", "queued", "completed"]),
                          st.integers(0, 16)), min_size=1, max_size=40),
       st.randoms(use_true_random=False), st.integers(1, 9))
def test_single_samples_merged_per_instant_give_the_per_sample_decisions_and_state(samples, rnd, size):
    # consecutive single-sample messages of one instant travel the merge as one item: the same
    # decisions and the same GPU state as folding each sample in merge order (time, feed, arrival),
    # whatever the arrival order (late and repeated samples, a job twice in one instant, batch
    # messages between single samples of the same instant)
    prices = [f.hashprice(50.0)] + [f.rt_price(i, 30.0 + 700 * (i == 3)) for i in range(6)]
    gpu = [f.gpu_sample(f"j{j}", ("inference", "training", "batch")[j % 3], minute=15 + 5 * m, gpus=g)
           .model_copy(update={"state": state}) for j, m, state, g in samples]
    arrived = prices + gpu
    rnd.shuffle(arrived)
    rank = {"grid_prices": 0, "dr_events": 1, "hashprice": 2, "gpu_telemetry": 3}
    assert list(rank) == [feed.name for feed in INPUT_FEEDS]
    order = sorted(range(len(arrived)), key=lambda i: (arrived[i].event_time(), rank[named(arrived[i])], i))
    proc = SiteProcessor(SITE)
    expected = [a for i in order for a in proc.process(arrived[i]).actions]
    p = pipeline()
    msgs, k = [], 0
    while k < len(arrived):  # now and then 2-4 consecutive samples travel as one batch message
        n = 1
        while n < 4 and k + n < len(arrived) and all(type(e) is GpuTelemetry for e in arrived[k:k + n + 1]):
            n += 1
        n = rnd.choice([1, n])
        value = encode(arrived[k]) if n == 1 else encode(GpuTelemetryBatch(site_id="sample", samples=arrived[k:k + n]))
        msgs.append(msg(named(arrived[k]), value, offset=len(msgs)))
        k += n
    got = []
    for i in range(0, len(msgs), size):
        got.extend(p.ingest(msgs[i:i + size], NONE_IDLE).actions)
    got.extend(p.flush(ALL_IDLE).actions)
    assert [encode(a) for a in got] == [encode(a) for a in expected]
    state = p.lanes["sample"].processor.state
    assert state.gpu_jobs == proc.state.gpu_jobs and state.gpu_demand() == proc.state.gpu_demand()
    assert state.events_folded == proc.state.events_folded


def test_batch_contents_and_action_messages():
    p = pipeline()
    ev = events()
    res = p.ingest([msg(named(e), encode(e), offset=i, partition=3) for i, e in enumerate(ev)], ALL_IDLE)
    counts = res.batch.counts()
    assert counts["gpu_telemetry"] + counts["grid_prices"] + counts["hashprice"] == len(ev)
    assert counts["actions"] == len(res.actions) > 0
    tables = res.batch.to_arrow()
    assert set(tables["gpu_telemetry"].column("kafka_partition").to_pylist()) == {3}
    assert tables["grid_prices"].column("kafka_offset").to_pylist() == [
        i for i, e in enumerate(ev) if named(e) == "grid_prices"]
    acts = [o for o in res.outgoing if o.topic == TOPICS.actions]
    assert len(acts) == len(res.actions)
    assert all(o.key == b"sample" for o in acts)
    assert [orjson.loads(o.value)["interval_start"] for o in acts] == [a.interval_start.isoformat() for a in res.actions]
    assert p.partitions_in_use() == {3}


def test_late_events_are_archived_and_flagged():
    p = pipeline()
    ev = events()
    p.ingest([msg(named(e), encode(e), offset=i) for i, e in enumerate(ev)], ALL_IDLE)
    late = f.gpu_sample("j0", "inference", minute=1)  # long decided
    res = p.ingest([msg("gpu_telemetry", encode(late), offset=999)], ALL_IDLE)
    assert res.late == 1 and res.accepted == 1
    assert res.batch.to_arrow()["gpu_telemetry"].column("late").to_pylist() == [True]


# -- batched GPU telemetry ------------------------------------------------------------------

def test_batched_telemetry_is_the_same_as_single_samples():
    ev = events()
    single = pipeline()
    s_actions = []
    for i, e in enumerate(ev):
        s_actions += single.ingest([msg(named(e), encode(e), offset=i)], NONE_IDLE).actions
    s_actions += single.flush(ALL_IDLE).actions

    batched = pipeline()
    msgs, buf = [], []
    for e in ev + [None]:
        if e is not None and named(e) == "gpu_telemetry" and len(buf) < 6:
            buf.append(e)
            continue
        if buf:
            msgs.append(msg("gpu_telemetry", encode(GpuTelemetryBatch(site_id="sample", samples=buf)), offset=len(msgs)))
            buf = []
        if e is not None:
            if named(e) == "gpu_telemetry":
                buf.append(e)
            else:
                msgs.append(msg(named(e), encode(e), offset=len(msgs)))
    b_actions, rows = [], 0
    for m in msgs:
        r = batched.ingest([m], NONE_IDLE)
        b_actions += r.actions
        rows += r.batch.counts().get("gpu_telemetry", 0)
    b_actions += batched.flush(ALL_IDLE).actions
    assert len(msgs) < len(ev)
    assert rows == sum(1 for e in ev if named(e) == "gpu_telemetry")
    assert [encode(a) for a in b_actions] == [encode(a) for a in s_actions]


@pytest.fixture(scope="module")
def demo_events() -> list:
    """Three demo days with 60 GPU jobs (~5,000 samples: starts, hourly samples, completions)."""
    return [rec for _, rec in build_demo_scenario(days=3, jobs=60, site=SITE).events_in_order()]


def _message_plan(ev: list, per_message: int, seed: int | None) -> list[list]:
    """Events grouped as the batched stream sends them: each list is one message (GPU samples
    of a batch in list order, ``per_message`` at most, or with ``per_message=0`` the samples
    of one instant, as an exporter's scrape; sent where its last sample was; any other event
    alone). ``seed``: shuffle the samples inside each batch (exporters need not
    sort a scrape). Late samples (long decided) close the stream."""
    late = [f.gpu_sample("late-a", "batch", minute=20), f.gpu_sample("late-b", "inference", minute=20),
            f.gpu_sample("late-b", "inference", minute=25, state="completed")]
    plan, buf = [], []
    for e in ev + late:
        if not isinstance(e, GpuTelemetry):
            plan.append([e])
            continue
        if per_message == 0 and buf and buf[-1].observed_at != e.observed_at:  # scrapes: one instant each
            plan.append(buf)
            buf = []
        buf.append(e)
        if len(buf) == per_message or (per_message and e is late[0]):
            plan.append(buf)
            buf = []
    plan.append(buf)
    rnd = random.Random(seed)
    for m in plan:
        if seed is not None and len(m) > 1:
            rnd.shuffle(m)
    return [m for m in plan if m]


def _run(msgs: list[Incoming], archive_path) -> tuple[list, list]:
    """Ingest in steps of 5 messages with every partition busy, then flush; archive every
    step into a real DuckDB file. Returns (actions, late count)."""
    p = pipeline()
    actions, late = [], 0
    with Archive(archive_path) as arch:
        for i in range(0, len(msgs), 5):
            res = p.ingest(msgs[i:i + 5], NONE_IDLE)
            actions += res.actions
            late += res.late
            arch.write_batch(res.batch)
        res = p.flush(ALL_IDLE)
        actions += res.actions
        arch.write_batch(res.batch)
    return actions, late


GPU_ROWS = ("SELECT site_id, job_id, gpu_class, gpus, power_kw, utilization, state, observed_at, event_time, late, "
            "identity FROM gpu_telemetry ORDER BY observed_at, job_id, state")


@pytest.mark.parametrize("form, per_message, seed", [
    ("rows", 7, None), ("columns", 300, None), ("columns", 1000, 3), ("rows", 4000, 5), ("columns", 0, 7)])
# (the late samples fold when released, as live: the in-process engine on event-time-ordered
# input is compared with the per-sample stream in test_live_decisions_equal_the_in_process_engine...)
def test_same_samples_per_sample_or_batched_give_identical_actions_and_archive(demo_events, tmp_path, form,
                                                                              per_message, seed, monkeypatch):
    if per_message == 0:  # scrapes: one instant per message, every run folded as a scrape
        monkeypatch.setattr("dispatch.state.SCRAPE_FOLD_MIN", 1)
    plan = _message_plan(demo_events, per_message, seed)
    # sent one by one, a shuffled batch's samples go in time order (stable: an instant's samples
    # keep the batch's order), as the merge orders them; unsorted, later ones would make the
    # earlier ones late, which a batch delivered at once does not
    in_time = (e for m in plan for e in sorted(m, key=lambda e: e.event_time()))
    single = [msg(named(e), encode(e), offset=i) for i, e in enumerate(in_time)]
    batched = []
    for i, m in enumerate(plan):
        if not isinstance(m[0], GpuTelemetry):
            value = encode(m[0])
        elif form == "rows":
            value = encode(GpuTelemetryBatch(site_id="sample", samples=m))
        else:
            value = encode_gpu_columns(m)
        batched.append(msg(named(m[0]), value, offset=i))
    assert len(batched) < len(single) / 5 if per_message > 7 else len(batched) < len(single)
    if per_message == 0:
        assert len({decode_gpu(m.value).instant for m in batched if "gpu" in m.topic} - {None}) > 100

    s_actions, s_late = _run(single, tmp_path / "single.duckdb")
    b_actions, b_late = _run(batched, tmp_path / "batched.duckdb")
    assert len(s_actions) == 287 and s_late == b_late == 3
    assert [encode(a) for a in b_actions] == [encode(a) for a in s_actions]
    with Archive(tmp_path / "single.duckdb") as a, Archive(tmp_path / "batched.duckdb") as b:
        rows = a.connection().execute(GPU_ROWS).fetchall()
        assert rows == b.connection().execute(GPU_ROWS).fetchall()
        assert len(rows) == sum(1 for e in single if "gpu" in e.topic)
        assert a.counts() == b.counts()


def test_an_unsorted_batch_keeps_the_order_of_samples_of_one_instant():
    # the later sample of job x at minute 5 ("completed") follows its "running" in the list: it
    # must win, as if sent one by one, although the batch is sorted by time before merging
    samples = [f.gpu_sample("x", minute=5), f.gpu_sample("y", minute=0), f.gpu_sample("x", minute=5, state="completed"),
               f.gpu_sample("z", minute=5)]
    p = pipeline()
    p.ingest([msg("gpu_telemetry", encode_gpu_columns(samples))], ALL_IDLE)
    assert sorted(p.lanes["sample"].processor.state.gpu_jobs) == ["y", "z"]


def test_a_batch_archived_twice_adds_no_rows(tmp_path):
    m = msg("gpu_telemetry", encode_gpu_columns([f.gpu_sample(f"j{i}", minute=i) for i in range(40)]), offset=3)
    with Archive(tmp_path / "a.duckdb") as arch:
        first = arch.write_batch(pipeline().ingest([m], NONE_IDLE).batch)
        again = arch.write_batch(pipeline().ingest([m, m], NONE_IDLE).batch)  # re-delivered, twice
        assert first.inserted == {"gpu_telemetry": 40} and again.inserted == {"gpu_telemetry": 0}
        assert arch.counts()["gpu_telemetry"] == 40


def test_a_bad_sample_rejects_its_batch_with_the_index_in_the_reason():
    good = [f.gpu_sample(f"j{i}", minute=i) for i in range(3)]
    raw = encode(GpuTelemetryBatch(site_id="sample", samples=good)).replace(b'"utilization":0.9', b'"utilization":1.9', 1)
    with pytest.raises(DecodeError) as ei:
        decode_samples(GpuTelemetry, GpuTelemetryBatch, raw)
    assert "samples.0.utilization" in ei.value.reason
    res = pipeline().ingest([msg("gpu_telemetry", raw)], ALL_IDLE)
    assert res.dead_letters == 1 and res.accepted == 0


def test_batch_samples_must_belong_to_the_batch_site():
    with pytest.raises(ValueError, match="differs from the batch's site_id"):
        GpuTelemetryBatch(site_id="sample", samples=[f.gpu_sample("a"), f.gpu_sample("b", site="other")])


def test_single_samples_still_decode_on_the_batched_topic():
    g = f.gpu_sample("solo")
    assert decode_samples(GpuTelemetry, GpuTelemetryBatch, encode(g)) == [g]


# -- the boundary fast path's query ---------------------------------------------------------

def test_at_boundary_only_when_the_newest_event_sits_on_the_next_boundary():
    p = pipeline()
    first = [f.hashprice(50.0), f.rt_price(0, 30.0), f.gpu_sample("j", minute=16)]
    res = p.ingest([msg(named(e), encode(e), offset=i) for i, e in enumerate(first)], ALL_IDLE)
    assert [a.interval_start for a in res.actions] == [f.T0 + (first[1].published_at - f.T0)]
    nb = p.lanes["sample"].processor.clock.next_boundary
    assert not p.at_boundary("grid_prices", 0)  # nothing pending
    price = f.rt_price(1, 31.0)  # published at 00:30, the next boundary
    assert price.published_at == nb
    p.ingest([msg("grid_prices", encode(price), offset=9)], NONE_IDLE)
    assert p.pending() == 1
    assert p.at_boundary("grid_prices", 0)
    assert not p.at_boundary("gpu_telemetry", 0)  # its newest (00:16) is not on the boundary
    assert not p.at_boundary("grid_prices", 1)  # no site on partition 1
