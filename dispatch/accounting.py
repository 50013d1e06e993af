"""The accounting identity of DESIGN.md, in one place for the engine, the backtest, the
baselines and the archive summaries (per interval of ``h`` hours):

    mining_revenue = sum over fleets of PH/s online x hashprice x (1 - pool_fee) x h / 24
    gpu_value      = sum over running GPUs of value $/GPU-h x throughput x h - pause costs incurred
    energy_cost    = p x load_mw x h                (load_mw includes PUE/cooling)
    hedge_pnl      = (p - K) x Q x h
    dr_payment     = what the program pays for this interval
    dr_penalty     = shortfall MWh x penalty rate
    net            = mining_revenue + gpu_value - energy_cost + hedge_pnl + dr_payment - dr_penalty
    sold_back_mwh  = max(Q - load_mw, 0) x h
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from schemas.action import DispatchAction, PnlTerms
from schemas.base import trusted
from schemas.site import SiteConfig


@dataclass(frozen=True)
class Terms:
    """Plain-float P&L terms (cheap to build in tight loops; convert with :meth:`model`)."""

    mining_revenue_usd: float
    gpu_value_usd: float
    energy_cost_usd: float
    hedge_pnl_usd: float
    dr_payment_usd: float
    dr_penalty_usd: float

    @property
    def net_usd(self) -> float:
        return (
            self.mining_revenue_usd
            + self.gpu_value_usd
            - self.energy_cost_usd
            + self.hedge_pnl_usd
            + self.dr_payment_usd
            - self.dr_penalty_usd
        )

    def model(self) -> PnlTerms:
        # plain floats computed here: built without re-validation (hot path of backtests);
        # a NaN or infinity in any term makes net non-finite, which is still refused
        net = float(self.net_usd)
        if not math.isfinite(net):
            raise ValueError(f"P&L terms are not finite: {self}")
        return trusted(PnlTerms, {
            "schema_version": 1,
            "mining_revenue_usd": float(self.mining_revenue_usd),
            "gpu_value_usd": float(self.gpu_value_usd),
            "energy_cost_usd": float(self.energy_cost_usd),
            "hedge_pnl_usd": float(self.hedge_pnl_usd),
            "dr_payment_usd": float(self.dr_payment_usd),
            "dr_penalty_usd": float(self.dr_penalty_usd),
            "net_usd": net,
        })


def mining_revenue_usd(hashrate_ph: float, hashprice_usd_per_ph_day: float, pool_fee: float, hours: float) -> float:
    return hashrate_ph * hashprice_usd_per_ph_day * (1.0 - pool_fee) * hours / 24.0


def energy_cost_usd(price_usd_mwh: float, load_mw: float, hours: float) -> float:
    return price_usd_mwh * load_mw * hours


def hedge_pnl_usd(site: SiteConfig, price_usd_mwh: float, hours: float) -> float:
    if site.hedge is None:
        return 0.0
    return (price_usd_mwh - site.hedge.price_usd_mwh) * site.hedge.quantity_mw * hours


def sold_back_mw(site: SiteConfig, load_mw: float) -> float:
    if site.hedge is None:
        return 0.0
    return max(site.hedge.quantity_mw - load_mw, 0.0)


def dr_capacity_payment_usd(site: SiteConfig, hours: float) -> float:
    """Capacity payments of every enrolled program: $/MW committed per hour of the term."""
    return sum(p.committed_mw * p.capacity_payment_usd_mw_h for p in site.dr_programs) * hours


def settle_terms(site: SiteConfig, price_usd_mwh, load_mw, hours, mining_revenue_usd, gpu_value_usd,
                 dr_payment_usd, dr_penalty_usd) -> tuple:
    """The identity at a realized price: (mining_revenue, gpu_value, energy_cost, hedge_pnl,
    dr_payment, dr_penalty, net). Takes plain floats (one interval) or numpy arrays (a whole
    backtest at once): the same IEEE operations in the same order, so both give the same bits."""
    energy = energy_cost_usd(price_usd_mwh, load_mw, hours)
    hedge = hedge_pnl_usd(site, price_usd_mwh, hours)
    net = mining_revenue_usd + gpu_value_usd - energy + hedge + dr_payment_usd - dr_penalty_usd
    return mining_revenue_usd, gpu_value_usd, energy, hedge, dr_payment_usd, dr_penalty_usd, net


def settle_values(action: DispatchAction, price_usd_mwh: float, site: SiteConfig) -> tuple[float, ...]:
    """The terms of :func:`settle` as plain floats, in the order of DESIGN.md: (mining_revenue,
    gpu_value, energy_cost, hedge_pnl, dr_payment, dr_penalty, net). The one accounting code
    (:func:`settle_terms`) for one action."""
    e = action.expected
    v = settle_terms(site, price_usd_mwh, action.load_mw, action.interval_minutes / 60.0, e.mining_revenue_usd,
                     e.gpu_value_usd, e.dr_payment_usd, e.dr_penalty_usd)
    if not math.isfinite(v[6]):
        raise ValueError(f"P&L terms are not finite at {action.interval_start}: price {price_usd_mwh!r}")
    return tuple(float(x) for x in v)


def settle(action: DispatchAction, price_usd_mwh: float, site: SiteConfig) -> PnlTerms:
    """The action's P&L at a given (realized) price.

    Only energy cost and the hedge depend on the price; mining revenue, GPU value, DR payment
    and penalty were fixed by the decision itself, so they are taken from the action.
    """
    v = settle_values(action, price_usd_mwh, site)
    return trusted(PnlTerms, {
        "schema_version": 1, "mining_revenue_usd": v[0], "gpu_value_usd": v[1], "energy_cost_usd": v[2],
        "hedge_pnl_usd": v[3], "dr_payment_usd": v[4], "dr_penalty_usd": v[5], "net_usd": v[6]})
