"""The engine's one SQL home: every query the runner sends, one module per concern.

* :mod:`~runner.store.attempts` -- claim, finish, log lines, the LLM ledger (fenced)
* :mod:`~runner.store.daemons` -- registration, heartbeat, pause switch, rescue
* :mod:`~runner.store.cron` -- schedules and the claim of each fire
* :mod:`~runner.store.workflows` -- workflow runs and their step tree
* :mod:`~runner.store.operator` -- what the CLI reads and calls (sync connections)
* :mod:`~runner.store.monitoring` -- the figures behind the gauges, the health probe
* :mod:`~runner.store.channels` -- the LISTEN/NOTIFY channel names
* :mod:`~runner.store.agent_types` -- the agent types plugins registered (migrate, start)
* :mod:`~runner.store.webhooks` -- webhook endpoints, claims and records of attempts
* :mod:`~runner.store.retention` -- the prune of finished history past retention
* :mod:`~runner.store.journal` -- the LLM journal: durable turns, the transcript
* :mod:`~runner.store.llm` -- LLM budget reservations, the provider limiter's buckets
* :mod:`~runner.store.text` -- NUL-free text and JSON on every connection (no SQL)

Outside this package only ``runner.migrate`` sends SQL (the migration files). The rules
themselves (enqueue, finish, dependents, cron dedup) are SQL functions in ``sql/``;
these modules call them. A query that both the async daemon and the sync CLI need is
one text here, executed by each.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import psycopg

#: The daemon's connections (pooled, autocommit).
Conn = psycopg.AsyncConnection[Any]
#: The CLI's connection (autocommit).
SyncConn = psycopg.Connection[Any]


@contextlib.asynccontextmanager
async def bounded(
    conn: Conn, *, statement_timeout: float, lock_timeout: float | None = None
) -> AsyncIterator[None]:
    """A transaction whose statements each end after ``statement_timeout`` seconds (and
    give up waiting for a lock after ``lock_timeout``).

    The settings are ``SET LOCAL``: they last until this transaction ends. On the
    daemon's autocommit connections a ``set_config(..., true)`` outside a transaction
    would last only for its own implicit transaction, and bound nothing after it.
    """
    async with conn.transaction():
        await conn.execute(
            "SELECT set_config('statement_timeout', %s, true), "
            "set_config('lock_timeout', coalesce(%s, current_setting('lock_timeout')), true)",
            (f"{max(1, round(statement_timeout * 1000))}ms",
             None if lock_timeout is None else f"{max(1, round(lock_timeout * 1000))}ms"))
        yield
