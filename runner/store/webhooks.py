"""Webhooks as Postgres keeps them: endpoints, the outbox, and one row per attempt.

The rules are SQL functions in sql/0010_webhooks.sql: the triggers write each event and
its first attempts in the transaction that causes it; ``runner_webhook_claim`` leases
due attempts (``FOR UPDATE SKIP LOCKED``) and recovers those whose lease expired;
``runner_webhook_finish`` records an outcome only under the lease it was claimed with.
The daemon's delivery worker (async) and the CLI (sync) run the same texts.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any
from uuid import UUID

from psycopg.rows import dict_row

from runner.store import Conn, SyncConn


@dataclasses.dataclass(frozen=True, slots=True)
class ClaimedDelivery:
    """One attempt leased to this process: what to send, where, and the lease."""

    delivery_id: int
    lease_token: UUID
    endpoint_id: UUID
    url: str = dataclasses.field(repr=False)  # may carry credentials
    secret: str = dataclasses.field(repr=False)
    allow_private: bool
    event_type: str
    webhook_id: str
    attempt: int
    event_created_at: dt.datetime
    payload: dict[str, Any] = dataclasses.field(repr=False)


_CLAIM_COLUMNS = (
    "delivery_id, lease_token, endpoint_id, url, secret, allow_private, event_type, "
    "webhook_id, attempt, event_created_at, payload"
)
_CLAIM = f"SELECT {_CLAIM_COLUMNS} FROM runner_webhook_claim(%s, %s, %s, %s)"
_FINISH = "SELECT runner_webhook_finish(%s, %s, %s, %s, %s, %s, %s)"
_RELEASE = "SELECT runner_webhook_release(%s, %s)"
_TEST = f"SELECT {_CLAIM_COLUMNS} FROM runner_webhook_test(%s, %s, %s)"

# When the worker must look again without a notification: the next retry falls due,
# or a lease runs out (its daemon may have died).
_NEXT_DUE = """
SELECT extract(epoch FROM least(
    (SELECT min(d.scheduled_for) FROM webhook_deliveries d
     JOIN webhook_endpoints e ON e.id = d.endpoint_id AND e.is_active
     WHERE d.status = 'pending'),
    (SELECT min(d.locked_until) FROM webhook_deliveries d WHERE d.status = 'delivering')
) - now())::float8
"""


def _claims(rows: list[dict[str, Any]]) -> list[ClaimedDelivery]:
    return [ClaimedDelivery(**row) for row in rows]


async def claim(
    conn: Conn, *, limit: int, lease_seconds: float, claimer: str, retry_window: float
) -> list[ClaimedDelivery]:
    """Lease up to ``limit`` due attempts (oldest due first) for ``lease_seconds``."""
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(_CLAIM, (limit, lease_seconds, claimer, retry_window))
        return _claims(await cur.fetchall())


def _finish_params(
    delivery: ClaimedDelivery, succeeded: bool, response_status: int | None, error: str | None,
    retry_delay: float, retry_window: float,
) -> tuple[Any, ...]:
    return (delivery.delivery_id, delivery.lease_token, succeeded, response_status, error,
            retry_delay, retry_window)


async def finish(
    conn: Conn, delivery: ClaimedDelivery, *, succeeded: bool, response_status: int | None,
    error: str | None, retry_delay: float, retry_window: float,
) -> str:
    """Record the attempt's outcome under its lease: 'succeeded', 'failed' (the next
    attempt is due in ``retry_delay`` s), 'gave_up', or 'fenced' (the lease was lost)."""
    cur = await conn.execute(_FINISH, _finish_params(
        delivery, succeeded, response_status, error, retry_delay, retry_window))
    row = await cur.fetchone()
    assert row is not None
    return str(row[0])


async def release(conn: Conn, delivery: ClaimedDelivery) -> bool:
    """Hand the attempt back unattempted (pending, due now); False if no longer ours."""
    cur = await conn.execute(_RELEASE, (delivery.delivery_id, delivery.lease_token))
    row = await cur.fetchone()
    return bool(row and row[0])


async def seconds_until_next_due(conn: Conn) -> float | None:
    """Seconds until an attempt falls due or a lease runs out (<= 0: now); None if
    nothing is pending or leased."""
    cur = await conn.execute(_NEXT_DUE)
    row = await cur.fetchone()
    return None if row is None or row[0] is None else float(row[0])


# -- the CLI's ------------------------------------------------------------------------


def add_endpoint(
    conn: SyncConn, *, url: str, events: list[str], secret: str | None, allow_private: bool
) -> dict[str, Any]:
    """Insert an endpoint of the default organization (the database generates the
    secret when ``secret`` is None); the row as stored, secret included."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            "INSERT INTO webhook_endpoints (url, events, secret, allow_private) "
            "VALUES (%s, %s, coalesce(%s, runner_webhook_new_secret()), %s) "
            "RETURNING id, url, secret, events, is_active, allow_private, created_at",
            (url, events, secret, allow_private),
        )
        row = cur.fetchone()
    assert row is not None
    return row


def list_endpoints(conn: SyncConn) -> list[dict[str, Any]]:
    """Every endpoint, without its secret, with its attempts' figures."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            """
            SELECT e.id, e.org_id, e.url, e.events, e.is_active, e.allow_private, e.created_at,
                   count(d.id) FILTER (WHERE d.status IN ('pending', 'delivering'))
                       AS open_deliveries,
                   count(d.id) FILTER (WHERE d.status = 'succeeded') AS succeeded,
                   count(d.id) FILTER (WHERE d.status IN ('failed', 'gave_up'))
                       AS failed_attempts,
                   count(d.id) FILTER (WHERE d.status = 'gave_up') AS given_up,
                   max(d.delivered_at) AS last_delivered_at
            FROM webhook_endpoints e
            LEFT JOIN webhook_deliveries d ON d.endpoint_id = e.id
            GROUP BY e.id
            ORDER BY e.created_at, e.id
            """
        )
        return cur.fetchall()


def endpoint_exists(conn: SyncConn, endpoint_id: str) -> bool:
    row = conn.execute("SELECT EXISTS (SELECT 1 FROM webhook_endpoints WHERE id = %s)",
                       (endpoint_id,)).fetchone()
    return bool(row and row[0])


def start_test_delivery(
    conn: SyncConn, endpoint_id: str, *, lease_seconds: float, claimer: str
) -> ClaimedDelivery | None:
    """A ``webhook.test`` event for the endpoint, its one attempt leased to the caller;
    None when there is no such endpoint."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(_TEST, (endpoint_id, lease_seconds, claimer))
        rows = _claims(cur.fetchall())
    return rows[0] if rows else None


def finish_sync(
    conn: SyncConn, delivery: ClaimedDelivery, *, succeeded: bool, response_status: int | None,
    error: str | None, retry_delay: float, retry_window: float,
) -> str:
    """:func:`finish` on the CLI's connection."""
    row = conn.execute(_FINISH, _finish_params(
        delivery, succeeded, response_status, error, retry_delay, retry_window)).fetchone()
    assert row is not None
    return str(row[0])


def list_deliveries(
    conn: SyncConn, *, endpoint_id: str | None, limit: int
) -> list[dict[str, Any]]:
    """The latest attempts, newest first, of one endpoint or of all."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            """
            SELECT d.id, d.endpoint_id, d.event_type, d.webhook_id, d.attempt, d.status,
                   d.response_status, d.error, d.created_at, d.scheduled_for, d.started_at,
                   d.finished_at, d.delivered_at
            FROM webhook_deliveries d
            WHERE %(endpoint)s::uuid IS NULL OR d.endpoint_id = %(endpoint)s::uuid
            ORDER BY d.id DESC
            LIMIT %(limit)s
            """,
            {"endpoint": endpoint_id, "limit": limit},
        )
        return cur.fetchall()
