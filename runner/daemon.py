"""``agent-runner run``: the worker, its supervised side tasks, and shutdown.

procrastinate's worker does the delivery (claim with SKIP LOCKED at bounded concurrency,
LISTEN/NOTIFY wake-up with polling as fallback, abort requests). Around it the daemon
runs its own side tasks, each with a ``run_once`` that tests call directly:

* heartbeat: proves this daemon alive in ``runner_daemons`` (and pings systemd's watchdog);
* rescuer: re-queues attempts whose daemon died or whose job ended without a finish.

If a side task dies, the daemon stops loudly (exit 1) rather than limp on.

Signals only set state. First SIGTERM/SIGINT: stop claiming, wait the grace period,
then hand unfinished attempts back without spending a retry; exit 0. Second: hand back
at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from typing import Any

import httpx
import procrastinate
import psycopg
import psycopg_pool
from procrastinate import job_context
from procrastinate.manager import JobManager
from procrastinate.worker import Worker
from psycopg_pool import AsyncConnectionPool

from runner import __version__, metrics, sdnotify
from runner.executor import JOB_FINISHED_BY_ATTEMPT, Executor, StopReason
from runner.http import MetricsServer, postgres_health_check
from runner.registry import Registry, default_registry
from runner.settings import Settings
from runner.store import Conn, channels
from runner.store import daemons as store

logger = logging.getLogger("runner.daemon")

_TRANSIENT = (OSError, TimeoutError, psycopg.OperationalError, psycopg_pool.PoolTimeout)
_MAX_TRANSIENT_FAILURES = 12
_CONTROL_POLL_SECONDS = 2.0
_METRICS_REFRESH_SECONDS = 5.0

QUEUE = "agent_runner"
TASK_NAME = "agent_runner.attempt"


async def _autocommit(conn: psycopg.AsyncConnection[Any]) -> None:
    """Pooled connections run in autocommit: single statements (procrastinate's fetch,
    the claim, the finish) then cost one round trip instead of BEGIN/…/COMMIT, and
    multi-statement writes say so with ``conn.transaction()``."""
    await conn.set_autocommit(True)


class ClaimGate(JobManager):
    """procrastinate's job manager with a switch: while paused, the worker finds no job.

    `agent-runner pause` must stop claiming on every daemon while in-flight work
    finishes; stopping the worker would instead abort in-flight work after the grace
    period. Fetching nothing is exactly "stop claiming".
    """

    paused: bool = False

    def __init__(self, connector: Any) -> None:
        super().__init__(connector)
        #: Jobs whose attempt already marked them succeeded in its own finish.
        self.finished_by_attempt: set[int] = set()

    async def fetch_job(self, queues: Iterable[str] | None, worker_id: int) -> Any:
        if self.paused:
            return None
        return await super().fetch_job(queues=queues, worker_id=worker_id)

    async def finish_job(self, job: Any, status: Any, delete_job: bool) -> None:
        # The attempt's finish statement already ended this job (one commit saved per
        # attempt); procrastinate's finish would fail on a job no longer 'doing'.
        if job.id in self.finished_by_attempt:
            self.finished_by_attempt.discard(job.id)
            return
        await super().finish_job(job=job, status=status, delete_job=delete_job)


def build_app(executor: Executor, stop_reason: Callable[[], StopReason | None]
              ) -> procrastinate.App:
    """A procrastinate app with the single task that runs one attempt."""
    app = procrastinate.App(connector=procrastinate.PsycopgConnector())
    app.job_manager = ClaimGate(app.connector)

    @app.task(name=TASK_NAME, queue=QUEUE, pass_context=True)
    async def attempt(context: job_context.JobContext, task_id: str) -> str:
        assert context.job.id is not None

        def reason() -> StopReason | None:
            aborted = context.abort_reason()
            if aborted is job_context.AbortReason.USER_REQUEST:
                return StopReason.USER_CANCEL
            if aborted is job_context.AbortReason.SHUTDOWN:
                return StopReason.SHUTDOWN
            return stop_reason()

        outcome = await executor.run_job(uuid.UUID(task_id), context.job.id, reason)
        if outcome.value in JOB_FINISHED_BY_ATTEMPT:
            gate = app.job_manager
            assert isinstance(gate, ClaimGate)
            gate.finished_by_attempt.add(context.job.id)
        return outcome.value

    return app


class Daemon:
    def __init__(
        self,
        settings: Settings,
        conninfo: str,
        *,
        registry: Registry | None = None,
        extra_side_tasks: list[Callable[[Daemon], Coroutine[Any, Any, None]]] | None = None,
    ) -> None:
        self.settings = settings
        self.conninfo = conninfo
        self.registry = registry or default_registry()
        self.extra_side_tasks = extra_side_tasks or []
        self.id = uuid.uuid4()
        self.stopping = False
        self.hard_stopping = False
        self._signals = 0
        self.pool: AsyncConnectionPool | None = None
        self.executor: Executor | None = None
        self.worker: Worker | None = None
        self.app: procrastinate.App | None = None
        self.metrics_server: MetricsServer | None = None

    # -- signals -------------------------------------------------------------------------

    def request_stop(self) -> None:
        self._signals += 1
        if self._signals == 1:
            logger.info("stop_requested", extra={"grace_seconds": self.settings.shutdown_grace})
            self.stopping = True
            sdnotify.stopping()
            metrics.daemon_stopping()
            if self.worker is not None:
                self.worker.stop()  # type: ignore[no-untyped-call]  # procrastinate leaves it unannotated
        else:
            logger.warning("hard_stop_requested")
            self.hard_stopping = True
            if self.executor is not None:
                for running in list(self.executor.running.values()):
                    running.cancel()

    def _stop_reason(self) -> StopReason | None:
        return StopReason.SHUTDOWN if self.hard_stopping else None

    # -- side tasks ----------------------------------------------------------------------

    async def heartbeat_once(self) -> None:
        assert self.pool is not None
        in_flight = self.executor.in_flight if self.executor else 0
        async with self.pool.connection() as conn:
            alive = await store.heartbeat(
                conn, daemon_id=self.id, in_flight=in_flight, stopping=self.stopping
            )
            if not alive:
                # Another daemon presumed us dead and removed our row; our running
                # attempts were rescued (their finishes will be fenced). Come back.
                logger.warning("daemon_row_missing_reregistering")
                await self._register(conn)
        metrics.heartbeat()
        sdnotify.watchdog()

    async def rescue_once(self) -> list[store.Rescued]:
        assert self.pool is not None
        async with self.pool.connection() as conn:
            rescued = await store.rescue_orphans(conn, min_age_seconds=1.0)
        for item in rescued:
            logger.warning(
                "attempt_rescued",
                extra={"task_id": str(item.task_id), "execution_id": str(item.execution_id),
                       "requeued": item.requeued},
            )
        if rescued:
            metrics.rescued(len(rescued))
        return rescued

    async def control_once(self) -> bool:
        """Apply the cluster-wide pause switch; returns whether claiming is paused."""
        assert self.pool is not None and self.app is not None
        async with self.pool.connection() as conn:
            paused = await store.claiming_paused(conn)
        gate = self.app.job_manager
        assert isinstance(gate, ClaimGate)
        if paused != gate.paused:
            gate.paused = paused
            logger.info("claiming_paused" if paused else "claiming_resumed")
            if not paused:
                self._wake_worker_after(0)
        return paused

    async def _listen_control(self) -> None:
        """Pause/resume reach every daemon at once through NOTIFY; ``control_once``
        also runs every 2 s as the fallback for a missed notification."""
        async with await psycopg.AsyncConnection.connect(self.conninfo, autocommit=True) as conn:
            await conn.execute(f"LISTEN {channels.CONTROL}")
            await self.control_once()
            gen = conn.notifies(timeout=_CONTROL_POLL_SECONDS)
            while True:
                async for _ in gen:
                    break
                await self.control_once()
                gen = conn.notifies(timeout=_CONTROL_POLL_SECONDS)

    async def _every(self, interval: float, step: Callable[[], Awaitable[Any]], name: str) -> None:
        """Run ``step`` every ``interval`` seconds. Connection trouble (Postgres
        restarting) is retried for a while; anything else kills the side task, and
        with it the daemon."""
        failures = 0
        while True:
            try:
                await step()
                failures = 0
            except _TRANSIENT as exc:
                failures += 1
                logger.warning(f"{name}_failed", extra={"error": str(exc), "failures": failures})
                if failures >= _MAX_TRANSIENT_FAILURES:
                    raise
            await asyncio.sleep(interval)

    async def _register(self, conn: Conn) -> None:
        await store.register_daemon(
            conn,
            daemon_id=self.id,
            host=socket.gethostname(),
            pid=os.getpid(),
            version=__version__,
            concurrency=self.settings.concurrency,
            poll_interval=self.settings.poll_interval,
            dead_after=self.settings.rescue_after,
        )

    # -- main ----------------------------------------------------------------------------

    async def run(self, *, install_signal_handlers: bool = True) -> int:
        loop = asyncio.get_running_loop()
        if install_signal_handlers:
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(signum, self.request_stop)
        settings = self.settings
        pool = AsyncConnectionPool(
            self.conninfo, min_size=2, max_size=settings.pool_size, open=False,
            name="agent-runner", configure=_autocommit,
        )
        await pool.open(wait=True, timeout=30)
        self.pool = pool
        http = httpx.AsyncClient(timeout=httpx.Timeout(20.0, connect=5.0),
                                 follow_redirects=True)
        try:
            self.executor = Executor(
                pool=pool, settings=settings, registry=self.registry, http=http,
                daemon_id=self.id,
                on_retry_scheduled=self._wake_worker_after,
            )
            app = self.app = build_app(self.executor, self._stop_reason)
            await app.open_async(pool=pool)
            host, port = settings.metrics_host_port
            self.metrics_server = MetricsServer(postgres_health_check(pool), host=host, port=port)
            await self.metrics_server.start()
            async with pool.connection() as conn:
                await self._register(conn)
            self.worker = Worker(
                app,
                queues=[QUEUE],
                name=f"agent-runner-{str(self.id)[:8]}",
                concurrency=settings.concurrency,
                fetch_job_polling_interval=settings.poll_interval,
                abort_job_polling_interval=min(2.0, settings.poll_interval),
                shutdown_graceful_timeout=settings.shutdown_grace,
                listen_notify=True,
                install_signal_handlers=False,
                update_heartbeat_interval=settings.heartbeat_interval,
                stalled_worker_timeout=settings.rescue_after,
            )
            return await self._supervise(pool)
        finally:
            if self.metrics_server is not None:
                await self.metrics_server.stop()
            await http.aclose()
            with contextlib.suppress(Exception):
                async with pool.connection(timeout=5) as conn:
                    await store.unregister_daemon(conn, self.id)
            await pool.close()
            if install_signal_handlers:
                for signum in (signal.SIGTERM, signal.SIGINT):
                    loop.remove_signal_handler(signum)

    def _wake_worker_after(self, delay: float) -> None:
        """Fetch again when a retry falls due, instead of waiting for the next poll.

        procrastinate wakes on NOTIFY for new jobs but not when a future job becomes
        due; without this a 1 s backoff would wait up to a whole poll interval. It sets
        the worker's own wake-up event (an internal of the pinned procrastinate).
        """

        def wake() -> None:
            event = getattr(self.worker, "_new_job_event", None)
            if isinstance(event, asyncio.Event):
                event.set()

        asyncio.get_running_loop().call_later(max(0.0, delay) + 0.005, wake)

    def _heartbeat_period(self) -> float:
        """The heartbeat also feeds systemd's watchdog, so it must beat at least as
        often as the watchdog asks (half of WATCHDOG_USEC), whatever the setting says."""
        watchdog = sdnotify.watchdog_interval()
        period = self.settings.heartbeat_interval
        return min(period, watchdog) if watchdog else period

    async def _supervise(self, pool: AsyncConnectionPool) -> int:
        assert self.worker is not None
        settings = self.settings
        side = {
            asyncio.create_task(
                self._every(self._heartbeat_period(), self.heartbeat_once, "heartbeat"),
                name="heartbeat"),
            asyncio.create_task(
                self._every(settings.heartbeat_interval, self.rescue_once, "rescuer"),
                name="rescuer"),
            asyncio.create_task(
                self._every(_METRICS_REFRESH_SECONDS,
                            lambda: metrics.refresh_task_counts(pool), "metrics_refresh"),
                name="metrics_refresh"),
            asyncio.create_task(self._listen_control(), name="control"),
        }
        for factory in self.extra_side_tasks:
            side.add(asyncio.create_task(factory(self), name=getattr(factory, "__name__", "side")))
        worker_task = asyncio.create_task(
            self.worker.run(), name="worker")  # type: ignore[no-untyped-call]
        metrics.daemon_started(__version__)
        sdnotify.ready()
        assert self.metrics_server is not None
        logger.info("daemon_started", extra={
            "daemon_id": str(self.id), "concurrency": settings.concurrency,
            "poll_interval": settings.poll_interval, "metrics_url": self.metrics_server.url})
        exit_code = 0
        done, _ = await asyncio.wait({worker_task, *side}, return_when=asyncio.FIRST_COMPLETED)
        if worker_task not in done:
            for task in done:
                exc = task.exception()
                logger.error("side_task_died", extra={"side_task": task.get_name(),
                                                      "error": repr(exc)})
            exit_code = 1
            self.worker.stop()  # type: ignore[no-untyped-call]  # procrastinate leaves it unannotated
        # Wait without re-raising: a worker that crashed is logged and exits 1 below.
        await asyncio.wait({worker_task})
        if not worker_task.cancelled() and worker_task.exception() is not None:
            logger.error("worker_died", extra={"error": repr(worker_task.exception())})
            exit_code = 1
        elif not self.stopping and exit_code == 0:
            logger.error("worker_stopped_unexpectedly")
            exit_code = 1
        for task in side:
            task.cancel()
        await asyncio.gather(*side, return_exceptions=True)
        logger.info("daemon_stopped", extra={"exit_code": exit_code})
        return exit_code
