"""OpenADR 2.0b VEN: demand-response events from a utility's or aggregator's VTN onto Kafka.

Extra: ``pip install 'wattmix[openadr]'`` (`openleadr <https://openleadr.org>`_, the LF Energy
OpenADR 2.0b implementation).

:class:`OpenAdrVen` registers with a VTN (``oadrQueryRegistration`` +
``oadrCreatePartyRegistration``), polls it (``oadrPoll``, at the frequency the VTN asks for),
and for every event it receives -- new, modified or cancelled -- publishes a
:class:`~schemas.feeds.DemandResponseEvent` on the DR topic *before* it answers the VTN with
``oadrCreatedEvent`` (optIn / optOut). It also offers a ``TELEMETRY_USAGE`` report of the
site's real power (MW) that the VTN may request (``oadrRegisterReport`` / ``oadrUpdateReport``).

Event -> record (:func:`dr_event_from_openadr`):

* ``event_id`` = the OpenADR ``eventID``; ``revision`` = its ``modificationNumber`` (every
  modification, cancellation included, increments it, and a later revision replaces the
  earlier one downstream);
* ``status``: ``far``/``near`` -> ``scheduled``, ``active`` -> ``active``, ``completed`` ->
  ``completed``, ``cancelled`` -> ``cancelled`` (the engine then drops the obligation);
* ``start``/``end`` = the event's ``activePeriod`` (``dtstart`` + ``duration``; a zero duration,
  "until further notice" in OpenADR, is capped at ``max_open_ended``);
* ``notice_at`` = the event's ``createdDateTime`` (never after ``start``); ``issued_at`` (the
  record's event time) = when the VEN received this revision, by the VEN's clock;
* ``program`` = the ``marketContext`` looked up in ``program_names``, else its last path segment.

Obligation from the signals (the strictest over all supported signals and intervals):

===================  ===========================  ================================================
signalName           signalType                   obligation
===================  ===========================  ================================================
SIMPLE / simple      level (0..3)                 level 0: none (advisory); level n >= 1: firm
                                                  service level ``simple_levels_mw[n]`` (default:
                                                  ``firm_service_level_mw`` for every level)
LOAD_DISPATCH        setpoint                     firm service level = payload (in MW, see units)
LOAD_DISPATCH        delta                        reduction of ``abs(payload)`` MW vs ``baseline_mw``
LOAD_CONTROL         x-loadControlSetpoint        firm service level = payload (MW)
LOAD_CONTROL         x-loadControlCapacity        firm service level = payload x ``capacity_mw``
                                                  (the payload is a fraction 0..1 of capacity)
LOAD_CONTROL         x-loadControlLevelOffset     reduction of ``abs(payload)`` MW vs ``baseline_mw``
LOAD_CONTROL         x-loadControlPercentOffset   reduction of ``abs(payload)`` % of ``baseline_mw``
anything else        (prices, bids...)            advisory, obligation 0
===================  ===========================  ================================================

Units: a payload in power is taken in MW unless the signal carries an ``itemBase``
(``measurement``) with a scale: ``none`` (W), ``k`` (kW), ``M`` (MW), ``G`` (GW).
If both firm and reduction obligations appear, a reduction is turned into a firm level
(``baseline_mw - R``) and the lowest firm level wins.

Opting: by default the VEN opts in to every event it can map (``optIn``) and out of events
whose obligation it cannot interpret (a reduction without a configured baseline) or that
``opt_policy(record)`` refuses. An event it opts out of is not published (the site has no
obligation); if an earlier revision had been published, a ``cancelled`` revision is.
If publishing fails, the handler raises and openleadr answers ``optOut``: the VEN never
accepts an obligation the dispatcher did not hear about.

Usage::

    async with KafkaPublisher(bootstrap) as pub:
        ven = OpenAdrVen(vtn_url="https://vtn.example/OpenADR2/Simple/2.0b", ven_name="dc-1",
                         site_id="sample", publisher=pub, terms=DrTerms(firm_service_level_mw=20,
                         capacity_mw=100, capacity_payment_usd_mw_h=8, penalty_usd_mwh=1000),
                         load_mw=lambda: latest_load_mw)
        await ven.start()
        ...
        await ven.stop()
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from schemas.feeds import DemandResponseEvent
from schemas.topics import DR_EVENTS

from adapters.common import AdapterError, Publisher, require, utcnow

log = logging.getLogger("wattmix.adapters.openadr")

_STATUS = {"far": "scheduled", "near": "scheduled", "active": "active", "completed": "completed",
           "cancelled": "cancelled", "none": "scheduled"}
_SCALE_TO_MW = {"none": 1e-6, "k": 1e-3, "M": 1.0, "G": 1e3}


@dataclass(frozen=True)
class DrTerms:
    """How this site's OpenADR events translate into obligations and money."""

    firm_service_level_mw: float | None = None     # SIMPLE levels without an explicit table
    simple_levels_mw: Mapping[int, float] = field(default_factory=dict)
    capacity_mw: float | None = None               # base of x-loadControlCapacity fractions
    baseline_mw: float | None = None               # base of delta / offset signals
    capacity_payment_usd_mw_h: float = 0.0
    energy_payment_usd_mwh: float = 0.0
    penalty_usd_mwh: float = 0.0
    program_names: Mapping[str, str] = field(default_factory=dict)  # marketContext -> program
    max_open_ended: timedelta = timedelta(hours=4)


class UnsupportedEvent(AdapterError):
    """An event whose obligation cannot be computed with the configured terms."""


def _get(obj: Any, name: str, default: Any = None) -> Any:
    if isinstance(obj, Mapping):
        return obj.get(name, default)
    return getattr(obj, name, default)


def _aware(t: datetime) -> datetime:
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


def _to_mw(signal: Mapping, payload: float) -> float:
    m = _get(signal, "measurement")
    scale = _get(m, "scale") if m else None
    return float(payload) * _SCALE_TO_MW.get(scale or "M", 1.0)


def _signals(event: Mapping) -> list[Mapping]:
    s = event.get("event_signals") or []
    if isinstance(s, Mapping):  # some openleadr versions nest the list
        s = s.get("event_signals") or []
    return list(s)


def _obligations(event: Mapping, terms: DrTerms) -> tuple[list[float], list[float]]:
    """(firm levels, reductions) in MW over every supported signal interval."""
    firm: list[float] = []
    red: list[float] = []
    for sig in _signals(event):
        name = str(_get(sig, "signal_name", "")).upper()
        stype = _get(sig, "signal_type", "")
        for iv in _get(sig, "intervals", []) or []:
            p = _get(iv, "signal_payload")
            if p is None:
                continue
            p = float(p)
            if name == "SIMPLE":
                level = int(round(p))
                if level <= 0:
                    continue
                f = terms.simple_levels_mw.get(level, terms.firm_service_level_mw)
                if f is None:
                    raise UnsupportedEvent("SIMPLE signal but no firm_service_level_mw / simple_levels_mw configured")
                firm.append(float(f))
            elif (name, stype) in (("LOAD_DISPATCH", "setpoint"), ("LOAD_CONTROL", "x-loadControlSetpoint")):
                firm.append(max(_to_mw(sig, p), 0.0))
            elif (name, stype) == ("LOAD_CONTROL", "x-loadControlCapacity"):
                if terms.capacity_mw is None:
                    raise UnsupportedEvent("x-loadControlCapacity signal but no capacity_mw configured")
                if not 0.0 <= p <= 1.0:
                    raise UnsupportedEvent(f"x-loadControlCapacity payload {p} is not a fraction 0..1")
                firm.append(p * terms.capacity_mw)
            elif (name, stype) in (("LOAD_DISPATCH", "delta"), ("LOAD_CONTROL", "x-loadControlLevelOffset")):
                red.append(abs(_to_mw(sig, p)))
            elif (name, stype) == ("LOAD_CONTROL", "x-loadControlPercentOffset"):
                if terms.baseline_mw is None:
                    raise UnsupportedEvent("x-loadControlPercentOffset signal but no baseline_mw configured")
                red.append(abs(p) / 100.0 * terms.baseline_mw)
    if red and terms.baseline_mw is None:
        raise UnsupportedEvent("reduction signal (delta / level offset) but no baseline_mw configured")
    return firm, red


def program_name(market_context: str | None, terms: DrTerms) -> str:
    mc = market_context or "openadr"
    if mc in terms.program_names:
        return terms.program_names[mc]
    seg = mc.rstrip("/").rsplit("/", 1)[-1] or mc
    return seg[:64] or "openadr"


def dr_event_from_openadr(event: Mapping, *, site_id: str, terms: DrTerms, received_at: datetime) -> DemandResponseEvent:
    """Map one openleadr event dict (as handed to ``on_event``) to a DemandResponseEvent.

    Raises :class:`UnsupportedEvent` when the obligation cannot be computed.
    """
    desc = event["event_descriptor"]
    ap = event.get("active_period") or {}
    start = _aware(_get(ap, "dtstart"))
    duration: timedelta = _get(ap, "duration") or timedelta(0)
    end = start + (duration if duration > timedelta(0) else terms.max_open_ended)
    status = _STATUS.get(str(desc.get("event_status", "far")), "scheduled")
    revision = int(desc.get("modification_number") or 0)
    created = desc.get("created_date_time")
    notice_at = min(_aware(created), start) if created else min(received_at, start)
    issued_at = max(received_at, notice_at)

    firm, red = _obligations(event, terms)
    if firm and red:
        firm = firm + [max(terms.baseline_mw - r, 0.0) for r in red]  # type: ignore[operator]
        red = []
    if firm:
        kind, mw, baseline = "firm_service_level", min(firm), None
    elif red:
        kind, mw, baseline = "reduction", max(red), terms.baseline_mw
    else:
        kind, mw, baseline = "advisory", 0.0, None

    return DemandResponseEvent(
        site_id=site_id, event_id=str(desc["event_id"])[:128],
        program=program_name(desc.get("market_context"), terms), revision=revision, status=status,
        notice_at=notice_at, start=start, end=end, obligation_kind=kind, obligation_mw=mw, baseline_mw=baseline,
        capacity_payment_usd_mw_h=terms.capacity_payment_usd_mw_h if kind != "advisory" else 0.0,
        energy_payment_usd_mwh=terms.energy_payment_usd_mwh if kind != "advisory" else 0.0,
        penalty_usd_mwh=terms.penalty_usd_mwh if kind != "advisory" else 0.0,
        issued_at=issued_at)


class OpenAdrVen:
    """An OpenADR 2.0b VEN (openleadr ``OpenADRClient``) that publishes DR events to Kafka.

    ``publisher``: a :class:`~adapters.common.Publisher` (``KafkaPublisher`` in production).
    ``load_mw``: optional callable (or coroutine function) returning the site's current load in
    MW; when given, the VEN offers a TELEMETRY_USAGE real-power report the VTN can request.
    ``opt_policy(record) -> bool``: optional veto (e.g. refuse a firm level below the site's
    must-run load). ``clock``: the time source for ``issued_at`` (tests inject one).
    ``client_kwargs`` go to ``OpenADRClient`` (certificates, ``vtn_fingerprint``, ``ven_id``...).
    """

    def __init__(self, *, vtn_url: str, ven_name: str, site_id: str, publisher: Publisher, terms: DrTerms,
                 load_mw: Callable[[], float | Awaitable[float]] | None = None,
                 opt_policy: Callable[[DemandResponseEvent], bool] | None = None,
                 clock: Callable[[], datetime] = utcnow, report_sampling: timedelta = timedelta(seconds=10),
                 **client_kwargs: Any) -> None:
        openleadr = require("openleadr", "openadr", "the OpenADR VEN")
        self.site_id = site_id
        self.publisher = publisher
        self.terms = terms
        self.opt_policy = opt_policy
        self.clock = clock
        self.published: dict[str, DemandResponseEvent] = {}   # event_id -> last published revision
        self.opts: list[tuple[str, int, str]] = []            # (event_id, revision, optIn/optOut)
        self.client = openleadr.OpenADRClient(ven_name=ven_name, vtn_url=vtn_url, **client_kwargs)
        self.client.on_event = self._on_event
        self.client.on_update_event = self._on_event
        if load_mw is not None:
            self.client.add_report(callback=load_mw, resource_id=site_id, measurement="real_power",
                                   unit="W", scale="M", sampling_rate=report_sampling,
                                   report_duration=timedelta(hours=1))

    @property
    def registration_id(self) -> str | None:
        return self.client.registration_id

    async def start(self) -> None:
        """Register with the VTN, sync its events and start polling."""
        await self.client.run()
        if not self.client.registration_id:
            raise AdapterError(f"the VTN at {self.client.vtn_url} did not register this VEN")

    async def stop(self) -> None:
        await self.client.stop()

    async def _on_event(self, event: Mapping) -> str:
        desc = event["event_descriptor"]
        eid = str(desc["event_id"])
        try:
            rec = dr_event_from_openadr(event, site_id=self.site_id, terms=self.terms, received_at=self.clock())
        except UnsupportedEvent as exc:
            log.warning("OpenADR event %s: %s; opting out", eid, exc)
            return await self._opt_out(eid, int(desc.get("modification_number") or 0))
        if rec.status != "cancelled" and self.opt_policy is not None and not self.opt_policy(rec):
            log.info("OpenADR event %s rev %d refused by the opt policy", eid, rec.revision)
            return await self._opt_out(eid, rec.revision)
        await self.publisher.publish(rec, DR_EVENTS)   # raises -> openleadr opts out
        self.published[eid] = rec
        self.opts.append((eid, rec.revision, "optIn"))
        log.info("OpenADR event %s rev %d %s %s %.1f MW %s..%s published", eid, rec.revision, rec.status,
                 rec.obligation_kind, rec.obligation_mw, rec.start.isoformat(), rec.end.isoformat())
        return "optIn"

    async def _opt_out(self, eid: str, revision: int) -> str:
        prev = self.published.pop(eid, None)
        if prev is not None and prev.status != "cancelled":
            now = max(self.clock(), prev.notice_at)
            withdrawn = prev.model_copy(update={"revision": max(revision, prev.revision + 1), "status": "cancelled",
                                                "issued_at": now})
            await self.publisher.publish(DemandResponseEvent.model_validate(withdrawn.model_dump()), DR_EVENTS)
        self.opts.append((eid, revision, "optOut"))
        return "optOut"
