"""The Faust application and its settings.

Faust is used for what it is good at (consumer groups, partition assignment, offset
commits, the producer) and kept out of the hot path: topics carry raw bytes (``faust.Record``
costs 17.7 us per event here, orjson + pydantic 3-5 us) and whole fetches are delivered to the
worker by :class:`streams.batching.BatchConsumer` instead of Faust's per-message stream path.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import faust

from schemas.site import SiteConfig, load_sample_site, load_site
from streams.security import KafkaSecurity
from schemas.topics import ACTIONS, DEAD_LETTERS, DEFAULT_PARTITIONS, INPUT_FEEDS


#: How far ahead of this worker's wall clock an event may be stamped. Every feed's event time
#: is when something happened or was published (a price's publication, a DR notice, a
#: telemetry sample), never a time to come, so an event an hour ahead is a producer's clock or
#: unit error. Accepted, it would move the site's event-time clock past every real event to come
#: (nothing would be decided until the wall clock caught up); it goes to the dead letters
#: instead. The wall clock only guards the edge here: it never enters a decision. None: no check
#: (a simulation running ahead of the wall clock).
MAX_FUTURE_S = 3600.0


@dataclass(frozen=True)
class TopicNames:
    """Topic names; a ``suffix`` gives a test or a tenant its own set."""

    suffix: str = ""

    def feed(self, feed_name: str) -> str:
        for f in INPUT_FEEDS:
            if f.name == feed_name:
                return f.topic + self.suffix
        raise KeyError(feed_name)

    @property
    def inputs(self) -> dict[str, str]:
        return {f.name: f.topic + self.suffix for f in INPUT_FEEDS}

    @property
    def actions(self) -> str:
        return ACTIONS.topic + self.suffix

    @property
    def dead_letters(self) -> str:
        return DEAD_LETTERS.topic + self.suffix

    @property
    def all(self) -> list[str]:
        return [*self.inputs.values(), self.actions, self.dead_letters]


@dataclass(frozen=True)
class WorkerSettings:
    kafka: str = "127.0.0.1:9092"
    db: str = "wattmix.duckdb"
    sites: tuple[SiteConfig, ...] = ()
    app_id: str = "wattmix-worker"
    topics: TopicNames = field(default_factory=TopicNames)
    partitions: int = DEFAULT_PARTITIONS
    # Batching: a step takes whatever one fetch returned, up to `batch_max` records (aiokafka's
    # max_poll_records). ~10,000 events decode+fold in ~0.3 s; DuckDB commits cost ~10 ms each,
    # so larger steps amortize them. Under a light load a fetch returns what arrived, at once.
    batch_max: int = 10_000
    # ...handed to the pipeline in steps of at most `step_max` records, smallest partitions first
    # (streams/batching.py split_steps): a boundary is decided once the step holding the first
    # event past it is folded (~1,000 events: ~20 ms), not after the whole fetch (~0.3 s).
    step_max: int = 1_000
    # Group commits start at most this often. A DuckDB transaction costs ~10 ms of CPU whatever its
    # size: at 2k msg/s a write per fetch (26/s) kept the writer thread at 0.29 cores, 0.10 with
    # 0.25 s (bench_latency --trace). Actions are published before, so only offset commits wait.
    archive_interval_s: float = 0.25
    # Events (messages) decided but not yet durable (archived + acked) at most; then the fetch
    # loop waits.
    max_inflight_events: int = 40_000
    # The same bound in archive rows: a GPU telemetry batch message is one event and a row per
    # sample. Batch rows wait as Arrow (ArchiveBatch.seal, ~0.1 kB each: ~50 MB at the bound).
    # Below ~2 group commits' worth of rows the fetch loop waits for every write (1,000-job
    # scrapes, bench_stream.py --only scrape: 40k rows 161k samples/s, 500k 267k, 1M 308k).
    max_inflight_rows: int = 500_000
    # DuckDB memory limit of the worker's archive (0: DuckDB's default, 80% of RAM). Without a
    # limit the archive's buffer pool keeps what was written, so the worker's memory grows with
    # the archive (sinks/archive.py Archive). 64 MB keeps it flat: a 10-minute soak at 10k msg/s
    # (6M archived rows) grew +2.9% with 64 MB and +11.6% with 256 MB, at the same throughput
    # (bench/bench_soak.py, bench/bench_archive_memory.py); larger queries spill to <db>.tmp.
    archive_memory_mb: int = 64
    # Events stamped further ahead of the wall clock go to the dead letters (FutureEvent).
    max_future_s: float | None = MAX_FUTURE_S
    # Fetch size per partition: Faust's default 1 MB caps a fetch at ~5,000 records of 200 B.
    fetch_partition_max_bytes: int = 4 * 1024 * 1024
    # How long the broker may hold a fetch when no data is there (the latency floor when idle).
    fetch_max_wait_s: float = 0.05
    # The first JoinGroup on tansu waits about half the session timeout; 10 s keeps start-up short
    # and is still above Faust's heartbeat interval (3 s).
    session_timeout_s: float = 10.0
    commit_interval_s: float = 1.0
    # A feed partition that has not reported its high watermark for this long stops blocking
    # the event-time merge (like Kafka Streams' max.task.idle.ms); wall clock affects only
    # *when* a decision is taken, never *what* it decides.
    max_idle_s: float = 2.0
    # A caught-up partition counts as idle only after staying caught up this long, so a record
    # in flight from another producer (prices and telemetry come from different processes)
    # still makes it into the interval it belongs to. Decisions wait at most this long.
    idle_grace_s: float = 0.1
    # ...except a caught-up feed whose newest event sits exactly on the boundary the site decides
    # next (a real-time price is published at its interval's end, i.e. on the boundary): it idles
    # at once, so a price at a boundary triggers the decision as soon as every other feed is
    # caught up or past the boundary. Assumes a feed's producer writes everything stamped at
    # that instant together (one produce request); switch off to always wait `idle_grace_s`.
    boundary_fast_path: bool = True
    # How often held-back events are re-checked for release (the timer).
    tick_s: float = 0.02
    # How often the worker checks that the broker answers (outages show in its log; see
    # DispatchWorker._broker_probe); also the probe's timeout.
    broker_probe_s: float = 2.0
    # SASL/TLS from the environment (streams/security.py); the password is a SecretStr.
    security: KafkaSecurity = field(default_factory=KafkaSecurity)
    # Faust credentials object; overrides `security` when given (kept out of repr).
    broker_credentials: object | None = field(default=None, repr=False)
    # `wattmix worker --web-port N`: /metrics, /api/state and a live dashboard on web_bind:N
    # (streams/web.py); None: no web server at all.
    web_port: int | None = None
    web_bind: str = "127.0.0.1"

    @classmethod
    def from_args(cls, kafka: str, db: str, site_files: list[str] | None = None, topic_suffix: str = "",
                  **kw) -> "WorkerSettings":
        sites = tuple(load_site(Path(p)) for p in (site_files or [])) or (load_sample_site(),)
        kw.setdefault("security", KafkaSecurity.from_env())
        return cls(kafka=kafka, db=db, sites=sites, topics=TopicNames(topic_suffix), **kw)


def create_app(settings: WorkerSettings) -> faust.App:
    import tempfile

    # Faust wants a data directory even with in-memory tables; keep it out of the cwd
    datadir = Path(tempfile.gettempdir()) / "wattmix-faust" / settings.app_id
    datadir.mkdir(parents=True, exist_ok=True)
    return faust.App(
        settings.app_id,
        datadir=str(datadir),
        broker=f"kafka://{settings.kafka}",
        broker_credentials=settings.broker_credentials or settings.security.faust_credentials(),
        value_serializer="raw",
        key_serializer="raw",
        store="memory://",
        web_enabled=False,
        topic_partitions=settings.partitions,
        topic_disable_leader=True,  # no internal leader topic: nothing else to create/replicate
        broker_session_timeout=settings.session_timeout_s,
        broker_heartbeat_interval=min(3.0, settings.session_timeout_s / 3),
        broker_commit_interval=settings.commit_interval_s,
        consumer_auto_offset_reset="earliest",  # never "latest": tansu's ListOffsets(latest) is wrong
        producer_acks=-1,
        # Only actions and dead letters are produced (one action per site per 15 min): nothing
        # to batch, and a 5 ms linger timer fires only when the loop is free, i.e. after the
        # next step (tens of ms under load); with 0 the request leaves at the next loop turn.
        producer_linger=0.0,
        stream_buffer_maxsize=max(4096, settings.batch_max * 2),
        broker_max_poll_records=settings.batch_max,
        consumer_max_fetch_size=settings.fetch_partition_max_bytes,
        broker_commit_every=max(10_000, settings.batch_max * 4),
    )
