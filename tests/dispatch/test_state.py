"""The GPU part of the state fold: per sample, or a batch's samples of one instant at once, give
the same state, and the incrementally kept demand equals a scan of the jobs' latest samples."""

from __future__ import annotations

import math
from datetime import timedelta
from itertools import groupby

from hypothesis import given, settings
from hypothesis import strategies as st

import dispatch.state
from dispatch.state import WANTING, SiteState
from schemas.base import GPU_CLASSES
from schemas.feeds import GpuTelemetry
from tests import factories as f

sample = st.builds(
    lambda job, cls, gpus, kw, state, minute: GpuTelemetry(
        site_id="sample", job_id=f"j{job}", gpu_class=cls, gpus=gpus, power_kw=kw, utilization=0.5, state=state,
        observed_at=f.T0 + timedelta(minutes=minute)),
    st.integers(0, 5), st.sampled_from(GPU_CLASSES), st.integers(0, 64),
    st.floats(0, 1e4, allow_nan=False) | st.sampled_from([0.1, 0.2, 0.3, 1e-9, 7e3]),
    st.sampled_from(["running", "paused", "queued", "completed"]),
    st.integers(0, 6),  # few instants: ties, late samples, re-deliveries
)


def reference_jobs(samples: list[GpuTelemetry]) -> dict[str, GpuTelemetry]:
    """The contract, written plainly: a job's newest sample wins, an older one arriving late
    is ignored, 'completed' forgets the job."""
    jobs: dict[str, GpuTelemetry] = {}
    for g in samples:
        prev = jobs.get(g.job_id)
        if prev is not None and prev.observed_at > g.observed_at:
            continue
        if g.state == "completed":
            jobs.pop(g.job_id, None)
        else:
            jobs[g.job_id] = g
    return jobs


def as_row(g: GpuTelemetry) -> tuple:
    return (g.job_id, g.gpu_class, g.gpus, g.power_kw, g.utilization, g.state)


@settings(max_examples=400, deadline=None)
@given(st.lists(sample, max_size=40))
def test_batched_fold_equals_per_sample_fold_and_the_plain_contract(samples):
    one = SiteState("sample")
    for g in samples:
        one.fold(g)
    runs = SiteState("sample")
    for t, group in groupby(samples, key=lambda g: g.observed_at):  # adjacent samples of one instant
        runs.fold_gpu_rows(t, [as_row(g) for g in group])
    # the scrape fold (dict updates) for every run, however short, where its check allows it
    scrapes = SiteState("sample")
    floor, dispatch.state.SCRAPE_FOLD_MIN = dispatch.state.SCRAPE_FOLD_MIN, 1
    try:
        for t, group in groupby(samples, key=lambda g: g.observed_at):
            scrapes.fold_gpu_rows(t, [as_row(g) for g in group])
    finally:
        dispatch.state.SCRAPE_FOLD_MIN = floor

    ref = reference_jobs(samples)
    for s in (one, runs, scrapes):
        assert {j: (t, row) for j, (t, row) in s.gpu_jobs.items()} == {
            j: (g.observed_at, as_row(g)) for j, g in ref.items()}
        demand = s.gpu_demand()
        for c in GPU_CLASSES:
            want = [g for g in ref.values() if g.gpu_class == c and g.state in WANTING]
            assert (demand[c].gpus, demand[c].jobs) == (sum(g.gpus for g in want), len(want))
            assert demand[c].power_kw == math.fsum(g.power_kw for g in want)  # exact: order-free
            assert [(j.job_id, j.gpus) for j in s.jobs_of_class(c)] == sorted((g.job_id, g.gpus) for g in want)
        assert s.events_folded == len(samples)
        assert s.last_event_time == (max(g.observed_at for g in samples) if samples else None)


def test_a_scrape_folds_with_dict_updates_only_when_nothing_in_it_can_be_late(monkeypatch):
    calls = []
    monkeypatch.setattr(SiteState, "_fold_scrape", lambda self, t, rows: calls.append(len(rows)) or rows)
    rows = [as_row(f.gpu_sample(f"j{i}")) for i in range(dispatch.state.SCRAPE_FOLD_MIN)]
    s = SiteState("sample")
    s.fold_gpu_rows(f.T0 + timedelta(minutes=1), rows)
    s.fold_gpu_rows(f.T0 + timedelta(minutes=1), rows)  # the same instant again: nothing is newer
    s.fold_gpu_rows(f.T0, rows)  # older than the newest folded: a job's stored sample may be newer
    s.fold_gpu_rows(f.T0 + timedelta(minutes=2), rows[:-1])  # under the floor: the per-sample loop
    assert calls == [len(rows), len(rows)]


def test_demand_power_does_not_depend_on_fold_order():
    # 0.1 + 0.2 + 0.3 is 0.6000000000000001 left to right and 0.6 right to left: fsum is exact
    kws = [0.1, 0.2, 0.3]
    a, b = SiteState("sample"), SiteState("sample")
    for i, kw in enumerate(kws):
        a.fold(f.gpu_sample(f"j{i}", power_kw=kw))
    for i, kw in reversed(list(enumerate(kws))):
        b.fold(f.gpu_sample(f"j{i}", power_kw=kw))
    assert a.gpu_demand()["training"].power_kw == b.gpu_demand()["training"].power_kw == 0.6


def test_da_price_lookup_remembers_period_starts_not_prices():
    # da_price_at caches each instant's DA period start: a price folded (or revised) later is
    # seen at once, and a change of the DA period length re-derives the starts
    state = SiteState(site_id="sample")
    t = f.T0 + timedelta(minutes=45)
    assert state.da_price_at(t) is None
    state.fold(f.da_price(0, 30.0))
    assert state.da_price_at(t) == 30.0
    state.fold(f.da_price(0, 31.0))
    assert state.da_price_at(t) == 31.0
    quarter = f.da_price(0, 99.0).model_copy(update={"interval_start": f.T0 + timedelta(minutes=30),
                                                     "interval_minutes": 15})
    state.fold(quarter)
    assert state.da_minutes == 15
    assert state.da_price_at(t) is None                      # 00:45 is its own 15-min period now
    assert state.da_price_at(f.T0 + timedelta(minutes=30)) == 99.0
