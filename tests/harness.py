"""Helpers shared by the tests: run one attempt in-process, wait on conditions,
start the real daemon as a subprocess."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx
import psycopg
from psycopg_pool import AsyncConnectionPool

from agents.llm import RetryPolicy
from runner.executor import Executor
from runner.outcomes import Outcome
from runner.plugins import Registry, load_registry
from runner.settings import Settings

REPO = Path(__file__).resolve().parent.parent
#: The LLM retry policy of in-process tests: the same rules, with waits of milliseconds.
FAST_LLM_POLICY = RetryPolicy(
    rate_limit_max_wait=2.0, rate_limit_budget=5.0, rate_limit_default_wait=0.05,
    transient_retries=2, backoff_base=0.01, backoff_max=0.05, request_timeout=10.0,
)


def test_settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {"RUNNER_RETRY_BASE_DELAY": 0.05, "RUNNER_RETRY_MAX_DELAY": 0.2}
    values.update(overrides)
    return Settings(**values)


test_settings.__test__ = False  # type: ignore[attr-defined]  # a helper, not a test


async def run_task_inline(
    pool: AsyncConnectionPool,
    task_id: UUID | str,
    *,
    registry: Registry | None = None,
    settings: Settings | None = None,
) -> Outcome:
    """Run the task's current attempt in this process, as a daemon would (no worker)."""
    task_id = UUID(str(task_id))
    async with pool.connection() as conn:
        row = await (
            await conn.execute("SELECT job_id FROM agent_tasks WHERE id = %s", (task_id,))
        ).fetchone()
    assert row is not None and row[0] is not None, "task has no pending job"
    async with httpx.AsyncClient(timeout=10) as http:
        executor = Executor(
            pool=pool,
            settings=settings or test_settings(),
            registry=registry or load_registry(),
            http=http,
        )
        return (await executor.run_job(task_id, int(row[0]))).outcome


def wait_until(
    predicate: Callable[[], Any], *, timeout: float = 30.0, interval: float = 0.05,
    message: str = "condition",
) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {message}")
        time.sleep(interval)


async def await_until(
    predicate: Callable[[], Awaitable[Any]], *, within: float = 30.0, interval: float = 0.05,
    message: str = "condition",
) -> Any:
    deadline = time.monotonic() + within
    while True:
        value = await predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within} s waiting for {message}")
        await asyncio.sleep(interval)


def query(db_url: str, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
    with psycopg.connect(db_url, autocommit=True) as conn:
        return conn.execute(sql, params).fetchall()  # type: ignore[arg-type]


def task_state(conn: psycopg.Connection[Any], task_id: str) -> tuple[Any, ...]:
    """(status, retry_count, output, error_message) of one task."""
    row = conn.execute(
        "SELECT status, retry_count, output, error_message FROM agent_tasks WHERE id = %s",
        (task_id,),
    ).fetchone()
    assert row, f"no task {task_id}"
    return row


def daemon_env(db_url: str, **overrides: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "DATABASE_URL": db_url,
        "RUNNER_METRICS_ADDR": "127.0.0.1:0",
        "RUNNER_POLL_INTERVAL": "0.5",
        "RUNNER_HEARTBEAT_INTERVAL": "1",
        "RUNNER_RESCUE_AFTER": "5",
        "RUNNER_SHUTDOWN_GRACE": "5",
        "RUNNER_RETRY_BASE_DELAY": "0.2",
        "RUNNER_LOG_FORMAT": "json",
        "PYTHONUNBUFFERED": "1",
    })
    env.pop("NOTIFY_SOCKET", None)
    env.pop("WATCHDOG_USEC", None)
    env.update(overrides)
    return env


class DaemonProcess:
    """``agent-runner run`` as a real subprocess, its stderr kept in a file.
    ``preexec_fn`` runs in the child before the daemon starts (``setrlimit``, say)."""

    def __init__(
        self, db_url: str, log_path: Path, *, preexec_fn: Callable[[], None] | None = None,
        **env: str,
    ) -> None:
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "runner.cli", "run"],
            cwd=REPO,
            env=daemon_env(db_url, **env),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=preexec_fn,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout=timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)
        self._log.close()


@contextmanager
def daemons(
    db_url: str, tmp_path: Path, count: int = 1, *,
    preexec_fn: Callable[[], None] | None = None, **env: str,
) -> Iterator[list[DaemonProcess]]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    started = [DaemonProcess(db_url, tmp_path / f"daemon-{i}.log", preexec_fn=preexec_fn, **env)
               for i in range(count)]
    try:
        yield started
    finally:
        for daemon in started:
            daemon.stop()


def wait_for_daemons(db_url: str, count: int, timeout: float = 30.0) -> None:
    wait_until(
        lambda: query(db_url, "SELECT count(*) FROM runner_workers")[0][0] >= count,
        timeout=timeout, message=f"{count} daemon(s) registered",
    )
