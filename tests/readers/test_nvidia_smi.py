"""Raw nvidia-smi CSV logs: the real 8 x H100 log of ../shared/data and small fixtures."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import orjson
import pytest

from readers import BadRowError, BadRows, read_nvidia_smi
from readers.nvidia_smi import infer_gpus_per_node, parse_quantity
from schemas.codec import encode
from schemas.feeds import GpuTelemetry
from tests.readers.test_readers import DATA, need

UTC = timezone.utc
LOG = DATA / "gpu" / "h100x8_nvidia_smi_power_trace_2025-07-26.csv"
HEAD = "timestamp, power.draw [W], utilization.gpu [%], memory.used [MiB]\n"


def test_real_log_every_round():
    need(LOG)
    rows = list(read_nvidia_smi(LOG, "sample", resample_s=0))
    assert len(rows) == 45_632 // 8 == 5_704  # one record per polling round of the 8 GPUs
    first, last = rows[0], rows[-1]
    assert first.observed_at == datetime(2025, 7, 26, 23, 32, 9, 703000, tzinfo=UTC)
    assert last.observed_at == datetime(2025, 7, 26, 23, 43, 48, 294000, tzinfo=UTC)
    # the first round: "69.32 W", "72.45 W", ... (the units are inside the values)
    assert first.power_kw == pytest.approx((69.32 + 72.45 + 72.11 + 72.03 + 72.22 + 72.00 + 70.35 + 71.55) / 1000)
    assert first.gpus == 8 and first.gpu_class == "training" and first.state == "running"
    assert first.job_id == "nvidia-smi-h100x8_nvidia_smi_power_trace_2025-07-26"
    peak = max(rows, key=lambda r: r.power_kw)
    assert peak.power_kw == pytest.approx(4.70293)  # 8 GPUs near 590 W each while training
    assert peak.observed_at == datetime(2025, 7, 26, 23, 35, 37, 561000, tzinfo=UTC)
    assert peak.utilization == pytest.approx(0.90375)
    assert infer_gpus_per_node(LOG) == 8


def test_real_log_resampled_to_seconds_and_reanchored():
    need(LOG)
    rows = list(read_nvidia_smi(LOG, "sample"))
    assert len(rows) == 634
    assert rows[0].observed_at == datetime(2025, 7, 26, 23, 32, 10, tzinfo=UTC)  # window end
    assert rows[-1].observed_at == datetime(2025, 7, 26, 23, 43, 49, tzinfo=UTC)
    assert all(b.observed_at > a.observed_at for a, b in zip(rows, rows[1:]))
    assert max(r.power_kw for r in rows) == pytest.approx(4.6626, abs=1e-3)
    # records are valid wire records (built without validation: check a few the slow way)
    for r in rows[::97]:
        assert GpuTelemetry.model_validate(r.model_dump()) == r
        assert encode(r) == orjson.dumps(r.__dict__)
    t0 = datetime(2024, 2, 1, 12, tzinfo=UTC)
    moved = list(read_nvidia_smi(LOG, "sample", start=t0, job_id="node-7", gpu_class="batch"))
    assert timedelta(0) < moved[0].observed_at - t0 <= timedelta(seconds=1) and moved[0].job_id == "node-7"
    assert 630 <= len(moved) <= 645  # the same rounds, cut into whole seconds at another phase


def test_units_bad_cells_timezone_and_index_column(tmp_path):
    assert parse_quantity("69.32 W", "p") == 69.32 and parse_quantity(" 0 %", "u") == 0
    with pytest.raises(ValueError):
        parse_quantity("[N/A]", "p")
    p = tmp_path / "log.csv"
    p.write_text(HEAD
                 + "2025/01/15 08:00:00.000, 300.00 W, 50 %, 10 MiB\n"
                 + "2025/01/15 08:00:00.001, 100.00 W, 10 %, 10 MiB\n"
                 + "2025/01/15 08:00:00.100, [N/A], 10 %, 10 MiB\n"          # bad: line 4
                 + "2025/01/15 08:00:00.101, 100.00 W, 10 %\n"               # bad: line 5 (3 cells)
                 + "2025/01/15 08:00:01.000, 200.00 W, 30 %, 10 MiB\n"
                 + "2025/01/15 08:00:01.001, 200.00 W, 30 %, 10 MiB\n")
    bad = BadRows()
    rows = list(read_nvidia_smi(p, "s", bad, gpus_per_node=2, resample_s=0, tz="America/Chicago"))
    assert [b.line for b in bad.rows] == [4, 5] and "power.draw" in bad.rows[0].reason
    assert bad.rows[0].file == str(p)
    assert [r.power_kw for r in rows] == [pytest.approx(0.4), pytest.approx(0.4)]
    assert rows[0].observed_at == datetime(2025, 1, 15, 14, 0, tzinfo=UTC)  # 08:00 CST = 14:00 UTC
    assert rows[0].utilization == pytest.approx(0.30)
    with pytest.raises(BadRowError):
        list(read_nvidia_smi(p, "s", gpus_per_node=2))
    q = tmp_path / "idx.csv"
    q.write_text("timestamp, index, power.draw [W], utilization.gpu [%]\n"
                 "2025/01/15 08:00:00.000, 0, 100 W, 100 %\n2025/01/15 08:00:00.001, 1, 300 W, 0 %\n"
                 "2025/01/15 08:00:00.100, 0, 100 W, 100 %\n2025/01/15 08:00:00.101, 1, 300 W, 0 %\n")
    rows = list(read_nvidia_smi(q, "s", resample_s=0))
    assert len(rows) == 2 and rows[0].gpus == 2 and rows[0].power_kw == pytest.approx(0.4)
    assert rows[0].utilization == pytest.approx(0.5)
