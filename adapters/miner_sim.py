"""A simulated ASIC miner that speaks the cgminer/bmminer JSON API on TCP (LuxOS or BOSminer flavour).

For tests and demos of :mod:`adapters.miners`: the real protocol, on loopback, as the
``cgminer-api`` driver and pyasic's ``LUXMiner`` / ``BOSMiner`` backends speak it. One request
per connection: the client sends ``{"command": "...", "parameter": "..."}``, the miner answers
one JSON document (with a trailing NUL byte, as cgminer does) and closes the connection.
``"a+b"`` is a multicommand, answered as ``{"a": [answer], "b": [answer]}``.

Both flavours: ``version``, ``summary`` (``MHS 5s``), ``devs``, ``pools``.
``firmware="luxos"``: ``power`` (``Watts``), ``logon`` / ``session`` (a ``SessionID``),
``curtail`` ``"<session>,sleep"`` / ``"<session>,wakeup"``, and the power profiles pyasic's
``set_power_limit`` uses: ``config`` (active ``Profile``), ``profiles``, ``atm`` / ``atmset``,
``profileset "<session>,<profile>"``, ``tempctrl``, ``fans``, ``groups``; a wrong session is
refused with ``STATUS: E``. ``firmware="bosminer"``: ``tunerstatus``
(``ApproximateMinerPowerConsumption``), ``pause`` / ``resume``. Power ramps linearly over
``ramp_s`` seconds after a wake (inrush is why the actuator stages).

``mode``: ``"ok"``, ``"silent"`` (accepts the connection and never answers: a hung
controller board), ``"refuse"`` (answers every curtail, pause/resume and profile change with
an error).
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field


#: LuxOS-style profiles relative to "default": (name, power fraction). Lower clocks are more
#: efficient, so hashrate falls slower than power (hashrate ~ power^0.8: -40 % W = -33.5 % TH/s).
LUXOS_PROFILE_STEPS = (("default", 1.0), ("-1", 0.9), ("-2", 0.8), ("-3", 0.7), ("-4", 0.6))


@dataclass
class SimMiner:
    name: str
    hashrate_th: float = 100.0
    power_w: float = 2950.0       # at the "default" profile
    idle_w: float = 15.0
    mining: bool = True
    mode: str = "ok"
    ramp_s: float = 0.0
    session: str = "sess-1"
    firmware: str = "luxos"       # "luxos" | "bosminer"
    profile: str = "default"
    atm_enabled: bool = True
    port: int = 0
    log: list[tuple[str, str | None]] = field(default_factory=list)
    _since: float = field(default_factory=time.monotonic)
    _server: asyncio.base_events.Server | None = None

    def profiles(self) -> dict[str, tuple[float, float]]:
        """profile name -> (watts, TH/s)"""
        return {n: (round(self.power_w * f), self.hashrate_th * f ** 0.8) for n, f in LUXOS_PROFILE_STEPS}

    def current_power_w(self) -> float:
        if not self.mining:
            return self.idle_w
        full = self.profiles()[self.profile][0]
        if self.ramp_s <= 0:
            return full
        frac = min((time.monotonic() - self._since) / self.ramp_s, 1.0)
        return self.idle_w + frac * (full - self.idle_w)

    def current_hashrate_th(self) -> float:
        watts, th = self.profiles()[self.profile]
        return th * (self.current_power_w() - self.idle_w) / max(watts - self.idle_w, 1)

    def _status(self, ok: bool, msg: str, code: int = 0) -> list[dict]:
        what = "LUXminer" if self.firmware == "luxos" else "BOSminer"
        return [{"STATUS": "S" if ok else "E", "When": int(time.time()), "Code": code, "Msg": msg,
                 "Description": f"{what} sim {self.name}"}]

    def _ok(self, msg: str, **body) -> dict:
        return {"STATUS": self._status(True, msg), **body}

    def _err(self, msg: str, code: int = 45) -> dict:
        return {"STATUS": self._status(False, msg, code)}

    def _wake(self) -> None:
        if not self.mining:
            self._since = time.monotonic()
        self.mining = True

    def answer(self, cmd: str, param: str | None) -> dict:
        if "+" in cmd:   # cgminer multicommand
            return {c: [self.answer(c, param)] for c in cmd.split("+")}
        self.log.append((cmd, param))
        mhs = self.current_hashrate_th() * 1e6
        fw_version = {"LUXminer": "2024.7.18.184533-a0f3b6e1"} if self.firmware == "luxos" else {"BOSminer": "0.2.0"}
        common = {
            "version": lambda: self._ok("versions", VERSION=[{"API": "3.7", "Type": "Antminer S19j Pro", **fw_version}]),
            "summary": lambda: self._ok("Summary", SUMMARY=[
                {"Elapsed": 1000, "MHS av": mhs, "MHS 5s": mhs, "Accepted": 10, "Rejected": 0}]),
            "devs": lambda: self._ok("3 ASC(s)", DEVS=[
                {"ASC": i, "Enabled": "Y", "Status": "Alive" if self.mining else "Disabled", "MHS 5s": mhs / 3}
                for i in range(3)]),
            "pools": lambda: self._ok("1 Pool(s)", POOLS=[
                {"POOL": 0, "URL": "stratum+tcp://pool.example:3333", "User": "wattmix.sim", "GROUP": 0}]),
        }
        if cmd in common:
            return common[cmd]()
        if self.firmware == "bosminer":
            return self._answer_bosminer(cmd)
        return self._answer_luxos(cmd, param)

    def _answer_bosminer(self, cmd: str) -> dict:
        if cmd == "tunerstatus":
            return self._ok("Tuner Status", TUNERSTATUS=[
                {"PowerLimit": self.power_w, "ApproximateMinerPowerConsumption": round(self.current_power_w())}])
        if cmd in ("pause", "resume"):
            if self.mode == "refuse":
                return self._err(f"{cmd.capitalize()} not allowed")
            if cmd == "pause":
                self.mining = False
                return self._ok("Pause", PAUSE=[{"Paused": True}])
            self._wake()
            return self._ok("Resume", RESUME=[{"Resumed": True}])
        return self._err(f"Invalid command '{cmd}'", 14)

    def _answer_luxos(self, cmd: str, param: str | None) -> dict:
        if cmd == "power":
            return self._ok("Power", POWER=[{"PSU": True, "Watts": round(self.current_power_w())}])
        if cmd in ("logon", "session"):
            return self._ok("Session", SESSION=[{"SessionID": self.session}])
        if cmd == "config":
            return self._ok("Config", CONFIG=[{"Profile": self.profile, "IsTuning": False,
                                               "MACAddr": "02:00:00:00:00:01"}])
        if cmd == "profiles":
            return self._ok("Profiles", PROFILES=[
                {"Profile Name": n, "Watts": w, "Hashrate": th, "IsTuned": True,
                 "Frequency": round(525 * w / self.power_w), "Voltage": 13.2} for n, (w, th) in self.profiles().items()])
        if cmd == "atm":
            return self._ok("ATM configuration values", ATM=[{"Enabled": self.atm_enabled}])
        if cmd == "tempctrl":
            return self._ok("Temp control", TEMPCTRL=[{"Mode": "Automatic", "Target": 75, "Hot": 85, "Dangerous": 95}])
        if cmd == "fans":
            return self._ok("Fans", FANS=[{"ID": i, "RPM": 4200, "Speed": 60} for i in range(4)],
                            FANCTRL=[{"MinFans": 4}])
        if cmd == "groups":
            return self._ok("Groups", GROUPS=[{"GROUP": 0, "Name": "default", "Quota": 1}])
        if cmd not in ("curtail", "atmset", "profileset"):
            return self._err(f"Invalid command '{cmd}'", 14)
        # privileged: "<session>,<argument>"
        sess, _, arg = (param or "").partition(",")
        if sess != self.session:
            return self._err("Invalid session id", 14)
        if cmd == "atmset":
            for kv in arg.split(","):
                if kv.startswith("enabled="):
                    self.atm_enabled = kv.endswith("true")
            return self._ok("Advanced Thermal Management configuration updated")
        if self.mode == "refuse":
            return self._err(f"{cmd} not allowed")
        if cmd == "profileset":
            if arg not in self.profiles():
                return self._err(f"Invalid profile {arg!r}")
            if self.atm_enabled:   # ATM owns the profile; pyasic switches it off before profileset
                return self._err("Cannot set profile while ATM is enabled")
            self.profile = arg
            return self._ok("Profile set", PROFILE=[{"Profile": arg}])
        if arg == "sleep":
            self.mining = False
        elif arg == "wakeup":
            self._wake()
        else:
            return self._err(f"Invalid curtail mode {arg!r}")
        return self._ok(f"Curtail {arg}")

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            data = await asyncio.wait_for(reader.read(65536), 5)
            if self.mode == "silent":
                await asyncio.sleep(3600)   # never answers; the client's timeout must save it
                return
            try:
                req = json.loads(data.decode().rstrip("\x00"))
                reply = self.answer(str(req.get("command", "")), req.get("parameter"))
            except (ValueError, AttributeError):
                reply = self._err("Invalid JSON", 23)
            writer.write(json.dumps(reply).encode() + b"\x00")
            await writer.drain()
        except (asyncio.TimeoutError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def start(self, host: str = "127.0.0.1") -> "SimMiner":
        self._server = await asyncio.start_server(self._handle, host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
