"""The dispatch action: what the engine decided for one site and one interval, and why.

Its key ``action_id`` (``site_id|interval_start``) is the idempotency key: a restart or a
replay may publish the same action twice, and every consumer de-duplicates on it.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from pydantic import Field

from schemas.base import GpuClass, IntervalMinutes, UtcDatetime, WireModel


class PnlTerms(WireModel):
    """The accounting identity of DESIGN.md for one interval, in USD.

    net = mining_revenue + gpu_value - energy_cost + hedge_pnl + dr_payment - dr_penalty
    """

    mining_revenue_usd: float
    gpu_value_usd: float
    energy_cost_usd: float
    hedge_pnl_usd: float
    dr_payment_usd: float
    dr_penalty_usd: float
    net_usd: float


class FleetDispatch(WireModel):
    fleet: str
    units_online: int = Field(ge=0)
    units_total: int = Field(ge=0)
    power_mw: float = Field(ge=0, description="grid power incl. cooling (PUE)")
    hashrate_ph: float = Field(ge=0)
    breakeven_usd_mwh: float = Field(description="grid price at which this fleet's margin is zero")


class GpuClassDispatch(WireModel):
    gpu_class: GpuClass
    gpus_demand: int = Field(ge=0, description="GPUs whose jobs want to run")
    gpus_running: int = Field(ge=0)
    power_cap_tier: int = Field(ge=0, description="index into the site's power-cap tiers (0 = uncapped)")
    power_fraction: float = Field(ge=0, le=1)
    throughput_fraction: float = Field(ge=0, le=1)
    power_mw: float = Field(ge=0, description="grid power incl. cooling (PUE)")


class DrStatusInAction(WireModel):
    active_event_ids: list[str] = Field(default_factory=list)
    limit_mw: float | None = Field(default=None, description="the load ceiling in force, if any")
    shortfall_mw: float = Field(default=0.0, ge=0)


class DispatchAction(WireModel):
    site_id: str
    interval_start: UtcDatetime
    interval_minutes: IntervalMinutes
    engine: str = Field(description="engine name and version that decided")
    price_known_usd_mwh: float | None = Field(description="latest real-time price known at decision time")
    price_expected_usd_mwh: float | None = Field(description="price the engine planned with")
    hashprice_usd_per_ph_day: float | None
    fleets: list[FleetDispatch]
    gpus: list[GpuClassDispatch]
    paused_job_ids: list[str] = Field(default_factory=list)
    load_mw: float = Field(ge=0)
    sold_back_mw: float = Field(ge=0, description="max(hedge MW - load, 0): power sold at the RT price")
    dr: DrStatusInAction
    expected: PnlTerms = Field(description="P&L terms at the expected price")
    reasons: list[str]
    watchdog: bool = Field(default=False, description="a feed is stale: the site is in the watchdog's safe "
                                                       "state (dispatch/watchdog.py); reasons say why")

    @property
    def action_id(self) -> str:
        return f"{self.site_id}|{self.interval_start.isoformat()}"

    @property
    def interval_end(self) -> datetime:
        return self.interval_start + timedelta(minutes=self.interval_minutes)

    def event_time(self) -> datetime:
        return self.interval_start
