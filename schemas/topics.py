"""Kafka topics of the contract. Every feed is keyed by ``site_id`` and all topics have the
same partition count, so one site's events from every feed meet in one partition number
(co-partitioned) and therefore in one worker."""

from __future__ import annotations

from dataclasses import dataclass

from schemas.action import DispatchAction
from schemas.actuation import Actuation
from schemas.dead_letter import DeadLetter
from schemas.feeds import DemandResponseEvent, GpuTelemetry, GpuTelemetryBatch, GridPrice, Hashprice
from schemas.base import WireModel


@dataclass(frozen=True)
class Feed:
    name: str            # short name, also the archive table name
    topic: str           # default Kafka topic
    model: type[WireModel]
    #: a record carrying many ``model`` records in ``samples``, also accepted on the topic
    batch_model: type[WireModel] | None = None


PRICES = Feed("grid_prices", "wattmix.grid-prices", GridPrice)
DR_EVENTS = Feed("dr_events", "wattmix.dr-events", DemandResponseEvent)
HASHPRICE = Feed("hashprice", "wattmix.hashprice", Hashprice)
GPU_TELEMETRY = Feed("gpu_telemetry", "wattmix.gpu-telemetry", GpuTelemetry, GpuTelemetryBatch)

INPUT_FEEDS: tuple[Feed, ...] = (PRICES, DR_EVENTS, HASHPRICE, GPU_TELEMETRY)
FEEDS_BY_NAME = {f.name: f for f in INPUT_FEEDS}
FEEDS_BY_TOPIC = {f.topic: f for f in INPUT_FEEDS}

ACTIONS = Feed("actions", "wattmix.actions", DispatchAction)
DEAD_LETTERS = Feed("dead_letters", "wattmix.dead-letters", DeadLetter)
#: what the actuators (adapters/) actually did, so DR performance is measured from reality
ACTUATIONS = Feed("actuations", "wattmix.actuations", Actuation)

ALL_TOPICS: tuple[str, ...] = tuple(f.topic for f in INPUT_FEEDS) + (ACTIONS.topic, DEAD_LETTERS.topic,
                                                                  ACTUATIONS.topic)

#: default partition count; every wattmix topic must have the same one (co-partitioning).
DEFAULT_PARTITIONS = 4


def feed_for_record(record: WireModel) -> Feed:
    for f in INPUT_FEEDS + (ACTIONS, DEAD_LETTERS, ACTUATIONS):
        if type(record) is f.model:
            return f
    raise TypeError(f"no feed carries {type(record).__name__}")
