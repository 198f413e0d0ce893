"""Faults of the database: a restart mid-run, connections dropped again and again, a
daemon started before its database. Each ends with every task completed exactly once,
nothing pending or processing, and every daemon still running.

The times this suite measures (server back -> first completed task, connection drop ->
working again) are printed on the ``fault figures`` lines (``pytest -s``).
"""

from __future__ import annotations

import statistics
import threading
import time
from pathlib import Path

import pytest

from tests.faults.conftest import assert_all_completed_once, counts, enqueue_noops
from tests.faults.pgserver import ThrowawayPostgres
from tests.harness import daemons, query, wait_for_daemons, wait_until

pytestmark = pytest.mark.slow

#: The production defaults for rescue (the harness's 5 s would rescue attempts of a
#: daemon that is only waiting for its database to come back; that is allowed, but
#: this suite wants to see the daemon itself ride through).
RIDE_THROUGH_ENV = {"RUNNER_HEARTBEAT_INTERVAL": "1", "RUNNER_RESCUE_AFTER": "20",
                    "RUNNER_CONCURRENCY": "4"}


def _completed(db_url: str) -> int:
    try:
        return int(query(db_url, "SELECT count(*) FROM agent_tasks WHERE status = 'completed'")
                   [0][0])
    except Exception:  # the server may be down right now
        return -1


def _first_completion_after(db_url: str, before: int, timeout: float) -> float:
    """Seconds until the count of completed tasks exceeds ``before``."""
    started = time.monotonic()
    wait_until(lambda: _completed(db_url) > before, timeout=timeout,
               message="a task completed after the fault")
    return time.monotonic() - started


@pytest.mark.timeout(240)
def test_postgres_restart_mid_run_loses_nothing_and_the_daemon_stays(
    pg_server: ThrowawayPostgres, fault_db: tuple[str, str], tmp_path: Path,
) -> None:
    db_url, _ = fault_db
    enqueue_noops(db_url, 80, sleep=0.2)
    with daemons(db_url, tmp_path, **RIDE_THROUGH_ENV) as [daemon]:
        wait_for_daemons(db_url, 1)
        wait_until(lambda: _completed(db_url) >= 15, timeout=60, message="15 tasks done")
        pg_server.restart(down_for=2.0)
        done_before = _completed(db_url)
        back_to_work = _first_completion_after(db_url, done_before, timeout=60)
        wait_until(lambda: _completed(db_url) == 80, timeout=120, message="all 80 completed")
        # Work enqueued after the restart is picked up too.
        enqueue_noops(db_url, 5, agent="after")
        began = time.monotonic()
        wait_until(lambda: _completed(db_url) == 85, timeout=30, message="post-restart work")
        after_restart = time.monotonic() - began
        assert daemon.proc.poll() is None, daemon.log_text()[-3000:]
    assert_all_completed_once(db_url, 85)
    print(f"fault figures: restart: server back -> first completed task {back_to_work:.2f} s; "
          f"new work after restart completed in {after_restart:.2f} s")


@pytest.mark.timeout(300)
def test_connections_terminated_every_two_seconds_lose_nothing(
    pg_server: ThrowawayPostgres, fault_db: tuple[str, str], tmp_path: Path,
) -> None:
    db_url, dbname = fault_db
    # Long enough that the drops land while the work drains (8 slots: about 20 s).
    enqueue_noops(db_url, 300, sleep=0.5)
    recoveries: list[float] = []
    with daemons(db_url, tmp_path, count=2, **RIDE_THROUGH_ENV) as started:
        wait_for_daemons(db_url, 2)
        stop = threading.Event()

        def drop_connections() -> None:
            for _ in range(12):
                if stop.wait(2.0):
                    return
                before = _completed(db_url)
                pg_server.terminate_backends(dbname)
                dropped = time.monotonic()
                if before < 300:
                    # how long until a task completes again
                    while _completed(db_url) <= before and time.monotonic() - dropped < 2.0:
                        time.sleep(0.02)
                    if _completed(db_url) > before:
                        recoveries.append(time.monotonic() - dropped)

        dropper = threading.Thread(target=drop_connections)
        dropper.start()
        try:
            dropper.join(timeout=60)
        finally:
            stop.set()
        last_drop = time.monotonic()
        wait_until(lambda: _completed(db_url) == 300, timeout=120,
                   message="all 300 completed after the last drop")
        drained_in = time.monotonic() - last_drop
        for daemon in started:
            assert daemon.proc.poll() is None, daemon.log_text()[-3000:]
    assert_all_completed_once(db_url, 300)
    median = statistics.median(recoveries) if recoveries else float("nan")
    print(f"fault figures: connection drop -> a task completes again, median {median:.2f} s "
          f"over {len(recoveries)} drops; drained {drained_in:.1f} s after the last drop")


@pytest.mark.timeout(120)
def test_a_daemon_started_before_its_database_waits_then_works(
    pg_server: ThrowawayPostgres, fault_db: tuple[str, str], tmp_path: Path,
) -> None:
    db_url, _ = fault_db
    enqueue_noops(db_url, 3)
    pg_server.stop()
    try:
        with daemons(db_url, tmp_path, **RIDE_THROUGH_ENV) as [daemon]:
            time.sleep(4.0)
            assert daemon.proc.poll() is None, daemon.log_text()[-3000:]
            pg_server.start()
            wait_until(lambda: _completed(db_url) == 3, timeout=60, message="tasks done")
            assert daemon.proc.poll() is None
            assert "database_unreachable" in daemon.log_text()
    finally:
        pg_server.start() if not _server_answers(pg_server) else None
    assert counts(db_url)["status"] == {"completed": 3}


def _server_answers(server: ThrowawayPostgres) -> bool:
    try:
        query(server.url(), "SELECT 1")
    except Exception:
        return False
    return True
