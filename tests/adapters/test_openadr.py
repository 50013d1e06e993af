"""OpenADR 2.0b VEN against openleadr's own VTN (OpenADRServer) on loopback.

* mapping of OpenADR signals to obligations (pure);
* registration, event, modification, cancellation, opt-in seen by the VTN, a real-power
  report received by the VTN (in-memory publisher);
* end to end: VTN -> VEN -> DR topic -> real wattmix worker -> actions topic: the event
  curtails the site to the firm level, the cancelled one leaves the site running.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timedelta, timezone

import pytest

from adapters.common import KafkaPublisher, MemoryPublisher
from adapters.openadr import DrTerms, UnsupportedEvent, dr_event_from_openadr
from tests.adapters.util import free_port, need

TERMS = DrTerms(firm_service_level_mw=20.0, capacity_mw=100.0, capacity_payment_usd_mw_h=8.0, penalty_usd_mwh=1000.0,
                program_names={"oadr://ercot/ers-30": "ERS-30"})
NOW = datetime(2024, 8, 5, 12, tzinfo=timezone.utc)


def _event(signal_name, signal_type, payloads, *, status="far", mod=0, measurement=None, start=NOW + timedelta(hours=1)):
    sig = {"signal_name": signal_name, "signal_type": signal_type, "signal_id": "s1",
           "intervals": [{"dtstart": start + timedelta(minutes=15 * i), "duration": timedelta(minutes=15),
                          "uid": i, "signal_payload": p} for i, p in enumerate(payloads)]}
    if measurement:
        sig["measurement"] = measurement
    return {"event_descriptor": {"event_id": "ev-1", "modification_number": mod, "market_context": "oadr://ercot/ers-30",
                                 "created_date_time": NOW - timedelta(minutes=5), "event_status": status},
            "active_period": {"dtstart": start, "duration": timedelta(minutes=15 * len(payloads))},
            "event_signals": [sig], "response_required": "always"}


@pytest.mark.parametrize("name,stype,payloads,measurement,kind,mw", [
    ("SIMPLE", "level", [1, 2], None, "firm_service_level", 20.0),
    ("SIMPLE", "level", [0, 0], None, "advisory", 0.0),
    ("LOAD_DISPATCH", "setpoint", [25.0, 18.0], None, "firm_service_level", 18.0),
    ("LOAD_DISPATCH", "setpoint", [15000.0], {"scale": "k"}, "firm_service_level", 15.0),
    ("LOAD_CONTROL", "x-loadControlCapacity", [0.3, 0.2], None, "firm_service_level", 20.0),
    ("LOAD_CONTROL", "x-loadControlSetpoint", [12.5], None, "firm_service_level", 12.5),
    ("ELECTRICITY_PRICE", "price", [250.0], None, "advisory", 0.0),
])
def test_signal_mapping(name, stype, payloads, measurement, kind, mw):
    rec = dr_event_from_openadr(_event(name, stype, payloads, measurement=measurement), site_id="sample",
                                terms=TERMS, received_at=NOW)
    assert (rec.obligation_kind, rec.obligation_mw) == (kind, pytest.approx(mw))
    assert rec.program == "ERS-30" and rec.revision == 0 and rec.status == "scheduled"
    assert rec.start == NOW + timedelta(hours=1) and rec.end == rec.start + timedelta(minutes=15 * len(payloads))
    assert rec.notice_at == NOW - timedelta(minutes=5) and rec.issued_at == NOW


def test_reductions_need_a_baseline_and_cancellation_maps_to_cancelled():
    with pytest.raises(UnsupportedEvent, match="baseline_mw"):
        dr_event_from_openadr(_event("LOAD_DISPATCH", "delta", [-10.0]), site_id="s", terms=TERMS, received_at=NOW)
    terms = DrTerms(baseline_mw=90.0, penalty_usd_mwh=500)
    rec = dr_event_from_openadr(_event("LOAD_CONTROL", "x-loadControlPercentOffset", [20.0]), site_id="s",
                                terms=terms, received_at=NOW)
    assert (rec.obligation_kind, rec.obligation_mw, rec.baseline_mw) == ("reduction", pytest.approx(18.0), 90.0)
    rec = dr_event_from_openadr(_event("SIMPLE", "level", [1], status="cancelled", mod=3), site_id="s", terms=TERMS,
                                received_at=NOW + timedelta(minutes=30))
    assert (rec.status, rec.revision, rec.issued_at) == ("cancelled", 3, NOW + timedelta(minutes=30))
    with pytest.raises(UnsupportedEvent, match="fraction"):
        dr_event_from_openadr(_event("LOAD_CONTROL", "x-loadControlCapacity", [20.0]), site_id="s", terms=TERMS,
                              received_at=NOW)


# ---------------------------------------------------------------------------------------------
# against the real openleadr VTN


class Vtn:
    """openleadr's OpenADRServer on loopback that registers one VEN and records what it hears."""

    def __init__(self, ven_id: str = "ven-dc1"):
        openleadr = need("openleadr", "openadr")
        self.port = free_port()
        self.ven_id = ven_id
        self.url = f"http://127.0.0.1:{self.port}/OpenADR2/Simple/2.0b"
        self.opts: list[tuple[str, str]] = []
        self.reports: list[tuple[str, float]] = []
        self.server = openleadr.OpenADRServer(vtn_id="WATTMIX-TEST-VTN", http_host="127.0.0.1", http_port=self.port,
                                             requested_poll_freq=timedelta(seconds=1), show_fingerprint=False)

        async def on_create_party_registration(registration_info):
            return self.ven_id, "reg-" + self.ven_id

        async def on_register_report(ven_id, resource_id, measurement, unit, scale, min_sampling_interval,
                                     max_sampling_interval):
            async def on_data(data):
                self.reports.extend((resource_id, float(v)) for _, v in data)
            return on_data, timedelta(seconds=1)

        self.server.add_handler("on_create_party_registration", on_create_party_registration)
        self.server.add_handler("on_register_report", on_register_report)

    def add_event(self, event_id, start, minutes, fraction):
        return self.server.add_event(
            ven_id=self.ven_id, event_id=event_id, signal_name="LOAD_CONTROL", signal_type="x-loadControlCapacity",
            intervals=[{"dtstart": start, "duration": timedelta(minutes=minutes), "signal_payload": fraction}],
            market_context="oadr://ercot/ers-30",
            callback=lambda ven_id, event_id, opt_type: self.opts.append((event_id, opt_type)))

    def modify_payload(self, event_id, fraction):
        from openleadr import utils

        ev = utils.find_by(self.server.events[self.ven_id], "event_descriptor.event_id", event_id)
        for sig in ev.event_signals:
            for iv in sig.intervals:
                utils.setmember(iv, "signal_payload", fraction)
        utils.increment_event_modification_number(ev)
        self.server.events_updated[self.ven_id] = True


async def _until(pred, timeout=10.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_ven_against_openleadr_vtn_event_modification_cancellation_opt_and_report():
    from adapters.openadr import OpenAdrVen

    vtn = Vtn()

    async def main():
        await vtn.server.run()
        pub = MemoryPublisher()
        ven = OpenAdrVen(vtn_url=vtn.url, ven_name="dc-1", site_id="sample", publisher=pub, terms=TERMS,
                         load_mw=lambda: 87.5, report_sampling=timedelta(seconds=1), show_fingerprint=False)
        try:
            await ven.start()
            assert ven.registration_id == "reg-ven-dc1"
            start = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(hours=1)
            vtn.add_event("ev-1", start, 60, 0.2)
            await _until(lambda: len(pub.records) >= 1, what="the event on the publisher")
            r0 = pub.records[0]
            assert (r0.event_id, r0.revision, r0.status, r0.obligation_kind, r0.obligation_mw, r0.program) == \
                ("ev-1", 0, "scheduled", "firm_service_level", pytest.approx(20.0), "ERS-30")
            assert (r0.start, r0.end) == (start, start + timedelta(hours=1))
            await _until(lambda: ("ev-1", "optIn") in vtn.opts, what="optIn on the VTN")

            vtn.modify_payload("ev-1", 0.15)
            await _until(lambda: len(pub.records) >= 2, what="the modification")
            assert (pub.records[1].revision, pub.records[1].obligation_mw) == (1, pytest.approx(15.0))

            vtn.server.cancel_event(vtn.ven_id, "ev-1")
            await _until(lambda: len(pub.records) >= 3, what="the cancellation")
            assert (pub.records[2].revision, pub.records[2].status) == (2, "cancelled")

            await _until(lambda: vtn.reports, what="a real-power report on the VTN")
            assert vtn.reports[0] == ("sample", 87.5)
            assert [o[2] for o in ven.opts] == ["optIn"] * 3
        finally:
            await ven.stop()
            await vtn.server.stop()

    asyncio.run(asyncio.wait_for(main(), 30))


# ---------------------------------------------------------------------------------------------
# end to end with the real broker and a real worker


def _align(t: datetime, minutes: int = 15) -> datetime:
    t = t.replace(second=0, microsecond=0)
    return t - timedelta(minutes=t.minute % minutes)


def _feeds(t_from: datetime, t_to: datetime, t0: datetime, after: datetime | None = None):
    """RT prices ($22, cheap: everything runs unless told otherwise) and GPU telemetry whose
    event times lie in [t_from, t_to), optionally only those stamped after ``after``."""
    from tests import factories as f

    out = []
    n = int((t_to - t0) / timedelta(minutes=15)) + 1
    for i in range(-1, n):
        p = f.rt_price(i, 22.0, t0=t0)
        if t_from <= p.published_at < t_to:
            out.append(("grid_prices", p))
    m = int((t_from - t0) / timedelta(minutes=5))
    while t0 + timedelta(minutes=5 * m) < t_to:
        t = t0 + timedelta(minutes=5 * m)
        if t >= t_from:
            for j, cls in enumerate(("inference", "training", "batch")):
                s = f.gpu_sample(f"{cls[:3]}-{j}", cls, gpus=8).model_copy(update={"observed_at": t})
                out.append(("gpu_telemetry", s))
        m += 1
    out = [(n_, r) for n_, r in out if after is None or r.event_time() > after]
    out.sort(key=lambda x: x[1].event_time())
    return out


@pytest.mark.integration
def test_vtn_event_curtails_the_site_and_its_cancellation_releases_it(kafka_bootstrap, fresh_topics, tmp_path):
    from adapters.openadr import OpenAdrVen
    from tests import factories as f
    from tests.streams.harness import read_topic, start_worker, stop_worker, wait_committed
    from wattmix.demo import publish_events

    vtn = Vtn()
    topics = fresh_topics()
    now = datetime.now(timezone.utc)
    t0 = _align(now) - timedelta(hours=1)           # an hour of cheap history before the events
    ev_a = _align(now) + timedelta(minutes=45)      # curtail 45 min from now, for 30 min
    ev_b = ev_a + timedelta(minutes=60)             # cancelled before it starts
    end = ev_b + timedelta(minutes=60)
    db, log, group = tmp_path / "a.duckdb", tmp_path / "worker.log", f"g-{topics.suffix}"

    # the test runs event time ahead of the wall clock (prices and telemetry up to ~3 h from now,
    # to get past both events without waiting for them): a simulation, so the worker's
    # far-future guard (FutureEvent dead letters) is off
    proc = start_worker(kafka_bootstrap, db, group, "." + topics.suffix, log, extra=["--max-future-s", "off"])
    last: dict = {}

    def merge(more):
        for k, v in more.items():
            last[k] = max(v, last.get(k, -1))

    try:
        before = [("hashprice", f.hashprice(54.3, at=t0 - timedelta(minutes=1)))] + _feeds(t0, now, t0)
        merge(asyncio.run(publish_events(kafka_bootstrap, before, topics)))

        async def ven_part():
            await vtn.server.run()
            async with KafkaPublisher(kafka_bootstrap, topics=topics) as pub:
                ven = OpenAdrVen(vtn_url=vtn.url, ven_name="dc-1", site_id="sample", publisher=pub, terms=TERMS,
                                 show_fingerprint=False)
                try:
                    await ven.start()
                    vtn.add_event("ev-a", ev_a, 30, 0.2)        # firm service level 0.2 x 100 MW = 20 MW
                    vtn.add_event("ev-b", ev_b, 30, 0.2)
                    await _until(lambda: {"ev-a", "ev-b"} <= set(ven.published), what="both events published")
                    vtn.server.cancel_event(vtn.ven_id, "ev-b")
                    await _until(lambda: ven.published["ev-b"].status == "cancelled", what="the cancellation")
                    await _until(lambda: {("ev-a", "optIn"), ("ev-b", "optIn")} <= set(vtn.opts), what="opt-ins")
                    return max(r.issued_at for r in ven.published.values())
                finally:
                    await ven.stop()
                    await vtn.server.stop()

        last_issued = asyncio.run(asyncio.wait_for(ven_part(), 30))
        dr = read_topic(kafka_bootstrap, topics["dr_events"])
        assert sorted((d["event_id"], d["revision"], d["status"]) for d in dr) == \
            [("ev-a", 0, "scheduled"), ("ev-b", 0, "scheduled"), ("ev-b", 1, "cancelled")]
        # the DR topic's offsets count too: the worker must have consumed them
        from tests.streams.harness import _read_all

        for r in asyncio.run(_read_all(kafka_bootstrap, topics["dr_events"], idle_ms=500)):
            merge({(r.topic, r.partition): r.offset})

        # move event time past both events
        merge(asyncio.run(publish_events(kafka_bootstrap, _feeds(now, end, t0, after=last_issued), topics)))
        wait_committed(kafka_bootstrap, group, last, proc, log, timeout=60)
        deadline = time.monotonic() + 30
        want = {(ev_b + timedelta(minutes=15 * k)).isoformat() for k in range(2)}
        while time.monotonic() < deadline:
            by_t = {a["interval_start"]: a for a in read_topic(kafka_bootstrap, topics["actions"])}
            if want <= set(by_t):
                break
            time.sleep(0.5)
    finally:
        rc = stop_worker(proc)
    assert rc == 0, log.read_text()[-3000:]

    for k in range(2):   # event A: 30 min at or under 20 MW, mining shed
        a = by_t[(ev_a + timedelta(minutes=15 * k)).isoformat()]
        assert a["dr"]["active_event_ids"] == ["ev-a"], a["reasons"]
        assert a["load_mw"] <= 20.0 + 1e-9 and a["dr"]["shortfall_mw"] == 0
    before_a = by_t[(ev_a - timedelta(minutes=30)).isoformat()]
    assert before_a["load_mw"] > 60 and not before_a["dr"]["active_event_ids"], "cheap power: the site runs flat out"
    assert sum(fl["units_online"] for fl in a["fleets"]) < sum(fl["units_online"] for fl in before_a["fleets"])
    for k in range(2):   # event B was cancelled: no obligation, the site runs
        b = by_t[(ev_b + timedelta(minutes=15 * k)).isoformat()]
        assert b["dr"]["active_event_ids"] == [] and b["load_mw"] > 60, b["reasons"]
