"""Raw ``nvidia-smi`` CSV logs as GPU job telemetry.

The log is what ``nvidia-smi --query-gpu=timestamp,power.draw,utilization.gpu,memory.used
--format=csv -lms 100`` prints: a header such as
``timestamp, power.draw [W], utilization.gpu [%], memory.used [MiB]`` and one line per GPU
per polling round, with the units inside the values (``2025/07/26 23:32:09.703, 69.32 W,
0 %, 132 MiB``). Cells like ``[N/A]`` or ``[Not Supported]`` make the row bad.

Mapping (documented assumptions, all overridable):

* **one log = one node = one job.** nvidia-smi knows GPUs, not jobs; a training run that
  owns a whole 8-GPU node (the usual case for the logs people keep, e.g. the H100 x 8 trace
  in ../shared/data) is one job. ``job_id`` defaults to ``nvidia-smi-<file stem>``,
  ``gpu_class`` to ``training``. A node shared by several jobs needs one log per job.
* **rounds.** A polling round has one line per GPU, in GPU index order. With an ``index``
  (or ``pci.bus_id`` / ``uuid``) column a round ends where a GPU repeats; without one the
  GPU count is ``gpus_per_node`` or, if not given, the most common number of lines that
  share one timestamp (8 in the H100 log). The lines of one round are stamped a few ms
  apart; the round is stamped with its first line.
* **samples.** Rounds are averaged over windows of ``resample_s`` seconds (default 1 s;
  0 keeps every round): ``power_kw`` = mean over the window's rounds of the sum of the
  GPUs' ``power.draw`` (board power: the node's CPUs, fans and PSU losses are not in it; add
  them with ``node_overhead_kw``), ``utilization`` = mean ``utilization.gpu`` / 100,
  ``gpus`` = GPUs in a round, ``state`` = ``running``. A window's mean is known at its end,
  so ``observed_at`` = window end (a whole-second instant for the default window).
* **time.** nvidia-smi prints the host's local time without an offset: ``tz`` names that
  zone (default UTC). ``start`` re-anchors the log so its first round lands at ``start``
  (to play a 2025 log against 2024 prices, say).
"""

from __future__ import annotations

import csv
import re
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

from readers.errors import BadRows, report
from schemas.base import trusted
from schemas.base import GpuClass
from schemas.feeds import GpuTelemetry

UTC = timezone.utc
_UNIT = re.compile(r"^\s*([-+]?\d+(?:\.\d+)?)\s*([A-Za-z%/]*)\s*$")
_TS_FORMATS = ("%Y/%m/%d %H:%M:%S.%f", "%Y/%m/%d %H:%M:%S", "%Y-%m-%d %H:%M:%S.%f", "%Y-%m-%d %H:%M:%S")


def field_name(header_cell: str) -> str:
    """``'power.draw [W]'`` -> ``'power.draw'``."""
    return header_cell.split("[", 1)[0].strip().lower()


def parse_quantity(text: str, column: str) -> float:
    """``'69.32 W'`` -> 69.32; ``'0 %'`` -> 0.0; ``'[N/A]'`` raises ValueError."""
    s = text.strip()
    m = _UNIT.match(s)
    if not m:
        raise ValueError(f"{column}: {text.strip()!r} is not a number with a unit")
    return float(m.group(1))


def parse_timestamp(text: str, tz) -> datetime:
    s = text.strip()
    if len(s) == 23 and s[4] in "/-" and s[10] == " " and s[19] == ".":  # the usual shape, ~10x strptime
        try:
            return datetime(int(s[0:4]), int(s[5:7]), int(s[8:10]), int(s[11:13]), int(s[14:16]), int(s[17:19]),
                            int(s[20:23]) * 1000, tzinfo=tz).astimezone(UTC)
        except ValueError:
            pass
    for fmt in _TS_FORMATS:
        try:
            dt = datetime.strptime(s, fmt)
        except ValueError:
            continue
        return dt.replace(tzinfo=tz).astimezone(UTC)
    raise ValueError(f"timestamp {s!r} is not YYYY/MM/DD HH:MM:SS.mmm")


def _rows(path: Path, bad: BadRows | None, tz) -> Iterator[tuple[int, datetime, str | None, float, float]]:
    """(line, time, gpu id or None, watts, utilization %) of every good line."""
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh, skipinitialspace=True)
        header = [field_name(c) for c in next(reader, [])]
        need = ("timestamp", "power.draw", "utilization.gpu")
        missing = [c for c in need if c not in header]
        if missing:
            report(bad, path, 1, f"not an nvidia-smi --query-gpu CSV log: missing {missing} in {header}")
            return
        i_ts, i_p, i_u = (header.index(c) for c in need)
        i_id = next((header.index(c) for c in ("index", "pci.bus_id", "uuid") if c in header), None)
        for lineno, row in enumerate(reader, start=2):
            if not row or all(not c.strip() for c in row):
                continue
            if len(row) != len(header):
                report(bad, path, lineno, f"{len(row)} cells for {len(header)} columns")
                continue
            try:
                t = parse_timestamp(row[i_ts], tz)
                watts = parse_quantity(row[i_p], "power.draw")
                util = parse_quantity(row[i_u], "utilization.gpu")
                if watts < 0 or not 0 <= util <= 100:
                    raise ValueError(f"power {watts} W / utilization {util} % out of range")
            except ValueError as exc:
                report(bad, path, lineno, str(exc))
                continue
            yield lineno, t, (row[i_id].strip() if i_id is not None else None), watts, util


def infer_gpus_per_node(path: str | Path, tz="UTC") -> int:
    """The most common number of lines sharing one timestamp (a round's lines usually do)."""
    tzinfo = ZoneInfo(tz) if isinstance(tz, str) else tz
    counts = Counter(t for _, t, _, _, _ in _rows(Path(path), BadRows(), tzinfo))
    per = Counter(counts.values())
    return per.most_common(1)[0][0] if per else 1


def read_nvidia_smi(
    path: str | Path,
    site_id: str,
    bad: BadRows | None = None,
    *,
    job_id: str | None = None,
    gpu_class: GpuClass = "training",
    gpus_per_node: int | None = None,
    resample_s: float = 1.0,
    tz: str = "UTC",
    start: datetime | None = None,
    node_overhead_kw: float = 0.0,
) -> Iterator[GpuTelemetry]:
    """GPU telemetry of the job running on the node that wrote this nvidia-smi log (see module doc)."""
    path = Path(path)
    tzinfo = ZoneInfo(tz)
    job = job_id or f"nvidia-smi-{path.stem}"
    rows = list(_rows(path, bad, tzinfo))
    if not rows:
        return
    has_id = rows[0][2] is not None
    if not has_id and gpus_per_node is None:
        per = Counter(Counter(r[1] for r in rows).values())
        gpus_per_node = per.most_common(1)[0][0]
    # group lines into rounds
    rounds: list[tuple[int, datetime, float, float, int]] = []  # line, time, watts sum, util sum, gpus
    cur: list[tuple[int, datetime, str | None, float, float]] = []

    def close(group):
        rounds.append((group[0][0], group[0][1], sum(g[3] for g in group), sum(g[4] for g in group), len(group)))

    for r in rows:
        if has_id:
            if cur and r[2] in {g[2] for g in cur}:
                close(cur)
                cur = []
        cur.append(r)
        if not has_id and len(cur) == gpus_per_node:
            close(cur)
            cur = []
    if cur:
        if has_id:
            close(cur)
        else:
            report(bad, path, cur[0][0], f"incomplete polling round at the end: {len(cur)} of {gpus_per_node} GPUs")
    if not rounds:
        return
    shift = (start.astimezone(UTC) - rounds[0][1]) if start is not None else timedelta(0)
    gpus = max(r[4] for r in rounds)

    def emit(t_end: datetime, watts: float, util: float, line: int) -> GpuTelemetry | None:
        power_kw = watts / 1000.0 + node_overhead_kw
        u = min(max(util / 100.0, 0.0), 1.0)
        if t_end.tzinfo is None:  # pragma: no cover - defensive
            report(bad, path, line, "naive timestamp")
            return None
        return trusted(GpuTelemetry, {
            "schema_version": 1, "site_id": site_id, "job_id": job, "gpu_class": gpu_class, "gpus": gpus,
            "power_kw": power_kw, "utilization": u, "state": "running", "observed_at": t_end,
        })

    if resample_s <= 0:
        for line, t, w, u, n in rounds:
            rec = emit(t + shift, w, u / n, line)
            if rec is not None:
                yield rec
        return
    step_us = int(resample_s * 1_000_000)
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    win: int | None = None
    acc_w = acc_u = 0.0
    acc_n = 0
    first_line = 0
    for line, t, w, u, n in rounds:
        us = (t + shift - epoch) // timedelta(microseconds=1)
        k = us // step_us
        if win is not None and k < win:
            k = win  # a round stamped a few ms back (lines of a round jitter): same window
        if win is not None and k != win:
            rec = emit(epoch + timedelta(microseconds=(win + 1) * step_us), acc_w / acc_n, acc_u / acc_n, first_line)
            if rec is not None:
                yield rec
            acc_w = acc_u = 0.0
            acc_n = 0
        if acc_n == 0:
            first_line = line
        win = k
        acc_w += w
        acc_u += u / n
        acc_n += 1
    if acc_n:
        rec = emit(epoch + timedelta(microseconds=(win + 1) * step_us), acc_w / acc_n, acc_u / acc_n, first_line)
        if rec is not None:
            yield rec
