"""Memory: one daemon holding 1,000 in-flight tasks; its resident set size (goal < 300 MB).

The daemon runs with ``RUNNER_CONCURRENCY=1000`` and its default pool
(``RUNNER_DB_POOL_SIZE`` unset: min(concurrency, 10) + 5 connections), because an
attempt holds a connection only to claim and to finish, never while its agent runs.
1,000 ``noop`` tasks sleeping 60 s are enqueued at once into the idle daemon; once all
1,000 are ``processing`` (each has its attempt running), VmRSS is read from
``/proc/PID/status``. The idle daemon's RSS is read first, so the cost per in-flight
attempt can be printed too.

If the daemon cannot get 1,000 attempts in flight, the benchmark reports how far it got
and the errors from its log instead of a figure.

Usage: python scripts/bench_memory.py [--tasks 1000]
"""

from __future__ import annotations

import argparse
import json
import os
import time

import bench_common as bc

AGENT = "bench-sleeper"
GOAL_MB = 300.0
SLEEP_SECONDS = 60


def log_errors(daemon: bc.Subprocess, limit: int = 5) -> list[str]:
    """Distinct error events from the daemon's JSON log (warnings and worse)."""
    seen: dict[str, str] = {}
    for line in daemon.log_path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            if "Error" in line or "error" in line:
                seen.setdefault(line[:200], line[:300])
            continue
        if record.get("level") in ("warning", "error", "critical"):
            key = f"{record.get('event')}: {record.get('error') or record.get('exception', '')}"
            seen.setdefault(key[:200], key[:300])
    return list(seen.values())[:limit]


def counts(url: str) -> dict[str, int]:
    return {status: int(n) for status, n in bc.execute(
        url, "SELECT status, count(*) FROM agent_tasks GROUP BY status")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=1000)
    args = parser.parse_args()
    concurrency = args.tasks

    print(f"memory: {args.tasks} in-flight noop tasks (sleep_seconds {SLEEP_SECONDS}), "
          f"RUNNER_CONCURRENCY={concurrency}, default pool "
          f"({min(concurrency, 10) + 5} connections)")
    print(f"machine: {bc.machine_description()}; max_connections {bc.max_connections()}; "
          f"load average at start {os.getloadavg()[0]:.2f}")
    result: dict[str, object] = {"tasks": args.tasks, "goal": f"< {GOAL_MB:.0f} MB"}
    with bc.scratch_database("memory") as url:
        bc.create_agent(url, AGENT)
        daemon = bc.start_daemon(url, "memory-daemon.log",
                                 RUNNER_CONCURRENCY=str(concurrency),
                                 RUNNER_SHUTDOWN_GRACE="1")
        try:
            bc.wait_for_daemon(url, daemon)
            time.sleep(1.0)  # let start-up allocations settle before the idle reading
            idle = bc.rss_mb(daemon.pid)
            print(f"idle daemon: VmRSS {idle['VmRSS']:.1f} MB")
            began = time.monotonic()
            bc.execute(url, "SELECT count(enqueue_agent_task(%s, %s::jsonb)) "
                            "FROM generate_series(1, %s)",
                       [AGENT, json.dumps({"sleep_seconds": SLEEP_SECONDS}), args.tasks])
            try:
                # Well inside the 60 s sleep: the first attempts must still be running.
                bc.wait_until(lambda: counts(url).get("processing", 0) >= args.tasks,
                              timeout=SLEEP_SECONDS - 5, interval=0.25,
                              what=f"{args.tasks} tasks processing", process=daemon)
            except bc.BenchError as exc:
                reached = counts(url)
                errors = log_errors(daemon)
                print(f"FAILED to reach {args.tasks} in flight: {reached}; {exc}")
                for error in errors:
                    print(f"  daemon log: {error}")
                result.update(verdict="MISSED", reached=reached, errors=errors)
                bc.print_result("memory", result)
                return 0
            ramp = time.monotonic() - began
            loaded = bc.rss_mb(daemon.pid)
            running = bc.scalar(url, "SELECT count(*) FROM agent_executions "
                                     "WHERE status = 'running'")
            connections = bc.scalar(url, "SELECT count(*) FROM pg_stat_activity "
                                         "WHERE datname = current_database() "
                                         "AND pid <> pg_backend_pid()")
            rss = loaded["VmRSS"]
            ratio = rss / GOAL_MB
            per_task_kb = 1024 * (rss - idle["VmRSS"]) / args.tasks
            print(f"{args.tasks} processing ({running} executions running) after {ramp:.1f} s; "
                  f"{connections} connections to the database")
            print(f"VmRSS {rss:.1f} MB (peak VmHWM {loaded['VmHWM']:.1f} MB); "
                  f"{per_task_kb:.0f} kB per in-flight attempt above idle")
            print(f"VmRSS {rss:.1f} MB / goal {GOAL_MB:.0f} MB = {ratio:.3f}: "
                  f"{bc.verdict(ratio, higher_is_better=False)}")
            # Shutdown hands every attempt back without spending a retry: 1,000 fenced
            # finishes through the small pool. Timed for information.
            stopping = time.monotonic()
            code = daemon.stop(timeout=60)
            stop_seconds = time.monotonic() - stopping
            handed_back = counts(url).get("pending", 0)
            print(f"SIGTERM -> exit {code} in {stop_seconds:.1f} s "
                  f"(grace 1 s); {handed_back} tasks handed back to pending")
            result.update(
                rss_mb=round(rss, 1), hwm_mb=round(loaded["VmHWM"], 1),
                idle_rss_mb=round(idle["VmRSS"], 1), per_attempt_kb=round(per_task_kb, 1),
                ratio=round(ratio, 3), verdict=bc.verdict(ratio, higher_is_better=False),
                ramp_s=round(ramp, 1), connections=connections,
                shutdown_s=round(stop_seconds, 1), handed_back=handed_back,
            )
        finally:
            daemon.stop(timeout=10)
    bc.print_result("memory", result)
    return 0


if __name__ == "__main__":
    bc.run_main(main)
