"""The Alibaba GPU cluster trace (clusterdata ``cluster-trace-gpu-v2023``) pod list as GPU job
telemetry.

Columns: ``name, cpu_milli, memory_mib, num_gpu, gpu_milli, gpu_spec, qos, pod_phase,
creation_time, deletion_time, scheduled_time``; times are seconds from the start of the
trace (not dates), ``gpu_milli`` is the share of each of its ``num_gpu`` GPUs a pod holds
(1000 = a whole GPU; the trace shares GPUs between pods).

The mapping (honest about what the trace does and does not say):

* **qos -> job class.** The trace labels Kubernetes QoS, not workloads.
  ``LS`` (latency-sensitive) -> ``inference``: online serving, the class the site never
  interrupts. ``BE`` (best effort) -> ``batch``: preemptible, deferrable work.
  ``Burstable`` -> ``training``: in this trace they are the big, long pods (2.5 GPUs on
  average, most 8-GPU pods, hours to days), the shape of training jobs, and Burstable is the
  QoS that may be throttled, like a training job that can be paused at a cost.
  ``Guaranteed`` (7 pods) -> ``inference``: never evicted, so never shed before inference.
  The mapping is a parameter (``qos_map``); another reading of the trace is one dict away.
* **time.** The trace has no dates: second 0 is anchored at ``start`` (default
  2024-01-01T00:00Z, so the ~149-day trace plays against the 2024 ERCOT prices).
* **lifecycle -> samples** (``job_id`` = ``alibaba-<pod name>``):
  a pod scheduled after its creation is ``queued`` at ``creation_time``; it is ``running``
  at ``scheduled_time`` and then every ``sample_minutes`` on the grid anchored at ``start``
  (a heartbeat, as a telemetry exporter would send; 0 = no heartbeat); it is ``completed``
  at ``deletion_time``. Pods ``Pending`` at the end of the trace (never scheduled) are
  ``queued`` at creation and ``completed`` (left the queue) at deletion. Pods still
  ``Running`` when the trace ends (deletion time = the trace end) get no ``completed``
  sample: the trace does not say they ended. ``Failed`` pods ran until their deletion.
* **size and power.** ``gpus`` = ``num_gpu`` (a pod holding a share of a GPU counts as that
  GPU: the schema has whole GPUs); ``utilization`` = ``gpu_milli`` / 1000;
  ``power_kw`` = ``num_gpu`` x ``gpu_milli``/1000 x ``power_kw_per_gpu`` (default 1.275 kW:
  an H100 with its share of the node at full power, the sample site's figure; the trace
  has no GPU models for these pods (``gpu_spec`` is empty)).
* CPU-only pods (``num_gpu`` = 0, 1,088 of 8,152) are not GPU jobs: skipped, counted in
  ``stats['cpu_only']``, not reported as bad rows.

Records come out in event-time order: ``(observed_at, completed before others, job_id)``.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

from readers.errors import BadRows, report
from readers.tables import iter_rows
from schemas.base import trusted
from schemas.base import GPU_CLASSES
from schemas.feeds import GpuTelemetry

UTC = timezone.utc
DEFAULT_START = datetime(2024, 1, 1, tzinfo=UTC)
QOS_TO_CLASS: dict[str, str] = {"LS": "inference", "Guaranteed": "inference", "BE": "batch", "Burstable": "training"}
COLUMNS = ("name", "num_gpu", "gpu_milli", "qos", "pod_phase", "creation_time", "deletion_time")
_STATE_ORDER = {"completed": 0, "queued": 1, "running": 2}


def _int(row: dict, col: str, required: bool = True) -> int | None:
    v = row.get(col)
    if v is None or v == "":
        if required:
            raise ValueError(f"empty {col}")
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise ValueError(f"{col}: {v!r} is not a number") from None
    if f != int(f) or f < 0:
        raise ValueError(f"{col}: {v!r} is not a non-negative integer")
    return int(f)


def read_alibaba_pods(
    path: str | Path,
    site_id: str,
    bad: BadRows | None = None,
    *,
    start: datetime = DEFAULT_START,
    sample_minutes: float = 15,
    power_kw_per_gpu: float = 1.275,
    qos_map: dict[str, str] | None = None,
    stats: dict[str, int] | None = None,
) -> Iterator[GpuTelemetry]:
    """GPU job telemetry from the pod list (see the module docstring for the mapping)."""
    for values in alibaba_pod_values(path, site_id, bad, start=start, sample_minutes=sample_minutes,
                                     power_kw_per_gpu=power_kw_per_gpu, qos_map=qos_map, stats=stats):
        yield trusted(GpuTelemetry, values)


def alibaba_pod_values(
    path: str | Path,
    site_id: str,
    bad: BadRows | None = None,
    *,
    start: datetime = DEFAULT_START,
    sample_minutes: float = 15,
    power_kw_per_gpu: float = 1.275,
    qos_map: dict[str, str] | None = None,
    stats: dict[str, int] | None = None,
) -> Iterator[dict]:
    """The field values of each :class:`GpuTelemetry` of :func:`read_alibaba_pods`, as plain
    dicts in the model's field order (``orjson.dumps`` of one is the record's wire form; the
    replay publishes them without building ~230k model objects). The values satisfy the
    model's rules (checked here, per pod)."""
    path = Path(path)
    qmap = QOS_TO_CLASS if qos_map is None else qos_map
    for cls in qmap.values():
        if cls not in GPU_CLASSES:
            raise ValueError(f"qos_map maps to {cls!r}, not one of {GPU_CLASSES}")
    start = start.astimezone(UTC)
    st = stats if stats is not None else {}
    for k in ("pods", "cpu_only", "gpu_jobs", "samples"):
        st.setdefault(k, 0)
    pods = []
    trace_end = 0
    for lineno, row in iter_rows(path, bad):
        st["pods"] += 1
        try:
            missing = [c for c in COLUMNS if c not in row and c != "pod_phase"]
            if "name" in missing:
                raise ValueError("empty name")
            n = _int(row, "num_gpu")
            milli = _int(row, "gpu_milli")
            created = _int(row, "creation_time")
            deleted = _int(row, "deletion_time")
            sched = _int(row, "scheduled_time", required=False)
            qos = str(row.get("qos", "")).strip()
            phase = str(row.get("pod_phase", "")).strip()
            if n and qos not in qmap:
                raise ValueError(f"qos {qos!r} is not one of {sorted(qmap)}")
            if milli > 1000:
                raise ValueError(f"gpu_milli {milli} > 1000")
            if deleted < created:
                raise ValueError(f"deletion_time {deleted} before creation_time {created}")
            if sched is not None and not created <= sched <= deleted:
                raise ValueError(f"scheduled_time {sched} outside [creation_time, deletion_time]")
        except ValueError as exc:
            report(bad, path, lineno, str(exc))
            continue
        trace_end = max(trace_end, deleted)
        if n == 0:
            st["cpu_only"] += 1
            continue
        pods.append((str(row["name"]).strip(), n, milli, qmap[qos], phase, created, deleted, sched))
    st["gpu_jobs"] += len(pods)

    step = int(sample_minutes * 60) if sample_minutes > 0 else 0
    out: list[tuple[int, int, str, dict]] = []
    one_s = timedelta(seconds=1)

    def add(sec: int, job: str, cls: str, n: int, kw: float, util: float, state: str) -> None:
        out.append((sec, _STATE_ORDER[state], job, {
            "schema_version": 1, "site_id": site_id, "job_id": job, "gpu_class": cls, "gpus": n,
            "power_kw": kw, "utilization": util, "state": state, "observed_at": start + sec * one_s,
        }))

    for name, n, milli, cls, phase, created, deleted, sched in pods:
        job = f"alibaba-{name}"
        util = milli / 1000.0
        kw = n * util * power_kw_per_gpu
        if sched is None:  # never scheduled: waited in the queue, then left it
            add(created, job, cls, n, kw, util, "queued")
            if deleted > created:
                add(deleted, job, cls, n, kw, util, "completed")
            continue
        if sched > created:
            add(created, job, cls, n, kw, util, "queued")
        add(sched, job, cls, n, kw, util, "running")
        if step:
            k = sched // step + 1
            while k * step < deleted:
                add(k * step, job, cls, n, kw, util, "running")
                k += 1
        still_running = phase == "Running" and deleted == trace_end
        if not still_running and deleted > sched:
            add(deleted, job, cls, n, kw, util, "completed")
    out.sort(key=lambda x: (x[0], x[1], x[2]))
    st["samples"] += len(out)
    for item in out:
        yield item[3]
