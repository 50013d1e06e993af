"""Property-based fuzzing of every input topic's decoder and of the worker's ingest step.

Whatever bytes arrive, decoding either yields a valid record or raises DecodeError with a
one-line reason; the pipeline turns every rejected message into a dead letter (topic + table
row) carrying that reason and the original bytes, and never raises. GPU telemetry batches
(rows and columns) are validated as columns: they must accept and reject exactly what the
pydantic models do, with the same values and the same reasons.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone

import orjson
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from pydantic import ConfigDict, TypeAdapter, ValidationError

from schemas import codec
from schemas.base import UtcDatetime
from schemas.codec import decode, decode_gpu, encode
from schemas.feeds import (
    GPU_SAMPLE_FIELDS,
    GpuSamples,
    GpuTelemetry,
    GpuTelemetryBatch,
    GpuTelemetryColumns,
    epoch_us,
)
from schemas.topics import INPUT_FEEDS
from streams.app import TopicNames
from streams.pipeline import Incoming, Pipeline
from schemas.site import load_sample_site
from tests import factories as f
from wattmix.errors import DecodeError

GOOD = {
    "grid_prices": orjson.loads(encode(f.rt_price(3, 31.5))),
    "dr_events": orjson.loads(encode(f.dr_event(120))),
    "hashprice": orjson.loads(encode(f.hashprice())),
    "gpu_telemetry": orjson.loads(encode(f.gpu_sample("trn-1"))),
}
FEEDS = {x.name: x for x in INPUT_FEEDS}

json_scalar = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=40),
    st.sampled_from(["2024-08-05T00:00:00", "2024-08-05T00:00:00Z", "9999-12-31T23:59:59+00:00",
                     "0001-01-01T00:00:00+00:00", "2024-02-30T00:00:00Z", "-15", "NaN", "1e999"]),
)
json_value = st.recursive(json_scalar, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=10), c, max_size=4),
                          max_leaves=8)


def _dumps(obj) -> bytes:
    # orjson refuses NaN/inf and huge ints; emit them as JSON-ish text the way a broken producer would
    try:
        return orjson.dumps(obj)
    except (TypeError, orjson.JSONEncodeError):
        return repr(obj).encode()


@st.composite
def mutated(draw):
    """A valid record of a random feed with one field changed, dropped or added."""
    feed = draw(st.sampled_from(sorted(GOOD)))
    rec = dict(GOOD[feed])
    op = draw(st.sampled_from(["replace", "drop", "add", "negate", "huge"]))
    key = draw(st.sampled_from(sorted(rec)))
    if op == "replace":
        rec[key] = draw(json_value)
    elif op == "drop":
        rec.pop(key)
    elif op == "add":
        rec[draw(st.text(min_size=1, max_size=12))] = draw(json_value)
    elif op == "negate" and isinstance(rec[key], (int, float)) and not isinstance(rec[key], bool):
        rec[key] = -abs(rec[key]) - 1
    elif op == "huge":
        rec[key] = draw(st.sampled_from([1e308, -1e308, 10**30, "x" * 5000]))
    return feed, _dumps(rec)


raw_garbage = st.tuples(st.sampled_from(sorted(GOOD)), st.binary(max_size=300))

# -- GPU telemetry batches -----------------------------------------------------------------
STAMPS = ["2024-08-05T00:00:00+00:00", "2024-08-05T00:15:00Z", "2024-08-05T02:00:00.5+02:00",
          "2024-08-05T00:00:00.123456-05:30", "2024-08-05 00:00:00Z", "2024-08-05T00:00:00z",
          "2024-08-05T00:00:00.1234567Z", "2024-08-05T00:00:00+00:00:00", "2024-08-05T24:00:00Z",
          "2024-08-05T00:00:60Z", "2024-08-05T00:00:00", "1999-12-31T23:59:59Z", "2100-01-01T00:00:00+01:00",
          "20240805T000000Z", "2024-08-05T00:00Z", "\u0662024-08-05T00:00:00Z",
          # offsets fromisoformat reads and pydantic refuses (found by the fuzz test) or both read
          "2000-01-01T00:00:00-00:60", "2024-08-05T00:00:00+23:59", "2024-08-05T00:00:00-23:00",
          "2024-08-05T00:00:00+24:00", "2024-08-05T00:00:00+05:99"]
# values a producer might put in any field: valid ones of every field, and near misses
gpu_value = st.one_of(
    json_value, st.sampled_from(STAMPS),
    st.sampled_from(["inference", "training", "batch", "running", "paused", "queued", "completed", "sample", "x" * 129,
                     "", 0, 1, 8, 1_000_000, 1_000_001, -0.0, 0.5, 1.0, 1.0000001, 10_000_000, 1e7 + 2, 5, True]),
    st.floats(min_value=-1, max_value=2), st.integers(min_value=-2, max_value=2_000_000),
)


@st.composite
def gpu_batch(draw):
    """A GpuTelemetryBatch or GpuTelemetryColumns message of valid samples, maybe with one
    value, key, column or top-level field changed."""
    n = draw(st.integers(1, 4))
    samples = [dict(GOOD["gpu_telemetry"], job_id=f"j{i}", observed_at=draw(st.sampled_from(STAMPS[:4])))
               for i in range(n)]
    for smp in samples:
        if draw(st.booleans()):
            del smp["schema_version"]  # optional in a sample
    columns = draw(st.booleans())
    body = ({"columns": {k: [x[k] for x in samples] for k in GPU_SAMPLE_FIELDS}} if columns
            else {"samples": samples})
    doc = {"schema_version": 1, "site_id": "sample", **body}
    op = draw(st.sampled_from(["none", "value", "value", "drop", "add", "top"]))
    i = draw(st.integers(0, n - 1))
    part = body["columns"] if columns else samples[i]
    key = draw(st.sampled_from(sorted(part) if part else ["job_id"]))
    if op == "value" and key in part:
        if columns:
            part[key][i] = draw(gpu_value)
        else:
            part[key] = draw(gpu_value)
    elif op == "drop" and key in part:
        if columns and draw(st.booleans()):
            part[key].pop()  # columns of different lengths
        else:
            part.pop(key)
    elif op == "add":
        part[draw(st.sampled_from(["extra", "site_id", "schema_version", "gpus"]))] = draw(gpu_value)
    elif op == "top":
        k = draw(st.sampled_from(sorted(doc) + ["extra"]))
        if draw(st.booleans()):
            doc.pop(k, None)
        else:
            doc[k] = draw(gpu_value)
    return _dumps(doc)


def _by_pydantic(raw: bytes) -> GpuSamples | GpuTelemetry | str:
    """The reference: the pydantic model of the message's form validates everything (a batch
    form is named by its key; a message whose text has neither is one sample)."""
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        doc = None
    try:
        if isinstance(doc, dict) and "columns" in doc:
            return codec._by_model(GpuTelemetryColumns, raw)
        if isinstance(doc, dict) and "samples" in doc or not isinstance(doc, dict) and codec.is_batch(raw):
            return codec._by_model(GpuTelemetryBatch, raw)
        return decode(GpuTelemetry, raw)
    except DecodeError as exc:
        return exc.reason


def _comparable(got: GpuSamples | GpuTelemetry | str):
    if not isinstance(got, GpuSamples):
        return got
    assert list(got.observed_us) == [epoch_us(t) for t in got.observed_at]
    assert all(type(x) is float for x in list(got.power_kw) + list(got.utilization))
    return got.site_id, got.records()


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(gpu_batch())
def test_batch_column_checks_accept_and_reject_exactly_what_pydantic_does(raw):
    try:
        got = decode_gpu(raw)
    except DecodeError as exc:
        got = exc.reason
    assert _comparable(got) == _comparable(_by_pydantic(raw))


BIG_INT = "<2**64 + 1>"  # orjson cannot write it: spliced into the bytes
EDGE_VALUES = [True, False, None, 1.0, "1", 2, 0, -1, [], {}, 1e308, BIG_INT, "", "x" * 129]


@pytest.mark.parametrize("columns", [False, True], ids=["rows", "columns"])
@pytest.mark.parametrize("where", ["top", "sample"])
@pytest.mark.parametrize("key", ["schema_version", "site_id"] + list(GPU_SAMPLE_FIELDS))
def test_batch_edge_values_match_pydantic(columns, where, key):
    """Every field of either form set to JSON values next to valid ones (bool for int, 1.0 for
    1, a number as a string...): the column checks decide as pydantic does."""
    for value in EDGE_VALUES:
        sample = dict(GOOD["gpu_telemetry"])
        if columns:
            doc = {"schema_version": 1, "site_id": "sample",
                   "columns": {k: [sample[k], sample[k]] for k in GPU_SAMPLE_FIELDS}}
            target = doc if where == "top" or key not in GPU_SAMPLE_FIELDS else doc["columns"]
        else:
            doc = {"schema_version": 1, "site_id": "sample", "samples": [sample, dict(sample)]}
            target = doc if where == "top" else sample
        if where == "sample" and columns and key in GPU_SAMPLE_FIELDS:
            target[key][1] = value
        else:
            target[key] = value
        raw = orjson.dumps(doc).replace(orjson.dumps(BIG_INT), str(2**64 + 1).encode())
        try:
            got = decode_gpu(raw)
        except DecodeError as exc:
            got = exc.reason
        assert _comparable(got) == _comparable(_by_pydantic(raw)), (key, value)


_PYDANTIC_INSTANT = TypeAdapter(UtcDatetime, config=ConfigDict(strict=True))


@settings(max_examples=3000, deadline=None)
@given(st.from_regex(r"[0-9]{4}-[0-1][0-9]-[0-3][0-9][T ][0-2][0-9]:[0-6][0-9]:[0-6][0-9](\.[0-9]{1,7})?"
                     r"(Z|z|[+-][0-2][0-9]:[0-6][0-9])?", fullmatch=True) | st.sampled_from(STAMPS))
def test_timestamp_fast_path_gives_pydantic_instant(text):
    try:
        want = _PYDANTIC_INSTANT.validate_json(orjson.dumps(text))
    except ValidationError:
        want = None
    got = codec._instant(text)
    assert (None if got is None else got[0]) == want
    if got is not None:
        assert got[0].tzinfo is want.tzinfo and got[1] == epoch_us(want)


def test_valid_batches_of_both_forms_take_the_column_path(monkeypatch):
    samples = [f.gpu_sample(f"j{i}", minute=i % 3, power_kw=float(i)) for i in range(50)]
    rows = encode(GpuTelemetryBatch(site_id="sample", samples=samples))
    cols = codec.encode_gpu_columns(samples)
    expected = _comparable(_by_pydantic(rows))

    def no_pydantic(*a):
        raise AssertionError("fell back to pydantic")

    monkeypatch.setattr(codec, "_by_model", no_pydantic)
    assert _comparable(decode_gpu(rows)) == _comparable(decode_gpu(cols)) == expected


gpu_batch_message = st.tuples(st.just("gpu_telemetry"), gpu_batch())
any_message = st.one_of(mutated(), raw_garbage, gpu_batch_message)


def _check_decode(feed: str, raw: bytes) -> None:
    model = FEEDS[feed].model
    try:
        rec = decode(model, raw)
    except DecodeError as exc:
        assert exc.reason and "\n" not in exc.reason and exc.reason.startswith(model.__name__)
        return
    # accepted: it must be a fully valid, finite record that round-trips
    assert decode(model, encode(rec)) == rec
    for v in rec.model_dump().values():
        if isinstance(v, float):
            assert math.isfinite(v)


@settings(max_examples=6000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(any_message)
def test_decoders_never_raise_anything_but_decode_error(msg):
    _check_decode(*msg)


@settings(max_examples=4000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(any_message, min_size=1, max_size=8))
def test_pipeline_dead_letters_every_bad_message_and_never_raises(msgs):
    topics = TopicNames("")
    pipe = Pipeline([load_sample_site()], topics)
    incoming = [Incoming(topics.feed(feed), 0, i, b"sample", raw) for i, (feed, raw) in enumerate(msgs)]
    res = pipe.ingest(incoming, lambda t, p: True)
    # a message is dead-lettered, or accepted with all its samples (one per single message)
    assert res.dead_letters <= len(msgs) and res.accepted >= len(msgs) - res.dead_letters
    counts = res.batch.counts()
    assert sum(n for t, n in counts.items() if t not in ("dead_letters", "actions")) == res.accepted
    dls = [orjson.loads(o.value) for o in res.outgoing if o.topic == topics.dead_letters]
    assert len(dls) == res.dead_letters
    assert all(d["reason"] and d["error_type"] for d in dls)
    assert res.batch.counts().get("dead_letters", 0) == res.dead_letters


_EVENT_TIME_FIELD = {"grid_prices": "published_at", "dr_events": "issued_at", "hashprice": "published_at",
                     "gpu_telemetry": "observed_at"}
_WORKER_NOW = datetime(2025, 1, 1, tzinfo=timezone.utc)


@settings(max_examples=1000, deadline=None)
@given(feed=st.sampled_from(sorted(GOOD)),
       offset_h=st.one_of(st.integers(-24 * 365 * 20, 24 * 365 * 74), st.integers(-3, 3)),
       extra_min=st.sampled_from([0, 15, 30, 45]))
def test_events_stamped_ahead_of_the_workers_clock_are_dead_lettered_and_only_those(feed, offset_h, extra_min):
    """Every timestamp of a valid record moved so that its event time is ``offset`` away from
    the worker's clock (keeping the record valid): more than MAX_FUTURE_S ahead -> a FutureEvent
    dead letter with a reason; anything earlier (a replay of 2005, a sample 45 min early) accepted."""
    from streams.app import MAX_FUTURE_S

    rec = dict(GOOD[feed])
    offset = timedelta(hours=offset_h, minutes=extra_min)
    shift = _WORKER_NOW + offset - datetime.fromisoformat(rec[_EVENT_TIME_FIELD[feed]])
    for k, v in rec.items():
        if isinstance(v, str) and len(v) == 25 and v[10] == "T":
            rec[k] = (datetime.fromisoformat(v) + shift).isoformat()
    stamps = [datetime.fromisoformat(v) for v in rec.values() if isinstance(v, str) and len(v) == 25 and v[10] == "T"]
    assume(all(datetime(2000, 1, 1, tzinfo=timezone.utc) <= s < datetime(2100, 1, 1, tzinfo=timezone.utc) for s in stamps))
    decode(FEEDS[feed].model, orjson.dumps(rec))  # still a valid record
    topics = TopicNames("")
    pipe = Pipeline([load_sample_site()], topics, now=lambda: _WORKER_NOW)
    res = pipe.ingest([Incoming(topics.feed(feed), 0, 0, b"sample", orjson.dumps(rec))], lambda t, p: True)
    if offset > timedelta(seconds=MAX_FUTURE_S):
        assert (res.dead_letters, res.accepted) == (1, 0)
        dl = orjson.loads(res.outgoing[-1].value)
        assert dl["error_type"] == "FutureEvent" and "ahead of this worker's clock" in dl["reason"]
    else:
        assert (res.dead_letters, res.accepted) == (0, 1)
