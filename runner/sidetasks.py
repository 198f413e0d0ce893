"""The one transient-failure policy of the daemon's side tasks.

Every side task (heartbeat, rescuer, metrics refresh, the pause listener, the cron
scheduler) talks to Postgres in a loop. Connection trouble is expected (a restart, a
failover, a dropped connection): it is logged, waited out with jittered exponential
backoff, and retried. Only when it lasts :attr:`TransientPolicy.max_failures` tries in
a row does the side task give up, and with it the daemon (loudly, exit 1). Any other
error is a bug and ends the side task at once.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Final

import psycopg
import psycopg_pool

from runner.api import backoff_delay

logger = logging.getLogger("runner.sidetasks")

#: What counts as connection trouble rather than a bug.
TRANSIENT_ERRORS: Final = (
    OSError, TimeoutError, psycopg.OperationalError, psycopg_pool.PoolTimeout,
)


@dataclasses.dataclass(frozen=True, slots=True)
class TransientPolicy:
    #: consecutive failures before the side task gives up
    max_failures: int = 12
    #: backoff: about base, 2*base, 4*base ... at most max_delay seconds
    base_delay: float = 0.25
    max_delay: float = 30.0

    def delay(self, failures: int) -> float:
        return backoff_delay(failures, base=self.base_delay, cap=self.max_delay)


DEFAULT_POLICY: Final = TransientPolicy()


class Retrying:
    """Counts one side task's consecutive transient failures and waits them out."""

    def __init__(self, name: str, policy: TransientPolicy = DEFAULT_POLICY) -> None:
        self.name = name
        self.policy = policy
        self.failures = 0

    def succeeded(self) -> None:
        self.failures = 0

    async def failed(self, exc: BaseException) -> None:
        """Log the failure and wait before the next try; re-raise ``exc`` once the
        policy's limit is reached."""
        self.failures += 1
        logger.warning(f"{self.name}_failed", extra={
            "error": str(exc), "failures": self.failures})
        if self.failures >= self.policy.max_failures:
            raise exc
        await asyncio.sleep(self.policy.delay(self.failures))


async def every(
    interval: float,
    step: Callable[[], Awaitable[Any]],
    name: str,
    *,
    policy: TransientPolicy = DEFAULT_POLICY,
) -> None:
    """Run ``step`` every ``interval`` seconds, for ever, under the policy."""
    retrying = Retrying(name, policy)
    while True:
        try:
            await step()
        except TRANSIENT_ERRORS as exc:
            await retrying.failed(exc)
            continue
        retrying.succeeded()
        await asyncio.sleep(interval)
