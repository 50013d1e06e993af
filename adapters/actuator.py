"""The actions consumer: carry out each DispatchAction once and report reality on
``wattmix.actuations``.

:class:`ActionApplier` (no Kafka) applies one action for one site:

* **once**: actions are de-duplicated on their key ``site_id|interval_start`` (a replay or a
  worker restart may publish one twice), and an action older than the newest one applied is
  skipped (an old decision must never undo a newer one); with ``max_age`` (default 15 min) an
  action whose interval ended longer ago than that, by the wall clock, is skipped too (a
  consumer catching up on history must not replay it onto the machines);
* **shed before wake**: fleets whose target went down since the last action (or any fleet on
  the first action) are driven first, then the others, so a mix change never peaks above
  both the old and the new load;
* **miners**: each fleet of the action goes to its :class:`~adapters.miners.FleetActuator`
  (staged, least efficient first, confirmed); **GPU jobs**: ``paused_job_ids`` go to a
  :class:`~adapters.gpujobs.GpuJobActuator` (Slurm or Kubernetes);
* **GPU power caps**: each class's ``power_cap_tier`` goes to the controller's
  ``set_power_cap`` when it changed (Slurm node ``Extra`` + hook, Kubernetes node labels);
* one :class:`~schemas.actuation.Actuation` per fleet (units = miners mining), one for the
  GPU jobs (target ``paused-jobs``, units = jobs paused) and one per power-cap change (target
  ``power-cap:<class>``, units = nodes), with status ``ok`` / ``partial`` / ``failed`` and the
  devices that failed.

:class:`ActionConsumer` runs it on Kafka: a consumer group on the actions topic (manual
commits, each after the action's actuations are on the broker: at-least-once, made
idempotent by the de-duplication above), publishing to the actuations topic.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta

from schemas.action import DispatchAction
from schemas.actuation import Actuation
from schemas.codec import decode
from schemas.topics import ACTIONS, ACTUATIONS

from adapters.common import KafkaPublisher, Publisher, utcnow
from adapters.gpujobs import CapResult, GpuJobActuator
from adapters.miners import FleetActuator

log = logging.getLogger("wattmix.adapters.actuator")


class ActionApplier:
    def __init__(self, site_id: str, fleets: Mapping[str, FleetActuator], gpu_jobs: GpuJobActuator | None = None,
                 *, clock: Callable[[], datetime] = utcnow, max_age: timedelta | None = timedelta(minutes=15),
                 remember: int = 10_000) -> None:
        self.site_id = site_id
        self.fleets = dict(fleets)
        self.gpu_jobs = gpu_jobs
        self.clock = clock
        self.max_age = max_age
        self.done: OrderedDict[str, None] = OrderedDict()
        self.remember = remember
        self.latest: datetime | None = None
        self.last_targets: dict[str, int] = {}
        self.skipped: list[tuple[str, str]] = []

    def _skip(self, action: DispatchAction) -> str | None:
        if action.site_id != self.site_id:
            return "another site"
        if action.action_id in self.done:
            return "duplicate"
        if self.latest is not None and action.interval_start < self.latest:
            return "older than an action already applied"
        if self.max_age is not None and action.interval_end < self.clock() - self.max_age:
            return "too old to actuate"
        return None

    async def apply(self, action: DispatchAction) -> list[Actuation]:
        why = self._skip(action)
        if why:
            if why != "another site":
                self.skipped.append((action.action_id, why))
                log.info("action %s skipped: %s", action.action_id, why)
            return []
        started = self.clock()
        out: list[Actuation] = []
        wanted = {f.fleet: f for f in action.fleets}
        targets = {name: self.fleets[name].target_devices(fd.units_online, fd.units_total)
                   for name, fd in wanted.items() if name in self.fleets}
        order = sorted(targets, key=lambda n: (0 if targets[n] < self.last_targets.get(n, 1 << 60) else 1, n))
        for name in order:
            fa = self.fleets[name]
            res = await fa.set_units(targets[name])
            # nominal IT power of the devices that should stay on (the most efficient ones)
            keep = sorted(fa.miners, key=lambda m: (m.j_per_th, m.power_kw, m.id))[:targets[name]]
            req_kw = sum(m.power_kw for m in keep)
            out.append(Actuation(
                site_id=action.site_id, action_id=action.action_id, interval_start=action.interval_start,
                actuator=fa.driver.name, target=name, requested_units=res.requested_units,
                achieved_units=res.achieved_units, requested_power_kw=round(req_kw, 3),
                measured_power_kw=res.measured_power_kw, changed_units=res.changed_units,
                failed_devices=(res.failed + res.unknown)[:200], status=res.status, detail=res.detail[:2000],
                started_at=started, finished_at=max(self.clock(), started)))
            self.last_targets[name] = targets[name]
        for name in sorted(set(wanted) - set(self.fleets)):
            log.warning("action %s names fleet %s with no actuator configured", action.action_id, name)
        if self.gpu_jobs is not None:
            jr = await self.gpu_jobs.apply(action.paused_job_ids)
            want = set(action.paused_job_ids)
            achieved = len(want & self.gpu_jobs.paused)
            status = "ok" if not jr.failed else ("partial" if jr.paused or jr.resumed else "failed")
            detail = f"paused {jr.paused} resumed {jr.resumed}" + (f"; errors: {jr.errors}" if jr.errors else "")
            out.append(Actuation(
                site_id=action.site_id, action_id=action.action_id, interval_start=action.interval_start,
                actuator=self.gpu_jobs.controller.name, target="paused-jobs", requested_units=len(want),
                achieved_units=achieved, changed_units=len(jr.paused) + len(jr.resumed),
                failed_devices=jr.failed[:200], status=status, detail=detail[:2000],
                started_at=started, finished_at=max(self.clock(), started)))
            for cap in await self.gpu_jobs.apply_caps(action.gpus):
                out.append(self._cap_actuation(action, cap, started))
        self.done[action.action_id] = None
        while len(self.done) > self.remember:
            self.done.popitem(last=False)
        self.latest = action.interval_start
        return out


    def _cap_actuation(self, action: DispatchAction, cap: CapResult, started: datetime) -> Actuation:
        """One GPU class's power-cap change; units = nodes (or Slurm hostlists) that took it."""
        detail = (f"tier {cap.tier}: {cap.power_fraction:.0%} = {cap.watts} W per GPU "
                  f"on {len(cap.done)}/{len(cap.targets)}")
        if not cap.targets:
            detail += " (no node matches this class)"
        if cap.errors:
            detail += f"; errors: {cap.errors}"
        status = "ok" if cap.targets and not cap.failed else ("partial" if cap.done else "failed")
        return Actuation(
            site_id=action.site_id, action_id=action.action_id, interval_start=action.interval_start,
            actuator=self.gpu_jobs.controller.name, target=f"power-cap:{cap.gpu_class}",
            requested_units=len(cap.targets), achieved_units=len(cap.done), changed_units=len(cap.done),
            failed_devices=cap.failed[:200], status=status, detail=detail[:2000],
            started_at=started, finished_at=max(self.clock(), started))


class ActionConsumer:
    """Consume the actions topic as group ``group``; apply; publish actuations; commit."""

    def __init__(self, bootstrap: str, applier: ActionApplier, *, group: str = "wattmix-actuator",
                 actions_topic: str = ACTIONS.topic, actuations_topic: str = ACTUATIONS.topic,
                 publisher: Publisher | None = None) -> None:
        self.bootstrap = bootstrap
        self.applier = applier
        self.group = group
        self.actions_topic = actions_topic
        self.actuations_topic = actuations_topic
        self.publisher = publisher
        self.applied = 0
        self.bad = 0

    async def run(self, stop: asyncio.Event | None = None, idle_stop_s: float | None = None) -> None:
        """Until ``stop`` is set, or (tests) no record has arrived for ``idle_stop_s`` seconds."""
        import time

        from aiokafka import AIOKafkaConsumer

        from wattmix.errors import DecodeError

        consumer = AIOKafkaConsumer(self.actions_topic, bootstrap_servers=self.bootstrap, group_id=self.group,
                                    enable_auto_commit=False, auto_offset_reset="earliest",
                                    session_timeout_ms=10_000, heartbeat_interval_ms=1_000)
        own = self.publisher is None
        pub = self.publisher or KafkaPublisher(self.bootstrap, topics={ACTUATIONS.name: self.actuations_topic},
                                               client_id="wattmix-actuator")
        if own:
            await pub.start()   # type: ignore[union-attr]
        await consumer.start()
        last_seen = time.monotonic()
        try:
            while not (stop is not None and stop.is_set()):
                batch = await consumer.getmany(timeout_ms=500, max_records=100)
                if not batch:
                    if idle_stop_s is not None and time.monotonic() - last_seen > idle_stop_s:
                        return
                    continue
                last_seen = time.monotonic()
                for tp, records in batch.items():
                    for r in records:
                        try:
                            action = decode(DispatchAction, r.value)
                        except DecodeError as exc:
                            self.bad += 1
                            log.warning("actions %s@%d: %s", tp, r.offset, exc)
                            continue
                        for a in await self.applier.apply(action):
                            await pub.publish(a, ACTUATIONS)
                        self.applied += 1
                    await consumer.commit()
        finally:
            await consumer.stop()
            if own:
                await pub.stop()   # type: ignore[union-attr]
