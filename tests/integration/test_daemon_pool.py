"""The daemon's pool checks a connection at checkout unless it was returned moments ago
(``runner.daemon.DaemonPool``): a connection that broke while idle is replaced, and a busy
daemon does not pay a round trip on every checkout."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from runner.daemon import DaemonPool


async def _backend_pid(pool: DaemonPool) -> int:
    async with pool.connection() as conn:
        row = await (await conn.execute("SELECT pg_backend_pid()")).fetchone()
        assert row is not None
        return int(row[0])


async def test_an_idle_connection_broken_meanwhile_is_replaced_at_checkout(db_url: str) -> None:
    async with DaemonPool(db_url, min_size=1, max_size=1, open=False,
                          kwargs={"autocommit": True}) as pool:
        await pool.wait()
        first = await _backend_pid(pool)
        with psycopg.connect(db_url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (first,))
        await asyncio.sleep(DaemonPool.CHECK_BYPASS_SECONDS + 0.2)
        # Checked (returned longer ago than the window): replaced, the statement works.
        assert await _backend_pid(pool) != first


async def test_a_connection_returned_moments_ago_is_not_checked_again(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    checks: list[Any] = []
    real_check = AsyncConnectionPool.check_connection

    async def counting(conn: Any) -> None:
        checks.append(conn)
        await real_check(conn)

    monkeypatch.setattr(AsyncConnectionPool, "check_connection", staticmethod(counting))
    async with DaemonPool(db_url, min_size=1, max_size=1, open=False,
                          kwargs={"autocommit": True}) as pool:
        await pool.wait()
        await _backend_pid(pool)  # a new connection: checked
        assert len(checks) == 1
        for _ in range(5):
            await _backend_pid(pool)
        assert len(checks) == 1
        await asyncio.sleep(DaemonPool.CHECK_BYPASS_SECONDS + 0.1)
        await _backend_pid(pool)
        assert len(checks) == 2
