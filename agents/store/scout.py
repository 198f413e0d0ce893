"""The SQL behind ``scout_agent`` (and the stored filing histories it shares with the
enrichment agent and the demo).

Reads run in short ``ctx.connection()`` blocks before any HTTP call; the one write,
:func:`store_filings`, runs in the commit hook (the insights go through
``agents/store/insights.py`` in the same transaction).
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

__all__ = [
    "StoredFiling",
    "WatchedCompany",
    "assigned_streams",
    "org_stream_exists",
    "store_filings",
    "stored_filings",
    "watched_companies",
]

Conn = psycopg.AsyncConnection[Any]


@dataclasses.dataclass(frozen=True, slots=True)
class WatchedCompany:
    company_id: UUID
    company_number: str
    name: str
    website: str | None
    accounts_last_made_up: dt.date | None
    previous_names: Any
    #: The watched streams it is in; ``[None]`` when the scout watches all companies.
    streams: tuple[UUID | None, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class StoredFiling:
    """A filing to keep in ``company_filings`` (as read from the API)."""

    company_id: UUID
    filing: FilingRecord


async def org_stream_exists(conn: Conn, org_id: UUID, stream_id: UUID) -> bool:
    cur = await conn.execute("SELECT 1 FROM streams WHERE id = %s AND org_id = %s",
                             (stream_id, org_id))
    return await cur.fetchone() is not None


async def assigned_streams(conn: Conn, org_id: UUID, agent_id: UUID) -> list[UUID]:
    """The organization's streams the agent is actively assigned to."""
    cur = await conn.execute(
        """
        SELECT DISTINCT a.stream_id FROM stream_agent_assignments a
        JOIN streams s ON s.id = a.stream_id
        WHERE a.agent_id = %s AND a.is_active AND s.org_id = %s
        ORDER BY a.stream_id
        """,
        (agent_id, org_id),
    )
    return [row[0] for row in await cur.fetchall()]


_COLUMNS = """c.id AS company_id, c.company_number, c.name, c.website,
              c.accounts_last_made_up, c.previous_names"""


async def watched_companies(
    conn: Conn, org_id: UUID, streams: Sequence[UUID], limit: int
) -> list[WatchedCompany]:
    """The companies of ``streams`` (best placed first), or with no streams every
    company of the organization (most recently enriched first); at most ``limit``."""
    async with conn.cursor(row_factory=dict_row) as cur:
        if streams:
            await cur.execute(
                f"""
                SELECT {_COLUMNS}, array_agg(DISTINCT si.stream_id) AS streams
                FROM stream_items si JOIN companies c ON c.id = si.company_id
                WHERE si.stream_id = ANY(%s::uuid[]) AND c.org_id = %s
                GROUP BY c.id
                ORDER BY min(coalesce(si.position, 2147483647)), c.company_number
                LIMIT %s
                """,
                (list(streams), org_id, limit),
            )
        else:
            await cur.execute(
                f"""
                SELECT {_COLUMNS}, ARRAY[NULL]::uuid[] AS streams
                FROM companies c WHERE c.org_id = %s
                ORDER BY c.enriched_at DESC NULLS LAST, c.company_number
                LIMIT %s
                """,
                (org_id, limit),
            )
        rows = await cur.fetchall()
    return [WatchedCompany(**{**row, "streams": tuple(row["streams"])}) for row in rows]


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
