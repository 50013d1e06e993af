"""Record factories for the archive tests: actions and dead letters (feeds: tests/factories.py)."""

from __future__ import annotations

import base64
from datetime import datetime, timedelta, timezone

from schemas.action import DispatchAction, DrStatusInAction, FleetDispatch, GpuClassDispatch, PnlTerms
from schemas.dead_letter import DeadLetter
from tests.factories import SITE, T0


def action(i: int = 0, *, site: str = SITE, engine: str = "merit-order/1", load_mw: float = 42.5,
           reasons: list[str] | None = None, minutes: int = 15) -> DispatchAction:
    """The action for the i-th interval after T0."""
    return DispatchAction(
        site_id=site,
        interval_start=T0 + timedelta(minutes=minutes * i),
        interval_minutes=minutes,
        engine=engine,
        price_known_usd_mwh=31.5,
        price_expected_usd_mwh=None if i % 2 else 33.25,
        hashprice_usd_per_ph_day=54.3,
        fleets=[
            FleetDispatch(fleet="s21", units_online=900, units_total=1000, power_mw=3.4, hashrate_ph=180.0,
                          breakeven_usd_mwh=61.2),
            FleetDispatch(fleet="s19", units_online=0, units_total=500, power_mw=0.0, hashrate_ph=0.0,
                          breakeven_usd_mwh=38.0),
        ],
        gpus=[
            GpuClassDispatch(gpu_class="inference", gpus_demand=512, gpus_running=512, power_cap_tier=0,
                             power_fraction=1.0, throughput_fraction=1.0, power_mw=1.1),
            GpuClassDispatch(gpu_class="batch", gpus_demand=256, gpus_running=128, power_cap_tier=1,
                             power_fraction=0.7, throughput_fraction=0.85, power_mw=0.3),
        ],
        paused_job_ids=["batch-7"],
        load_mw=load_mw,
        sold_back_mw=0.0,
        dr=DrStatusInAction(active_event_ids=["ers-1"], limit_mw=50.0, shortfall_mw=0.0),
        expected=PnlTerms(mining_revenue_usd=120.0, gpu_value_usd=900.0, energy_cost_usd=330.0,
                          hedge_pnl_usd=-12.5, dr_payment_usd=40.0, dr_penalty_usd=0.0, net_usd=717.5),
        reasons=["price 31.5 < breakeven 61.2: s21 on", "s19 off"] if reasons is None else reasons,
    )


def dead_letter(offset: int = 0, *, topic: str = "wattmix.grid-prices", partition: int = 0,
                raw: bytes = b'{"site_id": 1}', key: bytes | None = b"sample",
                received_at: datetime = datetime(2024, 8, 5, 1, tzinfo=timezone.utc)) -> DeadLetter:
    return DeadLetter(
        source_topic=topic,
        source_partition=partition,
        source_offset=offset,
        key_base64=None if key is None else base64.b64encode(key).decode(),
        raw_base64=base64.b64encode(raw).decode(),
        error_type="DecodeError",
        reason="GridPrice: site_id: Input should be a valid string (got 1)",
        received_at=received_at,
    )
