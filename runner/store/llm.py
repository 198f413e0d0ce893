"""LLM governance: budget reservations and the provider limiter's buckets (sql/0012).

* :func:`reserve` -- one call's estimate against the budgets of its scope and the task's
  ``max_cost_usd`` (``runner_llm_reserve``: budget rows locked ``FOR UPDATE``, so
  concurrent checks of any number of daemons are serialised);
* :func:`release` -- a reservation's end (its ledger row is written, or the call failed);
* :func:`take_capacity`, :func:`pause_model`, :func:`learn_limits` -- the per-model token
  buckets every daemon shares;
* :data:`BUDGETS_WITH_SPEND` -- every budget with what counts against it (the CLI's
  ``budgets``; run by a sync connection).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from decimal import Decimal
from typing import Any
from uuid import UUID

import psycopg
from psycopg.rows import dict_row

from runner.store import Conn


@dataclasses.dataclass(frozen=True, slots=True)
class ReserveResult:
    """``reservation_id`` when the call may be made; otherwise what stopped it."""

    reservation_id: int | None
    #: ``budget`` or ``cost_cap`` when refused
    blocked: str | None = None
    budget_id: UUID | None = None
    message: str | None = None
    #: a budget's next period (when the call could be made again)
    resume_at: dt.datetime | None = None
    #: with ``take``, once reserved: 0.0 when the call's capacity was taken in the same
    #: round trip, otherwise the seconds to wait (see :func:`take_capacity`)
    wait: float | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class Take:
    """A call's capacity, taken from the limiter together with its reservation."""

    model: str
    limits: Limits
    input_tokens: int
    output_tokens: int


async def reserve(
    conn: Conn, *, org_id: UUID, agent_id: UUID, task_id: UUID, execution_id: UUID,
    cost_usd: Decimal, tokens: int, ttl_seconds: float, take: Take | None = None,
) -> ReserveResult:
    """Reserve the call's estimate (``runner_llm_reserve``) and, once reserved and with
    ``take``, take its capacity from the limiter in the same statement: one round trip
    where the call would make two. (Budget rows are locked before the model's bucket,
    always in that order.)"""
    limits = take.limits if take is not None else Limits()
    cur = await conn.execute(
        """
        SELECT r.reservation_id, r.blocked, r.budget_id, r.message, r.resume_at,
               CASE WHEN r.reservation_id IS NOT NULL AND %(take)s
                    THEN runner_llm_take_capacity(%(model)s, %(rpm)s, %(itpm)s, %(otpm)s,
                                                  %(input)s, %(output)s, %(window)s)
               END
        FROM runner_llm_reserve(%(org)s, %(agent)s, %(task)s, %(execution)s, %(cost)s,
                                %(tokens)s, %(ttl)s) AS r
        """,
        {"org": org_id, "agent": agent_id, "task": task_id, "execution": execution_id,
         "cost": cost_usd, "tokens": tokens, "ttl": ttl_seconds, "take": take is not None,
         "model": take.model if take is not None else None, "rpm": limits.requests,
         "itpm": limits.input_tokens, "otpm": limits.output_tokens,
         "input": float(take.input_tokens) if take is not None else 0.0,
         "output": float(take.output_tokens) if take is not None else 0.0,
         "window": limits.window_seconds},
    )
    row = await cur.fetchone()
    assert row is not None
    reservation_id, blocked, budget_id, message, resume_at, wait = row
    return ReserveResult(reservation_id, blocked, budget_id, message, resume_at,
                         wait=None if wait is None else float(wait))


async def release(conn: Conn, reservation_ids: list[int]) -> None:
    if reservation_ids:
        await conn.execute(
            "DELETE FROM llm_budget_reservations WHERE id = ANY(%s)", (reservation_ids,))


async def release_execution(conn: Conn, execution_id: UUID) -> None:
    """Every reservation an attempt still holds (its end: nothing is in flight)."""
    await conn.execute(
        "DELETE FROM llm_budget_reservations WHERE execution_id = %s", (execution_id,))


@dataclasses.dataclass(frozen=True, slots=True)
class Limits:
    """Per-window limits from the settings (``None``: learned from the headers)."""

    requests: float | None = None
    input_tokens: float | None = None
    output_tokens: float | None = None
    #: the buckets' window in seconds (60: "per minute"; tests shrink it)
    window_seconds: float = 60.0
    #: False: nothing is taken, learned or paused (``RUNNER_LLM_LIMITER=off``)
    enabled: bool = True


async def take_capacity(
    conn: Conn, *, model: str, limits: Limits, input_tokens: int, output_tokens: int
) -> float:
    """0.0 when the call's capacity was taken; otherwise seconds to wait first."""
    cur = await conn.execute(
        "SELECT runner_llm_take_capacity(%s, %s, %s, %s, %s, %s, %s)",
        (model, limits.requests, limits.input_tokens, limits.output_tokens,
         float(input_tokens), float(output_tokens), limits.window_seconds),
    )
    row = await cur.fetchone()
    assert row is not None
    return float(row[0])


async def pause_model(conn: Conn, *, model: str, seconds: float) -> None:
    """Nobody calls ``model`` for ``seconds`` (a 429's ``retry-after``); a longer pause
    already set is kept."""
    await conn.execute(
        """
        INSERT INTO llm_rate_limits AS r (model, paused_until)
        VALUES (%(model)s, clock_timestamp() + make_interval(secs => %(seconds)s))
        ON CONFLICT (model) DO UPDATE
        SET paused_until = greatest(r.paused_until, excluded.paused_until), updated_at = now()
        """,
        {"model": model, "seconds": seconds},
    )


@dataclasses.dataclass(frozen=True, slots=True)
class LearnedBucket:
    """One ``anthropic-ratelimit-<kind>-{limit,remaining}`` pair, converted to the
    limiter's window, and what the call took of that bucket but did not use."""

    limit: float | None
    remaining: float | None
    unused: float = 0.0


async def learn_limits(
    conn: Conn, *, model: str, limits: Limits, requests: LearnedBucket,
    input_tokens: LearnedBucket, output_tokens: LearnedBucket,
) -> None:
    """What a response said, in one locked update (``runner_llm_learn``): the buckets
    refilled to now, the unused part of the call's take given back, a learned limit
    replacing the earlier one, and the API's remaining count capping each level."""
    buckets = (requests, input_tokens, output_tokens)
    await conn.execute(
        "SELECT runner_llm_learn(%s, %s, %s, %s, %s, %s::float8[], %s::float8[], %s::float8[])",
        (model, limits.requests, limits.input_tokens, limits.output_tokens,
         limits.window_seconds, [_float(b.limit) for b in buckets],
         [_float(b.remaining) for b in buckets], [float(b.unused) for b in buckets]),
    )


def _float(value: float | None) -> float | None:
    return None if value is None else float(value)


#: Every budget with its spend and open reservations in the current period, for the CLI.
BUDGETS_WITH_SPEND = """
SELECT b.id, o.name AS organization, a.name AS agent, b.period, b.limit_usd, b.limit_tokens,
       b.is_active, s.spent_usd, s.spent_tokens, s.reserved_usd, s.reserved_tokens,
       runner_budget_period_start(b.period, now()) AS period_start,
       runner_budget_next_period(b.period, now()) AS resets_at,
       (SELECT count(*) FROM agent_tasks t
        WHERE t.status = 'pending' AND t.error_message LIKE 'budget reached:%%'
          AND t.org_id = b.org_id AND (b.agent_id IS NULL OR t.agent_id = b.agent_id))
           AS deferred_tasks
FROM llm_budgets b
JOIN organizations o ON o.id = b.org_id
LEFT JOIN ai_agents a ON a.id = b.agent_id
CROSS JOIN LATERAL runner_budget_spend(b) s
ORDER BY o.name, a.name NULLS FIRST, b.period, b.created_at
"""


def list_budgets(conn: psycopg.Connection[Any]) -> list[dict[str, Any]]:
    """:data:`BUDGETS_WITH_SPEND`, one dict a budget (the CLI's sync connection)."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(BUDGETS_WITH_SPEND)
        return cur.fetchall()
