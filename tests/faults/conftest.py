"""Fixtures of the fault suite: a throw-away PostgreSQL per test module, a migrated
database on it per test, and what every fault test asserts at the end."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from runner.migrate import migrate
from tests.faults.pgserver import ThrowawayPostgres, find_bindir, throwaway_postgres

pytestmark = pytest.mark.skipif(find_bindir() is None, reason="no PostgreSQL server binaries")


@pytest.fixture(scope="module")
def pg_server() -> Iterator[ThrowawayPostgres]:
    if find_bindir() is None:
        pytest.skip("no PostgreSQL server binaries (initdb, pg_ctl) installed")
    with throwaway_postgres() as server:
        yield server


@pytest.fixture(scope="module")
def fault_template(pg_server: ThrowawayPostgres) -> str:
    name = f"fault_tmpl_{secrets.token_hex(3)}"
    migrate(pg_server.create_database(name))
    return name


@pytest.fixture
def fault_db(pg_server: ThrowawayPostgres, fault_template: str) -> Iterator[tuple[str, str]]:
    """(url, dbname) of a fresh migrated database on the throw-away server."""
    name = f"fault_{secrets.token_hex(4)}"
    with psycopg.connect(pg_server.url(), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name} TEMPLATE {fault_template}")  # type: ignore[arg-type]
    yield pg_server.url(name), name


def enqueue_noops(db_url: str, count: int, *, sleep: float = 0.0, agent: str = "worker"
                  ) -> list[str]:
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("INSERT INTO ai_agents (name, agent_type) VALUES (%s, 'noop') "
                     "ON CONFLICT DO NOTHING", (agent,))
        rows = conn.execute(
            "SELECT enqueue_agent_task(%s, jsonb_build_object('sleep_seconds', %s::float8)) "
            "FROM generate_series(1, %s)", (agent, sleep, count)).fetchall()
    return [str(row[0]) for row in rows]


def counts(db_url: str) -> dict[str, Any]:
    """Task statuses, and attempts that completed more than once (must be none)."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        by_status = dict(conn.execute(  # type: ignore[arg-type]
            "SELECT status, count(*) FROM agent_tasks GROUP BY status").fetchall())
        twice = conn.execute(
            "SELECT count(*) FROM (SELECT task_id FROM agent_executions "
            "WHERE status = 'completed' GROUP BY task_id HAVING count(*) > 1) d").fetchone()
    return {"status": by_status, "completed_twice": twice[0] if twice else None}


def assert_all_completed_once(db_url: str, expected: int) -> None:
    state = counts(db_url)
    assert state["status"] == {"completed": expected}, state
    assert state["completed_twice"] == 0, state
