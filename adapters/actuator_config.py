"""``wattmix actuator --config actuator.toml``: the actuator's own configuration (TOML).

What the machines are and how to reach them, kept out of the site file (which describes the
economics): the miner driver and its options, each fleet's inventory, and the GPU-job
controller with its power-cap targets. ``--miner-driver`` on the command line overrides
``[miners] driver``.

.. code-block:: toml

    site_id = "sample"
    max_age_minutes = 15            # older actions are not replayed onto the machines

    [miners]
    driver = "pyasic"               # "cgminer-api" (built in) | "pyasic" (extra: miners)
    firmware = "luxos"              # pyasic: default firmware; a miner's own `firmware` wins
    curtail = "sleep"               # pyasic: sleep | power_limit | auto
    timeout_s = 3
    step_units = 500                # devices per inrush step
    step_delay_s = 10
    confirm_timeout_s = 120

    [fleets.s19jpro]
    inventory = "s19jpro.csv"       # id,host,port,hashrate_th,power_kw[,firmware]; relative to this file
    [fleets.s21]
    miners = [{ id = "s21-0001", host = "10.1.0.1", hashrate_th = 200, power_kw = 3.5 }]

    [gpu_jobs]
    controller = "slurm"            # "slurm" | "kubernetes"
    job_id_prefix = "slurm-"        # stripped from telemetry job ids before they reach Slurm
    checkpoint_grace_s = 60
    [gpu_jobs.power_cap]
    gpu_max_w = 700
    nodes = { training = ["gpu-a[001-032]"], batch = ["gpu-b[001-016]"] }     # Slurm
    command = ["pdsh", "-w", "{nodes}", "nvidia-smi", "-pl", "{watts}"]       # Slurm, optional
    # selectors = { training = "wattmix.io/gpu-class=training" }               # Kubernetes
"""

from __future__ import annotations

import csv
import tomllib
from datetime import timedelta
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from adapters.actuator import ActionApplier
from adapters.common import AdapterError
from adapters.gpujobs import GPU_MAX_W, GpuJobActuator, KubernetesController, SlurmController
from adapters.miners import FleetActuator, Miner, make_miner_driver


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MinersConfig(_Strict):
    driver: Literal["cgminer-api", "pyasic"] = "cgminer-api"
    firmware: str | None = None
    curtail: Literal["sleep", "power_limit", "auto"] | None = None
    power_limit_fraction: float | None = None
    timeout_s: float = Field(default=3.0, gt=0)
    step_units: int = Field(default=10, ge=1)
    step_delay_s: float = Field(default=5.0, ge=0)
    concurrency: int = Field(default=64, ge=1)
    confirm_timeout_s: float = Field(default=120.0, ge=0)
    confirm_poll_s: float = Field(default=2.0, gt=0)
    wake_fraction: float = Field(default=0.5, gt=0, le=1)


class MinerEntry(_Strict):
    id: str
    host: str
    port: int = 4028
    hashrate_th: float = Field(gt=0)
    power_kw: float = Field(gt=0)
    firmware: str | None = None


class FleetConfig(_Strict):
    inventory: str | None = None
    miners: list[MinerEntry] = Field(default_factory=list)


class PowerCapConfig(_Strict):
    gpu_max_w: float = Field(default=GPU_MAX_W, gt=0)
    nodes: dict[str, list[str]] = Field(default_factory=dict)
    command: list[str] | None = None
    selectors: dict[str, str] = Field(default_factory=dict)


class GpuJobsConfig(_Strict):
    controller: Literal["slurm", "kubernetes"]
    job_id_prefix: str = ""
    # Slurm
    mode: Literal["suspend", "requeue"] = "suspend"
    checkpoint_signal: str | None = "USR1"
    checkpoint_grace_s: float = Field(default=30.0, ge=0)
    # Kubernetes (no api_url: in-cluster service account)
    api_url: str | None = None
    token_file: str | None = None
    kind: Literal["job", "deployment", "statefulset"] = "job"
    default_namespace: str = "default"
    power_cap: PowerCapConfig | None = None


class ActuatorConfig(_Strict):
    site_id: str
    max_age_minutes: float | None = Field(default=15.0, ge=0)
    miners: MinersConfig = Field(default_factory=MinersConfig)
    fleets: dict[str, FleetConfig] = Field(default_factory=dict)
    gpu_jobs: GpuJobsConfig | None = None
    base_dir: Path = Path(".")


def load_actuator_config(path: str | Path) -> ActuatorConfig:
    p = Path(path)
    try:
        raw = tomllib.loads(p.read_text())
        return ActuatorConfig(**raw, base_dir=p.resolve().parent)
    except (OSError, tomllib.TOMLDecodeError, ValidationError) as exc:
        raise AdapterError(f"actuator config {p}: {exc}") from exc


def read_inventory(path: Path) -> list[Miner]:
    """CSV with a header: ``id,host,port,hashrate_th,power_kw[,firmware]``."""
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    try:
        return [Miner(r["id"], r["host"], int(r.get("port") or 4028), float(r["hashrate_th"]), float(r["power_kw"]),
                      r.get("firmware") or None) for r in rows]
    except (KeyError, ValueError) as exc:
        raise AdapterError(f"miner inventory {path}: {type(exc).__name__}: {exc}") from exc


def build_applier(cfg: ActuatorConfig, *, miner_driver: str | None = None) -> ActionApplier:
    mc = cfg.miners
    name = miner_driver or mc.driver
    # firmware / curtail options stay in the file when --miner-driver switches to cgminer-api
    pyasic_opts = dict(firmware=mc.firmware, curtail=mc.curtail, power_limit_fraction=mc.power_limit_fraction)
    driver = make_miner_driver(name, timeout_s=mc.timeout_s, **(pyasic_opts if name == "pyasic" else {}))
    fleets = {}
    for name, fc in cfg.fleets.items():
        miners = [Miner(**m.model_dump()) for m in fc.miners]
        if fc.inventory:
            miners += read_inventory(cfg.base_dir / fc.inventory)
        fleets[name] = FleetActuator(name, miners, driver, step_units=mc.step_units, step_delay_s=mc.step_delay_s,
                                     concurrency=mc.concurrency, confirm_timeout_s=mc.confirm_timeout_s,
                                     confirm_poll_s=mc.confirm_poll_s, wake_fraction=mc.wake_fraction)
    jobs = None
    if cfg.gpu_jobs is not None:
        gj = cfg.gpu_jobs
        cap = gj.power_cap or PowerCapConfig()
        if gj.controller == "slurm":
            ctl = SlurmController(mode=gj.mode, checkpoint_signal=gj.checkpoint_signal,
                                  checkpoint_grace_s=gj.checkpoint_grace_s, cap_nodes=cap.nodes,
                                  gpu_max_w=cap.gpu_max_w, cap_command=cap.command)
        else:
            kw = dict(kind=gj.kind, default_namespace=gj.default_namespace, cap_selectors=cap.selectors,
                      gpu_max_w=cap.gpu_max_w)
            if gj.api_url is None:
                ctl = KubernetesController.in_cluster(**kw)
            else:
                token = (cfg.base_dir / gj.token_file).read_text().strip() if gj.token_file else None
                ctl = KubernetesController(gj.api_url, token=token, **kw)
        prefix = gj.job_id_prefix
        jobs = GpuJobActuator(ctl, resolve=lambda j: j.removeprefix(prefix) if j.startswith(prefix) else None)
    max_age = timedelta(minutes=cfg.max_age_minutes) if cfg.max_age_minutes is not None else None
    return ActionApplier(cfg.site_id, fleets, jobs, max_age=max_age)


def run_actuator_cli(args) -> int:
    """``wattmix actuator``: consume the actions topic until SIGINT/SIGTERM."""
    import asyncio
    import logging
    import signal

    from adapters.actuator import ActionConsumer

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    applier = build_applier(load_actuator_config(args.config), miner_driver=args.miner_driver)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await ActionConsumer(args.kafka, applier, group=args.group).run(stop)

    asyncio.run(main())
    return 0
