"""The DuckDB archive against a real file: round trips, idempotency, atomicity, durability."""

from __future__ import annotations

import base64
import subprocess
import sys
import textwrap
from datetime import timedelta
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.feeds import GpuSamples, GpuTelemetry, GridPrice, Hashprice, epoch_us
from schemas.topics import FEEDS_BY_NAME, INPUT_FEEDS
from sinks import archive as archive_mod
from sinks.archive import (
    FEED_SPECS,
    TABLES,
    Archive,
    ArchiveBatch,
    ArchiveError,
    read_actions,
    read_dead_letters,
    read_inputs_in_event_order,
)
from tests import factories as f
from tests.sinks import factories as sf
from wattmix.errors import SinkError

REPO = Path(__file__).resolve().parents[2]


def feed_records() -> dict[str, list]:
    """A few valid records of every feed (incl. a microsecond timestamp and None fields)."""
    return {
        "grid_prices": [f.rt_price(i, 30.0 + i) for i in range(4)] + [f.da_price(h, 40.0 + h) for h in range(3)],
        "dr_events": [f.dr_event(120), f.dr_event(120, revision=1, issued_min=100, status="active"),
                      f.dr_event(300, event_id="4cp-1", kind="reduction", baseline_mw=80.0)],
        "hashprice": [f.hashprice(54.3), f.hashprice(55.1, at=f.T0 + timedelta(days=1))],
        "gpu_telemetry": [f.gpu_sample(f"job-{j}", gpu_class=c, minute=m)
                          for j, c in enumerate(("inference", "training", "batch")) for m in range(0, 30, 5)]
        + [GpuTelemetry(site_id="sample", job_id="us", gpu_class="batch", gpus=1, power_kw=1.0, utilization=0.5,
                        state="paused", observed_at=f.T0 + timedelta(microseconds=123))],
    }


def full_batch(*, topic_offsets: bool = True) -> ArchiveBatch:
    b = ArchiveBatch()
    for name, recs in feed_records().items():
        for i, r in enumerate(recs):
            if topic_offsets:
                b.add_input(name, r, topic=FEEDS_BY_NAME[name].topic, partition=1, offset=100 + i, late=(i == 2))
            else:
                b.add_input(name, r)
    for i in range(3):
        b.add_action(sf.action(i), topic="wattmix.actions", partition=1, offset=i)
    for i in range(2):
        b.add_dead_letter(sf.dead_letter(i), base64.b64decode(sf.dead_letter(i).raw_base64))
    b.add_dead_letter(sf.dead_letter(7, key=None, raw=b"\x00\xffnot json"))
    return b


EXPECTED = {"grid_prices": 7, "dr_events": 3, "hashprice": 2, "gpu_telemetry": 19, "actions": 3, "dead_letters": 3}


@pytest.fixture
def arch(tmp_path: Path):
    a = Archive(tmp_path / "archive.duckdb")
    yield a
    a.close()


# -- schema ------------------------------------------------------------------------------

def test_creates_every_table_and_a_schema_version(arch: Archive):
    assert arch.counts() == {t: 0 for t in TABLES}
    con = arch.connection()
    assert con.execute("SELECT version FROM schema_version").fetchall() == [(archive_mod.ARCHIVE_SCHEMA_VERSION,)]
    assert set(TABLES) == {f.name for f in INPUT_FEEDS} | {"actions", "dead_letters"}


@pytest.mark.parametrize("feed", INPUT_FEEDS, ids=lambda x: x.name)
def test_feed_table_has_provenance_and_every_field(arch: Archive, feed):
    cols = {r[0]: r[1] for r in arch.connection().execute(f"DESCRIBE {feed.name}").fetchall()}
    model_fields = set(feed.model.model_fields) - {"schema_version"}
    assert model_fields <= set(cols)
    assert {"topic", "kafka_partition", "kafka_offset", "event_time", "late", "identity"} <= set(cols)
    assert cols["event_time"] == "TIMESTAMP WITH TIME ZONE"
    assert cols["late"] == "BOOLEAN"
    for name, info in feed.model.model_fields.items():
        if name != "schema_version" and "datetime" in str(info.annotation):
            assert cols[name] == "TIMESTAMP WITH TIME ZONE", name


def test_actions_and_dead_letters_columns(arch: Archive):
    con = arch.connection()
    acols = {r[0]: r[1] for r in con.execute("DESCRIBE actions").fetchall()}
    for c in ("site_id", "interval_start", "interval_minutes", "engine", "price_known_usd_mwh",
              "price_expected_usd_mwh", "hashprice_usd_per_ph_day", "load_mw", "sold_back_mw", "dr_limit_mw",
              "dr_shortfall_mw", "mining_revenue_usd", "gpu_value_usd", "energy_cost_usd", "hedge_pnl_usd",
              "dr_payment_usd", "dr_penalty_usd", "net_usd", "fleets", "gpus", "payload"):
        assert c in acols, c
    assert acols["dr_active_event_ids"] == acols["reasons"] == "VARCHAR[]"
    assert acols["payload"] == "JSON"
    assert acols["fleets"].startswith("STRUCT(") and acols["fleets"].endswith("[]")
    dcols = {r[0]: r[1] for r in con.execute("DESCRIBE dead_letters").fetchall()}
    assert dcols["raw"] == dcols["key"] == "BLOB"
    assert {"source_topic", "source_partition", "source_offset", "error_type", "reason", "received_at"} <= set(dcols)


def test_enum_columns_follow_the_contract_literals():
    # ENUM values are derived from the schemas' Literal types; a new value needs a new archive version
    assert "ENUM('inference', 'training', 'batch')" in dict((c.name, c.sql) for c in FEED_SPECS["gpu_telemetry"].fields)["gpu_class"]


# -- round trips -----------------------------------------------------------------------

def test_round_trip_every_table(arch: Archive):
    stats = arch.write_batch(full_batch())
    assert stats.inserted == EXPECTED and stats.duplicates == 0
    assert arch.counts() == EXPECTED
    con = arch.connection()

    recs = feed_records()
    got = list(read_inputs_in_event_order(con, "sample"))
    assert sorted((n, r.identity(), r.event_time()) for n, r in got) == sorted(
        (n, r.identity(), r.event_time()) for n, rs in recs.items() for r in rs)
    by_identity = {(n, r.identity(), r.event_time()): r for n, rs in recs.items() for r in rs}
    for name, rec in got:
        assert rec == by_identity[(name, rec.identity(), rec.event_time())]  # every field, exact

    assert read_actions(con) == [sf.action(i) for i in range(3)]
    assert read_actions(con, site_id="elsewhere") == []
    assert read_dead_letters(con) == [sf.dead_letter(0), sf.dead_letter(1),
                                      sf.dead_letter(7, key=None, raw=b"\x00\xffnot json")]
    assert con.execute("SELECT raw FROM dead_letters WHERE source_offset = 7").fetchall() == [(b"\x00\xffnot json",)]


@pytest.mark.parametrize("feed", [f.name for f in INPUT_FEEDS])
def test_identity_and_event_time_columns_match_the_record(arch: Archive, feed: str):
    arch.write_batch(full_batch())
    fields = ", ".join(f'"{c}"' for c in FEED_SPECS[feed].field_names)
    rows = arch.connection().execute(f"SELECT identity, event_time, {fields} FROM {feed}").fetchall()
    model = FEED_SPECS[feed].model
    assert rows
    for identity, event_time, *vals in rows:
        rec = model.model_validate(dict(zip(FEED_SPECS[feed].field_names, vals)))
        assert identity == rec.identity()
        assert event_time == rec.event_time()


def test_provenance_and_late_flag_are_stored(arch: Archive):
    arch.write_batch(full_batch())
    rows = arch.connection().execute(
        "SELECT topic, kafka_partition, kafka_offset, late FROM grid_prices ORDER BY kafka_offset").fetchall()
    assert rows[0] == ("wattmix.grid-prices", 1, 100, False)
    assert [r[3] for r in rows] == [False, False, True, False, False, False, False]


def test_in_process_replay_has_null_provenance(arch: Archive):
    arch.write_batch(full_batch(topic_offsets=False))
    assert arch.connection().execute(
        "SELECT count(*) FROM gpu_telemetry WHERE topic IS NULL AND kafka_offset IS NULL").fetchall() == [(19,)]


def test_action_columns_are_flattened(arch: Archive):
    arch.write_batch(full_batch())
    row = arch.connection().execute(
        "SELECT price_expected_usd_mwh, dr_limit_mw, dr_active_event_ids, net_usd, reasons, fleets[1].fleet, "
        "gpus[2].power_cap_tier, payload->>'$.engine', interval_start FROM actions ORDER BY interval_start LIMIT 1"
    ).fetchall()[0]
    a = sf.action(0)
    assert row == (33.25, 50.0, ["ers-1"], 717.5, a.reasons, "s21", 1, "merit-order/1", a.interval_start)


# -- idempotency -----------------------------------------------------------------------

def test_same_batch_twice_changes_nothing(arch: Archive):
    arch.write_batch(full_batch())
    stats = arch.write_batch(full_batch())
    assert stats.rows_inserted == 0 and stats.duplicates == sum(EXPECTED.values())
    assert arch.counts() == EXPECTED


def test_replay_into_a_fresh_topic_is_deduplicated_on_identity(arch: Archive):
    arch.write_batch(full_batch())
    b = ArchiveBatch()
    for name, recs in feed_records().items():  # same records, new topic and offsets
        b.add_inputs(name, recs, topic=f"{FEEDS_BY_NAME[name].topic}.replay", partition=0, first_offset=0)
    assert arch.write_batch(b).rows_inserted == 0
    b2 = ArchiveBatch()
    for name, recs in feed_records().items():  # and as an in-process replay (no Kafka coordinates)
        b2.add_inputs(name, recs)
    assert arch.write_batch(b2).rows_inserted == 0
    assert arch.counts() == EXPECTED


def test_duplicates_inside_one_batch_keep_the_first(arch: Archive):
    b = ArchiveBatch()
    s = f.gpu_sample("j1")
    b.add_input("gpu_telemetry", s, topic="t", partition=0, offset=1)
    b.add_input("gpu_telemetry", s, topic="t", partition=0, offset=2)
    b.add_action(sf.action(0, engine="first"))
    b.add_action(sf.action(0, engine="second"))
    b.add_dead_letter(sf.dead_letter(5))
    b.add_dead_letter(sf.dead_letter(5))
    stats = arch.write_batch(b)
    assert stats.inserted == {"gpu_telemetry": 1, "actions": 1, "dead_letters": 1}
    assert stats.duplicates == 3
    con = arch.connection()
    assert con.execute("SELECT kafka_offset FROM gpu_telemetry").fetchall() == [(1,)]
    assert [a.engine for a in read_actions(con)] == ["first"]


def test_duplicate_action_key_is_ignored(arch: Archive):
    arch.write_batch(_batch(actions=[sf.action(0, engine="v1", load_mw=10.0)]))
    stats = arch.write_batch(_batch(actions=[sf.action(0, engine="v2", load_mw=99.0), sf.action(1)]))
    assert stats.inserted == {"actions": 1}
    acts = read_actions(arch.connection())
    assert [(a.engine, a.load_mw) for a in acts] == [("v1", 10.0), ("merit-order/1", 42.5)]


def test_duplicate_dead_letter_coordinates_are_ignored(arch: Archive):
    arch.write_batch(_batch(dead=[sf.dead_letter(3)]))
    assert arch.write_batch(_batch(dead=[sf.dead_letter(3, raw=b"other"), sf.dead_letter(3, partition=2)])
                            ).inserted == {"dead_letters": 1}
    assert arch.counts()["dead_letters"] == 2


def test_price_correction_keeps_both_and_fold_order_ends_on_the_correction(arch: Archive):
    orig = f.rt_price(0, 31.5)
    corr = GridPrice(**{**orig.model_dump(), "price_usd_mwh": 35.0,
                        "published_at": orig.published_at + timedelta(minutes=30)})
    assert corr.identity() == orig.identity()
    arch.write_batch(_batch(inputs=[("grid_prices", orig)]))
    arch.write_batch(_batch(inputs=[("grid_prices", corr), ("grid_prices", orig)]))  # orig re-delivered
    con = arch.connection()
    assert arch.counts()["grid_prices"] == 2
    assert [r.price_usd_mwh for _, r in read_inputs_in_event_order(con, "sample")] == [31.5, 35.0]
    assert con.execute("SELECT price_usd_mwh FROM grid_prices_latest").fetchall() == [(35.0,)]


def test_late_straggler_far_from_the_batch_is_deduplicated(arch: Archive):
    old = [f.gpu_sample("j", minute=m) for m in range(0, 10)]
    arch.write_batch(_batch(inputs=[("gpu_telemetry", r) for r in old]))
    far = [f.gpu_sample("j", minute=m) for m in range(60 * 24 * 30, 60 * 24 * 30 + 5)]  # 30 days later
    # one batch spanning 30 days with 3 gaps: old rows (dups) + new rows + a new late row
    late_new = f.gpu_sample("j", minute=60 * 24 * 10)
    stats = arch.write_batch(_batch(inputs=[("gpu_telemetry", r) for r in old[:3] + far + [late_new]]))
    assert stats.inserted == {"gpu_telemetry": 6}
    assert arch.counts()["gpu_telemetry"] == 16


def test_time_ranges_split_on_gaps_and_are_capped():
    import pyarrow as pa

    h = 3_600_000_000  # one hour in microseconds
    us = pa.array([0, 5 * 60_000_000, 5 * h, 72 * h], pa.int64())
    assert archive_mod._time_ranges(us) == [(0, 5 * 60_000_000), (5 * h, 5 * h), (72 * h, 72 * h)]
    many = pa.array([d * 24 * h for d in range(20)], pa.int64())
    capped = archive_mod._time_ranges(many, max_ranges=4)
    assert len(capped) == 4 and capped[0][0] == 0 and capped[-1][1] == 19 * 24 * h
    assert archive_mod._time_ranges(pa.array([7, 7, 7], pa.int64())) == [(7, 7)]


def test_rows_before_and_after_the_watermark(arch: Archive):
    first = [f.gpu_sample(f"j{j}", minute=m) for j in range(3) for m in range(10)]
    arch.write_batch(_batch(inputs=[("gpu_telemetry", r) for r in first]))
    # duplicates at and before the newest archived time, new rows before it, new rows after it
    mixed = first[5:12] + [f.gpu_sample("new", minute=m) for m in range(0, 20)] + first[-1:]
    stats = arch.write_batch(_batch(inputs=[("gpu_telemetry", r) for r in mixed]))
    assert stats.inserted == {"gpu_telemetry": 20}
    assert arch.counts()["gpu_telemetry"] == 50
    assert arch.write_batch(_batch(inputs=[("gpu_telemetry", r) for r in mixed])).rows_inserted == 0


class _LostAck:
    """Wraps the writer connection: the first COMMIT succeeds but reports an I/O error."""

    def __init__(self, con):
        self._con, self.failed = con, False

    def __getattr__(self, name):
        return getattr(self._con, name)

    def commit(self):
        self._con.commit()
        if not self.failed:
            self.failed = True
            raise duckdb.IOException("IO Error: connection reset while committing")


def test_commit_that_succeeded_but_raised_is_retried_without_duplicates(arch: Archive):
    arch.write_batch(_batch(inputs=[("gpu_telemetry", f.gpu_sample("j", minute=0))]))
    arch._writer = _LostAck(arch._writer)
    sleeps: list[float] = []
    stats = arch.write_with_retry(full_batch(), attempts=3, sleep=sleeps.append)
    assert len(sleeps) == 1 and stats.rows_inserted == 0  # the first attempt did commit
    assert arch.counts() == {**EXPECTED, "gpu_telemetry": EXPECTED["gpu_telemetry"] + 1}


# -- atomicity ---------------------------------------------------------------------------

def test_failure_after_the_first_table_rolls_everything_back(arch: Archive, monkeypatch):
    arch.write_batch(_batch(actions=[sf.action(0)]))
    before = arch.counts()
    real = Archive._insert_table
    calls = []

    def flaky(self, con, name, data):
        calls.append(name)
        n = real(self, con, name, data)
        if len(calls) == 2:
            raise duckdb.IOException("IO Error: No space left on device")
        return n

    monkeypatch.setattr(Archive, "_insert_table", flaky)
    with pytest.raises(SinkError) as info:
        arch.write_batch(full_batch())
    assert isinstance(info.value, ArchiveError) and info.value.transient
    assert "No space left on device" in str(info.value) and calls[:2] == ["grid_prices", "dr_events"]
    assert arch.counts() == before  # nothing of the batch, not even grid_prices
    monkeypatch.undo()
    assert arch.write_batch(full_batch()).rows_inserted == sum(EXPECTED.values()) - 1  # usable; action 0 existed


def test_bad_row_fails_the_whole_batch_permanently(arch: Archive):
    b = full_batch()
    bad = GpuTelemetry.model_construct(site_id="sample", job_id="x", gpu_class="quantum", gpus=1, power_kw=1.0,
                                       utilization=0.5, state="running", observed_at=f.T0)
    b.add_input("gpu_telemetry", bad)
    with pytest.raises(ArchiveError) as info:
        arch.write_batch(b)
    assert not info.value.transient
    assert "gpu_telemetry" in info.value.reason and "quantum" in info.value.reason
    assert arch.counts() == {t: 0 for t in TABLES}


def test_write_with_retry_retries_transient_errors_only(arch: Archive, monkeypatch):
    real = Archive._insert_table
    failures = iter([duckdb.IOException("IO Error: Could not set lock on file"),
                     duckdb.TransactionException("TransactionContext Error: conflict")])

    def flaky(self, con, name, data):
        exc = next(failures, None)
        if exc is not None:
            raise exc
        return real(self, con, name, data)

    monkeypatch.setattr(Archive, "_insert_table", flaky)
    sleeps: list[float] = []
    retries: list[int] = []
    stats = arch.write_with_retry(full_batch(), attempts=3, backoff=0.1, sleep=sleeps.append,
                                  on_retry=lambda n, e: retries.append(n))
    assert stats.rows_inserted == sum(EXPECTED.values())
    assert sleeps == [0.1, 0.2] and retries == [1, 2]

    def broken(self, con, name, data):
        raise duckdb.IOException("IO Error: No space left on device")

    monkeypatch.setattr(Archive, "_insert_table", broken)
    sleeps.clear()
    with pytest.raises(ArchiveError, match="No space left"):
        arch.write_with_retry(full_batch(), attempts=3, backoff=1, sleep=sleeps.append)
    assert sleeps == [1, 2]

    b = ArchiveBatch()
    b.add_input("gpu_telemetry", GpuTelemetry.model_construct(
        site_id="s", job_id="x", gpu_class="quantum", gpus=1, power_kw=1.0, utilization=0.5, state="running",
        observed_at=f.T0))
    monkeypatch.undo()
    sleeps.clear()
    with pytest.raises(ArchiveError):
        arch.write_with_retry(b, attempts=5, sleep=sleeps.append)
    assert sleeps == []  # permanent: not retried


def test_fatal_error_reopens_the_database_on_the_next_write(arch: Archive, monkeypatch):
    def fatal(self, con, name, data):
        raise duckdb.FatalException("FATAL Error: database has been invalidated")

    monkeypatch.setattr(Archive, "_insert_table", fatal)
    with pytest.raises(ArchiveError) as info:
        arch.write_batch(full_batch())
    assert info.value.transient
    monkeypatch.undo()
    assert arch.write_batch(full_batch()).rows_inserted == sum(EXPECTED.values())
    assert arch.counts() == EXPECTED


# -- durability, reopening, read-only ----------------------------------------------------

def test_reopen_after_close_keeps_data(tmp_path: Path):
    p = tmp_path / "a.duckdb"
    with Archive(p) as a:
        a.write_batch(full_batch())
    with Archive(p) as a:
        assert a.counts() == EXPECTED
        assert a.write_batch(full_batch()).rows_inserted == 0  # idempotent across restarts
        assert read_actions(a.connection()) == [sf.action(i) for i in range(3)]


def test_committed_batch_survives_a_killed_process(tmp_path: Path):
    """write_batch returns only once durable: kill -9 right after it, then reopen."""
    p = tmp_path / "crash.duckdb"
    code = textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {str(REPO)!r})
        from sinks.archive import Archive
        from tests.sinks.test_archive import full_batch
        a = Archive({str(p)!r})
        a.write_batch(full_batch())
        os._exit(0)  # no close(), no checkpoint: only the WAL has it
    """)
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, timeout=120)
    with Archive(p) as a:
        assert a.counts() == EXPECTED


def test_read_only_open_cannot_write(tmp_path: Path):
    p = tmp_path / "ro.duckdb"
    with Archive(p) as a:
        a.write_batch(full_batch())
    with Archive(p, read_only=True) as ro:
        assert ro.counts() == EXPECTED
        with pytest.raises(SinkError, match="read-only"):
            ro.write_batch(full_batch())
        with pytest.raises(duckdb.Error):
            ro.connection().execute("DELETE FROM actions")
        assert ro.counts() == EXPECTED


def test_read_only_open_of_a_missing_file_fails(tmp_path: Path):
    with pytest.raises(ArchiveError, match="does not exist"):
        Archive(tmp_path / "missing.duckdb", read_only=True)


def test_write_after_close_fails(tmp_path: Path):
    a = Archive(tmp_path / "c.duckdb")
    a.close()
    with pytest.raises(ArchiveError, match="closed"):
        a.write_batch(full_batch())


def test_file_locked_by_another_process_raises_sink_error(tmp_path: Path):
    p = tmp_path / "locked.duckdb"
    Archive(p).close()
    holder = subprocess.Popen(
        [sys.executable, "-c", f"import duckdb, sys, time; c = duckdb.connect({str(p)!r}); print('ok', flush=True); "
                               "sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "ok"
        with pytest.raises(ArchiveError) as info:
            Archive(p)
        assert info.value.transient and "lock" in info.value.reason.lower()
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)


def test_other_schema_version_is_refused(tmp_path: Path):
    p = tmp_path / "v.duckdb"
    with Archive(p) as a:
        a.connection().execute("UPDATE schema_version SET version = 99")
    with pytest.raises(ArchiveError, match="version 99"):
        Archive(p)


def test_a_pending_query_result_does_not_block_writes(arch: Archive):
    arch.connection().execute("SELECT * FROM range(10)")  # not fetched
    assert arch.write_batch(full_batch()).rows_inserted == sum(EXPECTED.values())


# -- event-order reads ---------------------------------------------------------------------

def test_read_inputs_in_event_order_orders_by_time_feed_then_offset(arch: Archive):
    t = f.T0
    hp = Hashprice(site_id="sample", usd_per_ph_day=50.0, as_of=t - timedelta(days=1), published_at=t)
    g_late_offset = f.gpu_sample("b", minute=0)
    g_early_offset = f.gpu_sample("a", minute=0)
    price = f.rt_price(-1, 20.0)  # published at t
    other_site = f.gpu_sample("x", site="other")
    b = ArchiveBatch()
    b.add_input("gpu_telemetry", g_late_offset, topic="g", partition=0, offset=9)
    b.add_input("gpu_telemetry", g_early_offset, topic="g", partition=0, offset=3)
    b.add_input("hashprice", hp, topic="h", partition=0, offset=0)
    b.add_input("gpu_telemetry", other_site, topic="g", partition=1, offset=1)
    b.add_input("grid_prices", price, topic="p", partition=0, offset=5)
    b.add_input("gpu_telemetry", f.gpu_sample("c", minute=-1), topic="g", partition=0, offset=10)
    arch.write_batch(b)
    got = [(n, getattr(r, "job_id", None)) for n, r in read_inputs_in_event_order(arch.connection(), "sample")]
    assert got == [("gpu_telemetry", "c"), ("grid_prices", None), ("hashprice", None),
                   ("gpu_telemetry", "a"), ("gpu_telemetry", "b")]
    since = list(read_inputs_in_event_order(arch.connection(), "sample", since=t, feeds=("gpu_telemetry",)))
    assert [r.job_id for _, r in since] == ["a", "b"]
    assert [r.job_id for _, r in read_inputs_in_event_order(arch.connection(), "other")] == ["x"]


def test_read_inputs_streams_in_chunks(arch: Archive):
    recs = [f.gpu_sample(f"j{i % 7}", minute=i) for i in range(2_500)]
    b = ArchiveBatch()
    b.add_inputs("gpu_telemetry", recs, topic="g", partition=0, first_offset=0)
    arch.write_batch(b)
    got = [r for _, r in read_inputs_in_event_order(arch.connection(), "sample", chunk_rows=100)]
    assert got == recs


# -- rows given as columns (a GPU telemetry batch) ---------------------------------------------

def _gpu_columns(recs: list[GpuTelemetry]) -> dict:
    """What the pipeline hands over: the site once, timestamps as epoch microseconds."""
    cols = GpuSamples.of_records("sample", recs).columns()
    return {**cols, "observed_at": np.asarray([epoch_us(t) for t in cols["observed_at"]], dtype=np.int64)}


def test_columns_make_the_same_rows_as_records_in_the_order_added(arch: Archive):
    recs = feed_records()["gpu_telemetry"]  # incl. a microsecond timestamp
    late = [i % 4 == 0 for i in range(8)]
    by_record, by_columns = ArchiveBatch(), ArchiveBatch()
    for i, r in enumerate(recs):
        by_record.add_input("gpu_telemetry", r, topic="t", partition=2, offset=10 + (i >= 3) + (i >= 11),
                            late=i >= 3 and i < 11 and late[i - 3])
    for r in recs[:3]:
        by_columns.add_input("gpu_telemetry", r, topic="t", partition=2, offset=10)
    by_columns.add_input_columns("gpu_telemetry", _gpu_columns(recs[3:11]), topic="t", partition=2, offset=11,
                                 late=np.array(late))
    for r in recs[11:]:
        by_columns.add_input("gpu_telemetry", r, topic="t", partition=2, offset=12)
    assert len(by_columns) == len(recs) and by_columns.counts() == {"gpu_telemetry": len(recs)}
    assert by_columns.to_arrow()["gpu_telemetry"].equals(by_record.to_arrow()["gpu_telemetry"])
    assert arch.write_batch(by_columns).inserted == {"gpu_telemetry": len(recs)}
    got = [r for _, r in read_inputs_in_event_order(arch.connection(), "sample")]
    assert sorted(got, key=lambda g: (g.observed_at, g.job_id)) == sorted(recs, key=lambda g: (g.observed_at, g.job_id))
    assert arch.write_batch(by_columns).inserted == {"gpu_telemetry": 0}  # idempotent


def test_columns_and_records_in_one_batch_deduplicate_first_wins(arch: Archive):
    recs = [f.gpu_sample(f"j{i}", minute=i) for i in range(5)]
    b = ArchiveBatch()
    b.add_input_columns("gpu_telemetry", _gpu_columns(recs), topic="t", partition=0, offset=1)
    b.add_input("gpu_telemetry", recs[2], topic="t", partition=0, offset=2)  # a re-delivery
    b.add_input_columns("gpu_telemetry", _gpu_columns(recs[:2]), topic="t", partition=0, offset=3)
    assert arch.write_batch(b).inserted == {"gpu_telemetry": 5}
    assert arch.connection().execute("SELECT DISTINCT kafka_offset FROM gpu_telemetry").fetchall() == [(1,)]


def test_consecutive_column_sets_and_sealed_rows_make_the_rows_added_in_order(arch: Archive):
    # batch messages of every form the pipeline hands over, one after the other (converted
    # together), records between them, and seal() at any point: the same table as per record
    recs = [f.gpu_sample(f"j{i % 6}", minute=i // 3, power_kw=0.1 * i) for i in range(30)]
    scrape_a = [f.gpu_sample(f"s{i}", minute=20) for i in range(4)]
    scrape_b = [f.gpu_sample(f"s{i}", minute=21, state="paused") for i in range(3)]
    parts = [("cols", recs[0:5], None, False), ("scrape", scrape_a, 7, False), ("scrape", scrape_b, 8, True),
             ("cols", recs[5:9], 9, True), ("records", recs[9:12], None, False), ("cols", recs[12:20], 13, False),
             ("records", recs[20:22], 14, False), ("scrape", scrape_a, None, False), ("cols", recs[22:30], 15, False)]
    expected = ArchiveBatch()
    for seal_after in (None, 0, 2, 4, 8):
        b = ArchiveBatch()
        for k, (kind, rs, offset, late) in enumerate(parts):
            flags = [late and i % 2 == 0 for i in range(len(rs))]
            if seal_after is None:  # the reference: every row added as a record
                for r, flag in zip(rs, flags):
                    expected.add_input("gpu_telemetry", r, topic="t", partition=1, offset=offset, late=flag)
            if kind == "records":
                for r, flag in zip(rs, flags):
                    b.add_input("gpu_telemetry", r, topic="t", partition=1, offset=offset, late=flag)
            else:
                cols = _gpu_columns(rs)
                if kind == "scrape":  # one instant: the pipeline gives it as one datetime
                    cols["observed_at"] = rs[0].observed_at
                b.add_input_columns("gpu_telemetry", cols, topic="t", partition=1, offset=offset,
                                    late=np.array(flags) if late else None)
            if seal_after is not None and k in (seal_after, seal_after + 1):
                b.seal()
        if seal_after is None:
            continue
        assert len(b) == len(expected) and b.counts() == expected.counts()
        assert b.to_arrow()["gpu_telemetry"].equals(expected.to_arrow()["gpu_telemetry"]), seal_after
    # scrape_a delivered twice: its second copy is an in-batch duplicate (the first wins)
    assert arch.write_batch(b).inserted == {"gpu_telemetry": len(expected) - len(scrape_a)}


def test_seal_leaves_feeds_of_single_records_to_the_writer():
    b = ArchiveBatch()
    b.add_input("gpu_telemetry", f.gpu_sample("a"), topic="t", partition=0, offset=1)
    b.seal()
    assert b._feeds["gpu_telemetry"].records and not b._feeds["gpu_telemetry"].sealed
    b.add_input_columns("gpu_telemetry", _gpu_columns([f.gpu_sample("b")]), topic="t", partition=0, offset=2)
    b.seal()
    rows = b._feeds["gpu_telemetry"]
    assert not rows.records and not rows.column_sets and rows.sealed_rows == len(b) == 2


def test_columns_must_be_every_field_of_one_length():
    b = ArchiveBatch()
    cols = _gpu_columns([f.gpu_sample("a"), f.gpu_sample("b")])
    with pytest.raises(ValueError, match="needs columns"):
        b.add_input_columns("gpu_telemetry", {k: v for k, v in cols.items() if k != "gpus"})
    with pytest.raises(ValueError, match="differ in length"):
        b.add_input_columns("gpu_telemetry", {**cols, "gpus": [8]})
    with pytest.raises(ValueError, match="differ in length"):
        b.add_input_columns("gpu_telemetry", cols, late=[True])
    assert len(b) == 0


key_value = st.sampled_from(["a", "b", "ab", ""]) | st.none()


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(key_value, st.integers(-2, 2) | st.none(), st.integers(0, 3)), max_size=12))
def test_first_per_key_keeps_the_first_row_of_each_key(rows):
    table = pa.table({"s": pa.array([r[0] for r in rows], pa.string()), "i": pa.array([r[1] for r in rows], pa.int64()),
                      "t": pa.array([r[2] for r in rows], pa.timestamp("us", tz="UTC")),
                      "n": pa.array(range(len(rows)), pa.int64())})
    firsts: dict = {}
    for n, r in enumerate(rows):
        firsts.setdefault(r, n)
    got = archive_mod._first_per_key(table, ("s", "i", "t"))
    assert got.column("n").to_pylist() == sorted(firsts.values())


def test_batch_rejects_unknown_feed_and_wrong_record_type():
    b = ArchiveBatch()
    with pytest.raises(ValueError, match="unknown feed"):
        b.add_input("nope", f.gpu_sample("j"))
    with pytest.raises(TypeError, match="GridPrice"):
        b.add_input("grid_prices", f.gpu_sample("j"))
    with pytest.raises(TypeError):
        b.add_inputs("grid_prices", [f.rt_price(0, 1.0), f.gpu_sample("j")])
    assert len(b) == 0


def test_empty_batch_is_a_no_op(arch: Archive):
    stats = arch.write_batch(ArchiveBatch())
    assert stats.rows_offered == 0 and arch.counts() == {t: 0 for t in TABLES}


# -- helpers ---------------------------------------------------------------------------------

def _batch(*, inputs=(), actions=(), dead=()) -> ArchiveBatch:
    b = ArchiveBatch()
    for name, r in inputs:
        b.add_input(name, r)
    for a in actions:
        b.add_action(a)
    for d in dead:
        b.add_dead_letter(d)
    return b


def test_memory_limit_bounds_duckdb_and_the_worker_sets_one(tmp_path):
    # without a limit DuckDB keeps written blocks up to 80% of RAM: a long-running worker's
    # memory would grow with its archive (bench/bench_soak.py)
    from streams.app import WorkerSettings

    with Archive(tmp_path / "a.duckdb", memory_limit_mb=64) as arc:
        limit = arc.connection().execute("SELECT current_setting('memory_limit')").fetchone()[0]
        assert limit.replace(" ", "") in {"64.0MiB", "61.0MiB", "64MB", "61.0MB"}, limit
    with Archive(tmp_path / "b.duckdb") as arc:  # not asked: DuckDB's default (GBs here)
        assert "GiB" in arc.connection().execute("SELECT current_setting('memory_limit')").fetchone()[0]
    assert WorkerSettings().archive_memory_mb == 64
