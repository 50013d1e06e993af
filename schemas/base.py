"""Shared pieces of the wire contract.

Every record on a wattmix topic is JSON (orjson) carrying ``schema_version``; timestamps are
ISO-8601 with an explicit offset (naive timestamps are rejected: a feed in local time without
an offset is ambiguous twice a year); every quantity has its unit in its name.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field

SCHEMA_VERSION = 1

# Real-time energy prices outside this band are data errors, not markets: ERCOT's floor is
# -$250/MWh and its cap $5,000/MWh ($9,000 in Feb 2021); other ISOs stay within +-$3,800.
PRICE_FLOOR_USD_MWH = -1_000.0
PRICE_CAP_USD_MWH = 15_000.0

# Timestamps outside this window are clock or unit errors (epoch seconds read as ms, a
# year 9999 sentinel), not energy-market facts.
EARLIEST = datetime(2000, 1, 1, tzinfo=timezone.utc)
LATEST = datetime(2100, 1, 1, tzinfo=timezone.utc)


def _to_utc(value: datetime) -> datetime:
    try:
        utc = value.astimezone(timezone.utc)
    except OverflowError:
        raise ValueError("timestamp out of range once converted to UTC") from None
    if not EARLIEST <= utc < LATEST:
        raise ValueError(f"timestamp {utc.isoformat()} outside {EARLIEST.year}..{LATEST.year - 1}")
    return utc


#: A timezone-aware timestamp, normalised to UTC once validated.
UtcDatetime = Annotated[AwareDatetime, AfterValidator(_to_utc)]

GpuClass = Literal["inference", "training", "batch"]
GPU_CLASSES: tuple[GpuClass, ...] = ("inference", "training", "batch")

Market = Literal["RT", "DA"]


class WireModel(BaseModel):
    """Base of every record on the wire: strict, closed, immutable, no NaN/inf."""

    model_config = ConfigDict(
        strict=True,
        extra="forbid",
        frozen=True,
        allow_inf_nan=False,
        str_min_length=0,
    )

    schema_version: Literal[1] = Field(default=SCHEMA_VERSION, description="wire format version")


def divides_hour(minutes: int) -> int:
    if minutes <= 0 or (60 % minutes != 0 and minutes % 60 != 0):
        raise ValueError(f"interval of {minutes} min does not divide the hour (use 5, 15, 30, 60...)")
    return minutes


IntervalMinutes = Annotated[int, AfterValidator(divides_hour)]


def trusted(cls: type[BaseModel], values: dict[str, Any]) -> Any:
    """Build a model instance from values already checked against its rules (no validation).

    Same result as ``cls.model_construct`` for a complete ``values`` (every field given, in
    its final type), ~20x cheaper: callers must have applied the model's checks themselves
    (the engine for the records it computes, the readers after their own column checks).
    """
    obj = _new(cls)
    _set_dict(obj, "__dict__", values)
    _set_fields_set(obj, set(values))
    _set_extra(obj, None)
    _set_private(obj, None)
    return obj


# BaseModel's slots other than __dict__ set through their descriptors, without
# object.__setattr__'s lookup by name (trusted() builds two models per decision: ~0.5 us saved
# on each)
_new = object.__new__
_set_dict = object.__setattr__
_set_fields_set = BaseModel.__dict__["__pydantic_fields_set__"].__set__
_set_extra = BaseModel.__dict__["__pydantic_extra__"].__set__
_set_private = BaseModel.__dict__["__pydantic_private__"].__set__
