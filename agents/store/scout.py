"""The SQL behind ``scout_agent``: what it watches. Reads only, in short
``ctx.connection()`` blocks before any HTTP call; its writes go through
``agents/store/filings.py`` and ``agents/store/insights.py`` in its commit hook."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Sequence
from typing import Any
from uuid import UUID

import psycopg
from psycopg.rows import dict_row

__all__ = [
    "WatchedCompany",
    "assigned_streams",
    "org_stream_exists",
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
