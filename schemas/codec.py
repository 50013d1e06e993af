"""orjson on the wire; pydantic only at the edge (decode once, then plain objects).

Measured here: orjson 1.5 us and pydantic ``model_validate_json`` 3.4 us per 200-byte event,
against 17.7 us for ``faust.Record``, so Faust topics carry raw bytes and we decode here.
"""

from __future__ import annotations

import re
import typing
from collections.abc import Sequence
from datetime import datetime
from itertools import repeat
from operator import itemgetter
from typing import Any, TypeVar

import annotated_types
import numpy as np
import orjson
from pydantic import AfterValidator, ConfigDict, TypeAdapter, ValidationError

from schemas.base import UtcDatetime, WireModel
from schemas.feeds import (
    GPU_SAMPLE_FIELDS,
    MAX_BATCH_SAMPLES,
    GpuSamples,
    GpuTelemetry,
    GpuTelemetryBatch,
    GpuTelemetryColumns,
    epoch_us,
)
from wattmix.errors import DecodeError

M = TypeVar("M", bound=WireModel)

#: Messages over this size are rejected before parsing (a GPU exporter batch is ~100 kB).
MAX_MESSAGE_BYTES = 1_000_000


def encode(record: WireModel) -> bytes:
    return orjson.dumps(record.model_dump(mode="python"))


def encode_gpu_columns(samples: Sequence[GpuTelemetry]) -> bytes:
    """Samples of one site as one :class:`~schemas.feeds.GpuTelemetryColumns` message."""
    if not samples:
        raise ValueError("a GpuTelemetryColumns message needs at least one sample")
    columns = {name: [getattr(g, name) for g in samples] for name in GPU_SAMPLE_FIELDS}
    return orjson.dumps({"schema_version": 1, "site_id": samples[0].site_id, "columns": columns})


def _printable(text: str) -> str:
    """Escape control characters: a reason is one line, whatever the input's field names."""
    return text if text.isprintable() else "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def explain(exc: ValidationError) -> str:
    """One line per problem: ``field: message (got value)``; first 5 problems."""
    parts = []
    for err in exc.errors(include_url=False)[:5]:
        loc = ".".join(str(x) for x in err.get("loc", ())) or "<record>"
        got = err.get("input")
        got_s = repr(got)
        if len(got_s) > 60:
            got_s = got_s[:57] + "..."
        if err.get("type") == "missing":
            parts.append(f"{loc}: required field missing")
        elif isinstance(got, dict) and loc == "<record>":
            parts.append(f"{err['msg']}")
        else:
            parts.append(f"{loc}: {err['msg']} (got {got_s})")
    more = exc.error_count() - len(parts)
    if more > 0:
        parts.append(f"... and {more} more")
    return _printable("; ".join(parts))


def _check_size(model: type[WireModel], raw: bytes | bytearray | memoryview | str | None) -> None:
    if raw is None:
        raise DecodeError(f"{model.__name__}: empty message (null value)")
    if len(raw) > MAX_MESSAGE_BYTES:
        raise DecodeError(f"{model.__name__}: message of {len(raw):,} bytes exceeds {MAX_MESSAGE_BYTES:,}")


def decode(model: type[M], raw: bytes | bytearray | memoryview | str | None) -> M:
    """Validate raw JSON bytes into ``model`` or raise :class:`DecodeError` with a reason."""
    _check_size(model, raw)
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        if exc.errors()[0].get("type") == "json_invalid":
            raise DecodeError(f"{model.__name__}: not valid JSON: {_printable(exc.errors()[0]['msg'])}") from None
        raise DecodeError(f"{model.__name__}: {explain(exc)}") from None


def decode_samples(model: type[M], batch_model: type[WireModel] | None, raw: bytes | bytearray | memoryview | str | None) -> list[M]:
    """A feed message that is either one ``model`` record or, on a feed with a
    ``batch_model`` (GPU telemetry), a batch of them in any form :func:`decode_gpu` takes.
    Returns the records in message order; raises :class:`DecodeError` with a reason, as
    :func:`decode`."""
    if batch_model is None:
        return [decode(model, raw)]
    got = decode_gpu(raw)
    return got.records() if isinstance(got, GpuSamples) else [got]  # type: ignore[return-value]


def is_batch(raw: bytes | bytearray | memoryview | str | None) -> bool:
    """Whether a GPU telemetry message may be a batch: its text has a ``"samples"`` or
    ``"columns"`` string (a key of the batch forms; :func:`decode_gpu` confirms it)."""
    if raw is None:
        return False
    if isinstance(raw, str):
        return '"samples"' in raw or '"columns"' in raw
    return b'"samples"' in raw or b'"columns"' in raw


# -- GPU telemetry batches as columns ---------------------------------------------------------
# pydantic builds a model per sample: ~4 us per sample of a 1,000-sample GpuTelemetryBatch.
# Here: orjson, then checks over whole columns (C-level passes: map/set/min/max), one pydantic
# parse per distinct timestamp string. The rules are read from GpuTelemetry's own field
# definitions, and whatever these checks cannot prove valid goes to the pydantic model, so
# both accept and reject the same messages with the same reasons (tests/schemas/test_fuzz.py).

def _field_rule(model: type[WireModel], name: str, rule: type, attr: str) -> Any:
    (value,) = [getattr(m, attr) for m in model.model_fields[name].metadata if isinstance(m, rule)]
    return value


def _bounds(name: str) -> tuple[float, float]:
    return (_field_rule(GpuTelemetry, name, annotated_types.Ge, "ge"),
            _field_rule(GpuTelemetry, name, annotated_types.Le, "le"))


def _lengths(model: type[WireModel], name: str) -> tuple[int, int]:
    return (_field_rule(model, name, annotated_types.MinLen, "min_length"),
            _field_rule(model, name, annotated_types.MaxLen, "max_length"))


_SAMPLE_KEYS = ("site_id",) + GPU_SAMPLE_FIELDS         # required keys of a row-form sample
_SAMPLE_GETTERS = tuple(map(itemgetter, _SAMPLE_KEYS))
_GPU_CLASSES = frozenset(typing.get_args(GpuTelemetry.model_fields["gpu_class"].annotation))
_GPU_STATES = frozenset(typing.get_args(GpuTelemetry.model_fields["state"].annotation))
_SITE_LEN = _lengths(GpuTelemetryBatch, "site_id")
_JOB_LEN = _lengths(GpuTelemetry, "job_id")
_GPUS = _bounds("gpus")
_POWER = _bounds("power_kw")
_UTIL = _bounds("utilization")
_NUMBER = {int, float}
#: the observed_at field's own validator (strict, aware, normalised to UTC), run once per
#: distinct timestamp string that is not in the plain form below (a scrape stamps all its
#: samples with one instant)
_UTC_DATETIME = TypeAdapter(UtcDatetime, config=ConfigDict(strict=True))
#: RFC 3339 with seconds, <= 6 fraction digits and an explicit offset of at most 23:59: for
#: these strings datetime.fromisoformat (~0.3 us) gives the instant pydantic gives (~3 us);
#: both refuse an invalid date or time (Feb 30, hour 24, second 60), which then goes to
#: pydantic. The offset is bounded here: fromisoformat reads "-00:60" as one hour, pydantic
#: refuses it (found by tests/schemas/test_fuzz.py)
(_to_utc,) = [m.func for m in typing.get_args(UtcDatetime)[1:] if isinstance(m, AfterValidator)]
_PLAIN_INSTANT = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,6})?"
                            r"(Z|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])")
_instants: dict[str, tuple[datetime, int]] = {}


def _instant(text: str) -> tuple[datetime, int] | None:
    """``(UTC datetime, epoch us)`` of a valid observed_at string, else None."""
    hit = _instants.get(text)
    if hit is None:
        try:
            t = _to_utc(datetime.fromisoformat(text)) if _PLAIN_INSTANT.fullmatch(text) else None
        except ValueError:
            t = None
        if t is None:
            try:
                t = _UTC_DATETIME.validate_json(orjson.dumps(text))
            except ValidationError:
                return None
        if len(_instants) >= 10_000:
            _instants.clear()
        hit = _instants[text] = (t, epoch_us(t))
    return hit


def _floats(col: list, lo: float, hi: float) -> list | None:
    """``col`` if every value is a JSON number in ``[lo, hi]``, ints made floats; else None.
    (orjson refuses NaN, Infinity and numbers overflowing a double, so all are finite.)"""
    kinds = set(map(type, col))
    if not kinds <= _NUMBER or not (lo <= min(col) and max(col) <= hi):
        return None
    return col if kinds == {float} else list(map(float, col))


def _proven(site: Any, n: int, jobs: list, classes: list, gpus: list, power: list, util: list, states: list,
            stamps: list) -> GpuSamples | None:
    """The samples as :class:`GpuSamples` if every column provably satisfies GpuTelemetry's
    field rules, else None. Columns are lists of JSON values; ``n`` their common length."""
    if type(site) is not str or not _SITE_LEN[0] <= len(site) <= _SITE_LEN[1] or not 1 <= n <= MAX_BATCH_SAMPLES:
        return None
    try:  # set() of an unhashable JSON value (list, object) raises TypeError
        if (set(map(type, jobs)) != {str} or set(map(type, gpus)) != {int} or set(map(type, stamps)) != {str}
                or not set(classes) <= _GPU_CLASSES or not set(states) <= _GPU_STATES):
            return None
    except TypeError:
        return None
    lengths = list(map(len, jobs))
    if min(lengths) < _JOB_LEN[0] or max(lengths) > _JOB_LEN[1] or min(gpus) < _GPUS[0] or max(gpus) > _GPUS[1]:
        return None
    power, util = _floats(power, *_POWER), _floats(util, *_UTIL)
    if power is None or util is None:
        return None
    if stamps.count(stamps[0]) == n:  # a scrape: one instant for every sample
        hit = _instant(stamps[0])
        if hit is None:
            return None
        return GpuSamples(site_id=site, job_id=jobs, gpu_class=classes, gpus=gpus, power_kw=power, utilization=util,
                          state=states, observed_at=[hit[0]] * n, observed_us=np.full(n, hit[1], dtype=np.int64),
                          instant=hit[0])
    when: dict[str, datetime] = {}
    us: dict[str, int] = {}
    for text in set(stamps):
        hit = _instant(text)
        if hit is None:
            return None
        when[text], us[text] = hit
    return GpuSamples(site_id=site, job_id=jobs, gpu_class=classes, gpus=gpus, power_kw=power, utilization=util,
                      state=states, observed_at=list(map(when.__getitem__, stamps)),
                      observed_us=np.fromiter(map(us.__getitem__, stamps), dtype=np.int64, count=n))


def _version_ok(doc: dict) -> bool:
    v = doc.get("schema_version", 1)
    return type(v) is int and v == 1


def _rows_proven(doc: Any) -> GpuSamples | None:
    """A row-form batch (:class:`GpuTelemetryBatch`) checked as columns, or None."""
    if type(doc) is not dict or len(doc) != 2 + ("schema_version" in doc) or not _version_ok(doc):
        return None
    site, samples = doc.get("site_id"), doc.get("samples")
    if type(samples) is not list or not samples or set(map(type, samples)) != {dict}:
        return None
    n = len(samples)
    try:  # a column per field, one C-level pass each; KeyError: a required field is missing
        sites, *cols = (list(map(g, samples)) for g in _SAMPLE_GETTERS)
    except KeyError:
        return None
    # no other key than the optional schema_version, which must be 1 where given
    versions = list(map(dict.get, samples, repeat("schema_version", n), repeat(1, n)))
    with_version = sum(map(dict.__contains__, samples, repeat("schema_version", n)))
    if (sum(map(len, samples)) != len(_SAMPLE_KEYS) * n + with_version or set(map(type, versions)) != {int}
            or set(versions) != {1} or sites.count(site) != n):
        return None
    return _proven(site, n, *cols)


def _columns_proven(doc: dict) -> GpuSamples | None:
    """A column-form batch (:class:`GpuTelemetryColumns`) checked as columns, or None."""
    if len(doc) != 2 + ("schema_version" in doc) or not _version_ok(doc):
        return None
    columns = doc.get("columns")
    if type(columns) is not dict or len(columns) != len(GPU_SAMPLE_FIELDS):
        return None
    cols = [columns.get(name) for name in GPU_SAMPLE_FIELDS]
    if set(map(type, cols)) != {list} or len(set(map(len, cols))) != 1:
        return None
    return _proven(doc.get("site_id"), len(cols[0]), *cols)


def _by_model(model: type[GpuTelemetryBatch] | type[GpuTelemetryColumns], raw: Any) -> GpuSamples:
    """The pydantic model decides (and words the reason of) what the column checks did not prove."""
    b = decode(model, raw)
    if isinstance(b, GpuTelemetryBatch):
        return GpuSamples.of_records(b.site_id, b.samples)
    c = b.columns
    return GpuSamples(site_id=b.site_id, job_id=c.job_id, gpu_class=c.gpu_class, gpus=c.gpus, power_kw=c.power_kw,
                      utilization=c.utilization, state=c.state, observed_at=c.observed_at,
                      observed_us=[epoch_us(t) for t in c.observed_at])


def decode_gpu(raw: bytes | bytearray | memoryview | str | None) -> GpuTelemetry | GpuSamples:
    """A GPU telemetry message in any of its forms: one :class:`GpuTelemetry` (returned as the
    record), a :class:`GpuTelemetryBatch` or a :class:`GpuTelemetryColumns` (returned as
    :class:`GpuSamples`). Raises :class:`DecodeError` with the reason :func:`decode` gives for
    the message's form."""
    if not is_batch(raw):
        return decode(GpuTelemetry, raw)
    _check_size(GpuTelemetryBatch, raw)
    try:
        doc = orjson.loads(raw)  # type: ignore[arg-type]
    except orjson.JSONDecodeError:
        doc = None
    if type(doc) is dict and "columns" in doc:
        got = _columns_proven(doc)
        return got if got is not None else _by_model(GpuTelemetryColumns, raw)
    if type(doc) is dict and "samples" not in doc:  # one sample with "samples" in a value's text
        return decode(GpuTelemetry, raw)
    got = _rows_proven(doc)
    return got if got is not None else _by_model(GpuTelemetryBatch, raw)
