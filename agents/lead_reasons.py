"""Why a lead scored as it did, in words a person reads: from a stream item's
``score_details``, ``buying_signals`` and sub-scores (``agents/lead_scoring.py`` defines
them). Used by the scoring agent's insight and the demo's report.

Reasons, in this order, each one short line:

1. the goal criteria the company meets, with the headcount estimate and its basis
   ("meets industry, location and employees (about 25, from the accounts category)");
   the ones it misses or that are unknown are named too;
2. its strongest buying signals, one per type, strongest first, with their evidence
   ("hiring: careers page linked: https://...");
3. the other sub-scores when they are what lifts it: enrichment quality and data
   completeness.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any, Final

__all__ = ["MAX_SIGNALS", "lead_reasons"]

MAX_SIGNALS: Final = 3
_DETAIL_MAX: Final = 90
_CRITERIA: Final = ("industry", "location", "employees")


def _words(names: Sequence[str]) -> str:
    if len(names) <= 1:
        return "".join(names)
    return ", ".join(names[:-1]) + " and " + names[-1]


def _criteria(details: Mapping[str, Any]) -> str | None:
    criteria = details.get("criteria")
    if not isinstance(criteria, Mapping):
        return None
    if criteria.get("active") is False:
        return "no longer active: meets no criteria"
    met = [name for name in _CRITERIA if criteria.get(name) == 1]
    missed = [name for name in _CRITERIA if criteria.get(name) == 0]
    unknown = [name for name in _CRITERIA
               if criteria.get(name) not in (None, 0, 1)]
    parts = []
    if met:
        text = f"meets {_words(met)}"
        employees = details.get("employees")
        if "employees" in met and isinstance(employees, int):
            basis = {"enrichment": "from enrichment",
                     "accounts_category": "from the accounts category"}.get(
                str(details.get("employees_basis")), "")
            text += f" (about {employees} employees{', ' + basis if basis else ''})"
        parts.append(text)
    if missed:
        parts.append(f"misses {_words(missed)}")
    if unknown:
        parts.append(f"{_words(unknown)} unknown")
    return "; ".join(parts) if parts else "the goal sets no criteria"


def _strength(entry: Mapping[str, Any]) -> float:
    value = entry.get("strength")
    return float(value) if isinstance(value, int | float | Decimal) and \
        not isinstance(value, bool) else 0.0


def _signals(signals: Any) -> list[str]:
    if not isinstance(signals, list):
        return []
    best: dict[str, Mapping[str, Any]] = {}
    for entry in signals:
        if not isinstance(entry, Mapping) or not isinstance(entry.get("type"), str):
            continue
        kind = entry["type"]
        if kind not in best or _strength(entry) > _strength(best[kind]):
            best[kind] = entry
    ranked = sorted(best.items(), key=lambda item: (-_strength(item[1]), item[0]))
    lines = []
    for kind, entry in ranked[:MAX_SIGNALS]:
        detail = str(entry.get("detail") or "").strip()
        if len(detail) > _DETAIL_MAX:
            detail = detail[: _DETAIL_MAX - 1] + "…"
        lines.append(kind.replace("_", " ") + (f": {detail}" if detail else ""))
    return lines


def lead_reasons(
    score_details: Mapping[str, Any] | None,
    buying_signals: Any,
    *,
    enrichment_quality: Decimal | float | None = None,
    data_completeness: Decimal | float | None = None,
) -> list[str]:
    """The reasons for one stream item's score (module docstring), at most five lines."""
    reasons = []
    criteria = _criteria(score_details or {})
    if criteria:
        reasons.append(criteria)
    reasons += _signals(buying_signals)
    figures = []
    if enrichment_quality is not None and Decimal(str(enrichment_quality)) >= Decimal("0.6"):
        figures.append(f"well enriched ({float(enrichment_quality):.1f})")
    if data_completeness is not None and Decimal(str(data_completeness)) >= Decimal("0.9"):
        figures.append(f"complete register data ({float(data_completeness):.1f})")
    if figures:
        reasons.append(", ".join(figures))
    return reasons
