"""Miner fleet actuation against simulated miners speaking the cgminer/LuxOS API on loopback,
one of which never answers."""

from __future__ import annotations

import asyncio

import pytest

from adapters.miner_sim import SimMiner
from adapters.miners import CgminerApiDriver, FleetActuator, Miner, MinerRefused, MinerUnreachable, cgminer_command


async def _fleet(specs):
    """Start SimMiners for ``specs`` [(name, hashrate_th, power_w, mode, mining)] -> (sims, Miner list)."""
    sims = [await SimMiner(n, hashrate_th=h, power_w=p, mode=mode, mining=on).start() for n, h, p, mode, on in specs]
    miners = [Miner(s.name, "127.0.0.1", s.port, hashrate_th=s.hashrate_th, power_kw=s.power_w / 1000) for s in sims]
    return sims, miners


def test_the_wire_protocol():
    async def main():
        sim = await SimMiner("m1").start()
        try:
            v = await cgminer_command("127.0.0.1", sim.port, "version")
            s = await cgminer_command("127.0.0.1", sim.port, "summary")
            with pytest.raises(MinerRefused, match="Invalid session"):
                await cgminer_command("127.0.0.1", sim.port, "curtail", "bad,sleep")
            with pytest.raises(MinerRefused, match="Invalid command"):
                await cgminer_command("127.0.0.1", sim.port, "frobnicate")
            return v, s, sim.log
        finally:
            await sim.stop()

    v, s, log = asyncio.run(asyncio.wait_for(main(), 10))
    assert v["VERSION"][0]["API"] and s["SUMMARY"][0]["MHS 5s"] == pytest.approx(100e6)
    assert [c for c, _ in log] == ["version", "summary", "curtail", "frobnicate"]


def test_a_silent_miner_times_out_instead_of_hanging():
    async def main():
        sim = await SimMiner("hung", mode="silent").start()
        try:
            with pytest.raises(MinerUnreachable, match="no answer"):
                await cgminer_command("127.0.0.1", sim.port, "power", timeout_s=0.3)
        finally:
            await sim.stop()

    asyncio.run(asyncio.wait_for(main(), 10))


def test_shed_least_efficient_first_staged_confirmed_and_around_a_dead_miner():
    # 4 S19j Pro (29.5 J/TH) of which one hangs, 3 S21 (17.5 J/TH)
    specs = [(f"s19-{i}", 100, 2950, "silent" if i == 0 else "ok", True) for i in range(4)] + \
            [(f"s21-{i}", 200, 3500, "ok", True) for i in range(3)]

    async def main():
        sims, miners = await _fleet(specs)
        try:
            fa = FleetActuator("mixed", miners, CgminerApiDriver(timeout_s=0.3), step_units=2, step_delay_s=0.05,
                               confirm_timeout_s=3, confirm_poll_s=0.05)
            shed = await fa.set_units(3)     # keep 3 mining, of which the hung one is assumed to be one
            stages_shed = list(fa.stages)
            asleep = [s.name for s in sims if s.mode == "ok" and not s.mining]
            wake = await fa.set_units(5)
            return asleep, shed, stages_shed, wake, fa
        finally:
            for s in sims:
                await s.stop()

    asleep, shed, stages, wake, fa = asyncio.run(asyncio.wait_for(main(), 30))
    # 6 answer and mine, the hung one counts as mining: 7 -> 3 means 4 to sleep: the 3 answering S19s first, then 1 S21
    assert stages == [["s19-1", "s19-2"], ["s19-3", "s21-0"]]
    assert asleep == ["s19-1", "s19-2", "s19-3", "s21-0"]
    assert shed.unknown == ["s19-0"] and shed.achieved_units == 2 and shed.status == "partial"
    assert shed.measured_power_kw == pytest.approx(2 * 3.5 + 4 * 0.015, abs=0.01)
    # wake to 5: most efficient first (the S21), then S19s; 2 mining now -> 3 to wake
    assert fa.stages == [["s21-0", "s19-1"], ["s19-2"]]
    assert wake.achieved_units == 5 and wake.changed_units == 3


def test_a_miner_that_refuses_is_replaced_by_the_next_one():
    specs = [("old-refuses", 100, 3400, "refuse", True), ("old", 100, 3300, "ok", True), ("new", 200, 3500, "ok", True)]

    async def main():
        sims, miners = await _fleet(specs)
        try:
            fa = FleetActuator("f", miners, CgminerApiDriver(timeout_s=1), step_units=5, step_delay_s=0,
                               confirm_timeout_s=2, confirm_poll_s=0.05)
            return await fa.set_units(1), sims
        finally:
            for s in sims:
                await s.stop()

    res, sims = asyncio.run(asyncio.wait_for(main(), 20))
    # 3 -> 1: two to shed from [old-refuses, old, new]; the first stage tries old-refuses + old,
    # old-refuses refuses, so one more is still needed and "new" goes too
    assert res.failed == ["old-refuses"]
    assert [s.mining for s in sims] == [True, False, False]
    assert res.achieved_units == 1 and res.status == "partial"


def test_units_scale_down_to_the_inventory():
    fa = FleetActuator("s19", [Miner(f"m{i}", "127.0.0.1", 1) for i in range(10)], CgminerApiDriver())
    assert fa.target_devices(15000, 15000) == 10
    assert fa.target_devices(7499, 15000) == 4      # floor: never above a ceiling
    assert fa.target_devices(0, 15000) == 0
    fa2 = FleetActuator("s19", [Miner(f"m{i}", "127.0.0.1", 1) for i in range(3)], CgminerApiDriver())
    assert fa2.target_devices(2, 3) == 2
