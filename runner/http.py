"""The metrics and health endpoint on ``RUNNER_METRICS_ADDR``.

``GET /metrics`` serves :func:`runner.metrics.render` (classic text format), ``GET
/healthz`` answers 200 ``ok`` while the daemon's health check passes and 503 with the
reason otherwise; anything else is 404, and any method but GET (or HEAD) is 405.

Why a small asyncio server and not prometheus_client's WSGI app in a thread: the health
check is a coroutine that must run on the daemon's loop, beside the pool it checks, and
a threaded server would have to hop back onto that loop for every probe. Two fixed GET
routes need only a request line and the end of the headers, so the parser is a dozen
lines. Rendering the exposition is synchronous CPU work, so it runs in a worker thread
(prometheus_client is thread-safe, and the database figures come from a cached
snapshot, so a scrape never waits on Postgres). Every response closes its connection:
scrapers and probes send one request per connection anyway, and it keeps the server
free of keep-alive state.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from types import TracebackType
from typing import Any, Final

from psycopg_pool import AsyncConnectionPool

from runner import metrics
from runner.store import monitoring

__all__ = ["HealthCheck", "MetricsServer", "postgres_health_check"]

logger = logging.getLogger(__name__)

#: An async callable that returns when healthy and raises (with the reason) otherwise.
HealthCheck = Callable[[], Awaitable[None]]

# A request head larger than this is not a scrape or a probe.
_MAX_HEAD_BYTES: Final = 16 * 1024
# A client that has not sent its request head by then is dropped (slowloris).
_READ_TIMEOUT_SECONDS: Final = 10.0
_REASON_MAX_CHARS: Final = 300
_TEXT_PLAIN: Final = "text/plain; charset=utf-8"


def postgres_health_check(pool: AsyncConnectionPool[Any], *, timeout: float = 2.0) -> HealthCheck:
    """A health check that passes while a pooled connection answers ``SELECT 1``;
    ``timeout`` bounds the wait for a free connection."""

    async def check() -> None:
        async with pool.connection(timeout=timeout) as conn:
            await monitoring.ping(conn)

    return check


class MetricsServer:
    """Serves ``/metrics`` and ``/healthz`` until stopped.

    ``port=0`` binds a free port; :attr:`port` tells which after :meth:`start`. A host
    name resolving to several addresses (``localhost``) binds each of them; with
    port 0 they may get different ports, and :attr:`port` is the first one's.
    """

    def __init__(
        self,
        health_check: HealthCheck,
        *,
        host: str = "127.0.0.1",
        port: int = 9464,
        health_timeout: float = 2.0,
    ) -> None:
        self._health_check = health_check
        self._host = host
        self._requested_port = port
        self._health_timeout = health_timeout
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self._last_health_failure: str | None = None

    @property
    def port(self) -> int:
        if self._server is None or not self._server.sockets:
            raise RuntimeError("the metrics server is not started")
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self.port}"

    async def start(self) -> None:
        if self._server is not None:
            raise RuntimeError("the metrics server is already started")
        self._server = await asyncio.start_server(
            self._serve, self._host, self._requested_port, limit=_MAX_HEAD_BYTES
        )
        logger.info("metrics_server_started", extra={"address": self.url})

    async def stop(self) -> None:
        """Stop listening and drop connections still being served."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for handler in list(self._handlers):
            handler.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        await server.wait_closed()
        logger.info("metrics_server_stopped")

    async def __aenter__(self) -> MetricsServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # One connection, one request --------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handler = asyncio.current_task()
        assert handler is not None  # asyncio runs each connection callback as a task
        self._handlers.add(handler)
        try:
            response = await self._respond(reader)
            if response is not None:
                writer.write(response)
                await writer.drain()
        except ConnectionError:
            pass  # the client went away: nobody to answer
        except asyncio.CancelledError:
            # stop() cancels handlers. Swallowed on purpose: on Python 3.11 asyncio's
            # done-callback for connection tasks calls task.exception(), which raises
            # on a cancelled task and gets logged as an error.
            pass
        finally:
            self._handlers.discard(handler)
            writer.close()
            with contextlib.suppress(ConnectionError, asyncio.CancelledError):
                await writer.wait_closed()

    async def _respond(self, reader: asyncio.StreamReader) -> bytes | None:
        try:
            async with asyncio.timeout(_READ_TIMEOUT_SECONDS):
                head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError:
            too_large = HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE
            return _response(too_large, b"request head too large\n")
        except (TimeoutError, asyncio.IncompleteReadError):
            return None
        request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
        parts = request_line.split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            return _response(HTTPStatus.BAD_REQUEST, b"malformed request line\n")
        method, target, _version = parts
        path = target.split("?", 1)[0]
        if path not in ("/metrics", "/healthz"):
            return _response(HTTPStatus.NOT_FOUND, b"not found; try /metrics or /healthz\n")
        if method not in ("GET", "HEAD"):
            return _response(
                HTTPStatus.METHOD_NOT_ALLOWED, b"method not allowed\n", allow="GET, HEAD"
            )
        head_only = method == "HEAD"
        if path == "/metrics":
            body = await asyncio.to_thread(metrics.render)
            return _response(HTTPStatus.OK, body, metrics.CONTENT_TYPE, head_only=head_only)
        failure = await self._check_health()
        if failure is None:
            return _response(HTTPStatus.OK, b"ok\n", head_only=head_only)
        return _response(
            HTTPStatus.SERVICE_UNAVAILABLE, f"unhealthy: {failure}\n".encode(), head_only=head_only
        )

    async def _check_health(self) -> str | None:
        """``None`` when healthy, else a one-line reason."""
        try:
            async with asyncio.timeout(self._health_timeout):
                await self._health_check()
        except TimeoutError:
            failure: str | None = f"health check timed out after {self._health_timeout:g}s"
        except Exception as exc:  # any failure of the check is the answer, not a crash
            failure = _one_line(f"{type(exc).__name__}: {exc}")
        else:
            failure = None
        # Probes come every few seconds; log the changes, not every probe.
        if failure != self._last_health_failure:
            if failure is None:
                logger.info("health_recovered")
            else:
                logger.warning("health_failed", extra={"reason": failure})
            self._last_health_failure = failure
        return failure


def _one_line(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= _REASON_MAX_CHARS else line[: _REASON_MAX_CHARS - 3] + "..."


def _response(
    status: HTTPStatus,
    body: bytes,
    content_type: str = _TEXT_PLAIN,
    *,
    head_only: bool = False,
    allow: str | None = None,
) -> bytes:
    headers = [
        f"HTTP/1.1 {status.value} {status.phrase}",
        f"Content-Type: {content_type}",
        f"Content-Length: {len(body)}",
        "Cache-Control: no-store",
        "Connection: close",
    ]
    if allow is not None:
        headers.append(f"Allow: {allow}")
    return ("\r\n".join(headers) + "\r\n\r\n").encode("latin-1") + (b"" if head_only else body)
