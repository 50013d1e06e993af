"""GPU telemetry in: DCGM-exporter (Prometheus text), NVML, and nvidia-smi logs -> GpuTelemetry.

The dispatcher needs, per GPU *job*, its class, size, power and utilization
(:class:`~schemas.feeds.GpuTelemetry`). GPUs report per device; :class:`JobMap` says which
job a GPU belongs to and which class that job is.

Sources:

* **DCGM-exporter** (the NVIDIA DCGM Prometheus exporter, usual on Kubernetes GPU nodes):
  :func:`parse_prometheus_text` reads the exposition format; :func:`telemetry_from_dcgm`
  turns ``DCGM_FI_DEV_POWER_USAGE`` (W) and ``DCGM_FI_DEV_GPU_UTIL`` (%) per GPU (labels
  ``gpu``, ``UUID``, ``Hostname``, and with pod mapping enabled ``namespace``/``pod``/
  ``container``) into one record per job; :class:`DcgmExporterCollector` scrapes one or more
  exporter URLs (``http://node:9400/metrics``) on a schedule and publishes. No extra needed
  (aiohttp is a core dependency).
* **NVML** (``pip install 'wattmix[nvml]'``, the ``nvidia-ml-py`` package, imported as
  ``pynvml``): :class:`NvmlCollector` reads every local GPU's power
  (``nvmlDeviceGetPowerUsage``, mW) and utilization (``nvmlDeviceGetUtilizationRates``) on a
  host without DCGM. GPUs are identified as ``<hostname>:<index>`` and by UUID.
* **nvidia-smi CSV logs** (replay): :func:`replay_nvidia_smi` publishes what
  ``readers.nvidia_smi.read_nvidia_smi`` reads (one log = one node = one job; see there).

GPU -> job (:class:`JobMap`), first match wins:

1. ``by_gpu``: an explicit map from ``UUID`` or ``"<Hostname>:<gpu index>"`` to a job id
   (Slurm sites: fill it from ``scontrol show job -d`` / ``SLURM_JOB_GPUS``);
2. ``label``: a label of the sample naming the job (``hpc_job``, ``job``...); the default
   ``"pod"`` gives ``"<namespace>/<pod>"`` (DCGM-exporter's Kubernetes mapping);
3. otherwise the GPU is *unassigned* (idle or not ours) and is not reported.

Job -> class: ``classes`` maps a job id or a namespace to ``inference`` / ``training`` /
``batch``; else the value of the ``class_label`` label (default ``wattmix_class``, e.g. a pod
label exported by DCGM); else ``default_class`` (``training``).

Per job: ``gpus`` = number of its GPUs in the scrape, ``power_kw`` = sum of their power / 1000
(board power: node CPUs/fans are not in it), ``utilization`` = mean GPU utilization / 100,
``state`` = ``running``, ``observed_at`` = the samples' timestamp if the exporter gave one,
else the scrape time.
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from types import ModuleType
from typing import Any

from schemas.base import GPU_CLASSES, GpuClass
from schemas.feeds import GpuTelemetry
from schemas.topics import GPU_TELEMETRY

from adapters.common import AdapterError, Publisher, require, utcnow

log = logging.getLogger("wattmix.adapters.gpu")

POWER_METRIC = "DCGM_FI_DEV_POWER_USAGE"   # W
UTIL_METRIC = "DCGM_FI_DEV_GPU_UTIL"       # %


# --------------------------------------------------------------------------- Prometheus text

@dataclass(frozen=True)
class Sample:
    name: str
    labels: Mapping[str, str]
    value: float
    timestamp_ms: int | None = None


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})?\s+(\S+)(?:\s+(-?\d+))?\s*$")
_LABEL = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*(,|$)')


def _unescape(v: str) -> str:
    return v.replace("\\\\", "\x00").replace('\\"', '"').replace("\\n", "\n").replace("\x00", "\\")


def _labels(body: str) -> dict[str, str]:
    out: dict[str, str] = {}
    pos = 0
    while pos < len(body):
        m = _LABEL.match(body, pos)
        if not m:
            raise ValueError(f"bad label set near {body[pos:pos + 40]!r}")
        out[m.group(1)] = _unescape(m.group(2))
        pos = m.end()
    return out


def parse_prometheus_text(text: str, names: Iterable[str] | None = None) -> list[Sample]:
    """Parse the Prometheus text exposition format (0.0.4); keep only ``names`` if given.

    Comment (``#``) and blank lines are skipped; a malformed line raises ValueError naming it.
    """
    wanted = set(names) if names is not None else None
    out: list[Sample] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        m = _SAMPLE.match(s)
        if not m:
            raise ValueError(f"line {lineno}: not a Prometheus sample: {s[:80]!r}")
        name = m.group(1)
        if wanted is not None and name not in wanted:
            continue
        try:
            labels = _labels(m.group(2)[1:-1]) if m.group(2) else {}
            value = float(m.group(3))
        except ValueError as exc:
            raise ValueError(f"line {lineno}: {exc}") from None
        out.append(Sample(name, labels, value, int(m.group(4)) if m.group(4) else None))
    return out


# --------------------------------------------------------------------------- GPU -> job

@dataclass(frozen=True)
class JobMap:
    """Which job each GPU runs, and each job's class (see the module doc)."""

    by_gpu: Mapping[str, str] = field(default_factory=dict)
    label: str | None = "pod"
    classes: Mapping[str, GpuClass] = field(default_factory=dict)
    class_label: str | None = "wattmix_class"
    default_class: GpuClass = "training"

    def job_for(self, labels: Mapping[str, str]) -> str | None:
        uuid = labels.get("UUID") or labels.get("uuid")
        if uuid and uuid in self.by_gpu:
            return self.by_gpu[uuid]
        host, gpu = labels.get("Hostname") or labels.get("hostname"), labels.get("gpu")
        if host is not None and gpu is not None and f"{host}:{gpu}" in self.by_gpu:
            return self.by_gpu[f"{host}:{gpu}"]
        if self.label and labels.get(self.label):
            v = labels[self.label]
            if self.label == "pod" and labels.get("namespace"):
                return f"{labels['namespace']}/{v}"
            return v
        return None

    def class_for(self, job_id: str, labels: Mapping[str, str]) -> GpuClass:
        if job_id in self.classes:
            return self.classes[job_id]
        ns = labels.get("namespace")
        if ns and ns in self.classes:
            return self.classes[ns]
        if self.class_label and labels.get(self.class_label) in GPU_CLASSES:
            return labels[self.class_label]  # type: ignore[return-value]
        return self.default_class


@dataclass(frozen=True)
class GpuReading:
    """One GPU's power and utilization, with the labels that identify it."""

    labels: Mapping[str, str]
    power_w: float
    util_pct: float
    at: datetime | None = None


def telemetry_from_readings(readings: Iterable[GpuReading], *, site_id: str, jobs: JobMap,
                            observed_at: datetime) -> list[GpuTelemetry]:
    """Aggregate GPU readings into one GpuTelemetry per job (unassigned GPUs are dropped)."""
    acc: dict[str, dict[str, Any]] = {}
    for r in readings:
        job = jobs.job_for(r.labels)
        if job is None:
            continue
        a = acc.setdefault(job, {"n": 0, "w": 0.0, "u": 0.0, "labels": r.labels, "at": r.at})
        a["n"] += 1
        a["w"] += max(r.power_w, 0.0)
        a["u"] += min(max(r.util_pct, 0.0), 100.0)
        if r.at is not None and (a["at"] is None or r.at > a["at"]):
            a["at"] = r.at
    out = []
    for job, a in sorted(acc.items()):
        out.append(GpuTelemetry(site_id=site_id, job_id=job[:128], gpu_class=jobs.class_for(job, a["labels"]),
                                gpus=a["n"], power_kw=a["w"] / 1000.0, utilization=a["u"] / a["n"] / 100.0,
                                state="running", observed_at=a["at"] or observed_at))
    return out


def _gpu_key(labels: Mapping[str, str]) -> tuple:
    return (labels.get("Hostname", ""), labels.get("UUID", ""), labels.get("gpu", ""))


def readings_from_dcgm(samples: Sequence[Sample]) -> list[GpuReading]:
    """Join the power and utilization samples of each GPU (by Hostname, UUID, gpu)."""
    power: dict[tuple, Sample] = {}
    util: dict[tuple, Sample] = {}
    for s in samples:
        if s.name == POWER_METRIC:
            power[_gpu_key(s.labels)] = s
        elif s.name == UTIL_METRIC:
            util[_gpu_key(s.labels)] = s
    out = []
    for k, p in power.items():
        u = util.get(k)
        ts = max((x.timestamp_ms for x in (p, u) if x is not None and x.timestamp_ms is not None), default=None)
        at = datetime.fromtimestamp(ts / 1000, tz=timezone.utc) if ts is not None else None
        out.append(GpuReading(p.labels, p.value, u.value if u is not None else 0.0, at))
    return out


def telemetry_from_dcgm(text: str, *, site_id: str, jobs: JobMap, observed_at: datetime) -> list[GpuTelemetry]:
    """DCGM-exporter ``/metrics`` text -> one GpuTelemetry per job."""
    samples = parse_prometheus_text(text, names=(POWER_METRIC, UTIL_METRIC))
    return telemetry_from_readings(readings_from_dcgm(samples), site_id=site_id, jobs=jobs, observed_at=observed_at)


class DcgmExporterCollector:
    """Scrape DCGM-exporter endpoints and publish per-job telemetry.

    ``urls``: the exporters' ``/metrics`` URLs (one per GPU node). A node that does not
    answer within ``timeout_s`` is logged and skipped for that round (its jobs are simply not
    reported; the engine keeps their last sample). ``clock`` stamps records without an
    exporter timestamp.
    """

    def __init__(self, urls: Sequence[str], *, site_id: str, publisher: Publisher, jobs: JobMap | None = None,
                 timeout_s: float = 5.0, clock: Callable[[], datetime] = utcnow) -> None:
        self.urls = list(urls)
        self.site_id = site_id
        self.publisher = publisher
        self.jobs = jobs or JobMap()
        self.timeout_s = timeout_s
        self.clock = clock
        self.errors: dict[str, str] = {}

    async def scrape(self) -> list[GpuTelemetry]:
        import aiohttp

        now = self.clock()
        readings: list[GpuReading] = []
        timeout = aiohttp.ClientTimeout(total=self.timeout_s)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            async def one(url: str) -> None:
                try:
                    async with http.get(url) as resp:
                        if resp.status != 200:
                            raise AdapterError(f"HTTP {resp.status}")
                        text = await resp.text()
                    readings.extend(readings_from_dcgm(parse_prometheus_text(text, (POWER_METRIC, UTIL_METRIC))))
                    self.errors.pop(url, None)
                except (aiohttp.ClientError, asyncio.TimeoutError, AdapterError, ValueError) as exc:
                    self.errors[url] = f"{type(exc).__name__}: {exc}"
                    log.warning("DCGM exporter %s: %s", url, self.errors[url])

            await asyncio.gather(*(one(u) for u in self.urls))
        return telemetry_from_readings(readings, site_id=self.site_id, jobs=self.jobs, observed_at=now)

    async def collect_once(self) -> list[GpuTelemetry]:
        recs = await self.scrape()
        for r in recs:
            await self.publisher.publish(r, GPU_TELEMETRY)
        return recs

    async def run(self, interval_s: float = 15.0, rounds: int | None = None) -> None:
        """Scrape every ``interval_s`` seconds (``rounds`` times, or until cancelled)."""
        n = 0
        while rounds is None or n < rounds:
            await self.collect_once()
            n += 1
            if rounds is None or n < rounds:
                await asyncio.sleep(interval_s)


# --------------------------------------------------------------------------- NVML

class NvmlCollector:
    """Read local GPUs through NVML (``pynvml`` from ``nvidia-ml-py``) and publish per job.

    ``nvml``: the module to use (tests pass a fake); by default ``import pynvml``.
    Each GPU gets labels ``Hostname`` (``hostname``), ``gpu`` (index) and ``UUID``, so the
    same :class:`JobMap` works as for DCGM (usually ``by_gpu`` on a Slurm node).
    """

    def __init__(self, *, site_id: str, publisher: Publisher, jobs: JobMap, hostname: str | None = None,
                 nvml: ModuleType | Any | None = None, clock: Callable[[], datetime] = utcnow) -> None:
        self.nvml = nvml if nvml is not None else require("pynvml", "nvml", "NVML GPU telemetry")
        self.site_id = site_id
        self.publisher = publisher
        self.jobs = jobs
        self.hostname = hostname or socket.gethostname()
        self.clock = clock
        self._initialised = False

    def _init(self) -> None:
        if not self._initialised:
            self.nvml.nvmlInit()
            self._initialised = True

    def close(self) -> None:
        if self._initialised:
            self.nvml.nvmlShutdown()
            self._initialised = False

    def readings(self) -> list[GpuReading]:
        self._init()
        nv = self.nvml
        out = []
        for i in range(nv.nvmlDeviceGetCount()):
            h = nv.nvmlDeviceGetHandleByIndex(i)
            uuid = nv.nvmlDeviceGetUUID(h)
            if isinstance(uuid, bytes):
                uuid = uuid.decode()
            try:
                power_w = nv.nvmlDeviceGetPowerUsage(h) / 1000.0   # milliwatts
                util = float(nv.nvmlDeviceGetUtilizationRates(h).gpu)
            except nv.NVMLError as exc:   # a GPU that fell off the bus: skip it, say so
                log.warning("NVML GPU %d (%s): %s", i, uuid, exc)
                continue
            out.append(GpuReading({"Hostname": self.hostname, "gpu": str(i), "UUID": uuid}, power_w, util))
        return out

    async def collect_once(self) -> list[GpuTelemetry]:
        recs = telemetry_from_readings(self.readings(), site_id=self.site_id, jobs=self.jobs, observed_at=self.clock())
        for r in recs:
            await self.publisher.publish(r, GPU_TELEMETRY)
        return recs


# --------------------------------------------------------------------------- nvidia-smi logs

async def replay_nvidia_smi(path: str | Path, *, site_id: str, publisher: Publisher, **reader_kwargs: Any) -> int:
    """Publish an nvidia-smi CSV log as telemetry (``readers.nvidia_smi.read_nvidia_smi``)."""
    from readers.nvidia_smi import read_nvidia_smi

    n = 0
    for rec in read_nvidia_smi(path, site_id, **reader_kwargs):
        await publisher.publish(rec, GPU_TELEMETRY)
        n += 1
    return n


__all__ = ["Sample", "parse_prometheus_text", "JobMap", "GpuReading", "telemetry_from_readings", "readings_from_dcgm",
           "telemetry_from_dcgm", "DcgmExporterCollector", "NvmlCollector", "replay_nvidia_smi"]

