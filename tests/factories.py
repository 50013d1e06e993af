"""Small record factories for tests (valid by default; override any field)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from schemas.feeds import DemandResponseEvent, GpuTelemetry, GridPrice, Hashprice

T0 = datetime(2024, 8, 5, tzinfo=timezone.utc)
SITE = "sample"


def rt_price(i: int, price: float, *, site: str = SITE, t0: datetime = T0, minutes: int = 15) -> GridPrice:
    """RT price of the i-th interval after t0, published at its end."""
    s = t0 + timedelta(minutes=minutes * i)
    return GridPrice(site_id=site, settlement_point="HB_HUBAVG", market="RT", interval_start=s,
                     interval_minutes=minutes, price_usd_mwh=price, published_at=s + timedelta(minutes=minutes))


def da_price(hour: int, price: float, *, site: str = SITE, t0: datetime = T0) -> GridPrice:
    s = t0 + timedelta(hours=hour)
    return GridPrice(site_id=site, settlement_point="HB_HUBAVG", market="DA", interval_start=s,
                     interval_minutes=60, price_usd_mwh=price, published_at=t0 - timedelta(hours=7))


def hashprice(value: float = 54.3, *, site: str = SITE, at: datetime = T0) -> Hashprice:
    return Hashprice(site_id=site, usd_per_ph_day=value, as_of=at - timedelta(days=1), published_at=at)


def dr_event(start_min: int, minutes: int = 60, *, notice_min: int = 30, mw: float = 20.0, revision: int = 0,
             status: str = "scheduled", event_id: str = "ers-1", site: str = SITE, issued_min: int | None = None,
             kind: str = "firm_service_level", baseline_mw: float | None = None) -> DemandResponseEvent:
    start = T0 + timedelta(minutes=start_min)
    notice = start - timedelta(minutes=notice_min)
    issued = notice if issued_min is None else T0 + timedelta(minutes=issued_min)
    return DemandResponseEvent(site_id=site, event_id=event_id, program="ERS-30", revision=revision, status=status,
                               notice_at=notice, start=start, end=start + timedelta(minutes=minutes),
                               obligation_kind=kind, obligation_mw=mw, baseline_mw=baseline_mw,
                               capacity_payment_usd_mw_h=8, penalty_usd_mwh=1000, issued_at=issued)


def gpu_sample(job: str, gpu_class: str = "training", gpus: int = 8, *, minute: int = 0, state: str = "running",
               power_kw: float | None = None, site: str = SITE) -> GpuTelemetry:
    return GpuTelemetry(site_id=site, job_id=job, gpu_class=gpu_class, gpus=gpus,
                        power_kw=gpus * 1.275 if power_kw is None else power_kw, utilization=0.9, state=state,
                        observed_at=T0 + timedelta(minutes=minute))
