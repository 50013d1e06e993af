"""Property-based fuzzing of every input topic's decoder and of the worker's ingest step.

Whatever bytes arrive, decoding either yields a valid record or raises DecodeError with a
one-line reason; the pipeline turns every rejected message into a dead letter (topic + table
row) carrying that reason and the original bytes, and never raises.
"""

from __future__ import annotations

import math

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.codec import decode, encode
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
any_message = st.one_of(mutated(), raw_garbage)


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
    assert res.accepted + res.dead_letters == len(msgs)
    dls = [orjson.loads(o.value) for o in res.outgoing if o.topic == topics.dead_letters]
    assert len(dls) == res.dead_letters
    assert all(d["reason"] and d["error_type"] for d in dls)
    assert res.batch.counts().get("dead_letters", 0) == res.dead_letters
