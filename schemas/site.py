"""Site configuration (a TOML file): the physical site, its contracts and its flexibility.

``wattmix/sites/sample.toml`` is the sample site of DESIGN.md.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from schemas.base import GPU_CLASSES, GpuClass, IntervalMinutes
from wattmix.errors import ConfigError


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class Hedge(_Config):
    """Fixed-price energy hedge (PPA): ``quantity_mw`` at ``price_usd_mwh``, settled vs RT."""

    quantity_mw: float = Field(ge=0)
    price_usd_mwh: float


class MinerFleet(_Config):
    name: str = Field(min_length=1)
    model: str = ""
    units: int = Field(gt=0)
    hashrate_th: float = Field(gt=0, description="TH/s per unit")
    power_kw: float = Field(gt=0, description="IT power per unit, kW")
    pool_fee: float = Field(ge=0, lt=1)
    pue: float = Field(ge=1, le=3)
    min_on_minutes: int = Field(default=0, ge=0)
    min_off_minutes: int = Field(default=0, ge=0)

    @property
    def j_per_th(self) -> float:
        return self.power_kw * 1000.0 / self.hashrate_th

    @property
    def hashrate_ph(self) -> float:
        return self.units * self.hashrate_th / 1000.0

    @property
    def grid_mw_per_unit(self) -> float:
        return self.power_kw * self.pue / 1000.0

    def breakeven_it_usd_mwh(self, hashprice_usd_per_ph_day: float) -> float:
        """DESIGN.md: P_be = hashprice x (1 - pool_fee) / (0.024 x J/TH), per MWh of IT power."""
        return hashprice_usd_per_ph_day * (1 - self.pool_fee) / (0.024 * self.j_per_th)

    def breakeven_grid_usd_mwh(self, hashprice_usd_per_ph_day: float) -> float:
        """The grid price at which mining margin is zero once cooling (PUE) is paid for."""
        return self.breakeven_it_usd_mwh(hashprice_usd_per_ph_day) / self.pue


class PowerCapTier(_Config):
    power_fraction: float = Field(gt=0, le=1)
    throughput_fraction: float = Field(gt=0, le=1)


class GpuClassConfig(_Config):
    gpu_class: GpuClass
    share: float = Field(ge=0, le=1, description="share of the site's GPUs when no telemetry is known")
    value_usd_per_gpu_hour: float = Field(ge=0)
    interruptible: bool = True
    deferrable: bool = False
    pause_cost_minutes: float = Field(default=0, ge=0, description="checkpoint + restart + lost work, in minutes of value")
    min_pause_minutes: int = Field(default=0, ge=0)
    power_cappable: bool = True


class GpuFleet(_Config):
    model: str = "H100"
    count: int = Field(ge=0)
    power_kw_per_gpu: float = Field(gt=0, description="IT power per GPU incl. its node share")
    pue: float = Field(ge=1, le=3)
    power_cap_tiers: list[PowerCapTier] = Field(default_factory=lambda: [PowerCapTier(power_fraction=1, throughput_fraction=1)])
    classes: list[GpuClassConfig]

    @model_validator(mode="after")
    def _check(self) -> "GpuFleet":
        names = [c.gpu_class for c in self.classes]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate GPU class in {names}")
        if abs(sum(c.share for c in self.classes) - 1.0) > 1e-6 and self.classes:
            raise ValueError("GPU class shares must add up to 1")
        t0 = self.power_cap_tiers[0]
        if (t0.power_fraction, t0.throughput_fraction) != (1, 1):
            raise ValueError("power-cap tier 0 must be 100% power at 100% throughput")
        return self

    def class_config(self, gpu_class: GpuClass) -> GpuClassConfig | None:
        for c in self.classes:
            if c.gpu_class == gpu_class:
                return c
        return None

    @property
    def grid_mw_per_gpu(self) -> float:
        return self.power_kw_per_gpu * self.pue / 1000.0


class DrProgram(_Config):
    """A demand-response program the site is enrolled in (e.g. ERCOT ERS-30)."""

    name: str
    kind: Literal["firm_service_level", "reduction", "advisory"] = "firm_service_level"
    firm_service_level_mw: float | None = Field(default=None, ge=0)
    notice_minutes: int = Field(default=30, ge=0)
    committed_mw: float = Field(ge=0, description="capacity committed (expected load - firm level)")
    capacity_payment_usd_mw_h: float = Field(default=0, ge=0, description="paid per MW committed per hour of the term")
    penalty_usd_mwh: float = Field(default=0, ge=0)


class SiteConfig(_Config):
    site_id: str = Field(min_length=1, max_length=64)
    settlement_point: str
    interconnect_mw: float = Field(gt=0)
    interval_minutes: IntervalMinutes = 15
    hedge: Hedge | None = None
    miner_fleets: list[MinerFleet] = Field(default_factory=list)
    gpus: GpuFleet | None = None
    dr_programs: list[DrProgram] = Field(default_factory=list)
    transmission_4cp_usd_mw_year: float | None = Field(
        default=None, ge=0,
        description="4CP transmission charge, $/MW-year of the site's average load in the 4 summer peak "
                    "intervals (ERCOT TCOS); with it, advisory (4CP) DR events make curtailment pay")
    fourcp_peak_probability: float = Field(
        default=0.25, ge=0, le=1,
        description="probability that a 4CP alert window holds its month's system peak interval")
    watchdog_price_minutes: int = Field(
        default=60, gt=0,
        description="no new real-time price for longer than this (event time): safe state (dispatch/watchdog.py)")
    watchdog_hashprice_hours: float = Field(
        default=48, gt=0, description="hashprice published longer ago than this (event time): safe state")

    @model_validator(mode="after")
    def _check(self) -> "SiteConfig":
        names = [f.name for f in self.miner_fleets]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate miner fleet name in {names}")
        return self

    @property
    def max_mining_mw(self) -> float:
        return sum(f.units * f.grid_mw_per_unit for f in self.miner_fleets)

    @property
    def max_gpu_mw(self) -> float:
        return self.gpus.count * self.gpus.grid_mw_per_gpu if self.gpus else 0.0

    def gpu_classes(self) -> tuple[GpuClass, ...]:
        return tuple(c for c in GPU_CLASSES if self.gpus and self.gpus.class_config(c))


def load_site(path: str | Path) -> SiteConfig:
    """Read and validate a site TOML file; raise :class:`ConfigError` saying what is wrong."""
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text())
    except FileNotFoundError as exc:
        raise ConfigError(f"site file not found: {p}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: not valid TOML: {exc}") from exc
    try:
        return SiteConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{p}: invalid site configuration:\n{exc}") from exc


def sample_site_path() -> Path:
    return Path(__file__).resolve().parent.parent / "wattmix" / "sites" / "sample.toml"


def load_sample_site() -> SiteConfig:
    return load_site(sample_site_path())
