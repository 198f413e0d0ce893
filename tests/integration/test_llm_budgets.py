"""LLM budgets and the shared provider limiter (CONTRACT.md "LLM budgets and limits"):
real executor, real Postgres, the real ``anthropic`` client against the stand-in."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from agents.llm_agent import LLMAgent
from runner import cli, metrics
from runner.outcomes import Outcome
from runner.plugins import Registry
from runner.settings import Settings
from tests.harness import FAST_LLM_POLICY as FAST
from tests.harness import await_until, run_task_inline, task_state, test_settings
from tests.standins.anthropic_api import AnthropicStandIn, Reply, error, text, tool_use

Conn = psycopg.Connection[tuple[Any, ...]]

MODEL = "claude-sonnet-4-6"
#: What _looping's calls are billed (10,000 input tokens at claude-sonnet-4-6's $3 / MTok),
#: well above their estimate (the real request is small), so a budget can be crossed.
CALL_COST = Decimal("0.03")


def _registry() -> Registry:
    return Registry([LLMAgent(policy=FAST)])


def _agent(conn: Conn, *, name: str = "analyst", max_cost_usd: str | None = None,
           max_steps: int = 20, max_tokens: int = 1000) -> str:
    row = conn.execute(
        "INSERT INTO ai_agents (name, agent_type, model, instructions_prompt, tool_names, "
        "max_agent_steps, configuration, max_cost_usd) "
        "VALUES (%s, 'llm_agent', %s, 'Be brief.', %s, %s, %s, %s) RETURNING id",
        (name, MODEL, ["get_company"], max_steps, json.dumps({"max_tokens": max_tokens}),
         max_cost_usd),
    ).fetchone()
    assert row
    return str(row[0])


def _enqueue(conn: Conn, name: str = "analyst") -> str:
    row = conn.execute("SELECT enqueue_agent_task(%s, %s::jsonb)",
                       (name, json.dumps({"prompt": "Look up 00000001."}))).fetchone()
    assert row
    return str(row[0])


def _budget(conn: Conn, agent_id: str | None, limit_usd: str, period: str = "day") -> str:
    row = conn.execute(
        "INSERT INTO llm_budgets (agent_id, period, limit_usd) VALUES (%s, %s, %s) "
        "RETURNING id", (agent_id, period, limit_usd)).fetchone()
    assert row
    return str(row[0])


def _looping(body: dict[str, Any]) -> Reply:
    """A model that asks for a tool for ever, each call billed CALL_COST."""
    return tool_use("get_company", {"company_number": "00000001"}, input_tokens=10_000)


def _spend(conn: Conn, agent_id: str) -> tuple[Decimal, int]:
    row = conn.execute("SELECT coalesce(sum(cost_usd), 0), count(*) FROM llm_calls "
                       "WHERE agent_id = %s", (agent_id,)).fetchone()
    assert row
    return row[0], row[1]


def _metric(name: str) -> float:
    """A series' total over its labels, in this process's registry."""
    return sum(sample.value for family in metrics.REGISTRY.collect()
               for sample in family.samples if sample.name == name)


def _deferrals() -> float:
    return _metric("agent_runner_budget_deferrals_total")


def _next_utc_midnight(now: dt.datetime) -> dt.datetime:
    return dt.datetime.combine(now.astimezone(dt.UTC).date() + dt.timedelta(days=1),
                               dt.time(), tzinfo=dt.UTC)


# Budgets -----------------------------------------------------------------------------


async def test_concurrent_attempts_overshoot_a_budget_by_at_most_one_call_each(
    conn: Conn, pool: AsyncConnectionPool, api: AnthropicStandIn, settings: Settings
) -> None:
    agent_id = _agent(conn)
    limit = Decimal("0.10")
    budget_id = _budget(conn, agent_id, str(limit))
    api.default = _looping
    api.latency = 0.05
    tasks = [_enqueue(conn) for _ in range(2)]

    outcomes = await asyncio.gather(*(
        run_task_inline(pool, task, registry=_registry(), settings=settings)
        for task in tasks))

    assert outcomes == [Outcome.DEFERRED, Outcome.DEFERRED]
    spent, calls = _spend(conn, agent_id)
    assert calls >= 2
    # Each attempt may be one call past the limit, no more.
    assert spent <= limit + 2 * CALL_COST + Decimal("0.001")
    tomorrow = _next_utc_midnight(dt.datetime.now(dt.UTC))
    for task in tasks:
        status, retry_count, _, message = task_state(conn, task)
        assert (status, retry_count) == ("pending", 0)
        assert message.startswith("budget reached: agent 'analyst' day budget")
        assert budget_id in message
        assert f"deferred until {tomorrow:%Y-%m-%dT%H:%M:%SZ}" in message
        row = conn.execute("SELECT scheduled_for FROM agent_tasks WHERE id = %s",
                           (task,)).fetchone()
        # due at the period's start (the delay is measured against the daemon's clock)
        assert row and abs((row[0] - tomorrow).total_seconds()) < 5
    # Nothing stays reserved once the attempts are over.
    assert conn.execute("SELECT count(*) FROM llm_budget_reservations").fetchone() == (0,)


async def test_raising_the_budget_releases_deferred_tasks_at_once(
    conn: Conn, pool: AsyncConnectionPool, api: AnthropicStandIn, settings: Settings
) -> None:
    agent_id = _agent(conn)
    budget_id = _budget(conn, agent_id, "0.01")
    # The organization has spent its agent's day already.
    conn.execute(
        "INSERT INTO llm_calls (agent_id, call_index, model, cost_usd, price_version) "
        "VALUES (%s, 1, %s, 0.02, 'test')", (agent_id, MODEL))
    task = _enqueue(conn)
    assert await run_task_inline(
        pool, task, registry=_registry(), settings=settings) is Outcome.DEFERRED
    assert api.message_requests() == []
    row = conn.execute("SELECT scheduled_for > now() + interval '1 minute' FROM agent_tasks "
                       "WHERE id = %s", (task,)).fetchone()
    assert row == (True,)

    conn.execute("UPDATE llm_budgets SET limit_usd = 5 WHERE id = %s", (budget_id,))

    row = conn.execute(
        "SELECT t.scheduled_for <= now(), j.status, coalesce(j.scheduled_at <= now(), true) "
        "FROM agent_tasks t JOIN procrastinate_jobs j ON j.id = t.job_id WHERE t.id = %s",
        (task,)).fetchone()
    assert row == (True, "todo", True)
    api.enqueue(text("Done."))
    assert await run_task_inline(
        pool, task, registry=_registry(), settings=settings) is Outcome.COMPLETED
    assert task_state(conn, task)[:2] == ("completed", 0)


async def test_an_organization_budget_defers_and_removing_it_releases(
    conn: Conn, pool: AsyncConnectionPool, api: AnthropicStandIn, settings: Settings
) -> None:
    _agent(conn)
    budget_id = _budget(conn, None, "0", period="month")
    conn.execute("INSERT INTO webhook_endpoints (url, events) "
                 "VALUES ('https://hooks.example/budget', '{budget.reached}')")
    deferrals = _deferrals()
    task = _enqueue(conn)
    assert await run_task_inline(
        pool, task, registry=_registry(), settings=settings) is Outcome.DEFERRED
    message = task_state(conn, task)[3]
    assert message.startswith("budget reached: organization month budget")
    assert _deferrals() == deferrals + 1
    event = conn.execute("SELECT payload FROM webhook_events WHERE event_type = "
                         "'budget.reached'").fetchone()
    assert event and event[0]["budget_id"] == budget_id and event[0]["task_id"] == task
    conn.execute("DELETE FROM llm_budgets WHERE id = %s", (budget_id,))
    row = conn.execute("SELECT scheduled_for <= now() FROM agent_tasks WHERE id = %s",
                       (task,)).fetchone()
    assert row == (True,)


async def test_max_cost_usd_fails_the_task_for_good_mid_loop(
    conn: Conn, pool: AsyncConnectionPool, api: AnthropicStandIn, settings: Settings
) -> None:
    # Estimate per call: about $0.015 (1,000 output tokens) + a little input.
    _agent(conn, max_cost_usd="0.1")
    api.default = _looping
    task = _enqueue(conn)

    outcome = await run_task_inline(pool, task, registry=_registry(), settings=settings)

    assert outcome is Outcome.FAILED
    status, retry_count, _, message = task_state(conn, task)
    assert (status, retry_count) == ("failed", 0)
    assert message.startswith("cost cap reached:")
    row = conn.execute("SELECT sum(cost_usd), count(*) FROM llm_calls WHERE task_id = %s",
                       (task,)).fetchone()
    assert row is not None
    assert row[1] >= 2  # it stopped mid-loop, after some calls
    assert row[0] <= Decimal("0.1")
    metrics = conn.execute("SELECT metrics FROM agent_executions WHERE task_id = %s",
                           (task,)).fetchone()
    assert metrics and metrics[0]["llm_calls"] == row[1]
    # Its partial transcript stays: every paid turn and the tool results between them.
    transcript = conn.execute(
        "SELECT role, tool_name, cost_usd > 0 FROM llm_transcript WHERE task_id = %s "
        "ORDER BY step, created_at", (task,)).fetchall()
    assert [r for r in transcript if r[0] == "assistant"] == [("assistant", None, True)] * row[1]
    assert ("tool", "get_company", False) in transcript


def test_budgets_command_shows_each_budget_with_its_spend(
    conn: Conn, db_url: str, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    agent_id = _agent(conn)
    _budget(conn, agent_id, "1.5")
    _budget(conn, None, "100", period="month")
    conn.execute(
        "INSERT INTO llm_calls (agent_id, call_index, model, input_tokens, cost_usd, "
        "price_version) VALUES (%s, 1, %s, 1000, 0.25, 'test')", (agent_id, MODEL))
    monkeypatch.setenv("DATABASE_URL", db_url)
    assert cli.main(["budgets", "--json"]) == 0
    budgets = json.loads(capsys.readouterr().out)
    assert [(b["agent"], b["period"], b["spent_usd"], b["spent_tokens"]) for b in budgets] == [
        (None, "month", 0.25, 1000), ("analyst", "day", 0.25, 1000)]
    assert cli.main(["budgets"]) == 0
    assert "agent analyst" in capsys.readouterr().out


# The provider limiter ------------------------------------------------------------------


async def test_requests_per_window_are_spread_out(
    conn: Conn, pool: AsyncConnectionPool, api: AnthropicStandIn
) -> None:
    # Two requests per 1 s window: the third call of the loop waits about half a second.
    settings = test_settings(ANTHROPIC_API_KEY="test-key", ANTHROPIC_BASE_URL=api.url,
                             RUNNER_LLM_RPM=2, RUNNER_LLM_LIMIT_WINDOW=1)
    _agent(conn)
    waited = _metric("agent_runner_llm_throttle_wait_seconds_sum")
    api.enqueue(tool_use("get_company", {"company_number": "00000001"}),
                tool_use("get_company", {"company_number": "00000001"}),
                text("Done."))
    task = _enqueue(conn)
    assert await run_task_inline(
        pool, task, registry=_registry(), settings=settings) is Outcome.COMPLETED
    times = [request.received_at for request in api.message_requests()]
    assert len(times) == 3
    assert times[2] - times[0] >= 0.4
    assert _metric("agent_runner_llm_throttle_wait_seconds_sum") - waited >= 0.3
    row = conn.execute("SELECT requests_available < 1 FROM llm_rate_limits WHERE model = %s",
                       (MODEL,)).fetchone()
    assert row == (True,)


async def test_limits_are_learned_from_the_response_headers(
    conn: Conn, pool: AsyncConnectionPool, api: AnthropicStandIn, settings: Settings
) -> None:
    _agent(conn)
    headers = (("anthropic-ratelimit-requests-limit", "50"),
               ("anthropic-ratelimit-requests-remaining", "49"),
               ("anthropic-ratelimit-input-tokens-limit", "30000"),
               ("anthropic-ratelimit-input-tokens-remaining", "29000"),
               ("anthropic-ratelimit-output-tokens-limit", "8000"))
    reply = text("Done.")
    api.enqueue(Reply(content=reply.content, headers=headers))
    task = _enqueue(conn)
    assert await run_task_inline(
        pool, task, registry=_registry(), settings=settings) is Outcome.COMPLETED
    # remaining as counted at the request, refilled for the second or so since (at most
    # 500 input tokens at 30,000 a minute).
    row = conn.execute(
        "SELECT requests_limit, input_tokens_limit, output_tokens_limit, "
        "requests_available < 49.9, input_tokens_available <= 29500 "
        "FROM llm_rate_limits WHERE model = %s", (MODEL,)).fetchone()
    assert row == (50, 30000, 8000, True, True)


async def test_a_429_pauses_the_model_for_another_attempt(
    conn: Conn, pool: AsyncConnectionPool, api: AnthropicStandIn, settings: Settings
) -> None:
    _agent(conn)
    first = [True]

    def once_rate_limited(body: dict[str, Any]) -> Reply:
        if first:
            first.clear()
            return error(429, "rate_limit_error", "slow down", retry_after="1")
        return text("Done.")

    api.default = once_rate_limited
    rate_limited = _metric("agent_runner_llm_rate_limited_total")
    task_a, task_b = _enqueue(conn), _enqueue(conn)
    running_a = asyncio.create_task(
        run_task_inline(pool, task_a, registry=_registry(), settings=settings))

    async def paused() -> bool:
        async with pool.connection() as aconn:
            row = await (await aconn.execute(
                "SELECT paused_until > now() FROM llm_rate_limits WHERE model = %s",
                (MODEL,))).fetchone()
        return bool(row and row[0])

    await await_until(paused, within=10, message="the model paused")
    rate_limited_at = api.message_requests()[0].received_at
    began = time.monotonic()
    outcome_b = await run_task_inline(pool, task_b, registry=_registry(), settings=settings)
    assert outcome_b is Outcome.COMPLETED
    assert await running_a is Outcome.COMPLETED
    requests = api.message_requests()
    assert len(requests) == 3
    assert _metric("agent_runner_llm_rate_limited_total") == rate_limited + 1
    # B's only request waited out A's retry-after, though B never saw a 429.
    b_request = [r for r in requests[1:] if r.received_at >= began]
    assert b_request and min(r.received_at for r in b_request) - rate_limited_at >= 0.9


async def test_a_day_budget_fits_some_of_ten_tasks_three_at_a_time(
    conn: Conn, pool: AsyncConnectionPool, api: AnthropicStandIn, settings: Settings
) -> None:
    # Issue 12's acceptance, in process: ten one-call tasks of about $0.02 each, three
    # running at once, against a $0.10 day budget of their agent.
    agent_id = _agent(conn)
    limit = Decimal("0.10")
    budget_id = _budget(conn, agent_id, str(limit))
    api.default = text("Done.", input_tokens=6_667)
    api.latency = 0.05
    tasks = [_enqueue(conn) for _ in range(10)]
    slots = asyncio.Semaphore(3)

    async def run(task: str) -> Outcome:
        async with slots:
            return await run_task_inline(pool, task, registry=_registry(), settings=settings)

    outcomes = await asyncio.gather(*(run(task) for task in tasks))

    completed = [t for t, o in zip(tasks, outcomes, strict=True) if o is Outcome.COMPLETED]
    deferred = [t for t, o in zip(tasks, outcomes, strict=True) if o is Outcome.DEFERRED]
    assert len(completed) + len(deferred) == 10
    assert 3 <= len(completed) < 10
    spent, calls = _spend(conn, agent_id)
    assert calls == len(completed)
    assert spent <= limit + Decimal("0.02")  # never more than one call over
    for task in deferred:
        status, retry_count, _, message = task_state(conn, task)
        assert (status, retry_count) == ("pending", 0)
        assert message.startswith("budget reached:") and budget_id in message

    conn.execute("UPDATE llm_budgets SET limit_usd = 1 WHERE id = %s", (budget_id,))
    outcomes = await asyncio.gather(*(run(task) for task in deferred))
    assert outcomes == [Outcome.COMPLETED] * len(deferred)
    assert _spend(conn, agent_id)[1] == 10


def test_token_buckets_refill_by_elapsed_time_and_honour_a_pause(conn: Conn) -> None:
    def take(input_tokens: int, output_tokens: int = 0) -> float:
        # 100 input tokens and 1,000 output tokens per 10 s window; requests unlimited
        row = conn.execute("SELECT runner_llm_take_capacity('m', NULL, 100, 1000, %s, %s, 10)",
                           (input_tokens, output_tokens)).fetchone()
        assert row
        return float(row[0])

    assert take(80, 500) == 0
    wait = take(80)  # 20 left: 60 more come in 6 s
    assert 5.5 < wait <= 6.0
    assert take(20) == 0  # nothing was taken by the refused call
    # A call bigger than the bucket waits for a full bucket, not for ever.
    assert 9.0 < take(10_000) <= 10.0
    conn.execute("UPDATE llm_rate_limits SET paused_until = clock_timestamp() + "
                 "interval '30 seconds' WHERE model = 'm'")
    assert 29.0 < take(1) <= 30.0


def test_learned_buckets_scale_to_the_window() -> None:
    from runner.context import learned_bucket

    headers = {"anthropic-ratelimit-input-tokens-limit": "6000",
               "anthropic-ratelimit-input-tokens-remaining": "3000",
               "anthropic-ratelimit-requests-limit": "not a number"}
    per_minute = learned_bucket(headers, "input-tokens", 60)
    assert (per_minute.limit, per_minute.remaining) == (6000, 3000)
    bucket = learned_bucket(headers, "input-tokens", 1)
    assert (bucket.limit, bucket.remaining) == (100, 50)
    requests = learned_bucket(headers, "requests", 60)
    assert (requests.limit, requests.remaining) == (None, None)


def test_a_learned_remaining_count_is_refilled_by_its_age() -> None:
    from runner.context import learned_bucket

    headers = {"anthropic-ratelimit-input-tokens-limit": "6000",
               "anthropic-ratelimit-input-tokens-remaining": "3000"}
    # Counted when the request arrived, 15 s before the answer: 1,500 more by now.
    assert learned_bucket(headers, "input-tokens", 60, age_seconds=15).remaining == 4500
    assert learned_bucket(headers, "input-tokens", 60, age_seconds=600).remaining == 6000


async def test_learning_refills_to_now_gives_back_the_unused_and_caps_by_remaining(
    conn: Conn, pool: AsyncConnectionPool
) -> None:
    from runner.store import llm as llm_store

    limits = llm_store.Limits(input_tokens=600, window_seconds=60)  # 10 tokens a second
    nothing = llm_store.LearnedBucket(None, None)

    async def level() -> float:
        row = conn.execute("SELECT input_tokens_available FROM llm_rate_limits "
                           "WHERE model = 'm'").fetchone()
        assert row is not None
        return float(row[0])

    async with pool.connection() as aconn:
        assert await llm_store.take_capacity(
            aconn, model="m", limits=limits, input_tokens=500, output_tokens=0) == 0
        # 100 left as of the take; 30 s later the bucket holds 400. Of the 500 taken the
        # API counted 300: 200 come back (600). The API says 450 remain now: that caps it.
        conn.execute("UPDATE llm_rate_limits SET refilled_at = refilled_at - "
                     "interval '30 seconds' WHERE model = 'm'")
        await llm_store.learn_limits(
            aconn, model="m", limits=limits, requests=nothing,
            input_tokens=llm_store.LearnedBucket(600, 450, unused=200), output_tokens=nothing)
        assert 449.9 < await level() <= 450
        # With no remaining count, what comes back is capped by the limit only.
        assert await llm_store.take_capacity(
            aconn, model="m", limits=limits, input_tokens=400, output_tokens=0) == 0
        await llm_store.learn_limits(
            aconn, model="m", limits=limits, requests=nothing,
            input_tokens=llm_store.LearnedBucket(None, None, unused=300), output_tokens=nothing)
        assert 350 <= await level() < 352
        await llm_store.learn_limits(
            aconn, model="m", limits=limits, requests=nothing,
            input_tokens=llm_store.LearnedBucket(None, None, unused=5000), output_tokens=nothing)
        assert await level() == 600


async def test_calls_sent_before_a_limit_is_known_count_once_it_is_learned(
    conn: Conn, pool: AsyncConnectionPool
) -> None:
    """Until the first answer teaches a limit, calls go at once; what they took is
    remembered, so the first learned level counts the calls still in flight, which the
    API's first remaining count (taken when the first of them arrived) had not seen."""
    from runner.store import llm as llm_store

    learned_only = llm_store.Limits(window_seconds=60)
    nothing = llm_store.LearnedBucket(None, None)
    async with pool.connection() as aconn:
        for _ in range(6):  # six calls of 600 tokens at once, no limit known
            assert await llm_store.take_capacity(
                aconn, model="m", limits=learned_only, input_tokens=600, output_tokens=0) == 0
        # The first answer: limit 6,000, and 5,400 remained when that first call arrived.
        await llm_store.learn_limits(
            aconn, model="m", limits=learned_only, requests=nothing,
            input_tokens=llm_store.LearnedBucket(6000, 5400), output_tokens=nothing)
    row = conn.execute("SELECT input_tokens_limit, input_tokens_available "
                       "FROM llm_rate_limits WHERE model = 'm'").fetchone()
    assert row is not None and row[0] == 6000
    assert row[1] == 6000 - 6 * 600  # not 5,400: the other five are counted too


async def test_limiter_off_sends_at_once_and_pauses_nobody(
    conn: Conn, pool: AsyncConnectionPool, api: AnthropicStandIn
) -> None:
    settings = test_settings(ANTHROPIC_API_KEY="test-key", ANTHROPIC_BASE_URL=api.url,
                             RUNNER_LLM_RPM=1, RUNNER_LLM_LIMIT_WINDOW=60,
                             RUNNER_LLM_LIMITER="off")
    _agent(conn)
    api.enqueue(tool_use("get_company", {"company_number": "00000001"}),
                error(429, "rate_limit_error", "slow down", retry_after="1"),
                text("Done."))
    task = _enqueue(conn)
    began = time.monotonic()
    assert await run_task_inline(
        pool, task, registry=_registry(), settings=settings) is Outcome.COMPLETED
    # One request a minute would hold the second call for a minute; off, only the
    # 429's own second is waited.
    assert time.monotonic() - began < 10
    assert len(api.message_requests()) == 3
    assert conn.execute("SELECT count(*) FROM llm_rate_limits").fetchone() == (0,)


async def test_a_ledger_row_ends_its_reservation_in_the_same_statement(
    conn: Conn, pool: AsyncConnectionPool
) -> None:
    """A call must not count twice (its estimate and its cost) while another call of the
    scope is checked against the budget: the ledger row and the end of the reservation
    are one statement."""
    from runner.api import LLMCallRecord
    from runner.store import attempts
    from runner.store import llm as llm_store

    _agent(conn)
    task = _enqueue(conn)
    row = conn.execute("SELECT job_id FROM agent_tasks WHERE id = %s", (task,)).fetchone()
    assert row is not None
    async with pool.connection() as aconn:
        claimed = await attempts.start_attempt(aconn, task_id=task, job_id=row[0],
                                               daemon_id=None)
        assert claimed is not None
        attempt, _ = claimed
        reserved = await llm_store.reserve(
            aconn, org_id=attempt.agent.org_id, agent_id=attempt.agent.id, task_id=attempt.task_id,
            execution_id=attempt.execution_id, cost_usd=Decimal("0.02"), tokens=1000,
            ttl_seconds=60)
        assert reserved.reservation_id is not None
        await attempts.insert_llm_call(
            aconn, attempt=attempt, call_index=1, settles=reserved.reservation_id,
            call=LLMCallRecord(MODEL, 100, 50, 0, 0, Decimal("0.001"), "test"))
    assert conn.execute("SELECT count(*) FROM llm_budget_reservations").fetchone() == (0,)
    assert conn.execute("SELECT count(*) FROM llm_calls WHERE task_id = %s",
                        (task,)).fetchone() == (1,)


async def test_a_429_without_retry_after_waits_for_the_exhausted_limit_to_reset(
    conn: Conn, pool: AsyncConnectionPool, api: AnthropicStandIn
) -> None:
    # The retry policy's default wait for a bare 429 is 0.05 s (FAST); the headers say the
    # exhausted input-token limit is full again in about 2 s: that is the pause.
    settings = test_settings(ANTHROPIC_API_KEY="test-key", ANTHROPIC_BASE_URL=api.url)
    _agent(conn)
    reset = (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=2)).isoformat(timespec="seconds")
    api.enqueue(
        error(429, "rate_limit_error", "slow down", headers={
            "anthropic-ratelimit-input-tokens-remaining": "0",
            "anthropic-ratelimit-input-tokens-reset": reset.replace("+00:00", "Z"),
            "anthropic-ratelimit-requests-remaining": "49",
            "anthropic-ratelimit-requests-reset": dt.datetime.now(dt.UTC).isoformat()}),
        text("Done."))
    task = _enqueue(conn)
    assert await run_task_inline(
        pool, task, registry=_registry(), settings=settings) is Outcome.COMPLETED
    first, second = (r.received_at for r in api.message_requests())
    assert 0.9 <= second - first <= 2.0 + 1.5  # the reset is whole seconds
