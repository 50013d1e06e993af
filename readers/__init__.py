"""Historical file readers: ERCOT native reports, wattmix's own layouts, daily hashprice,
DR events and GPU telemetry (wattmix layout, raw ``nvidia-smi`` logs, the Alibaba GPU pod
list), each yielding validated records of schemas/feeds.py for one site.

Bad rows raise :class:`BadRowError` (strict) or go to a :class:`BadRows` collector.
"""

from readers.errors import BadRow, BadRowError, BadRows
from readers.ercot import read_ercot_dam, read_ercot_rtm
from readers.feeds import read_dr_events, read_gpu_telemetry, read_hashprice
from readers.prices import read_prices
from readers.nvidia_smi import read_nvidia_smi
from readers.alibaba import read_alibaba_pods
from readers.timeutil import DA_PUBLISH_LOCAL, cpt_to_utc, da_published_at

__all__ = [
    "BadRow", "BadRowError", "BadRows", "read_ercot_rtm", "read_ercot_dam", "read_prices",
    "read_hashprice", "read_dr_events", "read_gpu_telemetry", "DA_PUBLISH_LOCAL", "cpt_to_utc",
    "da_published_at", "read_nvidia_smi", "read_alibaba_pods",
]
