"""A simulated ASIC miner that speaks the cgminer/bmminer JSON API on TCP (LuxOS flavour).

For tests and demos of :mod:`adapters.miners`: the real protocol, on loopback. One request
per connection: the client sends ``{"command": "...", "parameter": "..."}``, the miner answers
one JSON document (with a trailing NUL byte, as cgminer does) and closes the connection.

Commands: ``version``, ``summary`` (``MHS 5s``), ``power`` (``Watts``), ``logon`` /
``session`` (a ``SessionID``), ``curtail`` with ``"<session>,sleep"`` / ``"<session>,wakeup"``
(LuxOS' curtailment command; a wrong session is refused with ``STATUS: E``). Power ramps
linearly over ``ramp_s`` seconds after a wake (inrush is why the actuator stages).

``mode``: ``"ok"``, ``"silent"`` (accepts the connection and never answers: a hung
controller board), ``"refuse"`` (answers every curtail with an error).
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field


@dataclass
class SimMiner:
    name: str
    hashrate_th: float = 100.0
    power_w: float = 2950.0
    idle_w: float = 15.0
    mining: bool = True
    mode: str = "ok"
    ramp_s: float = 0.0
    session: str = "sess-1"
    port: int = 0
    log: list[tuple[str, str | None]] = field(default_factory=list)
    _since: float = field(default_factory=time.monotonic)
    _server: asyncio.base_events.Server | None = None

    def current_power_w(self) -> float:
        if not self.mining:
            return self.idle_w
        if self.ramp_s <= 0:
            return self.power_w
        frac = min((time.monotonic() - self._since) / self.ramp_s, 1.0)
        return self.idle_w + frac * (self.power_w - self.idle_w)

    def _status(self, ok: bool, msg: str, code: int = 0) -> list[dict]:
        return [{"STATUS": "S" if ok else "E", "When": int(time.time()), "Code": code, "Msg": msg,
                 "Description": f"LUXminer sim {self.name}"}]

    def answer(self, cmd: str, param: str | None) -> dict:
        self.log.append((cmd, param))
        if cmd == "version":
            return {"STATUS": self._status(True, "LUXminer versions"),
                    "VERSION": [{"API": "3.7", "LUXminer": "2024.7.18.184533-a0f3b6e1", "Type": "Antminer S19j Pro"}]}
        if cmd == "summary":
            mhs = self.hashrate_th * 1e6 * (self.current_power_w() - self.idle_w) / max(self.power_w - self.idle_w, 1)
            return {"STATUS": self._status(True, "Summary"),
                    "SUMMARY": [{"Elapsed": 1000, "MHS av": mhs, "MHS 5s": mhs, "Accepted": 10, "Rejected": 0}]}
        if cmd == "power":
            return {"STATUS": self._status(True, "Power"), "POWER": [{"PSU": True, "Watts": round(self.current_power_w())}]}
        if cmd in ("logon", "session"):
            return {"STATUS": self._status(True, "Session"), "SESSION": [{"SessionID": self.session}]}
        if cmd == "curtail":
            sess, _, what = (param or "").partition(",")
            if sess != self.session:
                return {"STATUS": self._status(False, "Invalid session id", 14)}
            if self.mode == "refuse":
                return {"STATUS": self._status(False, "Curtail not allowed", 45)}
            if what == "sleep":
                self.mining = False
            elif what == "wakeup":
                if not self.mining:
                    self._since = time.monotonic()
                self.mining = True
            else:
                return {"STATUS": self._status(False, f"Invalid curtail mode {what!r}", 45)}
            return {"STATUS": self._status(True, f"Curtail {what}")}
        return {"STATUS": self._status(False, f"Invalid command '{cmd}'", 14)}

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
                reply = {"STATUS": self._status(False, "Invalid JSON", 23)}
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
