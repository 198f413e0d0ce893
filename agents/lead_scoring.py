"""How a company in a stream is scored: the seed-004 formula and its four sub-scores.

    quality = criteria_match x 2.0 + data_completeness x 1.0
              + enrichment_quality x 1.0 + buying_signal_score x 1.0

Each sub-score lies in 0..1, so the weighted sum lies in 0..5 already: "normalised to
0-5" is raw / 5 x 5, i.e. the raw value itself, clamped to 0..5 and rounded to two
decimals (half up). Sub-scores are rounded to four decimals *before* the sum, so the
stored columns reproduce the stored score exactly.

**criteria_match** - the fraction of the goal's criteria the company meets. The
criteria are those the goal states, among: industry (one of its SIC codes is in the
industry set: 1, else 0), location (registered office matches: 1 or 0), employee
range (estimated headcount within min..max: 1; outside: 0; unknown: 0.5, "cannot
tell"). A goal with no criteria is met by every company (1). A company whose status
is not ``Active`` (dissolved, in liquidation, being struck off) meets none (0): it is
no longer an opportunity.

**data_completeness** - the fraction of ten register fields present (non-blank):
name, address line 1, post town, postcode, country, at least one SIC code,
incorporation date, a filed accounts category (not "NO ACCOUNTS FILED" / "ACCOUNTS
TYPE NOT AVAILABLE"), last accounts date, last confirmation statement date.

**enrichment_quality** - 0.2 for each of five indicators: the company or the stream
item is ``enriched``; it has a website; a non-empty tech stack; officers_count > 0;
social_score > 0. Presence only, so the enrichment agent's scales do not matter. A
company nobody has enriched scores 0, which is why a discovery estimate (before
enrichment) tops out at 4.0: ``high`` is reachable, ``critical`` needs enrichment.

**buying_signal_score** - the signals found, saturating: min(1, sum of strengths).
Derived signals come from the data (see :data:`SIGNAL_RULES`); signals other agents
recorded (``companies.buying_signals``, and entries of ``stream_items.buying_signals``
not written by these rules) count :data:`EXTERNAL_SIGNAL_STRENGTH` each, once per
distinct ``type``, except types a rule already derives (:data:`RULE_COVERED_TYPES`).

**priority** - ``critical`` at 4.5 and above, ``high`` at 4.0, ``medium`` at 3.0, else
``low`` (on the rounded score).

The set-based SQL that scores a whole stream lives in ``agents/store/streams.py``; this
module is its pure-Python twin, used by the unit tests and as the reference. An
integration test scores the same rows both ways and requires identical results, so
change both together. The numbers below reach the SQL as parameters
(:func:`sql_parameters`), so they have a single source.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import re
from collections.abc import Mapping, Sequence
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from agents import taxonomy
from agents.stream_goal import StreamGoal

CRITERIA_WEIGHT = Decimal(2)
CRITICAL_AT = Decimal("4.5")
HIGH_AT = Decimal("4.0")
MEDIUM_AT = Decimal("3.0")
#: "high quality" in the agents' outputs: a score of at least this
HIGH_QUALITY_AT = HIGH_AT

DATA_FIELDS = (
    "name", "address_line1", "post_town", "postcode", "country", "sic_codes",
    "incorporation_date", "accounts_category (filed)", "accounts_last_made_up",
    "conf_stmt_last_made_up",
)
ENRICHMENT_INDICATORS = (
    "enriched", "website", "tech_stack", "officers_count > 0", "social_score > 0",
)

RECENT_INCORPORATION_DAYS = 730
RECENT_REBRAND_DAYS = 365
HEADCOUNT_GROWTH_PCT = Decimal(10)
EXTERNAL_SIGNAL_STRENGTH = Decimal("0.25")
#: Keys that may hold the date of a name change in ``companies.previous_names``
#: entries, first found wins: the importer's ``changed_on`` (sql/0002), then the API's
#: ``ceased_on``, the bulk file's CONDATE, a plain ``date``. The SQL twin lists the same.
PREVIOUS_NAME_DATE_KEYS = ("changed_on", "ceased_on", "condate", "date")
#: ``source`` of the signals these rules write into ``stream_items.buying_signals``
DERIVED_SOURCE = "derived"


@dataclasses.dataclass(frozen=True, slots=True)
class SignalRule:
    type: str
    strength: Decimal
    meaning: str


#: Buying signals derived from the data, in the order they are listed on an item.
#: "When last scored" compares with the figures kept in the item's score_details by
#: the previous scoring (or by discovery), which is how growth shows in a snapshot.
SIGNAL_RULES: tuple[SignalRule, ...] = (
    SignalRule("recent_incorporation", Decimal("0.3"),
               f"incorporated within the last {RECENT_INCORPORATION_DAYS} days: a new "
               "company buys its whole stack"),
    SignalRule("accounts_category_upgrade", Decimal("0.4"),
               "its accounts category implies more employees than when last scored: "
               "it has grown into a bigger size band"),
    SignalRule("new_charge", Decimal("0.3"),
               "more charges registered than when last scored: new secured financing"),
    SignalRule("outstanding_charges", Decimal("0.2"),
               "has outstanding charges (mortgages, debentures): financed by lenders, "
               "investing"),
    SignalRule("headcount_growth", Decimal("0.3"),
               f"enrichment measured employee growth of {HEADCOUNT_GROWTH_PCT} % or more"),
    SignalRule("recent_rebrand", Decimal("0.2"),
               f"changed its name within the last {RECENT_REBRAND_DAYS} days: a rebrand "
               "or a change of direction"),
    SignalRule("accounts_filed_on_time", Decimal("0.1"),
               "accounts on file and the next ones not overdue: a well-run company"),
)
SIGNAL_STRENGTHS: Mapping[str, Decimal] = {rule.type: rule.strength for rule in SIGNAL_RULES}
#: Other agents' names for what a rule above already derives from the same register
#: data (the enrichment agent's ``recently_incorporated`` and ``charges``).
RULE_SIGNAL_ALIASES: Mapping[str, str] = {
    "recently_incorporated": "recent_incorporation",
    "charges": "outstanding_charges",
}
#: External signals of these types are not counted: the rule, re-evaluated on every
#: scoring, decides, and counting both would count one fact twice.
RULE_COVERED_TYPES: frozenset[str] = frozenset(SIGNAL_STRENGTHS) | frozenset(RULE_SIGNAL_ALIASES)

_FOUR_PLACES = Decimal("0.0001")
_TWO_PLACES = Decimal("0.01")
_ISO_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


def _round4(value: Decimal) -> Decimal:
    return value.quantize(_FOUR_PLACES, rounding=ROUND_HALF_UP)


@dataclasses.dataclass(frozen=True, slots=True)
class CompanyFacts:
    """What the formula reads: a ``companies`` row and, for a stream item, the item."""

    name: str | None = None
    status: str | None = "Active"
    address_line1: str | None = None
    post_town: str | None = None
    county: str | None = None
    country: str | None = None
    postcode: str | None = None
    sic_codes: Sequence[str] | None = ()
    incorporation_date: dt.date | None = None
    accounts_category: str | None = None
    accounts_last_made_up: dt.date | None = None
    accounts_next_due: dt.date | None = None
    conf_stmt_last_made_up: dt.date | None = None
    mortgages_charges: int | None = None
    mortgages_outstanding: int | None = None
    previous_names: Any = None
    website: str | None = None
    employee_estimate: int | None = None
    employee_growth_pct: Decimal | None = None
    tech_stack: Sequence[str] | None = None
    officers_count: int | None = None
    social_score: Decimal | None = None
    company_enrichment_status: str | None = None
    company_signals: Any = None
    item_enrichment_status: str = "pending"
    item_signals: Any = None
    #: the item's score_details from the previous scoring ({} for a new candidate)
    previous_details: Mapping[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True, slots=True)
class Signal:
    type: str
    strength: Decimal
    detail: str


@dataclasses.dataclass(frozen=True, slots=True)
class ScoreCard:
    criteria_match: Decimal
    data_completeness: Decimal
    enrichment_quality: Decimal
    buying_signal_score: Decimal
    quality_score: Decimal
    priority: str
    signals: tuple[Signal, ...]


def _present(text: str | None) -> bool:
    # btrim() in the SQL twin trims spaces only
    return text is not None and text.strip(" ") != ""


def is_active(facts: CompanyFacts) -> bool:
    return (facts.status or "").strip(" ").upper() == "ACTIVE"


def criteria_credits(
    facts: CompanyFacts, goal: StreamGoal
) -> tuple[Decimal | None, Decimal | None, Decimal | None]:
    """(industry, location, employees) credit; ``None`` where the goal has no such
    criterion."""
    industry = location = employees = None
    if goal.industry is not None:
        codes = [code for code in facts.sic_codes or () if code is not None]
        industry = Decimal(goal.industry.matches(codes))
    if goal.location is not None:
        location = Decimal(goal.location.matches(
            country=facts.country, postcode=facts.postcode, post_town=facts.post_town,
            county=facts.county,
        ))
    if goal.has_employee_range:
        estimate = taxonomy.employee_estimate(facts.accounts_category, facts.employee_estimate)
        if estimate is None:
            employees = Decimal("0.5")
        else:
            low = goal.employees_min if goal.employees_min is not None else 0
            high = goal.employees_max
            employees = Decimal(low <= estimate and (high is None or estimate <= high))
    return industry, location, employees


def criteria_match(facts: CompanyFacts, goal: StreamGoal) -> Decimal:
    if not is_active(facts):
        return Decimal(0)
    if goal.criteria_count == 0:
        return Decimal(1)
    total = sum((c for c in criteria_credits(facts, goal) if c is not None), Decimal(0))
    return _round4(total / goal.criteria_count)


def data_completeness(facts: CompanyFacts) -> Decimal:
    category = taxonomy.category_key(facts.accounts_category)
    present = (
        _present(facts.name),
        _present(facts.address_line1),
        _present(facts.post_town),
        _present(facts.postcode),
        _present(facts.country),
        len(facts.sic_codes or ()) > 0,
        facts.incorporation_date is not None,
        category != "" and category not in taxonomy.UNFILED_ACCOUNT_CATEGORIES,
        facts.accounts_last_made_up is not None,
        facts.conf_stmt_last_made_up is not None,
    )
    return _round4(Decimal(sum(present)) / len(DATA_FIELDS))


def enrichment_quality(facts: CompanyFacts) -> Decimal:
    indicators = (
        facts.item_enrichment_status == "enriched"
        or facts.company_enrichment_status == "enriched",
        _present(facts.website),
        len(facts.tech_stack or ()) > 0,
        (facts.officers_count or 0) > 0,
        (facts.social_score or 0) > 0,
    )
    return _round4(Decimal(sum(indicators)) / len(ENRICHMENT_INDICATORS))


def _previous_number(details: Mapping[str, Any], key: str) -> Decimal | None:
    value = details.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
        return None
    return Decimal(str(value))


def latest_rename(previous_names: Any) -> str | None:
    """The most recent name-change date (ISO text) in ``previous_names``, if any."""
    if not isinstance(previous_names, list):
        return None
    dates = []
    for entry in previous_names:
        if not isinstance(entry, dict):
            continue
        value = next((entry[k] for k in PREVIOUS_NAME_DATE_KEYS if entry.get(k) is not None),
                     None)
        text = value if isinstance(value, str) else json.dumps(value)
        if value is not None and _ISO_DATE.match(text):
            dates.append(text[:10])
    return max(dates) if dates else None


def derived_signals(facts: CompanyFacts, today: dt.date) -> tuple[Signal, ...]:
    """The signals :data:`SIGNAL_RULES` find in the data, in rule order."""
    found: dict[str, str] = {}
    incorporated = facts.incorporation_date
    if incorporated is not None and \
            today - dt.timedelta(days=RECENT_INCORPORATION_DAYS) < incorporated <= today:
        found["recent_incorporation"] = f"incorporated on {incorporated.isoformat()}"
    size_now = taxonomy.category_estimate(facts.accounts_category)
    size_before = _previous_number(facts.previous_details, "category_employees")
    if size_now is not None and size_before is not None and size_now > size_before:
        found["accounts_category_upgrade"] = (
            f"accounts category {taxonomy.category_key(facts.accounts_category)} implies "
            f"about {size_now} employees, {size_before} when last scored")
    charges = facts.mortgages_charges or 0
    charges_before = _previous_number(facts.previous_details, "mortgages_charges")
    if charges_before is not None and charges > charges_before:
        found["new_charge"] = (
            f"{charges} charges registered, {charges_before} when last scored")
    if (facts.mortgages_outstanding or 0) > 0:
        found["outstanding_charges"] = f"{facts.mortgages_outstanding} outstanding charges"
    growth = facts.employee_growth_pct
    if growth is not None and growth >= HEADCOUNT_GROWTH_PCT:
        found["headcount_growth"] = f"employee growth {growth} %"
    renamed = latest_rename(facts.previous_names)
    since = (today - dt.timedelta(days=RECENT_REBRAND_DAYS)).isoformat()
    if renamed is not None and since < renamed <= today.isoformat():
        found["recent_rebrand"] = f"renamed on {renamed}"
    last, due = facts.accounts_last_made_up, facts.accounts_next_due
    if last is not None and due is not None and due >= today:
        found["accounts_filed_on_time"] = (
            f"accounts made up to {last.isoformat()}, next due {due.isoformat()}")
    return tuple(
        Signal(rule.type, rule.strength, found[rule.type])
        for rule in SIGNAL_RULES if rule.type in found
    )


def _signal_key(entry: Any) -> str | None:
    """How an external signal is told apart from another (SQL:
    ``coalesce(e->>'type', e->>'signal', e #>> '{}')``); None when it does not count:
    written by these rules, or of a type in :data:`RULE_COVERED_TYPES`."""
    if entry is None:
        return None
    if isinstance(entry, dict):
        if entry.get("source") == DERIVED_SOURCE:
            return None
        key = None
        for field in ("type", "signal"):
            value = entry.get(field)
            if value is not None:
                key = value if isinstance(value, str) else json.dumps(value)
                break
        if key is None:
            key = json.dumps(entry, sort_keys=True)
    else:
        key = entry if isinstance(entry, str) else json.dumps(entry)
    return None if key in RULE_COVERED_TYPES else key


def external_signal_count(facts: CompanyFacts) -> int:
    """Distinct signals other agents recorded on the company or the item."""
    entries = [
        *(facts.company_signals if isinstance(facts.company_signals, list) else ()),
        *(facts.item_signals if isinstance(facts.item_signals, list) else ()),
    ]
    return len({key for key in map(_signal_key, entries) if key is not None})


def buying_signal_score(signals: Sequence[Signal], external_count: int) -> Decimal:
    total = sum((s.strength for s in signals), Decimal(0))
    return _round4(min(Decimal(1), total + EXTERNAL_SIGNAL_STRENGTH * external_count))


def quality_score(
    criteria: Decimal, completeness: Decimal, enrichment: Decimal, signals: Decimal
) -> Decimal:
    raw = criteria * CRITERIA_WEIGHT + completeness + enrichment + signals
    # raw / 5 x 5 == raw: the weights already sum to 5, so only clamp and round.
    return min(Decimal(5), max(Decimal(0), raw)).quantize(_TWO_PLACES, rounding=ROUND_HALF_UP)


def priority_for(score: Decimal) -> str:
    if score >= CRITICAL_AT:
        return "critical"
    if score >= HIGH_AT:
        return "high"
    if score >= MEDIUM_AT:
        return "medium"
    return "low"


def score(facts: CompanyFacts, goal: StreamGoal) -> ScoreCard:
    """Everything the SQL computes for one company, computed in Python."""
    cm = criteria_match(facts, goal)
    dc = data_completeness(facts)
    eq = enrichment_quality(facts)
    signals = derived_signals(facts, goal.today)
    bs = buying_signal_score(signals, external_signal_count(facts))
    quality = quality_score(cm, dc, eq, bs)
    return ScoreCard(cm, dc, eq, bs, quality, priority_for(quality), signals)


def sql_parameters(goal: StreamGoal) -> dict[str, Any]:
    """The goal and the constants above, as the named parameters of the scoring SQL
    (``agents/store/streams.py`` documents each)."""
    industry = goal.industry
    location = goal.location or taxonomy.LocationFilter()
    parameters: dict[str, Any] = {
        "today": goal.today,
        "has_industry": industry is not None,
        "industry_codes": sorted(industry.sic_codes) if industry else [],
        "industry_divisions": sorted(industry.divisions) if industry else [],
        "has_location": goal.location is not None,
        "loc_countries": sorted(location.countries),
        "loc_postcode_countries": sorted(location.postcode_countries),
        "loc_areas": sorted(location.postcode_areas),
        "loc_towns": sorted(location.post_towns),
        "loc_counties": sorted(location.counties),
        "uk_generic": sorted(taxonomy.UK_GENERIC_COUNTRIES),
        "has_employees": goal.has_employee_range,
        "employees_min": goal.employees_min if goal.employees_min is not None else 0,
        "employees_max": goal.employees_max if goal.employees_max is not None else 2**31 - 1,
        "criteria_count": goal.criteria_count,
        "size_categories": list(taxonomy.SIZE_BANDS),
        "size_estimates": [band.estimate for band in taxonomy.SIZE_BANDS.values()],
        "unfiled_categories": sorted(taxonomy.UNFILED_ACCOUNT_CATEGORIES),
        "recent_incorporation_days": RECENT_INCORPORATION_DAYS,
        "recent_rebrand_days": RECENT_REBRAND_DAYS,
        "headcount_growth_pct": HEADCOUNT_GROWTH_PCT,
        "external_strength": EXTERNAL_SIGNAL_STRENGTH,
        "derived_source": DERIVED_SOURCE,
        "rule_covered_types": sorted(RULE_COVERED_TYPES),
        "criteria_weight": CRITERIA_WEIGHT,
        "critical_at": CRITICAL_AT,
        "high_at": HIGH_AT,
        "medium_at": MEDIUM_AT,
        "min_quality_score": goal.min_quality_score,
    }
    for rule in SIGNAL_RULES:
        parameters[f"strength_{rule.type}"] = rule.strength
    return parameters
