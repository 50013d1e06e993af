"""The online forecaster: the spike probability is calibrated, the model learns only from the
past, and it is a deterministic function of the events it has seen."""

from __future__ import annotations

import random
from datetime import timedelta, timezone

import pytest

from dispatch.forecast import N_FEATURES, OnlineForecaster, SpikeModel
from dispatch.policies import RollingHorizonPolicy
from dispatch.state import SiteState
from schemas.feeds import GridPrice
from tests.dispatch.test_policies import SITE, T0, Q, at, run

UTC = timezone.utc


def rt(i: int, price: float) -> GridPrice:
    s = T0 + Q * i
    return GridPrice(site_id="sample", settlement_point="HB_HUBAVG", market="RT", interval_start=s,
                     interval_minutes=15, price_usd_mwh=price, published_at=s + Q)


def spiky_series(days: int, seed: int = 5) -> tuple[list[float], list[float]]:
    """Prices with spikes (> $150) only in the 18:00-19:00 CPT hour, with probability 30% per
    interval; returns (prices, the true spike probability of each interval)."""
    rng = random.Random(seed)
    prices, probs = [], []
    for i in range(days * 96):
        t = T0 + Q * i
        local_hour = (t - timedelta(hours=5)).hour  # July: CDT = UTC-5
        p_spike = 0.3 if local_hour == 18 else 0.0
        probs.append(p_spike)
        prices.append(rng.uniform(400, 900) if rng.random() < p_spike else rng.uniform(15, 45))
    return prices, probs


def feed(prices: list[float], fc: OnlineForecaster) -> tuple[list[float], list[float | None]]:
    """Run the forecaster causally: at interval i it has seen prices 0..i-1 only."""
    st = SiteState(site_id="sample")
    es, qs = [], []
    for i, p in enumerate(prices):
        if i > 0:
            e, _ = fc.expected(st, T0 + Q * i)
            es.append(e)
            qs.append(fc.last_q)
        st.fold(rt(i, p))
    return es, qs


def test_spike_probability_is_calibrated():
    prices, probs = spiky_series(60)
    fc = OnlineForecaster()
    es, qs = feed(prices, fc)
    # second half (after learning): mean predicted probability vs the truth, by regime
    half = len(qs) // 2
    hot = [(q, probs[i + 1]) for i, q in enumerate(qs) if i >= half and q is not None and probs[i + 1] > 0]
    cold = [(q, probs[i + 1]) for i, q in enumerate(qs) if i >= half and q is not None and probs[i + 1] == 0]
    mean_hot = sum(q for q, _ in hot) / len(hot)
    mean_cold = sum(q for q, _ in cold) / len(cold)
    assert 0.15 < mean_hot < 0.45, mean_hot          # true 0.30 (the model only sees after-spike-free states)
    assert mean_cold < 0.01, mean_cold                 # true 0
    # the expected price carries the tail: the spiky hour is forecast well above the body
    e_hot = [es[i] for i in range(half, len(es)) if probs[i + 1] > 0 and qs[i] is not None]
    e_cold = [es[i] for i in range(half, len(es)) if probs[i + 1] == 0 and qs[i] is not None]
    assert sum(e_hot) / len(e_hot) > sum(e_cold) / len(e_cold) + 80


def test_spike_model_is_a_proper_logistic_learner():
    m = SpikeModel(lr=0.3)
    feats_a, feats_b = [0, 5], [0, 9]
    rng = random.Random(1)
    for _ in range(4000):
        fa = m.prob(feats_a)
        m.update(feats_a, fa, 1.0 if rng.random() < 0.5 else 0.0)
        fb = m.prob(feats_b)
        m.update(feats_b, fb, 1.0 if rng.random() < 0.05 else 0.0)
    assert m.prob(feats_a) == pytest.approx(0.5, abs=0.12)
    assert m.prob(feats_b) == pytest.approx(0.05, abs=0.04)
    assert len(m.w) == N_FEATURES


def test_forecast_learns_only_from_the_past():
    prices, _ = spiky_series(10, seed=9)
    base, _ = feed(prices, OnlineForecaster())
    for k in (100, 500, 900):
        bumped = prices[:k] + [p * 3 + 700 for p in prices[k:]]
        alt, _ = feed(bumped, OnlineForecaster())
        # forecast j is made for interval j+1 with prices 0..j: unchanged while j < k
        assert alt[:k] == base[:k]
        assert alt[k:] != base[k:]


def test_engine_decisions_do_not_depend_on_future_prices():
    prices, _ = spiky_series(6, seed=2)
    ref = run(RollingHorizonPolicy(), prices)
    k = 300
    alt = run(RollingHorizonPolicy(), prices[:k] + [p + 2000 for p in prices[k:]])
    for i in range(1, k + 1):
        assert at(ref, i).model_dump() == at(alt, i).model_dump()


def test_forecaster_is_deterministic():
    prices, _ = spiky_series(8, seed=4)
    a, qa = feed(prices, OnlineForecaster())
    b, qb = feed(prices, OnlineForecaster())
    assert a == b and qa == qb
    r1, r2 = run(RollingHorizonPolicy(), prices), run(RollingHorizonPolicy(), prices)
    assert [x.model_dump() for x in r1.values()] == [x.model_dump() for x in r2.values()]


def test_without_the_spike_model_the_body_is_the_old_hierarchy():
    prices, _ = spiky_series(5, seed=3)
    es, qs = feed(prices, OnlineForecaster(spike_model=False))
    assert all(q is None for q in qs)
    # with nothing learned yet the first forecast is the last price (myopic)
    assert es[0] == prices[0]


def da(hour: int, price: float) -> GridPrice:
    s = T0 + timedelta(hours=hour)
    return GridPrice(site_id="sample", settlement_point="HB_HUBAVG", market="DA", interval_start=s,
                     interval_minutes=60, price_usd_mwh=price, published_at=T0 - timedelta(days=1))


def decaying_spikes(days: int, half_life_intervals: float = 1.0, da_price: float = 30.0) -> list[float]:
    """A flat day at the DA price with one spike a day at 18:00 UTC: $1,000, then the gap to
    DA shrinks by 2^(-1/half_life) per interval."""
    r = 0.5 ** (1.0 / half_life_intervals)
    out = []
    for i in range(days * 96):
        j = i % 96 - 72
        out.append(da_price + 970.0 * r ** j if j >= 0 else da_price)
    return out


def feed_with_da(prices: list[float], fc: OnlineForecaster, da_price: float = 30.0) -> SiteState:
    st = SiteState(site_id="sample")
    for h in range(len(prices) // 4 + 24):
        st.fold(da(h, da_price))
    for i, p in enumerate(prices):
        if i > 0:
            fc.expected(st, T0 + Q * i)
        st.fold(rt(i, p))
    return st


def test_in_spike_decay_is_learned_from_past_spikes():
    fc = OnlineForecaster()
    assert [fc.decay(k) for k in (1, 2)] == pytest.approx([0.8, 0.64])  # the prior before any spike
    feed_with_da(decaying_spikes(30), fc)
    # each interval keeps half the gap: k intervals after t the share of the gap seen at t-1 is
    # 0.5^(k+1); 4 spike states a day x 30 days = 120, shrunk towards 0.8^k with weight 20
    for k in (1, 2, 3):
        expect = (120 * 0.5 ** (k + 1) + 20 * 0.8 ** k) / 140
        assert fc.decay(k) == pytest.approx(expect, abs=0.01), k
    # slower spikes: a slower learned decay (it follows the data, not a constant)
    slow = OnlineForecaster()
    feed_with_da(decaying_spikes(30, half_life_intervals=4.0), slow)
    assert slow.decay(1) > fc.decay(1) + 0.3


def test_horizon_path_in_a_spike_follows_the_learned_decay():
    prices = decaying_spikes(20)
    fc = OnlineForecaster()
    st = feed_with_da(prices[: 19 * 96 + 73], fc)  # the last price known: the $1,000 spike
    t = T0 + Q * (19 * 96 + 73)
    e, _ = fc.expected(st, t)
    path = fc.extend(SITE, st, t, e, 6)
    assert path[0] == e
    share = min(max((e - 30.0) / 970.0, 0.0), 2.0)  # what the forecast of t keeps of the gap
    for k in range(1, 6):
        assert path[k] == pytest.approx(30.0 + 970.0 * fc.decay(k, share))
    # the learned path is far below the relaxation without learning, (e - DA) x 0.8^k
    unlearned = OnlineForecaster(learn_decay=False)
    st2 = feed_with_da(prices[: 19 * 96 + 73], unlearned)
    e2, _ = unlearned.expected(st2, t)
    assert e2 == e  # the same forecast for the interval decided
    assert path[2] < unlearned.extend(SITE, st2, t, e2, 6)[2] - 100


def test_decay_learning_and_engine_with_da_do_not_peek():
    prices = decaying_spikes(6)
    k = 4 * 96 + 74  # in the middle of a spike
    bumped = prices[:k] + [p + 3000 for p in prices[k:]]

    def decays(series):
        fc, st, out = OnlineForecaster(), SiteState(site_id="sample"), []
        for h in range(len(series) // 4 + 24):
            st.fold(da(h, 30.0))
        for i, p in enumerate(series):
            if i > 0:
                fc.expected(st, T0 + Q * i)
                out.append([fc.decay(j) for j in (1, 2, 3)])
            st.fold(rt(i, p))
        return out

    ref, alt = decays(prices), decays(bumped)
    assert ref[:k] == alt[:k]          # entry j: the decision for interval j+1, prices 0..j
    assert ref[k + 1:] != alt[k + 1:]
    # the engine on RT + DA (the learned path drives the training pause DP)
    das = [da(h, 30.0) for h in range(len(prices) // 4 + 24)]
    a = run(RollingHorizonPolicy(), prices, extra=das)
    b = run(RollingHorizonPolicy(), bumped, extra=das)
    for i in range(1, k + 1):
        assert at(a, i).model_dump() == at(b, i).model_dump(), i
