"""The cron scheduler every daemon runs: agents' ``schedule_cron`` -> scheduled tasks,
streams' ``schedule_cron`` -> scheduled runs of their workflow.

Each daemon keeps an APScheduler ``AsyncIOScheduler`` with one job per active agent
that has a schedule, and one per stream that has one. Exactly one task (or run) per
fire time across N daemons comes from the database, not from coordination between
daemons: a fire is claimed by inserting (agent, fire time) into ``cron_fires`` and the
task is enqueued only by the daemon whose insert won, in the same transaction
(``runner_cron_fire``); a stream's fire likewise in ``stream_cron_fires``
(``runner_stream_cron_fire``), which starts no second run while the stream's previous
scheduled run is still going (the fire is recorded as skipped). So every daemon must
name a fire the same way: by its scheduled time, which APScheduler's own job runner
does not hand to the job; :class:`_FireTimeExecutor` does.

Schedules are reloaded when ``ai_agents`` or ``streams`` announces a change on
``agent_runner_schedules`` (LISTEN on a dedicated autocommit connection), and every
``reload_interval`` seconds as the fallback. A fire computed from a schedule that has
changed since is refused by the database ("stale"), so an UPDATE takes effect at once
for what is enqueued, and within a reload for when the next fires happen.

Missed fires (no daemon running at the time): each (re)load compares the latest fire
recorded for the agent (or stream) with the schedule's previous fire time. With
``catchup="once"`` (default) one task (or run) is started for the whole missed period;
with ``"skip"`` none, the schedule just carries on. A fire less than
:data:`ON_TIME_GRACE` late counts as on time under both policies (a daemon restart, a
busy event loop).

When a schedule fires is :mod:`runner.cron`'s answer (cronsim, Debian cron's rules):
each job's trigger asks it, and so does ``agent-runner schedules``. APScheduler only
keeps the jobs and wakes them up.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
import time
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final, Literal
from uuid import UUID

import psycopg
from apscheduler.executors.asyncio import AsyncIOExecutor
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.base import BaseTrigger
from psycopg_pool import AsyncConnectionPool

from runner import cron, metrics, sidetasks
from runner.store import channels
from runner.store import cron as store

if TYPE_CHECKING:
    from runner.settings import Settings

logger = logging.getLogger("runner.scheduler")

CatchUp = Literal["once", "skip"]

#: A fire this late or less is on time, whatever the catch-up policy.
ON_TIME_GRACE: Final = dt.timedelta(seconds=60)
#: Fires recorded in cron_fires are kept this long (the latest per agent is kept forever).
FIRE_RETENTION: Final = dt.timedelta(days=7)
_PRUNE_EVERY_SECONDS: Final = 600.0
#: A burst of schedule changes (a script updating many agents) costs one reload.
_DEBOUNCE_SECONDS: Final = 0.1
#: Fires of one agent may overlap when the database is slow; each is its own claim.
_MAX_CONCURRENT_FIRES: Final = 4
_UTC = dt.UTC
_TICK: Final = dt.timedelta(microseconds=1)


# =====================================================================================
# The trigger
# =====================================================================================


class ScheduleTrigger(BaseTrigger):  # type: ignore[misc]  # apscheduler is untyped
    """An APScheduler trigger whose times are :mod:`runner.cron`'s, so the scheduler and
    ``agent-runner schedules`` agree with cronsim to the second, DST included."""

    __slots__ = ("schedule",)

    def __init__(self, schedule: cron.CronSchedule) -> None:
        self.schedule = schedule

    def get_next_fire_time(
        self, previous_fire_time: dt.datetime | None, now: dt.datetime
    ) -> dt.datetime | None:
        """At or after ``now`` for a new job (as ``CronTrigger`` does), else the fire after
        ``previous_fire_time``. Times are in the schedule's zone, for readable logs."""
        if previous_fire_time is None:
            fire = self.schedule.next_fire_time(now - _TICK)
        else:
            fire = self.schedule.next_fire_time(previous_fire_time)
            if fire is not None and fire < now:
                # A backlog (the event loop stalled): APScheduler walks every due time up
                # to now, one call each; jobs coalesce to the latest, so go straight there.
                fire = self.schedule.latest_fire_time(now, previous_fire_time) or fire
        return None if fire is None else fire.astimezone(self.schedule.zone)

    def __str__(self) -> str:
        return f"cron[{self.schedule.expr!r}, {self.schedule.tz}]"

    def __repr__(self) -> str:
        return f"<ScheduleTrigger {self.schedule.expr!r} {self.schedule.tz}>"


# =====================================================================================
# The scheduler
# =====================================================================================


class _FireTimeExecutor(AsyncIOExecutor):  # type: ignore[misc]  # apscheduler is untyped
    """Runs each fire with its scheduled time as ``fire_time``.

    APScheduler's ``run_coroutine_job`` calls the job without the time it was scheduled
    for, and the dedup key needs exactly that time. Jobs coalesce, so ``run_times`` holds
    the latest due time only (a backlog after a stall fires once).
    """

    def _do_submit_job(self, job: Any, run_times: list[dt.datetime]) -> None:
        task = self._eventloop.create_task(
            job.func(*job.args, fire_time=run_times[-1], **job.kwargs)
        )
        self._pending_futures.add(task)

        def done(finished: asyncio.Task[None]) -> None:
            self._pending_futures.discard(finished)
            if not finished.cancelled() and finished.exception() is not None:
                error = finished.exception()
                self._run_job_error(job.id, error, error.__traceback__ if error else None)
            else:
                self._run_job_success(job.id, [])

        task.add_done_callback(done)

    def in_flight(self) -> set[asyncio.Task[None]]:
        return {task for task in self._pending_futures if not task.done()}


@dataclasses.dataclass(frozen=True, slots=True)
class _Loaded:
    """A schedule as loaded: an agent's (each fire enqueues a task) or a stream's (each
    fire starts a run of its workflow)."""

    row: store.ScheduleRow | store.StreamScheduleRow
    trigger: ScheduleTrigger

    @property
    def key(self) -> tuple[str, str]:
        return self.row.schedule_cron, self.row.schedule_timezone

    @property
    def job_id(self) -> str:
        """The APScheduler job's id: an agent's id, or ``stream:`` and a stream's id."""
        return _job_id(self.row)

    def log_fields(self) -> dict[str, str]:
        return _log_fields(self.row)


def _job_id(row: store.ScheduleRow | store.StreamScheduleRow) -> str:
    if isinstance(row, store.ScheduleRow):
        return str(row.agent_id)
    return f"stream:{row.stream_id}"


def _log_fields(row: store.ScheduleRow | store.StreamScheduleRow) -> dict[str, str]:
    """Whose schedule it is, for log lines: an agent's keeps the fields it always had."""
    if isinstance(row, store.ScheduleRow):
        return {"agent_id": str(row.agent_id), "agent": row.name}
    return {"stream_id": str(row.stream_id), "stream": row.name}


class CronScheduler:
    """One daemon's scheduler. ``reload`` is its ``run_once``; ``run`` is the side task."""

    def __init__(
        self,
        pool: AsyncConnectionPool,
        *,
        daemon_id: UUID | None = None,
        catchup: CatchUp = "once",
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(_UTC),
    ) -> None:
        if catchup not in ("once", "skip"):
            raise ValueError(f"catchup must be 'once' or 'skip', got {catchup!r}")
        self._pool = pool
        self._daemon_id = daemon_id
        self._catchup: CatchUp = catchup
        self._clock = clock
        self._executor = _FireTimeExecutor()
        self._scheduler = AsyncIOScheduler(
            timezone=_UTC,
            executors={"default": self._executor},
            job_defaults={
                "coalesce": True,
                "max_instances": _MAX_CONCURRENT_FIRES,
                # Lateness is judged in _on_fire (catch-up policy), not by APScheduler.
                "misfire_grace_time": None,
            },
        )
        #: agents' schedules by agent id, streams' by stream id
        self._loaded: dict[UUID, _Loaded] = {}
        self._loaded_streams: dict[UUID, _Loaded] = {}
        # Job ids whose missed fires are checked at the next reload: schedules new or
        # changed in this daemon (its (re)load), and fires that failed on a connection
        # problem. Not every schedule at every reload: the look-back costs CPU.
        self._catch_up_due: set[str] = set()
        self._reported_invalid: set[tuple[str, str, str]] = set()
        self._reported_skipped: set[tuple[str, dt.datetime]] = set()
        self._fatal: BaseException | None = None
        self._last_prune = 0.0
        #: outcomes of this scheduler's fire attempts (tests and logs)
        self.outcomes: Counter[str] = Counter()

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        if not self._scheduler.running:
            self._scheduler.start()

    async def close(self, *, grace: float = 5.0) -> None:
        """Stop firing; let fires already claiming finish (each is one short transaction)."""
        if self._scheduler.running:
            self._scheduler.pause()
        in_flight = self._executor.in_flight() if self._scheduler.running else set()
        if in_flight:
            await asyncio.wait(in_flight, timeout=grace)
        if self._scheduler.running:
            self._scheduler.shutdown(wait=False)
            # AsyncIOScheduler shuts down in a loop callback; let it run.
            await asyncio.sleep(0)
        self._loaded.clear()
        self._loaded_streams.clear()

    @property
    def agent_ids(self) -> set[UUID]:
        return set(self._loaded)

    @property
    def stream_ids(self) -> set[UUID]:
        return set(self._loaded_streams)

    def next_fire_time(self, agent_id: UUID) -> dt.datetime | None:
        job = self._scheduler.get_job(str(agent_id))
        return job.next_run_time if job is not None else None

    def next_stream_fire_time(self, stream_id: UUID) -> dt.datetime | None:
        job = self._scheduler.get_job(f"stream:{stream_id}")
        return job.next_run_time if job is not None else None

    # -- run_once ------------------------------------------------------------------------

    async def reload(self) -> None:
        """Bring the jobs in line with the database, then catch up missed fires."""
        async with self._pool.connection() as conn:
            rows = await store.load_schedules(conn)
            stream_rows = await store.load_stream_schedules(conn)
            if time.monotonic() - self._last_prune > _PRUNE_EVERY_SECONDS:
                self._last_prune = time.monotonic()
                await store.prune_cron_fires(conn, older_than=FIRE_RETENTION)
        self._loaded = self._sync_jobs(self._loaded, {row.agent_id: row for row in rows})
        self._loaded_streams = self._sync_jobs(
            self._loaded_streams, {row.stream_id: row for row in stream_rows})
        by_job = {loaded.job_id: loaded
                  for loaded in (*self._loaded.values(), *self._loaded_streams.values())}
        self._catch_up_due &= by_job.keys()
        for job_id in sorted(self._catch_up_due):
            self._catch_up_due.discard(job_id)
            await self._catch_up(by_job[job_id])

    def _sync_jobs(
        self,
        current: dict[UUID, _Loaded],
        rows: dict[UUID, store.ScheduleRow] | dict[UUID, store.StreamScheduleRow],
    ) -> dict[UUID, _Loaded]:
        """One kind of schedule's jobs in line with its rows; returns what is loaded."""
        wanted: dict[UUID, _Loaded] = {}
        for schedule_id, row in rows.items():
            loaded_now = current.get(schedule_id)
            if loaded_now is not None and loaded_now.key == (row.schedule_cron,
                                                             row.schedule_timezone):
                wanted[schedule_id] = _Loaded(row, loaded_now.trigger)
                continue
            try:
                trigger = ScheduleTrigger(
                    cron.parse_cron(row.schedule_cron, row.schedule_timezone))
            except cron.CronError as exc:
                # Only rows written before validation existed can get here; say so once.
                seen = (_job_id(row), row.schedule_cron, row.schedule_timezone)
                if seen not in self._reported_invalid:
                    self._reported_invalid.add(seen)
                    logger.error("cron_schedule_invalid", extra={
                        **_log_fields(row), "error": str(exc)})
                continue
            wanted[schedule_id] = _Loaded(row, trigger)
        for schedule_id in current.keys() - wanted.keys():
            gone = current[schedule_id]
            self._scheduler.remove_job(gone.job_id)
            logger.info("cron_schedule_removed", extra=gone.log_fields())
        for schedule_id, loaded in wanted.items():
            loaded_now = current.get(schedule_id)
            if loaded_now is None or loaded_now.key != loaded.key:
                # The job carries the schedule it was computed from: its fires claim
                # with that expression, and the database refuses them once it changed.
                job = self._scheduler.add_job(
                    self._on_fire, loaded.trigger, args=[loaded], id=loaded.job_id,
                    name=f"cron:{loaded.row.name}", replace_existing=True,
                )
                self._catch_up_due.add(loaded.job_id)
                logger.info("cron_schedule_loaded", extra={
                    **loaded.log_fields(),
                    "schedule_cron": loaded.row.schedule_cron,
                    "schedule_timezone": loaded.row.schedule_timezone,
                    "next_fire_time": str(job.next_run_time)})
        return wanted

    async def _catch_up(self, loaded: _Loaded) -> None:
        row = loaded.row
        since = row.schedule_changed_at
        if row.last_fire_time is not None and row.last_fire_time > since:
            since = row.last_fire_time
        now = self._clock()
        missed = loaded.trigger.schedule.latest_fire_time(now, after=since)
        if missed is None:
            return
        if now - missed > ON_TIME_GRACE and self._catchup == "skip":
            if (loaded.job_id, missed) not in self._reported_skipped:
                self._reported_skipped.add((loaded.job_id, missed))
                logger.info("cron_missed_fire_skipped", extra={
                    **loaded.log_fields(), "fire_time": missed.isoformat()})
            return
        # Often a fire another daemon (or this one) is claiming right now: the claim
        # resolves it, one task (or run) either way.
        result = await self._fire(loaded, missed)
        if result is not None and result.outcome in ("enqueued", "started") \
                and now - missed > ON_TIME_GRACE:
            logger.info("cron_missed_fire_caught_up", extra={
                **loaded.log_fields(), "fire_time": missed.isoformat(),
                "task_id": str(result.task_id),
                "workflow_run_id": str(result.workflow_run_id)})

    # -- fires ---------------------------------------------------------------------------

    async def _on_fire(self, loaded: _Loaded, *, fire_time: dt.datetime | None = None) -> None:
        """A job's fire, from APScheduler (with the scheduled time, see the executor;
        the default only keeps APScheduler's signature check at add_job quiet)."""
        try:
            if fire_time is None:
                raise RuntimeError("cron fire without its scheduled time")
            late = self._clock() - fire_time
            if late > ON_TIME_GRACE and self._catchup == "skip":
                logger.info("cron_late_fire_skipped", extra={
                    **loaded.log_fields(), "fire_time": fire_time.isoformat(),
                    "late_seconds": late.total_seconds()})
                return
            await self._fire(loaded, fire_time)
        except Exception as exc:
            # A bug, not a database problem (those are handled in _fire): stop the
            # daemon loudly through run().
            logger.exception("cron_fire_crashed", extra=loaded.log_fields())
            self._fatal = exc

    async def fire(self, agent_id: UUID, fire_time: dt.datetime) -> store.FireResult | None:
        """Claim one fire of a loaded schedule now, as its job would (tests, tools).
        ``None`` when the agent has no loaded schedule or the database failed."""
        loaded = self._loaded.get(agent_id)
        return None if loaded is None else await self._fire(loaded, fire_time)

    async def fire_stream(
        self, stream_id: UUID, fire_time: dt.datetime
    ) -> store.FireResult | None:
        """:meth:`fire` for a stream's schedule: claim the fire, start the run."""
        loaded = self._loaded_streams.get(stream_id)
        return None if loaded is None else await self._fire(loaded, fire_time)

    async def _fire(self, loaded: _Loaded, fire_time: dt.datetime) -> store.FireResult | None:
        """Claim the fire; enqueue its task (or start its run) if this daemon won.
        Database trouble loses only this attempt: the next reload catches the fire up
        (policy "once")."""
        row = loaded.row
        try:
            async with self._pool.connection() as conn:
                if isinstance(row, store.ScheduleRow):
                    result = await store.record_cron_fire(
                        conn, agent_id=row.agent_id, fire_time=fire_time,
                        schedule_cron=row.schedule_cron,
                        schedule_timezone=row.schedule_timezone, daemon_id=self._daemon_id,
                    )
                else:
                    result = await store.record_stream_fire(
                        conn, stream_id=row.stream_id, fire_time=fire_time,
                        schedule_cron=row.schedule_cron,
                        schedule_timezone=row.schedule_timezone, daemon_id=self._daemon_id,
                    )
        except sidetasks.TRANSIENT_ERRORS as exc:
            self.outcomes["error"] += 1
            self._catch_up_due.add(loaded.job_id)
            logger.warning("cron_fire_failed", extra={
                **loaded.log_fields(), "fire_time": fire_time.isoformat(), "error": str(exc)})
            return None
        except psycopg.Error as exc:
            # Bad data on one agent (e.g. a payload the queue refuses) must not stop
            # every other schedule.
            self.outcomes["error"] += 1
            logger.error("cron_fire_refused", extra={
                **loaded.log_fields(), "fire_time": fire_time.isoformat(), "error": str(exc)})
            return None
        self.outcomes[result.outcome] += 1
        if result.outcome == "enqueued":
            assert isinstance(row, store.ScheduleRow)
            metrics.cron_fired(result.agent_type or row.agent_type)
            logger.info("cron_fired", extra={
                **loaded.log_fields(), "fire_time": fire_time.isoformat(),
                "task_id": str(result.task_id)})
        elif result.outcome == "started":
            logger.info("stream_cron_fired", extra={
                **loaded.log_fields(), "fire_time": fire_time.isoformat(),
                "workflow_run_id": str(result.workflow_run_id)})
        elif result.outcome == "skipped":
            # The previous scheduled run of the stream is still going: no overlap.
            logger.info("stream_cron_fire_skipped", extra={
                **loaded.log_fields(), "fire_time": fire_time.isoformat(),
                "workflow_run_id": str(result.workflow_run_id), "reason": result.note})
        elif result.outcome == "failed":
            logger.warning("stream_cron_fire_not_started", extra={
                **loaded.log_fields(), "fire_time": fire_time.isoformat(),
                "reason": result.note})
        elif result.outcome != "duplicate":
            logger.info("cron_fire_dropped", extra={
                **loaded.log_fields(), "fire_time": fire_time.isoformat(),
                "outcome": result.outcome})
        return result

    # -- the side task -------------------------------------------------------------------

    def _raise_if_fatal(self) -> None:
        if self._fatal is not None:
            raise RuntimeError("a cron fire crashed") from self._fatal

    async def run(self, conninfo: str, *, reload_interval: float = 5.0) -> None:
        """Schedule until cancelled. Connection trouble is retried with backoff for a
        while; after that, or on a bug, this raises (and the daemon stops loudly)."""
        self.start()
        retrying = sidetasks.Retrying("cron_scheduler")
        try:
            while True:
                try:
                    async with await psycopg.AsyncConnection.connect(
                        conninfo, autocommit=True
                    ) as listen:
                        await channels.listen(listen, channels.SCHEDULES)
                        # Whatever changed while nobody listened is picked up here.
                        await self.reload()
                        retrying.succeeded()
                        while True:
                            self._raise_if_fatal()
                            await _wait_for_notification(listen, reload_interval)
                            self._raise_if_fatal()
                            await self.reload()
                except sidetasks.TRANSIENT_ERRORS as exc:
                    await retrying.failed(exc)
        finally:
            await self.close()


async def _wait_for_notification(listen: psycopg.AsyncConnection[Any], within: float) -> None:
    """Return on the first notification (after a short debounce) or after ``within`` seconds.

    The generators run to their end (stop_after / timeout) rather than being broken
    out of: an abandoned ``notifies()`` generator keeps the connection's lock.
    """
    received = 0
    async for _ in listen.notifies(timeout=within, stop_after=1):
        received += 1
    if received:
        async for _ in listen.notifies(timeout=_DEBOUNCE_SECONDS):
            pass


# =====================================================================================
# Daemon wiring
# =====================================================================================


_DEFAULT_CATCHUP: Final[CatchUp] = "once"
_DEFAULT_RELOAD_INTERVAL: Final = 5.0


@dataclasses.dataclass(frozen=True, slots=True)
class SchedulerOptions:
    catchup: CatchUp = _DEFAULT_CATCHUP
    reload_interval: float = _DEFAULT_RELOAD_INTERVAL

    @classmethod
    def from_settings(cls, settings: Settings) -> SchedulerOptions:
        """``RUNNER_CRON_CATCHUP`` and ``RUNNER_CRON_RELOAD_INTERVAL`` (validated there)."""
        return cls(catchup=settings.cron_catchup, reload_interval=settings.cron_reload_interval)


async def scheduler_side_task(
    pool: AsyncConnectionPool, *, conninfo: str, settings: Settings, daemon_id: UUID
) -> None:
    """The cron scheduler for a daemon's life: one of every daemon's side tasks."""
    options = SchedulerOptions.from_settings(settings)
    scheduler = CronScheduler(pool, daemon_id=daemon_id, catchup=options.catchup)
    await scheduler.run(conninfo, reload_interval=options.reload_interval)
