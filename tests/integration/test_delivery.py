"""The claim gate (``runner.delivery.ClaimGate``) against the real delivery engine: when
several slots are free, one round trip fetches a job for each; jobs fetched for slots
the worker never filled go back to the queue."""

from __future__ import annotations

import asyncio
import types
from collections.abc import AsyncIterator
from typing import Any, cast

import procrastinate
import psycopg
import pytest
from procrastinate.worker import Worker
from psycopg_pool import AsyncConnectionPool

from runner.delivery import QUEUE, ClaimGate

Conn = psycopg.Connection[tuple[Any, ...]]


@pytest.fixture
async def gate(pool: AsyncConnectionPool) -> AsyncIterator[ClaimGate]:
    app = procrastinate.App(connector=procrastinate.PsycopgConnector())
    await app.open_async(pool=pool)
    yield ClaimGate(app.connector, free_slots=lambda: 8)


def _enqueue(conn: Conn, count: int) -> None:
    conn.execute("INSERT INTO ai_agents (name, agent_type) VALUES ('n', 'noop')")
    conn.execute("SELECT enqueue_agent_task('n', '{}'::jsonb) FROM generate_series(1, %s)",
                 (count,))


def _statuses(conn: Conn) -> dict[str, int]:
    return dict(conn.execute("SELECT status::text, count(*) FROM procrastinate_jobs "
                             "GROUP BY 1").fetchall())


def _free_slots(gate: ClaimGate, free: int) -> None:
    """The worker the gate serves, as far as the gate looks at it: its slots."""
    gate.worker = cast(Worker, types.SimpleNamespace(_job_semaphore=asyncio.Semaphore(free)))


async def test_one_round_trip_fetches_a_job_for_each_free_slot(
    gate: ClaimGate, conn: Conn
) -> None:
    _enqueue(conn, 5)
    worker_id = await gate.register_worker()
    _free_slots(gate, 2)  # this fetch's slot and two more
    first = await gate.fetch_job([QUEUE], worker_id)
    assert first is not None
    assert _statuses(conn) == {"doing": 3, "todo": 2}
    # The worker's next two fetches are served without the database.
    second = await gate.fetch_job([QUEUE], worker_id)
    third = await gate.fetch_job([QUEUE], worker_id)
    assert second is not None and third is not None
    assert len({first.id, second.id, third.id}) == 3
    assert _statuses(conn) == {"doing": 3, "todo": 2}
    # The buffer is empty: the next fetch goes to the database again.
    _free_slots(gate, 0)
    fourth = await gate.fetch_job([QUEUE], worker_id)
    assert fourth is not None and fourth.id not in {first.id, second.id, third.id}
    assert _statuses(conn) == {"doing": 4, "todo": 1}


async def test_jobs_fetched_for_slots_never_filled_go_back_to_the_queue(
    gate: ClaimGate, conn: Conn
) -> None:
    _enqueue(conn, 3)
    worker_id = await gate.register_worker()
    _free_slots(gate, 2)
    assert await gate.fetch_job([QUEUE], worker_id) is not None
    assert _statuses(conn) == {"doing": 3}
    await gate.hand_back_fetched()  # the worker stopped before asking for them
    assert _statuses(conn) == {"doing": 1, "todo": 2}
    _free_slots(gate, 0)
    again = await gate.fetch_job([QUEUE], worker_id)
    assert again is not None
    assert _statuses(conn) == {"doing": 2, "todo": 1}


async def test_a_paused_gate_fetches_nothing(gate: ClaimGate, conn: Conn) -> None:
    _enqueue(conn, 2)
    worker_id = await gate.register_worker()
    gate.paused = True
    assert await gate.fetch_job([QUEUE], worker_id) is None
    assert _statuses(conn) == {"todo": 2}
