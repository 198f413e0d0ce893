"""Stored filing histories: ``company_filings`` (sql/0011_scout.sql).

The scout keeps the filings it read from Companies House (:func:`store_filings`, in its
commit hook); the demo loads the generator's (:func:`replace_generated_filings`). The
scout offline and the enrichment agent read them back (:func:`stored_filings`, in short
``ctx.connection()`` blocks).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Iterable, Sequence
from typing import Any
from uuid import UUID

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from agents.signals import FilingRecord

__all__ = ["StoredFiling", "replace_generated_filings", "store_filings", "stored_filings"]

Conn = psycopg.AsyncConnection[Any]


@dataclasses.dataclass(frozen=True, slots=True)
class StoredFiling:
    """A filing to keep in ``company_filings`` (as read from the API)."""

    company_id: UUID
    filing: FilingRecord


async def stored_filings(
    conn: Conn, company_ids: Iterable[UUID], since: dt.date
) -> dict[UUID, list[FilingRecord]]:
    """Each company's stored filings processed on or after ``since``, newest first."""
    ids = list(company_ids)
    found: dict[UUID, list[FilingRecord]] = {}
    if not ids:
        return found
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            """
            SELECT company_id, transaction_id, category, type, filed_on, description,
                   description_values
            FROM company_filings
            WHERE company_id = ANY(%s::uuid[]) AND filed_on >= %s
            ORDER BY company_id, filed_on DESC, transaction_id
            """,
            (ids, since),
        )
        for row in await cur.fetchall():
            company_id = row.pop("company_id")
            found.setdefault(company_id, []).append(FilingRecord(**row))
    return found


def _filing_rows(filings: Iterable[StoredFiling]) -> list[dict[str, Any]]:
    return [
        {"company_id": str(f.company_id), "transaction_id": f.filing.transaction_id,
         "category": f.filing.category, "type": f.filing.type,
         "filed_on": f.filing.filed_on.isoformat(), "description": f.filing.description,
         "description_values": dict(f.filing.description_values)}
        for f in filings if f.filing.transaction_id
    ]


_INSERT_FILINGS = """
INSERT INTO company_filings (org_id, company_id, transaction_id, category, type, filed_on,
                             description, description_values, source)
SELECT c.org_id, x.company_id, x.transaction_id, coalesce(x.category, ''),
       coalesce(x.type, ''), x.filed_on, coalesce(x.description, ''),
       coalesce(x.description_values, '{}'), %s
FROM jsonb_to_recordset(%s::jsonb) AS x(
    company_id uuid, transaction_id text, category text, type text, filed_on date,
    description text, description_values jsonb)
JOIN companies c ON c.id = x.company_id
ORDER BY x.company_id, x.transaction_id
ON CONFLICT (company_id, transaction_id) DO NOTHING
"""


async def store_filings(conn: Conn, filings: Sequence[StoredFiling]) -> int:
    """Keep the filings read from Companies House (commit hook); a filing already
    stored is left as it is. Returns how many were new."""
    rows = _filing_rows(filings)
    if not rows:
        return 0
    cur = await conn.execute(_INSERT_FILINGS, ("companies_house", Jsonb(rows)))
    return cur.rowcount


def replace_generated_filings(
    conn: psycopg.Connection[Any], filings: Sequence[StoredFiling]
) -> int:
    """The demo's generated histories: drop the previous ones (generated relative to
    an earlier day) and load these, in one transaction. Returns how many were loaded."""
    with conn.transaction():
        conn.execute("DELETE FROM company_filings WHERE source = 'generated'")
        rows = _filing_rows(filings)
        if not rows:
            return 0
        cur = conn.execute(_INSERT_FILINGS, ("generated", Jsonb(rows)))
        return cur.rowcount
