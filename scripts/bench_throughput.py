"""Throughput: no-op tasks drained by ``agent-runner run`` versus a bare procrastinate worker.

Both sides drain the same number of jobs at the same concurrency, on the same scratch
database, with the same connection pool size, from a queue filled before the worker
starts. agent-runner pays, per attempt, for a claim transaction, the agent run and a
fenced finish transaction on top of procrastinate's own fetch and finish; the bare
worker pays only procrastinate's. The ratio agent-runner / procrastinate (goal >= 1.0)
says what that costs.

Timing uses the database clock on both sides, from procrastinate's own event log: from
the first job's ``started`` event (the worker's first fetch) to the last job's
``succeeded`` event. Process start-up (imports, pool, registration) is left out of the
rate, but the spawn-to-done wall time is printed as well.

The sides alternate (A B, B A, A B ...) so that drift in the machine's load does not
favour one of them; the medians are reported. Between runs every table is emptied, so
each run starts from the same state.

``--profile`` adds one agent-runner run under py-spy (``PY_SPY`` or ``py-spy`` on PATH)
and prints where the daemon's CPU goes.

Usage: python scripts/bench_throughput.py [--tasks 2000] [--concurrency 4] [--rounds 3]
       [--budget 220] [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import bench_common as bc

BARE_QUEUE = "bench_bare"
BARE_TASK = "bench.noop"
AGENT = "bench-noop"


@dataclass
class Run:
    side: str
    jobs: int
    seconds: float  # first 'started' -> last 'succeeded', database clock
    wall_seconds: float  # process spawn -> every job finished, observed by polling
    worker_cpu: float  # CPU seconds of the worker process
    backend_cpu: float  # CPU seconds of its Postgres backends
    xacts: int  # transactions committed in the database during the run
    wal_syncs: int  # WAL flushes to disk during the run (cluster-wide)
    busy_ms: float  # median per job, its 'started' -> 'succeeded' (time it holds a slot)

    @property
    def rate(self) -> float:
        return self.jobs / self.seconds


# -- the bare procrastinate worker (runs in a subprocess) ----------------------------


async def bare_worker(url: str, concurrency: int, pool_size: int) -> None:
    """procrastinate with one no-op task, set up as the daemon sets up its own worker:
    an external pool of the same size, LISTEN/NOTIFY on, the same poll interval. Like
    the daemon it waits for work until SIGTERM, so that both are measured (CPU of the
    process and of its backends) while still running."""
    import procrastinate
    from psycopg_pool import AsyncConnectionPool

    app = procrastinate.App(connector=procrastinate.PsycopgConnector())

    @app.task(name=BARE_TASK, queue=BARE_QUEUE)
    async def noop(task_id: str) -> str:
        return task_id

    pool = AsyncConnectionPool(url, min_size=2, max_size=pool_size, open=False)
    await pool.open(wait=True, timeout=30)
    try:
        async with app.open_async(pool=pool):
            await app.run_worker_async(
                queues=[BARE_QUEUE], concurrency=concurrency, wait=True,
                install_signal_handlers=True, listen_notify=True,
                fetch_job_polling_interval=5.0,
            )
    finally:
        await pool.close()


# -- one run ------------------------------------------------------------------------


def reset(url: str) -> None:
    """Empty every table a run writes, so each run starts from the same state."""
    bc.execute(url, "TRUNCATE agent_task_logs, agent_executions, agent_tasks, llm_calls, "
                    "procrastinate_events, procrastinate_periodic_defers, procrastinate_jobs, "
                    "procrastinate_workers, runner_daemons CASCADE")


def enqueue(url: str, side: str, tasks: int) -> str:
    """Fill the queue; returns the procrastinate queue the side drains."""
    if side == "agent-runner":
        bc.execute(url, "SELECT count(enqueue_agent_task(%s)) FROM generate_series(1, %s)",
                   [AGENT, tasks])
        queue = "agent_runner"
    else:
        # The same args shape as agent-runner's jobs: {"task_id": uuid}.
        bc.execute(url, """
            SELECT count(*) FROM unnest(procrastinate_defer_jobs_v1(ARRAY(
                SELECT ROW(%s, %s, 0, NULL, NULL,
                           jsonb_build_object('task_id', gen_random_uuid()), NULL
                       )::procrastinate_job_to_defer_v1
                FROM generate_series(1, %s))))
            """, [BARE_QUEUE, BARE_TASK, tasks])
        queue = BARE_QUEUE
    # Fresh statistics and a clean checkpoint for both sides alike, so neither run
    # pays for the other's dirty buffers or stale plans.
    bc.execute(url, "ANALYZE")
    bc.execute(url, "CHECKPOINT")
    return queue


def db_counters(url: str) -> tuple[int, int]:
    row = bc.execute(url, "SELECT (SELECT xact_commit FROM pg_stat_database "
                          "WHERE datname = current_database()), "
                          "(SELECT wal_sync FROM pg_stat_wal)")[0]
    return int(row[0]), int(row[1])


def run_side(url: str, side: str, tasks: int, concurrency: int, pool_size: int,
             index: int, profile_out: Path | None = None) -> Run:
    reset(url)
    queue = enqueue(url, side, tasks)
    xacts_before, syncs_before = db_counters(url)
    if side == "agent-runner":
        worker = bc.start_daemon(url, f"throughput-{index}-agent-runner.log",
                                 RUNNER_CONCURRENCY=str(concurrency),
                                 RUNNER_DB_POOL_SIZE=str(pool_size))
    else:
        worker = bc.Subprocess(
            [sys.executable, str(Path(__file__).resolve()), "--bare-worker", url,
             "--concurrency", str(concurrency), "--pool-size", str(pool_size)],
            bc.daemon_env(url), f"throughput-{index}-procrastinate.log")
    spy = None
    try:
        if profile_out is not None:
            # Attach once the daemon is up, so the profile shows draining, not imports.
            bc.wait_for_daemon(url, worker)
            spy = bc.start_py_spy(worker.pid, profile_out)
        bc.wait_until(
            lambda: bc.scalar(url, "SELECT count(*) FROM procrastinate_jobs WHERE queue_name = %s "
                                   "AND status IN ('todo', 'doing')", [queue]) == 0,
            timeout=240, interval=0.2, what=f"{side} to drain {tasks} jobs", process=worker,
        )
        wall = time.perf_counter() - worker.started
        worker_cpu = bc.cpu_seconds(worker.pid)
        backend_cpu = bc.backend_cpu_seconds(url)
    finally:
        if spy is not None:
            spy.stop(timeout=30, signum=signal.SIGINT)  # py-spy writes its file on SIGINT
        worker.stop(timeout=30)
    seconds, succeeded, failed = bc.execute(url, """
        SELECT extract(epoch FROM max(e.at) FILTER (WHERE e.type = 'succeeded')
                                - min(e.at) FILTER (WHERE e.type = 'started')),
               count(*) FILTER (WHERE e.type = 'succeeded'),
               count(*) FILTER (WHERE e.type IN ('failed', 'aborted'))
        FROM procrastinate_events e JOIN procrastinate_jobs j ON j.id = e.job_id
        WHERE j.queue_name = %s
        """, [queue])[0]
    # How long each job holds one of the C slots: with no-op work the rate can be no
    # more than C / busy time, whatever the fetch loop manages.
    busy_ms = bc.scalar(url, """
        SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY 1000 * extract(epoch FROM
                   s.at - f.at))
        FROM procrastinate_events f
        JOIN procrastinate_events s ON s.job_id = f.job_id AND s.type = 'succeeded'
        WHERE f.type = 'started'
        """)
    if succeeded != tasks or failed:
        raise bc.BenchError(f"{side}: {succeeded} of {tasks} jobs succeeded, {failed} failed")
    if side == "agent-runner":
        completed = bc.scalar(url, "SELECT count(*) FROM agent_tasks WHERE status = 'completed'")
        if completed != tasks:
            raise bc.BenchError(f"agent-runner: {completed} of {tasks} tasks completed")
    time.sleep(1.0)  # backends report their statistics when they exit
    xacts_after, syncs_after = db_counters(url)
    return Run(side, tasks, float(seconds), wall, worker_cpu, backend_cpu,
               xacts_after - xacts_before, syncs_after - syncs_before, float(busy_ms))


# -- main -----------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3,
                        help="alternating runs per side (medians are reported)")
    parser.add_argument("--budget", type=float, default=220.0,
                        help="seconds of measuring after which no new round starts")
    parser.add_argument("--pool-size", type=int, default=None,
                        help="connections per worker; default: the daemon's default")
    parser.add_argument("--profile", action="store_true",
                        help="one more agent-runner run under py-spy")
    parser.add_argument("--bare-worker", metavar="URL", help=argparse.SUPPRESS)
    args = parser.parse_args()
    pool_size = args.pool_size or min(args.concurrency, 10) + 5  # runner.settings' default

    if args.bare_worker:
        asyncio.run(bare_worker(args.bare_worker, args.concurrency, pool_size))
        return 0

    print(f"throughput: {args.tasks} no-op jobs, concurrency {args.concurrency}, "
          f"pool {pool_size}, {args.rounds} rounds per side")
    print(f"machine: {bc.machine_description()}; load average at start "
          f"{os.getloadavg()[0]:.2f}")
    runs: list[Run] = []
    profile_lines: list[str] = []
    with bc.scratch_database("throughput") as url:
        bc.create_agent(url, AGENT)
        began = time.monotonic()
        for round_number in range(args.rounds):
            # Keep the whole benchmark within its time bound on a slow or busy machine:
            # skip a round that would likely overrun, and say so.
            elapsed = time.monotonic() - began
            if round_number and elapsed / round_number * (round_number + 1) > args.budget:
                print(f"  (stopping after {round_number} round(s): another would exceed "
                      f"the {args.budget:.0f} s budget)")
                break
            order = ["agent-runner", "procrastinate"]
            if round_number % 2:
                order.reverse()
            for side in order:
                run = run_side(url, side, args.tasks, args.concurrency, pool_size,
                               len(runs))
                runs.append(run)
                print(f"  round {round_number + 1} {side:13s}: {run.rate:7.1f} jobs/s "
                      f"({run.seconds:.2f} s; spawn-to-done {run.wall_seconds:.2f} s; "
                      f"{run.busy_ms:.1f} ms per job in its slot; "
                      f"worker CPU {1000 * run.worker_cpu / run.jobs:.2f} ms/job, "
                      f"Postgres backends {1000 * run.backend_cpu / run.jobs:.2f} ms/job; "
                      f"{run.xacts / run.jobs:.2f} commits/job, "
                      f"{run.wal_syncs / run.jobs:.2f} WAL flushes/job)", flush=True)
        if args.profile:
            if bc.py_spy_path() is None:
                profile_lines = ["(py-spy not found: set PY_SPY or put it on PATH)"]
            else:
                out = bc.OUT_DIR / "throughput-profile.txt"
                run = run_side(url, "agent-runner", args.tasks, args.concurrency, pool_size,
                               len(runs) + 100, profile_out=out)
                time.sleep(1)
                profile_lines = [f"profiled run: {run.rate:.1f} jobs/s (under py-spy)",
                                 *bc.summarise_profile(out)]

    def med(side: str, attribute: str) -> float:
        return bc.median([getattr(r, attribute) for r in runs if r.side == side])

    runner_rate = bc.median([r.rate for r in runs if r.side == "agent-runner"])
    bare_rate = bc.median([r.rate for r in runs if r.side == "procrastinate"])
    ratio = runner_rate / bare_rate
    print(f"agent-runner : {runner_rate:7.1f} tasks/s (median)")
    print(f"procrastinate: {bare_rate:7.1f} jobs/s (median)")
    print(f"ratio agent-runner / procrastinate = {ratio:.3f} (goal >= 1.0): "
          f"{bc.verdict(ratio, higher_is_better=True)}")
    per_job = {}
    for side in ("agent-runner", "procrastinate"):
        per_job[side] = {
            "worker_cpu_ms": round(1000 * med(side, "worker_cpu") / args.tasks, 3),
            "backend_cpu_ms": round(1000 * med(side, "backend_cpu") / args.tasks, 3),
            "commits": round(med(side, "xacts") / args.tasks, 2),
            "wal_flushes": round(med(side, "wal_syncs") / args.tasks, 2),
            "slot_ms": round(med(side, "busy_ms"), 1),
        }
        print(f"per job, {side}: {per_job[side]}")
    for line in profile_lines:
        print(line)
    bc.print_result("throughput", {
        "tasks": args.tasks, "concurrency": args.concurrency, "pool_size": pool_size,
        "agent_runner_tasks_per_s": round(runner_rate, 1),
        "procrastinate_jobs_per_s": round(bare_rate, 1),
        "ratio": round(ratio, 3), "goal": ">= 1.0",
        "verdict": bc.verdict(ratio, higher_is_better=True),
        "runs": [(r.side, round(r.rate, 1)) for r in runs],
        "per_job": per_job,
    })
    return 0


if __name__ == "__main__":
    bc.run_main(main)
