"""The actions consumer on the real broker: real engine actions (a price spike) in, simulated
miners moved, one Actuation per fleet and action out on the actuations topic, duplicates and
stale actions ignored, the hung miner reported."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from adapters.actuator import ActionApplier, ActionConsumer
from adapters.gpujobs import GpuJobActuator
from adapters.miner_sim import SimMiner
from adapters.miners import CgminerApiDriver, FleetActuator, Miner
from schemas.codec import encode
from tests import factories as f
from tests.adapters.test_gpujobs import fake_slurm  # noqa: F401  (fixture: recording scontrol on PATH)

PRICES = [22.0] * 3 + [4200.0, 4500.0] + [22.0] * 3   # the spike is decided one interval late


def _actions():
    from dispatch.processor import run_in_process
    from schemas.site import load_sample_site

    ev = [f.hashprice(54.3)] + [f.rt_price(i, p) for i, p in enumerate(PRICES)]
    ev.sort(key=lambda e: e.event_time())
    return run_in_process(load_sample_site(), ev)


class RecordingJobs:
    name = "recording"

    def __init__(self):
        self.calls = []

    async def pause(self, job):
        self.calls.append(("pause", job))

    async def resume(self, job):
        self.calls.append(("resume", job))


async def _produce(bootstrap, topic, actions):
    from aiokafka import AIOKafkaProducer

    p = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=False)
    await p.start()
    try:
        for a in actions:
            await p.send_and_wait(topic, encode(a), key=b"sample",
                                  timestamp_ms=int(a.interval_start.timestamp() * 1000))
    finally:
        await p.stop()


async def _sims():
    s19 = [await SimMiner(f"s19-{i}", 100, 2950, mode="silent" if i == 0 else "ok").start() for i in range(4)]
    s21 = [await SimMiner(f"s21-{i}", 200, 3500).start() for i in range(2)]
    return s19, s21


def _fleets(s19, s21):
    drv = CgminerApiDriver(timeout_s=0.3)
    mk = lambda sims: [Miner(s.name, "127.0.0.1", s.port, s.hashrate_th, s.power_w / 1000) for s in sims]  # noqa: E731
    kw = dict(step_units=2, step_delay_s=0.01, confirm_timeout_s=2, confirm_poll_s=0.05)
    return {"s19jpro": FleetActuator("s19jpro", mk(s19), drv, **kw), "s21": FleetActuator("s21", mk(s21), drv, **kw)}


def test_applier_dedupes_and_skips_stale_actions():
    actions = _actions()
    spike = [a for a in actions if all(fl.units_online == 0 for fl in a.fleets)]
    assert spike, [a.reasons for a in actions]

    async def main():
        s19, s21 = await _sims()
        try:
            jobs = RecordingJobs()
            ap = ActionApplier("sample", _fleets(s19, s21), GpuJobActuator(jobs), max_age=None)
            out = []
            stale = actions[0].model_copy(update={"interval_start": actions[0].interval_start - timedelta(minutes=15)})
            for a in actions[:2] + [actions[1]] + actions[2:] + [actions[0], stale]:   # duplicates and a stale one
                out.append((a.action_id, await ap.apply(a)))
            return out, ap, jobs
        finally:
            for s in s19 + s21:
                await s.stop()

    out, ap, jobs = asyncio.run(asyncio.wait_for(main(), 60))
    stale_id = f"sample|{(actions[0].interval_start - timedelta(minutes=15)).isoformat()}"
    applied = [(aid, acts) for aid, acts in out if acts]
    assert [aid for aid, _ in applied] == [a.action_id for a in actions]
    assert ap.skipped == [(actions[1].action_id, "duplicate"), (actions[0].action_id, "duplicate"),
                          (stale_id, "older than an action already applied")]
    for aid, acts in applied:
        assert sorted(x.target for x in acts) == ["paused-jobs", "s19jpro", "s21"]
    by_id = dict(applied)
    s = {x.target: x for x in by_id[spike[0].action_id]}
    assert s["s21"].achieved_units == 0 and s["s21"].status == "ok"
    # the hung S19 cannot be confirmed off: reported, not hidden
    assert s["s19jpro"].achieved_units == 0 and s["s19jpro"].failed_devices == ["s19-0"]
    assert s["s19jpro"].status == "partial"


@pytest.mark.integration
def test_consumer_on_the_broker_publishes_actuations_once_per_action(kafka_bootstrap, fresh_topics):
    from schemas.topics import ACTUATIONS
    from tests.conftest import run_coro
    from tests.streams.harness import read_topic
    from wattmix.broker import ensure_topics

    topics = fresh_topics(names=["actions"])
    act_topic = f"{ACTUATIONS.topic}.{topics.suffix}"
    run_coro(ensure_topics(kafka_bootstrap, [act_topic], topics.partitions))
    actions = _actions()

    async def main():
        await _produce(kafka_bootstrap, topics["actions"], actions + [actions[-1]])   # the worker may publish twice
        s19, s21 = await _sims()
        try:
            ap = ActionApplier("sample", _fleets(s19, s21), max_age=None)
            c = ActionConsumer(kafka_bootstrap, ap, group=f"act-{topics.suffix}", actions_topic=topics["actions"],
                               actuations_topic=act_topic)
            await c.run(idle_stop_s=3)
            return c, [s.mining for s in s19 + s21]
        finally:
            for s in s19 + s21:
                await s.stop()

    c, mining = asyncio.run(asyncio.wait_for(main(), 60))
    assert c.applied == len(actions) + 1 and c.bad == 0
    acts = read_topic(kafka_bootstrap, act_topic)
    keys = [(a["action_id"], a["target"]) for a in acts]
    assert len(keys) == len(set(keys)) == 2 * len(actions)
    last = actions[-1]
    assert all(fl.units_online == fl.units_total for fl in last.fleets), "cheap again: everything back on"
    assert mining == [True] * 6
    final = {a["target"]: a for a in acts if a["action_id"] == last.action_id}
    assert final["s21"]["achieved_units"] == 2 and final["s19jpro"]["achieved_units"] == 3
    assert final["s19jpro"]["failed_devices"] == ["s19-0"]
    assert all(a["finished_at"] >= a["started_at"] for a in acts)
    assert timedelta(0) <= last.interval_start - actions[0].interval_start


ACTUATOR_TOML = """
site_id = "sample"
max_age_minutes = 15

[miners]
driver = "cgminer-api"          # overridden with --miner-driver pyasic below
firmware = "luxos"
timeout_s = 0.3
step_units = 2
step_delay_s = 0.01
confirm_timeout_s = 2
confirm_poll_s = 0.05

[fleets.s19jpro]
inventory = "s19jpro.csv"

[fleets.s21]
miners = [
  {{ id = "s21-0", host = "127.0.0.1", port = {s21_0}, hashrate_th = 200, power_kw = 3.5, firmware = "bosminer" }},
  {{ id = "s21-1", host = "localhost", port = {s21_1}, hashrate_th = 200, power_kw = 3.5 }},
]

[gpu_jobs]
controller = "slurm"
checkpoint_grace_s = 0
[gpu_jobs.power_cap]
gpu_max_w = 700
nodes = {{ training = ["gpu-t[01-04]"], batch = ["gpu-b[01-02]"] }}
"""


def test_actuator_config_builds_the_chosen_driver(tmp_path):
    from adapters.actuator_config import build_applier, load_actuator_config
    from adapters.common import AdapterError
    from adapters.miners import PyasicDriver
    from tests.adapters.util import need
    from wattmix.cli import main

    (tmp_path / "s19jpro.csv").write_text("id,host,port,hashrate_th,power_kw\ns19-0,127.0.0.1,4028,100,2.95\n")
    cfg_path = tmp_path / "actuator.toml"
    cfg_path.write_text(ACTUATOR_TOML.format(s21_0=4029, s21_1=4030))
    cfg = load_actuator_config(cfg_path)
    ap = build_applier(cfg)
    assert {n: type(f.driver).__name__ for n, f in ap.fleets.items()} == {"s19jpro": "CgminerApiDriver",
                                                                          "s21": "CgminerApiDriver"}
    assert [m.firmware for m in ap.fleets["s21"].miners] == ["bosminer", None]
    assert ap.gpu_jobs.controller.cap_classes() == {"training", "batch"}
    need("pyasic", "miners")
    drv = build_applier(cfg, miner_driver="pyasic").fleets["s19jpro"].driver
    assert isinstance(drv, PyasicDriver) and drv.firmware == "luxos" and drv.timeout_s == 0.3
    cfg_path.write_text(ACTUATOR_TOML.format(s21_0=1, s21_1=2).replace('step_units = 2', 'step_units = "many"'))
    with pytest.raises(AdapterError, match="step_units"):
        load_actuator_config(cfg_path)
    assert main(["actuator", "--config", str(cfg_path)]) == 2   # a bad config is an error message, not a trace


@pytest.mark.integration
def test_pyasic_actuator_from_config_on_the_broker(kafka_bootstrap, fresh_topics, tmp_path, fake_slurm):
    """actions topic -> pyasic (LuxOS + BOSminer sims, one hung) and Slurm power caps -> actuations topic."""
    from tests.adapters.util import need

    need("pyasic", "miners")
    from adapters.actuator_config import build_applier, load_actuator_config
    from tests.streams.harness import read_topic

    topics = fresh_topics(names=["actions", "actuations"])
    actions = _actions()
    spike = next(a for a in actions if all(fl.units_online == 0 for fl in a.fleets))

    async def main():
        await _produce(kafka_bootstrap, topics["actions"], actions)
        s19, s21 = await _sims()
        s21[0].firmware = "bosminer"
        try:
            (tmp_path / "s19jpro.csv").write_text("id,host,port,hashrate_th,power_kw,firmware\n" + "".join(
                f"{s.name},127.0.0.1,{s.port},{s.hashrate_th},{s.power_w / 1000},luxos\n" for s in s19))
            (tmp_path / "actuator.toml").write_text(ACTUATOR_TOML.format(s21_0=s21[0].port, s21_1=s21[1].port))
            ap = build_applier(load_actuator_config(tmp_path / "actuator.toml"), miner_driver="pyasic")
            ap.max_age = None   # the scenario's actions are from 2024
            c = ActionConsumer(kafka_bootstrap, ap, group=f"act-{topics.suffix}", actions_topic=topics["actions"],
                               actuations_topic=topics["actuations"])
            await c.run(idle_stop_s=3)
            return [s.log for s in s19 + s21]
        finally:
            for s in s19 + s21:
                await s.stop()

    logs = asyncio.run(asyncio.wait_for(main(), 90))
    acts = read_topic(kafka_bootstrap, topics["actuations"])
    by = {(a["action_id"], a["target"]): a for a in acts}
    assert {a["actuator"] for a in acts if a["target"] in ("s19jpro", "s21")} == {"pyasic"}
    s19_spike, s21_spike = by[(spike.action_id, "s19jpro")], by[(spike.action_id, "s21")]
    # the hung S19 never answers: each read times out at 0.3 s and it is reported, never counted as off
    assert s19_spike["failed_devices"] == ["s19-0"] and s19_spike["status"] == "partial"
    assert "1 not answering" in s19_spike["detail"] and s19_spike["achieved_units"] == 0
    assert s21_spike["status"] == "ok" and s21_spike["achieved_units"] == 0
    assert s21_spike["measured_power_kw"] == pytest.approx(2 * 0.015, abs=0.001)
    assert ("pause", None) in logs[4] and ("curtail", "sess-1,sleep") in logs[5]   # each S21 by its firmware
    # GPU power caps follow the tiers: tier 2 (70 % = 490 W) in the spike, tier 0 after it, once each
    caps = [(a["interval_start"], a["target"], a["detail"].split(":")[0])
            for a in acts if a["target"].startswith("power-cap:")]
    starts = sorted({s for s, _, _ in caps})
    assert len(starts) == 3 and {t for _, t, _ in caps} == {"power-cap:training", "power-cap:batch"}
    assert [d for s, t, d in caps if t == "power-cap:batch"] == ["tier 0", "tier 2", "tier 0"]
    assert by[(spike.action_id, "power-cap:training")]["achieved_units"] == 1
    lines = fake_slurm.read_text().splitlines()
    assert 'scontrol update NodeName=gpu-t[01-04] Extra={"wattmix_power_cap_tier":2,"gpu_power_limit_w":490}' in lines
