"""GPU jobs out: pause and resume the jobs the engine names, and set each GPU class's
power-cap tier, through Slurm or Kubernetes.

One interface, :class:`JobController` (``pause(job)``, ``resume(job)``, and optionally
``set_power_cap(gpu_class, tier, power_fraction)``), two implementations:

* :class:`SlurmController` runs the Slurm CLI (no extra; ``scontrol``/``scancel`` on PATH or
  given as paths). Pause = checkpoint signal first, ``scancel --signal=USR1 --full <job>``
  (the job's handler writes a checkpoint; ``--full`` reaches the batch shell and its steps),
  wait ``checkpoint_grace_s``, then ``scontrol suspend <job>`` (SIGSTOP: GPU memory stays
  allocated, power drops to idle) or, with ``mode="requeue"``, ``scontrol requeue <job>``
  (frees the GPUs; the job restarts from its checkpoint later). Resume =
  ``scontrol resume <job>`` (suspend mode) or ``scontrol release <job>`` (requeue mode, for
  a job requeued held). Each command is bounded by ``timeout_s``.
* :class:`KubernetesController` talks to the API server over HTTP (no extra: aiohttp), with a
  bearer token (in-cluster: the service account's). A job id ``namespace/name`` (or ``name``
  with ``default_namespace``) maps to a workload of ``kind``:
  ``job`` -> ``PATCH /apis/batch/v1/namespaces/{ns}/jobs/{name}`` ``{"spec":{"suspend":
  true|false}}`` (Kubernetes' own Job suspension); ``deployment`` / ``statefulset`` ->
  ``PATCH .../{kind}s/{name}/scale`` to 0 replicas, remembering the previous count in the
  annotation ``wattmix.io/replicas-before-pause`` so a resume (even from another process)
  restores it. Bodies are ``application/merge-patch+json``.

**Power caps** (the action's ``gpus[].power_cap_tier`` / ``power_fraction``): a class maps to
the nodes that run it, and the cap is ``power_fraction x gpu_max_w`` per GPU (H100 SXM: 700 W;
tier 1 of the sample site = 85 % = 595 W).

* Slurm (``cap_nodes``: class -> node names or hostlists): ``scontrol update NodeName=<nodes>
  Extra=<json>`` records ``{"wattmix_power_cap_tier": t, "gpu_power_limit_w": w}`` on the nodes
  (Slurm 23.02+; visible in ``scontrol show node``, for a node-side hook), then the optional
  ``cap_command`` template runs (e.g. ``["pdsh", "-w", "{nodes}", "nvidia-smi", "-pl",
  "{watts}"]``; placeholders ``{nodes}`` ``{watts}`` ``{tier}`` ``{gpu_class}``).
* Kubernetes (``cap_selectors``: class -> node label selector): every matching node gets the
  labels ``wattmix.io/power-cap-tier`` and ``wattmix.io/gpu-power-limit-watts``; the contract
  is that a DaemonSet on the GPU nodes (e.g. a privileged pod running ``nvidia-smi -pl``
  whenever its node's label changes) applies the limit. Labels, not annotations, so a
  DaemonSet or a scheduler can select on them.

:class:`GpuJobActuator` turns the engine's ``paused_job_ids`` into calls: jobs newly in the
list are paused, jobs that left it are resumed, each once; ``resolve`` maps a telemetry
job id (``ml-train/llama-ft-0`` from DCGM, a Slurm job id...) to the controller's job name.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from adapters.common import AdapterError

log = logging.getLogger("wattmix.adapters.gpujobs")

ANNOTATION = "wattmix.io/replicas-before-pause"
TIER_LABEL = "wattmix.io/power-cap-tier"
LIMIT_LABEL = "wattmix.io/gpu-power-limit-watts"
#: board power limit of the default GPU (H100 SXM5), W
GPU_MAX_W = 700.0


@dataclass
class CapResult:
    """One class's power-cap change: which nodes were asked and which took it."""

    gpu_class: str
    tier: int
    power_fraction: float
    watts: int
    targets: list[str] = field(default_factory=list)
    done: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def failed(self) -> list[str]:
        return [t for t in self.targets if t not in self.done]


class JobController(Protocol):
    name: str

    async def pause(self, job: str) -> None: ...
    async def resume(self, job: str) -> None: ...


class PowerCapController(Protocol):
    name: str

    def cap_classes(self) -> set[str]: ...
    async def set_power_cap(self, gpu_class: str, tier: int, power_fraction: float) -> CapResult: ...


class SlurmController:
    name = "slurm"

    def __init__(self, *, scontrol: str = "scontrol", scancel: str = "scancel", mode: str = "suspend",
                 checkpoint_signal: str | None = "USR1", checkpoint_grace_s: float = 30.0,
                 timeout_s: float = 30.0, cap_nodes: Mapping[str, Sequence[str]] | None = None,
                 gpu_max_w: float = GPU_MAX_W, cap_command: Sequence[str] | None = None) -> None:
        if mode not in ("suspend", "requeue"):
            raise AdapterError(f"Slurm pause mode must be 'suspend' or 'requeue', not {mode!r}")
        self.scontrol = shutil.which(scontrol) or scontrol
        self.scancel = shutil.which(scancel) or scancel
        self.mode = mode
        self.checkpoint_signal = checkpoint_signal
        self.checkpoint_grace_s = checkpoint_grace_s
        self.timeout_s = timeout_s
        self.cap_nodes = {c: list(n) for c, n in (cap_nodes or {}).items()}
        self.gpu_max_w = gpu_max_w
        self.cap_command = list(cap_command) if cap_command else None
        for nodes in self.cap_nodes.values():
            for n in nodes:
                if not n or not all(c.isalnum() or c in "-_.[],:" for c in n):
                    raise AdapterError(f"not a Slurm node name or hostlist: {n!r}")

    async def _run(self, *argv: str) -> str:
        try:
            proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE,
                                                        stderr=asyncio.subprocess.PIPE)
        except OSError as exc:
            raise AdapterError(f"cannot run {argv[0]}: {exc}") from exc
        try:
            out, err = await asyncio.wait_for(proc.communicate(), self.timeout_s)
        except asyncio.TimeoutError:
            proc.kill()
            await proc.wait()
            raise AdapterError(f"{' '.join(argv)}: no answer in {self.timeout_s:g} s") from None
        if proc.returncode != 0:
            raise AdapterError(f"{' '.join(argv)}: exit {proc.returncode}: {err.decode(errors='replace').strip()[:300]}")
        return out.decode(errors="replace")

    @staticmethod
    def _check(job: str) -> str:
        j = job.strip()
        if not j or not all(c.isalnum() or c in "_." for c in j):
            raise AdapterError(f"not a Slurm job id: {job!r}")
        return j

    async def pause(self, job: str) -> None:
        j = self._check(job)
        if self.checkpoint_signal:
            await self._run(self.scancel, f"--signal={self.checkpoint_signal}", "--full", j)
            if self.checkpoint_grace_s > 0:
                await asyncio.sleep(self.checkpoint_grace_s)
        await self._run(self.scontrol, "suspend" if self.mode == "suspend" else "requeue", j)

    async def resume(self, job: str) -> None:
        j = self._check(job)
        await self._run(self.scontrol, "resume" if self.mode == "suspend" else "release", j)

    def cap_classes(self) -> set[str]:
        return set(self.cap_nodes)

    async def set_power_cap(self, gpu_class: str, tier: int, power_fraction: float) -> CapResult:
        res = CapResult(gpu_class, tier, power_fraction, round(power_fraction * self.gpu_max_w),
                        targets=list(self.cap_nodes.get(gpu_class, [])))
        if not res.targets:
            return res
        nodes = ",".join(res.targets)
        extra = json.dumps({"wattmix_power_cap_tier": tier, "gpu_power_limit_w": res.watts}, separators=(",", ":"))
        try:
            await self._run(self.scontrol, "update", f"NodeName={nodes}", f"Extra={extra}")
            if self.cap_command:
                await self._run(*(a.format(nodes=nodes, watts=res.watts, tier=tier, gpu_class=gpu_class)
                                  for a in self.cap_command))
        except AdapterError as exc:   # one command for the class: all its nodes or none
            res.errors.append(str(exc))
        else:
            res.done = list(res.targets)
        return res


class KubernetesController:
    name = "kubernetes"

    def __init__(self, api_url: str, *, token: str | None = None, kind: str = "job",
                 default_namespace: str = "default", verify_tls: bool | str = True, timeout_s: float = 10.0,
                 cap_selectors: Mapping[str, str] | None = None, gpu_max_w: float = GPU_MAX_W) -> None:
        if kind not in ("job", "deployment", "statefulset"):
            raise AdapterError(f"kind must be job, deployment or statefulset, not {kind!r}")
        self.api = api_url.rstrip("/")
        self.token = token
        self.kind = kind
        self.default_namespace = default_namespace
        self.verify_tls = verify_tls
        self.timeout_s = timeout_s
        self.cap_selectors = dict(cap_selectors or {})
        self.gpu_max_w = gpu_max_w

    @classmethod
    def in_cluster(cls, **kw) -> "KubernetesController":
        """Service-account token and CA of a pod (``/var/run/secrets/kubernetes.io/serviceaccount``)."""
        import os

        base = "/var/run/secrets/kubernetes.io/serviceaccount"
        host, port = os.environ["KUBERNETES_SERVICE_HOST"], os.environ.get("KUBERNETES_SERVICE_PORT", "443")
        with open(f"{base}/token") as fh:
            token = fh.read().strip()
        return cls(f"https://{host}:{port}", token=token, verify_tls=f"{base}/ca.crt", **kw)

    def _split(self, job: str) -> tuple[str, str]:
        ns, _, name = job.rpartition("/")
        return ns or self.default_namespace, name

    async def _request(self, method: str, path: str, body: Mapping | None = None) -> dict:
        import ssl

        import aiohttp

        headers = {"Accept": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        if body is not None:
            headers["Content-Type"] = "application/merge-patch+json"
        ssl_ctx: ssl.SSLContext | bool
        if isinstance(self.verify_tls, str):
            ssl_ctx = ssl.create_default_context(cafile=self.verify_tls)
        else:
            ssl_ctx = True if self.verify_tls else False
        data = json.dumps(body) if body is not None else None
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout_s)) as http:
                async with http.request(method, self.api + path, headers=headers, data=data, ssl=ssl_ctx) as resp:
                    payload = await resp.json(content_type=None)
                    if resp.status >= 300:
                        msg = payload.get("message") if isinstance(payload, Mapping) else payload
                        raise AdapterError(f"{method} {path}: HTTP {resp.status}: {msg}")
                    return payload
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            raise AdapterError(f"{method} {path}: {type(exc).__name__}: {exc}") from exc

    def _paths(self, job: str) -> tuple[str, str]:
        ns, name = self._split(job)
        group = "batch/v1" if self.kind == "job" else "apps/v1"
        obj = f"/apis/{group}/namespaces/{ns}/{self.kind}s/{name}"
        return obj, obj + "/scale"

    async def pause(self, job: str) -> None:
        obj, scale = self._paths(job)
        if self.kind == "job":
            await self._request("PATCH", obj, {"spec": {"suspend": True}})
            return
        cur = await self._request("GET", scale)
        replicas = int((cur.get("spec") or {}).get("replicas") or 0)
        if replicas == 0:
            return   # already paused (by us or someone): keep the saved count
        await self._request("PATCH", obj, {"metadata": {"annotations": {ANNOTATION: str(replicas)}}})
        await self._request("PATCH", scale, {"spec": {"replicas": 0}})

    async def resume(self, job: str) -> None:
        obj, scale = self._paths(job)
        if self.kind == "job":
            await self._request("PATCH", obj, {"spec": {"suspend": False}})
            return
        cur = await self._request("GET", obj)
        saved = ((cur.get("metadata") or {}).get("annotations") or {}).get(ANNOTATION)
        if saved is None:
            log.warning("%s: no %s annotation; not resuming it", job, ANNOTATION)
            return
        await self._request("PATCH", scale, {"spec": {"replicas": int(saved)}})
        await self._request("PATCH", obj, {"metadata": {"annotations": {ANNOTATION: None}}})

    def cap_classes(self) -> set[str]:
        return set(self.cap_selectors)

    async def set_power_cap(self, gpu_class: str, tier: int, power_fraction: float) -> CapResult:
        from urllib.parse import quote

        res = CapResult(gpu_class, tier, power_fraction, round(power_fraction * self.gpu_max_w))
        selector = self.cap_selectors.get(gpu_class)
        if not selector:
            return res
        try:
            nodes = await self._request("GET", f"/api/v1/nodes?labelSelector={quote(selector)}")
        except AdapterError as exc:
            res.errors.append(str(exc))
            return res
        res.targets = [n["metadata"]["name"] for n in nodes.get("items", [])]
        labels = {"metadata": {"labels": {TIER_LABEL: str(tier), LIMIT_LABEL: str(res.watts)}}}
        for name in res.targets:
            try:
                await self._request("PATCH", f"/api/v1/nodes/{name}", labels)
            except AdapterError as exc:
                res.errors.append(str(exc))
            else:
                res.done.append(name)
        return res


@dataclass
class JobsResult:
    paused: list[str] = field(default_factory=list)
    resumed: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


class GpuJobActuator:
    """Keep the set of paused jobs equal to the engine's ``paused_job_ids``."""

    def __init__(self, controller: JobController, *, resolve: Callable[[str], str | None] = lambda j: j,
                 concurrency: int = 8) -> None:
        self.controller = controller
        self.resolve = resolve
        self.paused: set[str] = set()
        self.sem = asyncio.Semaphore(concurrency)
        self.cap_tiers: dict[str, int] = {}   # class -> tier every node of it took

    async def apply_caps(self, gpus: Iterable) -> list[CapResult]:
        """Set the power-cap tier of each class the controller has nodes for, when it changed
        (a class whose last change failed on some node is tried again)."""
        ctl = self.controller
        if not hasattr(ctl, "set_power_cap"):
            return []
        classes = ctl.cap_classes()
        todo = [g for g in gpus if g.gpu_class in classes and self.cap_tiers.get(g.gpu_class) != g.power_cap_tier]
        results = await asyncio.gather(*(ctl.set_power_cap(g.gpu_class, g.power_cap_tier, g.power_fraction)
                                         for g in todo))
        for r in results:
            if r.targets and not r.failed:
                self.cap_tiers[r.gpu_class] = r.tier
            else:
                self.cap_tiers.pop(r.gpu_class, None)
        return list(results)

    async def apply(self, paused_job_ids: Iterable[str]) -> JobsResult:
        want = {j for j in paused_job_ids if self.resolve(j)}
        res = JobsResult()

        async def do(job: str, op: str) -> None:
            target = self.resolve(job)
            async with self.sem:
                try:
                    await (self.controller.pause(target) if op == "pause" else self.controller.resume(target))
                except AdapterError as exc:
                    res.failed.append(job)
                    res.errors.append(str(exc))
                    return
            if op == "pause":
                self.paused.add(job)
                res.paused.append(job)
            else:
                self.paused.discard(job)
                res.resumed.append(job)

        await asyncio.gather(*(do(j, "pause") for j in sorted(want - self.paused)),
                             *(do(j, "resume") for j in sorted(self.paused - want)))
        return res
