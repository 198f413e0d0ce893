"""Clock changes: a daemon and its PostgreSQL under libfaketime, at an accelerated clock,
across New York's fall-back (2026-11-01) and spring-forward (2026-03-08) nights.

A daily schedule at a time the night repeats (``30 1 * * *``) or skips (``30 2 * * *``)
makes exactly one task, which completes; ``/healthz`` answers within a second all along
(the old ``latest_fire_time`` looped forever once 01:30 came round again, freezing the
event loop).

How the two processes agree on the time. libfaketime's ``"@<start> x<rate>"`` starts a
process's clock at ``<start>`` when the library loads and runs it ``<rate>`` times as
fast (sleeps, ``poll`` and ``epoll_wait`` timeouts shrink to match, so asyncio's timers
keep step); each process anchors ``<start>`` at its own load, and the shared-memory
option of the ``faketime`` wrapper does not share it (0.9.10). So the test keeps one
model clock, ``fake = anchor + rate * (real - real_anchor)``: Postgres is started on it,
the model is then re-anchored on what Postgres answers (``clock_timestamp()``, at the
middle of the round trip), and the daemon is launched with the model's time on a whole
second, just as that second begins. What remains is each process's start-up latency
times the rate; the test measures the gap between the daemon's clock and Postgres's
(``cron_fires.created_at`` minus ``fire_time``) and prints it.

The rate is moderate, and why. libfaketime divides every sleep and poll timeout by the
rate, in whole milliseconds, and psycopg waits on each connection in slices of 0.1 s
(fake), so each connection waiting for a notification wakes the daemon every
``100 / RATE`` real milliseconds. From about x100 that slice rounds down to 0 ms and
asyncio's loop spins (a whole core); at x90 the daemon takes about 60% of one. The daemon's own
intervals (heartbeat, poll, reload) are set in fake seconds here, since they shrink with
the rate too; and the health check's 2-second pool timeout is only 22 real milliseconds.
The fall-back run covers 05:24-06:36 UTC, both 01:30s and a few minutes after the
second, in under a minute.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
import math
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from runner.migrate import migrate
from tests.faults.pgserver import ThrowawayPostgres, faketime_library, find_bindir
from tests.harness import DaemonProcess, daemons, query, wait_until

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(faketime_library() is None,
                       reason="libfaketime not installed (Debian package faketime)"),
]

UTC = dt.UTC
#: Fake seconds per real second.
RATE = 90
#: The daemon's intervals, in fake seconds (so in real time: these / RATE).
DAEMON_ENV = {
    "RUNNER_HEARTBEAT_INTERVAL": "30",
    "RUNNER_RESCUE_AFTER": "300",
    "RUNNER_POLL_INTERVAL": "60",
    "RUNNER_CRON_RELOAD_INTERVAL": "300",
    "RUNNER_SHUTDOWN_GRACE": "60",
    "RUNNER_CONCURRENCY": "2",
}
HEALTH_DEADLINE = 1.0  # real seconds
HEALTH_EVERY = 0.2  # real seconds


@dataclasses.dataclass
class ModelClock:
    """``fake = anchor + rate * (real - real_anchor)``; real time is ``time.time()``."""

    anchor: dt.datetime
    real_anchor: float
    rate: float

    def now(self, real: float | None = None) -> dt.datetime:
        real = time.time() if real is None else real
        return self.anchor + dt.timedelta(seconds=(real - self.real_anchor) * self.rate)

    def real_at(self, fake: dt.datetime) -> float:
        return self.real_anchor + (fake - self.anchor).total_seconds() / self.rate

    def launch_env(self, library: Path) -> dict[str, str]:
        """The environment that starts a process on this clock: the next whole fake
        second, returned just as it begins (libfaketime reads whole seconds)."""
        start = self.now().replace(microsecond=0) + dt.timedelta(seconds=1)
        delay = self.real_at(start) - time.time()
        if delay > 0:
            time.sleep(delay)
        return {
            "LD_PRELOAD": str(library),
            "FAKETIME": f"@{start:%Y-%m-%d %H:%M:%S} x{self.rate:g}",
            # "@" is read in local time
            "TZ": "UTC",
        }


class FakeClockPostgres(ThrowawayPostgres):
    """The throw-away server, which can also be started under libfaketime."""

    def start_on(self, clock: ModelClock) -> None:
        """Start under ``clock``. Two differences from :meth:`start`: ``pg_ctl`` does not
        wait (it compares the new pid file's start time, fake, with its own clock, real,
        and would take the server for a stale one), and the preload is set by ``env``
        after ``setpriv`` has dropped root (a root process under libfaketime creates its
        shared-memory semaphore as root; the server could not open it). Autovacuum is
        off: at this rate its launcher would wake every 0.7 real seconds."""
        library = faketime_library()
        assert library is not None
        options = (f"-p {self.port} -k {self.data} -c listen_addresses=127.0.0.1 "
                   "-c max_connections=200 -F -c full_page_writes=off "
                   "-c synchronous_commit=off -c autovacuum=off")
        env = {**clock.launch_env(library), "FAKETIME_ONLY_CMDS": "postgres"}
        self._run("/usr/bin/env", *(f"{key}={value}" for key, value in env.items()),
                  str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self.log),
                  "-W", "-o", options, "start")
        wait_until(self._answers, timeout=30, interval=0.05, message="the faked server")

    def _answers(self) -> bool:
        try:
            query(self.url(), "SELECT 1")
        except psycopg.Error:
            return False
        return True

    def postmaster_pid(self) -> int | None:
        try:
            return int((self.data / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def clock_on(self, rate: float) -> ModelClock:
        """The model clock re-anchored on the server's own (middle of the round trip)."""
        with psycopg.connect(self.url(), autocommit=True) as conn:
            best: tuple[float, dt.datetime, float] | None = None
            for _ in range(5):
                before = time.time()
                row = conn.execute("SELECT clock_timestamp()").fetchone()
                after = time.time()
                assert row is not None
                if best is None or after - before < best[0]:
                    best = (after - before, row[0], (before + after) / 2)
        assert best is not None
        return ModelClock(anchor=best[1], real_anchor=best[2], rate=rate)


def _remove_faketime_shm(pid: int | None) -> None:
    """libfaketime names its semaphore and shared memory after the process that made
    them, and a killed process leaves them in /dev/shm."""
    if pid is None:
        return
    for name in (f"faketime_shm_{pid}", f"sem.faketime_sem_{pid}"):
        with contextlib.suppress(OSError):
            os.unlink(f"/dev/shm/{name}")


@pytest.fixture(scope="module")
def clock_server() -> Iterator[FakeClockPostgres]:
    if find_bindir() is None:
        pytest.skip("no PostgreSQL server binaries (initdb, pg_ctl) installed")
    server = FakeClockPostgres()
    server.init()
    try:
        server.start()
        migrate(server.create_database("clock_template"))
        server.stop()
        yield server
    finally:
        server.remove()


@contextlib.contextmanager
def faked_database(server: FakeClockPostgres, name: str, start: dt.datetime
                   ) -> Iterator[tuple[str, ModelClock]]:
    """A fresh migrated database, then the server restarted on a clock from ``start``."""
    server.start()
    with psycopg.connect(server.url(), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name} TEMPLATE clock_template")
    server.stop()
    server.start_on(ModelClock(anchor=start, real_anchor=time.time(), rate=RATE))
    pid = server.postmaster_pid()
    try:
        yield server.url(name), server.clock_on(RATE)
    finally:
        server.stop()
        _remove_faketime_shm(pid)


def _events(daemon: DaemonProcess, name: str) -> list[dict[str, Any]]:
    found = []
    for line in daemon.log_text().splitlines():
        with contextlib.suppress(ValueError):
            event = json.loads(line)
            if isinstance(event, dict) and event.get("event") == name:
                found.append(event)
    return found


def _metrics_url(daemon: DaemonProcess) -> str | None:
    started = _events(daemon, "daemon_started")
    return str(started[0]["metrics_url"]) if started else None


def _logged(daemon: DaemonProcess, name: str) -> bool:
    return bool(_events(daemon, name))


class HealthProbe:
    """``GET /healthz`` every ``HEALTH_EVERY`` real seconds on a thread: how long each
    answer took, and its status (None: no answer within the deadline)."""

    def __init__(self, url: str) -> None:
        self._url = f"{url}/healthz"
        self._stop = threading.Event()
        self.answers: list[tuple[float, int | None]] = []
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> HealthProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        with httpx.Client(timeout=HEALTH_DEADLINE) as client:
            while not self._stop.is_set():
                began = time.monotonic()
                status: int | None
                try:
                    status = client.get(self._url).status_code
                except httpx.HTTPError:
                    status = None
                self.answers.append((time.monotonic() - began, status))
                self._stop.wait(max(0.0, HEALTH_EVERY - (time.monotonic() - began)))


def _run_across(server: FakeClockPostgres, tmp_path: Path, *, name: str, cron: str,
                start: dt.datetime, until: dt.datetime) -> dict[str, Any]:
    """Run a daemon with one ``cron`` agent in New York from ``start`` to ``until``
    (fake, UTC); what happened."""
    library = faketime_library()
    assert library is not None
    daemon_library = library.with_name("libfaketimeMT.so.1")  # the daemon has threads
    if not daemon_library.exists():
        daemon_library = library
    began = time.monotonic()
    with faked_database(server, name, start) as (db_url, clock):
        with psycopg.connect(db_url, autocommit=True) as conn:
            conn.execute("INSERT INTO ai_agents (name, agent_type, schedule_cron, "
                         "schedule_timezone) VALUES ('nightly', 'noop', %s, "
                         "'America/New_York')", (cron,))
        with daemons(db_url, tmp_path, **DAEMON_ENV, **clock.launch_env(daemon_library)
                     ) as [daemon]:
            try:
                url = wait_until(lambda: _metrics_url(daemon) or daemon.proc.poll() is not None,
                                 timeout=30, message="the daemon's metrics URL")
                assert isinstance(url, str), daemon.log_text()[-3000:]
                wait_until(lambda: _logged(daemon, "cron_schedule_loaded"), timeout=30,
                           interval=0.02, message="the schedule loaded")
                loaded_at = clock.now()
                with HealthProbe(url) as probe:
                    wait_until(lambda: clock.now() > until, timeout=180, interval=0.2,
                               message=f"fake time past {until}")
                    wait_until(lambda: _pending(db_url) == 0, timeout=30,
                               message="no task left to run")
                assert daemon.proc.poll() is None, daemon.log_text()[-3000:]
                fires = query(db_url, "SELECT fire_time, created_at FROM cron_fires "
                                      "ORDER BY fire_time")
                tasks = query(db_url, "SELECT status, trigger FROM agent_tasks")
                completed_twice = query(
                    db_url, "SELECT count(*) FROM (SELECT task_id FROM agent_executions "
                            "WHERE status = 'completed' GROUP BY task_id "
                            "HAVING count(*) > 1) d")[0][0]
                db_now = query(db_url, "SELECT now()")[0][0]
            finally:
                _remove_faketime_shm(daemon.pid)
    return {"fires": fires, "tasks": tasks, "completed_twice": completed_twice,
            "loaded_at": loaded_at, "db_now": db_now, "answers": probe.answers,
            "real_seconds": time.monotonic() - began, "log": daemon.log_text()}


def _pending(db_url: str) -> int:
    return int(query(db_url, "SELECT count(*) FROM agent_tasks "
                             "WHERE status NOT IN ('completed', 'failed', 'cancelled')")[0][0])


def _check(outcome: dict[str, Any], *, expected_fire: dt.datetime, label: str) -> None:
    answers = outcome["answers"]
    slowest = max((took for took, _ in answers), default=math.nan)
    unhealthy = sum(1 for _, status in answers if status != 200)
    print(f"fault figures: {label}: daemon up at {outcome['loaded_at']:%H:%M:%S} fake, "
          f"ran to {outcome['db_now']:%H:%M:%S}; fires (fire time, claimed) "
          f"{[(f.isoformat(), c.isoformat()) for f, c in outcome['fires']]}; "
          f"/healthz {len(answers)} probes, slowest {slowest:.3f} s, {unhealthy} not 200; "
          f"{outcome['real_seconds']:.1f} s real")
    assert len(outcome["fires"]) == 1, outcome["log"][-3000:]
    [(fire_time, claimed_at)] = outcome["fires"]
    gap = (claimed_at - fire_time).total_seconds()
    assert outcome["loaded_at"] < expected_fire, "the daemon started too late to fire on time"
    assert fire_time == expected_fire
    assert outcome["tasks"] == [("completed", "scheduled")]
    assert outcome["completed_twice"] == 0
    # on time by both clocks: the daemon's and the server's agree
    assert abs(gap) < 30, gap
    # Never a stalled event loop: every probe answered, within the deadline. (A 503 is
    # an answer: the health check's own 2 s pool timeout is a few real milliseconds
    # here, so a busy machine can fail one; most must pass.)
    assert len(answers) >= 10
    assert all(status is not None and took < HEALTH_DEADLINE
               for took, status in answers), answers
    assert unhealthy <= len(answers) // 10, answers


@pytest.mark.timeout(150)
def test_a_schedule_in_the_repeated_hour_fires_once_across_fall_back(
    clock_server: FakeClockPostgres, tmp_path: Path,
) -> None:
    """01:30 comes twice in New York on 2026-11-01 (05:30 EDT and 06:30 EST, in UTC):
    one task, at the first; nothing at the second, nor in the minutes after it."""
    outcome = _run_across(
        clock_server, tmp_path, name="fall_back", cron="30 1 * * *",
        start=dt.datetime(2026, 11, 1, 5, 24, tzinfo=UTC),
        until=dt.datetime(2026, 11, 1, 6, 36, tzinfo=UTC))
    _check(outcome, expected_fire=dt.datetime(2026, 11, 1, 5, 30, tzinfo=UTC),
           label="fall-back 30 1 * * *")


@pytest.mark.timeout(150)
def test_a_schedule_in_the_skipped_hour_fires_once_across_spring_forward(
    clock_server: FakeClockPostgres, tmp_path: Path,
) -> None:
    """02:30 does not happen in New York on 2026-03-08: one task, at 03:00 EDT (07:00 UTC)
    right after the jump; nothing more by 03:35 EDT."""
    outcome = _run_across(
        clock_server, tmp_path, name="spring_forward", cron="30 2 * * *",
        start=dt.datetime(2026, 3, 8, 6, 52, tzinfo=UTC),
        until=dt.datetime(2026, 3, 8, 7, 35, tzinfo=UTC))
    _check(outcome, expected_fire=dt.datetime(2026, 3, 8, 7, 0, tzinfo=UTC),
           label="spring-forward 30 2 * * *")
