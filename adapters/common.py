"""Shared plumbing for the adapters: optional imports, publishing records to Kafka.

* :func:`require` imports an optional library or raises :class:`MissingExtraError` that names
  the extra to install.
* :class:`KafkaPublisher` publishes wire records the way every wattmix producer must
  (``wattmix.demo.publish_events``): keyed by ``site_id`` (one site's feeds meet in one
  partition), Kafka timestamp = the record's event time, plain (non-idempotent) producer,
  ``acks=all``, each send awaited so a record is on the broker before the adapter reports it.
* :class:`MemoryPublisher` collects records in a list (dry runs and unit tests).
* :func:`poll_forever` runs a source's ``poll_once`` on a schedule, surviving its failures.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime, timedelta, timezone
from types import ModuleType
from typing import Protocol

from schemas.base import WireModel
from schemas.codec import encode
from schemas.topics import Feed, feed_for_record
from wattmix.errors import WattmixError


log = logging.getLogger(__name__)


class MissingExtraError(WattmixError, ImportError):
    """An optional dependency of an adapter is not installed."""


class AdapterError(WattmixError):
    """An adapter could not do its job (bad response from a peer, bad configuration...)."""


def require(module: str, extra: str, what: str = "") -> ModuleType:
    """Import ``module`` or raise :class:`MissingExtraError` naming ``wattmix[extra]``."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        purpose = f" for {what}" if what else ""
        raise MissingExtraError(
            f"the Python package {module.split('.')[0]!r} is needed{purpose}: "
            f"pip install 'wattmix[{extra}]'") from exc


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Publisher(Protocol):
    async def publish(self, record: WireModel, feed: Feed | None = None) -> None: ...


class MemoryPublisher:
    """Collects published records (dry runs, tests)."""

    def __init__(self) -> None:
        self.records: list[WireModel] = []

    async def publish(self, record: WireModel, feed: Feed | None = None) -> None:
        self.records.append(record)


class KafkaPublisher:
    """Publish wire records to their feed's topic (optionally renamed or suffixed).

    ``topics`` maps a feed name (``"dr_events"``) to the topic to use; by default the
    contract's topic name plus ``topic_suffix``. Use as ``async with KafkaPublisher(...)``.
    """

    def __init__(self, bootstrap: str, topics: Mapping[str, str] | None = None, topic_suffix: str = "",
                 client_id: str = "wattmix-adapter") -> None:
        self.bootstrap = bootstrap
        self.topics = dict(topics or {})
        self.topic_suffix = topic_suffix
        self.client_id = client_id
        self._producer = None
        self.sent = 0

    def topic_for(self, feed: Feed) -> str:
        return self.topics.get(feed.name, feed.topic + self.topic_suffix)

    async def start(self) -> "KafkaPublisher":
        from aiokafka import AIOKafkaProducer

        self._producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, acks="all", linger_ms=0,
                                          enable_idempotence=False, client_id=self.client_id)
        await self._producer.start()
        return self

    async def stop(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None

    async def __aenter__(self) -> "KafkaPublisher":
        return await self.start()

    async def __aexit__(self, *exc) -> None:
        await self.stop()

    async def publish(self, record: WireModel, feed: Feed | None = None) -> None:
        if self._producer is None:
            raise AdapterError("KafkaPublisher is not started (use 'async with' or await start())")
        feed = feed or feed_for_record(record)
        t = record.event_time()  # type: ignore[attr-defined]
        await self._producer.send_and_wait(self.topic_for(feed), encode(record),
                                           key=record.site_id.encode(),  # type: ignore[attr-defined]
                                           timestamp_ms=int(t.timestamp() * 1000))
        self.sent += 1


async def poll_forever(poll_once: Callable[[], Awaitable[object]], what: str, interval: timedelta,
                       rounds: int | None = None,
                       on_error: Callable[[Exception], Awaitable[None] | None] | None = None) -> None:
    """Call ``poll_once`` every ``interval`` (``rounds`` times, or until cancelled). A failed
    poll (:class:`AdapterError`: the peer is down or answered nonsense) is logged as
    ``"<what> poll failed"``, handed to ``on_error`` and retried at the next round: a feed
    source must outlive its peer's outages (the worker's watchdog reports the silence)."""
    n = 0
    while rounds is None or n < rounds:
        try:
            await poll_once()
        except AdapterError as exc:
            log.warning("%s poll failed: %s", what, exc)
            if on_error:
                res = on_error(exc)
                if asyncio.iscoroutine(res):
                    await res
        n += 1
        if rounds is None or n < rounds:
            await asyncio.sleep(interval.total_seconds())
