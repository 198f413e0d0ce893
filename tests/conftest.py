"""Shared fixtures: a real Postgres, a migrated template database, one clone per test.

The server comes from ``AGENT_RUNNER_TEST_ADMIN_URL`` (``scripts/test.sh`` sets it,
starting a throw-away server when none answers); the default is the local one.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator, Iterator
from typing import Any

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from runner.migrate import migrate
from runner.store.text import make_storable

ADMIN_URL = os.environ.get(
    "AGENT_RUNNER_TEST_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)


def database_url(name: str) -> str:
    info = psycopg.conninfo.conninfo_to_dict(ADMIN_URL)
    info["dbname"] = name
    return psycopg.conninfo.make_conninfo(**info)  # type: ignore[arg-type]


def _admin(statement: str) -> None:
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(statement)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def template_db() -> Iterator[str]:
    name = f"ar_tmpl_{os.getpid()}_{secrets.token_hex(3)}"
    _admin(f"CREATE DATABASE {name}")
    try:
        migrate(database_url(name))
        yield name
    finally:
        _admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def db_url(template_db: str) -> Iterator[str]:
    """A fresh, migrated database for one test (a clone of the template)."""
    name = f"ar_t_{secrets.token_hex(6)}"
    _admin(f"CREATE DATABASE {name} TEMPLATE {template_db}")
    try:
        yield database_url(name)
    finally:
        _admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def empty_db_url() -> Iterator[str]:
    """A database with no schema at all, for migration tests."""
    name = f"ar_e_{secrets.token_hex(6)}"
    _admin(f"CREATE DATABASE {name}")
    try:
        yield database_url(name)
    finally:
        _admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def conn(db_url: str) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    with psycopg.connect(db_url, autocommit=True) as connection:
        yield connection


async def _autocommit(connection: psycopg.AsyncConnection[Any]) -> None:
    # As the daemon's pool does (runner/daemon.py).
    await connection.set_autocommit(True)
    make_storable(connection)


@pytest.fixture
async def pool(db_url: str) -> AsyncIterator[AsyncConnectionPool]:
    async with AsyncConnectionPool(
        db_url, min_size=1, max_size=8, open=False, configure=_autocommit
    ) as p:
        await p.wait()
        yield p
