"""Schema migrations: procrastinate's schema at the pinned version, then ``sql/NNNN_*.sql``.

Applied under a transaction-level advisory lock, so several daemons or operators
running ``agent-runner migrate`` at once serialise and the later ones find nothing to do.
Each file runs in the same transaction as its bookkeeping row: a failed migration
leaves no trace.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.resources
import re
from dataclasses import dataclass
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from runner.errors import MigrationChanged, SchemaBehind

# Any fixed number will do; it only has to be the same for every agent-runner.
_MIGRATION_LOCK_KEY = 0x4147454E_5452554E  # "AGENTRUN"
_MIGRATION_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")
_PROCRASTINATE_NAME = re.compile(r"^(\d{2})\.(\d{2})\.(\d{2})_(\d{2})_.+\.sql$")


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    text: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()


def bundled_migrations() -> list[Migration]:
    """The migrations shipped in this build (``runner.sql`` in the wheel)."""
    found = []
    for entry in _migrations_dir().iterdir():
        match = _MIGRATION_NAME.match(entry.name)
        if match:
            found.append(Migration(int(match.group(1)), entry.name, entry.read_text("utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise RuntimeError(f"duplicate migration numbers in {[m.name for m in found]}")
    return found


def _migrations_dir() -> Traversable:
    """``runner.sql`` in an installed wheel; the repository's ``sql/`` in a checkout
    (where the source ``runner`` package shadows the installed one)."""
    try:
        return importlib.resources.files("runner.sql")
    except ModuleNotFoundError:
        return Path(__file__).resolve().parent.parent / "sql"


def procrastinate_version() -> tuple[int, int, int]:
    major, minor, patch = importlib.metadata.version("procrastinate").split(".")[:3]
    return int(major), int(minor), int(patch)


def _procrastinate_upgrades(since: tuple[int, int, int]) -> list[tuple[str, str]]:
    """procrastinate's own migration files newer than ``since``, in order."""
    upgrades = []
    for entry in importlib.resources.files("procrastinate.sql.migrations").iterdir():
        match = _PROCRASTINATE_NAME.match(entry.name)
        if match:
            version = (int(match.group(1)), int(match.group(2)), int(match.group(3)))
            if since < version <= procrastinate_version():
                upgrades.append((entry.name, entry.read_text("utf-8")))
    upgrades.sort()
    return upgrades


_BOOKKEEPING = """
CREATE TABLE IF NOT EXISTS runner_migrations (
    version integer PRIMARY KEY,
    name text NOT NULL,
    checksum text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS runner_procrastinate_schema (
    id boolean PRIMARY KEY DEFAULT true CHECK (id),
    version text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);
"""


def _version_text(version: tuple[int, int, int]) -> str:
    return ".".join(str(part) for part in version)


def migrate(conninfo: str) -> list[str]:
    """Bring the database up to date. Returns what was applied (empty when current)."""
    applied: list[str] = []
    with psycopg.connect(conninfo, autocommit=False) as conn:
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK_KEY,))
        conn.execute(_BOOKKEEPING)
        applied += _migrate_procrastinate(conn)
        done = {row[0]: row[1] for row in conn.execute(
            "SELECT version, checksum FROM runner_migrations")}
        _refuse_changed(done)
        for migration in bundled_migrations():
            if migration.version in done:
                continue
            conn.execute(sql.SQL(migration.text))  # type: ignore[arg-type,unused-ignore]
            conn.execute(
                "INSERT INTO runner_migrations (version, name, checksum) VALUES (%s, %s, %s)",
                (migration.version, migration.name, migration.checksum),
            )
            applied.append(migration.name)
        conn.commit()
    return applied


def _migrate_procrastinate(conn: psycopg.Connection[Any]) -> list[str]:
    row = conn.execute("SELECT version FROM runner_procrastinate_schema").fetchone()
    pinned = _version_text(procrastinate_version())
    if row is None:
        exists = conn.execute("SELECT to_regclass('procrastinate_jobs') IS NOT NULL").fetchone()
        if exists and exists[0]:
            raise RuntimeError(
                "procrastinate tables exist but were not installed by agent-runner; "
                "their version is unknown, refusing to guess"
            )
        schema = importlib.resources.files("procrastinate.sql").joinpath("schema.sql")
        conn.execute(schema.read_text("utf-8"))  # type: ignore[arg-type,unused-ignore]
        conn.execute("INSERT INTO runner_procrastinate_schema (version) VALUES (%s)", (pinned,))
        return [f"procrastinate schema {pinned}"]
    if row[0] == pinned:
        return []
    installed = tuple(int(part) for part in row[0].split("."))
    names = []
    for name, text in _procrastinate_upgrades(installed):  # type: ignore[arg-type]
        conn.execute(text)  # type: ignore[arg-type,unused-ignore]
        names.append(f"procrastinate {name}")
    conn.execute(
        "UPDATE runner_procrastinate_schema SET version = %s, applied_at = now()", (pinned,)
    )
    return names


def pending_migrations(conninfo: str | psycopg.Connection[Any]) -> list[str]:
    """Names of the migrations this build has that the database lacks (given a URL, or
    an autocommit connection the caller already holds)."""
    if isinstance(conninfo, str):
        with psycopg.connect(conninfo, autocommit=True) as conn:
            return pending_migrations(conn)
    conn = conninfo
    present = conn.execute(
        "SELECT to_regclass('runner_migrations') IS NOT NULL, "
        "to_regclass('runner_procrastinate_schema') IS NOT NULL"
    ).fetchone()
    if not present or not present[0] or not present[1]:
        return ["procrastinate schema"] + [m.name for m in bundled_migrations()]
    done = {row[0] for row in conn.execute("SELECT version FROM runner_migrations")}
    missing = [m.name for m in bundled_migrations() if m.version not in done]
    row = conn.execute("SELECT version FROM runner_procrastinate_schema").fetchone()
    if row is None or row[0] != _version_text(procrastinate_version()):
        missing.insert(0, "procrastinate schema")
    return missing


def _refuse_changed(applied: dict[int, str]) -> None:
    """Raise :class:`MigrationChanged` when a bundled migration differs from the one
    the database applied under its number (by checksum)."""
    changed = [m.name for m in bundled_migrations()
               if m.version in applied and applied[m.version] != m.checksum]
    if changed:
        raise MigrationChanged(
            f"migration {', '.join(changed)} differs from the one this database applied "
            "(checksum mismatch): a landed migration must never be edited; restore the "
            "file and put the change in a new numbered migration"
        )


def check_schema_current(conninfo: str | psycopg.Connection[Any]) -> None:
    """Raise :class:`SchemaBehind` when migrations are missing, and
    :class:`MigrationChanged` when an applied one was edited since."""
    if isinstance(conninfo, str):
        with psycopg.connect(conninfo, autocommit=True) as conn:
            check_schema_current(conn)
            return
    present = conninfo.execute("SELECT to_regclass('runner_migrations') IS NOT NULL").fetchone()
    if present and present[0]:
        _refuse_changed(dict(conninfo.execute(
            "SELECT version, checksum FROM runner_migrations").fetchall()))
    missing = pending_migrations(conninfo)
    if missing:
        raise SchemaBehind(
            "the database schema is behind this agent-runner "
            f"(missing: {', '.join(missing)}); run `agent-runner migrate` first"
        )
