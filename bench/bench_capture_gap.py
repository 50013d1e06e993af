"""Where the policy's missing flexibility value is, and how much of it the information known at
decision time can recover (issue 3's 95% goal).

    /tmp/wmvenv/bin/python bench/bench_capture_gap.py [--year-only]

1. The gap to perfect foresight, by term: each miner fleet by kind of interval (spike onset:
   last known price under the breakeven and the realized one over it; spike end: the reverse;
   continuation; calm), and each GPU class (power caps, pauses and their costs).
2. Information bounds for mining (its decision is per interval: the 15-min hold times never
   bind). For a partition of what is known at t (last RT price vs breakeven, hour, DA price of
   the hour, RT trend), the best decision per cell *in hindsight* is an upper bound for every
   policy that sees only that partition; its leave-one-month-out version (decide month m from
   the other 11 months, i.e. with more data than any online learner has) is what the
   information generalizes to. A bound that needs cells of a few intervals is hindsight, not
   information.
3. Oracle bounds: myopic plus perfect knowledge of every spike onset (the realized price
   crosses the breakeven upwards), or of every spike end: how much of the gap each would close.
4. A learned bound (needs scikit-learn: ``pip install -e '.[bench]'``; skipped without it):
   gradient-boosted trees fit offline on 20 features of what is known at t (the last 4 RT
   prices, trend, DA of the hour before/now/after, DA-RT gap, hour, quarter, weekend, 8-interval
   volatility, the day's max, spike counts over a day and a week, yesterday's price, the
   breakeven), as a cost-sensitive classifier (label: p_t > breakeven, weight |p_t - breakeven|
   x MW: curtailing iff the weighted probability > 1/2 is the risk-neutral rule for a decision
   whose value is linear in p_t). Scored leave-one-month-out (11 months of training data for
   each month, more than an online learner ever has) and forward (months before only, the
   online setting; January falls back to myopic), with two model sizes; and in-sample (fit on
   the whole year, scored on it), which is what tuning a flexible model on the scored year shows.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_backtest import DA24, HP, RT24, RTM20, DAM20  # noqa: E402
from dispatch.backtest import backtest, load_inputs  # noqa: E402
from readers.timeutil import CPT  # noqa: E402
from schemas.site import load_sample_site  # noqa: E402

#: last known price minus the breakeven, $/MWh: finer near the breakeven, where the decision flips
GAP_EDGES = (-40.0, -20.0, -10.0, -5.0, 0.0, 5.0, 10.0, 20.0, 40.0, 80.0, 200.0)
DA_GAP_EDGES = (-30.0, -10.0, 0.0, 10.0, 30.0)
TREND_EDGES = (-20.0, -5.0, 5.0, 20.0)


def run_year(prices):
    site = load_sample_site()
    inputs = load_inputs(site, prices, HP)
    rep = backtest(site, inputs, 100.0, "rolling")
    # a run's columns as lists (PolicyRun keeps them as a pyarrow table)
    runs = {r.name: {n: r.column(n) for n in r.table.column_names} for r in rep["_runs"]}
    da = {}
    for r in inputs.records:
        if getattr(r, "market", None) == "DA":
            da[r.interval_start] = r.price_usd_mwh
    return site, runs, da


def gap_by_term(site, runs) -> dict[str, dict[str, float]]:
    """Flexibility value (vs always-on) of every term and kind of interval, per policy."""
    h = site.interval_minutes / 60.0
    base = runs["always_on"]
    p = np.asarray(base["price_realized_usd_mwh"])
    pk = np.asarray(base["price_known_usd_mwh"])
    hp = np.asarray(base["hashprice_usd_per_ph_day"], float)
    out: dict[str, dict[str, float]] = {}
    for name, cols in runs.items():
        row: dict[str, float] = {}
        for f in site.miner_fleets:
            be = np.array([f.breakeven_grid_usd_mwh(x) for x in hp])
            # curtailing dMW earns (p - be) x dMW x h (mining revenue is be x MW x h exactly)
            v = (np.asarray(base[f"mw_{f.name}"]) - np.asarray(cols[f"mw_{f.name}"])) * (p - be) * h
            kinds = {"onset": (pk <= be) & (p > be), "end": (pk > be) & (p <= be),
                     "continuation": (pk > be) & (p > be), "calm": (pk <= be) & (p <= be)}
            for k, m in kinds.items():
                row[f"{f.name} {k}"] = float(v[m].sum())
        for c in site.gpus.classes if site.gpus else []:
            n = c.gpu_class
            run_gpus = np.asarray(cols[f"gpus_running_{n}"])
            demand = np.asarray(base[f"gpus_running_{n}"])
            thr = np.array([t.throughput_fraction for t in site.gpus.power_cap_tiers])[np.asarray(cols[f"tier_{n}"])]
            value = run_gpus * c.value_usd_per_gpu_hour * thr * h
            paused = demand - run_gpus
            newly = np.maximum(paused - np.r_[0, paused[:-1]], 0)
            cost = newly * c.value_usd_per_gpu_hour * c.pause_cost_minutes / 60.0
            saved = (np.asarray(base[f"mw_{n}"]) - np.asarray(cols[f"mw_{n}"])) * p * h
            row[f"gpu {n}"] = float((saved - (demand * c.value_usd_per_gpu_hour * h - value) - cost).sum())
        row["net"] = float((np.asarray(cols["net_usd"]) - np.asarray(base["net_usd"])).sum())
        row["(unexplained)"] = row["net"] - sum(v for k, v in row.items() if k != "net")
        out[name] = row
    return out


def information_bounds(site, runs, da) -> list[tuple[str, float, float, float]]:
    """(partition, cells, in-hindsight %, leave-one-month-out %) of the mining value of PF."""
    base = runs["always_on"]
    ts = base["interval_start"]
    pk = np.asarray(base["price_known_usd_mwh"])
    p2 = np.r_[pk[0], pk[:-1]]
    local = [t.astimezone(CPT) for t in ts]
    hour = np.array([x.hour for x in local])
    month = np.array([x.month for x in local])
    dap = np.array([da.get(t.replace(minute=0), np.nan) for t in ts])
    trend = np.digitize(pk - p2, TREND_EDGES)
    rows = []
    fleets = _fleet_values(site, runs)
    pf_total = sum(np.maximum(v, 0).sum() for _, v in fleets)
    partitions = {
        "myopic (last RT > breakeven)": lambda be: (pk > be).astype(int),
        "last RT - breakeven (12 buckets)": lambda be: np.digitize(pk - be, GAP_EDGES),
        "  x hour": lambda be: np.digitize(pk - be, GAP_EDGES) * 24 + hour,
        "  x hour x DA - breakeven (6)": lambda be: (np.digitize(pk - be, GAP_EDGES) * 24 + hour) * 7
        + np.where(np.isnan(dap), 6, np.digitize(dap - be, DA_GAP_EDGES)),
        "  x hour x DA x RT trend (5)": lambda be: ((np.digitize(pk - be, GAP_EDGES) * 24 + hour) * 7
                                                    + np.where(np.isnan(dap), 6, np.digitize(dap - be, DA_GAP_EDGES))) * 5 + trend,
        "  x hour x DA x trend x month": lambda be: (((np.digitize(pk - be, GAP_EDGES) * 24 + hour) * 7
                                                      + np.where(np.isnan(dap), 6, np.digitize(dap - be, DA_GAP_EDGES))) * 5 + trend) * 13 + month,
    }
    for label, cell_of in partitions.items():
        hind = cv = 0.0
        ncells = 0
        for be, v in fleets:
            cell = cell_of(be)
            _, inv = np.unique(cell, return_inverse=True)
            ncells += inv.max() + 1
            total = np.bincount(inv, weights=v)
            count = np.bincount(inv)
            hind += np.maximum(total, 0).sum()
            for m in np.unique(month):
                te = month == m
                other = total - np.bincount(inv[te], weights=v[te], minlength=len(total))
                seen = (count - np.bincount(inv[te], minlength=len(total)))[inv[te]] > 0
                # a cell the other months never saw falls back to myopic
                curtail = np.where(seen, other[inv[te]] > 0, pk[te] > be[te])
                cv += v[te][curtail].sum()
        rows.append((label, ncells / len(fleets), 100 * hind / pf_total, 100 * cv / pf_total))
    return rows


def _fleet_values(site, runs):
    """Per fleet: (breakeven per interval, value of curtailing it per interval $)."""
    h = site.interval_minutes / 60.0
    base = runs["always_on"]
    p = np.asarray(base["price_realized_usd_mwh"])
    hp = np.asarray(base["hashprice_usd_per_ph_day"], float)
    out = []
    for f in site.miner_fleets:
        be = np.array([f.breakeven_grid_usd_mwh(x) for x in hp])
        out.append((be, (p - be) * f.grid_mw_per_unit * f.units * h))
    return out


def oracle_bounds(site, runs) -> list[tuple[str, float]]:
    """% of perfect foresight's mining value reached by myopic plus perfect knowledge of ..."""
    pk = np.asarray(runs["always_on"]["price_known_usd_mwh"])
    p = np.asarray(runs["always_on"]["price_realized_usd_mwh"])
    fleets = _fleet_values(site, runs)
    pf_total = sum(np.maximum(v, 0).sum() for _, v in fleets)
    rules = {
        "myopic": lambda be: pk > be,
        "myopic + every onset known": lambda be: (pk > be) | (p > be),
        "myopic + every end known": lambda be: (pk > be) & (p > be),
    }
    return [(label, 100 * sum(v[rule(be)].sum() for be, v in fleets) / pf_total) for label, rule in rules.items()]


def _known_features(runs, da) -> tuple[np.ndarray, np.ndarray]:
    """(features known at t for every interval, CPT month). Column k of a lag is the price of
    [t-(k+1)d, t-kd): the last known is ``price_known``; nothing of interval t or later."""
    from datetime import timedelta

    from numpy.lib.stride_tricks import sliding_window_view

    base = runs["always_on"]
    ts = base["interval_start"]
    pk = np.asarray(base["price_known_usd_mwh"], float)

    def lag(a, k):
        return np.r_[np.full(k, a[0]), a[:-k]]

    def trailing(a, k, fn):
        return fn(sliding_window_view(np.r_[np.full(k - 1, a[0]), a], k), axis=1)

    local = [t.astimezone(CPT) for t in ts]
    hour = np.array([x.hour for x in local])
    quarter = np.array([x.minute // 15 for x in local])
    weekend = np.array([x.weekday() >= 5 for x in local])
    month = np.array([x.month for x in local])

    def da_at(shift):
        return np.array([da.get((t + timedelta(hours=shift)).replace(minute=0), np.nan) for t in ts])

    dap = da_at(0)
    spikes = np.r_[0, np.cumsum(pk > 150.0)]
    idx = np.arange(1, len(pk) + 1)
    x = np.c_[pk, lag(pk, 1), lag(pk, 2), lag(pk, 3), pk - lag(pk, 1), dap, da_at(1), da_at(-1), dap - pk,
              hour, quarter, hour * 4 + quarter, weekend, trailing(pk, 8, np.std), trailing(pk, 96, np.max),
              spikes[idx] - spikes[np.maximum(idx - 96, 0)], spikes[idx] - spikes[np.maximum(idx - 672, 0)],
              lag(pk, 95)]  # lag 95 of the last known = the same interval yesterday
    return x, month


def learned_bounds(site, runs, da) -> list[tuple[str, float]] | None:
    """% of perfect foresight's mining value reached by gradient-boosted trees (see module doc)."""
    try:
        from sklearn.ensemble import HistGradientBoostingClassifier
    except ImportError:
        return None
    pk = np.asarray(runs["always_on"]["price_known_usd_mwh"], float)
    x, month = _known_features(runs, da)
    fleets = _fleet_values(site, runs)
    pf_total = sum(np.maximum(v, 0).sum() for _, v in fleets)
    sizes = {"15 leaves": {"max_leaf_nodes": 15, "learning_rate": 0.05, "max_iter": 200},
             "31 leaves": {"max_leaf_nodes": 31, "learning_rate": 0.1, "max_iter": 200}}
    out = []
    for mode in ("in-sample", "leave-1-month-out", "forward"):
        for size, kw in sizes.items():
            got = 0.0
            for be, v in fleets:
                xf = np.c_[x, be, pk - be]
                y = v > 0
                w = np.abs(v) / np.abs(v).mean()
                curtail = pk > be                  # a month with too little history stays myopic
                for m in ((0,) if mode == "in-sample" else range(1, 13)):
                    # in-sample: fit on the whole year and score it (what tuning a model on the
                    # year it is scored on shows: memorised spikes, not predicted ones)
                    test = month > 0 if m == 0 else month == m
                    train = test if m == 0 else month != m if mode == "leave-1-month-out" else month < m
                    if train.sum() < 2000:
                        continue
                    model = HistGradientBoostingClassifier(min_samples_leaf=50, l2_regularization=1.0,
                                                           random_state=0, **kw)
                    model.fit(xf[train], y[train], sample_weight=w[train])
                    curtail[test] = model.predict_proba(xf[test])[:, 1] > 0.5
                got += v[curtail].sum()
            out.append((f"trees, {size}, {mode}", 100 * got / pf_total))
            print(f"    ... {out[-1][0]}: {out[-1][1]:.1f}%", file=sys.stderr, flush=True)
    return out


def report(label, prices, bounds: bool) -> None:
    site, runs, da = run_year(prices)
    g = gap_by_term(site, runs)
    names = ["policy", "myopic_breakeven", "fixed_strike", "perfect_foresight"]
    print(f"\n== {label}: flexibility value vs always-on by term, $ (gap = perfect foresight - policy)")
    print(f"  {'term':<26}" + "".join(f"{n[:16]:>18}" for n in names) + f"{'gap':>12}")
    for k in g["policy"]:
        vals = [g[n][k] for n in names]
        print(f"  {k:<26}" + "".join(f"{x:>18,.0f}" for x in vals) + f"{vals[-1] - vals[0]:>12,.0f}")
    pf = g["perfect_foresight"]["net"]
    print(f"  captured: policy {g['policy']['net'] / pf:.1%}, myopic {g['myopic_breakeven']['net'] / pf:.1%}; "
          f"95% needs ${0.95 * pf - g['policy']['net']:,.0f} more")
    if bounds:
        print("  mining value an information set can reach, % of perfect foresight's mining value:")
        print(f"    {'partition of what is known at t':<36}{'cells':>8}{'hindsight':>11}{'leave-1-month-out':>19}")
        for lab, cells, hind, cv in information_bounds(site, runs, da):
            print(f"    {lab:<36}{cells:>8.0f}{hind:>10.1f}%{cv:>18.1f}%")
        mining = sum(g["policy"][k] for k in g["policy"] if not k.startswith(("gpu", "net", "(")))
        pf_mining = sum(g["perfect_foresight"][k] for k in g["policy"] if not k.startswith(("gpu", "net", "(")))
        print(f"  the policy's mining value: {100 * mining / pf_mining:.1f}% of perfect foresight's")
        print("  oracle bounds, % of perfect foresight's mining value:")
        for lab, pct in oracle_bounds(site, runs):
            print(f"    {lab:<36}{pct:>10.1f}%")
        learned = learned_bounds(site, runs, da)
        if learned is None:
            print("  learned bound: skipped (needs scikit-learn: pip install -e '.[bench]')")
        else:
            print("  learned bound (gradient-boosted trees on 20 known features), % of the mining value:")
            for lab, pct in learned:
                print(f"    {lab:<36}{pct:>10.1f}%")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--year-only", action="store_true", help="skip Feb 2020")
    args = ap.parse_args()
    report("2024 HB_HUBAVG RT+DA", [RT24, DA24], True)
    if not args.year_only:
        report("Feb 2020 HB_HUBAVG native RTM+DAM", [RTM20, DAM20], False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
