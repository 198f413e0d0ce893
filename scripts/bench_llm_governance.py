"""LLM governance: the shared provider limiter, and durable turns after a kill -9.

(a) **Limiter.** The Anthropic stand-in (``tests/standins/anthropic_api.py``, a real HTTP
server on 127.0.0.1) enforces an input-token rate limit as the API does -- a token bucket
whose capacity is the per-minute limit, refilled continuously -- and answers what does
not fit with a 429 ``rate_limit_error`` and ``retry-after``; every answer carries the
``anthropic-ratelimit-*`` headers. Its minute is shortened (``--minute-seconds``, 6 by
default: traffic runs ten times faster than on the API) and the daemons' limiter window
(``RUNNER_LLM_LIMIT_WINDOW``) is set to match, so the headers are read in the same time
scale. Two daemons at concurrency 3 each run ``--tasks`` ``llm_agent`` tasks of about
``--prompt-tokens`` input tokens; no limit is configured, so the daemons learn it from the
headers. Goals: 429s received <= 2, and makespan (first ``created_at`` -> last
``completed_at``) <= 1.15 x (input tokens counted by the stand-in / its rate). Baseline:
the same run with ``RUNNER_LLM_LIMITER=off`` (each call still waits out its own 429's
``retry-after``).

(b) **Durable turns.** One ``llm_agent`` task whose model answers in three turns (two
``get_company`` tool calls, then text). The stand-in holds the third request; the daemon
running it is killed with SIGKILL while it waits, a second daemon rescues the task and
finishes it. Goal: model calls in all = 4 (the two journaled turns replayed, the one in
flight made again). Baseline: the same with ``RUNNER_LLM_REPLAY=off``: 6.

Both baselines run in the same invocation. Ends with a ``RESULT {json}`` line.

Usage: python scripts/bench_llm_governance.py [--tasks 40] [--daemons 2] [--concurrency 3]
       [--itpm 6000] [--minute-seconds 6] [--prompt-tokens 600] [--only limiter|turns]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import threading
import time
from contextlib import ExitStack
from typing import Any

import bench_common as bc

AGENT = "bench-llm"
MODEL = "claude-sonnet-4-6"
LATENCY_SECONDS = 0.3
GOAL_MAX_429 = 2
GOAL_MAKESPAN_RATIO = 1.15
GOAL_CALLS = 4
COMPANY = "01234567"


# -- (a) the limiter --------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LimiterRun:
    limiter: bool
    tasks: int
    completed: int
    rate_limited: int
    counted_input_tokens: int
    makespan_s: float
    ideal_s: float
    task_retries: int
    #: the bucket's capacity, sent at once before the rate binds, in seconds of the rate
    burst_s: float

    @property
    def ratio(self) -> float:
        return self.makespan_s / self.ideal_s

    @property
    def steady_ratio(self) -> float:
        """Against the stricter ideal that takes the first full bucket into account."""
        return self.makespan_s / max(self.ideal_s - self.burst_s, 1e-9)


def _filler(index: int, tokens: int) -> str:
    """A distinct prompt of about ``tokens`` tokens (the stand-in counts 4 characters)."""
    words = f"Task {index}: summarise the outlook for company number {index:08d}. "
    body = ("Context: the market for software services in the north of England grew "
            "steadily while hiring slowed in the second half of the year. ")
    text = words + body * (1 + tokens * 4 // len(body))
    return text[: tokens * 4]


def run_limiter(args: argparse.Namespace, *, limiter: bool) -> LimiterRun:
    from tests.standins.anthropic_api import AnthropicStandIn, RateLimit, text

    label = "limiter on" if limiter else "limiter off (baseline)"
    rate = RateLimit(input_tokens=args.itpm, minute_seconds=args.minute_seconds)
    with ExitStack() as stack:
        url = stack.enter_context(bc.scratch_database("llmlimit"))
        api = stack.enter_context(AnthropicStandIn(
            latency=LATENCY_SECONDS, default=text("A short answer."), rate_limit=rate))
        bc.create_agent(url, AGENT, "llm_agent", model=MODEL,
                        instructions_prompt="Answer in one sentence.",
                        configuration=json.dumps({"max_tokens": 256}))
        env = {
            "RUNNER_CONCURRENCY": str(args.concurrency),
            "ANTHROPIC_API_KEY": "bench", "ANTHROPIC_BASE_URL": api.url,
            "RUNNER_LLM_LIMIT_WINDOW": str(args.minute_seconds),
            "RUNNER_LLM_LIMITER": "on" if limiter else "off",
        }
        daemons = [stack.enter_context(bc.start_daemon(
            url, f"llm-governance-{'on' if limiter else 'off'}-{n}.log", **env))
            for n in range(args.daemons)]
        for daemon in daemons:
            bc.wait_for_daemon(url, daemon)
        payloads = [json.dumps({"prompt": _filler(i, args.prompt_tokens)})
                    for i in range(args.tasks)]
        ids = [str(row[0]) for row in bc.execute(
            url, "SELECT enqueue_agent_task(%s, p::jsonb)::text FROM unnest(%s::text[]) p",
            [AGENT, payloads])]

        def finished() -> bool:
            ended = bc.scalar(url, "SELECT count(*) FROM agent_tasks WHERE "
                                   "id = ANY(%s::uuid[]) AND status IN "
                                   "('completed', 'failed', 'cancelled')", [ids])
            return bool(ended == len(ids))

        bc.wait_until(finished, timeout=args.timeout, interval=0.2,
                      what=f"{args.tasks} tasks ({label})", process=daemons[0])
        completed, span, retries = bc.execute(url, """
            SELECT count(*) FILTER (WHERE status = 'completed'),
                   extract(epoch FROM max(completed_at) - min(created_at)),
                   coalesce(sum(retry_count), 0)
            FROM agent_tasks WHERE id = ANY(%s::uuid[])""", [ids])[0]
        counted = api.counted_input_tokens
        requests = api.message_requests()
        if limiter and api.rate_limited_at and requests:
            first = min(r.received_at for r in requests)
            times = ", ".join(f"+{at - first:.2f} s" for at in api.rate_limited_at)
            print(f"  429s at {times} from the first request")
        if completed != args.tasks:
            for status, error, count in bc.execute(url, """
                    SELECT status, left(error_message, 300), count(*) FROM agent_tasks
                    WHERE id = ANY(%s::uuid[]) AND status <> 'completed'
                    GROUP BY 1, 2""", [ids]):
                print(f"  ! {count} task(s) {status}: {error}")
        result = LimiterRun(
            limiter=limiter, tasks=args.tasks, completed=int(completed),
            rate_limited=api.rate_limited, counted_input_tokens=counted,
            makespan_s=float(span), ideal_s=counted / (args.itpm / args.minute_seconds),
            task_retries=int(retries), burst_s=args.minute_seconds)
    print(f"  {label}: {result.completed}/{result.tasks} completed, "
          f"{result.rate_limited} 429s, makespan {result.makespan_s:.2f} s, ideal "
          f"{result.ideal_s:.2f} s ({result.counted_input_tokens} input tokens at "
          f"{args.itpm / args.minute_seconds:.0f}/s) = {result.ratio:.3f} x "
          f"({result.steady_ratio:.3f} x the ideal less the first full bucket), "
          f"{result.task_retries} task retries", flush=True)
    return result


# -- (b) durable turns ------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TurnsRun:
    replay: bool
    model_calls: int
    completed: bool
    replayed_steps: int


def run_turns(args: argparse.Namespace, *, replay: bool) -> TurnsRun:
    from tests.standins.anthropic_api import AnthropicStandIn, Reply, text, tool_use

    label = "journal replay on" if replay else "journal replay off (baseline)"
    third_arrived = threading.Event()
    release = threading.Event()
    held: list[bool] = []

    def model(body: dict[str, Any]) -> Reply:
        turns = sum(1 for m in body["messages"] if m["role"] == "assistant")
        if turns == 0:
            return tool_use("get_company", {"company_number": COMPANY}, say="Looking.")
        if turns == 1:
            return tool_use("get_company", {"company_number": "1234567"})
        if not held:  # the first attempt's third call: hold it until its daemon is dead
            held.append(True)
            third_arrived.set()
            release.wait(60)
        return text("ACME Software is hiring in Leeds.")

    with ExitStack() as stack:
        url = stack.enter_context(bc.scratch_database("llmturns"))
        api = stack.enter_context(AnthropicStandIn(default=model))
        bc.execute(url, "INSERT INTO companies (company_number, name, post_town, status) "
                        "VALUES (%s, 'ACME SOFTWARE LTD', 'LEEDS', 'Active')", [COMPANY])
        bc.create_agent(url, AGENT, "llm_agent", model=MODEL, instructions_prompt="Be brief.",
                        tool_names=["get_company"], max_agent_steps=6)
        env = {
            "ANTHROPIC_API_KEY": "bench", "ANTHROPIC_BASE_URL": api.url,
            "RUNNER_LLM_REPLAY": "on" if replay else "off",
            "RUNNER_HEARTBEAT_INTERVAL": "1", "RUNNER_RESCUE_AFTER": "4",
        }
        tag = "on" if replay else "off"
        first = bc.start_daemon(url, f"llm-turns-{tag}-first.log", **env)
        try:
            bc.wait_for_daemon(url, first)
            task_id = bc.scalar(url, "SELECT enqueue_agent_task(%s, %s::jsonb)::text",
                                [AGENT, json.dumps({"prompt": "Find signals for ACME."})])
            if not third_arrived.wait(60):
                raise bc.BenchError(f"the third model call never came:\n{first.log_tail()}")
            first.stop(signum=signal.SIGKILL)
        finally:
            release.set()
            first.stop()
        second = stack.enter_context(bc.start_daemon(url, f"llm-turns-{tag}-second.log", **env))
        bc.wait_until(lambda: bc.scalar(url, "SELECT status IN ('completed', 'failed') FROM "
                                             "agent_tasks WHERE id = %s", [task_id]),
                      timeout=90, what="the rescued task to finish", process=second)
        status = bc.scalar(url, "SELECT status FROM agent_tasks WHERE id = %s", [task_id])
        replayed = bc.scalar(url, "SELECT count(*) FROM llm_transcript WHERE task_id = %s "
                                  "AND replayed AND role = 'assistant'", [task_id])
        result = TurnsRun(replay=replay, model_calls=len(api.message_requests()),
                          completed=status == "completed", replayed_steps=int(replayed))
    print(f"  {label}: {result.model_calls} model calls, task "
          f"{'completed' if result.completed else status}, {result.replayed_steps} model "
          f"turns replayed", flush=True)
    return result


# -- main -------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=40)
    parser.add_argument("--daemons", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=3)
    parser.add_argument("--itpm", type=float, default=6000,
                        help="input tokens per (stand-in) minute")
    parser.add_argument("--minute-seconds", type=float, default=6.0)
    parser.add_argument("--prompt-tokens", type=int, default=600)
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--only", choices=("limiter", "turns"))
    args = parser.parse_args()

    print(f"machine: {bc.machine_description()}; load average at start "
          f"{os.getloadavg()[0]:.2f}")
    figures: dict[str, Any] = {}
    verdicts = []
    if args.only in (None, "limiter"):
        print(f"(a) limiter: {args.tasks} llm_agent tasks of ~{args.prompt_tokens} input "
              f"tokens, {args.daemons} daemons x concurrency {args.concurrency}, stand-in "
              f"limit {args.itpm:.0f} input tokens per {args.minute_seconds:g} s minute, "
              f"{LATENCY_SECONDS * 1000:.0f} ms per answer")
        started = time.monotonic()
        on = run_limiter(args, limiter=True)
        off = run_limiter(args, limiter=False)
        met = (on.completed == on.tasks and on.rate_limited <= GOAL_MAX_429
               and on.ratio <= GOAL_MAKESPAN_RATIO)
        verdicts.append(met)
        print(f"  limiter on: {on.rate_limited} 429s (goal <= {GOAL_MAX_429}; baseline "
              f"{off.rate_limited}), makespan {on.ratio:.3f} x ideal (goal <= "
              f"{GOAL_MAKESPAN_RATIO}; baseline {off.ratio:.3f} x); makespan on/off "
              f"{on.makespan_s / off.makespan_s:.3f}: {'MET' if met else 'MISSED'} "
              f"({time.monotonic() - started:.0f} s)")
        figures.update(
            limiter_429s=on.rate_limited, baseline_429s=off.rate_limited,
            limiter_makespan_ratio=round(on.ratio, 3),
            limiter_steady_ratio=round(on.steady_ratio, 3),
            baseline_makespan_ratio=round(off.ratio, 3),
            limiter_makespan_s=round(on.makespan_s, 2),
            baseline_makespan_s=round(off.makespan_s, 2),
            ideal_s=round(on.ideal_s, 2), limiter_completed=on.completed,
            limiter_off_completed=off.completed, baseline_task_retries=off.task_retries,
            limiter_task_retries=on.task_retries, tasks=args.tasks,
            limiter_verdict="MET" if met else "MISSED")
    if args.only in (None, "turns"):
        print("(b) durable turns: a three-turn task, its daemon killed (SIGKILL) during "
              "the third model call, rescued by another daemon")
        journal = run_turns(args, replay=True)
        baseline = run_turns(args, replay=False)
        met = journal.completed and journal.model_calls == GOAL_CALLS
        verdicts.append(met)
        print(f"  model calls: {journal.model_calls} with the journal (goal {GOAL_CALLS}), "
              f"{baseline.model_calls} without; ratio "
              f"{journal.model_calls / baseline.model_calls:.3f}: {'MET' if met else 'MISSED'}")
        figures.update(
            journal_model_calls=journal.model_calls, baseline_model_calls=baseline.model_calls,
            calls_ratio=round(journal.model_calls / baseline.model_calls, 3),
            journal_replayed_steps=journal.replayed_steps,
            journal_completed=journal.completed, no_journal_completed=baseline.completed,
            turns_verdict="MET" if met else "MISSED")
    figures["verdict"] = "MET" if all(verdicts) else "MISSED"
    bc.print_result("llm_governance", figures)
    return 0


if __name__ == "__main__":
    bc.run_main(main)
