"""The Alibaba GPU cluster trace pod list as GPU job telemetry (real file + fixtures)."""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta, timezone

import orjson
import pytest

from readers import BadRows, read_alibaba_pods
from readers.alibaba import QOS_TO_CLASS, alibaba_pod_values
from schemas.codec import encode
from schemas.feeds import GpuTelemetry
from tests.readers.test_readers import DATA, need

UTC = timezone.utc
PODS = DATA / "gpu" / "alibaba_gpu2023_openb_pod_list_default.csv"
T0 = datetime(2024, 1, 1, tzinfo=UTC)
HEAD = "name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,qos,pod_phase,creation_time,deletion_time,scheduled_time\n"


def test_real_pod_list():
    need(PODS)
    stats: dict[str, int] = {}
    bad = BadRows()
    rows = list(read_alibaba_pods(PODS, "sample", bad, stats=stats))
    assert stats == {"pods": 8152, "cpu_only": 1088, "gpu_jobs": 7064, "samples": len(rows)}
    assert len(bad) == 0
    assert len(rows) == 230_995  # with the default 15-min heartbeat
    assert rows[0].observed_at == T0 and rows[0].job_id == "alibaba-openb-pod-0000"
    assert rows[-1].observed_at == datetime(2024, 5, 29, 8, 0, tzinfo=UTC)  # last heartbeat before the end (12,902,960 s)
    assert all(b.observed_at >= a.observed_at for a, b in zip(rows[::50], rows[50::50]))
    jobs = Counter(r.gpu_class for r in rows if r.state == "running" and r.observed_at == T0)
    assert jobs["inference"] >= 1
    # openb-pod-0017: Burstable, 8 GPUs, Succeeded, created = scheduled 9,437,497 s, deleted 10,769,854 s
    p17 = [r for r in rows if r.job_id == "alibaba-openb-pod-0017"]
    assert p17[0].gpu_class == "training" and p17[0].gpus == 8 and p17[0].power_kw == pytest.approx(8 * 1.275)
    assert p17[0].state == "running" and p17[0].observed_at == T0 + timedelta(seconds=9_437_497)
    assert p17[-1].state == "completed" and p17[-1].observed_at == T0 + timedelta(seconds=10_769_854)
    assert all(r.observed_at.second == 0 and r.observed_at.minute % 15 == 0 for r in p17[1:-1])
    # openb-pod-8150: BE, 590 milli-GPU, Failed after 21 s: batch, running then completed
    p = [r for r in rows if r.job_id == "alibaba-openb-pod-8150"]
    assert [(r.state, r.gpu_class) for r in p] == [("running", "batch"), ("completed", "batch")]
    assert p[0].utilization == pytest.approx(0.59) and p[0].power_kw == pytest.approx(0.59 * 1.275)
    # pods still Running when the trace ends have no completed sample
    assert not [r for r in rows if r.job_id == "alibaba-openb-pod-0001" and r.state == "completed"]  # Running, deleted at the end
    for r in rows[::20011]:
        assert GpuTelemetry.model_validate(r.model_dump()) == r and encode(r) == orjson.dumps(r.__dict__)


def test_mapping_lifecycle_and_bad_rows(tmp_path):
    assert QOS_TO_CLASS == {"LS": "inference", "Guaranteed": "inference", "BE": "batch", "Burstable": "training"}
    p = tmp_path / "pods.csv"
    p.write_text(HEAD
                 + "pod-a,1000,1,1,1000,,LS,Succeeded,100,4000,1000\n"      # queued 100, running 1000, hb 1800 3600
                 + "pod-b,1000,1,0,0,,BE,Running,0,5000,0\n"                 # CPU only: skipped
                 + "pod-c,1000,1,2,500,,XX,Running,0,5000,0\n"               # bad qos (line 4)
                 + "pod-d,1000,1,1,1000,,BE,Failed,300,200,300\n"            # deleted before created (line 5)
                 + "pod-e,1000,1,1,1000,,BE,Pending,50,70,\n"                # never scheduled
                 + "pod-f,1000,1,4,1000,,Burstable,Running,10,5000,10\n")    # still running at trace end
    bad, stats = BadRows(), {}
    rows = list(read_alibaba_pods(p, "s", bad, sample_minutes=30, stats=stats))
    assert [b.line for b in bad.rows] == [4, 5] and "qos" in bad.rows[0].reason
    assert stats["cpu_only"] == 1 and stats["gpu_jobs"] == 3
    seq = [(r.job_id[8:], int((r.observed_at - T0).total_seconds()), r.state) for r in rows]
    assert seq == [("pod-f", 10, "running"), ("pod-e", 50, "queued"), ("pod-e", 70, "completed"),
                   ("pod-a", 100, "queued"), ("pod-a", 1000, "running"),
                   ("pod-a", 1800, "running"), ("pod-f", 1800, "running"),
                   ("pod-a", 3600, "running"), ("pod-f", 3600, "running"),
                   ("pod-a", 4000, "completed")]
    start = datetime(2025, 3, 1, tzinfo=UTC)
    vals = list(alibaba_pod_values(p, "s", BadRows(), start=start, sample_minutes=0))
    assert vals[0]["observed_at"] == start + timedelta(seconds=10) and len(vals) == 6
    assert list(vals[0]) == list(GpuTelemetry.model_fields)  # field order = wire order
