"""The metrics/health server against a real pool: routes, health, cached DB figures."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from runner import metrics
from runner.http import HealthCheck, MetricsServer, Unhealthy
from runner.store import monitoring


def postgres_health_check(pool: AsyncConnectionPool, *, timeout: float = 2.0) -> HealthCheck:
    """A check that passes while a pooled connection answers ``SELECT 1``: a real
    check whose failures are real database errors (the daemon's own check reads its
    heartbeat state instead, without taking a connection)."""

    async def check() -> None:
        async with pool.connection(timeout=timeout) as conn:
            await monitoring.ping(conn)

    return check


def health_failures(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "runner.http" and r.msg == "health_failed"]


@pytest.fixture
async def server(pool: AsyncConnectionPool) -> AsyncIterator[MetricsServer]:
    async with MetricsServer(postgres_health_check(pool), host="127.0.0.1", port=0) as running:
        yield running


@pytest.fixture
async def unreachable_pool() -> AsyncIterator[AsyncConnectionPool]:
    """A real pool aimed at a port where nothing listens."""
    async with AsyncConnectionPool(
        "postgresql://postgres@127.0.0.1:1/nowhere", min_size=0, max_size=1, open=False,
        name="unreachable",
    ) as unreachable:
        await unreachable.open(wait=False)
        yield unreachable


@pytest.fixture
async def client(server: MetricsServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
        yield http


def task_gauges(text: str) -> dict[str, float]:
    return {
        sample.labels["status"]: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "agent_runner_tasks"
    }


def gauge(text: str, name: str) -> float:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                return sample.value
    raise AssertionError(f"{name} not in the scrape")


async def test_metrics_is_the_classic_text_exposition(
    server: MetricsServer, client: httpx.AsyncClient
) -> None:
    assert server.port > 0
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    names = {family.name for family in text_string_to_metric_families(response.text)}
    assert {"agent_runner_task_attempts_finished", "agent_runner_in_flight_tasks",
            "process_cpu_seconds"} <= names


async def test_healthz_is_ok_while_postgres_answers(client: httpx.AsyncClient) -> None:
    response = await client.get("/healthz")
    assert (response.status_code, response.text) == (200, "ok\n")


async def test_healthz_is_503_with_a_code_and_the_reason_only_in_the_log(
    unreachable_pool: AsyncConnectionPool, caplog: pytest.LogCaptureFixture,
) -> None:
    # The check's own pool timeout (0.5 s) fires before the server's (2 s), so the
    # reason is the pool's.
    check = postgres_health_check(unreachable_pool, timeout=0.5)
    async with MetricsServer(check, port=0) as server, httpx.AsyncClient() as http:
        response = await http.get(f"{server.url}/healthz")
    assert (response.status_code, response.text) == (503, "unhealthy: check_failed\n")
    (failure,) = health_failures(caplog)
    assert failure.levelno == logging.WARNING
    assert failure.code == "check_failed"  # type: ignore[attr-defined]
    assert failure.reason.startswith("PoolTimeout:")  # type: ignore[attr-defined]


async def test_an_unhealthy_verdict_shows_its_code_not_its_detail(
    caplog: pytest.LogCaptureFixture,
) -> None:
    detail = "database unreachable for 12 s: connection to db.internal:5432 refused"

    async def heartbeat_late() -> None:
        raise Unhealthy("heartbeat", detail)

    async with MetricsServer(heartbeat_late, port=0) as server, httpx.AsyncClient() as http:
        response = await http.get(f"{server.url}/healthz")
        head = await http.head(f"{server.url}/healthz")
    assert (response.status_code, response.text) == (503, "unhealthy: heartbeat\n")
    assert (head.status_code, head.content) == (503, b"")
    # Probes come every few seconds: the reason is logged once, not per probe.
    (failure,) = health_failures(caplog)
    assert (failure.code, failure.reason) == ("heartbeat", detail)  # type: ignore[attr-defined]


def test_a_health_code_is_a_short_token() -> None:
    with pytest.raises(ValueError, match="short lower-case token"):
        Unhealthy("database at db.internal is down", "detail")


async def test_healthz_is_503_when_the_check_hangs(caplog: pytest.LogCaptureFixture) -> None:
    async def hangs() -> None:
        await asyncio.Event().wait()

    async with MetricsServer(hangs, port=0, health_timeout=0.2) as server:
        async with httpx.AsyncClient() as http:
            response = await http.get(f"{server.url}/healthz")
            assert (response.status_code, response.text) == (503, "unhealthy: check_timeout\n")
            # the server is not stuck behind a hung check
            assert (await http.get(f"{server.url}/metrics")).status_code == 200
    (failure,) = health_failures(caplog)
    assert failure.reason == "health check timed out after 0.2s"  # type: ignore[attr-defined]


async def test_healthz_logs_the_reason_on_one_line_and_its_recovery(
    caplog: pytest.LogCaptureFixture,
) -> None:
    down = True

    async def check() -> None:
        if down:
            raise RuntimeError("database\nis\n  down")

    caplog.set_level(logging.INFO, logger="runner.http")
    async with MetricsServer(check, port=0) as server, httpx.AsyncClient() as http:
        response = await http.get(f"{server.url}/healthz")
        assert (response.status_code, response.text) == (503, "unhealthy: check_failed\n")
        down = False
        assert (await http.get(f"{server.url}/healthz")).status_code == 200
    (failure,) = health_failures(caplog)
    assert failure.reason == "RuntimeError: database is down"  # type: ignore[attr-defined]
    assert "health_recovered" in [r.msg for r in caplog.records if r.name == "runner.http"]


async def test_routes_methods_and_head(client: httpx.AsyncClient) -> None:
    assert (await client.get("/")).status_code == 404
    assert (await client.get("/metrics/extra")).status_code == 404
    assert (await client.get("/metrics?debug=1")).status_code == 200
    refused = await client.post("/metrics", content=b"x")
    assert refused.status_code == 405
    assert refused.headers["allow"] == "GET, HEAD"
    head = await client.head("/healthz")
    assert (head.status_code, head.content, head.headers["content-length"]) == (200, b"", "3")


async def test_malformed_and_oversized_requests_are_refused(server: MetricsServer) -> None:
    async def raw(request: bytes) -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(request)
        await writer.drain()
        answer = await reader.read()
        writer.close()
        await writer.wait_closed()
        return answer

    assert (await raw(b"NONSENSE\r\n\r\n")).startswith(b"HTTP/1.1 400 ")
    huge = b"GET /metrics HTTP/1.1\r\nX-Pad: " + b"a" * 20_000 + b"\r\n\r\n"
    assert (await raw(huge)).startswith(b"HTTP/1.1 431 ")


async def test_cached_task_counts_follow_the_database(
    pool: AsyncConnectionPool, client: httpx.AsyncClient
) -> None:
    async with pool.connection() as conn:
        await conn.execute("INSERT INTO ai_agents (name, agent_type) VALUES ('x', 'noop')")
        ids = [
            (await (await conn.execute("SELECT enqueue_agent_task('x')")).fetchone())[0]  # type: ignore[index]
            for _ in range(3)
        ]
        await conn.execute("SELECT cancel_agent_task(%s)", (ids[0],))
    await metrics.refresh_task_counts(pool)

    text = (await client.get("/metrics")).text
    assert task_gauges(text) == {
        "pending": 2, "processing": 0, "completed": 0, "failed": 0, "cancelled": 1}
    assert gauge(text, "agent_runner_paused") == 0

    # Cached: a change in the database shows only after the next refresh.
    async with pool.connection() as conn:
        await conn.execute("SELECT enqueue_agent_task('x')")
        await conn.execute("UPDATE runner_control SET paused = true")
    assert task_gauges((await client.get("/metrics")).text)["pending"] == 2
    await metrics.refresh_task_counts(pool)
    text = (await client.get("/metrics")).text
    assert task_gauges(text)["pending"] == 3
    assert gauge(text, "agent_runner_paused") == 1


async def test_queue_age_gauges(pool: AsyncConnectionPool, client: httpx.AsyncClient) -> None:
    async with pool.connection() as conn:
        await conn.execute(
            "INSERT INTO ai_agents (name, agent_type, timeout_seconds) VALUES ('x', 'noop', 60)")
        for offset in ("-10 minutes", "1 hour"):
            await conn.execute(
                "SELECT enqueue_agent_task('x', scheduled_for => now() + %s::interval)", (offset,))
        # A task left processing for an hour with no attempt row (the rescuer and the
        # executor's timeout both failed): the state the overdue alert is for.
        await conn.execute(
            "UPDATE agent_tasks SET status = 'processing', updated_at = now() - interval '1 hour' "
            "WHERE scheduled_for > now()")
    await metrics.refresh_task_counts(pool)

    text = (await client.get("/metrics")).text
    assert 600 <= gauge(text, "agent_runner_oldest_pending_age_seconds") < 700
    assert 3600 <= gauge(text, "agent_runner_oldest_processing_age_seconds") < 3700
    assert 3540 <= gauge(text, "agent_runner_processing_overdue_seconds") < 3640


async def test_a_failed_refresh_keeps_the_last_snapshot_and_counts_the_error(
    pool: AsyncConnectionPool, unreachable_pool: AsyncConnectionPool
) -> None:
    await metrics.refresh_task_counts(pool)
    taken = metrics.REGISTRY.get_sample_value("agent_runner_db_snapshot_timestamp_seconds")
    errors = metrics.REGISTRY.get_sample_value("agent_runner_db_snapshot_errors_total") or 0
    with pytest.raises(PoolTimeout):
        await metrics.refresh_task_counts(unreachable_pool, pool_timeout=0.3)
    assert metrics.REGISTRY.get_sample_value("agent_runner_db_snapshot_timestamp_seconds") == taken
    assert metrics.REGISTRY.get_sample_value("agent_runner_db_snapshot_errors_total") == errors + 1


async def test_stop_closes_the_port(pool: AsyncConnectionPool) -> None:
    server = MetricsServer(postgres_health_check(pool), port=0)
    await server.start()
    port = server.port
    # a connection that never sends its request must not hold up stop()
    _reader, idle = await asyncio.open_connection("127.0.0.1", port)
    await server.stop()
    idle.close()
    await idle.wait_closed()
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", port)
    with pytest.raises(RuntimeError):
        _ = server.port
    await server.stop()  # idempotent
