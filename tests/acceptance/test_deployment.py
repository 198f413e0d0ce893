"""What the deployment files promise, checked on a real daemon: the warning as root,
and a stop that fits the systemd unit's TimeoutStopSec = grace + margin."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from tests.harness import daemons, query, wait_for_daemons, wait_until
from tests.unit.test_deployment_files import STOP_MARGIN_SECONDS

pytestmark = pytest.mark.slow


def _events(text: str) -> list[dict[str, object]]:
    events = []
    for line in text.splitlines():
        try:
            events.append(json.loads(line))
        except ValueError:
            continue
    return events


@pytest.mark.skipif(os.geteuid() != 0, reason="needs to run as root")
def test_running_as_root_warns_once_naming_the_dedicated_user(
    db_url: str, tmp_path: Path
) -> None:
    with daemons(db_url, tmp_path) as (daemon,):
        wait_until(lambda: any(e.get("event") == "daemon_started"
                               for e in _events(daemon.log_text())), message="the start")
        events = _events(daemon.log_text())
    warnings = [e for e in events if e.get("event") == "running_as_root"]
    assert len(warnings) == 1, warnings
    assert warnings[0]["level"] == "warning"
    assert "useradd --system" in str(warnings[0]["hint"])
    # Said before the daemon starts its work.
    names = [e.get("event") for e in events]
    assert names.index("running_as_root") < names.index("daemon_started")


def test_a_stop_with_work_running_fits_the_units_margin(db_url: str, tmp_path: Path) -> None:
    grace = 2
    query(db_url, "INSERT INTO ai_agents (name, agent_type) VALUES ('n', 'noop') RETURNING id")
    task_id = str(query(db_url, """SELECT enqueue_agent_task('n', '{"sleep_seconds": 60}')""")
                  [0][0])
    with daemons(db_url, tmp_path, RUNNER_SHUTDOWN_GRACE=str(grace)) as (daemon,):
        wait_for_daemons(db_url, 1)
        wait_until(lambda: query(db_url, "SELECT status FROM agent_tasks WHERE id = %s",
                                 (task_id,))[0][0] == "processing", message="the task running")
        began = time.monotonic()
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(timeout=grace + STOP_MARGIN_SECONDS + 30) == 0
        took = time.monotonic() - began
    assert grace <= took <= grace + STOP_MARGIN_SECONDS, took
    # Handed back, no retry spent: the next daemon runs it.
    assert query(db_url, "SELECT status, retry_count FROM agent_tasks WHERE id = %s",
                 (task_id,))[0] == ("pending", 0)
