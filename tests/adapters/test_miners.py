"""Miner fleet actuation against simulated miners speaking the cgminer API on loopback (LuxOS and
BOSminer flavours), one of which never answers; with the built-in driver and with pyasic's
firmware backends (sleep/wake and power limit)."""

from __future__ import annotations

import asyncio

import pytest

from adapters.miner_sim import SimMiner
from adapters.common import AdapterError
from adapters.miners import (CgminerApiDriver, FleetActuator, Miner, MinerRefused, MinerUnreachable, PyasicDriver,
                             cgminer_command, make_miner_driver)
from tests.adapters.util import need


def _cgminer(timeout_s):
    return CgminerApiDriver(timeout_s=timeout_s)


def _pyasic(timeout_s):
    need("pyasic", "miners")
    return PyasicDriver("luxos", timeout_s=timeout_s)


DRIVERS = pytest.mark.parametrize("make_driver", [_cgminer, _pyasic], ids=["cgminer-api", "pyasic"])


async def _fleet(specs, firmware="luxos"):
    """Start SimMiners for ``specs`` [(name, hashrate_th, power_w, mode, mining)] -> (sims, Miner list)."""
    fw = firmware if callable(firmware) else (lambda _name: firmware)
    sims = [await SimMiner(n, hashrate_th=h, power_w=p, mode=mode, mining=on, firmware=fw(n)).start()
            for n, h, p, mode, on in specs]
    miners = [Miner(s.name, "127.0.0.1", s.port, hashrate_th=s.hashrate_th, power_kw=s.power_w / 1000,
                    firmware=s.firmware) for s in sims]
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


@DRIVERS
def test_shed_least_efficient_first_staged_confirmed_and_around_a_dead_miner(make_driver):
    # 4 S19j Pro (29.5 J/TH) of which one hangs, 3 S21 (17.5 J/TH)
    specs = [(f"s19-{i}", 100, 2950, "silent" if i == 0 else "ok", True) for i in range(4)] + \
            [(f"s21-{i}", 200, 3500, "ok", True) for i in range(3)]

    async def main():
        sims, miners = await _fleet(specs)
        try:
            fa = FleetActuator("mixed", miners, make_driver(0.3), step_units=2, step_delay_s=0.05,
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


@DRIVERS
def test_a_miner_that_refuses_is_replaced_by_the_next_one(make_driver):
    specs = [("old-refuses", 100, 3400, "refuse", True), ("old", 100, 3300, "ok", True), ("new", 200, 3500, "ok", True)]

    async def main():
        sims, miners = await _fleet(specs)
        try:
            fa = FleetActuator("f", miners, make_driver(1), step_units=5, step_delay_s=0,
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


def test_pyasic_drives_each_miner_by_its_firmware():
    """LuxOS (curtail over a session) and BOSminer (pause/resume) in one fleet, plus a LuxOS miner
    that rebooted and forgot the session pyasic holds."""
    need("pyasic", "miners")
    specs = [("lux-old", 100, 3250, "ok", True), ("bos", 100, 3000, "ok", True), ("lux-new", 200, 3500, "ok", True)]

    async def main():
        sims, miners = await _fleet(specs, firmware=lambda n: "bosminer" if n == "bos" else "luxos")
        try:
            fa = FleetActuator("f", miners, PyasicDriver("luxos", timeout_s=1), step_units=1, step_delay_s=0,
                               confirm_timeout_s=3, confirm_poll_s=0.05)
            shed = await fa.set_units(1)
            sims[0].session = "sess-after-reboot"
            woken = await fa.set_units(3)
            return shed, woken, sims
        finally:
            for s in sims:
                await s.stop()

    shed, woken, sims = asyncio.run(asyncio.wait_for(main(), 30))
    assert (shed.achieved_units, shed.changed_units, shed.status) == (1, 2, "ok")
    assert shed.measured_power_kw == pytest.approx(3.5 + 2 * 0.015, abs=0.001)
    lux, bos = sims[0].log, sims[1].log
    assert ("curtail", "sess-1,sleep") in lux and ("pause", None) in bos and ("resume", None) in bos
    assert not any(c == "curtail" for c, _ in bos)
    # the stale session is refused once, then pyasic logs on again and the wake goes through
    stale = lux.index(("curtail", "sess-1,wakeup"))
    assert lux[stale + 1:stale + 3] == [("session", None), ("curtail", "sess-after-reboot,wakeup")]
    assert (woken.achieved_units, woken.status) == (3, "ok") and all(s.mining for s in sims)


def test_pyasic_power_limit_caps_least_efficient_first_and_reports_the_capped_draw():
    """Firmware without a sleep mode: curtail = the lowest profile at or under 60 % of nominal."""
    need("pyasic", "miners")
    specs = [(f"s19-{i}", 100, 2950, "ok", True) for i in range(3)] + [("s21-0", 200, 3500, "ok", True)]

    async def main():
        sims, miners = await _fleet(specs)
        try:
            drv = PyasicDriver("luxos", curtail="power_limit", power_limit_fraction=0.6, timeout_s=1)
            fa = FleetActuator("f", miners, drv, step_units=2, step_delay_s=0, confirm_timeout_s=3, confirm_poll_s=0.05)
            capped = await fa.set_units(2)
            profiles = [s.profile for s in sims]
            back = await fa.set_units(4)
            return capped, profiles, back, [s.profile for s in sims], [s.atm_enabled for s in sims]
        finally:
            for s in sims:
                await s.stop()

    capped, profiles, back, profiles_after, atm = asyncio.run(asyncio.wait_for(main(), 30))
    # 4 -> 2 at full power: two S19 (29.5 J/TH) go to the "-4" profile (60 % = 1,770 W), and stay powered
    assert profiles == ["-4", "-4", "default", "default"]
    assert (capped.achieved_units, capped.changed_units, capped.status) == (2, 2, "ok")
    assert capped.measured_power_kw == pytest.approx(2 * 1.77 + 2.95 + 3.5, abs=0.001)
    assert profiles_after == ["default"] * 4 and back.achieved_units == 4
    assert atm == [True] * 4   # pyasic turns LuxOS' ATM off for the profile change, then on again


def test_pyasic_a_silent_miner_times_out_within_the_drivers_bound():
    need("pyasic", "miners")
    import time

    async def main():
        sim = await SimMiner("hung", mode="silent").start()
        m = Miner("hung", "127.0.0.1", sim.port)
        try:
            t0 = time.monotonic()
            with pytest.raises(MinerUnreachable, match="no answer to pyasic get_wattage in 0.3 s"):
                await PyasicDriver(timeout_s=0.3).state(m)
            with pytest.raises(MinerUnreachable, match="no answer to pyasic stop_mining"):
                await PyasicDriver(timeout_s=0.3).sleep(m)
            return time.monotonic() - t0
        finally:
            await sim.stop()

    # pyasic itself would wait 100 s per read
    assert asyncio.run(asyncio.wait_for(main(), 10)) < 3


def test_driver_choice_by_name():
    assert isinstance(make_miner_driver("cgminer-api", timeout_s=2), CgminerApiDriver)
    with pytest.raises(AdapterError, match="unknown miner driver 'luxos'"):
        make_miner_driver("luxos")
    with pytest.raises(AdapterError, match=r"options \['firmware'\] do not apply"):
        make_miner_driver("cgminer-api", firmware="luxos")
    need("pyasic", "miners")
    d = make_miner_driver("pyasic", firmware="bosminer", curtail="auto", timeout_s=2)
    assert isinstance(d, PyasicDriver) and d.backend_class("bosminer").__name__ == "BOSMiner"
    assert d._mode(Miner("m", "127.0.0.1")) == "sleep"   # pyasic: Braiins OS supports shutdown
    with pytest.raises(AdapterError, match="unknown miner firmware 'nosuchfw'"):
        make_miner_driver("pyasic", firmware="nosuchfw")
