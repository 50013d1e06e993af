"""``wattmix replay``: historical files into the Kafka topics, merged in event time.

    wattmix replay --kafka HOST:PORT [--site SITE.toml] \\
        --prices RT.parquet --prices DAM.csv --hashprice HP.csv [--dr-events DR.jsonl] \\
        [--gpu-telemetry GPU.parquet] [--nvidia-smi LOG.csv] [--alibaba PODS.csv] \\
        [--from 2024-01-01] [--to 2024-02-01] [--speed 3600] [--resume]

What it does
------------
1. **Read** every file with the reader for its format (``readers``: ERCOT native RTM/DAM CSV,
   wattmix layout CSV/Parquet/JSONL, daily hashprice CSV, DR events, raw ``nvidia-smi`` logs,
   the Alibaba GPU pod list). Bad rows are reported as ``file:line: reason``, counted and
   skipped; the replay goes on.
2. **Merge** all records into one event-time order: ``(event time, feed rank (grid_prices,
   dr_events, hashprice, gpu_telemetry), file, position in the file)`` -- the worker's
   ``FeedMerger`` and the backtest break ties the same way. The order is a pure function of
   the inputs, which is what makes ``--resume`` possible.
3. **Window** ``--from/--to`` on event time (``from <= t < to``). So that the engine starts
   the window knowing what it would have known, the state-like facts published before
   ``--from`` are carried in (published first, with their own event times): the latest
   hashprice, the day-ahead prices of intervals at or after ``--from``, DR events that have
   not ended by ``--from`` (latest revision) and the latest sample of every GPU job still
   queued/running/paused.
4. **Publish** each record to its feed's topic, keyed by ``site_id`` (every feed
   co-partitioned), Kafka timestamp = event time, as fast as possible or at ``--speed`` x
   real time (event-time pacing). Ordering across topics follows
   :func:`wattmix.demo.publish_events`: before the first record past an interval boundary
   (``--barrier-minutes``, default the site's interval) is sent, every record at or before
   it is acknowledged by the broker, so a worker never sees an interval's successor on one
   topic before its last record on another. A barrier is skipped when every
   unacknowledged record is in the same topic-partition as the next one (one partition is
   ordered anyway). Records go out as Kafka record batches (``create_batch``/
   ``send_batch``: ~10x aiokafka's per-message ``send()``, which tops out near 30k msg/s here).
5. **Checkpoint** (``--checkpoint``, default ``.wattmix-replay.json``): every
   ``--checkpoint-every`` events, once the broker acknowledged everything before it, a small
   JSON file records how many events of the merged order are acknowledged, the last event
   time and the counts per topic, plus a fingerprint of the inputs and options. ``--resume``
   skips the acknowledged prefix (refusing a checkpoint written for other inputs). Records
   between the last checkpoint and a crash are sent again: harmless, because the archive
   de-duplicates every feed on its fact key and actions on ``action_id``.
6. **Report** a progress line about once a second (events, event-time position, rate) and, at
   the end, the count per topic and the bad rows.

Idempotence: replaying the same files twice publishes the same records again; the worker
archives none of them twice (fact keys), and its actions carry the same ``action_id``.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import orjson

from readers.errors import BadRows
from schemas.site import SiteConfig
from schemas.topics import ACTIONS, DEAD_LETTERS, INPUT_FEEDS
from wattmix.errors import ConfigError

UTC = timezone.utc
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
FEED_RANK = {f.name: i for i, f in enumerate(INPUT_FEEDS)}
FEED_NAMES = tuple(f.name for f in INPUT_FEEDS)
EVENT_TIME_FIELD = {"grid_prices": "published_at", "dr_events": "issued_at", "hashprice": "published_at",
                    "gpu_telemetry": "observed_at"}
SOURCE_KINDS = ("prices", "hashprice", "dr_events", "gpu_telemetry", "nvidia_smi", "alibaba")
KIND_FEED = {"prices": "grid_prices", "hashprice": "hashprice", "dr_events": "dr_events",
             "gpu_telemetry": "gpu_telemetry", "nvidia_smi": "gpu_telemetry", "alibaba": "gpu_telemetry"}
CHECKPOINT_VERSION = 1
DEFAULT_CHECKPOINT = ".wattmix-replay.json"


# ---------------------------------------------------------------------------------------
# inputs


@dataclass(frozen=True)
class Source:
    """One input file and how to read it (``options`` go to the reader)."""

    kind: str
    path: str
    options: tuple[tuple[str, Any], ...] = ()

    def describe(self) -> dict[str, Any]:
        p = Path(self.path)
        st = p.stat()
        return {"kind": self.kind, "path": str(p.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns,
                "options": [[k, _jsonable(v)] for k, v in self.options]}


def _jsonable(v: Any) -> Any:
    return v.isoformat() if isinstance(v, datetime) else v


def _values_of(source: Source, site: SiteConfig, settlement_point: str, bad: BadRows) -> Iterator[dict]:
    """The field dicts (model field order, ``orjson.dumps`` = wire bytes) of a source's records."""
    from readers import read_dr_events, read_gpu_telemetry, read_hashprice, read_prices

    opts = dict(source.options)
    sid = site.site_id
    if source.kind == "prices":
        recs: Iterable[Any] = read_prices(source.path, sid, settlement_point, bad, market=opts.get("market"))
    elif source.kind == "hashprice":
        recs = read_hashprice(source.path, sid, bad)
    elif source.kind == "dr_events":
        recs = read_dr_events(source.path, sid, bad)
    elif source.kind == "gpu_telemetry":
        recs = read_gpu_telemetry(source.path, sid, bad)
    elif source.kind == "nvidia_smi":
        from readers.nvidia_smi import read_nvidia_smi

        recs = read_nvidia_smi(source.path, sid, bad, **opts)
    elif source.kind == "alibaba":
        from readers.alibaba import alibaba_pod_values

        yield from alibaba_pod_values(source.path, sid, bad, **opts)
        return
    else:
        raise ConfigError(f"unknown source kind {source.kind!r} (known: {', '.join(SOURCE_KINDS)})")
    for r in recs:
        yield r.__dict__


def _us(dt: datetime) -> int:
    return (dt - EPOCH) // timedelta(microseconds=1)


@dataclass
class Loaded:
    """The merged, windowed event stream, encoded: parallel lists in publication order."""

    times_us: list[int]
    feeds: list[int]                 # index into FEED_NAMES
    values: list[bytes]
    keys: dict[int, bytes]           # feed index -> key (one site: one key)
    bad: BadRows
    read_counts: dict[str, int]      # records read per source (before the window)
    carried_in: int = 0
    seconds: float = 0.0

    def __len__(self) -> int:
        return len(self.values)


def load_events(site: SiteConfig, sources: list[Source], *, settlement_point: str | None = None,
                start: datetime | None = None, end: datetime | None = None,
                bad: BadRows | None = None) -> Loaded:
    """Read, window and merge every source (see the module docstring, steps 1-3)."""
    t0 = time.perf_counter()
    bad = bad if bad is not None else BadRows()
    sp = settlement_point or site.settlement_point
    start_us = _us(start) if start is not None else None
    end_us = _us(end) if end is not None else None
    keyed: list[tuple[int, int, int, int, dict]] = []
    before: dict[int, list[tuple[int, int, int, dict]]] = {i: [] for i in range(len(FEED_NAMES))}
    read_counts: dict[str, int] = {}
    gc_was = gc.isenabled()
    gc.disable()  # hundreds of thousands of small dicts: the cyclic GC would rescan them all
    try:
        for si, src in enumerate(sources):
            feed = KIND_FEED[src.kind]
            fi = FEED_RANK[feed]
            et = EVENT_TIME_FIELD[feed]
            n = 0
            for seq, values in enumerate(_values_of(src, site, sp, bad)):
                n += 1
                t = _us(values[et])
                if end_us is not None and t >= end_us:
                    continue
                if start_us is not None and t < start_us:
                    before[fi].append((t, si, seq, values))
                    continue
                keyed.append((t, fi, si, seq, values))
            read_counts[f"{src.kind}:{Path(src.path).name}"] = n
        carried = _carry_in(before, start) if start is not None else []
        keyed.extend(carried)
        keyed.sort(key=lambda x: x[:4])
        dumps = orjson.dumps
        times = [k[0] for k in keyed]
        feeds = [k[1] for k in keyed]
        values = [dumps(k[4]) for k in keyed]
    finally:
        if gc_was:
            gc.enable()
    key = site.site_id.encode()
    return Loaded(times, feeds, values, {i: key for i in range(len(FEED_NAMES))}, bad, read_counts,
                  len(carried), time.perf_counter() - t0)


def _carry_in(before: dict[int, list[tuple[int, int, int, dict]]], start: datetime) -> list[tuple[int, int, int, int, dict]]:
    """State-like facts published before the window that the engine needs at its start."""
    out = []
    gp, dr, hp, gpu = (FEED_RANK[n] for n in FEED_NAMES)
    for t, si, seq, v in before[gp]:  # day-ahead prices of intervals inside the window
        if v["market"] == "DA" and v["interval_start"] >= start:
            out.append((t, gp, si, seq, v))
    if before[hp]:  # the latest hashprice
        t, si, seq, v = max(before[hp], key=lambda x: (x[3]["as_of"], x[0], x[1], x[2]))
        out.append((t, hp, si, seq, v))
    latest_dr: dict[str, tuple] = {}
    for item in before[dr]:
        v = item[3]
        cur = latest_dr.get(v["event_id"])
        if cur is None or (v["revision"], item[0]) >= (cur[3]["revision"], cur[0]):
            latest_dr[v["event_id"]] = item
    out.extend((t, dr, si, seq, v) for t, si, seq, v in latest_dr.values() if v["end"] > start)
    latest_job: dict[str, tuple] = {}
    for item in before[gpu]:
        cur = latest_job.get(item[3]["job_id"])
        if cur is None or item[:3] >= cur[:3]:
            latest_job[item[3]["job_id"]] = item
    out.extend((t, gpu, si, seq, v) for t, si, seq, v in latest_job.values() if v["state"] != "completed")
    return out


# ---------------------------------------------------------------------------------------
# checkpoint


def fingerprint(site: SiteConfig, sources: list[Source], settlement_point: str, start: datetime | None,
                end: datetime | None, topics: dict[str, str]) -> str:
    """Identifies the merged stream: same files (path, size, mtime), options, window, site, topics."""
    doc = {"site": site.site_id, "sp": settlement_point, "from": _jsonable(start), "to": _jsonable(end),
           "topics": topics, "sources": [s.describe() for s in sources]}
    return hashlib.sha256(orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)).hexdigest()[:32]


@dataclass
class Checkpoint:
    fingerprint: str
    events_total: int
    acknowledged: int = 0
    last_event_time: str | None = None
    per_topic: dict[str, int] = field(default_factory=dict)
    complete: bool = False

    def write(self, path: str | Path) -> None:
        """Atomic: a crash leaves the old file or the new one, never half of one."""
        p = Path(path)
        tmp = p.with_name(p.name + ".tmp")
        doc = {"version": CHECKPOINT_VERSION, "fingerprint": self.fingerprint, "events_total": self.events_total,
               "acknowledged": self.acknowledged, "last_event_time": self.last_event_time,
               "per_topic": self.per_topic, "complete": self.complete,
               "updated_at": datetime.now(UTC).isoformat(timespec="seconds")}
        with open(tmp, "wb") as fh:
            fh.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, p)

    @classmethod
    def read(cls, path: str | Path) -> "Checkpoint | None":
        p = Path(path)
        if not p.exists():
            return None
        try:
            d = json.loads(p.read_text())
            if d.get("version") != CHECKPOINT_VERSION:
                raise ValueError(f"version {d.get('version')}")
            return cls(d["fingerprint"], int(d["events_total"]), int(d["acknowledged"]), d.get("last_event_time"),
                       {k: int(v) for k, v in d.get("per_topic", {}).items()}, bool(d.get("complete")))
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"replay checkpoint {p} is unreadable ({exc}); delete it to start over") from exc


# ---------------------------------------------------------------------------------------
# publishing


@dataclass
class PublishResult:
    published: int = 0                       # records sent (and acknowledged) by this run
    skipped: int = 0                         # acknowledged prefix skipped on --resume
    per_topic: dict[str, int] = field(default_factory=dict)   # incl. the resumed prefix
    last_offsets: dict[tuple[str, int], int] = field(default_factory=dict)
    barriers: int = 0
    seconds: float = 0.0
    last_event_us: int | None = None

    @property
    def rate(self) -> float:
        return self.published / self.seconds if self.seconds > 0 else 0.0


def ceil_us(t_us: int, step_us: int) -> int:
    return -(-t_us // step_us) * step_us


async def publish_loaded(bootstrap: str, loaded: Loaded, topics: dict[str, str], *,
                         speed: float | None = None, barrier_minutes: int = 15,
                         skip: int = 0, per_topic_start: dict[str, int] | None = None,
                         checkpoint: Checkpoint | None = None, checkpoint_path: str | Path | None = None,
                         checkpoint_every: int = 50_000,
                         progress: Callable[[int, int, int, float], None] | None = None,
                         stop_after: int | None = None, max_batch_bytes: int = 512 * 1024) -> PublishResult:
    """Publish ``loaded`` (from position ``skip``) to ``topics`` ({feed name: topic}).

    ``progress(done, total, event_time_us, rate)`` about once a second; ``stop_after``
    (tests) stops after that many records of this run as an interruption would, leaving the
    last periodic checkpoint in place.
    """
    from aiokafka import AIOKafkaProducer
    from aiokafka.partitioner import DefaultPartitioner

    res = PublishResult(skipped=skip, per_topic=dict(per_topic_start or {}))
    for name in FEED_NAMES:
        res.per_topic.setdefault(topics[name], 0)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, **_security(), acks="all", linger_ms=0, enable_idempotence=False,
                                max_batch_size=max_batch_bytes, max_request_size=8 * max_batch_bytes)
    await producer.start()
    try:
        partitioner = DefaultPartitioner()
        # one site = one key: each feed's records go to one partition (co-partitioned: same number)
        tps: list[tuple[str, int]] = []
        for fi, name in enumerate(FEED_NAMES):
            parts = sorted(await producer.partitions_for(topics[name]))
            tps.append((topics[name], partitioner(loaded.keys[fi], parts, parts)))
        builders: list[Any] = [None] * len(tps)
        counts = [0] * len(tps)           # records in the open builder
        unacked: set[int] = set()         # feed indexes with records not yet acknowledged
        inflight: list[tuple[Any, int, int]] = []   # (future, feed index, records)
        create = producer.create_batch
        send_batch = producer.send_batch

        async def ship(fi: int) -> None:
            b = builders[fi]
            if b is not None and counts[fi]:
                topic, part = tps[fi]
                fut = await send_batch(b, topic, partition=part)
                inflight.append((fut, fi, counts[fi]))
            builders[fi] = None
            counts[fi] = 0

        async def drain() -> None:
            for fi in range(len(tps)):
                await ship(fi)
            if inflight:
                for md, (_, fi, n) in zip(await asyncio.gather(*(f for f, _, _ in inflight)), inflight):
                    k = (md.topic, md.partition)
                    last = md.offset + n - 1
                    if last > res.last_offsets.get(k, -1):
                        res.last_offsets[k] = last
                inflight.clear()
            unacked.clear()

        times, feeds, values = loaded.times_us, loaded.feeds, loaded.values
        keys = loaded.keys
        total = len(values)
        step_us = barrier_minutes * 60_000_000 if barrier_minutes > 0 else 0
        barrier: int | None = None
        t_wall0 = time.perf_counter()
        t_event0 = times[skip] if skip < total else 0
        next_report = t_wall0 + 1.0
        done = 0
        topic_counts = [0] * len(tps)
        end = total if stop_after is None else min(total, skip + stop_after)

        def save(pos: int, complete: bool = False) -> None:
            if checkpoint is None or checkpoint_path is None:
                return
            checkpoint.acknowledged = pos
            checkpoint.last_event_time = (EPOCH + timedelta(microseconds=times[pos - 1])).isoformat() if pos else None
            checkpoint.per_topic = {tps[i][0]: res.per_topic[tps[i][0]] + topic_counts[i] for i in range(len(tps))}
            checkpoint.complete = complete
            checkpoint.write(checkpoint_path)

        for i in range(skip, end):
            t = times[i]
            fi = feeds[i]
            if step_us:
                if barrier is not None and t > barrier:
                    if unacked and (len(unacked) > 1 or fi not in unacked):
                        await drain()
                        res.barriers += 1
                    barrier = ceil_us(t, step_us)
                elif barrier is None:
                    barrier = ceil_us(t, step_us)
            if speed:
                due = t_wall0 + (t - t_event0) / 1e6 / speed
                wait = due - time.perf_counter()
                if wait > 0.002:
                    for f in range(len(tps)):
                        await ship(f)
                    await asyncio.sleep(wait)
            b = builders[fi]
            if b is None:
                b = builders[fi] = create()
            ts_ms = t // 1000
            if b.append(timestamp=ts_ms, key=keys[fi], value=values[i], headers=[]) is None:
                await ship(fi)
                b = builders[fi] = create()
                if b.append(timestamp=ts_ms, key=keys[fi], value=values[i], headers=[]) is None:
                    raise ConfigError(f"a record of {len(values[i]):,} bytes does not fit a Kafka batch")
            counts[fi] += 1
            topic_counts[fi] += 1
            unacked.add(fi)
            done += 1
            if done % checkpoint_every == 0:
                await drain()
                save(i + 1)
            if done & 1023 == 0:
                if len(inflight) > 256:  # bound memory: wait for what is on the wire
                    await drain()
                now = time.perf_counter()
                if progress and now >= next_report:
                    progress(i + 1, total, t, done / (now - t_wall0))
                    next_report = now + 1.0
        await drain()
        if stop_after is None or end == total:
            save(end, complete=(end == total))
        res.published = done
        res.seconds = time.perf_counter() - t_wall0
        res.last_event_us = times[end - 1] if end > 0 else None
        for fi in range(len(tps)):
            res.per_topic[tps[fi][0]] += topic_counts[fi]
        if progress and done:
            progress(end, total, times[end - 1], res.rate)
    finally:
        await producer.stop()
    return res


# ---------------------------------------------------------------------------------------
# the command


def parse_when(text: str | None) -> datetime | None:
    if not text:
        return None
    s = text.strip().replace("Z", "+00:00")
    try:
        dt = datetime.fromisoformat(s)
    except ValueError as exc:
        raise ConfigError(f"{text!r} is not a date or ISO-8601 timestamp") from exc
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


def topic_names(suffix: str = "") -> dict[str, str]:
    return {f.name: f.topic + suffix for f in INPUT_FEEDS}


def sources_from_args(args) -> list[Source]:
    out: list[Source] = []
    for p in args.prices:
        out.append(Source("prices", p))
    for p in args.hashprice:
        out.append(Source("hashprice", p))
    for p in args.dr_events:
        out.append(Source("dr_events", p))
    for p in args.gpu_telemetry:
        out.append(Source("gpu_telemetry", p))
    for p in args.nvidia_smi:
        opts: list[tuple[str, Any]] = [("gpu_class", args.nvidia_smi_class), ("tz", args.nvidia_smi_tz),
                                       ("resample_s", args.nvidia_smi_resample)]
        if args.nvidia_smi_start:
            opts.append(("start", parse_when(args.nvidia_smi_start)))
        out.append(Source("nvidia_smi", p, tuple(opts)))
    for p in args.alibaba:
        out.append(Source("alibaba", p, (("start", parse_when(args.alibaba_start)),
                                         ("sample_minutes", args.alibaba_sample_minutes))))
    for s in out:
        if not Path(s.path).exists():
            raise ConfigError(f"{s.kind} file not found: {s.path}")
    if not out:
        raise ConfigError("nothing to replay: give at least one of --prices, --hashprice, --dr-events, "
                          "--gpu-telemetry, --nvidia-smi, --alibaba")
    return out


def add_replay_arguments(p) -> None:
    p.add_argument("--kafka", default=os.environ.get("WATTMIX_KAFKA", "127.0.0.1:9092"),
                   help="bootstrap servers (env WATTMIX_KAFKA)")
    p.add_argument("--site", default=None, help="site TOML (site_id, settlement point, interval); default: the sample site")
    p.add_argument("--settlement-point", default=None, help="override the site's settlement point")
    p.add_argument("--prices", action="append", default=[],
                   help="grid prices: ERCOT native RTM/DAM CSV or wattmix layout CSV/Parquet/JSONL (repeatable)")
    p.add_argument("--hashprice", action="append", default=[], help="daily hashprice CSV (repeatable)")
    p.add_argument("--dr-events", action="append", default=[], help="DR events, wattmix layout (repeatable)")
    p.add_argument("--gpu-telemetry", action="append", default=[], help="GPU telemetry, wattmix layout (repeatable)")
    p.add_argument("--nvidia-smi", action="append", default=[], help="raw nvidia-smi CSV log: one node = one job (repeatable)")
    p.add_argument("--nvidia-smi-class", default="training", choices=["inference", "training", "batch"])
    p.add_argument("--nvidia-smi-tz", default="UTC", help="time zone the log's timestamps are in (default UTC)")
    p.add_argument("--nvidia-smi-start", default=None, help="re-anchor the log's first sample at this time")
    p.add_argument("--nvidia-smi-resample", type=float, default=1.0, help="seconds per sample (0 = every round)")
    p.add_argument("--alibaba", action="append", default=[], help="Alibaba GPU trace pod list CSV (repeatable)")
    p.add_argument("--alibaba-start", default="2024-01-01T00:00:00Z", help="instant of the trace's second 0")
    p.add_argument("--alibaba-sample-minutes", type=float, default=15, help="heartbeat of running jobs (0 = none)")
    p.add_argument("--from", dest="start", default=None, help="first event time (inclusive), e.g. 2024-03-01")
    p.add_argument("--to", dest="end", default=None, help="last event time (exclusive)")
    p.add_argument("--speed", type=float, default=None, help="N x real time (default: as fast as possible)")
    p.add_argument("--barrier-minutes", type=int, default=None,
                   help="acknowledge everything up to each boundary of this many minutes before crossing it "
                        "(default: the site's interval; 0 = no barriers, cross-topic order not guaranteed)")
    p.add_argument("--partitions", type=int, default=None, help="partitions of topics created if missing")
    p.add_argument("--topic-suffix", default=os.environ.get("WATTMIX_TOPIC_SUFFIX", ""),
                   help="suffix appended to every topic name")
    p.add_argument("--checkpoint", default=DEFAULT_CHECKPOINT, help=f"checkpoint file (default {DEFAULT_CHECKPOINT})")
    p.add_argument("--checkpoint-every", type=int, default=50_000, help="events between checkpoints")
    p.add_argument("--resume", action="store_true", help="skip what the checkpoint says was acknowledged")
    p.add_argument("--quiet", action="store_true", help="no progress lines")


def run_replay_cli(args, out=sys.stdout) -> int:
    from schemas.site import load_sample_site, load_site
    from schemas.topics import DEFAULT_PARTITIONS
    from wattmix.broker import ensure_topics

    def say(msg: str) -> None:
        if not args.quiet:
            print(msg, file=out, flush=True)

    site = load_site(args.site) if args.site else load_sample_site()
    sp = (args.settlement_point or site.settlement_point).strip().upper()
    start, end = parse_when(args.start), parse_when(args.end)
    if start and end and end <= start:
        raise ConfigError(f"--to {end.isoformat()} is not after --from {start.isoformat()}")
    sources = sources_from_args(args)
    topics = topic_names(args.topic_suffix)
    fp = fingerprint(site, sources, sp, start, end, topics)
    skip, per_topic_start = 0, None
    ckpt_path = Path(args.checkpoint) if args.checkpoint else None
    if args.resume:
        if ckpt_path is None:
            raise ConfigError("--resume needs a --checkpoint file")
        old = Checkpoint.read(ckpt_path)
        if old is None:
            say(f"resume: no checkpoint at {ckpt_path}: starting from the beginning")
        elif old.fingerprint != fp:
            raise ConfigError(f"checkpoint {ckpt_path} was written for other inputs, window or topics "
                              "(fingerprint differs): run without --resume, or delete it")
        elif old.complete:
            say(f"resume: {ckpt_path} says this replay completed ({old.acknowledged:,} events): nothing to do")
            return 0
        else:
            skip, per_topic_start = old.acknowledged, old.per_topic
            say(f"resume: skipping {skip:,} acknowledged events (up to event time {old.last_event_time})")

    bad = BadRows()
    loaded = load_events(site, sources, settlement_point=sp, start=start, end=end, bad=bad)
    say(f"read {sum(loaded.read_counts.values()):,} records from {len(sources)} file(s) in {loaded.seconds:.1f} s "
        f"({', '.join(f'{k} {v:,}' for k, v in loaded.read_counts.items())}); {len(loaded):,} to publish"
        + (f", {loaded.carried_in:,} carried in from before --from" if loaded.carried_in else ""))
    if bad.count:
        say(bad.summary(max_lines=20))
    if not len(loaded):
        say("nothing to publish in this window")
        return 0 if not bad.count else 1
    if skip > len(loaded):
        raise ConfigError(f"checkpoint says {skip:,} events were acknowledged but there are only {len(loaded):,}")

    partitions = args.partitions or DEFAULT_PARTITIONS
    all_topics = list(topics.values()) + [ACTIONS.topic + args.topic_suffix, DEAD_LETTERS.topic + args.topic_suffix]
    asyncio.run(ensure_topics(args.kafka, all_topics, partitions))
    ckpt = Checkpoint(fp, len(loaded)) if ckpt_path is not None else None

    def progress(i: int, n: int, t_us: int, rate: float) -> None:
        et = EPOCH + timedelta(microseconds=t_us)
        say(f"  {i:>10,}/{n:,} events  event time {et:%Y-%m-%d %H:%M} UTC  {rate:,.0f} events/s")

    barrier = site.interval_minutes if args.barrier_minutes is None else args.barrier_minutes
    res = asyncio.run(publish_loaded(
        args.kafka, loaded, topics, speed=args.speed, barrier_minutes=barrier, skip=skip,
        per_topic_start=per_topic_start, checkpoint=ckpt, checkpoint_path=ckpt_path,
        checkpoint_every=max(1, args.checkpoint_every), progress=None if args.quiet else progress))
    say(f"published {res.published:,} events in {res.seconds:.2f} s ({res.rate:,.0f} events/s, "
        f"{res.barriers:,} ordering barriers)" + (f", after {skip:,} resumed" if skip else ""))
    say("per topic:")
    for topic, n in res.per_topic.items():
        say(f"  {topic:<40} {n:>10,}")
    if bad.count:
        say(f"{bad.count:,} bad row(s) skipped (listed above)")
    return 0


def _security() -> dict:
    """SASL/TLS settings for aiokafka clients, from the environment (see streams/security.py)."""
    from streams.security import client_kwargs

    return client_kwargs()
