"""``/metrics`` and ``/healthz`` of a real daemon, scraped while it works."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.harness import DaemonProcess, daemons, query, wait_until

pytestmark = pytest.mark.slow


def _metrics_url(daemon: DaemonProcess) -> str | None:
    for line in daemon.log_text().splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if event.get("event") == "daemon_started":
            return str(event["metrics_url"])
    return None


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def _value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str,
           **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_series_move_while_the_daemon_works(db_url: str, tmp_path: Path) -> None:
    query(db_url, "INSERT INTO ai_agents (name, agent_type) VALUES ('n', 'noop') RETURNING id")
    with daemons(db_url, tmp_path) as (daemon,):
        url = wait_until(lambda: _metrics_url(daemon), message="the metrics address")
        assert httpx.get(f"{url}/healthz", timeout=5).status_code == 200
        before = _samples(httpx.get(f"{url}/metrics", timeout=5).text)

        query(db_url, "SELECT enqueue_agent_task('n') FROM generate_series(1, 5)")
        query(db_url, """SELECT enqueue_agent_task('n', '{"fail_times": 1}')""")
        wait_until(lambda: query(db_url, "SELECT count(*) FROM agent_tasks "
                                         "WHERE status = 'completed'")[0][0] == 6,
                   message="six completions")

        def refreshed() -> str | None:
            text = httpx.get(f"{url}/metrics", timeout=5).text
            done = _value(_samples(text), "agent_runner_tasks", status="completed")
            return text if done == 6 else None

        # The task gauges are read from the database every few seconds.
        text = wait_until(refreshed, timeout=20, interval=0.5, message="cached task counts")
        after = _samples(text)

    started = "agent_runner_task_attempts_started_total"
    finished = "agent_runner_task_attempts_finished_total"
    assert _value(after, started, agent_type="noop") - _value(
        before, started, agent_type="noop") == 7
    assert _value(after, finished, agent_type="noop", outcome="completed") == 6
    assert _value(after, finished, agent_type="noop", outcome="retry") == 1
    assert _value(after, "agent_runner_execution_duration_seconds_count",
                  agent_type="noop") == 7
    assert _value(after, "agent_runner_queue_wait_seconds_count", agent_type="noop") == 7
    assert _value(after, "agent_runner_tasks", status="pending") == 0
    assert _value(after, "agent_runner_in_flight_tasks") == 0
    assert _value(after, "agent_runner_daemon_up") == 1
    assert _value(after, "agent_runner_last_heartbeat_timestamp_seconds") > 0
    # Labels are bounded: no ids anywhere.
    assert not any(len(value) >= 32 and value.count("-") == 4
                   for _, labels in after for _, value in labels)

    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (scripts/test.sh installs it)")
    check = subprocess.run([promtool, "check", "metrics"], input=text, text=True,
                           capture_output=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    assert check.stdout.strip() == "" and check.stderr.strip() == ""
