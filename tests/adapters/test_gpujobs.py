"""GPU job control: Slurm through recording ``scontrol``/``scancel`` on PATH, Kubernetes through
a fake API server on loopback (merge-patch on Jobs, Deployments and their scale subresource)."""

from __future__ import annotations

import asyncio
import copy
import os
import stat
from pathlib import Path

import pytest

from adapters.common import AdapterError
from adapters.gpujobs import ANNOTATION, GpuJobActuator, KubernetesController, SlurmController
from tests.adapters.util import free_port

FAKE = """#!/bin/sh
echo "$(basename "$0") $*" >> "{log}"
for a in "$@"; do
  if [ "$a" = "999" ]; then echo "slurm_suspend error: Invalid job id specified" >&2; exit 1; fi
done
exit 0
"""


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch):
    bin_dir, log = tmp_path / "bin", tmp_path / "slurm.log"
    bin_dir.mkdir()
    for tool in ("scontrol", "scancel"):
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
        self.calls: list[tuple[str, str, dict | None]] = []

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
