"""What an actuator actually did: the record on ``wattmix.actuations``.

A :class:`~schemas.action.DispatchAction` is the engine's intent; an :class:`Actuation` is
reality, reported by the adapter that moved the machines (``adapters.actuator``): how many
units it asked for, how many it reached, the power it measured afterwards, and which devices
did not answer. DR performance is measured from these, not from the actions.

One record per action and target (a miner fleet, a GPU class); its identity
``site_id|action_id|actuator|target`` lets a consumer de-duplicate replays.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field

from schemas.base import UtcDatetime, WireModel

ActuationStatus = Literal["ok", "partial", "failed", "skipped"]


class Actuation(WireModel):
    site_id: str = Field(min_length=1, max_length=64)
    action_id: str = Field(min_length=1, max_length=128, description="site_id|interval_start of the action")
    interval_start: UtcDatetime
    actuator: str = Field(min_length=1, max_length=64, description="driver, e.g. 'cgminer-api', 'slurm', 'kubernetes'")
    target: str = Field(min_length=1, max_length=128, description="miner fleet name or GPU class")
    requested_units: int = Field(ge=0, description="units (miners or GPUs) the action wants running")
    achieved_units: int = Field(ge=0, description="units confirmed running afterwards")
    requested_power_kw: float | None = Field(default=None, ge=0)
    measured_power_kw: float | None = Field(default=None, ge=0, description="IT power read back from the devices")
    changed_units: int = Field(default=0, ge=0, description="units switched on or off by this actuation")
    failed_devices: list[str] = Field(default_factory=list, description="devices that did not answer or refused")
    status: ActuationStatus
    detail: str = Field(default="", max_length=2000)
    started_at: UtcDatetime
    finished_at: UtcDatetime = Field(description="event time: when the actuator finished")

    def event_time(self) -> datetime:
        return self.finished_at

    def identity(self) -> str:
        return f"{self.site_id}|{self.action_id}|{self.actuator}|{self.target}"
