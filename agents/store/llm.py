"""The SQL behind the LLM agent's built-in tools (``agents/tools.py``).

Every read takes the calling agent's ``org_id`` and returns only that organization's
rows: companies by ``companies.org_id``, streams by ``streams.org_id`` and stream items
through their stream (the stream is the owner; an item's company must be the
organization's too). Another organization's row reads exactly like a missing one.

Reads are bounded (every list takes a ``limit`` the caller has already capped) and run
on a connection the caller holds only for the statement: tools never keep one across
a model call. The only write, :func:`insert_insights`, runs inside the executor's
finishing transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from uuid import UUID

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

Conn = psycopg.AsyncConnection[Any]

# The columns a model gets to see: enough to judge a company, none of the import
# bookkeeping. Kept in one place so the three company reads agree.
_COMPANY_COLUMNS = """
    id, company_number, name, status, post_town, county, country, postcode,
    sic_codes, sic_texts, accounts_category, incorporation_date, website,
    tech_stack, employee_estimate, industry_description, buying_signals
"""


def _like_pattern(text: str) -> str:
    """``text`` as a literal inside an ILIKE pattern (its own % and _ match themselves)."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


async def search_companies(
    conn: Conn,
    *,
    org_id: UUID,
    name: str | None,
    sic_code: str | None,
    post_town: str | None,
    limit: int,
    offset: int = 0,
) -> list[dict[str, Any]]:
    """The organization's companies matching every filter given (none given: all),
    by name.

    ``sic_code`` must be digits (the tool validates it): it is used in a LIKE pattern.
    """
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            f"""
            SELECT {_COMPANY_COLUMNS}
            FROM companies
            WHERE org_id = %(org_id)s
              AND (%(name)s::text IS NULL OR name ILIKE %(name)s)
              AND (%(sic_exact)s::text IS NULL OR sic_codes @> ARRAY[%(sic_exact)s::text])
              AND (%(sic_prefix)s::text IS NULL
                   OR EXISTS (SELECT 1 FROM unnest(sic_codes) AS code
                              WHERE code LIKE %(sic_prefix)s))
              AND (%(town)s::text IS NULL OR lower(post_town) = lower(%(town)s))
            ORDER BY name, company_number
            LIMIT %(limit)s OFFSET %(offset)s
            """,
            {
                "org_id": org_id,
                "name": None if name is None else _like_pattern(name),
                # A full 5-digit code uses the GIN index on sic_codes; a shorter one is a
                # prefix of the hierarchy ("62" finds 62011, 62012, 62020 ...).
                "sic_exact": sic_code if sic_code is not None and len(sic_code) == 5 else None,
                "sic_prefix": (
                    sic_code + "%" if sic_code is not None and len(sic_code) < 5 else None
                ),
                # Exact town (case-insensitive) so companies_post_town_idx serves it.
                "town": post_town,
                "limit": limit,
                "offset": offset,
            },
        )
        return await cur.fetchall()


async def get_company(
    conn: Conn, org_id: UUID, company_number: str
) -> dict[str, Any] | None:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            f"SELECT {_COMPANY_COLUMNS} FROM companies "
            "WHERE org_id = %s AND company_number = %s",
            (org_id, company_number),
        )
        return await cur.fetchone()


async def company_id_for_number(conn: Conn, org_id: UUID, company_number: str) -> UUID | None:
    cur = await conn.execute(
        "SELECT id FROM companies WHERE org_id = %s AND company_number = %s",
        (org_id, company_number),
    )
    row = await cur.fetchone()
    return None if row is None else UUID(str(row[0]))


async def stream_exists(conn: Conn, org_id: UUID, stream_id: UUID) -> bool:
    """Whether the organization has this stream."""
    cur = await conn.execute(
        "SELECT 1 FROM streams WHERE id = %s AND org_id = %s", (stream_id, org_id)
    )
    return await cur.fetchone() is not None


async def list_stream_items(
    conn: Conn, *, org_id: UUID, stream_id: UUID, min_quality_score: float | None, limit: int
) -> list[dict[str, Any]]:
    """The items of one of the organization's streams, best first, with the company
    each one is about (nothing for another organization's stream)."""
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            """
            SELECT i.id AS item_id, i.quality_score, i.priority, i.position, i.qualified,
                   i.buying_signals AS item_buying_signals,
                   c.id AS company_id, c.company_number, c.name, c.post_town,
                   c.sic_codes, c.employee_estimate, c.website, c.industry_description
            FROM stream_items i
            JOIN streams s ON s.id = i.stream_id
            JOIN companies c ON c.id = i.company_id
            WHERE i.stream_id = %(stream)s
              AND s.org_id = %(org_id)s
              AND c.org_id = %(org_id)s
              AND (%(min)s::numeric IS NULL OR i.quality_score >= %(min)s)
            ORDER BY i.quality_score DESC NULLS LAST, i.position NULLS LAST, c.name
            LIMIT %(limit)s
            """,
            {"org_id": org_id, "stream": stream_id, "min": min_quality_score, "limit": limit},
        )
        return await cur.fetchall()


async def insert_insights(conn: Conn, rows: Sequence[dict[str, Any]]) -> None:
    """Write buffered insights. Called only from the finishing transaction."""
    if not rows:
        return
    async with conn.cursor() as cur:
        await cur.executemany(
            """
            INSERT INTO stream_insights (
                org_id, stream_id, company_id, task_id, execution_id, kind, title, body,
                metadata)
            VALUES (%(org_id)s, %(stream_id)s, %(company_id)s, %(task_id)s,
                    %(execution_id)s, %(kind)s, %(title)s, %(body)s, %(metadata)s)
            """,
            [{**row, "metadata": Jsonb(row["metadata"])} for row in rows],
        )
