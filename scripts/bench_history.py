"""History: the queue's hot paths with 10 million finished tasks against 10 thousand, and
the prune of 1 million expired ones.

Two scratch databases get the same kind of history, one small (``--small``, 10,000
finished tasks) and one large (``--history``, 10,000,000); in both, ``--expired`` /
``--history`` of it (10 %) completed 31 to 40 days ago, the rest within the last 29 days
(1 % failed, 1 % cancelled before they ran). Each finished task has what production
leaves behind: its procrastinate job with three events (two for a cancelled one) and,
if it ran, one execution. The rows are written set-wise (``INSERT ... SELECT
generate_series``, ordinary logged tables) with triggers and foreign-key checks off
and the secondary indexes built afterwards, the fast way to load; then the count
triggers' figures are rebuilt and the tables vacuumed and analysed, as autovacuum
would have left them.

Measured on both databases, alternating so that a change in the machine's load hits
both alike (goal: large / small <= 1.2 for each):

* claim latency: enqueue -> attempt started (``agent_executions.started_at -
  agent_tasks.created_at``, database clock) of one no-op task at a time on an idle
  daemon (``agent-runner run`` subprocess, defaults, auto-prune off), median and p99;
* ``agent-runner status``: ``runner.store.operator.status`` on one connection, the
  queries the command runs (the command's own wall time, Python start-up included, is
  printed too);
* the gauge refresh: ``runner.store.monitoring.fetch_db_snapshot``, what every daemon
  runs every 5 s;
* also printed: ``agent-runner tasks`` (newest 50; pending only) and ``agents`` (the
  ``agent_performance`` view).

Then ``agent-runner prune`` runs on the large database (default retention: 30 days, so
the expired 10 % go) while the claim latency is sampled again. Goals: at least 20,000
tasks/s, and claim p99 during the prune at most 2x the idle p99 just measured.

Loading 10 M tasks takes 15-25 minutes here. ``--save-large NAME`` keeps a copy of the
loaded large database (13 GB) as NAME; ``--large-from NAME`` then starts from a copy of
it (about a minute), e.g. to compare ``--prune-workers 1`` and ``2``.

Usage: python scripts/bench_history.py [--history 10000000] [--small 10000]
       [--expired-fraction 0.1] [--samples 200] [--chunk 1000000] [--prune-workers 1]
       [--save-large NAME | --large-from NAME]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import secrets
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import bench_common as bc
import psycopg

AGENT = "bench-noop"
GOAL_RATIO = 1.2
GOAL_PRUNE_RATE = 20_000.0
GOAL_PRUNE_P99_RATIO = 2.0
#: The tables history is loaded into, whose secondary indexes are built after the load.
LOADED = ("agent_tasks", "agent_executions", "procrastinate_jobs", "procrastinate_events")
#: Job ids of the generated history start here (the sequence is moved past them).
JOB_BASE = 1_000_000

# One row per finished task i in [lo, hi): when it ended and how. Tasks [0, expired)
# ended 40 to 31 days ago (all completed, so the prune removes exactly them); the others
# spread over the last 29 days: every hundredth failed, the next one was cancelled
# before it ran. Job ids grow with time, as a bigserial does.
_HISTORY_FUNCTION = """
CREATE FUNCTION pg_temp.history(lo bigint, hi bigint, expired bigint, total bigint,
                                t0 timestamptz)
    RETURNS TABLE (i bigint, ended timestamptz, status text, task_id uuid,
                   execution_id uuid, job_id bigint)
    LANGUAGE sql AS $$
    SELECT g,
           CASE WHEN g < expired
                THEN t0 - interval '40 days' + interval '9 days' * (g::float8 / expired)
                ELSE t0 - interval '29 days'
                     + (interval '29 days' - interval '10 minutes')
                       * ((g - expired)::float8 / greatest(total - expired, 1)) END,
           CASE WHEN g >= expired AND g % 100 = 0 THEN 'failed'
                WHEN g >= expired AND g % 100 = 1 THEN 'cancelled'
                ELSE 'completed' END,
           md5('task' || g)::uuid, md5('execution' || g)::uuid,
           """ + str(JOB_BASE) + """ + g
    FROM generate_series(lo, hi - 1) AS g
$$
"""

_LOAD_JOBS = """
INSERT INTO procrastinate_jobs (id, queue_name, task_name, priority, args, status, attempts)
SELECT h.job_id, 'agent_runner', 'agent_runner.attempt', 5,
       jsonb_build_object('task_id', h.task_id),
       (CASE h.status WHEN 'cancelled' THEN 'cancelled' ELSE 'succeeded' END)
           ::procrastinate_job_status,
       CASE h.status WHEN 'cancelled' THEN 0 ELSE 1 END
FROM pg_temp.history(%(lo)s, %(hi)s, %(expired)s, %(total)s, %(t0)s) h
"""
_LOAD_EVENTS = """
INSERT INTO procrastinate_events (job_id, type, at)
SELECT h.job_id, e.type::procrastinate_job_event_type, h.ended - e.before
FROM pg_temp.history(%(lo)s, %(hi)s, %(expired)s, %(total)s, %(t0)s) h
CROSS JOIN (VALUES ('deferred', interval '10 ms', false), ('started', interval '5 ms', true),
                   ('succeeded', interval '0', true), ('cancelled', interval '0', false))
           AS e(type, before, ran)
WHERE e.type = 'deferred' OR e.ran = (h.status <> 'cancelled')
"""
_LOAD_TASKS = """
INSERT INTO agent_tasks (id, agent_id, org_id, task_type, priority, payload, status,
                         retry_count, max_retries, scheduled_for, error_message, output,
                         created_at, updated_at, started_at, completed_at, job_id,
                         current_execution_id)
SELECT h.task_id, a.id, a.org_id, 'noop', 5, '{}', h.status, 0, 3,
       h.ended - interval '10 ms',
       CASE h.status WHEN 'failed' THEN 'boom' WHEN 'cancelled'
            THEN 'cancelled before it started' END,
       CASE h.status WHEN 'completed' THEN '{"slept": 0, "attempt": 1}'::jsonb END,
       h.ended - interval '10 ms', h.ended,
       CASE WHEN h.status <> 'cancelled' THEN h.ended - interval '5 ms' END, h.ended,
       CASE WHEN h.status <> 'cancelled' THEN h.job_id END,
       CASE WHEN h.status <> 'cancelled' THEN h.execution_id END
FROM pg_temp.history(%(lo)s, %(hi)s, %(expired)s, %(total)s, %(t0)s) h, ai_agents a
WHERE a.name = %(agent)s
"""
_LOAD_EXECUTIONS = """
INSERT INTO agent_executions (id, agent_id, org_id, task_id, attempt, job_id, status,
                              started_at, completed_at, duration_ms, input_data,
                              output_data, error_message, metrics, created_at)
SELECT h.execution_id, a.id, a.org_id, h.task_id, 1, h.job_id, h.status,
       h.ended - interval '5 ms', h.ended, 5, '{}',
       CASE h.status WHEN 'completed' THEN '{"slept": 0, "attempt": 1}'::jsonb END,
       CASE h.status WHEN 'failed' THEN 'boom' END, '{}', h.ended - interval '5 ms'
FROM pg_temp.history(%(lo)s, %(hi)s, %(expired)s, %(total)s, %(t0)s) h, ai_agents a
WHERE a.name = %(agent)s AND h.status <> 'cancelled'
"""


def say(message: str) -> None:
    print(message, flush=True)


def generate(url: str, total: int, expired: int, chunk: int) -> dict[str, float]:
    """Load ``total`` finished tasks (``expired`` of them past retention); returns the
    seconds each phase took."""
    timings: dict[str, float] = {}
    bc.create_agent(url, AGENT)
    with psycopg.connect(url, autocommit=True) as conn:
        indexes = conn.execute("""
            SELECT i.indexrelid::regclass::text, pg_get_indexdef(i.indexrelid)
            FROM pg_index i
            WHERE i.indrelid::regclass::text = ANY(%s)
              AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid)
            """, [list(LOADED)]).fetchall()
        for name, _ in indexes:
            conn.execute(f"DROP INDEX {name}")
        conn.execute(_HISTORY_FUNCTION)
        # Bulk load: no triggers, no foreign-key checks (the rows are consistent by
        # construction); a lost commit would only lose the benchmark's own rows.
        conn.execute("SET session_replication_role = replica")
        conn.execute("SET synchronous_commit = off")
        started = time.perf_counter()
        t0 = conn.execute("SELECT now()").fetchone()[0]  # type: ignore[index]
        for lo in range(0, total, chunk):
            hi = min(total, lo + chunk)
            params = {"lo": lo, "hi": hi, "expired": expired, "total": total, "t0": t0,
                      "agent": AGENT}
            with conn.transaction():
                for statement in (_LOAD_JOBS, _LOAD_EVENTS, _LOAD_TASKS, _LOAD_EXECUTIONS):
                    conn.execute(statement, params)
            rate = hi / (time.perf_counter() - started)
            say(f"  loaded {hi:,} / {total:,} tasks ({rate:,.0f} tasks/s)")
        conn.execute("SET session_replication_role = origin")
        conn.execute("SELECT setval('procrastinate_jobs_id_seq', %s)", [JOB_BASE + total])
        timings["rows_s"] = time.perf_counter() - started
        started = time.perf_counter()
        conn.execute("SET maintenance_work_mem = '512MB'")
        for _, definition in indexes:
            conn.execute(definition)
        timings["indexes_s"] = time.perf_counter() - started
        started = time.perf_counter()
        conn.execute("SELECT runner_rebuild_counters()")
        conn.execute("VACUUM ANALYZE")
        conn.execute("CHECKPOINT")
        timings["counters_vacuum_s"] = time.perf_counter() - started
    return timings


@contextmanager
def copied_database(template: str) -> Iterator[str]:
    """A copy of ``template`` (a database a previous run saved), migrated; dropped after."""
    from runner.migrate import migrate

    name = f"bench_hist_large_{secrets.token_hex(4)}"
    bc._admin(f"CREATE DATABASE {name} TEMPLATE {template}")
    try:
        url = bc.database_url(name)
        migrate(url)
        yield url
    finally:
        bc._admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def enqueue_and_wait(conn: psycopg.Connection[Any]) -> str:
    """Enqueue one no-op task and wait until it completed (the daemon is idle again)."""
    row = conn.execute("SELECT enqueue_agent_task(%s)::text", [AGENT]).fetchone()
    assert row is not None
    task_id = str(row[0])
    deadline = time.monotonic() + 30
    while True:
        status = conn.execute("SELECT status FROM agent_tasks WHERE id = %s",
                              [task_id]).fetchone()
        if status is not None and status[0] == "completed":
            return task_id
        if time.monotonic() > deadline:
            raise bc.BenchError(f"task {task_id} still {status} after 30 s")
        time.sleep(0.005)


def latencies_ms(url: str, ids: list[str]) -> list[float]:
    rows = bc.execute(url, """
        SELECT 1000 * extract(epoch FROM e.started_at - t.created_at)
        FROM agent_tasks t JOIN agent_executions e ON e.task_id = t.id AND e.attempt = 1
        WHERE t.id = ANY(%s::uuid[])""", [ids])
    if len(rows) != len(ids):
        raise bc.BenchError(f"{len(rows)} executions for {len(ids)} tasks")
    return [float(r[0]) for r in rows]


def sample_claims(url: str, count: int, stop: Callable[[], bool] | None = None) -> list[str]:
    """Enqueue ``count`` tasks one at a time (or until ``stop()``), each after the
    previous one completed and a short random pause."""
    ids: list[str] = []
    with psycopg.connect(url, autocommit=True) as conn:
        while len(ids) < count and not (stop and stop()):
            ids.append(enqueue_and_wait(conn))
            time.sleep(random.uniform(0.01, 0.03))
    return ids


def timed_ms(operation: Callable[[], Any], repeats: int) -> list[float]:
    figures = []
    for _ in range(repeats):
        started = time.perf_counter()
        operation()
        figures.append(1000 * (time.perf_counter() - started))
    return figures


def measure_queries(url: str, repeats: int) -> dict[str, list[float]]:
    """The status command's queries, the gauge refresh, tasks and agents listings."""
    from runner.store import monitoring, operator

    figures: dict[str, list[float]] = {}
    with psycopg.connect(url, autocommit=True) as conn:
        figures["status"] = timed_ms(lambda: operator.status(conn), repeats)
        figures["tasks"] = timed_ms(lambda: operator.list_tasks(
            conn, status=None, agent=None, limit=50), repeats)
        figures["tasks_pending"] = timed_ms(lambda: operator.list_tasks(
            conn, status="pending", agent=AGENT, limit=50), repeats)
        figures["agents"] = timed_ms(lambda: operator.list_agents(conn), repeats)

    async def gauges() -> list[float]:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as aconn:
            result = []
            for _ in range(repeats):
                started = time.perf_counter()
                await monitoring.fetch_db_snapshot(aconn)
                result.append(1000 * (time.perf_counter() - started))
            return result

    figures["gauges"] = asyncio.run(gauges())
    return figures


def status_command_ms(url: str, repeats: int) -> list[float]:
    env = bc.daemon_env(url)
    return timed_ms(lambda: subprocess.run(
        [sys.executable, "-m", "runner.cli", "status", "--json"], env=env, cwd=bc.CHECKOUT,
        check=True, capture_output=True), repeats)


@contextmanager
def daemon(url: str, name: str) -> Iterator[bc.Subprocess]:
    # RUNNER_RETENTION_DAYS=0: the daemon's own prune (every RUNNER_PRUNE_INTERVAL) must
    # not remove the history it is measured against.
    with bc.start_daemon(url, f"history-{name}-daemon.log", RUNNER_RETENTION_DAYS="0",
                         RUNNER_FAILED_RETENTION_DAYS="0") as process:
        bc.wait_for_daemon(url, process)
        yield process
        if not process.alive():
            raise bc.BenchError(f"the {name} daemon died:\n{process.log_tail()}")


def summary(values: list[float]) -> str:
    return (f"p50 {bc.percentile(values, 0.5):8.2f} ms  p99 {bc.percentile(values, 0.99):8.2f} "
            f"ms  max {max(values):8.2f} ms  (n={len(values)})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--history", type=int, default=10_000_000)
    parser.add_argument("--small", type=int, default=10_000)
    parser.add_argument("--expired-fraction", type=float, default=0.1)
    parser.add_argument("--samples", type=int, default=200,
                        help="claim-latency samples per database (and during the prune)")
    parser.add_argument("--repeats", type=int, default=20,
                        help="timings of each query set per database")
    parser.add_argument("--chunk", type=int, default=1_000_000, help="tasks per load batch")
    parser.add_argument("--prune-workers", type=int, default=1,
                        help="agent-runner prune --workers (the daemons' own pass uses 1)")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--save-large", metavar="NAME",
                       help="keep a copy of the loaded large database under this name")
    group.add_argument("--large-from", metavar="NAME",
                       help="start from a copy of a database saved by --save-large")
    args = parser.parse_args()
    blocks = 10  # alternate small/large in this many blocks

    say(f"history: {args.small:,} vs {args.history:,} finished tasks "
        f"({args.expired_fraction:.0%} expired), {args.samples} claim samples each")
    say(f"machine: {bc.machine_description()}; load average at start "
        f"{os.getloadavg()[0]:.2f}")
    large_database = (copied_database(args.large_from) if args.large_from
                      else bc.scratch_database("hist_large"))
    with bc.scratch_database("hist_small") as small, large_database as large:
        loads = {}
        for name, url, total in (("small", small, args.small), ("large", large, args.history)):
            expired = int(total * args.expired_fraction)
            if name == "large" and args.large_from:
                loads[name] = {"rows_s": 0.0, "indexes_s": 0.0, "counters_vacuum_s": 0.0}
                found = bc.scalar(url, "SELECT count(*) FROM agent_tasks")
                say(f"large: a copy of {args.large_from} ({found:,} tasks)")
                continue
            say(f"loading {name}: {total:,} tasks ({expired:,} expired)")
            loads[name] = generate(url, total, expired, args.chunk)
            size = bc.scalar(url, "SELECT pg_size_pretty(pg_database_size(current_database()))")
            say(f"  {name}: rows {loads[name]['rows_s']:.0f} s, indexes "
                f"{loads[name]['indexes_s']:.0f} s, counters + vacuum "
                f"{loads[name]['counters_vacuum_s']:.0f} s; database size {size}")
            if name == "large" and args.save_large:
                bc._admin(f"DROP DATABASE IF EXISTS {args.save_large}")
                bc._admin(f"CREATE DATABASE {args.save_large} TEMPLATE "
                          f"{psycopg.conninfo.conninfo_to_dict(url)['dbname']}")
                say(f"  saved a copy as {args.save_large}")

        claims: dict[str, list[str]] = {"small": [], "large": []}
        queries: dict[str, dict[str, list[float]]] = {"small": {}, "large": {}}
        urls = {"small": small, "large": large}
        with daemon(small, "small"), daemon(large, "large") as large_daemon:
            for name in urls:  # warm-up: connections, caches
                sample_claims(urls[name], 10)
                measure_queries(urls[name], 2)
            for block in range(blocks):
                order = ("small", "large") if block % 2 == 0 else ("large", "small")
                for name in order:
                    claims[name] += sample_claims(urls[name], args.samples // blocks)
                    for kind, values in measure_queries(
                            urls[name], max(1, args.repeats // blocks)).items():
                        queries[name].setdefault(kind, []).extend(values)
            commands = {name: status_command_ms(urls[name], 5) for name in urls}
            latency = {name: latencies_ms(urls[name], claims[name]) for name in urls}

            say("\nidle daemon, one task at a time:")
            for name in urls:
                say(f"  claim latency {name:5s}  {summary(latency[name])}")
            for kind in ("status", "gauges", "tasks", "tasks_pending", "agents"):
                for name in urls:
                    say(f"  {kind:14s} {name:5s}  {summary(queries[name][kind])}")
            for name in urls:
                say(f"  `agent-runner status --json` wall time {name:5s} "
                    f"{summary(commands[name])}")

            ratios = {
                "claim_p50": bc.percentile(latency["large"], 0.5)
                / bc.percentile(latency["small"], 0.5),
                "claim_p99": bc.percentile(latency["large"], 0.99)
                / bc.percentile(latency["small"], 0.99),
                "status": statistics.median(queries["large"]["status"])
                / statistics.median(queries["small"]["status"]),
                "gauges": statistics.median(queries["large"]["gauges"])
                / statistics.median(queries["small"]["gauges"]),
                "tasks": statistics.median(queries["large"]["tasks"])
                / statistics.median(queries["small"]["tasks"]),
                "agents": statistics.median(queries["large"]["agents"])
                / statistics.median(queries["small"]["agents"]),
            }

            # The prune, while claims go on.
            expired = int(args.history * args.expired_fraction)
            say(f"\nprune of {expired:,} expired tasks ({args.history:,} in the table, "
                f"--workers {args.prune_workers}) while claims are sampled:")
            idle_p99 = bc.percentile(latency["large"], 0.99)
            bc.execute(large, "CHECKPOINT")
            done = threading.Event()
            outcome: dict[str, Any] = {}

            def run_prune() -> None:
                started = time.perf_counter()
                result = subprocess.run(
                    [sys.executable, "-m", "runner.cli", "prune", "--json",
                     "--workers", str(args.prune_workers)],
                    env=bc.daemon_env(large), cwd=bc.CHECKOUT, capture_output=True, text=True)
                outcome["wall_s"] = time.perf_counter() - started
                outcome["result"] = result
                done.set()

            pruner = threading.Thread(target=run_prune)
            pruner.start()
            during = sample_claims(large, 1_000_000, stop=done.is_set)
            pruner.join()
            if not large_daemon.alive():
                raise bc.BenchError(f"the large daemon died:\n{large_daemon.log_tail()}")
            during_ms = latencies_ms(large, during)
        result = outcome["result"]
        if result.returncode != 0:
            raise bc.BenchError(f"agent-runner prune failed: {result.stderr.strip()}")
        report = json.loads(result.stdout)
        removed = report["removed"]["agent_tasks"]
        rate = removed / report["seconds"]
        during_p99 = bc.percentile(during_ms, 0.99)
        say(f"  removed {removed:,} tasks in {report['seconds']:.1f} s "
            f"({outcome['wall_s']:.1f} s with the command's start-up): {rate:,.0f} tasks/s")
        say("  rows removed: " + ", ".join(f"{t} {n:,}" for t, n in report["removed"].items()))
        say(f"  claim latency during the prune  {summary(during_ms)}")

    say("\nratios (large / small; goal <= 1.2):")
    for kind, ratio in ratios.items():
        say(f"  {kind:10s} {ratio:6.2f}  {'MET' if ratio <= GOAL_RATIO else 'MISSED'}")
    prune_ratio = during_p99 / idle_p99
    rate_ratio = rate / GOAL_PRUNE_RATE
    say(f"prune rate {rate:,.0f} tasks/s / goal {GOAL_PRUNE_RATE:,.0f} = "
        f"{rate_ratio:.2f}: {bc.verdict(rate_ratio, higher_is_better=True)}")
    say(f"claim p99 during prune {during_p99:.2f} ms / idle p99 {idle_p99:.2f} ms = "
        f"{prune_ratio:.2f} (goal <= {GOAL_PRUNE_P99_RATIO:.0f}): "
        f"{'MET' if prune_ratio <= GOAL_PRUNE_P99_RATIO else 'MISSED'}")
    met = (all(r <= GOAL_RATIO for k, r in ratios.items() if k in
               ("claim_p50", "claim_p99", "status", "gauges"))
           and rate >= GOAL_PRUNE_RATE and prune_ratio <= GOAL_PRUNE_P99_RATIO)
    bc.print_result("history", {
        "history": args.history, "small": args.small, "prune_workers": args.prune_workers,
        "load_s": round(sum(loads["large"].values()), 1),
        **{f"{k}_ratio": round(v, 3) for k, v in ratios.items()},
        "claim_p99_large_ms": round(bc.percentile(latency["large"], 0.99), 2),
        "claim_p99_small_ms": round(bc.percentile(latency["small"], 0.99), 2),
        "status_large_ms": round(statistics.median(queries["large"]["status"]), 2),
        "gauges_large_ms": round(statistics.median(queries["large"]["gauges"]), 2),
        "prune_tasks": removed, "prune_s": round(report["seconds"], 2),
        "prune_rate": round(rate), "prune_p99_ms": round(during_p99, 2),
        "prune_p99_ratio": round(prune_ratio, 3),
        "verdict": "MET" if met else "MISSED",
    })
    return 0


if __name__ == "__main__":
    bc.run_main(main)
