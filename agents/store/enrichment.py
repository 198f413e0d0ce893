"""The SQL behind the enrichment agent (``agents/enrichment_agent.py``).

Two reads, run in short blocks before any HTTP call, and one write,
:func:`write_enrichment`, which runs only inside the executor's finishing transaction
so that a company's enrichment commits together with the task (a retried or fenced
attempt writes nothing).

Writes are guarded so that two runs over the same stream cannot both count an item:
a stream item changes only while it is still ``pending``. Company rows are written in
``id`` order, so two transactions enriching overlapping companies lock them in the
same order and cannot deadlock.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import date, datetime
from decimal import Decimal
from typing import Any, Literal
from uuid import UUID

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

__all__ = [
    "AGENT_TAG",
    "CompanyUpdate",
    "ItemUpdate",
    "PendingItem",
    "pending_items",
    "stream_exists",
    "write_enrichment",
]

Conn = psycopg.AsyncConnection[Any]

#: The tag the agent puts on its buying signals ("agent": "enrichment_agent").
AGENT_TAG = "enrichment_agent"
# A row's buying signals minus this agent's earlier ones: a re-enrichment replaces its
# own entries and keeps what other agents recorded.
_KEEP_OTHERS = f"""COALESCE((
    SELECT jsonb_agg(entry) FROM jsonb_array_elements(buying_signals) AS entry
    WHERE entry->>'agent' IS DISTINCT FROM '{AGENT_TAG}'), '[]'::jsonb)"""
CompanyStatus = Literal["enriched", "not_found", "error"]
ItemStatus = Literal["enriched", "not_found", "failed"]


@dataclasses.dataclass(frozen=True, slots=True)
class PendingItem:
    """A stream item still to enrich, with what the local register row already says."""

    item_id: UUID
    company_id: UUID
    company_number: str
    name: str
    website: str | None
    status: str | None
    incorporation_date: date | None
    accounts_category: str | None
    accounts_last_made_up: date | None
    mortgages_outstanding: int | None
    sic_codes: list[str]
    sic_texts: list[str]
    post_town: str | None
    # The company's current enrichment (it may have been enriched for another stream).
    enrichment_status: str
    enriched_at: datetime | None
    buying_signals: list[Any]


@dataclasses.dataclass(frozen=True, slots=True)
class CompanyUpdate:
    """The enrichment columns of one company. ``None`` leaves a column as it is, so a
    run that could not reach a source does not erase what an earlier run found."""

    company_id: UUID
    status: CompanyStatus
    employee_estimate: int | None = None
    employee_growth_pct: Decimal | None = None
    tech_stack: list[str] | None = None
    social_score: Decimal | None = None
    officers_count: int | None = None
    ch_profile: dict[str, Any] | None = None
    industry_description: str | None = None
    buying_signals: list[dict[str, Any]] | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class ItemUpdate:
    item_id: UUID
    status: ItemStatus
    buying_signals: list[Any]


async def stream_exists(conn: Conn, stream_id: UUID) -> bool:
    cur = await conn.execute("SELECT 1 FROM streams WHERE id = %s", (stream_id,))
    return await cur.fetchone() is not None


async def pending_items(conn: Conn, stream_id: UUID, limit: int) -> list[PendingItem]:
    """The stream's items still ``pending``, oldest company number first (a stable
    order, so a capped run and the next one split the work predictably)."""
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            """
            SELECT i.id AS item_id, c.id AS company_id, c.company_number, c.name,
                   c.website, c.status, c.incorporation_date, c.accounts_category,
                   c.accounts_last_made_up, c.mortgages_outstanding, c.sic_codes,
                   c.sic_texts, c.post_town, c.enrichment_status, c.enriched_at,
                   c.buying_signals
            FROM stream_items i
            JOIN companies c ON c.id = i.company_id
            WHERE i.stream_id = %s AND i.enrichment_status = 'pending'
            ORDER BY c.company_number, i.id
            LIMIT %s
            """,
            (stream_id, limit),
        )
        rows = await cur.fetchall()
    return [PendingItem(**row) for row in rows]


async def write_enrichment(
    conn: Conn, companies: Sequence[CompanyUpdate], items: Sequence[ItemUpdate]
) -> int:
    """Write the run's results; returns how many stream items changed. Called only
    from the finishing transaction (the agent's commit hook)."""
    async with conn.cursor() as cur:
        ordered = sorted(companies, key=lambda c: c.company_id)
        enriched = [c for c in ordered if c.status == "enriched"]
        if enriched:
            await cur.executemany(
                f"""
                UPDATE companies SET
                    enrichment_status = 'enriched',
                    enriched_at = now(),
                    employee_estimate = COALESCE(%(employee_estimate)s, employee_estimate),
                    employee_growth_pct = COALESCE(%(employee_growth_pct)s,
                                                   employee_growth_pct),
                    tech_stack = COALESCE(%(tech_stack)s::text[], tech_stack),
                    social_score = COALESCE(%(social_score)s, social_score),
                    officers_count = COALESCE(%(officers_count)s, officers_count),
                    ch_profile = COALESCE(%(ch_profile)s, ch_profile),
                    industry_description = COALESCE(%(industry_description)s,
                                                    industry_description),
                    buying_signals = CASE WHEN %(buying_signals)s::jsonb IS NULL
                        THEN buying_signals
                        ELSE {_KEEP_OTHERS} || %(buying_signals)s::jsonb END,
                    updated_at = now()
                WHERE id = %(company_id)s
                """,
                [_company_params(c) for c in enriched],
            )
        others = [c for c in ordered if c.status != "enriched"]
        if others:
            await cur.executemany(
                """
                UPDATE companies SET
                    -- A transient error must not demote a company another run enriched.
                    enrichment_status = CASE
                        WHEN %(status)s::text = 'error' AND enrichment_status = 'enriched'
                        THEN enrichment_status ELSE %(status)s::text END,
                    enriched_at = CASE WHEN %(status)s::text = 'not_found' THEN now()
                                       ELSE enriched_at END,
                    updated_at = now()
                WHERE id = %(company_id)s
                """,
                [{"company_id": c.company_id, "status": c.status} for c in others],
            )
        changed = 0
        for item in items:
            await cur.execute(
                f"""
                UPDATE stream_items SET
                    enrichment_status = %(status)s::text,
                    enriched_at = CASE WHEN %(status)s::text = 'failed' THEN enriched_at
                                       ELSE now() END,
                    buying_signals = {_KEEP_OTHERS} || %(buying_signals)s::jsonb,
                    updated_at = now()
                WHERE id = %(item_id)s AND enrichment_status = 'pending'
                """,
                {"item_id": item.item_id, "status": item.status,
                 "buying_signals": Jsonb(item.buying_signals)},
            )
            changed += cur.rowcount
    return changed


def _company_params(update: CompanyUpdate) -> dict[str, Any]:
    return {
        "company_id": update.company_id,
        "employee_estimate": update.employee_estimate,
        "employee_growth_pct": update.employee_growth_pct,
        "tech_stack": update.tech_stack,
        "social_score": update.social_score,
        "officers_count": update.officers_count,
        "ch_profile": None if update.ch_profile is None else Jsonb(update.ch_profile),
        "industry_description": update.industry_description,
        "buying_signals": None if update.buying_signals is None
        else Jsonb(update.buying_signals),
    }
