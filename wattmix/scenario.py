"""The built-in demo scenario: one seeded, realistic week of the four input feeds for a site.

``build_demo_scenario()`` returns every record of the sample site (``HB_HUBAVG``, 15-min
intervals) for the week starting Monday 2024-08-05 00:00 UTC, fully determined by ``seed``
(a :class:`numpy.random.Generator` per feed, spawned from one ``SeedSequence``). Every record
is a constructed (validated) pydantic model; every timestamp is UTC and tz-aware.

Conventions (the ones a consumer or a test can rely on)
-------------------------------------------------------
"Central" below is US Central time (CDT = UTC-5 in summer, CST = UTC-6 otherwise, US DST rule).
The week is ``[start, start + days)``; ``start`` must be a UTC midnight.

* **RT prices** (``market="RT"``): one per 15-min interval of the week (672 for 7 days),
  ``published_at`` = the interval's end (an RT price is never known before its interval ends).
  Shape (Central time): overnight ~$18-25/MWh, a small morning shoulder, a solar-flattened
  midday, an afternoon ramp and an evening peak centred ~18:45 Central (~23:45 UTC in summer,
  so 17:00-21:00 Central = 22:00-02:00 UTC) whose height varies by day between ~$60 and
  ~$180/MWh (a shuffled spread, so every week has hours between the S19j Pro breakeven
  (~$72) and the S21 breakeven (~$121)), AR(1) noise and rare single-interval blips.
  On (up to) two days a few midday intervals (12:00-14:00 Central) clear negative, -$5..-$1.
* **The scarcity spike** (``Scenario.spike = (first interval start, last interval end)``):
  ONE window of 14-16 intervals (3.5-4 h) starting 17:00-18:00 Central on one of the days
  1..days-2: 3 ramp-in intervals (~$250-450, ~$900-1,400, ~$2,050-2,800), a plateau of 8-10
  intervals at $3,000-$4,950 (one interval at $4,800-$4,950, just under ERCOT's $5,000 cap),
  3 ramp-out intervals (~$2,050-2,600, ~$700-1,100, ~$220-380). So at least 10 consecutive
  intervals are above $2,000, and the maximum is below $5,000.
* **DA prices** (``market="DA"``, ``interval_minutes=60``): 24 hourly prices per UTC day of the
  week (168 for 7 days). All 24 prices of UTC day ``D`` are published together at
  ``D-1 17:00 UTC`` (12:00 Central in summer, the day-ahead market's results), so the day-ahead
  for day 0 is published 7 hours before the week starts. A DA price is the hourly mean of the RT
  *fundamental* (RT without noise, blips, negative dips and spike) times a ~7% lognormal error;
  in hours that overlap the spike the day-ahead under-predicts it: it carries only 9-16% of the
  excess, capped at $800 (~$150-300 for the ramp hours, ~$450-800 for the plateau hours).
* **Hashprice**: one per UTC day from the day *before* the week to the last day (8 records for
  7 days), ``as_of`` = ``published_at`` = the day's 00:00 UTC: the value is that day's index at
  00:00 UTC, so a decision at any time of day ``D`` (including the first interval of the week,
  whose no-peeking horizon is ``start`` itself) sees day ``D``'s value, and day ``-1``'s is
  known before the week. ~$55/PH/day, a random walk with daily moves capped at +-2%;
  ``difficulty`` 86.87 T (Aug 2024), ``fees_btc_per_block`` 0.03-0.12 and ``btc_usd`` derived so
  that ``hashprice = 144 x (3.125 + fees) x btc_usd x 1e15 / (difficulty x 2^32 / 600)``.
* **DR event** (from the site's first DR program, ERS-30 for the sample site): one
  ``firm_service_level`` event at ``obligation_mw`` = the program's firm level (20 MW),
  penalty / capacity payment from the program ($1,000/MWh, $8/MW-h). Revision 0
  (``status="scheduled"``) is issued at ``notice_at`` = start - notice (30 min); the event runs
  2 h starting 16:00, 16:30 or 17:00 Central on a day other than the spike's, at the afternoon
  ramp of a moderate day: RT during the event is kept within $55-$115/MWh (high, not scarce,
  and below the S21 breakeven, so curtailing the S21 fleet is the obligation's doing, not the
  price's). Revision 1 (``status="active"``, same ``event_id`` and ``notice_at``) is issued
  1 h after the start and extends the end by 30 min. **The highest revision of an
  ``event_id`` replaces the earlier ones** (DemandResponseEvent's contract): from revision 1's
  ``issued_at`` the event ends at start + 2 h 30 min.
* **GPU telemetry**: ``jobs`` is the number of jobs running at any moment (~1,000 on 8,192
  GPUs, mostly 8-GPU jobs); over the week job turnover gives many more distinct job ids
  (~12,500 for the default week, ~8,300 of them batch). The GPUs of each class
  (``count x share``: 4,096 inference, 2,867.2 training, 1,228.8 batch) are split into ``round(jobs x share)`` *lanes* (a reservation of
  1-64 GPUs, a power of 2, 8 the most common) whose sizes add up to ~98% of the class capacity
  and never above it; each lane runs a sequence of jobs of its size, so the running GPUs of a
  class never exceed its capacity. Inference jobs run 1-14 days (median 4) with a <=10 min
  redeploy gap, training 2 h-5 days (median 18 h) with <=30 min queue gaps, batch 0.5-6 h
  (median 2.5 h) with 0-30 min gaps; each lane's first job is already running at the week start.
  Job ids are ``inf-0001``, ``trn-0001``, ``bat-0001``... numbered by start time per class.
  A job reports ``state="running"`` when it starts (jobs already running report at the week
  start), then every hour after its own start, and ``state="completed"`` (power 0,
  utilization 0, ``gpus`` = its size) when it ends inside the week. ``power_kw = gpus x
  power_kw_per_gpu x (0.55 + 0.45 x utilization)``; utilization (0.3-1.0) follows a daily cycle
  for inference, stays high with occasional dips for training, varies per job for batch.
  For the default week: ~183k telemetry messages (fills: inference ~98%, training ~97%,
  batch ~90% of the class capacity on average).
  ``gpu_telemetry`` is ordered by ``(observed_at, completed before running, job_id)``, so a
  lane's completed sample always precedes its next job's first sample at the same instant.

``Scenario.events_in_order()`` merges all feeds by event time; ties are broken by feed
(grid_prices, hashprice, dr_events, gpu_telemetry) and then by order in the feed's list (for
grid_prices: the RT list, then the DA list). Deterministic: the same seed gives the same bytes.

Default week (seed 7): 672 RT + 168 DA prices, 8 hashprices, 2 DR records (1 event),
183,125 GPU telemetry samples from 12,528 jobs; building it takes ~2 s (most of it pydantic
validation of the telemetry), ``events_in_order()`` ~0.2 s.
"""

from __future__ import annotations

import gc
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from operator import itemgetter

import numpy as np

from schemas.base import WireModel
from schemas.feeds import DemandResponseEvent, GpuTelemetry, GridPrice, Hashprice
from schemas.site import DrProgram, SiteConfig, load_sample_site
from schemas.topics import DR_EVENTS, GPU_TELEMETRY, HASHPRICE, PRICES
from wattmix.errors import ConfigError

__all__ = ["Scenario", "build_demo_scenario", "DEFAULT_START", "FEED_ORDER"]

DEFAULT_START = datetime(2024, 8, 5, tzinfo=timezone.utc)

#: Tie-break order of feeds in :meth:`Scenario.events_in_order`.
FEED_ORDER: tuple[str, ...] = (PRICES.name, HASHPRICE.name, DR_EVENTS.name, GPU_TELEMETRY.name)

_RT_MINUTES = 15
_DA_PUBLISH_HOUR_UTC = 17          # DA prices of day D are published at D-1 17:00 UTC
_SPIKE_CAP = 4950.0               # the spike plateau stays just under ERCOT's $5,000 cap
_DR_PRICE_BAND = (55.0, 115.0)    # RT during the DR event: high, not scarce, below S21 breakeven
_DIFFICULTY = 86.87e12            # Bitcoin difficulty, Aug 2024
_BLOCK_SUBSIDY_BTC = 3.125
_SIZES = np.array([1, 2, 4, 8, 16, 32, 64])


@dataclass(frozen=True)
class Scenario:
    """One seeded week of feed records for a site (see the module docstring for conventions)."""

    site: SiteConfig
    start: datetime
    end: datetime
    prices_rt: list[GridPrice]
    prices_da: list[GridPrice]
    hashprice: list[Hashprice]
    dr_events: list[DemandResponseEvent]
    gpu_telemetry: list[GpuTelemetry]
    spike: tuple[datetime, datetime]

    def feeds(self) -> dict[str, list[WireModel]]:
        """Records per feed name, in generation order (the tie-break order)."""
        return {
            PRICES.name: [*self.prices_rt, *self.prices_da],
            HASHPRICE.name: list(self.hashprice),
            DR_EVENTS.name: list(self.dr_events),
            GPU_TELEMETRY.name: list(self.gpu_telemetry),
        }

    def counts(self) -> dict[str, int]:
        return {
            "rt_prices": len(self.prices_rt),
            "da_prices": len(self.prices_da),
            "hashprice": len(self.hashprice),
            "dr_events": len(self.dr_events),
            "gpu_telemetry": len(self.gpu_telemetry),
            "gpu_jobs": len({g.job_id for g in self.gpu_telemetry}),
        }

    def events_in_order(self) -> list[tuple[str, WireModel]]:
        """Every record once, as ``(feed name, record)``, sorted by event time; ties by
        :data:`FEED_ORDER`, then by position in the feed's list. Deterministic."""
        with _gc_paused():  # ~180k small tuples: cyclic GC passes would triple the time
            return self._events_in_order()

    def _events_in_order(self) -> list[tuple[str, WireModel]]:
        keyed: list[tuple[float, int, int, str, WireModel]] = []
        for rank, (name, records) in enumerate(self.feeds().items()):
            keyed.extend(
                (r.event_time().timestamp(), rank, i, name, r)  # type: ignore[attr-defined]
                for i, r in enumerate(records)
            )
        keyed.sort(key=itemgetter(0, 1, 2))
        return [(k[3], k[4]) for k in keyed]

    def summary(self) -> str:
        """A few lines for the demo: what is in the week and when the notable things happen."""
        c = self.counts()
        peak = max(self.prices_rt, key=lambda p: p.price_usd_mwh)
        lines = [
            f"site {self.site.site_id} @ {self.site.settlement_point}: "
            f"{self.start:%Y-%m-%d %H:%M} -> {self.end:%Y-%m-%d %H:%M} UTC",
            f"  {c['rt_prices']} RT + {c['da_prices']} DA prices, {c['hashprice']} hashprices, "
            f"{c['dr_events']} DR records, {c['gpu_telemetry']:,} GPU samples from {c['gpu_jobs']:,} jobs",
            f"  scarcity spike {self.spike[0]:%a %m-%d %H:%M} -> {self.spike[1]:%a %H:%M} UTC, "
            f"max ${peak.price_usd_mwh:,.2f}/MWh at {peak.interval_start:%H:%M}",
        ]
        for e in self.dr_events:
            lines.append(
                f"  DR {e.event_id} rev {e.revision} ({e.status}): notice {e.notice_at:%a %H:%M}, "
                f"{e.start:%H:%M}-{e.end:%H:%M} UTC, load <= {e.obligation_mw:g} MW "
                f"(issued {e.issued_at:%H:%M})"
            )
        return "\n".join(lines)


@contextmanager
def _gc_paused() -> Iterator[None]:
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


# -- time helpers ----------------------------------------------------------------------


def _nth_sunday(year: int, month: int, n: int) -> date:
    d = date(year, month, 1)
    first = d + timedelta(days=(6 - d.weekday()) % 7)
    return first + timedelta(weeks=n - 1)


def _central_offset(t: datetime) -> timedelta:
    """US Central UTC offset at UTC instant ``t`` (DST: 2nd Sunday of March 08:00 UTC to
    1st Sunday of November 07:00 UTC). Self-contained, so it does not depend on tzdata."""
    y = t.year
    dst_start = datetime.combine(_nth_sunday(y, 3, 2), datetime.min.time(), timezone.utc) + timedelta(hours=8)
    dst_end = datetime.combine(_nth_sunday(y, 11, 1), datetime.min.time(), timezone.utc) + timedelta(hours=7)
    return timedelta(hours=-5) if dst_start <= t < dst_end else timedelta(hours=-6)


def _central_to_utc(day: date, hour: float) -> datetime:
    naive = datetime.combine(day, datetime.min.time(), timezone.utc) + timedelta(hours=hour)
    return naive - _central_offset(naive + timedelta(hours=6))


def _gauss(x: np.ndarray, mu: float, sigma: float) -> np.ndarray:
    return np.exp(-0.5 * ((x - mu) / sigma) ** 2)


# -- prices ----------------------------------------------------------------------------


@dataclass
class _Prices:
    rt: np.ndarray            # RT price per 15-min interval
    fundamental: np.ndarray   # RT without noise, blips, dips and spike (what DA forecasts)
    spike_idx: tuple[int, int]


def _rt_prices(rng: np.random.Generator, starts: list[datetime], spike_day: int, dr_window: tuple[int, int],
               dr_day_local: date) -> _Prices:
    n = len(starts)
    local = [s + _central_offset(s) for s in starts]
    local_days = sorted({lt.date() for lt in local})
    hour = np.array([lt.hour + lt.minute / 60 + _RT_MINUTES / 120 for lt in local])
    day_of = np.array([local_days.index(lt.date()) for lt in local])

    spike_local_day = starts[spike_day * 96].date()  # evening of UTC day d is Central day d
    nd = len(local_days)
    night = rng.uniform(18.0, 23.0, nd)
    morning = rng.uniform(3.0, 7.0, nd)
    template = np.linspace(62.0, 178.0, nd)
    peak = rng.permutation(template) * rng.uniform(0.97, 1.03, nd)
    for k, d in enumerate(local_days):
        if d == dr_day_local:
            peak[k] = rng.uniform(100.0, 112.0)
        elif d == spike_local_day:
            peak[k] = rng.uniform(140.0, 170.0)
    afternoon = rng.uniform(6.0, 12.0, nd)
    solar = rng.uniform(2.0, 6.0, nd)

    nt, pk, mo, af, so = night[day_of], peak[day_of], morning[day_of], afternoon[day_of], solar[day_of]
    ramp = 1.0 / (1.0 + np.exp(-(hour - 14.0))) * (1.0 - 1.0 / (1.0 + np.exp(-(hour - 22.0) / 0.8)))
    fundamental = (
        nt
        + mo * _gauss(hour, 7.5, 1.2)
        - so * _gauss(hour, 12.5, 1.5)
        + af * ramp
        + np.maximum(pk - nt - af, 5.0) * _gauss(hour, 18.75, 1.7)
    )

    # AR(1) noise proportional to the level, plus rare one-interval blips
    eps = rng.standard_normal(n)
    noise = np.empty(n)
    acc = 0.0
    for i in range(n):
        acc = 0.6 * acc + eps[i]
        noise[i] = acc
    rt = fundamental + noise * (0.04 * fundamental + 0.6)
    blips = rng.random(n) < 0.008
    rt = rt + blips * rng.uniform(8.0, 35.0, n)
    rt = np.maximum(rt, 1.5)

    # negative midday solar prices on two days (not the spike or DR day)
    midday = {k: np.flatnonzero((day_of == k) & (hour >= 12.0) & (hour < 14.0)) for k in range(nd)}
    candidates = [k for k, d in enumerate(local_days) if d not in (dr_day_local, spike_local_day) and len(midday[k]) == 8]
    for k in sorted(rng.choice(candidates, size=min(2, len(candidates)), replace=False).tolist()):
        idx = midday[k]
        run = int(rng.integers(2, 5))
        first = int(rng.integers(0, len(idx) - run - 1))
        neg = idx[first + 1:first + 1 + run]
        rt[neg] = rng.uniform(-5.0, -1.0, run)
        rt[idx[first]] = rng.uniform(2.0, 6.0)
        rt[idx[first + 1 + run]] = rng.uniform(2.0, 6.0)

    # the DR event window: high but not scarce
    lo, hi = dr_window
    rt[lo:hi] = np.clip(rt[lo:hi], *_DR_PRICE_BAND)

    # the scarcity spike
    start_local = float(rng.choice([17.0, 17.25, 17.5, 17.75, 18.0]))
    k0 = starts.index(_central_to_utc(spike_local_day, start_local))
    plateau_len = int(rng.integers(8, 11))
    ramp_in = [rng.uniform(250, 450), rng.uniform(900, 1400), rng.uniform(2050, 2800)]
    ramp_out = [rng.uniform(2050, 2600), rng.uniform(700, 1100), rng.uniform(220, 380)]
    level = rng.uniform(3400.0, 4300.0)
    walk = np.cumsum(rng.normal(0.0, 300.0, plateau_len))
    plateau = np.clip(level + walk - walk.mean(), 3000.0, 4750.0)
    plateau[int(rng.integers(1, plateau_len - 1))] = rng.uniform(4800.0, _SPIKE_CAP)
    profile = np.concatenate([ramp_in, plateau, ramp_out])
    k1 = k0 + len(profile)
    if k1 > n:
        raise ConfigError("the scarcity spike does not fit in the week")  # pragma: no cover
    rt[k0:k1] = np.maximum(rt[k0:k1], profile)

    return _Prices(rt=np.round(rt, 2), fundamental=fundamental, spike_idx=(k0, k1))


def _da_prices(rng: np.random.Generator, prices: _Prices, n_days: int) -> np.ndarray:
    hours = n_days * 24
    fund = prices.fundamental.reshape(hours, 4).mean(axis=1)
    rt = prices.rt.reshape(hours, 4).mean(axis=1)
    da = fund * np.exp(rng.normal(0.0, 0.07, hours)) + rng.normal(0.0, 1.0, hours)
    k0, k1 = prices.spike_idx
    share = rng.uniform(0.09, 0.16)
    for h in range(k0 // 4, (k1 - 1) // 4 + 1):
        excess = max(rt[h] - fund[h], 0.0) * share * math.exp(rng.normal(0.0, 0.1))
        da[h] = min(fund[h] + excess, 800.0)
    return np.round(np.maximum(da, 5.0), 2)


# -- hashprice -------------------------------------------------------------------------


def _hashprices(rng: np.random.Generator, site_id: str, start: datetime, n_days: int) -> list[Hashprice]:
    out = []
    hp = round(55.0 * math.exp(rng.normal(0.0, 0.01)), 2)
    network_hs = _DIFFICULTY * 2**32 / 600.0
    for d in range(-1, n_days):
        if d > -1:  # a daily move of at most +-2% (1.9% before rounding to the cent)
            hp = round(hp * (1.0 + float(np.clip(rng.normal(0.0, 0.01), -0.019, 0.019))), 2)
        fees = float(rng.uniform(0.03, 0.12))
        btc = hp * network_hs / (144 * (_BLOCK_SUBSIDY_BTC + fees) * 1e15)
        day = start + timedelta(days=d)
        out.append(Hashprice(
            site_id=site_id, usd_per_ph_day=hp, btc_usd=round(btc, 2), difficulty=_DIFFICULTY,
            fees_btc_per_block=round(fees, 4), as_of=day, published_at=day,
        ))
    return out


# -- demand response -------------------------------------------------------------------


def _dr_events(site_id: str, program: DrProgram, start: datetime, end: datetime, extension: timedelta,
               revision_after: timedelta) -> list[DemandResponseEvent]:
    notice = start - timedelta(minutes=program.notice_minutes)
    event_id = f"{program.name.lower().replace(' ', '-')}-{start:%Y%m%d-%H%M}"
    obligation = program.firm_service_level_mw if program.firm_service_level_mw is not None else 0.0
    common = dict(
        site_id=site_id, event_id=event_id, program=program.name, notice_at=notice, start=start,
        obligation_kind=program.kind, obligation_mw=obligation,
        capacity_payment_usd_mw_h=program.capacity_payment_usd_mw_h, penalty_usd_mwh=program.penalty_usd_mwh,
    )
    if program.kind == "reduction":
        common["baseline_mw"] = obligation  # pragma: no cover - the sample site is firm-level
    return [
        DemandResponseEvent(**common, revision=0, status="scheduled", end=end, issued_at=notice),
        DemandResponseEvent(**common, revision=1, status="active", end=end + extension,
                            issued_at=start + revision_after),
    ]


# -- GPU telemetry ---------------------------------------------------------------------

# per class: prefix, lane size weights over _SIZES, job duration (median min, sigma, min, max),
# max gap between jobs in a lane (min)
_GPU_PROFILES = {
    "inference": ("inf", [0.04, 0.07, 0.11, 0.62, 0.09, 0.05, 0.02], (4 * 1440, 0.5, 1440, 14 * 1440), 10),
    "training": ("trn", [0.00, 0.02, 0.05, 0.60, 0.16, 0.11, 0.06], (18 * 60, 0.8, 120, 5 * 1440), 30),
    "batch": ("bat", [0.04, 0.07, 0.12, 0.62, 0.09, 0.04, 0.02], (150, 0.6, 30, 360), 30),
}


def _lane_sizes(rng: np.random.Generator, lanes: int, weights: list[float], target: int) -> list[int]:
    """``lanes`` powers of two in 1..64 drawn from ``weights``, halved/doubled at random until
    their sum is at most ``target`` and as close to it as the sizes allow."""
    w = np.asarray(weights) / sum(weights)
    sizes = _SIZES[rng.choice(len(_SIZES), size=lanes, p=w)].astype(int)
    while sizes.sum() > target:
        big = np.flatnonzero(sizes > 1)
        if len(big) == 0:
            break
        p = sizes[big] / sizes[big].sum()
        sizes[big[rng.choice(len(big), p=p)]] //= 2
    for _ in range(lanes * 8):
        room = target - int(sizes.sum())
        ok = np.flatnonzero((sizes < 64) & (sizes <= room))
        if room <= 0 or len(ok) == 0:
            break
        sizes[ok[rng.integers(len(ok))]] *= 2
    return [int(s) for s in sizes]


def _gpu_telemetry(rng: np.random.Generator, site: SiteConfig, start: datetime, minutes: int,
                   jobs: int) -> list[GpuTelemetry]:
    gpus = site.gpus
    if gpus is None or gpus.count == 0 or jobs <= 0:
        return []
    offset_h = _central_offset(start).total_seconds() / 3600.0
    # (minute, completed-first rank, job_id, gpu_class, gpus, utilization, state)
    rows: list[tuple[int, int, str, str, int, float, str]] = []
    for cls in site.gpu_classes():
        cfg = gpus.class_config(cls)
        assert cfg is not None
        prefix, weights, (median, sigma, dmin, dmax), max_gap = _GPU_PROFILES[cls]
        capacity = gpus.count * cfg.share
        lanes = max(1, round(jobs * cfg.share))
        if capacity < 1:
            continue
        lanes = min(lanes, int(capacity))
        sizes = _lane_sizes(rng, lanes, weights, int(math.floor(capacity * 0.98)))

        class_jobs: list[tuple[int, int, int]] = []  # (start, end, size)
        for size in sizes:
            def duration() -> int:
                return min(max(round(median * math.exp(sigma * float(rng.standard_normal()))), dmin), dmax)

            d = duration()
            t = -int(rng.uniform(0.0, 1.0) * d)
            while t < minutes:
                class_jobs.append((t, t + d, size))
                t = t + d + int(rng.integers(0, max_gap + 1))
                d = duration()
        class_jobs.sort(key=lambda j: (j[0], -j[2], j[1]))

        # utilization per sample, drawn job by job in job-id order (a fixed order)
        for n, (js, je, size) in enumerate(class_jobs, start=1):
            job_id = f"{prefix}-{n:04d}"
            first = max(js, 0)
            stop = min(je, minutes)
            times = [first] + list(range(js + 60 * (1 + max(0, (first - js) // 60)), stop, 60))
            times = [m for m in times if m < stop]
            if not times:
                continue
            k = len(times)
            tt = np.asarray(times, dtype=float)
            if cls == "inference":
                base = rng.uniform(0.45, 0.70)
                local_h = (tt / 60.0 + offset_h) % 24.0
                util = base + 0.22 * np.cos(2 * np.pi * (local_h - 14.0) / 24.0) + rng.normal(0, 0.04, k)
            elif cls == "training":
                base = rng.uniform(0.82, 0.97)
                util = base + rng.normal(0, 0.03, k)
                dips = rng.random(k) < 0.04
                util = np.where(dips, rng.uniform(0.35, 0.60, k), util)
            else:
                base = rng.uniform(0.55, 0.95)
                util = base + rng.normal(0, 0.06, k)
            util = np.round(np.clip(util, 0.3, 1.0), 3)
            for m, u in zip(times, util.tolist()):
                rows.append((m, 1, job_id, cls, size, u, "running"))
            if je < minutes:
                rows.append((je, 0, job_id, cls, size, 0.0, "completed"))

    rows.sort(key=lambda r: (r[0], r[1], r[2]))
    kw_per_gpu = gpus.power_kw_per_gpu
    when: dict[int, datetime] = {}
    out = []
    site_id = site.site_id
    for m, _, job_id, cls, size, u, state in rows:
        t = when.get(m)
        if t is None:
            t = when[m] = start + timedelta(minutes=m)
        power = 0.0 if state == "completed" else round(size * kw_per_gpu * (0.55 + 0.45 * u), 3)
        out.append(GpuTelemetry(
            site_id=site_id, job_id=job_id, gpu_class=cls, gpus=size, power_kw=power,  # type: ignore[arg-type]
            utilization=u, state=state, observed_at=t,  # type: ignore[arg-type]
        ))
    return out


# -- the scenario ----------------------------------------------------------------------


def build_demo_scenario(
    seed: int = 7,
    start: datetime = DEFAULT_START,
    days: int = 7,
    jobs: int = 1000,
    site: SiteConfig | None = None,
) -> Scenario:
    """Build the seeded demo week (see the module docstring for every convention).

    ``start`` must be a tz-aware UTC midnight, ``days`` >= 3 (the spike needs a full evening
    on a day that is neither the first nor the last, the DR event another one), ``jobs`` >= 0 is
    the number of GPU jobs running at any moment. Raises :class:`ConfigError` otherwise.
    """
    if start.tzinfo is None or start.utcoffset() != timedelta(0):
        raise ConfigError(f"scenario start must be tz-aware UTC, got {start!r}")
    start = start.astimezone(timezone.utc)
    if (start.hour, start.minute, start.second, start.microsecond) != (0, 0, 0, 0):
        raise ConfigError(f"scenario start must be a UTC midnight, got {start.isoformat()}")
    if days < 3:
        raise ConfigError(f"a demo scenario needs at least 3 days, got {days}")
    if jobs < 0:
        raise ConfigError(f"jobs must be >= 0, got {jobs}")
    site = site if site is not None else load_sample_site()
    end = start + timedelta(days=days)

    seq = np.random.SeedSequence(seed)
    rng_layout, rng_rt, rng_da, rng_hp, rng_gpu = (np.random.Generator(np.random.PCG64(s)) for s in seq.spawn(5))

    # which days carry the spike and the DR event
    spike_day = int(rng_layout.integers(1, days - 1))
    dr_day = int(rng_layout.choice([d for d in range(0, days - 1) if d != spike_day]))
    dr_local_day = (start + timedelta(days=dr_day)).date()
    dr_start = _central_to_utc(dr_local_day, float(rng_layout.choice([16.0, 16.5, 17.0])))
    dr_end = dr_start + timedelta(hours=2)
    dr_extension = timedelta(minutes=30)

    step = timedelta(minutes=_RT_MINUTES)
    n = days * 24 * 60 // _RT_MINUTES
    starts = [start + i * step for i in range(n)]
    dr_window = (starts.index(dr_start), min(n, starts.index(dr_start) + int((dr_end + dr_extension - dr_start) / step)))
    prices = _rt_prices(rng_rt, starts, spike_day, dr_window, dr_local_day)
    sid, sp = site.site_id, site.settlement_point
    prices_rt = [
        GridPrice(site_id=sid, settlement_point=sp, market="RT", interval_start=s, interval_minutes=_RT_MINUTES,
                  price_usd_mwh=float(p), published_at=s + step)
        for s, p in zip(starts, prices.rt.tolist())
    ]

    da = _da_prices(rng_da, prices, days)
    hour = timedelta(hours=1)
    prices_da = []
    for h, p in enumerate(da.tolist()):
        s = start + h * hour
        day = datetime(s.year, s.month, s.day, tzinfo=timezone.utc)
        published = day - timedelta(days=1) + timedelta(hours=_DA_PUBLISH_HOUR_UTC)
        prices_da.append(GridPrice(site_id=sid, settlement_point=sp, market="DA", interval_start=s,
                                   interval_minutes=60, price_usd_mwh=float(p), published_at=published))

    hashprice = _hashprices(rng_hp, sid, start, days)
    dr_events = (
        _dr_events(sid, site.dr_programs[0], dr_start, dr_end, dr_extension, timedelta(hours=1))
        if site.dr_programs else []
    )
    with _gc_paused():  # ~180k models and their rows: nothing cyclic to collect
        telemetry = _gpu_telemetry(rng_gpu, site, start, days * 1440, jobs)

    k0, k1 = prices.spike_idx
    return Scenario(
        site=site, start=start, end=end, prices_rt=prices_rt, prices_da=prices_da, hashprice=hashprice,
        dr_events=dr_events, gpu_telemetry=telemetry, spike=(starts[k0], starts[k0] + (k1 - k0) * step),
    )
