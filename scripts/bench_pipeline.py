"""Pipeline: K LLM tasks at concurrency C, each one model call answered in 300 ms.

The model calls go to the Anthropic stand-in (``tests/standins/anthropic_api.py``, a real
HTTP server on 127.0.0.1 speaking the Messages API), run in this process with a fixed
300 ms latency; the daemon reaches it through ``ANTHROPIC_BASE_URL`` with
``ANTHROPIC_API_KEY=bench``, so every task goes through the real ``llm_agent``, the real
anthropic SDK and the per-call ledger. When no installed plugin provides ``llm_agent`` the
benchmark falls back to ``noop`` with ``sleep_seconds: 0.3`` and says so.

With C slots and K tasks of 300 ms each, no scheduler can beat ``ceil(K / C) x 300 ms``.
The makespan (first ``created_at`` of the batch -> last ``completed_at``, database clock)
over that ideal is the ratio; goal <= 1.1. Everything the runner adds per task (wake-up,
claim, SDK client, ledger row, finish) shows up as the excess. A warm-up batch runs
first, the measured batch is repeated, and the median is reported.

Usage: python scripts/bench_pipeline.py [--tasks 60] [--concurrency 6] [--repeats 3]
"""

from __future__ import annotations

import argparse
import math
import os
import signal

import bench_common as bc

LATENCY_SECONDS = 0.3
GOAL_RATIO = 1.1
AGENT = "bench-pipeline"


def run_batch(url: str, tasks: int, payload: str) -> list[str]:
    """Enqueue ``tasks`` at once (one statement, so one ``created_at``); their ids."""
    return [str(row[0]) for row in bc.execute(
        url, "SELECT enqueue_agent_task(%s, %s::jsonb)::text FROM generate_series(1, %s)",
        [AGENT, payload, tasks])]


def wait_done(url: str, ids: list[str], daemon: bc.Subprocess) -> None:
    def finished() -> bool:
        done, failed = bc.execute(url, """
            SELECT count(*) FILTER (WHERE status = 'completed'),
                   count(*) FILTER (WHERE status IN ('failed', 'cancelled'))
            FROM agent_tasks WHERE id = ANY(%s::uuid[])""", [ids])[0]
        if failed:
            error = bc.scalar(url, "SELECT error_message FROM agent_tasks WHERE "
                                   "id = ANY(%s::uuid[]) AND status = 'failed' LIMIT 1", [ids])
            raise bc.BenchError(f"{failed} task(s) failed: {error}")
        return bool(done == len(ids))

    # A short poll interval: the makespan is read from the database afterwards, so
    # polling only decides when the next batch may start.
    bc.wait_until(finished, timeout=120, interval=0.05, what="the batch to finish",
                  process=daemon)


def makespan(url: str, ids: list[str], slots: int) -> tuple[float, float, float]:
    """(makespan s, median execution duration s, first-wave spread s) of one batch.

    The spread is the time from the first attempt's start to the ``slots``-th's:
    procrastinate fetches one job per query and each attempt then claims its task, so
    the slots fill one after another; an ideal scheduler starts them together.
    """
    row = bc.execute(url, """
        SELECT extract(epoch FROM max(t.completed_at) - min(t.created_at)),
               percentile_cont(0.5) WITHIN GROUP (ORDER BY e.duration_ms) / 1000.0,
               extract(epoch FROM (array_agg(e.started_at ORDER BY e.started_at))[%s]
                                  - min(e.started_at))
        FROM agent_tasks t JOIN agent_executions e ON e.task_id = t.id
        WHERE t.id = ANY(%s::uuid[])""", [slots, ids])[0]
    return float(row[0]), float(row[1]), float(row[2])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=60)
    parser.add_argument("--concurrency", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--profile", action="store_true",
                        help="record the daemon with py-spy during the first batch")
    parser.add_argument("--noop", action="store_true",
                        help="use noop with sleep_seconds 0.3 even if llm_agent exists")
    args = parser.parse_args()

    from runner.plugins import load_registry
    use_llm = "llm_agent" in load_registry().types() and not args.noop
    ideal = math.ceil(args.tasks / args.concurrency) * LATENCY_SECONDS
    agent_used = ("llm_agent -> Anthropic stand-in (300 ms per call)" if use_llm
                  else "noop with sleep_seconds 0.3 (llm_agent not available)")
    print(f"pipeline: {args.tasks} tasks, concurrency {args.concurrency}, {agent_used}")
    print(f"machine: {bc.machine_description()}; load average at start "
          f"{os.getloadavg()[0]:.2f}")
    print(f"ideal makespan: ceil({args.tasks}/{args.concurrency}) x "
          f"{LATENCY_SECONDS * 1000:.0f} ms = {ideal:.2f} s")

    from contextlib import ExitStack

    from tests.standins.anthropic_api import AnthropicStandIn, text

    spans: list[float] = []
    durations: list[float] = []
    fills: list[float] = []
    with ExitStack() as stack:
        url = stack.enter_context(bc.scratch_database("pipeline"))
        env = {"RUNNER_CONCURRENCY": str(args.concurrency)}
        if use_llm:
            api = stack.enter_context(AnthropicStandIn(
                latency=LATENCY_SECONDS, default=text("Benchmark answer.")))
            env.update(ANTHROPIC_API_KEY="bench", ANTHROPIC_BASE_URL=api.url)
            bc.create_agent(url, AGENT, "llm_agent",
                            instructions_prompt="Answer in one sentence.")
            payload = '{"prompt": "Say something short."}'
        else:
            bc.create_agent(url, AGENT, "noop")
            payload = '{"sleep_seconds": 0.3}'
        daemon = stack.enter_context(bc.start_daemon(url, "pipeline-daemon.log", **env))
        bc.wait_for_daemon(url, daemon)
        # Warm-up: the first attempts pay for lazy imports and new connections.
        wait_done(url, run_batch(url, args.concurrency, payload), daemon)
        profile_lines: list[str] = []
        for repeat in range(args.repeats):
            spy = None
            if args.profile and repeat == 0 and bc.py_spy_path():
                out = bc.OUT_DIR / "pipeline-profile.txt"
                spy = bc.start_py_spy(daemon.pid, out)
            ids = run_batch(url, args.tasks, payload)
            wait_done(url, ids, daemon)
            if spy is not None:
                spy.stop(timeout=30, signum=signal.SIGINT)  # py-spy writes its file on SIGINT
                profile_lines = bc.summarise_profile(out)
            span, duration, fill = makespan(url, ids, args.concurrency)
            spans.append(span)
            durations.append(duration)
            fills.append(fill)
            print(f"  batch {repeat + 1}: makespan {span:.3f} s = {span / ideal:.3f} x ideal "
                  f"(median attempt {1000 * duration:.0f} ms, "
                  f"first wave: {args.concurrency} starts spread over {1000 * fill:.0f} ms)",
                  flush=True)
        if use_llm:
            calls = bc.scalar(url, "SELECT count(*) FROM llm_calls")
            print(f"  {calls} model calls recorded in llm_calls "
                  f"({len(api.message_requests())} reached the stand-in)")
    for line in profile_lines:
        print(line)
    span = bc.median(spans)
    ratio = span / ideal
    print(f"makespan {span:.3f} s (median of {len(spans)}) / ideal {ideal:.2f} s = "
          f"{ratio:.3f} (goal <= {GOAL_RATIO}): "
          f"{'MET' if ratio <= GOAL_RATIO else 'MISSED'}")
    per_task_overhead = bc.median(durations) - LATENCY_SECONDS
    print(f"per attempt: {1000 * bc.median(durations):.0f} ms median execution "
          f"({1000 * per_task_overhead:.0f} ms beyond the model's {LATENCY_SECONDS * 1000:.0f}"
          f" ms)")
    bc.print_result("pipeline", {
        "tasks": args.tasks, "concurrency": args.concurrency,
        "agent": "llm_agent" if use_llm else "noop(sleep 0.3)",
        "ideal_s": round(ideal, 3), "makespan_s": round(span, 3), "ratio": round(ratio, 3),
        "goal": f"<= {GOAL_RATIO}", "verdict": "MET" if ratio <= GOAL_RATIO else "MISSED",
        "makespans_s": [round(s, 3) for s in spans],
        "median_attempt_ms": round(1000 * bc.median(durations), 1),
        "first_wave_spread_ms": round(1000 * bc.median(fills), 1),
    })
    return 0


if __name__ == "__main__":
    bc.run_main(main)
