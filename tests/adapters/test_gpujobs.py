"""GPU job control: Slurm through recording ``scontrol``/``scancel`` (and a ``pdsh`` hook) on PATH,
Kubernetes through a fake API server on loopback (merge-patch on Jobs, Deployments and their scale
subresource, node listing by label selector and node label patches for power caps)."""

from __future__ import annotations

import asyncio
import copy
import os
import stat
from pathlib import Path

import pytest

from adapters.common import AdapterError
from adapters.gpujobs import (ANNOTATION, LIMIT_LABEL, TIER_LABEL, GpuJobActuator, KubernetesController,
                              SlurmController)
from schemas.action import GpuClassDispatch
from tests.adapters.util import free_port

FAKE = """#!/bin/sh
echo "$(basename "$0") $*" >> "{log}"
for a in "$@"; do
  case "$a" in 999|*=999) echo "slurm error: Invalid job id or node name specified" >&2; exit 1;; esac
done
exit 0
"""


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch):
    bin_dir, log = tmp_path / "bin", tmp_path / "slurm.log"
    bin_dir.mkdir()
    for tool in ("scontrol", "scancel", "pdsh"):
        p = bin_dir / tool
        p.write_text(FAKE.format(log=log))
        p.chmod(p.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return log


def _lines(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


def test_slurm_checkpoint_signal_then_suspend_then_resume(fake_slurm):
    ctl = SlurmController(checkpoint_grace_s=0.01, timeout_s=5)
    act = GpuJobActuator(ctl, resolve=lambda j: j.removeprefix("slurm-"))

    async def main():
        r1 = await act.apply(["slurm-4242", "slurm-4243"])
        r2 = await act.apply(["slurm-4243"])             # 4242 released
        r3 = await act.apply(["slurm-4243"])             # nothing to do
        r4 = await act.apply(["slurm-4243", "slurm-999"])  # slurm refuses 999
        return r1, r2, r3, r4

    r1, r2, r3, r4 = asyncio.run(asyncio.wait_for(main(), 20))
    assert sorted(r1.paused) == ["slurm-4242", "slurm-4243"] and r2.resumed == ["slurm-4242"]
    assert (r3.paused, r3.resumed) == ([], [])
    assert r4.failed == ["slurm-999"] and "Invalid job id" in r4.errors[0]
    lines = _lines(fake_slurm)
    for j in ("4242", "4243"):   # the checkpoint signal comes before the suspend, per job
        assert lines.index(f"scancel --signal=USR1 --full {j}") < lines.index(f"scontrol suspend {j}")
    assert "scontrol resume 4242" in lines and "scontrol resume 4243" not in lines
    assert act.paused == {"slurm-4243"}


def test_slurm_requeue_mode_and_bad_ids(fake_slurm):
    ctl = SlurmController(mode="requeue", checkpoint_signal=None, timeout_s=5)
    asyncio.run(ctl.pause("77"))
    asyncio.run(ctl.resume("77"))
    assert _lines(fake_slurm) == ["scontrol requeue 77", "scontrol release 77"]
    with pytest.raises(AdapterError, match="not a Slurm job id"):
        asyncio.run(ctl.pause("77; rm -rf /"))


class FakeKube:
    """Just enough of the Kubernetes API: GET and merge-PATCH of Jobs, Deployments, /scale."""

    def __init__(self, token="t0ken"):
        self.token = token
        self.objs = {
            ("batch/v1", "jobs", "ml-batch", "embed-batch"): {"metadata": {"name": "embed-batch", "annotations": {}},
                                                             "spec": {"suspend": False, "parallelism": 2}},
            ("apps/v1", "deployments", "ml-train", "llama-ft"): {"metadata": {"name": "llama-ft", "annotations": {}},
                                                                "spec": {"replicas": 3}},
        }
        self.nodes = {n: {"metadata": {"name": n, "labels": {"nvidia.com/gpu.present": "true", "pool": pool}}}
                      for n, pool in [("gpu-t1", "train"), ("gpu-t2", "train"), ("gpu-b1", "batch"), ("cpu-1", "cpu")]}
        self.calls: list[tuple[str, str, dict | None]] = []

    async def handle_nodes(self, request):
        """GET /api/v1/nodes?labelSelector=k=v,k2 and PATCH /api/v1/nodes/{name} (labels)."""
        from aiohttp import web

        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return web.json_response({"kind": "Status", "message": "Unauthorized", "code": 401}, status=401)
        body = await request.json() if request.method == "PATCH" else None
        self.calls.append((request.method, request.path_qs, copy.deepcopy(body)))
        name = request.match_info.get("name")
        if name is None:
            terms = [t.partition("=") for t in request.query.get("labelSelector", "").split(",") if t]
            items = [n for n in self.nodes.values()
                     if all(k in n["metadata"]["labels"] and (not eq or n["metadata"]["labels"][k] == v)
                            for k, eq, v in terms)]
            return web.json_response({"kind": "NodeList", "items": items})
        if name not in self.nodes:
            return web.json_response({"kind": "Status", "message": f'nodes "{name}" not found', "code": 404},
                                     status=404)
        self._merge(self.nodes[name], body)
        return web.json_response(self.nodes[name])

    @staticmethod
    def _merge(dst, patch):
        for k, v in patch.items():
            if v is None:
                dst.pop(k, None)
            elif isinstance(v, dict):
                _ = dst.setdefault(k, {})
                FakeKube._merge(dst[k], v)
            else:
                dst[k] = v

    async def handle(self, request):
        from aiohttp import web

        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return web.json_response({"kind": "Status", "message": "Unauthorized", "code": 401}, status=401)
        mi = request.match_info
        key = (f"{mi['group']}/{mi['version']}", mi["kind"], mi["ns"], mi["name"])
        body = await request.json() if request.method == "PATCH" else None
        if body is not None and request.headers.get("Content-Type") != "application/merge-patch+json":
            return web.json_response({"message": "415: unsupported patch type"}, status=415)
        self.calls.append((request.method, request.path, copy.deepcopy(body)))
        obj = self.objs.get(key)
        if obj is None:
            return web.json_response({"kind": "Status", "message": f'{mi["kind"]} "{mi["name"]}" not found',
                                      "code": 404}, status=404)
        if mi.get("sub") == "scale":
            if body is not None:
                obj["spec"]["replicas"] = body["spec"]["replicas"]
            return web.json_response({"kind": "Scale", "spec": {"replicas": obj["spec"]["replicas"]}})
        if body is not None:
            self._merge(obj, body)
        return web.json_response(obj)


def _run_with_kube(fake, coro_fn):
    from aiohttp import web

    async def main():
        app = web.Application()
        base = "/apis/{group}/{version}/namespaces/{ns}/{kind}/{name}"
        for path in (base, base + "/{sub}"):
            app.router.add_route("GET", path, fake.handle)
            app.router.add_route("PATCH", path, fake.handle)
        app.router.add_route("GET", "/api/v1/nodes", fake.handle_nodes)
        app.router.add_route("PATCH", "/api/v1/nodes/{name}", fake.handle_nodes)
        runner = web.AppRunner(app)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        try:
            return await coro_fn(f"http://127.0.0.1:{port}")
        finally:
            await runner.cleanup()

    return asyncio.run(asyncio.wait_for(main(), 20))


def test_kubernetes_job_suspend_and_deployment_scale_with_remembered_replicas():
    fake = FakeKube()

    async def scenario(url):
        jobs = GpuJobActuator(KubernetesController(url, token="t0ken", kind="job"))
        deps = KubernetesController(url, token="t0ken", kind="deployment")
        r = await jobs.apply(["ml-batch/embed-batch"])
        suspended = fake.objs[("batch/v1", "jobs", "ml-batch", "embed-batch")]["spec"]["suspend"]
        await deps.pause("ml-train/llama-ft")
        paused = copy.deepcopy(fake.objs[("apps/v1", "deployments", "ml-train", "llama-ft")])
        await deps.pause("ml-train/llama-ft")          # idempotent: the saved count survives
        # a new process (no memory) resumes from the annotation
        await KubernetesController(url, token="t0ken", kind="deployment").resume("ml-train/llama-ft")
        r2 = await jobs.apply([])
        with pytest.raises(AdapterError, match="404"):
            await deps.pause("ml-train/missing")
        with pytest.raises(AdapterError, match="401"):
            await KubernetesController(url, token="wrong").pause("ml-batch/embed-batch")
        return r, suspended, paused, r2

    r, suspended, paused, r2 = _run_with_kube(fake, scenario)
    assert r.paused == ["ml-batch/embed-batch"] and suspended is True
    assert r2.resumed == ["ml-batch/embed-batch"]
    assert fake.objs[("batch/v1", "jobs", "ml-batch", "embed-batch")]["spec"]["suspend"] is False
    assert paused["spec"]["replicas"] == 0 and paused["metadata"]["annotations"][ANNOTATION] == "3"
    dep = fake.objs[("apps/v1", "deployments", "ml-train", "llama-ft")]
    assert dep["spec"]["replicas"] == 3 and ANNOTATION not in dep["metadata"]["annotations"]
    patches = [(m, p) for m, p, b in fake.calls if m == "PATCH"]
    assert ("PATCH", "/apis/apps/v1/namespaces/ml-train/deployments/llama-ft/scale") in patches


def _tiers(**tiers):
    """GpuClassDispatch per class from ``class=(tier, power_fraction)``."""
    return [GpuClassDispatch(gpu_class=c, gpus_demand=8, gpus_running=8, power_cap_tier=t, power_fraction=f,
                             throughput_fraction=1.0, power_mw=0.01) for c, (t, f) in tiers.items()]


def test_slurm_power_cap_tiers_on_the_classes_nodes_only_when_they_change(fake_slurm):
    ctl = SlurmController(timeout_s=5, gpu_max_w=700, cap_nodes={"training": ["gpu-a[001-004]", "gpu-c7"],
                                                                 "batch": ["gpu-b[01-02]"]},
                          cap_command=["pdsh", "-w", "{nodes}", "nvidia-smi", "-pl", "{watts}"])
    act = GpuJobActuator(ctl)

    async def main():
        first = await act.apply_caps(_tiers(inference=(0, 1.0), training=(1, 0.85), batch=(2, 0.7)))
        same = await act.apply_caps(_tiers(inference=(0, 1.0), training=(1, 0.85), batch=(2, 0.7)))
        back = await act.apply_caps(_tiers(inference=(0, 1.0), training=(1, 0.85), batch=(0, 1.0)))
        return first, same, back

    first, same, back = asyncio.run(asyncio.wait_for(main(), 20))
    by = {r.gpu_class: r for r in first}
    assert set(by) == {"training", "batch"}   # inference has no nodes configured: left alone
    assert (by["training"].watts, by["batch"].watts) == (595, 490)
    assert by["training"].done == ["gpu-a[001-004]", "gpu-c7"] and not by["training"].failed
    assert same == [] and [(r.gpu_class, r.tier, r.watts) for r in back] == [("batch", 0, 700)]
    lines = _lines(fake_slurm)
    assert sorted(lines[:4]) == sorted([
        'scontrol update NodeName=gpu-a[001-004],gpu-c7 Extra={"wattmix_power_cap_tier":1,"gpu_power_limit_w":595}',
        "pdsh -w gpu-a[001-004],gpu-c7 nvidia-smi -pl 595",
        'scontrol update NodeName=gpu-b[01-02] Extra={"wattmix_power_cap_tier":2,"gpu_power_limit_w":490}',
        "pdsh -w gpu-b[01-02] nvidia-smi -pl 490"])
    assert lines[4:] == [
        'scontrol update NodeName=gpu-b[01-02] Extra={"wattmix_power_cap_tier":0,"gpu_power_limit_w":700}',
        "pdsh -w gpu-b[01-02] nvidia-smi -pl 700"]
    with pytest.raises(AdapterError, match="not a Slurm node name"):
        SlurmController(cap_nodes={"batch": ["gpu1; reboot"]})


def test_slurm_power_cap_failure_is_reported_and_retried(fake_slurm):
    # "999" makes the recording scontrol fail, as Slurm does for an unknown node
    act = GpuJobActuator(SlurmController(timeout_s=5, cap_nodes={"batch": ["999"]}))
    r1 = asyncio.run(act.apply_caps(_tiers(batch=(2, 0.7))))
    r2 = asyncio.run(act.apply_caps(_tiers(batch=(2, 0.7))))
    assert r1[0].failed == ["999"] and "Invalid" in r1[0].errors[0]
    assert len(r2) == 1, "a failed cap is tried again on the next action"


def test_kubernetes_power_cap_labels_the_nodes_of_each_class():
    fake = FakeKube()

    async def scenario(url):
        ctl = KubernetesController(url, token="t0ken", gpu_max_w=700,
                                   cap_selectors={"training": "pool=train,nvidia.com/gpu.present",
                                                  "batch": "pool=batch", "inference": "pool=nosuch"})
        act = GpuJobActuator(ctl)
        first = await act.apply_caps(_tiers(inference=(1, 0.85), training=(2, 0.7), batch=(0, 1.0)))
        again = await act.apply_caps(_tiers(inference=(1, 0.85), training=(2, 0.7), batch=(0, 1.0)))
        wrong = await GpuJobActuator(KubernetesController(url, token="bad", cap_selectors={"batch": "pool=batch"})
                                     ).apply_caps(_tiers(batch=(1, 0.85)))
        return first, again, wrong

    first, again, wrong = _run_with_kube(fake, scenario)
    by = {r.gpu_class: r for r in first}
    assert by["training"].done == ["gpu-t1", "gpu-t2"] and by["batch"].done == ["gpu-b1"]
    assert by["inference"].targets == []   # no node matches: reported, tried again next time
    for n, (tier, watts) in {"gpu-t1": ("2", "490"), "gpu-t2": ("2", "490"), "gpu-b1": ("0", "700")}.items():
        labels = fake.nodes[n]["metadata"]["labels"]
        assert (labels[TIER_LABEL], labels[LIMIT_LABEL]) == (tier, watts) and labels["nvidia.com/gpu.present"] == "true"
    assert TIER_LABEL not in fake.nodes["cpu-1"]["metadata"]["labels"]
    assert [r.gpu_class for r in again] == ["inference"]
    assert wrong[0].targets == [] and "401" in wrong[0].errors[0]
    patches = [p for m, p, _ in fake.calls if m == "PATCH"]
    assert sorted(patches) == ["/api/v1/nodes/gpu-b1", "/api/v1/nodes/gpu-t1", "/api/v1/nodes/gpu-t2"]
