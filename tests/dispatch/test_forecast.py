"""The online forecaster: the spike probability is calibrated, the model learns only from the
past, and it is a deterministic function of the events it has seen."""

from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone

import pytest

from dispatch.forecast import N_FEATURES, OnlineForecaster, SpikeModel
from dispatch.policies import RollingHorizonPolicy
from dispatch.state import SiteState
from schemas.feeds import GridPrice
from tests.dispatch.test_policies import T0, Q, at, run

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
