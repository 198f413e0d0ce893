"""promtool, Prometheus's own checker, on a real scrape and on monitoring/.

promtool comes with the ``prometheus`` package (the test command installs it). Without
it the tests skip, except under CI, where a missing checker must not pass as green.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
from pathlib import Path

import httpx
import pytest
from psycopg_pool import AsyncConnectionPool

from runner import metrics
from runner.http import MetricsServer

MONITORING = Path(__file__).resolve().parents[2] / "monitoring"


@pytest.fixture(scope="module")
def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        message = "promtool is not on PATH (apt-get install prometheus)"
        if os.environ.get("CI"):
            pytest.fail(f"{message}; CI must run the promtool checks")
        pytest.skip(message)
    return found


async def run(*args: str, stdin: bytes = b"", cwd: Path | None = None) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        *args, cwd=cwd, stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await process.communicate(stdin)
    assert process.returncode is not None
    return process.returncode, output.decode()


async def test_a_real_scrape_passes_check_metrics(
    promtool: str, pool: AsyncConnectionPool
) -> None:
    async with pool.connection() as conn:
        await conn.execute("INSERT INTO ai_agents (name, agent_type) VALUES ('x', 'noop')")
        await conn.execute("SELECT enqueue_agent_task('x')")
    await metrics.refresh_task_counts(pool)
    # every family with samples, so the lint sees each one as it will be in production
    metrics.set_agent_types(["noop"])
    metrics.task_started(agent_type="noop", queue_wait_seconds=0.01)
    metrics.attempt_finished(agent_type="noop", outcome="completed", duration_seconds=0.02)
    metrics.llm_call(model="claude-promtool", input_tokens=3, output_tokens=4, cost_usd=0.001)
    metrics.heartbeat()

    async def healthy() -> None:
        pass

    async with MetricsServer(healthy, port=0) as server:
        async with httpx.AsyncClient() as http:
            scrape = (await http.get(f"{server.url}/metrics")).content
    assert b'agent_runner_tasks{status="pending"} 1.0' in scrape

    code, findings = await run(promtool, "check", "metrics", stdin=scrape)
    assert (code, findings) == (0, "")


async def test_alert_rules_pass_check_rules(promtool: str) -> None:
    code, output = await run(promtool, "check", "rules", "prometheus-rules.yml", cwd=MONITORING)
    assert code == 0, output
    assert re.fullmatch(r"Checking prometheus-rules.yml\n  SUCCESS: \d+ rules found\n\n?", output)


async def test_alert_rules_unit_tests_pass(promtool: str) -> None:
    code, output = await run(promtool, "test", "rules", "prometheus-rules.test.yml", cwd=MONITORING)
    assert code == 0, output


async def test_example_scrape_config_is_valid(promtool: str) -> None:
    code, output = await run(promtool, "check", "config", "prometheus.yml", cwd=MONITORING)
    assert code == 0, output


async def test_dashboard_queries_are_valid_promql(promtool: str, tmp_path: Path) -> None:
    # promtool parses PromQL only inside rule files: turn each panel query into a
    # recording rule, with Grafana's variables replaced by values.
    board = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    grafana_variables = {"$__rate_interval": "5m", "$job": ".+", "$agent_type": ".+"}
    lines = ["groups:", "  - name: dashboard", "    rules:"]
    for panel in board["panels"]:
        for target in panel["targets"]:
            expr = target["expr"]
            for variable, value in grafana_variables.items():
                expr = expr.replace(variable, value)
            assert "$" not in expr, expr
            lines += [f"      - record: dashboard:panel_{panel['id']}_{target['refId']}",
                      f"        expr: {json.dumps(expr)}"]
    rules = tmp_path / "dashboard-rules.yml"
    rules.write_text("\n".join(lines) + "\n")

    code, output = await run(promtool, "check", "rules", str(rules))
    assert code == 0, output
