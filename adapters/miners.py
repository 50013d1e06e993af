"""Miner fleets out: set a fleet to the decided number of units, safely, and say what happened.

:class:`FleetActuator` drives one fleet (a list of :class:`Miner` devices) to a target number
of mining units with a pluggable :class:`MinerDriver`:

1. **read** every device's state (mining or not, power) concurrently (at most
   ``concurrency`` connections); a device that does not answer within ``timeout_s`` is
   *unknown* and is assumed to be **mining** when shedding (it may still draw power: a DR
   obligation must not rely on it) and stays out of the count when reporting;
2. **shed** least efficient first (highest J/TH, then highest power), or **wake** most
   efficient first, in stages of ``step_units`` devices with ``step_delay_s`` between
   stages so the site's load moves in steps (inrush, transformer and PDU limits); a device
   that refuses or does not answer is replaced by the next one in merit order, so the
   target is still reached when it can be;
3. **confirm**: poll the touched devices' power until each slept device reads as curtailed
   by its driver (under the driver's ``sleep_w_max``, or at its power limit; and under the
   fleet's ``sleep_w_max`` when given) and each woken one as mining at ``wake_fraction`` of
   its nominal power or more, up to ``confirm_timeout_s``; the result counts only confirmed
   devices.

The built-in driver :class:`CgminerApiDriver` speaks the cgminer/bmminer JSON API on TCP port
4028 (the API pyasic also speaks) with LuxOS' curtailment commands: ``logon`` / ``session``
for a ``SessionID``, ``curtail`` ``"<session>,sleep"`` / ``"<session>,wakeup"``, ``power``
(``POWER[0].Watts``) and ``summary`` (``SUMMARY[0]["MHS 5s"]``). Stock Antminer firmware has
no curtail command on 4028 (it needs its web API), Braiins OS uses gRPC and Whatsminers an
encrypted privileged API: :class:`PyasicDriver` drives those through ``pyasic`` (extra
``miners``), by firmware: sleep/wake (``stop_mining`` / ``resume_mining``) where the firmware
can, or a power limit (``set_power_limit``, e.g. LuxOS profiles) with ``curtail="power_limit"``.
:func:`make_miner_driver` picks one by name (``cgminer-api`` or ``pyasic``).

Unit scaling: an action speaks in the site's units (``FleetDispatch.units_online`` of
``units_total``); when the inventory holds a different number of devices (a pilot, a
partial inventory) the target is ``floor(units_online / units_total x devices)``: rounding
down never breaks a load ceiling.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from adapters.common import AdapterError, require

log = logging.getLogger("wattmix.adapters.miners")


@dataclass(frozen=True)
class Miner:
    id: str
    host: str
    port: int = 4028
    hashrate_th: float = 100.0
    power_kw: float = 2.95
    firmware: str | None = None    # pyasic driver: this device's firmware (None: the driver's default)

    @property
    def j_per_th(self) -> float:
        return self.power_kw * 1000.0 / self.hashrate_th


class MinerUnreachable(AdapterError):
    pass


class MinerRefused(AdapterError):
    pass


@dataclass(frozen=True)
class MinerState:
    mining: bool       # at full power (counts as a unit); the driver decides from its curtailment mode
    power_w: float


class MinerDriver(Protocol):
    name: str

    async def state(self, m: Miner) -> MinerState: ...
    async def sleep(self, m: Miner) -> None: ...
    async def wake(self, m: Miner) -> None: ...


async def cgminer_command(host: str, port: int, command: str, parameter: str | None = None,
                          timeout_s: float = 3.0) -> dict:
    """One cgminer-API request: JSON over a fresh TCP connection, answer read to EOF."""
    req = {"command": command}
    if parameter is not None:
        req["parameter"] = parameter
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout_s)
    except (OSError, asyncio.TimeoutError) as exc:
        raise MinerUnreachable(f"{host}:{port}: cannot connect: {type(exc).__name__} {exc}") from None
    try:
        writer.write(json.dumps(req).encode())
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), timeout_s)
    except (OSError, asyncio.TimeoutError) as exc:
        raise MinerUnreachable(f"{host}:{port}: no answer to {command!r} in {timeout_s:g} s") from exc
    finally:
        writer.close()
    text = data.decode("utf-8", errors="replace").rstrip("\x00").strip()
    if not text:
        raise MinerUnreachable(f"{host}:{port}: empty answer to {command!r}")
    try:
        body = json.loads(text.replace("}{", "},{"))
    except ValueError as exc:
        raise MinerRefused(f"{host}:{port}: not JSON: {text[:80]!r}") from exc
    status = (body.get("STATUS") or [{}])[0]
    if status.get("STATUS") not in ("S", "I"):
        raise MinerRefused(f"{host}:{port}: {command}: {status.get('Msg', 'error')}")
    return body


class CgminerApiDriver:
    """cgminer/bmminer JSON API on TCP 4028, LuxOS curtail commands (see the module doc)."""

    name = "cgminer-api"

    def __init__(self, timeout_s: float = 3.0, sleep_w_max: float = 100.0) -> None:
        self.timeout_s = timeout_s
        self.sleep_w_max = sleep_w_max
        self._sessions: dict[tuple[str, int], str] = {}

    async def _cmd(self, m: Miner, command: str, parameter: str | None = None) -> dict:
        return await cgminer_command(m.host, m.port, command, parameter, self.timeout_s)

    async def _session(self, m: Miner) -> str:
        key = (m.host, m.port)
        if key not in self._sessions:
            body = await self._cmd(m, "session")
            sid = (body.get("SESSION") or [{}])[0].get("SessionID") or ""
            if not sid:
                body = await self._cmd(m, "logon")
                sid = body["SESSION"][0]["SessionID"]
            self._sessions[key] = sid
        return self._sessions[key]

    async def state(self, m: Miner) -> MinerState:
        body = await self._cmd(m, "power")
        watts = float(body["POWER"][0]["Watts"])
        return MinerState(mining=watts > self.sleep_w_max, power_w=watts)

    async def _curtail(self, m: Miner, what: str) -> None:
        try:
            await self._cmd(m, "curtail", f"{await self._session(m)},{what}")
        except MinerRefused:
            self._sessions.pop((m.host, m.port), None)   # a stale session: one retry with a new one
            await self._cmd(m, "curtail", f"{await self._session(m)},{what}")

    async def sleep(self, m: Miner) -> None:
        await self._curtail(m, "sleep")

    async def wake(self, m: Miner) -> None:
        await self._curtail(m, "wakeup")


#: wattmix firmware names -> pyasic backend classes (``pyasic.miners.backends``); any other
#: backend class name (``"VNish"``, ``"BTMinerV2"``...) is accepted as it is
PYASIC_FIRMWARE = {
    "luxos": "LUXMiner",            # cgminer API on 4028: curtail sleep/wakeup, profiles
    "bosminer": "BOSMiner",         # Braiins OS (legacy): cgminer API pause/resume
    "braiins": "BOSer",             # Braiins OS+: gRPC
    "antminer": "AntminerModern",   # stock Antminer: web API (sleep mode)
    "whatsminer": "BTMinerV3",      # Whatsminer API v3
    "avalon": "AvalonMiner",        # cgminer API ascset softoff/softon
    "vnish": "VNish",
    "epic": "ePIC",
}


class PyasicDriver:
    """Miners through ``pyasic``'s firmware backends (extra ``miners``).

    ``firmware`` names the default backend (a :class:`Miner` may name its own); pyasic's
    RPC object is pointed at ``Miner.port`` (web/gRPC/SSH use pyasic's default ports).
    ``curtail``: ``"sleep"`` = ``stop_mining`` / ``resume_mining`` (a sleeping miner draws
    under ``sleep_w_max``); ``"power_limit"`` = ``set_power_limit`` to ``power_limit_fraction``
    of the miner's nominal power and back to nominal (firmware without a sleep mode; the
    curtailed miner still draws its capped power, which the measured kW shows); ``"auto"``:
    sleep where pyasic says the firmware supports shutdown, else power limit.

    pyasic waits up to 100 s for an answer and reports failures as ``False`` / ``None``:
    every call is bounded by ``timeout_s`` here, and ``False`` becomes :class:`MinerRefused`
    (after one retry with a fresh LuxOS session: a rebooted miner forgets its session).
    """

    name = "pyasic"

    def __init__(self, firmware: str = "luxos", *, curtail: str = "sleep", power_limit_fraction: float = 0.6,
                 timeout_s: float = 3.0, sleep_w_max: float = 100.0) -> None:
        if curtail not in ("sleep", "power_limit", "auto"):
            raise AdapterError(f"curtail must be sleep, power_limit or auto, not {curtail!r}")
        if not 0 < power_limit_fraction < 1:
            raise AdapterError(f"power_limit_fraction must be in (0, 1), not {power_limit_fraction}")
        self.firmware = firmware
        self.curtail = curtail
        self.power_limit_fraction = power_limit_fraction
        self.timeout_s = timeout_s
        self.sleep_w_max = sleep_w_max
        self._devices: dict[tuple[str, int, str], object] = {}
        self.backend_class(firmware)   # fail at configuration time, not at the first action

    @staticmethod
    def backend_class(firmware: str) -> type:
        backends = require("pyasic.miners.backends", "miners", "the pyasic miner driver")
        cls = getattr(backends, PYASIC_FIRMWARE.get(firmware.lower(), firmware), None)
        if not isinstance(cls, type):
            raise AdapterError(f"unknown miner firmware {firmware!r}: one of {sorted(PYASIC_FIRMWARE)} "
                               f"or a pyasic.miners.backends class name")
        return cls

    def _mode(self, m: Miner) -> str:
        if self.curtail != "auto":
            return self.curtail
        return "sleep" if getattr(self.backend_class(m.firmware or self.firmware), "supports_shutdown", False) \
            else "power_limit"

    async def _device(self, m: Miner):
        fw = m.firmware or self.firmware
        key = (m.host, m.port, fw)
        if key not in self._devices:
            # pyasic takes an IP address only
            infos = await asyncio.get_running_loop().getaddrinfo(m.host, m.port, type=socket.SOCK_STREAM)
            dev = self.backend_class(fw)(infos[0][4][0])
            if getattr(dev, "rpc", None) is not None:
                dev.rpc.port = m.port
            self._devices[key] = dev
        return self._devices[key]

    async def _call(self, m: Miner, what: str, fn):
        try:
            return await asyncio.wait_for(fn(), self.timeout_s)
        except asyncio.TimeoutError:
            raise MinerUnreachable(f"{m.host}:{m.port}: no answer to pyasic {what} in {self.timeout_s:g} s") from None
        except AdapterError:
            raise
        except Exception as exc:   # pyasic's APIError, a KeyError on an odd answer...
            raise MinerRefused(f"{m.host}:{m.port}: pyasic {what}: {type(exc).__name__}: {exc}") from exc

    def _curtailed_w_max(self, m: Miner) -> float:
        if self._mode(m) == "sleep":
            return self.sleep_w_max
        # power limited: anything under halfway between the cap and nominal counts as curtailed
        return m.power_kw * 1000.0 * (1 + self.power_limit_fraction) / 2

    async def state(self, m: Miner) -> MinerState:
        dev = await self._device(m)
        watts = await self._call(m, "get_wattage", dev.get_wattage)
        if watts is None:   # pyasic's answer to a refused connection or an unreadable reply
            fw = m.firmware or self.firmware
            raise MinerUnreachable(f"{m.host}:{m.port}: no power reading through pyasic ({fw})")
        return MinerState(mining=float(watts) > self._curtailed_w_max(m), power_w=float(watts))

    async def _set(self, m: Miner, mining: bool) -> None:
        dev = await self._device(m)
        if self._mode(m) == "sleep":
            what, fn = ("resume_mining", dev.resume_mining) if mining else ("stop_mining", dev.stop_mining)
        else:
            watts = round(m.power_kw * 1000.0 * (1.0 if mining else self.power_limit_fraction))
            what, fn = f"set_power_limit({watts})", lambda: dev.set_power_limit(watts)
        if await self._call(m, what, fn):
            return
        rpc = getattr(dev, "rpc", None)
        if getattr(rpc, "session_token", None) is not None:   # LuxOS: retry once with a new session
            rpc.session_token = None
            if await self._call(m, what, fn):
                return
        raise MinerRefused(f"{m.host}:{m.port}: pyasic {what} ({m.firmware or self.firmware}) failed")

    async def sleep(self, m: Miner) -> None:
        await self._set(m, mining=False)

    async def wake(self, m: Miner) -> None:
        await self._set(m, mining=True)


MINER_DRIVERS = ("cgminer-api", "pyasic")


def make_miner_driver(name: str, **options) -> MinerDriver:
    """``cgminer-api`` (built in, LuxOS curtail over the cgminer API) or ``pyasic`` (by firmware)."""
    if name == "cgminer-api":
        allowed = {"timeout_s", "sleep_w_max"}
        cls = CgminerApiDriver
    elif name == "pyasic":
        allowed = {"firmware", "curtail", "power_limit_fraction", "timeout_s", "sleep_w_max"}
        cls = PyasicDriver
    else:
        raise AdapterError(f"unknown miner driver {name!r}: one of {', '.join(MINER_DRIVERS)}")
    extra = sorted(k for k, v in options.items() if v is not None and k not in allowed)
    if extra:
        raise AdapterError(f"miner driver {name}: options {extra} do not apply (it takes {sorted(allowed)})")
    return cls(**{k: v for k, v in options.items() if v is not None})


@dataclass
class FleetResult:
    fleet: str
    requested_units: int
    achieved_units: int
    changed_units: int
    measured_power_kw: float
    failed: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)
    detail: str = ""

    @property
    def status(self) -> str:
        if self.achieved_units == self.requested_units and not self.failed and not self.unknown:
            return "ok"
        if self.achieved_units == self.requested_units or self.changed_units:
            return "partial"
        return "failed"


class FleetActuator:
    def __init__(self, fleet: str, miners: Sequence[Miner], driver: MinerDriver, *, step_units: int = 10,
                 step_delay_s: float = 5.0, concurrency: int = 64, confirm_timeout_s: float = 120.0,
                 confirm_poll_s: float = 2.0, sleep_w_max: float | None = None, wake_fraction: float = 0.5) -> None:
        if len({m.id for m in miners}) != len(miners):
            raise AdapterError(f"fleet {fleet}: duplicate miner ids")
        self.fleet = fleet
        self.miners = list(miners)
        self.driver = driver
        self.step_units = max(1, step_units)
        self.step_delay_s = step_delay_s
        self.sem = asyncio.Semaphore(concurrency)
        self.confirm_timeout_s = confirm_timeout_s
        self.confirm_poll_s = confirm_poll_s
        self.sleep_w_max = sleep_w_max
        self.wake_fraction = wake_fraction
        self.stages: list[list[str]] = []    # what each stage touched (the inrush steps), for reports/tests

    def target_devices(self, units_online: int, units_total: int) -> int:
        if units_total <= 0:
            return 0
        if units_total == len(self.miners):
            return min(units_online, units_total)
        return min(len(self.miners), math.floor(units_online * len(self.miners) / units_total + 1e-9))

    async def _guard(self, coro):
        async with self.sem:
            return await coro

    async def read_states(self, miners: Sequence[Miner]) -> dict[str, MinerState | Exception]:
        res = await asyncio.gather(*(self._guard(self.driver.state(m)) for m in miners), return_exceptions=True)
        return {m.id: r for m, r in zip(miners, res)}

    async def set_units(self, target: int) -> FleetResult:
        target = max(0, min(target, len(self.miners)))
        states = await self.read_states(self.miners)
        on = [m for m in self.miners if isinstance(states[m.id], MinerState) and states[m.id].mining]
        off = [m for m in self.miners if isinstance(states[m.id], MinerState) and not states[m.id].mining]
        unknown = [m for m in self.miners if not isinstance(states[m.id], MinerState)]
        failed: list[str] = []
        touched: dict[str, str] = {}   # id -> "sleep" | "wake"
        self.stages = []
        notes = []
        if unknown:
            notes.append(f"{len(unknown)} not answering (counted as mining when shedding)")

        if len(on) + len(unknown) > target:           # shed least efficient first
            need = len(on) + len(unknown) - target
            queue = sorted(on, key=lambda m: (-m.j_per_th, -m.power_kw, m.id))
            need = await self._staged(queue, need, self.driver.sleep, "sleep", touched, failed)
            if need:
                notes.append(f"could not shed {need} more unit(s)")
        elif len(on) < target:                        # wake most efficient first
            need = target - len(on)
            queue = sorted(off, key=lambda m: (m.j_per_th, m.power_kw, m.id))
            need = await self._staged(queue, need, self.driver.wake, "wake", touched, failed)
            if need:
                notes.append(f"could not wake {need} more unit(s)")

        final = await self._confirm(touched, states)
        achieved = sum(1 for m in self.miners if isinstance(final.get(m.id), MinerState) and final[m.id].mining)
        power_kw = sum(s.power_w for s in final.values() if isinstance(s, MinerState)) / 1000.0
        unconfirmed = [i for i, what in touched.items() if not self._reached(final.get(i), what, i)]
        if unconfirmed:
            notes.append(f"{len(unconfirmed)} not confirmed: {', '.join(unconfirmed[:5])}")
        return FleetResult(self.fleet, target, achieved, len(touched) - len(unconfirmed), round(power_kw, 3),
                           failed=failed + [i for i in unconfirmed if i not in failed],
                           unknown=[m.id for m in unknown], detail="; ".join(notes))

    async def _staged(self, queue: list[Miner], need: int, op, what: str, touched: dict, failed: list) -> int:
        i = 0
        first = True
        while need > 0 and i < len(queue):
            if not first and self.step_delay_s > 0:
                await asyncio.sleep(self.step_delay_s)
            first = False
            stage = queue[i:i + min(self.step_units, need)]
            i += len(stage)
            res = await asyncio.gather(*(self._guard(op(m)) for m in stage), return_exceptions=True)
            self.stages.append([m.id for m in stage])
            for m, r in zip(stage, res):
                if isinstance(r, Exception):
                    failed.append(m.id)
                    log.warning("fleet %s: %s %s failed: %s", self.fleet, what, m.id, r)
                else:
                    touched[m.id] = what
                    need -= 1
        return need

    def _reached(self, s, what: str, mid: str) -> bool:
        if not isinstance(s, MinerState):
            return False
        m = next(x for x in self.miners if x.id == mid)
        if what == "sleep":   # curtailed as the driver sees it (asleep, or at its power limit)
            return not s.mining and (self.sleep_w_max is None or s.power_w <= self.sleep_w_max)
        return s.mining and s.power_w >= self.wake_fraction * m.power_kw * 1000.0

    async def _confirm(self, touched: dict[str, str], before: dict) -> dict:
        """Poll until every touched device reached its state (or timeout); return final states."""
        by_id = {m.id: m for m in self.miners}
        final = dict(before)
        deadline = time.monotonic() + self.confirm_timeout_s
        pending = set(touched)
        while True:
            if pending:
                got = await self.read_states([by_id[i] for i in pending])
                final.update(got)
                pending = {i for i in pending if not self._reached(final.get(i), touched[i], i)}
            if not pending or time.monotonic() >= deadline:
                break
            await asyncio.sleep(self.confirm_poll_s)
        return final
