"""Buying signals a scout watches for, where they come from and how strong each is.

Pure rules, no I/O: ``agents/scout_agent.py`` feeds them what it read (a company's
filing history, its register row, its careers page), the enrichment agent uses the
filing rules too, and the unit tests call them directly.

Signal types (``scout_agent`` configuration ``signals``)
-------------------------------------------------------
============== ==================================================================
job_posting    the company's careers page lists openings (or at least links one)
funding_round  a share allotment: form ``SH01`` (``capital-allotment-shares``)
officer_change a director or secretary appointed (``AP01``-``AP04``, ``LLAP01``,
               ``LLAP02``) or leaving (``TM01``-``TM04``, ``LLTM01``, ``LLTM02``)
accounts_filed annual accounts filed (form ``AA``)
charge_registered a charge (secured lending) registered (form ``MR01``)
name_change    a change of name (``NM01``, ``CONNOT``, category ``change-of-name``)
============== ==================================================================

Strength (0..1)
---------------
How much the signal says about a company being ready to buy, by the age of the
evidence in days (the filing's processing ``date``; for the register's columns, the
date they carry). Newer is stronger: a filing is news for a few weeks.

================================  =====  =====  ======  =====
signal                            <=30   <=90   <=365   older
================================  =====  =====  ======  =====
funding_round (SH01)              0.9    0.7    0.5     0.2
officer_change, appointment       0.7    0.5    0.3     0.1
officer_change, departure         0.5    0.4    0.2     0.1
charge_registered (MR01)          0.6    0.5    0.3     0.1
name_change                       0.5    0.4    0.3     0.1
accounts_filed (AA)               0.4    0.3    0.2     0.1
================================  =====  =====  ======  =====

Why this order: fresh capital is the clearest sign of money about to be spent (a share
allotment is filed within a month of the allotment, so an SH01 of the last 30 days is
a round that just closed: at least 0.8, as the seed asks); a new director or secretary
is a new decision maker who reviews suppliers; new secured lending and a rebrand are
investment and change of direction; accounts are filed every year by everyone, so they
say little beyond "alive and current".

From the register row (the bulk import, offline): ``accounts_last_made_up`` is the end
of the period, not the filing date, so ``accounts_filed`` from it is capped at 0.3;
``previous_names[].changed_on`` is the date of the change itself and scores as a
``name_change`` filing. A company whose stored filing history has filings of the same
category is read from the history instead, never from both.

``job_posting``: a careers page that lists ``n`` openings scores ``0.5 + 0.1 n``
(capped at 0.9: one opening 0.6, two 0.7, three 0.8); one dated (schema.org
``datePosted``) within the last 30 days adds 0.1 (at most 1.0). A careers page that is
linked but lists nothing readable scores 0.3.

Identity ("never twice for the same filing or page"): every signal has a
``source_key`` unique within its company: ``ch:<transaction_id>`` for a filing,
``register:<what>:<date>`` for a register date, and for a careers page
``web:<hash>`` of the page's path and the openings it lists, so the same page with
the same openings is the same signal, and a page that lists new openings is a new one.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import re
from collections.abc import Mapping, Sequence
from typing import Any, Final, Literal, get_args
from urllib.parse import urlsplit

__all__ = [
    "SIGNAL_TYPES",
    "FilingRecord",
    "JobOpening",
    "Signal",
    "SignalType",
    "filing_signal",
    "job_posting_signal",
    "recency_strength",
    "register_signals",
]

SignalType = Literal[
    "job_posting", "funding_round", "officer_change", "accounts_filed",
    "charge_registered", "name_change",
]
SIGNAL_TYPES: Final[tuple[SignalType, ...]] = get_args(SignalType)
SignalSource = Literal["companies_house", "register", "website"]

#: Upper bounds (days) of the recency bands; older evidence falls in the last band.
RECENCY_BANDS: Final = (30, 90, 365)
#: Strength per band (<=30, <=90, <=365, older) for each kind of filing.
STRENGTHS: Final[Mapping[str, tuple[float, float, float, float]]] = {
    "funding_round": (0.9, 0.7, 0.5, 0.2),
    "officer_appointed": (0.7, 0.5, 0.3, 0.1),
    "officer_left": (0.5, 0.4, 0.2, 0.1),
    "charge_registered": (0.6, 0.5, 0.3, 0.1),
    "name_change": (0.5, 0.4, 0.3, 0.1),
    "accounts_filed": (0.4, 0.3, 0.2, 0.1),
}
#: ``accounts_filed`` read from the register's made-up date, not a filing's date.
REGISTER_ACCOUNTS_CAP: Final = 0.3
JOB_POSTING_BASE: Final = 0.5
JOB_POSTING_PER_OPENING: Final = 0.1
JOB_POSTING_MAX_FROM_OPENINGS: Final = 0.9
JOB_POSTING_FRESH_BONUS: Final = 0.1
JOB_POSTING_FRESH_DAYS: Final = 30
CAREERS_LINK_ONLY: Final = 0.3

_APPOINTMENTS: Final = frozenset({"AP01", "AP02", "AP03", "AP04", "LLAP01", "LLAP02"})
_DEPARTURES: Final = frozenset({"TM01", "TM02", "TM03", "TM04", "LLTM01", "LLTM02"})
_NAME_CHANGES: Final = frozenset({"NM01", "NM02", "NM03", "NM04", "NM05", "NM06", "CONNOT",
                                  "LLNM01"})
_TITLE_MAX: Final = 200


@dataclasses.dataclass(frozen=True, slots=True)
class FilingRecord:
    """One filing-history item: from the API, or stored in ``company_filings``."""

    transaction_id: str
    category: str
    type: str
    filed_on: dt.date
    description: str = ""
    description_values: Mapping[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True, slots=True)
class JobOpening:
    title: str
    date_posted: dt.date | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class Signal:
    type: SignalType
    strength: float
    source: SignalSource
    #: Unique within the company (module docstring, "Identity").
    source_key: str
    #: What a person reads first: "Share allotment filed on 2026-11-20 (GBP 2,151)".
    title: str
    detail: str
    observed_on: dt.date | None = None
    facts: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {
            "type": self.type, "strength": self.strength, "source": self.source,
            "source_key": self.source_key, "title": self.title, "detail": self.detail,
            "observed_on": self.observed_on.isoformat() if self.observed_on else None,
            **{k: v for k, v in self.facts.items() if k not in ("type", "strength")},
        }


def recency_strength(kind: str, observed_on: dt.date, today: dt.date) -> float:
    """The strength of ``kind`` (a key of :data:`STRENGTHS`) for evidence dated
    ``observed_on``; a date in the future (clock skew) counts as today."""
    age = max(0, (today - observed_on).days)
    bands = STRENGTHS[kind]
    for index, limit in enumerate(RECENCY_BANDS):
        if age <= limit:
            return bands[index]
    return bands[-1]


def _value(values: Mapping[str, Any], *keys: str) -> str | None:
    for key in keys:
        value = values.get(key)
        if isinstance(value, str | int | float) and str(value).strip():
            return str(value).strip()
    return None


def _capital(values: Mapping[str, Any]) -> str | None:
    """``capital: [{figure, currency}]`` as "GBP 2,151" (several joined)."""
    entries = values.get("capital")
    if not isinstance(entries, list):
        return None
    parts = [" ".join(str(e[k]) for k in ("currency", "figure") if e.get(k))
             for e in entries if isinstance(e, dict)]
    text = ", ".join(part for part in parts if part)
    return text or None


def _clip(text: str, limit: int = _TITLE_MAX) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def filing_signal(filing: FilingRecord, today: dt.date) -> Signal | None:
    """The signal a filing is, or None for a filing that is not one (a confirmation
    statement, a change of address, ...)."""
    form = filing.type.strip().upper()
    description = filing.description.strip().lower()
    values = filing.description_values
    date = filing.filed_on
    key = f"ch:{filing.transaction_id}"
    facts = {"form": form, "transaction_id": filing.transaction_id,
             "filed_on": date.isoformat(), "description": filing.description}
    if form == "SH01" or description.startswith("capital-allotment-shares"):
        capital = _capital(values)
        allotted = _value(values, "date")
        detail = "statement of capital following an allotment of shares"
        if allotted:
            detail += f" on {allotted}"
        if capital:
            detail += f"; capital {capital}"
        return Signal(
            "funding_round", recency_strength("funding_round", date, today), "companies_house",
            key, _clip(f"Share allotment filed on {date.isoformat()}"
                       + (f" ({capital})" if capital else "")),
            detail, date, {**facts, "capital": values.get("capital")},
        )
    if form in _APPOINTMENTS or (filing.category == "officers"
                                 and description.startswith("appoint")):
        name = _value(values, "officer_name") or "an officer"
        when = _value(values, "appointment_date") or date.isoformat()
        role = "secretary" if "secretary" in description or form in ("AP03", "AP04") \
            else "director"
        return Signal(
            "officer_change", recency_strength("officer_appointed", date, today),
            "companies_house", key, _clip(f"New {role}: {name} appointed on {when}"),
            f"{form or 'appointment'} filed on {date.isoformat()}: a new decision maker",
            date, {**facts, "change": "appointed", "officer_name": name},
        )
    if form in _DEPARTURES or (filing.category == "officers"
                               and description.startswith("termination")):
        name = _value(values, "officer_name") or "an officer"
        when = _value(values, "termination_date") or date.isoformat()
        return Signal(
            "officer_change", recency_strength("officer_left", date, today),
            "companies_house", key, _clip(f"Officer left: {name} on {when}"),
            f"{form or 'termination'} filed on {date.isoformat()}",
            date, {**facts, "change": "left", "officer_name": name},
        )
    if form == "AA" or (filing.category == "accounts" and description.startswith("accounts")):
        made_up = _value(values, "made_up_date")
        kind = description.removeprefix("accounts-with-accounts-type-").replace("-", " ") \
            if description.startswith("accounts-with-accounts-type-") else None
        title = f"Accounts filed on {date.isoformat()}"
        if made_up:
            title += f", made up to {made_up}"
        return Signal(
            "accounts_filed", recency_strength("accounts_filed", date, today),
            "companies_house", key, _clip(title + (f" ({kind})" if kind else "")),
            "annual accounts on file", date, {**facts, "made_up_date": made_up,
                                              "accounts_type": kind},
        )
    if form == "MR01" or description.startswith("mortgage-create"):
        return Signal(
            "charge_registered", recency_strength("charge_registered", date, today),
            "companies_house", key, _clip(f"Charge registered on {date.isoformat()}"),
            "new secured lending (a charge) registered", date, facts,
        )
    if form in _NAME_CHANGES or filing.category == "change-of-name":
        return Signal(
            "name_change", recency_strength("name_change", date, today), "companies_house",
            key, _clip(f"Change of name filed on {date.isoformat()}"),
            "a rebrand or a change of direction", date, facts,
        )
    return None


def register_signals(
    *,
    accounts_last_made_up: dt.date | None,
    previous_names: Any,
    today: dt.date,
    covered: frozenset[str] = frozenset(),
) -> list[Signal]:
    """Signals from the register row's dates, except the types in ``covered`` (those
    the company's stored filing history already speaks for)."""
    found: list[Signal] = []
    if accounts_last_made_up is not None and "accounts_filed" not in covered:
        strength = min(REGISTER_ACCOUNTS_CAP,
                       recency_strength("accounts_filed", accounts_last_made_up, today))
        made_up = accounts_last_made_up.isoformat()
        found.append(Signal(
            "accounts_filed", strength, "register", f"register:accounts:{made_up}",
            f"Accounts made up to {made_up} on file", "from the register's last accounts "
            "date (the period end, not the filing date)", accounts_last_made_up,
            {"made_up_date": made_up},
        ))
    if isinstance(previous_names, list) and "name_change" not in covered:
        for entry in previous_names:
            if not isinstance(entry, dict):
                continue
            changed = entry.get("changed_on")
            try:
                changed_on = dt.date.fromisoformat(str(changed)[:10]) if changed else None
            except ValueError:
                changed_on = None
            if changed_on is None:
                continue
            former = str(entry.get("name") or "").strip()
            found.append(Signal(
                "name_change", recency_strength("name_change", changed_on, today),
                "register", f"register:name:{changed_on.isoformat()}",
                _clip(f"Renamed on {changed_on.isoformat()}"
                      + (f" (formerly {former})" if former else "")),
                "a rebrand or a change of direction", changed_on,
                {"former_name": former or None},
            ))
    return found


def job_posting_signal(
    careers_url: str, openings: Sequence[JobOpening], today: dt.date, *, page_read: bool,
) -> Signal:
    """The signal of a careers page: its openings (``page_read``) or only its link."""
    path = urlsplit(careers_url).path or "/"
    titles = sorted({opening.title for opening in openings})
    fingerprint = hashlib.sha256("\n".join([path, *titles]).encode()).hexdigest()[:20]
    key = f"web:{fingerprint}"
    if not titles:
        detail = "careers page linked" + ("" if page_read else " (not readable)")
        return Signal("job_posting", CAREERS_LINK_ONLY, "website", key,
                      "Careers page, no openings listed", f"{detail}: {careers_url}",
                      None, {"url": careers_url, "openings": []})
    strength = min(JOB_POSTING_MAX_FROM_OPENINGS,
                   JOB_POSTING_BASE + JOB_POSTING_PER_OPENING * len(titles))
    dated = [o.date_posted for o in openings if o.date_posted is not None]
    newest = max(dated) if dated else None
    if newest is not None and (today - newest).days <= JOB_POSTING_FRESH_DAYS:
        strength = min(1.0, strength + JOB_POSTING_FRESH_BONUS)
    shown = ", ".join(titles[:5]) + (f" and {len(titles) - 5} more" if len(titles) > 5 else "")
    return Signal(
        "job_posting", round(strength, 2), "website", key,
        _clip(f"Hiring: {len(titles)} opening{'s' if len(titles) != 1 else ''} ({shown})"),
        f"careers page {careers_url}", newest,
        {"url": careers_url, "openings": titles[:50]},
    )


_WHITESPACE = re.compile(r"\s+")


def clean_title(text: str) -> str:
    return _WHITESPACE.sub(" ", text).strip()
