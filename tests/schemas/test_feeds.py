"""The wire contract: good records round-trip, bad ones are rejected with a usable reason."""

from __future__ import annotations

import orjson
import pytest

from schemas.action import DispatchAction
from schemas.codec import MAX_MESSAGE_BYTES, decode, decode_gpu, decode_samples, encode, encode_gpu_columns
from schemas.feeds import (
    DemandResponseEvent,
    GpuSamples,
    GpuTelemetry,
    GpuTelemetryBatch,
    GpuTelemetryColumns,
    GridPrice,
    Hashprice,
)
from schemas.site import load_sample_site
from tests import factories as f
from wattmix.errors import ConfigError, DecodeError

GOOD = [
    (GridPrice, f.rt_price(0, 31.5)),
    (GridPrice, f.da_price(3, 44.0)),
    (Hashprice, f.hashprice()),
    (DemandResponseEvent, f.dr_event(120)),
    (GpuTelemetry, f.gpu_sample("trn-1")),
]


@pytest.mark.parametrize("model,record", GOOD, ids=lambda x: getattr(x, "__name__", ""))
def test_round_trip(model, record):
    raw = encode(record)
    assert orjson.loads(raw)["schema_version"] == 1
    assert decode(model, raw) == record


def _rt(**over) -> bytes:
    d = orjson.loads(encode(f.rt_price(0, 31.5)))
    d.update(over)
    return orjson.dumps({k: v for k, v in d.items() if v is not ...})


@pytest.mark.parametrize(
    "raw,needle",
    [
        (b"{not json", "not valid JSON"),
        (b"", "not valid JSON"),
        (_rt(price_usd_mwh=...), "price_usd_mwh: required field missing"),
        (_rt(interval_start="2024-08-05T00:00:00"), "timezone"),
        (_rt(interval_minutes=-15), "does not divide the hour"),
        (_rt(interval_minutes=7), "does not divide the hour"),
        (_rt(price_usd_mwh="31.5"), "valid number"),
        (_rt(price_usd_mwh=1e9), "less than or equal"),
        (_rt(market="XX"), "market"),
        (_rt(extra_field=1), "extra_field"),
        (_rt(schema_version=2), "schema_version"),
        (_rt(interval_start="2024-08-05T00:07:00+00:00"), "not aligned"),
        (_rt(published_at="2024-08-05T00:05:00+00:00"), "cannot be published before its interval ends"),
    ],
)
def test_bad_price_is_rejected_with_reason(raw, needle):
    with pytest.raises(DecodeError) as exc:
        decode(GridPrice, raw)
    assert needle in exc.value.reason
    assert exc.value.reason.startswith("GridPrice")


def test_non_utc_offsets_are_normalised():
    raw = _rt(interval_start="2024-08-04T19:00:00-05:00", published_at="2024-08-04T19:15:00-05:00")
    p = decode(GridPrice, raw)
    assert p.interval_start == f.T0 and p.interval_start.utcoffset().total_seconds() == 0


def test_oversized_message_rejected_before_parsing():
    with pytest.raises(DecodeError, match="exceeds"):
        decode(GridPrice, b" " * (MAX_MESSAGE_BYTES + 1))


def test_null_message_rejected():
    with pytest.raises(DecodeError, match="empty message"):
        decode(GridPrice, None)


def test_dr_event_rules():
    with pytest.raises(ValueError, match="ends"):
        f.dr_event(120, minutes=0)
    with pytest.raises(ValueError, match="baseline_mw"):
        f.dr_event(120, kind="reduction")
    ok = f.dr_event(120, kind="reduction", baseline_mw=90)
    assert ok.obligation_kind == "reduction"


def test_gpu_telemetry_bounds():
    raw = orjson.loads(encode(f.gpu_sample("j")))
    for field, value in [("utilization", 1.5), ("gpus", -1), ("power_kw", -3.0), ("gpu_class", "mining")]:
        bad = dict(raw, **{field: value})
        with pytest.raises(DecodeError, match=field):
            decode(GpuTelemetry, orjson.dumps(bad))


# -- GPU telemetry batches --------------------------------------------------------------------

def _batch_samples() -> list[GpuTelemetry]:
    return [f.gpu_sample(f"j{i}", ("inference", "training", "batch")[i % 3], minute=i % 2, power_kw=1.5 * i)
            for i in range(5)]


@pytest.mark.parametrize("form", ["rows", "columns"])
def test_gpu_batch_forms_decode_to_the_same_samples(form):
    samples = _batch_samples()
    raw = (encode(GpuTelemetryBatch(site_id="sample", samples=samples)) if form == "rows"
           else encode_gpu_columns(samples))
    got = decode_gpu(raw)
    assert isinstance(got, GpuSamples) and got.site_id == "sample"
    assert got.records() == samples
    assert decode_samples(GpuTelemetry, GpuTelemetryBatch, raw) == samples
    if form == "columns":  # the same message through its pydantic model
        assert decode(GpuTelemetryColumns, raw).columns.job_id == [g.job_id for g in samples]
        assert len(raw) < len(encode(GpuTelemetryBatch(site_id="sample", samples=samples))) / 2


@pytest.mark.parametrize("form, field, value, needle", [
    ("rows", "utilization", 1.9, "samples.3.utilization: Input should be less than or equal to 1 (got 1.9)"),
    ("rows", "observed_at", "2024-08-05T00:00:00", "samples.3.observed_at: Input should have timezone info"),
    ("rows", "gpus", True, "samples.3.gpus: Input should be a valid integer (got True)"),
    ("columns", "utilization", 1.9, "columns.utilization.3: Input should be less than or equal to 1 (got 1.9)"),
    ("columns", "state", "mining", "columns.state.3: Input should be"),
    ("columns", "power_kw", -1, "columns.power_kw.3: Input should be greater than or equal to 0"),
])
def test_one_bad_sample_rejects_the_batch_naming_its_index_and_field(form, field, value, needle):
    doc = orjson.loads(encode(GpuTelemetryBatch(site_id="sample", samples=_batch_samples())) if form == "rows"
                       else encode_gpu_columns(_batch_samples()))
    if form == "rows":
        doc["samples"][3][field] = value
    else:
        doc["columns"][field][3] = value
    with pytest.raises(DecodeError) as exc:
        decode_gpu(orjson.dumps(doc))
    assert needle in exc.value.reason
    assert exc.value.reason.startswith("GpuTelemetryBatch: " if form == "rows" else "GpuTelemetryColumns: ")


def test_gpu_columns_of_different_lengths_are_rejected():
    doc = orjson.loads(encode_gpu_columns(_batch_samples()))
    doc["columns"]["gpus"].pop()
    with pytest.raises(DecodeError, match="column gpus has 4 values, job_id has 5"):
        decode_gpu(orjson.dumps(doc))


def test_a_single_sample_whose_text_names_a_batch_key_is_one_sample():
    # "samples"/"columns" as a job id: the text matches the batch test, the JSON is one sample
    for job in ("samples", "columns"):
        g = f.gpu_sample(job)
        assert decode_gpu(encode(g)) == g


def test_identities_are_stable_keys():
    assert f.rt_price(0, 1).identity() == f.rt_price(0, 2).identity()  # a correction has the same identity
    assert f.dr_event(120, revision=0).identity() != f.dr_event(120, revision=1).identity()


def test_sample_site_matches_design():
    s = load_sample_site()
    assert s.interconnect_mw == 100 and s.hedge.quantity_mw == 90 and s.hedge.price_usd_mwh == 35
    by = {fl.name: fl for fl in s.miner_fleets}
    assert by["s19jpro"].j_per_th == pytest.approx(29.5)
    assert by["s21"].j_per_th == pytest.approx(17.5)
    # DESIGN.md: at $54.3/PH/day an S21 breaks even near $129/MWh (fee-less), S19j Pro near $77
    assert by["s21"].breakeven_it_usd_mwh(54.3) / 0.98 == pytest.approx(129.3, abs=0.1)
    assert by["s19jpro"].breakeven_it_usd_mwh(54.3) / 0.98 == pytest.approx(76.7, abs=0.1)
    assert s.max_mining_mw == pytest.approx(83.21, abs=0.01)
    assert s.max_gpu_mw == pytest.approx(13.58, abs=0.01)


def test_bad_site_file(tmp_path):
    p = tmp_path / "s.toml"
    p.write_text('site_id = "x"\nsettlement_point = "HB"\ninterconnect_mw = -1\n')
    with pytest.raises(ConfigError, match="interconnect_mw"):
        from schemas.site import load_site

        load_site(p)


def test_action_schema_has_units_and_key():
    fields = DispatchAction.model_fields
    assert {"load_mw", "sold_back_mw", "price_known_usd_mwh", "interval_start", "schema_version"} <= set(fields)
