"""The built-in demo week: seeded, deterministic, realistic, and valid on the wire."""

from __future__ import annotations

import hashlib
from collections import Counter
from datetime import datetime, timedelta, timezone

import pytest

from schemas.codec import decode, encode
from schemas.feeds import DemandResponseEvent, GpuTelemetry, GridPrice, Hashprice
from schemas.topics import DR_EVENTS, GPU_TELEMETRY, HASHPRICE, PRICES
from wattmix.errors import ConfigError
from wattmix.scenario import FEED_ORDER, Scenario, build_demo_scenario

START = datetime(2024, 8, 5, tzinfo=timezone.utc)
Q = timedelta(minutes=15)


@pytest.fixture(scope="module")
def sc() -> Scenario:
    return build_demo_scenario()


@pytest.fixture(scope="module")
def ordered(sc: Scenario):
    return sc.events_in_order()


def _digest(s: Scenario) -> str:
    h = hashlib.sha256()
    for name, rec in s.events_in_order():
        h.update(name.encode())
        h.update(encode(rec))
    return h.hexdigest()


def _rt(sc: Scenario) -> list[float]:
    return [p.price_usd_mwh for p in sc.prices_rt]


def _hashprice_on(sc: Scenario, t: datetime) -> float:
    return max((h for h in sc.hashprice if h.published_at <= t), key=lambda h: h.as_of).usd_per_ph_day


# -- determinism ---------------------------------------------------------------------------


def test_same_seed_gives_identical_bytes(sc: Scenario) -> None:
    assert _digest(build_demo_scenario(seed=7)) == _digest(sc)


def test_different_seed_gives_different_week() -> None:
    a = build_demo_scenario(seed=7, days=3, jobs=100)
    b = build_demo_scenario(seed=8, days=3, jobs=100)
    assert _digest(a) != _digest(b)
    assert _rt(a) != _rt(b)
    assert [g.job_id for g in a.gpu_telemetry] != [g.job_id for g in b.gpu_telemetry] or [
        g.utilization for g in a.gpu_telemetry
    ] != [g.utilization for g in b.gpu_telemetry]
    assert _digest(a) == _digest(build_demo_scenario(seed=7, days=3, jobs=100))


# -- counts and shapes ---------------------------------------------------------------------


def test_counts(sc: Scenario) -> None:
    assert (sc.start, sc.end) == (START, START + timedelta(days=7))
    assert len(sc.prices_rt) == 672
    assert len(sc.prices_da) == 168
    assert len(sc.hashprice) >= 8
    assert len({e.event_id for e in sc.dr_events}) == 1
    assert 60_000 <= len(sc.gpu_telemetry) <= 200_000
    c = sc.counts()
    assert c["gpu_telemetry"] == len(sc.gpu_telemetry) and c["rt_prices"] == 672
    assert "spike" in sc.summary()


def test_every_record_is_a_model_of_its_feed_with_utc_times(sc: Scenario) -> None:
    for name, model in ((PRICES.name, GridPrice), (HASHPRICE.name, Hashprice), (DR_EVENTS.name, DemandResponseEvent),
                        (GPU_TELEMETRY.name, GpuTelemetry)):
        recs = sc.feeds()[name]
        assert recs and all(type(r) is model for r in recs)
        for r in recs[:: max(1, len(recs) // 500)]:
            assert r.site_id == "sample"
            assert r.event_time().tzinfo is not None and r.event_time().utcoffset() == timedelta(0)
            assert decode(model, encode(r)) == r  # round-trips through the wire codec


def test_rt_prices_cover_the_week_and_are_published_at_interval_end(sc: Scenario) -> None:
    for i, p in enumerate(sc.prices_rt):
        assert (p.market, p.interval_minutes, p.settlement_point) == ("RT", 15, "HB_HUBAVG")
        assert p.interval_start == START + i * Q
        assert p.published_at == p.interval_end == p.interval_start + Q


def test_day_ahead_is_hourly_and_published_the_day_before_at_17_utc(sc: Scenario) -> None:
    for h, p in enumerate(sc.prices_da):
        assert (p.market, p.interval_minutes) == ("DA", 60)
        assert p.interval_start == START + timedelta(hours=h)
        day = START + timedelta(days=h // 24)
        assert p.published_at == day - timedelta(days=1) + timedelta(hours=17)
    assert sc.prices_da[0].published_at == START - timedelta(hours=7)  # day 0 known before the week


def test_hashprice_daily_from_the_day_before(sc: Scenario) -> None:
    assert [h.as_of for h in sc.hashprice] == [START + timedelta(days=d) for d in range(-1, 7)]
    assert all(h.published_at == h.as_of for h in sc.hashprice)
    values = [h.usd_per_ph_day for h in sc.hashprice]
    assert all(50 <= v <= 60 for v in values)
    assert all(abs(b / a - 1) <= 0.02 + 1e-9 for a, b in zip(values, values[1:]))
    assert all(h.btc_usd and 40_000 < h.btc_usd < 120_000 and h.difficulty for h in sc.hashprice)
    # known at the first interval
    assert _hashprice_on(sc, START) == values[1]


# -- prices --------------------------------------------------------------------------------


def test_one_scarcity_spike_near_the_cap(sc: Scenario) -> None:
    rt = _rt(sc)
    assert max(rt) <= 5000.0
    s0, s1 = sc.spike
    assert timedelta(hours=3) <= s1 - s0 <= timedelta(hours=4, minutes=30)
    inside = [p.price_usd_mwh for p in sc.prices_rt if s0 <= p.interval_start < s1]
    run = best = 0
    for v in inside:
        run = run + 1 if v > 2000 else 0
        best = max(best, run)
    assert best >= 8
    assert max(inside) == max(rt) >= 4500
    outside = [p.price_usd_mwh for p in sc.prices_rt if not s0 <= p.interval_start < s1]
    assert max(outside) < 300  # only one spike
    # the day-ahead saw some of it, not most
    da = [p.price_usd_mwh for p in sc.prices_da if s0 <= p.interval_start + timedelta(minutes=59) and p.interval_start < s1]
    assert 300 <= max(da) <= 800


def test_daily_evening_peak_every_day(sc: Scenario) -> None:
    for d in range(7):
        day0 = START + timedelta(days=d)
        evening = [p.price_usd_mwh for p in sc.prices_rt if day0 + timedelta(hours=22) <= p.interval_start < day0 + timedelta(hours=26)]
        night = sorted(p.price_usd_mwh for p in sc.prices_rt if day0 + timedelta(hours=6) <= p.interval_start < day0 + timedelta(hours=12))
        assert 15 <= night[len(night) // 2] <= 30, d
        assert max(evening) >= 55 and max(evening) >= 2.5 * night[len(night) // 2], d


def test_prices_between_the_fleet_breakevens(sc: Scenario) -> None:
    s19, s21 = sc.site.miner_fleets
    between = 0
    for p in sc.prices_rt:
        hp = _hashprice_on(sc, p.interval_start)
        if s19.breakeven_grid_usd_mwh(hp) < p.price_usd_mwh < s21.breakeven_grid_usd_mwh(hp):
            between += 1
    assert between >= 16  # at least 4 hours where the old fleet curtails and the new one runs


def test_a_few_negative_midday_prices(sc: Scenario) -> None:
    neg = [p for p in sc.prices_rt if p.price_usd_mwh < 0]
    assert 2 <= len(neg) <= 10
    assert all(-5 <= p.price_usd_mwh <= -1 for p in neg)
    assert all(17 <= p.interval_start.hour < 19 for p in neg)  # 12:00-14:00 CDT


# -- demand response -----------------------------------------------------------------------


def test_dr_event(sc: Scenario) -> None:
    rev0, rev1 = sorted(sc.dr_events, key=lambda e: e.revision)
    assert rev0.event_id == rev1.event_id
    assert (rev0.program, rev0.obligation_kind, rev0.obligation_mw) == ("ERS-30", "firm_service_level", 20)
    assert (rev0.penalty_usd_mwh, rev0.capacity_payment_usd_mw_h, rev0.status, rev0.revision) == (1000, 8, "scheduled", 0)
    assert rev0.start - rev0.notice_at == timedelta(minutes=30) and rev0.issued_at == rev0.notice_at
    assert rev0.end - rev0.start == timedelta(hours=2)
    # revision 1 is issued during the event and extends it by 30 min
    assert rev1.revision == 1 and rev0.start < rev1.issued_at < rev0.end
    assert (rev1.start, rev1.end) == (rev0.start, rev0.end + timedelta(minutes=30))
    # a different afternoon than the spike, at a high-but-not-scarce price
    assert rev0.start.date() != sc.spike[0].date()
    during = [p.price_usd_mwh for p in sc.prices_rt if rev1.start <= p.interval_start < rev1.end]
    s21 = sc.site.miner_fleets[1]
    assert 55 <= min(during) and max(during) < s21.breakeven_grid_usd_mwh(_hashprice_on(sc, rev1.start))


# -- GPU telemetry -------------------------------------------------------------------------


def test_gpu_demand_stays_within_class_capacity_and_near_it(sc: Scenario, ordered) -> None:
    gpus = sc.site.gpus
    cap = {c.gpu_class: gpus.count * c.share for c in gpus.classes}
    jobs: dict[str, GpuTelemetry] = {}
    demand = Counter()
    totals = Counter()
    samples = 0
    it = iter(r for name, r in ordered if name == GPU_TELEMETRY.name)
    pending = next(it, None)
    t = sc.start
    while t < sc.end:
        while pending is not None and pending.observed_at <= t:
            prev = jobs.pop(pending.job_id, None)
            if prev is not None:
                demand[prev.gpu_class] -= prev.gpus
            if pending.state == "running":
                jobs[pending.job_id] = pending
                demand[pending.gpu_class] += pending.gpus
            pending = next(it, None)
        for c, limit in cap.items():
            assert demand[c] <= limit, (t, c, demand[c])
            totals[c] += demand[c]
        samples += 1
        t += Q
    for c, limit in cap.items():
        assert totals[c] / samples > 0.8 * limit, c


def test_gpu_jobs_and_samples(sc: Scenario) -> None:
    kw = sc.site.gpus.power_kw_per_gpu
    by_job: dict[str, list[GpuTelemetry]] = {}
    for g in sc.gpu_telemetry:
        by_job.setdefault(g.job_id, []).append(g)
    prefixes = {"inference": "inf-", "training": "trn-", "batch": "bat-"}
    sizes = Counter()
    for job_id, samples in by_job.items():
        first = samples[0]
        assert job_id.startswith(prefixes[first.gpu_class]) and len(job_id) >= 8
        assert first.gpus in (1, 2, 4, 8, 16, 32, 64)
        assert all(s.gpus == first.gpus and s.gpu_class == first.gpu_class for s in samples)
        assert [s.state for s in samples[:-1]] == ["running"] * (len(samples) - 1)
        assert samples[-1].state in ("running", "completed")
        for a, b in zip(samples, samples[1:]):
            assert timedelta(0) < b.observed_at - a.observed_at <= timedelta(hours=1)
        for s in samples:
            if s.state == "running":
                assert 0.3 <= s.utilization <= 1.0
                assert abs(s.power_kw - s.gpus * kw * (0.55 + 0.45 * s.utilization)) <= 1e-3
            else:
                assert s.power_kw == 0
        sizes[first.gpus] += 1
    assert sizes.most_common(1)[0][0] == 8
    running_at_start = [j for j, s in by_job.items() if s[0].observed_at == sc.start]
    assert 900 <= len(running_at_start) <= 1000  # jobs=1000 lanes, a few in a redeploy gap
    # inference is long-lived, batch is short
    def span(samples):  # noqa: E306
        return samples[-1].observed_at - samples[0].observed_at
    done = {j: s for j, s in by_job.items() if s[-1].state == "completed" and s[0].observed_at > sc.start}
    assert all(span(s) >= timedelta(days=1) for j, s in done.items() if j.startswith("inf-"))
    assert all(timedelta(minutes=30) <= span(s) <= timedelta(hours=6) for j, s in done.items() if j.startswith("bat-"))


# -- the merged stream ---------------------------------------------------------------------


def test_events_in_order_is_sorted_complete_and_tie_broken_by_feed(sc: Scenario, ordered) -> None:
    times = [r.event_time() for _, r in ordered]
    assert times == sorted(times)
    expected = Counter()
    for name, recs in sc.feeds().items():
        for r in recs:
            expected[(name, id(r))] += 1
    got = Counter((name, id(r)) for name, r in ordered)
    assert got == expected and max(got.values()) == 1
    rank = {n: i for i, n in enumerate(FEED_ORDER)}
    assert FEED_ORDER == ("grid_prices", "hashprice", "dr_events", "gpu_telemetry")
    for (n1, r1), (n2, r2) in zip(ordered, ordered[1:]):
        if r1.event_time() == r2.event_time():
            assert rank[n1] <= rank[n2]
    # the first events are the ones published before the week: yesterday's hashprice, day 0's DA
    assert ordered[0][1] == sc.hashprice[0]
    assert {type(r) for _, r in ordered[:25]} == {Hashprice, GridPrice}


# -- parameters ----------------------------------------------------------------------------


def test_shorter_week_and_fewer_jobs() -> None:
    s = build_demo_scenario(seed=3, start=datetime(2024, 7, 1, tzinfo=timezone.utc), days=3, jobs=200)
    assert (len(s.prices_rt), len(s.prices_da), len(s.hashprice)) == (288, 72, 4)
    assert s.start <= s.spike[0] < s.spike[1] <= s.end
    assert len({g.job_id for g in s.gpu_telemetry if g.observed_at == s.start}) <= 200


@pytest.mark.parametrize(
    "kwargs",
    [
        {"start": datetime(2024, 8, 5, 6, tzinfo=timezone.utc)},
        {"start": datetime(2024, 8, 5)},
        {"days": 2},
        {"jobs": -1},
    ],
)
def test_bad_parameters_are_config_errors(kwargs) -> None:
    with pytest.raises(ConfigError):
        build_demo_scenario(**kwargs)
