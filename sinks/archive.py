"""The DuckDB archive: every input event, every dispatch action, every dead letter.

Write path
----------
Rows are accumulated column-wise in an :class:`ArchiveBatch`, turned into Arrow tables and
inserted with ``INSERT ... SELECT ... FROM <registered arrow table>`` (never ``executemany``:
~600 rows/s against ~0.5 M rows/s for Arrow). :meth:`Archive.write_batch` writes every table
of a batch in ONE transaction and returns only after ``COMMIT`` (DuckDB fsyncs its WAL on
commit), so the worker may commit its Kafka offsets as soon as it returns. Any failure rolls
the whole batch back and raises :class:`ArchiveError` (a :class:`wattmix.errors.SinkError`)
whose ``transient`` flag tells :meth:`Archive.write_with_retry` whether to try again.

Idempotency (re-delivery, replay, restart never duplicate a row)
----------------------------------------------------------------
* ``actions``: ``PRIMARY KEY (site_id, interval_start)`` + ``INSERT OR IGNORE``; a later
  action for the same key is ignored (the first decision is the one that was acted on).
* ``dead_letters``: ``PRIMARY KEY (source_topic, source_partition, source_offset)`` +
  ``INSERT OR IGNORE``.
* input feeds: no index. A row is new unless a row with the same *fact key* exists::

      grid_prices    (site_id, market, settlement_point, interval_start, event_time)
      dr_events      (site_id, event_id, revision, event_time)
      hashprice      (site_id, as_of, event_time)
      gpu_telemetry  (site_id, job_id, event_time)        -- event_time = observed_at

  i.e. the record's ``identity()`` plus its event time. Each batch is first de-duplicated in
  Arrow (first occurrence wins). The archive caches, per table, an upper bound of the
  committed ``max(event_time)`` (the *watermark*; read once from the table, raised after each
  commit, dropped after any failed write since a failed commit may have landed). Rows after
  the watermark cannot be archived yet (their fact key holds their event time): plain INSERT.
  Rows at or before it are anti-joined (``INSERT ... WHERE NOT EXISTS``) against the table
  restricted to their event-time range(s), so zone maps skip every other row group; rows whose
  times have gaps over an hour (late stragglers) are split into up to 8 ranges, so a day-old
  re-delivery scans its own hour, not the whole day.

  Why not ``PRIMARY KEY`` + ``INSERT OR IGNORE`` here: measured by bench/bench_archive.py
  (1M gpu_telemetry rows, batches of 50k, 2 cores) the ART index ingests ~140k rows/s
  against ~415k for the anti-join (~440k for a plain INSERT without any de-duplication),
  makes the file 6x bigger (79 MB vs 13 MB) and DuckDB keeps ART indexes in memory. The
  anti-join costs ~5% while data arrives roughly in event-time order; re-inserting an
  already archived batch runs at ~2M rows/s and inserts nothing.

  Why not the Kafka coordinates: a replay of the same file into a fresh topic has new
  offsets, and a re-created topic re-uses old offsets for *different* records, so
  (topic, partition, offset) is kept as provenance (``topic``, ``kafka_partition``,
  ``kafka_offset``; NULL for in-process replays) but is not the key.

  Corrections: a grid price (or hashprice) re-published for the same interval with a later
  ``published_at`` is a different fact key, so BOTH rows are kept; the archive is an
  append-only audit log of what was known when. :func:`read_inputs_in_event_order` yields
  them in event-time order, so the state fold ends on the correction (latest wins), exactly as
  the live worker saw it; ``grid_prices_latest`` is a view with only the latest publication
  per identity. The same fact key re-delivered with a different value keeps the first row.

  Single writer: the anti-join is check-then-insert, which is safe because DuckDB lets only
  one process open the file read-write, and every ``Archive`` on one file in a process shares
  one lock.

Identity column: each feed table has ``identity``, a VIRTUAL generated column equal to
``record.identity()`` (tested for every feed). DuckDB evaluates it on every insert (~30% of a
plain insert's time on gpu_telemetry with the cheap timestamp formatting of :func:`_iso`, ~50%
with the first one, which archives created before it keep: same values); storing it as a
VARCHAR costs as much and ~4x the file size, for data the row already holds. If ingest ever
needs that 30%, drop it to a view.
Literal (enum-like) fields are DuckDB ENUMs derived from the schemas' ``Literal`` types
(~1.6x faster to ingest than VARCHAR); a new Literal value needs a new archive version.
Timestamps are TIMESTAMPTZ; connections use ``TimeZone = 'UTC'``.
"""

from __future__ import annotations

import base64
import heapq
import threading
import time
import typing
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from itertools import chain, repeat
from operator import attrgetter
from pathlib import Path
from typing import Any, Callable

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from schemas.action import DispatchAction
from schemas.base import WireModel
from schemas.codec import encode
from schemas.dead_letter import DeadLetter
from schemas.feeds import DemandResponseEvent, FeedRecord, GpuTelemetry, GridPrice, Hashprice, epoch_us
from schemas.topics import ACTIONS, DEAD_LETTERS, INPUT_FEEDS
from wattmix.errors import SinkError

__all__ = [
    "ARCHIVE_SCHEMA_VERSION",
    "TABLES",
    "Archive",
    "ArchiveBatch",
    "ArchiveError",
    "WriteStats",
    "ddl",
    "read_actions",
    "read_dead_letters",
    "read_inputs_in_event_order",
]

#: version of the archive's table layout (the ``schema_version`` table); bump on any change.
ARCHIVE_SCHEMA_VERSION = 1

ACTIONS_TABLE = ACTIONS.name            # "actions"
DEAD_LETTERS_TABLE = DEAD_LETTERS.name  # "dead_letters"
FEED_TABLES: tuple[str, ...] = tuple(f.name for f in INPUT_FEEDS)
TABLES: tuple[str, ...] = FEED_TABLES + (ACTIONS_TABLE, DEAD_LETTERS_TABLE)
FEED_ORDER: dict[str, int] = {name: i for i, name in enumerate(FEED_TABLES)}

_STAGE = "_wm_stage"

#: DuckDB threads of a writable archive (see :class:`Archive`).
WRITER_THREADS = 1


class ArchiveError(SinkError):
    """The archive could not make a batch durable (nothing of the batch was written).

    ``transient``: retrying may succeed (I/O error, disk full, file locked, invalidated
    database, write conflict); False for errors a retry cannot fix (a row DuckDB rejects, a
    read-only archive, a schema mismatch).
    """

    def __init__(self, reason: str, *, transient: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.transient = transient


# ---------------------------------------------------------------------------------------
# Table layout
# ---------------------------------------------------------------------------------------

_ARROW_OF_SQL: dict[str, pa.DataType] = {
    "VARCHAR": pa.string(),
    "BIGINT": pa.int64(),
    "INTEGER": pa.int32(),
    "DOUBLE": pa.float64(),
    "BOOLEAN": pa.bool_(),
    "TIMESTAMPTZ": pa.timestamp("us", tz="UTC"),
    "BLOB": pa.binary(),
    "JSON": pa.string(),
    "VARCHAR[]": pa.list_(pa.string()),
}


def _literal_values(model: type[WireModel], name: str) -> tuple[str, ...]:
    ann = model.model_fields[name].annotation
    values = typing.get_args(ann)
    assert values and all(isinstance(v, str) for v in values), (model, name)
    return values


def _enum(model: type[WireModel], name: str) -> str:
    return "ENUM(" + ", ".join("'" + v.replace("'", "''") + "'" for v in _literal_values(model, name)) + ")"


@dataclass(frozen=True)
class Col:
    name: str
    sql: str                 # DuckDB type, incl. NOT NULL where the contract requires a value
    arrow: pa.DataType


def _col(name: str, sql: str, not_null: bool = False) -> Col:
    arrow = pa.string() if sql.startswith("ENUM(") else _ARROW_OF_SQL[sql]  # DuckDB casts strings to ENUM
    return Col(name, sql + (" NOT NULL" if not_null else ""), arrow)


_PROVENANCE: tuple[Col, ...] = (
    _col("topic", "VARCHAR"),
    _col("kafka_partition", "INTEGER"),
    _col("kafka_offset", "BIGINT"),
    _col("event_time", "TIMESTAMPTZ", True),
    _col("late", "BOOLEAN", True),
)


@dataclass(frozen=True)
class FeedTable:
    name: str
    model: type[WireModel]
    fields: tuple[Col, ...]          # the record's fields, same names as the model's
    event_time_field: str            # the field event_time() returns
    fact_key: tuple[str, ...]        # de-duplication key (see module docstring)
    identity_sql: str                # SQL expression equal to record.identity()

    @property
    def columns(self) -> tuple[Col, ...]:
        return _PROVENANCE + self.fields

    @property
    def field_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.fields)


def _iso(col: str) -> str:
    """SQL for Python's ``datetime.isoformat()`` of a UTC TIMESTAMPTZ column. DuckDB evaluates
    a VIRTUAL column on insert: one strftime of the epoch microseconds as a plain TIMESTAMP
    (no time-zone conversion) costs ~0.5 us less per gpu_telemetry row than ``AT TIME ZONE``
    and three strftime calls (measured 1.4 vs 2.0 us per inserted row)."""
    t = f"make_timestamp(epoch_us({_q(col)}))"
    return (f"CASE WHEN microsecond({t}) % 1000000 = 0 THEN strftime({t}, '%Y-%m-%dT%H:%M:%S') "
            f"ELSE strftime({t}, '%Y-%m-%dT%H:%M:%S.%f') END || '+00:00'")


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _identity_sql(*parts: str) -> str:
    return " || '|' || ".join(parts)


FEED_SPECS: dict[str, FeedTable] = {
    "grid_prices": FeedTable(
        "grid_prices", GridPrice,
        (
            _col("site_id", "VARCHAR", True),
            _col("settlement_point", "VARCHAR", True),
            _col("market", _enum(GridPrice, "market"), True),
            _col("interval_start", "TIMESTAMPTZ", True),
            _col("interval_minutes", "INTEGER", True),
            _col("price_usd_mwh", "DOUBLE", True),
            _col("published_at", "TIMESTAMPTZ", True),
        ),
        "published_at",
        ("site_id", "market", "settlement_point", "interval_start", "event_time"),
        _identity_sql("site_id", "CAST(market AS VARCHAR)", "settlement_point", _iso("interval_start")),
    ),
    "dr_events": FeedTable(
        "dr_events", DemandResponseEvent,
        (
            _col("site_id", "VARCHAR", True),
            _col("event_id", "VARCHAR", True),
            _col("program", "VARCHAR", True),
            _col("revision", "INTEGER", True),
            _col("status", _enum(DemandResponseEvent, "status"), True),
            _col("notice_at", "TIMESTAMPTZ", True),
            _col("start", "TIMESTAMPTZ", True),
            _col("end", "TIMESTAMPTZ", True),
            _col("obligation_kind", _enum(DemandResponseEvent, "obligation_kind"), True),
            _col("obligation_mw", "DOUBLE", True),
            _col("baseline_mw", "DOUBLE"),
            _col("capacity_payment_usd_mw_h", "DOUBLE", True),
            _col("energy_payment_usd_mwh", "DOUBLE", True),
            _col("penalty_usd_mwh", "DOUBLE", True),
            _col("issued_at", "TIMESTAMPTZ", True),
        ),
        "issued_at",
        ("site_id", "event_id", "revision", "event_time"),
        _identity_sql("site_id", "event_id", "CAST(revision AS VARCHAR)"),
    ),
    "hashprice": FeedTable(
        "hashprice", Hashprice,
        (
            _col("site_id", "VARCHAR", True),
            _col("usd_per_ph_day", "DOUBLE", True),
            _col("btc_usd", "DOUBLE"),
            _col("difficulty", "DOUBLE"),
            _col("fees_btc_per_block", "DOUBLE"),
            _col("as_of", "TIMESTAMPTZ", True),
            _col("published_at", "TIMESTAMPTZ", True),
        ),
        "published_at",
        ("site_id", "as_of", "event_time"),
        _identity_sql("site_id", _iso("as_of")),
    ),
    "gpu_telemetry": FeedTable(
        "gpu_telemetry", GpuTelemetry,
        (
            _col("site_id", "VARCHAR", True),
            _col("job_id", "VARCHAR", True),
            _col("gpu_class", _enum(GpuTelemetry, "gpu_class"), True),
            _col("gpus", "BIGINT", True),
            _col("power_kw", "DOUBLE", True),
            _col("utilization", "DOUBLE", True),
            _col("state", _enum(GpuTelemetry, "state"), True),
            _col("observed_at", "TIMESTAMPTZ", True),
        ),
        "observed_at",
        ("site_id", "job_id", "event_time"),
        _identity_sql("site_id", "job_id", _iso("observed_at")),
    ),
}
assert tuple(FEED_SPECS) == FEED_TABLES

_FLEET_STRUCT = pa.struct([
    ("fleet", pa.string()), ("units_online", pa.int64()), ("units_total", pa.int64()),
    ("power_mw", pa.float64()), ("hashrate_ph", pa.float64()), ("breakeven_usd_mwh", pa.float64()),
])
_GPU_STRUCT = pa.struct([
    ("gpu_class", pa.string()), ("gpus_demand", pa.int64()), ("gpus_running", pa.int64()),
    ("power_cap_tier", pa.int64()), ("power_fraction", pa.float64()),
    ("throughput_fraction", pa.float64()), ("power_mw", pa.float64()),
])
_FLEET_SQL = ("STRUCT(fleet VARCHAR, units_online BIGINT, units_total BIGINT, power_mw DOUBLE, "
              "hashrate_ph DOUBLE, breakeven_usd_mwh DOUBLE)[]")
_GPU_SQL = ("STRUCT(gpu_class VARCHAR, gpus_demand BIGINT, gpus_running BIGINT, power_cap_tier BIGINT, "
            "power_fraction DOUBLE, throughput_fraction DOUBLE, power_mw DOUBLE)[]")
_PNL_TERMS = ("mining_revenue_usd", "gpu_value_usd", "energy_cost_usd", "hedge_pnl_usd",
              "dr_payment_usd", "dr_penalty_usd", "net_usd")

ACTION_COLUMNS: tuple[Col, ...] = (
    _col("topic", "VARCHAR"),
    _col("kafka_partition", "INTEGER"),
    _col("kafka_offset", "BIGINT"),
    _col("site_id", "VARCHAR", True),
    _col("interval_start", "TIMESTAMPTZ", True),
    _col("interval_minutes", "INTEGER", True),
    _col("engine", "VARCHAR", True),
    _col("price_known_usd_mwh", "DOUBLE"),
    _col("price_expected_usd_mwh", "DOUBLE"),
    _col("hashprice_usd_per_ph_day", "DOUBLE"),
    _col("load_mw", "DOUBLE", True),
    _col("sold_back_mw", "DOUBLE", True),
    _col("dr_limit_mw", "DOUBLE"),
    _col("dr_shortfall_mw", "DOUBLE", True),
    _col("dr_active_event_ids", "VARCHAR[]", True),
    *(_col(t, "DOUBLE", True) for t in _PNL_TERMS),
    _col("reasons", "VARCHAR[]", True),
    _col("paused_job_ids", "VARCHAR[]", True),
    Col("fleets", _FLEET_SQL + " NOT NULL", pa.list_(_FLEET_STRUCT)),
    Col("gpus", _GPU_SQL + " NOT NULL", pa.list_(_GPU_STRUCT)),
    _col("payload", "JSON", True),
)

DEAD_LETTER_COLUMNS: tuple[Col, ...] = (
    _col("source_topic", "VARCHAR", True),
    _col("source_partition", "INTEGER", True),
    _col("source_offset", "BIGINT", True),
    _col("key", "BLOB"),
    _col("raw", "BLOB", True),
    _col("error_type", "VARCHAR", True),
    _col("reason", "VARCHAR", True),
    _col("received_at", "TIMESTAMPTZ", True),
)

_PRIMARY_KEYS = {
    ACTIONS_TABLE: ("site_id", "interval_start"),
    DEAD_LETTERS_TABLE: ("source_topic", "source_partition", "source_offset"),
}


def _columns_of(table: str) -> tuple[Col, ...]:
    if table in FEED_SPECS:
        return FEED_SPECS[table].columns
    return ACTION_COLUMNS if table == ACTIONS_TABLE else DEAD_LETTER_COLUMNS


def ddl() -> list[str]:
    """The ``CREATE TABLE`` / ``CREATE VIEW`` statements of the archive, in order."""
    out = [
        "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL, "
        "created_at TIMESTAMPTZ NOT NULL DEFAULT now(), created_by VARCHAR)"
    ]
    for name in TABLES:
        cols = [f"    {_q(c.name)} {c.sql}" for c in _columns_of(name)]
        if name in FEED_SPECS:
            cols.append(f"    identity VARCHAR GENERATED ALWAYS AS ({FEED_SPECS[name].identity_sql}) VIRTUAL")
        else:
            cols.append(f"    PRIMARY KEY ({', '.join(_PRIMARY_KEYS[name])})")
        out.append(f"CREATE TABLE IF NOT EXISTS {name} (\n" + ",\n".join(cols) + "\n)")
    out.append(
        "CREATE VIEW IF NOT EXISTS grid_prices_latest AS SELECT * FROM grid_prices "
        "QUALIFY row_number() OVER (PARTITION BY site_id, market, settlement_point, interval_start "
        "ORDER BY published_at DESC, kafka_offset DESC NULLS LAST) = 1"
    )
    return out


# ---------------------------------------------------------------------------------------
# Batches
# ---------------------------------------------------------------------------------------

class _FeedRows:
    """Rows of one feed table. Keeps the (immutable) records themselves and reads each field
    into an Arrow column only at :meth:`to_arrow` time: ``add_input`` allocates nothing per
    row, and a column is one C-level ``map(attrgetter)`` pass. Batches added as columns
    (:meth:`ArchiveBatch.add_input_columns`) are kept as columns and placed, in the table,
    after the records added before them. :meth:`seal` turns everything added so far into an
    Arrow table at once (the worker does it per step when batch messages came in); the table
    is the sealed tables, then what was added after, in order."""

    __slots__ = ("spec", "records", "topic", "partition", "offset", "late", "column_sets", "column_rows", "sealed",
                 "sealed_rows")

    def __init__(self, spec: FeedTable) -> None:
        self.spec = spec
        self.records: list[WireModel] = []
        self.topic: list[str | None] = []
        self.partition: list[int | None] = []
        self.offset: list[int | None] = []
        self.late: list[bool] = []
        # (records before it, its Arrow table built lazily from _ColumnSet)
        self.column_sets: list[tuple[int, _ColumnSet]] = []
        self.column_rows = 0
        # rows already made Arrow by seal(), in order, before the records and sets above
        self.sealed: list[pa.Table] = []
        self.sealed_rows = 0

    def __len__(self) -> int:
        return self.sealed_rows + len(self.records) + self.column_rows

    def seal(self) -> None:
        """Make the rows added so far Arrow now (see :meth:`ArchiveBatch.seal`)."""
        if self.records or self.column_sets:
            table = self._unsealed_to_arrow()
            self.sealed.append(table)
            self.sealed_rows += table.num_rows
            for rows in (self.records, self.topic, self.partition, self.offset, self.late, self.column_sets):
                rows.clear()
            self.column_rows = 0

    def to_arrow(self) -> pa.Table:
        parts = list(self.sealed)
        if self.records or self.column_sets:
            parts.append(self._unsealed_to_arrow())
        table = parts[0] if len(parts) == 1 else pa.concat_tables(parts)
        return _first_per_key(table, self.spec.fact_key)

    def _unsealed_to_arrow(self) -> pa.Table:
        spec = self.spec
        parts: list[pa.Table] = []
        records = self._records_to_arrow() if self.records else None
        done = 0
        # column sets with no record between them (consecutive batch messages) become one
        # table: one pyarrow call per column for the run instead of ~15 calls per message
        sets = self.column_sets
        i = 0
        while i < len(sets):
            before = sets[i][0]
            j = i + 1
            while j < len(sets) and sets[j][0] == before:
                j += 1
            if records is not None and before > done:
                parts.append(records.slice(done, before - done))
                done = before
            parts.append(_column_sets_to_arrow(spec, [cs for _, cs in sets[i:j]]))
            i = j
        if records is not None and done < records.num_rows:
            parts.append(records.slice(done))
        return parts[0] if len(parts) == 1 else pa.concat_tables(parts)

    def _records_to_arrow(self) -> pa.Table:
        spec, recs = self.spec, self.records
        arrays: dict[str, pa.Array] = {
            c.name: pa.array(list(map(attrgetter(c.name), recs)), type=c.arrow) for c in spec.fields
        }
        arrays["event_time"] = arrays[spec.event_time_field]
        arrays["topic"] = _repeat_or_array(self.topic, pa.string())
        arrays["kafka_partition"] = _repeat_or_array(self.partition, pa.int32())
        arrays["kafka_offset"] = pa.array(self.offset, type=pa.int64())
        arrays["late"] = _repeat_or_array(self.late, pa.bool_())
        return pa.table({c.name: arrays[c.name] for c in spec.columns})


def _is_constant(column: Any) -> bool:
    """A column given as one value for every row (a str, a number, a datetime)."""
    return isinstance(column, (str, int, float, datetime))


@dataclass(frozen=True)
class _ColumnSet:
    """Rows of one message given as columns (one Kafka coordinate for all of them)."""

    columns: typing.Mapping[str, Any]
    rows: int
    topic: str | None
    partition: int | None
    offset: int | None
    late: Any  # a bool per row (sequence or numpy array), or None: none late


def _column_sets_to_arrow(spec: FeedTable, sets: list[_ColumnSet]) -> pa.Table:
    """Consecutive column sets as one table (the rows of each, in order)."""
    rows = [cs.rows for cs in sets]
    n = sum(rows)
    arrays = {c.name: _concat_column([cs.columns[c.name] for cs in sets], rows, c.arrow) for c in spec.fields}
    arrays["event_time"] = arrays[spec.event_time_field]
    arrays["topic"] = _concat_column([cs.topic for cs in sets], rows, pa.string())
    arrays["kafka_partition"] = _concat_column([cs.partition for cs in sets], rows, pa.int32())
    arrays["kafka_offset"] = _concat_column([cs.offset for cs in sets], rows, pa.int64())
    lates = [cs.late for cs in sets]
    arrays["late"] = (pa.repeat(pa.scalar(False), n) if all(x is None for x in lates) else
                      pa.array(np.concatenate([np.zeros(k, bool) if x is None else np.asarray(x, bool)
                                               for x, k in zip(lates, rows)]), pa.bool_()))
    return pa.table({c.name: arrays[c.name] for c in spec.columns})


def _concat_column(values: list[Any], rows: list[int], typ: pa.DataType) -> pa.Array:
    """One Arrow array of several column sets' values for a column: each a column (list or
    numpy array) or one value (str, number, datetime or None) for all of that set's rows."""
    first = values[0]
    if (first is None or _is_constant(first)) and all(type(v) is type(first) and v == first for v in values):
        return pa.repeat(pa.scalar(first, typ), sum(rows))
    if len(values) == 1:
        return pa.array(first, type=typ)
    if pa.types.is_timestamp(typ) and all(type(v) is np.ndarray or isinstance(v, datetime) for v in values):
        # scrapes: one instant per set (epoch microseconds, as the decoder's arrays)
        return pa.array(np.concatenate([np.full(k, epoch_us(v), dtype=np.int64) if isinstance(v, datetime) else v
                                        for v, k in zip(values, rows)]), type=typ)
    if all(type(v) is np.ndarray for v in values):
        return pa.array(np.concatenate(values), type=typ)
    return pa.array(list(chain.from_iterable(repeat(v, k) if v is None or _is_constant(v) else v
                                             for v, k in zip(values, rows))), type=typ)


def _repeat_or_array(values: list[Any], typ: pa.DataType) -> pa.Array:
    if values and values.count(values[0]) == len(values):  # the common case: one topic
        return pa.repeat(pa.scalar(values[0], typ), len(values))
    return pa.array(values, type=typ)


def _first_per_key(table: pa.Table, key: Sequence[str]) -> pa.Table:
    """Drop in-batch duplicates of ``key`` (the first occurrence wins); hashing in Arrow."""
    if table.num_rows < 2 or not _may_repeat(table, key):
        return table
    keyed = table.select(list(key)).append_column("_i", pa.array(range(table.num_rows), type=pa.int64()))
    firsts = keyed.group_by(list(key), use_threads=False).aggregate([("_i", "min")])
    if firsts.num_rows == table.num_rows:
        return table
    return table.take(firsts.column("_i_min").combine_chunks().sort())


def _may_repeat(table: pa.Table, key: Sequence[str]) -> bool:
    """False when no two rows share ``key``: a sort of the keys as integers (strings by their
    dictionary index), ~3x cheaper than the group-by, which runs only when this says True."""
    cols = []
    for name in key:
        col = table.column(name).combine_chunks()
        if pa.types.is_string(col.type):
            col = pc.dictionary_encode(col).indices
        elif pa.types.is_timestamp(col.type):
            col = col.cast(pa.int64())
        if not pa.types.is_integer(col.type) or col.null_count:
            return True
        cols.append(col.to_numpy())
    order = np.lexsort(cols[::-1])
    same = np.ones(len(order) - 1, dtype=bool)
    for c in cols:
        c = c[order]
        same &= c[1:] == c[:-1]
    return bool(same.any())


class ArchiveBatch:
    """Rows for several archive tables, written together in one transaction.

    Not thread-safe; build one per poll loop. A batch is not consumed by a write, so the same
    batch can be retried (writes are idempotent).
    """

    def __init__(self) -> None:
        self._feeds: dict[str, _FeedRows] = {}
        self._actions: list[tuple[DispatchAction, str | None, int | None, int | None]] = []
        self._dead: list[tuple[DeadLetter, bytes]] = []
        self._arrow: dict[str, pa.Table] | None = None

    # -- adding rows ----------------------------------------------------------------------
    def add_input(self, feed_name: str, record: FeedRecord, *, topic: str | None = None,
                  partition: int | None = None, offset: int | None = None, late: bool = False) -> None:
        """An input event; ``topic/partition/offset`` are its Kafka coordinates (None when
        replayed in-process); ``late`` when it arrived after its interval was decided."""
        rows = self._feeds.get(feed_name)
        if rows is None:
            rows = self._new_feed(feed_name)
        if record.__class__ is not rows.spec.model:
            raise TypeError(f"feed {feed_name!r} archives {rows.spec.model.__name__}, got {type(record).__name__}")
        rows.records.append(record)
        rows.topic.append(topic)
        rows.partition.append(partition)
        rows.offset.append(offset)
        rows.late.append(late)
        self._arrow = None

    def _new_feed(self, feed_name: str) -> _FeedRows:
        spec = FEED_SPECS.get(feed_name)
        if spec is None:
            raise ValueError(f"unknown feed {feed_name!r} (known: {', '.join(FEED_TABLES)})")
        rows = self._feeds[feed_name] = _FeedRows(spec)
        return rows

    def add_inputs(self, feed_name: str, records: Sequence[FeedRecord], *, topic: str | None = None,
                   partition: int | None = None, first_offset: int | None = None, late: bool = False) -> None:
        """Many events of one feed; offsets ``first_offset, first_offset+1, ...`` if given."""
        rows = self._feeds.get(feed_name) or self._new_feed(feed_name)
        model = rows.spec.model
        bad = next((r for r in records if r.__class__ is not model), None)
        if bad is not None:
            raise TypeError(f"feed {feed_name!r} archives {model.__name__}, got {type(bad).__name__}")
        n = len(records)
        rows.records.extend(records)
        rows.topic.extend([topic] * n)
        rows.partition.extend([partition] * n)
        rows.offset.extend([None] * n if first_offset is None else range(first_offset, first_offset + n))
        rows.late.extend([late] * n)
        self._arrow = None

    def add_input_columns(self, feed_name: str, columns: typing.Mapping[str, Any], *, topic: str | None = None,
                          partition: int | None = None, offset: int | None = None, late: Any = None) -> None:
        """Many events of one feed as columns, e.g. a GPU telemetry batch (one Kafka message:
        one ``topic/partition/offset``): ``{field: values}`` for every field of the feed's
        record, already validated, same length, or one value for all rows (e.g. the site);
        timestamps as UTC datetimes or epoch microseconds (ints, a numpy int64 array).
        ``late``: a bool per row, or None. Becomes Arrow columns at write time with no Python
        object per row."""
        rows = self._feeds.get(feed_name) or self._new_feed(feed_name)
        names = rows.spec.field_names
        if set(columns) != set(names):
            raise ValueError(f"feed {feed_name!r} needs columns {', '.join(names)}; got {', '.join(sorted(columns))}")
        lengths = {len(columns[c]) for c in names if not _is_constant(columns[c])} | (
            {len(late)} if late is not None else set())
        if len(lengths) != 1:
            raise ValueError(f"columns of feed {feed_name!r} differ in length: {sorted(lengths)}")
        (n,) = lengths
        if n:
            rows.column_sets.append((len(rows.records), _ColumnSet(columns, n, topic, partition, offset, late)))
            rows.column_rows += n
            self._arrow = None

    def add_action(self, action: DispatchAction, *, topic: str | None = None, partition: int | None = None,
                   offset: int | None = None) -> None:
        self._actions.append((action, topic, partition, offset))
        self._arrow = None

    def add_dead_letter(self, dl: DeadLetter, raw: bytes | None = None) -> None:
        """A rejected message; ``raw`` is its original bytes (decoded from ``dl.raw_base64`` if
        omitted)."""
        self._dead.append((dl, base64.b64decode(dl.raw_base64) if raw is None else bytes(raw)))
        self._arrow = None

    def seal(self) -> None:
        """Make the rows of feeds that received column sets (batch messages) Arrow now, on the
        caller's thread, instead of at write time: the worker's fetch loop calls it after
        each step. Arrow holds such a row in ~0.1 kB against ~0.5 kB of decoded Python
        columns, and the archive writer thread, which runs beside the fetch loop, is then left
        with DuckDB's work (GIL released) instead of converting Python lists (GIL held, and
        waiting for it behind the fetch loop). Feeds of single records stay as they are: their
        conversion costs the same on either thread, and the fetch loop is their bottleneck."""
        for rows in self._feeds.values():
            if rows.column_sets:
                rows.seal()
        self._arrow = None

    def __len__(self) -> int:
        return sum(map(len, self._feeds.values())) + len(self._actions) + len(self._dead)

    def counts(self) -> dict[str, int]:
        """Rows added per table (before any de-duplication)."""
        out = {name: len(rows) for name, rows in self._feeds.items() if len(rows)}
        if self._actions:
            out[ACTIONS_TABLE] = len(self._actions)
        if self._dead:
            out[DEAD_LETTERS_TABLE] = len(self._dead)
        return out

    # -- Arrow ------------------------------------------------------------------------------
    def to_arrow(self) -> dict[str, pa.Table]:
        """``{table: arrow table}`` for the non-empty tables (cached until the next add)."""
        if self._arrow is None:
            out = {name: rows.to_arrow() for name, rows in self._feeds.items() if len(rows)}
            if self._actions:
                out[ACTIONS_TABLE] = _actions_to_arrow(self._actions)
            if self._dead:
                out[DEAD_LETTERS_TABLE] = _dead_letters_to_arrow(self._dead)
            self._arrow = out
        return self._arrow


def _actions_to_arrow(items: list[tuple[DispatchAction, str | None, int | None, int | None]]) -> pa.Table:
    cols: dict[str, list[Any]] = {c.name: [] for c in ACTION_COLUMNS}
    for a, topic, partition, offset in items:
        cols["topic"].append(topic)
        cols["kafka_partition"].append(partition)
        cols["kafka_offset"].append(offset)
        cols["site_id"].append(a.site_id)
        cols["interval_start"].append(a.interval_start)
        cols["interval_minutes"].append(a.interval_minutes)
        cols["engine"].append(a.engine)
        cols["price_known_usd_mwh"].append(a.price_known_usd_mwh)
        cols["price_expected_usd_mwh"].append(a.price_expected_usd_mwh)
        cols["hashprice_usd_per_ph_day"].append(a.hashprice_usd_per_ph_day)
        cols["load_mw"].append(a.load_mw)
        cols["sold_back_mw"].append(a.sold_back_mw)
        cols["dr_limit_mw"].append(a.dr.limit_mw)
        cols["dr_shortfall_mw"].append(a.dr.shortfall_mw)
        cols["dr_active_event_ids"].append(list(a.dr.active_event_ids))
        for t in _PNL_TERMS:
            cols[t].append(getattr(a.expected, t))
        cols["reasons"].append(list(a.reasons))
        cols["paused_job_ids"].append(list(a.paused_job_ids))
        cols["fleets"].append([f.model_dump(exclude={"schema_version"}) for f in a.fleets])
        cols["gpus"].append([g.model_dump(exclude={"schema_version"}) for g in a.gpus])
        cols["payload"].append(encode(a).decode())
    table = pa.table({c.name: pa.array(cols[c.name], type=c.arrow) for c in ACTION_COLUMNS})
    return _first_per_key(table, _PRIMARY_KEYS[ACTIONS_TABLE])


def _dead_letters_to_arrow(items: list[tuple[DeadLetter, bytes]]) -> pa.Table:
    cols: dict[str, list[Any]] = {c.name: [] for c in DEAD_LETTER_COLUMNS}
    for dl, raw in items:
        cols["source_topic"].append(dl.source_topic)
        cols["source_partition"].append(dl.source_partition)
        cols["source_offset"].append(dl.source_offset)
        cols["key"].append(None if dl.key_base64 is None else base64.b64decode(dl.key_base64))
        cols["raw"].append(raw)
        cols["error_type"].append(dl.error_type)
        cols["reason"].append(dl.reason)
        cols["received_at"].append(dl.received_at)
    table = pa.table({c.name: pa.array(cols[c.name], type=c.arrow) for c in DEAD_LETTER_COLUMNS})
    return _first_per_key(table, _PRIMARY_KEYS[DEAD_LETTERS_TABLE])


# ---------------------------------------------------------------------------------------
# The archive
# ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class WriteStats:
    """What one :meth:`Archive.write_batch` did: rows offered and actually inserted, per table."""

    offered: dict[str, int] = field(default_factory=dict)
    inserted: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def rows_offered(self) -> int:
        return sum(self.offered.values())

    @property
    def rows_inserted(self) -> int:
        return sum(self.inserted.values())

    @property
    def duplicates(self) -> int:
        """Rows skipped because they were already archived (or repeated within the batch)."""
        return self.rows_offered - self.rows_inserted


# One lock per database file: the anti-join is check-then-insert, so writers must not overlap.
_FILE_LOCKS: dict[str, threading.Lock] = {}
_FILE_LOCKS_GUARD = threading.Lock()


def _file_lock(path: Path) -> threading.Lock:
    key = str(path.resolve())
    with _FILE_LOCKS_GUARD:
        return _FILE_LOCKS.setdefault(key, threading.Lock())


# DuckDB errors a retry may fix; anything else (conversion, constraint, binder...) is permanent.
_TRANSIENT = (duckdb.IOException, duckdb.TransactionException, duckdb.OutOfMemoryException,
              duckdb.FatalException, duckdb.InterruptException)


def _reason(exc: BaseException) -> str:
    msg = " ".join(str(exc).split())
    if len(msg) > 500:
        msg = msg[:497] + "..."
    return f"{type(exc).__name__}: {msg}"


class Archive:
    """A DuckDB archive file. One writer per file (DuckDB's file lock)."""

    def __init__(self, path: str | Path, *, read_only: bool = False, threads: int | None = WRITER_THREADS,
                 memory_limit_mb: int | None = None) -> None:
        """Open (creating the file and tables if absent) the archive at ``path``.

        ``threads``: DuckDB worker threads for this database (writers default to 1: measured
        faster for batch ingest on 2 cores, and it leaves the other core to the stream worker;
        None keeps DuckDB's default, which read-only opens use). ``memory_limit_mb``: DuckDB's
        memory limit for this database (None: DuckDB's default, 80% of RAM). DuckDB keeps the
        blocks it wrote in its buffer pool up to that limit, so without one a long-running
        writer's memory grows with the archive (``bench/bench_archive_memory.py``, 6M rows of 6
        columns: +129 MB without a limit, flat from 3M rows at 64 MB); past the limit it evicts
        them (they are on disk) and spills large queries to ``<file>.tmp``. Raises :class:`ArchiveError` if the file is locked by
        another process, is not an archive, or has another version.
        """
        self.path = Path(path)
        self.read_only = read_only
        self._threads = None if read_only and threads == WRITER_THREADS else threads
        self._memory_limit_mb = memory_limit_mb
        self._lock = _file_lock(self.path)
        self._con: duckdb.DuckDBPyConnection | None = None     # for queries (connection())
        self._writer: duckdb.DuckDBPyConnection | None = None  # its own cursor: writes only
        self._closed = False
        # per feed table: an upper bound of max(event_time) committed (epoch us; None = empty);
        # absent = unknown (read from the table). Dropped on any failed write.
        self._watermarks: dict[str, int | None] = {}
        self._pending_watermarks: dict[str, int] = {}
        self._connect()

    # -- connection ---------------------------------------------------------------------
    def _connect(self) -> None:
        if self.read_only and not self.path.exists():
            raise ArchiveError(f"archive {self.path} does not exist (cannot open it read-only)")
        try:
            con = duckdb.connect(str(self.path), read_only=self.read_only)
        except duckdb.Error as exc:
            raise ArchiveError(f"cannot open archive {self.path}: {_reason(exc)}",
                               transient=isinstance(exc, _TRANSIENT)) from exc
        try:
            if self._threads:
                con.execute(f"SET threads = {int(self._threads)}")
            if self._memory_limit_mb:
                con.execute(f"SET memory_limit = '{int(self._memory_limit_mb)}MB'")
            con.execute("SET TimeZone = 'UTC'")
            if self.read_only:
                self._check_version(con)
            else:
                self._create_schema(con)
                self._writer = con.cursor()
                self._writer.execute("SET TimeZone = 'UTC'")
        except BaseException:
            con.close()
            raise
        self._con = con

    def _create_schema(self, con: duckdb.DuckDBPyConnection) -> None:
        try:
            con.begin()
            for stmt in ddl():
                con.execute(stmt)
            from sinks.views import create_views  # the analytics views ship with every archive

            create_views(con)
            (n,) = con.execute("SELECT count(*) FROM schema_version").fetchall()[0]
            if n == 0:
                from wattmix import __version__
                con.execute("INSERT INTO schema_version (version, created_by) VALUES (?, ?)",
                            [ARCHIVE_SCHEMA_VERSION, f"wattmix {__version__}"])
            con.commit()
        except duckdb.Error as exc:
            _rollback(con)
            raise ArchiveError(f"cannot create the archive schema in {self.path}: {_reason(exc)}",
                               transient=isinstance(exc, _TRANSIENT)) from exc
        self._check_version(con)

    def _check_version(self, con: duckdb.DuckDBPyConnection) -> None:
        try:
            (version,) = con.execute("SELECT max(version) FROM schema_version").fetchall()[0]
        except duckdb.CatalogException as exc:
            raise ArchiveError(f"{self.path} is not a wattmix archive (no schema_version table)") from exc
        if version != ARCHIVE_SCHEMA_VERSION:
            raise ArchiveError(f"{self.path} has archive schema version {version}, this code writes "
                               f"{ARCHIVE_SCHEMA_VERSION}: migrate it or use a new file")

    def connection(self) -> duckdb.DuckDBPyConnection:
        """The connection, for queries (from another thread use ``.cursor()`` of it). Writes go
        through a separate cursor, so a pending query result never blocks a write."""
        if self._con is None:
            raise ArchiveError(f"archive {self.path} is closed", transient=not self._closed)
        return self._con

    def close(self) -> None:
        """Close the archive (committed batches are durable; DuckDB checkpoints on close)."""
        self._closed = True
        self._disconnect()

    def _disconnect(self) -> None:
        for attr in ("_writer", "_con"):
            con = getattr(self, attr)
            setattr(self, attr, None)
            if con is not None:
                try:
                    con.close()
                except duckdb.Error:
                    pass  # an invalidated database may refuse even this

    def __enter__(self) -> "Archive":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writing --------------------------------------------------------------------------
    def write_batch(self, batch: ArchiveBatch) -> WriteStats:
        """Write every row of ``batch`` in one transaction; return once committed (durable).

        Rows already archived are skipped (see the module docstring). Raises
        :class:`ArchiveError` (a ``SinkError``) and writes nothing if anything fails.
        """
        if self.read_only:
            raise ArchiveError(f"archive {self.path} is open read-only: cannot write")
        if self._closed:
            raise ArchiveError(f"archive {self.path} is closed: cannot write")
        t0 = time.perf_counter()
        try:
            tables = batch.to_arrow()
        except (pa.ArrowException, ValueError, TypeError, OverflowError) as exc:
            raise ArchiveError(f"cannot convert the batch to Arrow: {_reason(exc)}") from exc
        offered = batch.counts()
        if not tables:
            return WriteStats(offered, {}, 0.0)
        with self._lock:
            if self._writer is None:  # invalidated by an earlier fatal error: reopen the file
                self._connect()
            con = self._writer
            assert con is not None
            inserted: dict[str, int] = {}
            current = "BEGIN"
            self._pending_watermarks.clear()
            try:
                con.begin()
                for name in TABLES:
                    if name in tables:
                        current = name
                        inserted[name] = self._insert_table(con, name, tables[name])
                current = "COMMIT"
                con.commit()
            except Exception as exc:
                self._watermarks.clear()  # the commit may or may not have happened: re-read them
                fatal = isinstance(exc, duckdb.FatalException) or "invalidated" in str(exc)
                _rollback(con)
                try:
                    con.unregister(_STAGE)
                except duckdb.Error:
                    pass
                if fatal:  # DuckDB refuses all work until the file is reopened
                    self._disconnect()
                transient = isinstance(exc, _TRANSIENT) or fatal
                where = f"writing {current} ({tables[current].num_rows} rows)" if current in tables else current
                raise ArchiveError(f"archive {self.path}: batch of {len(batch)} rows not written "
                                   f"({where}): {_reason(exc)}", transient=transient) from exc
            for name, hi in self._pending_watermarks.items():
                wm = self._watermarks.get(name)
                self._watermarks[name] = hi if wm is None else max(wm, hi)
        return WriteStats(offered, inserted, time.perf_counter() - t0)

    def _insert_table(self, con: duckdb.DuckDBPyConnection, name: str, data: pa.Table) -> int:
        """Insert the new rows of one table (inside the batch's transaction); return how many."""
        cols = ", ".join(_q(c.name) for c in _columns_of(name))
        con.register(_STAGE, data)  # on failure, write_batch unregisters it after the rollback
        if name in FEED_SPECS:
            if name not in self._watermarks:
                (wm,) = con.execute(f"SELECT epoch_us(max(event_time)) FROM {name}").fetchall()[0]
                self._watermarks[name] = wm
            n = _insert_new_facts(con, FEED_SPECS[name], data, cols, self._watermarks[name])
            if data.num_rows:
                self._pending_watermarks[name] = pc.max(data.column("event_time")).cast(pa.int64()).as_py()
        else:
            sql = f"INSERT OR IGNORE INTO {name} ({cols}) SELECT {cols} FROM {_STAGE}"
            n = int(con.execute(sql).fetchall()[0][0])
        con.unregister(_STAGE)
        return n

    def write_with_retry(self, batch: ArchiveBatch, attempts: int = 5, backoff: float = 0.5, *,
                         max_backoff: float = 30.0, sleep: Callable[[float], None] = time.sleep,
                         on_retry: Callable[[int, ArchiveError], None] | None = None) -> WriteStats:
        """:meth:`write_batch`, retried on transient errors with exponential backoff
        (``backoff``, ``2*backoff``, ... capped at ``max_backoff`` seconds).

        Safe because writes are idempotent: if a commit succeeded but its acknowledgement was
        lost, the retry inserts nothing. Permanent errors are raised at once; the last
        transient error is raised after ``attempts`` tries.
        """
        if attempts < 1:
            raise ValueError("attempts must be >= 1")
        delay = backoff
        for attempt in range(1, attempts + 1):
            try:
                return self.write_batch(batch)
            except ArchiveError as exc:
                if not exc.transient or attempt == attempts:
                    raise
                if on_retry is not None:
                    on_retry(attempt, exc)
                sleep(delay)
                delay = min(delay * 2, max_backoff)
        raise AssertionError("unreachable")

    # -- reading --------------------------------------------------------------------------
    def counts(self) -> dict[str, int]:
        """Rows per table."""
        con = self.connection()
        sql = " UNION ALL ".join(f"SELECT '{t}', count(*) FROM {t}" for t in TABLES)
        return {t: int(n) for t, n in con.execute(sql).fetchall()}

    def checkpoint(self) -> None:
        """Fold the WAL into the database file (DuckDB also does it on its own)."""
        self.connection().execute("CHECKPOINT")


def _rollback(con: duckdb.DuckDBPyConnection) -> None:
    try:
        con.rollback()
    except duckdb.Error:
        pass  # no transaction open, or the database is invalidated


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def _dt(us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=us)


def _time_ranges(us: pa.Array, max_gap_s: float = 3600.0, max_ranges: int = 8) -> list[tuple[int, int]]:
    """Ranges ``(lo, hi)`` (epoch microseconds, inclusive) covering the times ``us``: a new
    range wherever two consecutive distinct times are more than ``max_gap_s`` apart, so a late
    straggler costs a scan of its own hour, not of everything between it and the rest of the
    batch. At most ``max_ranges`` ranges (the smallest gaps are merged first)."""
    mm = pc.min_max(us)
    lo, hi = mm["min"].as_py(), mm["max"].as_py()
    gap = int(max_gap_s * 1_000_000)
    if hi - lo <= gap:
        return [(lo, hi)]
    vals = pc.unique(us).sort().to_pylist()
    breaks = [i for i in range(1, len(vals)) if vals[i] - vals[i - 1] > gap]
    if len(breaks) >= max_ranges:
        breaks = sorted(sorted(breaks, key=lambda i: vals[i] - vals[i - 1])[-(max_ranges - 1):])
    ranges, start = [], 0
    for b in breaks + [len(vals)]:
        ranges.append((vals[start], vals[b - 1]))
        start = b
    return ranges


def _insert_new_facts(con: duckdb.DuckDBPyConnection, spec: FeedTable, data: pa.Table, cols: str,
                      watermark_us: int | None) -> int:
    """Insert the rows of the staged batch whose fact key is not archived yet; return how many.

    ``watermark_us`` is an upper bound of the table's ``max(event_time)`` (None: empty table).
    Rows after it cannot be archived yet (the fact key includes the event time): plain insert.
    Rows at or before it are anti-joined against the table restricted to their time ranges.
    """
    if data.num_rows == 0:
        return 0
    t = spec.name
    us = data.column("event_time").combine_chunks().cast(pa.int64())
    old = None if watermark_us is None else us.filter(pc.less_equal(us, watermark_us))
    n_old = 0 if old is None else len(old)
    total = 0
    if n_old < len(us):
        where, params = ("", {}) if n_old == 0 else ("WHERE s.event_time > $wm", {"wm": _dt(watermark_us)})
        total += int(con.execute(f"INSERT INTO {t} ({cols}) SELECT {cols} FROM {_STAGE} s {where}",
                                 params).fetchall()[0][0])
    if n_old:
        key = " AND ".join(f"a.{_q(k)} = s.{_q(k)}" for k in spec.fact_key)
        for lo, hi in _time_ranges(old):
            sql = (
                f"INSERT INTO {t} ({cols}) SELECT {cols} FROM {_STAGE} s WHERE s.event_time BETWEEN $lo AND $hi "
                f"AND NOT EXISTS (SELECT 1 FROM {t} a WHERE a.event_time BETWEEN $lo AND $hi AND {key})"
            )
            total += int(con.execute(sql, {"lo": _dt(lo), "hi": _dt(hi)}).fetchall()[0][0])
    return total


# ---------------------------------------------------------------------------------------
# Reading back
# ---------------------------------------------------------------------------------------

def read_actions(conn: duckdb.DuckDBPyConnection, site_id: str | None = None) -> list[DispatchAction]:
    """Archived actions (rebuilt from their wire JSON), ordered by site and interval."""
    where, params = ("WHERE site_id = ?", [site_id]) if site_id is not None else ("", [])
    rows = conn.execute(f"SELECT payload FROM {ACTIONS_TABLE} {where} ORDER BY site_id, interval_start",
                        params).fetchall()
    return [DispatchAction.model_validate_json(p) for (p,) in rows]


def read_dead_letters(conn: duckdb.DuckDBPyConnection) -> list[DeadLetter]:
    """Archived dead letters, ordered by source topic, partition and offset."""
    rows = conn.execute(
        f"SELECT source_topic, source_partition, source_offset, key, raw, error_type, reason, received_at "
        f"FROM {DEAD_LETTERS_TABLE} ORDER BY source_topic, source_partition, source_offset"
    ).fetchall()
    return [
        DeadLetter(source_topic=t, source_partition=p, source_offset=o,
                   key_base64=None if k is None else base64.b64encode(k).decode(),
                   raw_base64=base64.b64encode(r).decode(), error_type=e, reason=why, received_at=at)
        for t, p, o, k, r, e, why, at in rows
    ]


_NO_OFFSET = 1 << 62


def read_inputs_in_event_order(conn: duckdb.DuckDBPyConnection, site_id: str, *,
                               since: datetime | None = None, until: datetime | None = None,
                               feeds: Sequence[str] = FEED_TABLES,
                               chunk_rows: int = 10_000) -> Iterator[tuple[str, FeedRecord]]:
    """Yield ``(feed_name, record)`` for one site ordered by (event_time, feed order
    (grid_prices, dr_events, hashprice, gpu_telemetry), kafka_offset, archive order), optionally
    only ``since <= event_time < until``. Streams: memory is ``chunk_rows`` per feed."""
    streams = []
    cursors = []
    try:
        for name in feeds:
            spec = FEED_SPECS[name]
            cur = conn.cursor()
            cursors.append(cur)
            cur.execute("SET TimeZone = 'UTC'")
            cond, params = ["site_id = $site"], {"site": site_id}
            if since is not None:
                cond.append("event_time >= $since")
                params["since"] = since
            if until is not None:
                cond.append("event_time < $until")
                params["until"] = until
            # timestamps as epoch microseconds: Arrow's tz-aware to_pylist() is the bottleneck
            fields = ", ".join(f"epoch_us({_q(c.name)})" if c.sql.startswith("TIMESTAMPTZ") else _q(c.name)
                               for c in spec.fields)
            rel = cur.sql(
                f"SELECT {fields}, epoch_us(event_time), coalesce(kafka_offset, {_NO_OFFSET}), rowid FROM {name} "
                f"WHERE {' AND '.join(cond)} ORDER BY event_time, kafka_offset NULLS LAST, rowid",
                params=params,
            )
            streams.append(_records_of(rel.to_arrow_reader(chunk_rows), spec))
        for _key, name, record in heapq.merge(*streams, key=lambda x: x[0]):
            yield name, record
    finally:
        for cur in cursors:
            cur.close()


def _records_of(reader: pa.RecordBatchReader, spec: FeedTable) -> Iterator[tuple[tuple[Any, ...], str, FeedRecord]]:
    order = FEED_ORDER[spec.name]
    validate = spec.model.model_validate
    names = spec.field_names
    ts_idx = [i for i, c in enumerate(spec.fields) if c.sql.startswith("TIMESTAMPTZ")]
    cache: dict[int, datetime] = {}  # feeds repeat timestamps (every job sampled at one instant)

    def to_dt(us: int | None) -> datetime | None:
        if us is None:
            return None
        d = cache.get(us)
        if d is None:
            if len(cache) > 100_000:
                cache.clear()
            d = cache[us] = _EPOCH + timedelta(microseconds=us)
        return d

    for rb in reader:
        # (ENUM columns arrive dictionary-encoded: decode in Arrow, to_pylist() on them is slow)
        cols = [(col.cast(pa.string()) if pa.types.is_dictionary(col.type) else col).to_pylist() for col in rb.columns]
        for i in ts_idx:
            cols[i] = list(map(to_dt, cols[i]))
        n = len(names)
        for row in zip(*cols):
            record = validate(dict(zip(names, row[:n])))
            yield (row[n], order, row[n + 1], row[n + 2]), spec.name, record
