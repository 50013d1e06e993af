"""Central Prevailing Time (ERCOT's market clock) to UTC, and the publication-time rules.

ERCOT labels intervals in Central Prevailing Time (CST/CDT) by *hour ending*: hour 1 is
[00:00, 01:00) local, hour 24 is [23:00, 24:00). On the autumn DST day, hour 2 occurs twice:
the first (CDT, UTC-5) has ``Repeated Hour Flag = N``, the repeat (CST, UTC-6) ``Y``. On the
spring day the local hour [02:00, 03:00) does not exist (ERCOT skips hour ending 3).
"""

from __future__ import annotations

from datetime import date, datetime, time, timedelta, timezone
from functools import lru_cache
from zoneinfo import ZoneInfo

CPT = ZoneInfo("America/Chicago")
UTC = timezone.utc

#: ERCOT's day-ahead market closes at 10:00 CPT and posts its results around 13:30 CPT the
#: day before the operating day. wattmix stamps every DA price with that instant: the
#: decision engine can plan with tomorrow's DA prices from 13:30 CPT today, never earlier.
DA_PUBLISH_LOCAL = time(13, 30)


class NonexistentLocalTime(ValueError):
    pass


@lru_cache(maxsize=65536)
def cpt_to_utc(d: date, minutes_after_midnight: int, repeated: bool = False) -> datetime:
    """UTC instant of local wall time ``d 00:00 + minutes`` in CPT.

    ``repeated`` selects the second occurrence of an ambiguous wall time (autumn DST).
    Raises :class:`NonexistentLocalTime` for the skipped spring hour.
    """
    wall = datetime.combine(d, time()) + timedelta(minutes=minutes_after_midnight)
    local = wall.replace(tzinfo=CPT, fold=1 if repeated else 0)
    utc = local.astimezone(UTC)
    # a nonexistent wall time does not survive the round trip
    if utc.astimezone(CPT).replace(tzinfo=None) != wall:
        raise NonexistentLocalTime(f"{wall.isoformat()} does not exist in Central Prevailing Time (DST spring gap)")
    if repeated:
        other = wall.replace(tzinfo=CPT, fold=0).astimezone(UTC)
        if other == utc:
            raise ValueError(f"{wall.isoformat()} CPT is not a repeated (DST autumn) hour but the row is flagged repeated")
    return utc


@lru_cache(maxsize=4096)
def da_published_at(operating_day: date) -> datetime:
    """When the DA prices of ``operating_day`` (a CPT date) became known: 13:30 CPT the day before."""
    prev = operating_day - timedelta(days=1)
    return datetime.combine(prev, DA_PUBLISH_LOCAL).replace(tzinfo=CPT).astimezone(UTC)


def operating_day_of(t_utc: datetime) -> date:
    """The CPT date an interval starting at ``t_utc`` belongs to."""
    return t_utc.astimezone(CPT).date()


def hashprice_published_at(day: date) -> datetime:
    """A daily hashprice for UTC day ``day`` uses that day's close: known at the end of the day."""
    return datetime.combine(day + timedelta(days=1), time(), tzinfo=UTC)
