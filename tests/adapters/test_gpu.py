"""GPU telemetry: DCGM-exporter text (recorded-shape fixture, served by a local HTTP server),
NVML through a fake ``pynvml``, and the real nvidia-smi log of ../shared/data."""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace

import pytest

from adapters.common import MemoryPublisher
from adapters.gpu import (DcgmExporterCollector, JobMap, NvmlCollector, parse_prometheus_text, replay_nvidia_smi,
                          telemetry_from_dcgm)
from tests.adapters.util import free_port

FIXTURE = Path(__file__).parent / "data" / "dcgm_exporter_h100_2nodes.prom"
SMI_LOG = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "gpu" / "h100x8_nvidia_smi_power_trace_2025-07-26.csv"
T = datetime(2024, 8, 5, 12, tzinfo=timezone.utc)
CLASSES = JobMap(classes={"ml-serve": "inference", "ml-batch": "batch"})


def test_prometheus_parser_handles_labels_escapes_timestamps_and_comments():
    text = ('# HELP x help\n# TYPE x gauge\n'
            'x{a="1",b="q\\"uote\\\\",c="line\\nbreak"} 3.5 1722859200000\n'
            'y 2\n\n'
            'z{le="+Inf"} NaN\n')
    s = parse_prometheus_text(text)
    assert [(x.name, x.value) for x in s[:2]] == [("x", 3.5), ("y", 2.0)]
    assert s[0].labels == {"a": "1", "b": 'q"uote\\', "c": "line\nbreak"} and s[0].timestamp_ms == 1722859200000
    with pytest.raises(ValueError, match="line 1"):
        parse_prometheus_text("x{a=1} 2\n")


def test_dcgm_fixture_to_per_job_telemetry():
    recs = {r.job_id: r for r in telemetry_from_dcgm(FIXTURE.read_text(), site_id="sample", jobs=CLASSES, observed_at=T)}
    assert set(recs) == {"ml-train/llama-ft-0", "ml-serve/vllm-serve-7f9c", "ml-batch/embed-batch-x2k"}  # idle GPUs dropped
    tr, inf, bat = recs["ml-train/llama-ft-0"], recs["ml-serve/vllm-serve-7f9c"], recs["ml-batch/embed-batch-x2k"]
    assert (tr.gpu_class, tr.gpus, tr.power_kw, tr.utilization) == ("training", 8, pytest.approx(5.4164), pytest.approx(0.96125))
    assert (inf.gpu_class, inf.gpus, inf.power_kw, inf.utilization) == ("inference", 4, pytest.approx(1.7175), pytest.approx(0.645))
    assert (bat.gpu_class, bat.gpus, bat.power_kw) == ("batch", 2, pytest.approx(1.069))
    assert all(r.observed_at == T and r.state == "running" for r in recs.values())


def test_job_map_by_gpu_overrides_labels():
    text = FIXTURE.read_text()
    # a Slurm-style map: the two idle GPUs of node 2 belong to job 4242 (labels carry no pod)
    jobs = JobMap(by_gpu={"gpu-node-02:6": "slurm-4242", "gpu-node-02:7": "slurm-4242"}, label=None,
                  classes={"slurm-4242": "batch"})
    recs = telemetry_from_dcgm(text, site_id="sample", jobs=jobs, observed_at=T)
    assert [(r.job_id, r.gpu_class, r.gpus, round(r.power_kw, 4)) for r in recs] == [("slurm-4242", "batch", 2, 0.1478)]


def test_dcgm_collector_scrapes_exporters_over_http_and_survives_a_dead_one():
    from aiohttp import web

    text = FIXTURE.read_text()
    per_node = {h: "\n".join(ln for ln in text.splitlines() if ln.startswith("#") or f'Hostname="{h}"' in ln)
                for h in ("gpu-node-01", "gpu-node-02")}

    async def metrics(request):
        node = request.match_info["node"]
        if node not in per_node:
            raise web.HTTPNotFound()
        return web.Response(text=per_node[node], content_type="text/plain")

    async def main():
        app = web.Application()
        app.router.add_get("/{node}/metrics", metrics)
        runner = web.AppRunner(app)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        try:
            pub = MemoryPublisher()
            urls = [f"http://127.0.0.1:{port}/{n}/metrics" for n in ("gpu-node-01", "gpu-node-02", "gpu-node-99")]
            col = DcgmExporterCollector(urls, site_id="sample", publisher=pub, jobs=CLASSES, clock=lambda: T,
                                        timeout_s=3)
            await col.run(interval_s=0.05, rounds=2)
            return pub, col
        finally:
            await runner.cleanup()

    pub, col = asyncio.run(asyncio.wait_for(main(), 20))
    assert len(pub.records) == 6  # 3 jobs x 2 rounds
    assert {r.job_id for r in pub.records} == {"ml-train/llama-ft-0", "ml-serve/vllm-serve-7f9c", "ml-batch/embed-batch-x2k"}
    assert list(col.errors) == [col.urls[2]] and "404" in col.errors[col.urls[2]]


class FakeNvml:
    """The slice of pynvml NvmlCollector uses, with NVML's units (mW, %)."""

    class NVMLError(Exception):
        pass

    def __init__(self, gpus):
        self.gpus = gpus  # list of (uuid, milliwatts or None for a broken GPU, util %)
        self.calls = []

    def nvmlInit(self):
        self.calls.append("init")

    def nvmlShutdown(self):
        self.calls.append("shutdown")

    def nvmlDeviceGetCount(self):
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, i):
        return i

    def nvmlDeviceGetUUID(self, h):
        return self.gpus[h][0].encode()

    def nvmlDeviceGetPowerUsage(self, h):
        if self.gpus[h][1] is None:
            raise self.NVMLError("GPU is lost")
        return self.gpus[h][1]

    def nvmlDeviceGetUtilizationRates(self, h):
        return SimpleNamespace(gpu=self.gpus[h][2], memory=10)


def test_nvml_collector_with_a_fake_pynvml():
    nv = FakeNvml([("GPU-a", 700_000, 100), ("GPU-b", 650_000, 90), ("GPU-c", None, 0), ("GPU-d", 80_000, 0)])
    jobs = JobMap(by_gpu={"GPU-a": "slurm-1", "node7:1": "slurm-1", "GPU-c": "slurm-1"}, classes={"slurm-1": "training"})
    pub = MemoryPublisher()
    col = NvmlCollector(site_id="sample", publisher=pub, jobs=jobs, hostname="node7", nvml=nv, clock=lambda: T)
    recs = asyncio.run(col.collect_once())
    col.close()
    assert [(r.job_id, r.gpus, r.power_kw, r.utilization) for r in recs] == [("slurm-1", 2, pytest.approx(1.35), pytest.approx(0.95))]
    assert pub.records == recs and nv.calls == ["init", "shutdown"]


def test_nvml_missing_names_the_extra(monkeypatch):
    import sys

    from adapters.common import MissingExtraError

    monkeypatch.setitem(sys.modules, "pynvml", None)  # as if nvidia-ml-py were not installed
    with pytest.raises(MissingExtraError, match=r"wattmix\[nvml\]"):
        NvmlCollector(site_id="s", publisher=MemoryPublisher(), jobs=JobMap())


@pytest.mark.skipif(not SMI_LOG.exists(), reason="../shared/data is not present")
def test_replay_of_the_real_nvidia_smi_log():
    pub = MemoryPublisher()
    n = asyncio.run(replay_nvidia_smi(SMI_LOG, site_id="sample", publisher=pub, job_id="h100-train", resample_s=1.0))
    recs = pub.records
    assert n == len(recs) > 100
    assert all(r.gpus == 8 and r.job_id == "h100-train" for r in recs)
    peak = max(r.power_kw for r in recs)
    idle = min(r.power_kw for r in recs)
    assert 0.4 < idle < 1.0, idle          # 8 idle H100 boards ~70 W each
    assert 2.5 < peak <= 8 * 0.7 + 0.1, peak  # under 8 x 700 W TDP
    assert all(a.observed_at < b.observed_at for a, b in zip(recs, recs[1:]))
