"""Online-learned forecast of the next real-time price (no peeking, learned only from the past).

The decision for a miner is linear in the price: running earns ``(breakeven - p) x MW x h``, so
the risk-neutral decision is to curtail when the *conditional mean* ``E[p_t | what is known at
t]`` is above the breakeven. That mean is dominated by a rare, heavy tail (ERCOT's evening-ramp
spikes), so the model splits it at a spike threshold ``C`` (default $150/MWh):

    E[p_t] = E[min(p_t, C) | x]  +  P(p_t > C | x)  x  E[p_t - C | p_t > C]      (p_{t-1} <= C)
    E[p_t] = p_{t-1} + E[p_t - p_{t-1} | x]                                      (in a spike)

- the **body** ``E[min(p_t, C) - min(p_{t-1}, C) | x]`` and the in-spike change are hierarchies of
  running means with shrinkage, each level shrunk towards its parent and the root towards 0
  (= myopic): level 1 last RT price bucket (mean reversion), 2 + hour of day (CPT), 3 + quarter
  of the hour, 4 + RT trend and DA-RT gap. ``m_i = (S_i + k m_{i-1}) / (N_i + k)``: a bucket with
  little history says what its parent says; one spike moves a bucket by at most
  ``clip / (N + k)``.
- the **spike probability** ``P(p_t > C | x)`` is an online logistic regression (AdaGrad, sparse
  one-hot features: hour, hour x quarter, last-price bucket, DA level of t and t+1 h, DA ramp,
  spike counts of the last day and week, a spike at the same time yesterday, short-term
  volatility, RT trend, DA-RT gap, weekend, hour x DA level). Calibrated by construction of the
  log loss (see ``tests/dispatch/test_forecast.py``); ``spike_size`` is the running mean excess
  over ``C`` of the spikes seen so far (shrunk towards a prior).

Every update uses the price of ``[t-d, t)`` when it becomes known at ``t`` (its published time):
the model learns only from the past, the interval's own price is never an input, and it is a
deterministic function of the events seen (replay = live, restart = rebuild from the archive).

Beyond the first interval (used by the horizon DP: training pauses, hold times), the path
relaxes from that forecast towards the day-ahead shape: ``DA_{t+k} + (E - DA_t) x 0.8^k``; in a
spike (``p_{t-1} > C``) it is ``DA_{t+k} + (p_{t-1} - DA_{t-1}) x decay_k``, with ``decay_k``
the mean share of the gap left k intervals later over the spike states seen so far, shrunk
towards the relaxation above (so with no spike seen yet the path is the same). ERCOT spikes revert fast: on 2024 it ends the year at 0.45 / 0.42 / 0.35 for
k = 1..3 (253 spike states), so a training pause no longer follows a one-interval spike
(training +$5.5k, capture 89.3% -> 89.5%).

Measured (mining value, numpy replica of this model, full year / second half of 2024):
myopic 89.6% / 89.9%, body hierarchy alone 89.9% / 90.4%, body + spike tail 89.9% / 90.7%.
Perfect knowledge of every spike onset (> $150) alone would give 94.1%: the spike model is
calibrated but its resolution is low (P rarely exceeds 30%), see the backtest report.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections import deque
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

from dispatch.state import SiteState
from schemas.site import SiteConfig

CPT = ZoneInfo("America/Chicago")

P1_EDGES = (0.0, 15.0, 25.0, 35.0, 45.0, 55.0, 65.0, 75.0, 85.0, 100.0, 120.0, 150.0, 200.0, 300.0, 500.0, 1000.0)
TREND_EDGES = (-20.0, -5.0, 5.0, 20.0)
DA_GAP_EDGES = (-20.0, -5.0, 5.0, 20.0)
DA_EDGES = (15.0, 25.0, 35.0, 50.0, 75.0, 100.0, 150.0, 250.0, 500.0)
DA_RAMP_EDGES = (-50.0, -10.0, 10.0, 50.0)
DA_COARSE = (30.0, 60.0, 100.0)
VOL_EDGES = (5.0, 10.0, 20.0, 50.0, 100.0, 300.0)
DAY = timedelta(days=1)
WEEK = timedelta(days=7)
HOUR = timedelta(hours=1)
#: intervals ahead for which the in-spike decay is learned (the policy's 4 h horizon)
DECAY_HORIZON = 16

#: one-hot feature blocks of the spike model: (name, size); a feature is an index into one
#: flat weight vector (block offset + value)
FEATURE_BLOCKS = (
    ("bias", 1), ("hour", 24), ("hour_quarter", 96), ("last_rt", len(P1_EDGES) + 1),
    ("da", len(DA_EDGES) + 2), ("da_next_hour", len(DA_EDGES) + 2), ("da_ramp", len(DA_RAMP_EDGES) + 1),
    ("spikes_24h", 5), ("spikes_7d", 9), ("volatility", len(VOL_EDGES) + 1), ("rt_trend", len(TREND_EDGES) + 1),
    ("da_rt_gap", len(DA_GAP_EDGES) + 1), ("spike_yesterday", 2), ("hour_da", 24 * (len(DA_COARSE) + 2)),
    ("weekend", 2),
)
OFFSETS: dict[str, int] = {}
_o = 0
for _name, _size in FEATURE_BLOCKS:
    OFFSETS[_name] = _o
    _o += _size
N_FEATURES = _o
(_HOUR, _HQ, _PK, _DA, _DA1, _RAMP, _R24, _R7, _VOL, _TR, _DG, _YDAY, _HDA, _WD) = (
    OFFSETS[n] for n, _ in FEATURE_BLOCKS[1:])


class SpikeModel:
    """Online logistic regression of P(p_t > C | x) on sparse one-hot features (AdaGrad).

    A feature is an index into flat weight/accumulator lists (see ``FEATURE_BLOCKS``): the
    model is a deterministic function of the sequence of updates (no randomness; sums run
    over the feature list in its fixed order).
    """

    def __init__(self, lr: float = 0.2, l2: float = 1e-4, prior_logit: float = -5.0,
                 n_features: int = N_FEATURES) -> None:
        self.lr = lr
        self.l2 = l2
        self.prior = prior_logit
        self.w = [0.0] * n_features    # weights
        self.g2 = [0.0] * n_features   # AdaGrad: sums of squared gradients

    def prob(self, feats: list[int]) -> float:
        w = self.w
        z = self.prior
        for i in feats:
            z += w[i]
        if z < -30.0:
            z = -30.0
        elif z > 30.0:
            z = 30.0
        return 1.0 / (1.0 + math.exp(-z))

    def update(self, feats: list[int], q: float, y: float) -> None:
        """One AdaGrad step of the log loss (q = the probability given for ``feats``)."""
        gr = q - y
        g = gr * gr
        step = self.lr * gr
        keep = 1.0 - self.l2
        w, g2 = self.w, self.g2
        sqrt = math.sqrt
        for i in feats:
            s = g2[i] + g
            g2[i] = s
            w[i] = w[i] * keep - step / sqrt(s + 1e-2)


class OnlineForecaster:
    """Body hierarchy + calibrated spike probability x expected size (see module doc)."""

    def __init__(self, k: float = 20.0, clip: float = 3000.0, da_decay: float = 0.8, tz: ZoneInfo = CPT,
                 spike_usd_mwh: float = 150.0, spike_model: bool = True, learn_decay: bool = True) -> None:
        self.k = k
        self.clip = clip
        self.da_decay = da_decay
        self.tz = tz
        self.c = spike_usd_mwh
        self.use_spike = spike_model
        # bucket -> [sum of raw changes (in-spike regime), sum of clipped changes
        #            min(p, C) - min(p1, C) (body), count]
        self.b: dict[tuple, list] = {}
        self.spike = SpikeModel()
        self.size_sum = 0.0
        self.size_n = 0
        self.size_prior = (3.0, 250.0)       # (weight, $/MWh excess over C)
        self.spikes: deque[datetime] = deque()  # starts of intervals above C, last 7 days
        # (t, keys, p1, feats or None, q) of the last forecast, learned when its price is known
        self._pending: tuple | None = None
        self._offsets: dict[date, timedelta] = {}
        self.updates = 0
        self.last_q: float | None = None
        # in-spike decay of the horizon path, learned online: decay_k = mean of
        # (p_{t+k} - DA_{t+k}) / (p_{t-1} - DA_{t-1}) over past spike states (p_{t-1} > C),
        # shrunk towards the prior da_decay^k with weight decay_prior_n
        self.learn_decay = learn_decay
        self.decay_prior_n = 20.0
        self._decay_sum = [0.0] * DECAY_HORIZON
        self._decay_n = [0] * DECAY_HORIZON
        # spike states still learning: (t, p_{t-1} - DA_{t-1}, interval length)
        self._spike_origins: deque[tuple[datetime, float, timedelta]] = deque()

    def _local(self, t: datetime) -> tuple[int, int, int]:
        d = t.date()
        off = self._offsets.get(d)
        if off is None:
            off = t.astimezone(self.tz).utcoffset() or timedelta(0)
            # an offset change inside the UTC day (DST) is rare: cache only stable days
            if (t.replace(hour=0, minute=0).astimezone(self.tz).utcoffset() == off
                    and (t.replace(hour=23, minute=59)).astimezone(self.tz).utcoffset() == off):
                self._offsets[d] = off
        lt = t + off
        return lt.hour, lt.minute // 15, lt.weekday()

    def learn(self, state: SiteState) -> None:
        """Fold the outcome of the previous forecast once its price is known."""
        pend = self._pending
        if pend is None:
            return
        t_prev, cells, p1, row, q = pend
        p = state.rt_prices.get(t_prev)
        if p is None:
            return
        c = self.c
        r = p - p1
        cl = self.clip
        r = cl if r > cl else -cl if r < -cl else r
        rc = (p if p < c else c) - (p1 if p1 < c else c)
        for cell in cells:
            cell[0] += r
            cell[1] += rc
            cell[2] += 1
        if p > c:
            self.spikes.append(t_prev)
            if row is not None:
                self.size_sum += min(p - c, 5000.0)
                self.size_n += 1
        if row is not None:
            self.spike.update(row, q, 1.0 if p > c else 0.0)
        if self._spike_origins:
            self._learn_decay(state, t_prev, p)
        self._pending = None
        self.updates += 1

    def _learn_decay(self, state: SiteState, s: datetime, p: float) -> None:
        """Fold the price of interval ``s`` into the decay of every spike state before it."""
        da = state.da_price_at(s)
        origins = self._spike_origins
        if da is None:
            return
        for t0, g0, step in origins:
            k = int((s - t0) / step)
            if 1 <= k < DECAY_HORIZON:
                # a ratio, clipped: one price at the cap after a small spike moves it by <= 2/(N+20)
                y = (p - da) / g0
                self._decay_sum[k] += -1.0 if y < -1.0 else 2.0 if y > 2.0 else y
                self._decay_n[k] += 1
        while origins and s - origins[0][0] >= origins[0][2] * (DECAY_HORIZON - 1):
            origins.popleft()

    def decay(self, k: int, share_now: float = 1.0) -> float:
        """Expected share of the in-spike gap to DA left k intervals ahead. The prior is the
        relaxation of the forecast without learning: ``share_now`` (the share the forecast of
        the interval decided keeps) x da_decay^k."""
        prior = share_now * self.da_decay ** k
        if k >= DECAY_HORIZON:
            return prior
        w = self.decay_prior_n
        return (self._decay_sum[k] + w * prior) / (self._decay_n[k] + w)

    def spike_size(self) -> float:
        w, m = self.size_prior
        return (self.size_sum + w * m) / (self.size_n + w)

    def _features(self, state: SiteState, t: datetime, order: list, p1: float, p2: float, da: float | None,
                  hour: int, quarter: int, wd: int, b: int, tr: int, dg: int) -> list[int]:
        c = self.c
        sp = self.spikes
        while sp and sp[0] <= t - WEEK:
            sp.popleft()
        day_ago = t - DAY
        r24 = 0
        for x in reversed(sp):
            if x < day_ago:
                break
            r24 += 1
        r7 = len(sp)
        rt = state.rt_prices
        tail = list(map(rt.__getitem__, order[-8:]))
        nt = len(tail)
        s1 = 0.0
        s2 = 0.0
        for x in tail:
            s1 += x
            s2 += x * x
        mu = s1 / nt
        v2 = s2 / nt - mu * mu
        vol = math.sqrt(v2) if v2 > 0.0 else 0.0
        py = rt.get(day_ago)
        da1 = state.da_price_at(t + HOUR)
        dab = 0 if da is None else bisect_right(DA_EDGES, da) + 1
        da1b = 0 if da1 is None else bisect_right(DA_EDGES, da1) + 1
        ramp = 2 if da is None or da1 is None else bisect_right(DA_RAMP_EDGES, da1 - da)
        return [0, _HOUR + hour, _HQ + 4 * hour + quarter, _PK + b, _DA + dab, _DA1 + da1b, _RAMP + ramp,
                _R24 + (r24 if r24 < 4 else 4), _R7 + (r7 if r7 < 8 else 8), _VOL + bisect_right(VOL_EDGES, vol),
                _TR + tr, _DG + dg, _YDAY + (1 if py is not None and py > c else 0),
                _HDA + 5 * hour + (0 if da is None else bisect_right(DA_COARSE, da) + 1), _WD + (1 if wd >= 5 else 0)]

    def expected(self, state: SiteState, t: datetime) -> tuple[float, float | None]:
        """(E[p_t], DA price of t) from what ``state`` knows at t; records the forecast."""
        self.learn(state)
        order = state.rt_order
        rt = state.rt_prices
        p1 = rt[order[-1]]
        p2 = rt[order[-2]] if len(order) > 1 else p1
        da = state.da_price_at(t)
        hour, quarter, wd = self._local(t)
        b = bisect_right(P1_EDGES, p1)
        tr = bisect_right(TREND_EDGES, p1 - p2)
        dg = 2 if da is None else bisect_right(DA_GAP_EDGES, da - p1)
        keys = ((1, b), (2, b, hour), (3, b, hour, quarter), (4, b, hour, quarter, tr, dg))
        k = self.k
        c = self.c
        bk = self.b
        cells = []
        for key in keys:
            cell = bk.get(key)
            if cell is None:
                cell = bk[key] = [0.0, 0.0, 0]
            cells.append(cell)
        row = None
        q = None
        m = 0.0
        if self.use_spike and p1 <= c:
            for cell in cells:
                m = (cell[1] + k * m) / (cell[2] + k)
            feats = self._features(state, t, order, p1, p2, da, hour, quarter, wd, b, tr, dg)
            q = self.spike.prob(feats)
            row = feats
            e = p1 + m + q * self.spike_size()
        else:
            for cell in cells:
                m = (cell[0] + k * m) / (cell[2] + k)
            e = p1 + m
        self.last_q = q
        self._pending = (t, cells, p1, row, q)
        if self.learn_decay and p1 > c:
            da1 = state.da_price_at(order[-1])
            if da1 is not None and p1 > da1:
                self._spike_origins.append((t, p1 - da1, t - order[-1]))
        return e, da

    def path(self, site: SiteConfig, state: SiteState, t: datetime, horizon: int) -> list[float]:
        e, da = self.expected(state, t)
        if horizon <= 1:
            return [e]
        return self.extend(site, state, t, e, horizon)

    def extend(self, site: SiteConfig, state: SiteState, t: datetime, e: float, horizon: int) -> list[float]:
        """The horizon beyond the first interval (does not learn or record anything)."""
        da = state.da_price_at(t)
        step = timedelta(minutes=site.interval_minutes)
        out = [e]
        gap = e - da if da is not None else 0.0
        w = 1.0
        p1 = state.rt_prices[state.rt_order[-1]]
        da1 = state.da_price_at(t - step)
        in_spike = self.learn_decay and p1 > self.c and da1 is not None and p1 > da1
        if in_spike:
            g1 = p1 - da1
            share = min(max(gap / g1, 0.0), 2.0)
        for j in range(1, horizon):
            w *= self.da_decay
            daj = state.da_price_at(t + step * j)
            if daj is None:
                out.append(out[-1])
            elif in_spike:
                out.append(daj + g1 * self.decay(j, share))
            else:
                out.append(daj + gap * w)
        return out
